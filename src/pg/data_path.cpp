// The data path that applications call per row: pgkm_encrypt, pgkm_encrypt_det,
// pgkm_blind_index (and their _all forms for lookups during a rotation), pgkm_decrypt,
// pgkm_decrypt_text and pgkm_ciphertext_info. Each entry point reads its arguments, finds its
// key in the backend cache, and runs the AEAD or the MAC through aead_calls.hpp.
#include "pgkm/core/format.hpp"

#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/key_cache.hpp"

extern "C"
{
#include "utils/array.h"
}

using pgkm::core::ByteView;
using namespace pgkm::pg;

namespace
{

// Decrypts a ciphertext into a new bytea; shared by pgkm_decrypt and pgkm_decrypt_text. The
// ciphertext is detoasted once and freed as soon as it is decrypted. A GCM value's nonce is
// copied to nonce for the audit; a deterministic value's synthetic IV is not (NonceOf): it is
// equal for equal plaintexts, so the audit log would show which rows hold equal values.
bytea *Decrypt(FunctionCallInfo fcinfo, VersionEntry **used, std::uint8_t *nonce)
{
	bytea *ciphertext = PG_GETARG_BYTEA_PP(0);
	ByteView in = Bytes(ciphertext);
	ByteView context = OptionalBytes(fcinfo, 1);
	pgkm::core::Header header = ParseOrReport(in);
	audit_failing.key_id = header.key_id;
	audit_failing.key_version = header.key_version;
	RequireDecryptable(header);
	VersionEntry *v = KeyForDecrypt(fcinfo->flinfo, header.key_id, header.key_version);
	RequireKeyOfHeader(header, v);
	std::size_t len = in.size() - pgkm::core::Overhead(header.algorithm);
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + len));
	SET_VARSIZE(result, VARHDRSZ + len);
	OpenInto(v, in, context,
			 std::span<std::uint8_t>(reinterpret_cast<std::uint8_t *>(VARDATA(result)), len));
	if (header.algorithm == pgkm::core::Algorithm::Aes256Gcm)
		memcpy(nonce, in.data() + pgkm::core::kHeaderSize, pgkm::core::kGcmNonceSize);
	PG_FREE_IF_COPY(ciphertext, 0);
	*used = v;
	return result;
}

// Raises character_not_in_repertoire unless the plaintext is valid text in the database
// encoding; wipes it first, and never echoes a byte of it.
void RequireText(bytea *plain, const VersionEntry *v)
{
	if (pg_verifymbstr(VARDATA(plain), VARSIZE(plain) - VARHDRSZ, true))
		return;
	explicit_bzero(VARDATA(plain), VARSIZE(plain) - VARHDRSZ);
	ereport(ERROR,
			(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
			 errmsg("decrypted value is not valid text in encoding \"%s\" (key \"%s\" version %u)",
					GetDatabaseEncodingName(), v->key_name, v->version),
			 errhint("Use pgkm_decrypt() to read the value as bytea.")));
}

// Decrypts like Decrypt (as text: checked against the database encoding), recording the use
// in the audit, or the failure before it is raised: a value that is not valid text was not
// returned, so it is recorded as failed (22021), not as a decrypt.
bytea *AuditedDecrypt(FunctionCallInfo fcinfo, VersionEntry **used, bool as_text)
{
	audit_failing = AuditTarget{};
	bytea *volatile result = nullptr;
	std::uint8_t nonce[pgkm::core::kGcmNonceSize];
	PG_TRY();
	{
		result = Decrypt(fcinfo, used, nonce);
		if (as_text)
			RequireText(result, *used);
	}
	PG_CATCH();
	{
		AuditFailDataPath(AuditOp::Decrypt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	AuditUse(AuditOp::Decrypt, *used, NonceOf(*used, nonce));
	return result;
}

// Wipes and frees a detoasted copy of argument 0 (a plaintext), if one was made.
void FreePlainCopy(FunctionCallInfo fcinfo, bytea *data)
{
	if (data == reinterpret_cast<bytea *>(PG_GETARG_POINTER(0)))
		return;
	explicit_bzero(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data));
	pfree(data);
}

// Computes one deterministic ciphertext or blind index of argument 0 under v.
bytea *LookupValue(FunctionCallInfo fcinfo, VersionEntry *v, ByteView plain)
{
	if (v->algorithm == pgkm::core::Algorithm::BlindIndex)
		return BlindIndexInto(v, plain);
	return SealInto(v, plain, OptionalBytes(fcinfo, 2));
}

// The work of pgkm_encrypt_det and pgkm_blind_index (want says which): the value under the
// key's active version, recorded in the audit like an encryption.
bytea *AuditedLookupValue(FunctionCallInfo fcinfo, pgkm::core::Algorithm want, AuditOp op)
{
	text *key_name = PG_GETARG_TEXT_PP(1);
	audit_failing = AuditTarget{};
	audit_failing.key_name = text_to_cstring(key_name);
	VersionEntry *volatile used = nullptr;
	bytea *volatile result = nullptr;
	PG_TRY();
	{
		bytea *data = PG_GETARG_BYTEA_PP(0);
		VersionEntry *v = KeyForLookup(fcinfo->flinfo, key_name, want);
		audit_failing.key_id = v->key_id;
		audit_failing.key_version = v->version;
		result = LookupValue(fcinfo, v, Bytes(data));
		FreePlainCopy(fcinfo, data);
		used = v;
	}
	PG_CATCH();
	{
		AuditFailDataPath(op);
		PG_RE_THROW();
	}
	PG_END_TRY();
	AuditUse(op, used, nullptr);
	return result;
}

// The work of pgkm_encrypt_det_all and pgkm_blind_index_all: the value under every version a
// lookup must try while a rotation runs (active first), as a bytea array. Each version is
// prepared and used before the next is looked up: an entry is valid only until the next.
ArrayType *AuditedLookupValues(FunctionCallInfo fcinfo, pgkm::core::Algorithm want, AuditOp op)
{
	text *key_name = PG_GETARG_TEXT_PP(1);
	audit_failing = AuditTarget{};
	audit_failing.key_name = text_to_cstring(key_name);
	Datum values[kMaxLookupVersions];
	int count = 0;
	PG_TRY();
	{
		bytea *data = PG_GETARG_BYTEA_PP(0);
		std::uint32_t key_id;
		std::uint32_t versions[kMaxLookupVersions];
		int n = KeyLookupVersions(key_name, want, &key_id, versions);
		audit_failing.key_id = key_id;
		for (int i = 0; i < n; i++)
		{
			audit_failing.key_version = versions[i];
			VersionEntry *v = KeyForLookupVersion(fcinfo->flinfo, key_id, versions[i], want);
			if (v == nullptr)
				continue;
			values[count++] = PointerGetDatum(LookupValue(fcinfo, v, Bytes(data)));
			AuditUse(op, v, nullptr);
		}
		FreePlainCopy(fcinfo, data);
	}
	PG_CATCH();
	{
		AuditFailDataPath(op);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return construct_array(values, count, BYTEAOID, -1, false, TYPALIGN_INT);
}

// Raises null_value_not_allowed for a NULL key name (the value itself may be NULL: the
// functions then return NULL, like the other data-path functions).
void RequireKeyName(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("key name must not be null")));
}

// Encrypts under the key's active version (pgkm_encrypt's work), recording it likewise.
bytea *AuditedEncrypt(FunctionCallInfo fcinfo)
{
	text *key_name = PG_GETARG_TEXT_PP(1);
	audit_failing = AuditTarget{};
	audit_failing.key_name = text_to_cstring(key_name);
	VersionEntry *volatile used = nullptr;
	bytea *volatile result = nullptr;
	PG_TRY();
	{
		bytea *data = PG_GETARG_BYTEA_PP(0);
		ByteView context = OptionalBytes(fcinfo, 2);
		VersionEntry *v = KeyForEncrypt(fcinfo->flinfo, key_name);
		audit_failing.key_id = v->key_id;
		audit_failing.key_version = v->version;
		result = SealInto(v, Bytes(data), context);
		FreePlainCopy(fcinfo, data);
		used = v;
	}
	PG_CATCH();
	{
		AuditFailDataPath(AuditOp::Encrypt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	AuditUse(AuditOp::Encrypt, used,
			 reinterpret_cast<const std::uint8_t *>(VARDATA(result)) + pgkm::core::kHeaderSize);
	return result;
}

} // namespace

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_encrypt);
	PG_FUNCTION_INFO_V1(pgkm_decrypt);
	PG_FUNCTION_INFO_V1(pgkm_decrypt_text);
	PG_FUNCTION_INFO_V1(pgkm_ciphertext_info);
	PG_FUNCTION_INFO_V1(pgkm_encrypt_det);
	PG_FUNCTION_INFO_V1(pgkm_encrypt_det_all);
	PG_FUNCTION_INFO_V1(pgkm_blind_index);
	PG_FUNCTION_INFO_V1(pgkm_blind_index_all);
	Datum pgkm_encrypt_det(PG_FUNCTION_ARGS);
	Datum pgkm_encrypt_det_all(PG_FUNCTION_ARGS);
	Datum pgkm_blind_index(PG_FUNCTION_ARGS);
	Datum pgkm_blind_index_all(PG_FUNCTION_ARGS);
	Datum pgkm_encrypt(PG_FUNCTION_ARGS);
	Datum pgkm_decrypt(PG_FUNCTION_ARGS);
	Datum pgkm_decrypt_text(PG_FUNCTION_ARGS);
	Datum pgkm_ciphertext_info(PG_FUNCTION_ARGS);
}

// pgkm_encrypt(data, key_name, context): AES-256-GCM under the key's active version.
// Serves the bytea and text signatures alike: both are byte strings.
Datum pgkm_encrypt(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	RequireKeyName(fcinfo);
	PG_RETURN_BYTEA_P(AuditedEncrypt(fcinfo));
}

// The entry of the four lookup functions: NULL data gives NULL, a NULL key name is an error;
// then the value under the active version, or (all) the array under every version to try.
static Datum LookupEntry(FunctionCallInfo fcinfo, pgkm::core::Algorithm want, AuditOp op, bool all)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	RequireKeyName(fcinfo);
	if (all)
		PG_RETURN_ARRAYTYPE_P(AuditedLookupValues(fcinfo, want, op));
	PG_RETURN_BYTEA_P(AuditedLookupValue(fcinfo, want, op));
}

// pgkm_encrypt_det(data, key_name, context): AES-256-SIV under the key's active version, the
// same bytes for the same data, key version and context. Text is encrypted as its bytes in
// the database encoding, unnormalised, so text and bytea of the same bytes give the same value.
Datum pgkm_encrypt_det(PG_FUNCTION_ARGS)
{
	return LookupEntry(fcinfo, pgkm::core::Algorithm::Aes256Siv, AuditOp::EncryptDeterministic,
					   false);
}

// pgkm_encrypt_det_all(data, key_name, context): the deterministic ciphertext under every
// version a lookup must try (active first), for WHERE col = ANY(...) during a rotation.
Datum pgkm_encrypt_det_all(PG_FUNCTION_ARGS)
{
	return LookupEntry(fcinfo, pgkm::core::Algorithm::Aes256Siv, AuditOp::EncryptDeterministic,
					   true);
}

// pgkm_blind_index(data, key_name): header || truncated HMAC-SHA-256 under the key's active
// version.
Datum pgkm_blind_index(PG_FUNCTION_ARGS)
{
	return LookupEntry(fcinfo, pgkm::core::Algorithm::BlindIndex, AuditOp::BlindIndex, false);
}

// pgkm_blind_index_all(data, key_name): the blind index under every version a lookup must try.
Datum pgkm_blind_index_all(PG_FUNCTION_ARGS)
{
	return LookupEntry(fcinfo, pgkm::core::Algorithm::BlindIndex, AuditOp::BlindIndex, true);
}

// pgkm_decrypt(ciphertext, context): the plaintext bytes.
Datum pgkm_decrypt(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	VersionEntry *v;
	PG_RETURN_BYTEA_P(AuditedDecrypt(fcinfo, &v, false));
}

// pgkm_decrypt_text(ciphertext, context): the plaintext as text, checked against the
// database encoding without echoing any byte of it in the error.
Datum pgkm_decrypt_text(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	VersionEntry *v;
	PG_RETURN_TEXT_P(AuditedDecrypt(fcinfo, &v, true));
}

// pgkm_ciphertext_info(ciphertext): the header fields and the key's name; never decrypts, and
// reads only the header of a value stored out of line.
Datum pgkm_ciphertext_info(PG_FUNCTION_ARGS)
{
	pgkm::core::Header header = HeaderOfArgument(fcinfo);
	TupleDesc tupdesc;
	if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	Datum values[5];
	bool nulls[5] = {false, false, false, false, false};
	values[0] = Int32GetDatum(header.format);
	values[1] = CStringGetTextDatum(pgkm::core::AlgorithmName(header.algorithm));
	values[2] = Int64GetDatum(header.key_id);
	char *name = KeyNameForId(header.key_id);
	if (name)
		values[3] = CStringGetTextDatum(name);
	else
		nulls[3] = true;
	values[4] = Int64GetDatum(header.key_version);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
