// The data path that applications call per row: pgkm_encrypt, pgkm_decrypt,
// pgkm_decrypt_text and pgkm_ciphertext_info. Each entry point reads its arguments,
// finds its key in the backend cache, and runs the AEAD through aead_calls.hpp.
#include "pgkm/core/format.hpp"

#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/key_cache.hpp"

using pgkm::core::ByteView;
using namespace pgkm::pg;

namespace
{

// Decrypts a ciphertext into a new bytea; shared by pgkm_decrypt and pgkm_decrypt_text. The
// ciphertext is detoasted once and freed as soon as it is decrypted; its nonce is copied to
// nonce for the audit.
bytea *Decrypt(FunctionCallInfo fcinfo, VersionEntry **used, std::uint8_t *nonce)
{
	bytea *ciphertext = PG_GETARG_BYTEA_PP(0);
	ByteView in = Bytes(ciphertext);
	ByteView context = OptionalBytes(fcinfo, 1);
	pgkm::core::Header header = ParseOrReport(in);
	audit_failing.key_id = header.key_id;
	audit_failing.key_version = header.key_version;
	RequireGcm(header);
	VersionEntry *v = KeyForDecrypt(fcinfo->flinfo, header.key_id, header.key_version);
	std::size_t len = in.size() - pgkm::core::kGcmOverhead;
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + len));
	SET_VARSIZE(result, VARHDRSZ + len);
	OpenInto(v, in, context,
			 std::span<std::uint8_t>(reinterpret_cast<std::uint8_t *>(VARDATA(result)), len));
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
	AuditUse(AuditOp::Decrypt, *used, nonce);
	return result;
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
		if (data != reinterpret_cast<bytea *>(PG_GETARG_POINTER(0)))
		{
			// A detoasted copy of the plaintext: wiped, and its memory given back at once.
			explicit_bzero(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data));
			pfree(data);
		}
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
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("key name must not be null")));
	PG_RETURN_BYTEA_P(AuditedEncrypt(fcinfo));
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
