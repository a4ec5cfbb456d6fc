// The AEAD calls shared by the data-path functions: argument bytes, header parsing, sealing
// with the backend's nonce pool, and opening with errors that name the key and version.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/nonce_pool.hpp"

#include <array>
#include <cstdio>

#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/shmem.hpp"

namespace pgkm::pg
{

namespace
{

core::NoncePool nonce_pool;

} // namespace

core::ByteView Bytes(const bytea *value)
{
	return {reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(value)), VARSIZE_ANY_EXHDR(value)};
}

core::ByteView OptionalBytes(FunctionCallInfo fcinfo, int arg)
{
	if (PG_NARGS() <= arg || PG_ARGISNULL(arg))
		return {};
	return Bytes(PG_GETARG_BYTEA_PP(arg));
}

core::Header ParseOrReport(core::ByteView ciphertext)
{
	core::Header header;
	PGKM_CORE(header = core::ParseHeader(ciphertext));
	return header;
}

void RequireGcm(const core::Header &header)
{
	if (header.algorithm != core::Algorithm::Aes256Gcm)
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("ciphertext algorithm %s is not supported by this version of pgkm",
							   core::AlgorithmName(header.algorithm))));
}

bytea *SealInto(VersionEntry *v, core::ByteView plain, core::ByteView context)
{
	std::size_t len = plain.size();
	if (len > MaxAllocSize - VARHDRSZ - core::kGcmOverhead)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("value of %zu bytes is too large to encrypt", len)));
	std::size_t total = len + core::kGcmOverhead;
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + total));
	SET_VARSIZE(result, VARHDRSZ + total);
	std::span<std::uint8_t> out(reinterpret_cast<std::uint8_t *>(VARDATA(result)), total);
	core::Header header;
	header.algorithm = core::Algorithm::Aes256Gcm;
	header.key_id = v->key_id;
	header.key_version = v->version;
	PGKM_CORE({
		std::array<std::uint8_t, core::kGcmNonceSize> nonce;
		nonce_pool.Next(nonce);
		v->material->gcm().Seal(header, nonce, plain, context, out);
	});
	if (v->counter)
		CounterAdd(v->counter, 1);
	return result;
}

void OpenInto(VersionEntry *v, core::ByteView ciphertext, core::ByteView context,
			  std::span<std::uint8_t> out)
{
	Failure failure;
	if (!RunCore(failure, [&]() { v->material->gcm().Open(ciphertext, context, out); }))
	{
		char message[sizeof(failure.message)];
		snprintf(message, sizeof(message), "%s (key \"%s\" version %u)", failure.message,
				 v->key_name, v->version);
		snprintf(failure.message, sizeof(failure.message), "%s", message);
		ReportFailure(failure);
	}
}

} // namespace pgkm::pg
