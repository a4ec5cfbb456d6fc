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

extern "C"
{
#include "access/detoast.h"
}

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

core::Header HeaderOfArgument(FunctionCallInfo fcinfo)
{
	static_assert(core::kGcmOverhead >= core::kSivOverhead);
	Datum raw = PG_GETARG_DATUM(0);
	auto *value = reinterpret_cast<struct varlena *>(DatumGetPointer(raw));
	bytea *bytes;
	if ((VARATT_IS_EXTERNAL(value) || VARATT_IS_COMPRESSED(value)) &&
		toast_raw_datum_size(raw) - VARHDRSZ >= core::kGcmOverhead)
		bytes = DatumGetByteaPSlice(raw, 0, core::kGcmOverhead);
	else
		bytes = PG_GETARG_BYTEA_PP(0);
	core::Header header = ParseOrReport(Bytes(bytes));
	if (bytes != reinterpret_cast<bytea *>(value))
		pfree(bytes);
	return header;
}

void RequireGcm(const core::Header &header)
{
	if (header.algorithm != core::Algorithm::Aes256Gcm)
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("ciphertext algorithm %s is not supported by this version of pgkm",
							   core::AlgorithmName(header.algorithm))));
}

std::size_t CiphertextSize(std::size_t plain_len)
{
	constexpr std::size_t largest = MaxAllocSize - VARHDRSZ - core::kGcmOverhead;
	if (plain_len > largest)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("value of %zu bytes is too large to encrypt", plain_len),
				 errdetail("A ciphertext is %zu bytes longer than its plaintext and PostgreSQL "
						   "holds at most %zu bytes in one value, so the largest plaintext is "
						   "%zu bytes.",
						   core::kGcmOverhead, (std::size_t)(MaxAllocSize - VARHDRSZ), largest),
				 errhint("Split the value, or store it outside the database.")));
	return plain_len + core::kGcmOverhead;
}

void SealTo(VersionEntry *v, core::ByteView plain, core::ByteView context,
			std::span<std::uint8_t> out)
{
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
}

bytea *SealInto(VersionEntry *v, core::ByteView plain, core::ByteView context)
{
	std::size_t total = CiphertextSize(plain.size());
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + total));
	SET_VARSIZE(result, VARHDRSZ + total);
	SealTo(v, plain, context,
		   std::span<std::uint8_t>(reinterpret_cast<std::uint8_t *>(VARDATA(result)), total));
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
