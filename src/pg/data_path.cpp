// The data path that applications call per row: pgkm_encrypt, pgkm_decrypt,
// pgkm_decrypt_text and pgkm_ciphertext_info. Each entry point reads its arguments,
// finds its key in the backend cache, and runs the AEAD through the boundary runner.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/nonce_pool.hpp"

#include <array>
#include <cstdio>

#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/key_cache.hpp"

using pgkm::core::ByteView;
using namespace pgkm::pg;

namespace
{

pgkm::core::NoncePool nonce_pool;

// Returns the bytes of a varlena argument, or an empty view when it is NULL or absent.
ByteView OptionalBytes(FunctionCallInfo fcinfo, int arg)
{
	if (PG_NARGS() <= arg || PG_ARGISNULL(arg))
		return {};
	bytea *value = PG_GETARG_BYTEA_PP(arg);
	return {reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(value)), VARSIZE_ANY_EXHDR(value)};
}

// Returns the bytes of a non-null varlena argument.
ByteView Bytes(bytea *value)
{
	return {reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(value)), VARSIZE_ANY_EXHDR(value)};
}

// Parses a ciphertext's header, raising invalid_binary_representation when malformed.
pgkm::core::Header ParseOrReport(ByteView ciphertext)
{
	pgkm::core::Header header;
	PGKM_CORE(header = pgkm::core::ParseHeader(ciphertext));
	return header;
}

// Decrypts a ciphertext into a new bytea; shared by pgkm_decrypt and pgkm_decrypt_text.
bytea *Decrypt(FunctionCallInfo fcinfo, VersionEntry **used)
{
	bytea *ciphertext = PG_GETARG_BYTEA_PP(0);
	ByteView in = Bytes(ciphertext);
	ByteView context = OptionalBytes(fcinfo, 1);
	pgkm::core::Header header = ParseOrReport(in);
	if (header.algorithm != pgkm::core::Algorithm::Aes256Gcm)
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("ciphertext algorithm %s is not supported by this version of pgkm",
							   pgkm::core::AlgorithmName(header.algorithm))));
	VersionEntry *v = KeyForDecrypt(fcinfo->flinfo, header.key_id, header.key_version);
	std::size_t len = in.size() - pgkm::core::kGcmOverhead;
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + len));
	SET_VARSIZE(result, VARHDRSZ + len);
	std::span<std::uint8_t> out(reinterpret_cast<std::uint8_t *>(VARDATA(result)), len);
	Failure failure;
	if (!RunCore(failure, [&]() { v->material->gcm().Open(in, context, out); }))
	{
		char message[sizeof(failure.message)];
		snprintf(message, sizeof(message), "%s (key \"%s\" version %u)", failure.message,
				 v->key_name, v->version);
		snprintf(failure.message, sizeof(failure.message), "%s", message);
		ReportFailure(failure);
	}
	*used = v;
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
	bytea *data = PG_GETARG_BYTEA_PP(0);
	text *key_name = PG_GETARG_TEXT_PP(1);
	ByteView context = OptionalBytes(fcinfo, 2);
	VersionEntry *v = KeyForEncrypt(fcinfo->flinfo, key_name);

	std::size_t len = VARSIZE_ANY_EXHDR(data);
	if (len > MaxAllocSize - VARHDRSZ - pgkm::core::kGcmOverhead)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("value of %zu bytes is too large to encrypt", len)));
	std::size_t total = len + pgkm::core::kGcmOverhead;
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + total));
	SET_VARSIZE(result, VARHDRSZ + total);
	std::span<std::uint8_t> out(reinterpret_cast<std::uint8_t *>(VARDATA(result)), total);
	pgkm::core::Header header;
	header.algorithm = pgkm::core::Algorithm::Aes256Gcm;
	header.key_id = v->key_id;
	header.key_version = v->version;
	PGKM_CORE({
		std::array<std::uint8_t, pgkm::core::kGcmNonceSize> nonce;
		nonce_pool.Next(nonce);
		v->material->gcm().Seal(header, nonce, Bytes(data), context, out);
	});
	if (v->counter)
		CounterAdd(v->counter, 1);
	PG_RETURN_BYTEA_P(result);
}

// pgkm_decrypt(ciphertext, context): the plaintext bytes.
Datum pgkm_decrypt(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	VersionEntry *v;
	PG_RETURN_BYTEA_P(Decrypt(fcinfo, &v));
}

// pgkm_decrypt_text(ciphertext, context): the plaintext as text, checked against the
// database encoding without echoing any byte of it in the error.
Datum pgkm_decrypt_text(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	VersionEntry *v;
	bytea *plain = Decrypt(fcinfo, &v);
	if (!pg_verifymbstr(VARDATA(plain), VARSIZE(plain) - VARHDRSZ, true))
		ereport(
			ERROR,
			(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
			 errmsg("decrypted value is not valid text in encoding \"%s\" (key \"%s\" version %u)",
					GetDatabaseEncodingName(), v->key_name, v->version),
			 errhint("Use pgkm_decrypt() to read the value as bytea.")));
	PG_RETURN_TEXT_P(plain);
}

// pgkm_ciphertext_info(ciphertext): the header fields and the key's name; never decrypts.
Datum pgkm_ciphertext_info(PG_FUNCTION_ARGS)
{
	pgkm::core::Header header = ParseOrReport(Bytes(PG_GETARG_BYTEA_PP(0)));
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
