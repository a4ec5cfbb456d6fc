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
#include "access/xlog.h"
}

namespace pgkm::pg
{

namespace
{

core::NoncePool nonce_pool;

} // namespace

// Memory-context callback: wipes a plaintext buffer.
static void WipePlain(void *arg)
{
	auto *plain = static_cast<PlainBuffer *>(arg);
	if (plain->data != nullptr)
		explicit_bzero(plain->data, plain->len);
}

MemoryContext WipingContext(PlainBuffer **plain)
{
	MemoryContext context =
		AllocSetContextCreate(CurrentMemoryContext, "pgkm plaintext", ALLOCSET_SMALL_SIZES);
	*plain = static_cast<PlainBuffer *>(MemoryContextAllocZero(context, sizeof(PlainBuffer)));
	auto *wipe = static_cast<MemoryContextCallback *>(
		MemoryContextAlloc(context, sizeof(MemoryContextCallback)));
	wipe->func = WipePlain;
	wipe->arg = *plain;
	MemoryContextRegisterResetCallback(context, wipe);
	return context;
}

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
	// Enough to reach every minimum length and to see that a blind index is too long.
	constexpr std::size_t prefix = core::kHeaderSize + core::kBlindIndexMaxBytes + 1;
	static_assert(prefix >= core::kGcmOverhead && prefix >= core::kSivOverhead);
	Datum raw = PG_GETARG_DATUM(0);
	auto *value = reinterpret_cast<struct varlena *>(DatumGetPointer(raw));
	bytea *bytes;
	if ((VARATT_IS_EXTERNAL(value) || VARATT_IS_COMPRESSED(value)) &&
		toast_raw_datum_size(raw) - VARHDRSZ >= prefix)
		bytes = DatumGetByteaPSlice(raw, 0, prefix);
	else
		bytes = PG_GETARG_BYTEA_PP(0);
	core::Header header = ParseOrReport(Bytes(bytes));
	if (bytes != reinterpret_cast<bytea *>(value))
		pfree(bytes);
	return header;
}

void RequireDecryptable(const core::Header &header)
{
	if (header.algorithm == core::Algorithm::BlindIndex)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("value is a blind index and cannot be decrypted"),
				 errdetail("A blind index is a keyed hash of a value, kept for equality lookups."),
				 errhint("Decrypt the column that holds the value's ciphertext instead.")));
}

void RequireKeyOfHeader(const core::Header &header, const VersionEntry *v)
{
	if (header.algorithm != v->algorithm)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION), errmsg("ciphertext authentication failed"),
				 errdetail("The value's header names algorithm %s, but key \"%s\" has algorithm "
						   "%s: the header was altered, or the value was not made by pgkm.",
						   core::AlgorithmName(header.algorithm), v->key_name,
						   core::AlgorithmName(v->algorithm))));
}

std::size_t BodyOffset(core::Algorithm algorithm)
{
	return algorithm == core::Algorithm::Aes256Siv ? core::kSivOverhead
												   : core::kHeaderSize + core::kGcmNonceSize;
}

std::size_t CiphertextSize(std::size_t plain_len, core::Algorithm algorithm)
{
	const std::size_t overhead = core::Overhead(algorithm);
	const std::size_t largest = MaxAllocSize - VARHDRSZ - overhead;
	if (plain_len > largest)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("value of %zu bytes is too large to encrypt", plain_len),
				 errdetail("A ciphertext is %zu bytes longer than its plaintext and PostgreSQL "
						   "holds at most %zu bytes in one value, so the largest plaintext is "
						   "%zu bytes.",
						   overhead, (std::size_t)(MaxAllocSize - VARHDRSZ), largest),
				 errhint("Split the value, or store it outside the database.")));
	return plain_len + overhead;
}

void SealTo(VersionEntry *v, core::ByteView plain, core::ByteView context,
			std::span<std::uint8_t> out)
{
	// A random-nonce encryption must be counted against its version's limit in the catalog
	// (pgkm.key_versions.encryptions), which a hot standby can neither write nor flush to.
	if (v->algorithm != core::Algorithm::Aes256Siv && RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot encrypt with key \"%s\" version %u on a hot standby", v->key_name,
						v->version),
				 errdetail("AES-256-GCM encryptions use random nonces and are counted against "
						   "the key version's limit in the catalog, which a standby cannot "
						   "write."),
				 errhint("Encrypt on the primary. Decryption, pgkm_encrypt_det and "
						 "pgkm_blind_index work on a standby.")));
	core::Header header;
	header.algorithm = v->algorithm;
	header.key_id = v->key_id;
	header.key_version = v->version;
	if (v->algorithm == core::Algorithm::Aes256Siv)
	{
		// Deterministic: no nonce to wear out, so nothing is counted.
		PGKM_CORE(v->material->siv().Seal(header, plain, context, out));
		return;
	}
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
	std::size_t total = CiphertextSize(plain.size(), v->algorithm);
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
	if (!RunCore(failure,
				 [&]()
				 {
					 if (v->algorithm == core::Algorithm::Aes256Siv)
						 v->material->siv().Open(ciphertext, context, out);
					 else
						 v->material->gcm().Open(ciphertext, context, out);
				 }))
	{
		char message[sizeof(failure.message)];
		snprintf(message, sizeof(message), "%s (key \"%s\" version %u)", failure.message,
				 v->key_name, v->version);
		snprintf(failure.message, sizeof(failure.message), "%s", message);
		ReportFailure(failure);
	}
}

bytea *BlindIndexInto(VersionEntry *v, core::ByteView plain)
{
	core::Header header;
	header.algorithm = core::Algorithm::BlindIndex;
	header.key_id = v->key_id;
	header.key_version = v->version;
	std::size_t total = core::kHeaderSize + v->blind_index_bytes;
	auto *result = static_cast<bytea *>(palloc(VARHDRSZ + total));
	SET_VARSIZE(result, VARHDRSZ + total);
	PGKM_CORE(v->material->blind_index().Compute(
		header, plain,
		std::span<std::uint8_t>(reinterpret_cast<std::uint8_t *>(VARDATA(result)), total)));
	return result;
}

} // namespace pgkm::pg
