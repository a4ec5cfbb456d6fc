// Rebuilding a blind index from its source column (pgkm_blind_index_rebuild): the rotation
// worker's data path for blind-index columns. The source ciphertext is decrypted inside the
// call into a buffer that is wiped whatever happens, and only its blind index under the
// blind-index key's active version leaves the call.
#include "pgkm/core/format.hpp"

#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/key_cache.hpp"

using pgkm::core::ByteView;
using namespace pgkm::pg;

namespace
{

// The two key-cache call sites of one pgkm_blind_index_rebuild call site, kept in its
// fn_extra: one remembers the source's version, the other the blind-index key's active one.
struct RebuildSites
{
	FmgrInfo decrypt;
	FmgrInfo lookup;
};

// Returns the call sites of flinfo, creating them on the first row.
RebuildSites *SitesOf(FmgrInfo *flinfo)
{
	if (flinfo->fn_extra == nullptr)
	{
		auto *sites = static_cast<RebuildSites *>(
			MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(RebuildSites)));
		sites->decrypt.fn_mcxt = flinfo->fn_mcxt;
		sites->lookup.fn_mcxt = flinfo->fn_mcxt;
		flinfo->fn_extra = sites;
	}
	return static_cast<RebuildSites *>(flinfo->fn_extra);
}

// Reads the blind-index key id argument, raising undefined_object for one that cannot exist.
std::uint32_t BlindKeyId(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("blind-index key id must not be null")));
	int64 key_id = PG_GETARG_INT64(2);
	if (key_id <= 0 || key_id > (int64)UINT32_MAX)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("key id %lld does not exist", (long long)key_id)));
	return (std::uint32_t)key_id;
}

// Decrypts the source (argument 0, with context argument 1) and computes its blind index under
// the blind-index key's active version. *source_out and *blind_out receive the versions used;
// the old nonce of a GCM source goes to nonce, for the audit.
bytea *Rebuild(FunctionCallInfo fcinfo, VersionEntry **source_out, VersionEntry **blind_out,
			   std::uint8_t *nonce)
{
	std::uint32_t blind_key_id = BlindKeyId(fcinfo);
	pgkm::core::Header header = HeaderOfArgument(fcinfo);
	audit_failing.key_id = header.key_id;
	audit_failing.key_version = header.key_version;
	RequireDecryptable(header);
	RebuildSites *sites = SitesOf(fcinfo->flinfo);
	VersionEntry *source;
	VersionEntry *blind;
	// A lookup may empty the cache (a key change committed meanwhile): retry until neither
	// entry is stale.
	KeyCacheRewrapping(true);
	for (;;)
	{
		source = KeyForDecrypt(&sites->decrypt, header.key_id, header.key_version);
		std::uint64_t epoch = KeyCacheEpoch();
		blind = KeyForLookupById(&sites->lookup, blind_key_id, pgkm::core::Algorithm::BlindIndex);
		if (KeyCacheEpoch() == epoch)
			break;
	}
	KeyCacheRewrapping(false);
	RequireKeyOfHeader(header, source);

	bytea *ciphertext = PG_GETARG_BYTEA_PP(0);
	ByteView in = Bytes(ciphertext);
	ByteView context = OptionalBytes(fcinfo, 1);
	std::size_t len = in.size() - pgkm::core::Overhead(header.algorithm);
	PlainBuffer *plain;
	MemoryContext value_context = WipingContext(&plain);
	plain->data = static_cast<std::uint8_t *>(MemoryContextAlloc(value_context, len + 1));
	plain->len = len;
	OpenInto(source, in, context, std::span<std::uint8_t>(plain->data, len));
	if (header.algorithm == pgkm::core::Algorithm::Aes256Gcm)
		memcpy(nonce, in.data() + pgkm::core::kHeaderSize, pgkm::core::kGcmNonceSize);
	PG_FREE_IF_COPY(ciphertext, 0);
	bytea *result = BlindIndexInto(blind, ByteView(plain->data, len));
	MemoryContextDelete(value_context); // wipes the plaintext
	*source_out = source;
	*blind_out = blind;
	return result;
}

} // namespace

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_blind_index_rebuild);
	Datum pgkm_blind_index_rebuild(PG_FUNCTION_ARGS);
}

// pgkm_blind_index_rebuild(source, source_context, blind_key_id): the blind index of the
// value that source encrypts, under the blind-index key's active version; NULL for a NULL
// source. Needs the source key's decrypt role and a role of the blind-index key (or the
// worker's allowance for both); the plaintext never leaves the call. Audited as a rewrap of
// the source version and a blind_index use of the blind-index version.
Datum pgkm_blind_index_rebuild(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	audit_failing = AuditTarget{};
	VersionEntry *volatile source_used = nullptr;
	VersionEntry *volatile blind_used = nullptr;
	bytea *volatile result = nullptr;
	std::uint8_t nonce[pgkm::core::kGcmNonceSize];
	PG_TRY();
	{
		VersionEntry *source = nullptr;
		VersionEntry *blind = nullptr;
		result = Rebuild(fcinfo, &source, &blind, nonce);
		source_used = source;
		blind_used = blind;
	}
	PG_CATCH();
	{
		KeyCacheRewrapping(false);
		AuditFailDataPath(AuditOp::Rewrap);
		PG_RE_THROW();
	}
	PG_END_TRY();
	AuditUse(AuditOp::Rewrap, source_used, NonceOf(source_used, nonce));
	AuditUse(AuditOp::BlindIndex, blind_used, nullptr);
	PG_RETURN_BYTEA_P(result);
}
