// Key lifecycle and master keys: the header fields the worker's predicates read, the
// re-encryption of one value (pgkm_rewrap), disabling, enabling and destroying key versions,
// rotation policies, and rotating and retiring the master key. Catalog work runs in catalog
// sessions; the caller's name is read before one opens (inside, the user is the owner).
#include "pgkm/core/format.hpp"
#include "pgkm/pg/token.hpp"

#include <cstdio>
#include <cstring>

#include "pgkm/pg/admin.hpp"
#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include "utils/array.h"
#include "utils/inval.h"
}

using pgkm::core::ByteView;
using namespace pgkm::pg;

namespace
{

// The largest rotation_max_encryptions: 2^31, far below GCM's 2^32 random-nonce bound.
constexpr int64 kMaxEncryptionsLimit = INT64CONST(2147483648);
// Key versions re-wrapped per catalog UPDATE by rotate_master_key.
constexpr uint64 kRewrapBatch = 1000;

// The two key-cache call sites of one pgkm_rewrap call site, kept in its fn_extra: one
// remembers the version being decrypted, the other the key's active version.
struct RewrapSites
{
	FmgrInfo decrypt;
	FmgrInfo encrypt;
};

// A key version's row as read under lock.
struct VersionRow
{
	char state[16];
	char disabled_from[16]; // empty unless disabled
};

// One key version that rotate_master_key re-wraps.
struct WrappedRow
{
	int64 key_id;
	int32 version;
	bytea *wrapped;
	bytea *check;
	char *master_label;
	char *key_name;
};

// Returns the rewrap call sites of flinfo, creating them on the first row.
RewrapSites *SitesOf(FmgrInfo *flinfo)
{
	if (flinfo->fn_extra == nullptr)
	{
		auto *sites = static_cast<RewrapSites *>(
			MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(RewrapSites)));
		sites->decrypt.fn_mcxt = flinfo->fn_mcxt;
		sites->encrypt.fn_mcxt = flinfo->fn_mcxt;
		flinfo->fn_extra = sites;
	}
	return static_cast<RewrapSites *>(flinfo->fn_extra);
}

// Invalidates every backend's key cache when this transaction commits, hot standbys' too
// (disable, enable, destroy, master-key rotation). The catalog trigger
// does the same, but does not fire under session_replication_role = replica, and a
// disabled or destroyed version must stop working everywhere at once regardless.
void PublishAtCommit()
{
	KeyCacheCatalogChanged();
	// The generation counter lives in this server's shared memory; hot standbys learn of the
	// change from a relcache invalidation of pgkm.keys in the commit record, which empties
	// their backends' caches at their next transaction after replay (as erase_key does).
	if (OidIsValid(CatalogKeysRelid()))
		CacheInvalidateRelcacheByRelid(CatalogKeysRelid());
}

// Reads the non-null text argument arg or raises null_value_not_allowed.
char *RequiredText(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

// Locks the row of (key_id, version) and reads its state; raises undefined_object if absent.
VersionRow LockVersion(int64 key_id, const char *key_name, int32 version)
{
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum(version)};
	if (CatalogExec("SELECT state, disabled_from FROM pgkm.key_versions"
					" WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2"
					" FOR UPDATE",
					2, types, values, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("key \"%s\" has no version %d", key_name, version)));
	VersionRow row;
	strlcpy(row.state, CatalogText(0, 1), sizeof(row.state));
	char *from = CatalogText(0, 2);
	strlcpy(row.disabled_from, from ? from : "", sizeof(row.disabled_from));
	return row;
}

// Returns the key's active version, or 0 if it has none.
int32 ActiveVersion(int64 key_id)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	if (CatalogExec("SELECT version FROM pgkm.key_versions WHERE key_id OPERATOR(pg_catalog.=) $1"
					" AND state OPERATOR(pg_catalog.=) 'active'",
					1, types, values, nullptr, SPI_OK_SELECT) != 1)
		return 0;
	bool isnull;
	return DatumGetInt32(CatalogValue(0, 1, &isnull));
}

// Sets a version's state; disabled_from is NULL unless the new state is 'disabled'.
void SetVersionState(int64 key_id, int32 version, const char *state, const char *disabled_from)
{
	Oid types[4] = {INT8OID, INT4OID, TEXTOID, TEXTOID};
	Datum values[4] = {Int64GetDatum(key_id), Int32GetDatum(version), CStringGetTextDatum(state),
					   disabled_from ? CStringGetTextDatum(disabled_from) : (Datum)0};
	char nulls[4] = {' ', ' ', ' ', disabled_from ? ' ' : 'n'};
	CatalogExec("UPDATE pgkm.key_versions SET state = $3, disabled_from = $4,"
				" state_changed_at = pg_catalog.now()"
				" WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
				4, types, values, nulls, SPI_OK_UPDATE);
}

// Proves that no protected column of the key holds a value under version: locks each table
// against writers until commit (so no uncommitted value escapes the count) and counts.
// Raises object_not_in_prerequisite_state naming the first column that still does. Returns
// the number of columns scanned.
uint64 RequireUnreferenced(int64 key_id, const char *key_name, int32 version)
{
	uint64 n;
	ProtectedColumn *columns = ProtectedColumnsOf(key_id, &n);
	for (uint64 i = 0; i < n; i++)
	{
		CatalogExec(psprintf("LOCK TABLE %s IN SHARE MODE", columns[i].table), 0, nullptr, nullptr,
					nullptr, SPI_OK_UTILITY);
		int64 rows = RowsUnderVersion(&columns[i], key_id, version, false);
		const char *column = quote_identifier(columns[i].column);
		if (rows > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("key \"%s\" version %d is still in use and cannot be destroyed",
							key_name, version),
					 errdetail_plural("Column %s of table %s holds %lld value under it.",
									  "Column %s of table %s holds %lld values under it.", rows,
									  column, columns[i].table, (long long)rows),
					 errhint("Let the re-encryption job finish (see pgkm.rotation_progress), or "
							 "start one with pgkm.start_reencryption('%s', '%s').",
							 columns[i].table, columns[i].column)));
	}
	return n;
}

// Returns the highest N of the catalog's "<base>.vN" master keys, or 0.
std::uint64_t NewestCatalogMasterVersion(const char *base_label)
{
	uint64 n = CatalogExec("SELECT label FROM pgkm.master_keys", 0, nullptr, nullptr, nullptr,
						   SPI_OK_SELECT);
	std::uint64_t newest = 0;
	for (uint64 i = 0; i < n; i++)
	{
		char *label = CatalogText(i, 1);
		std::uint64_t version = 0;
		PGKM_CORE(version = MasterKeyLabelVersion(base_label, label));
		newest = Max(newest, version);
	}
	return newest;
}

// Reads every key version whose DEK is wrapped by another master key than master_key_id,
// locked so that no concurrent change (a destruction, say) is overwritten. Returns them.
WrappedRow *LockWrappedElsewhere(int32 master_key_id, uint64 *count)
{
	Oid types[1] = {INT4OID};
	Datum values[1] = {Int32GetDatum(master_key_id)};
	uint64 n = CatalogExec(
		"SELECT v.key_id, v.version, v.wrapped_dek, v.key_check, m.label, k.name"
		" FROM pgkm.key_versions v"
		" JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id"
		" JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) v.key_id"
		" WHERE v.wrapped_dek IS NOT NULL AND v.master_key_id OPERATOR(pg_catalog.<>) $1"
		" ORDER BY v.key_id, v.version FOR UPDATE OF v",
		1, types, values, nullptr, SPI_OK_SELECT);
	auto *rows = static_cast<WrappedRow *>(palloc(sizeof(WrappedRow) * (n + 1)));
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		rows[i].key_id = DatumGetInt64(CatalogValue(i, 1, &isnull));
		rows[i].version = DatumGetInt32(CatalogValue(i, 2, &isnull));
		rows[i].wrapped = DatumGetByteaPCopy(CatalogValue(i, 3, &isnull));
		rows[i].check = DatumGetByteaPCopy(CatalogValue(i, 4, &isnull));
		rows[i].master_label = CatalogText(i, 5);
		rows[i].key_name = CatalogText(i, 6);
	}
	SPI_freetuptable(SPI_tuptable);
	*count = n;
	return rows;
}

// Stores re-wrapped DEKs (parallel arrays of n entries) under master key master_key_id, in
// one statement.
void StoreRewrapped(Datum *key_ids, Datum *versions, Datum *blobs, int n, int32 master_key_id,
					const char *mechanism)
{
	Oid types[5] = {INT8ARRAYOID, INT4ARRAYOID, BYTEAARRAYOID, INT4OID, TEXTOID};
	Datum values[5] = {
		PointerGetDatum(construct_array(key_ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
		PointerGetDatum(construct_array(versions, n, INT4OID, 4, true, TYPALIGN_INT)),
		PointerGetDatum(construct_array(blobs, n, BYTEAOID, -1, false, TYPALIGN_INT)),
		Int32GetDatum(master_key_id), CStringGetTextDatum(mechanism)};
	uint64 updated = CatalogExec(
		"UPDATE pgkm.key_versions v SET wrapped_dek = u.wrapped, master_key_id = $4,"
		" wrap_mechanism = $5"
		" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
		"  AS u(key_id, version, wrapped)"
		" WHERE v.key_id OPERATOR(pg_catalog.=) u.key_id"
		" AND v.version OPERATOR(pg_catalog.=) u.version",
		5, types, values, nullptr, SPI_OK_UPDATE);
	if (updated != (uint64)n)
		elog(ERROR, "pgkm: re-wrapped %d key versions but stored %llu", n,
			 (unsigned long long)updated);
}

} // namespace

namespace
{

// Re-encrypts one value (pgkm_rewrap's work); *source is the version decrypted, left null
// when the value is already under the active version and is returned as it is, unread. The
// ciphertext is detoasted once; the plaintext is opened into the new value's own buffer and
// sealed there in place, in a context that wipes it if anything fails in between. The old
// nonce of a GCM value goes to nonce, for the audit. A deterministic value stays
// deterministic: the same plaintext gives the same new value in every row.
bytea *Rewrap(FunctionCallInfo fcinfo, VersionEntry **source_out, std::uint8_t *nonce)
{
	pgkm::core::Header header = HeaderOfArgument(fcinfo);
	audit_failing.key_id = header.key_id;
	audit_failing.key_version = header.key_version;
	RequireDecryptable(header);
	RewrapSites *sites = SitesOf(fcinfo->flinfo);
	VersionEntry *source;
	VersionEntry *target;
	// A lookup may empty the cache (a key change committed meanwhile): retry until neither
	// entry is stale.
	KeyCacheRewrapping(true);
	for (;;)
	{
		source = KeyForDecrypt(&sites->decrypt, header.key_id, header.key_version);
		std::uint64_t epoch = KeyCacheEpoch();
		target = KeyForEncryptById(&sites->encrypt, header.key_id);
		if (KeyCacheEpoch() == epoch)
			break;
	}
	KeyCacheRewrapping(false);
	RequireKeyOfHeader(header, source);
	if (target->version == header.key_version)
		return reinterpret_cast<bytea *>(PG_GETARG_POINTER(0));
	*source_out = source;

	bytea *ciphertext = PG_GETARG_BYTEA_PP(0);
	ByteView in = Bytes(ciphertext);
	ByteView context = OptionalBytes(fcinfo, 1);
	std::size_t total = in.size();
	std::size_t len = total - pgkm::core::Overhead(header.algorithm);
	PlainBuffer *plain;
	MemoryContext value_context = WipingContext(&plain);
	auto *result = static_cast<bytea *>(MemoryContextAlloc(value_context, VARHDRSZ + total));
	SET_VARSIZE(result, VARHDRSZ + total);
	std::span<std::uint8_t> out(reinterpret_cast<std::uint8_t *>(VARDATA(result)), total);
	std::span<std::uint8_t> body = out.subspan(BodyOffset(header.algorithm), len);
	plain->data = body.data();
	plain->len = len;
	OpenInto(source, in, context, body);
	if (header.algorithm == pgkm::core::Algorithm::Aes256Gcm)
		memcpy(nonce, in.data() + pgkm::core::kHeaderSize, pgkm::core::kGcmNonceSize);
	PG_FREE_IF_COPY(ciphertext, 0);
	SealTo(target, body, context, out);
	plain->data = nullptr; // sealed: nothing left to wipe
	return result;
}

} // namespace

int32 pgkm::pg::LockMasterKey(const char *label, char **state)
{
	CatalogExec("LOCK TABLE pgkm.master_keys IN SHARE ROW EXCLUSIVE MODE", 0, nullptr, nullptr,
				nullptr, SPI_OK_UTILITY);
	Oid types[1] = {TEXTOID};
	Datum values[1] = {CStringGetTextDatum(label)};
	if (CatalogExec("SELECT master_key_id, state FROM pgkm.master_keys"
					" WHERE label OPERATOR(pg_catalog.=) $1",
					1, types, values, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("master key \"%s\" does not exist", label),
						errdetail("pgkm.master_keys has no master key with this label.")));
	bool isnull;
	int32 master_key_id = DatumGetInt32(CatalogValue(0, 1, &isnull));
	*state = CatalogText(0, 2);
	return master_key_id;
}

void pgkm::pg::RequireNothingWrappedUnder(int32 master_key_id, const char *label)
{
	// Waits for writers of key versions and holds new ones off until commit, so the count
	// stays true.
	CatalogExec("LOCK TABLE pgkm.key_versions IN SHARE MODE", 0, nullptr, nullptr, nullptr,
				SPI_OK_UTILITY);
	Oid id_type[1] = {INT4OID};
	Datum id_value[1] = {Int32GetDatum(master_key_id)};
	CatalogExec("SELECT pg_catalog.count(*) FROM pgkm.key_versions"
				" WHERE master_key_id OPERATOR(pg_catalog.=) $1",
				1, id_type, id_value, nullptr, SPI_OK_SELECT);
	bool isnull;
	int64 wrapped = DatumGetInt64(CatalogValue(0, 1, &isnull));
	if (wrapped > 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg_plural("master key \"%s\" still wraps %lld key version",
									  "master key \"%s\" still wraps %lld key versions", wrapped,
									  label, (long long)wrapped),
						errhint("pgkm.rotate_master_key() re-wraps every key version under a new "
								"master key.")));
}

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_ciphertext_key_id);
	PG_FUNCTION_INFO_V1(pgkm_ciphertext_version);
	PG_FUNCTION_INFO_V1(pgkm_rewrap);
	PG_FUNCTION_INFO_V1(pgkm_disable_key_version);
	PG_FUNCTION_INFO_V1(pgkm_enable_key_version);
	PG_FUNCTION_INFO_V1(pgkm_destroy_key_version);
	PG_FUNCTION_INFO_V1(pgkm_set_rotation_policy);
	PG_FUNCTION_INFO_V1(pgkm_rotate_master_key);
	PG_FUNCTION_INFO_V1(pgkm_retire_master_key);
	Datum pgkm_ciphertext_key_id(PG_FUNCTION_ARGS);
	Datum pgkm_ciphertext_version(PG_FUNCTION_ARGS);
	Datum pgkm_rewrap(PG_FUNCTION_ARGS);
	Datum pgkm_disable_key_version(PG_FUNCTION_ARGS);
	Datum pgkm_enable_key_version(PG_FUNCTION_ARGS);
	Datum pgkm_destroy_key_version(PG_FUNCTION_ARGS);
	Datum pgkm_set_rotation_policy(PG_FUNCTION_ARGS);
	Datum pgkm_rotate_master_key(PG_FUNCTION_ARGS);
	Datum pgkm_retire_master_key(PG_FUNCTION_ARGS);
}

// pgkm.ciphertext_key_id(ciphertext): the key id in the header; no catalog access.
Datum pgkm_ciphertext_key_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(HeaderOfArgument(fcinfo).key_id);
}

// pgkm.ciphertext_version(ciphertext): the key version in the header; no catalog access.
Datum pgkm_ciphertext_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(HeaderOfArgument(fcinfo).key_version);
}

// pgkm_rewrap(ciphertext, context): the value re-encrypted under its key's active version,
// or the input itself when it already is. Needs both key roles; the plaintext lives only in
// a context that wipes it, whether the call returns or fails.
Datum pgkm_rewrap(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	audit_failing = AuditTarget{};
	VersionEntry *volatile used = nullptr;
	bytea *volatile result = nullptr;
	std::uint8_t nonce[pgkm::core::kGcmNonceSize];
	PG_TRY();
	{
		VersionEntry *source = nullptr;
		result = Rewrap(fcinfo, &source, nonce);
		used = source;
	}
	PG_CATCH();
	{
		KeyCacheRewrapping(false);
		AuditFailDataPath(AuditOp::Rewrap);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (used)
		AuditUse(AuditOp::Rewrap, used, NonceOf(used, nonce));
	PG_RETURN_BYTEA_P(result);
}

// pgkm.disable_key_version(key_name, version): refuses every use of an active or decrypt-only
// version until it is enabled again. Disabling the active version stops encryption.
Datum pgkm_disable_key_version(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32 version = PG_GETARG_INT32(1);
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	VersionRow row = LockVersion(key_id, name, version);
	if (strcmp(row.state, "disabled") == 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("key \"%s\" version %d is already disabled", name, version)));
	if (strcmp(row.state, "active") != 0 && strcmp(row.state, "decrypt_only") != 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("key \"%s\" version %d is %s and cannot be disabled", name, version,
							   row.state),
						errdetail("Only an active or decrypt-only version can be disabled.")));
	SetVersionState(key_id, version, "disabled", row.state);
	PublishAtCommit();
	char detail[32];
	snprintf(detail, sizeof(detail), "from %s", row.state);
	RecordKeyEvent(caller_name, "version_disable", key_id, version, detail);
	CatalogClose(&session);
	if (strcmp(row.state, "active") == 0)
		ereport(NOTICE, (errmsg("key \"%s\" has no active version now", name),
						 errdetail("Encrypting with it fails until version %d is enabled again or "
								   "the key is rotated.",
								   version)));
	PG_RETURN_VOID();
}

// pgkm.enable_key_version(key_name, version): returns a disabled version to the state it was
// disabled from; a formerly active one becomes decrypt-only if a newer version is active.
Datum pgkm_enable_key_version(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32 version = PG_GETARG_INT32(1);
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	VersionRow row = LockVersion(key_id, name, version);
	if (strcmp(row.state, "disabled") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key \"%s\" version %d is %s, not disabled", name, version, row.state)));
	const char *state = row.disabled_from;
	char detail[96];
	snprintf(detail, sizeof(detail), "to %s", state);
	int32 active = strcmp(state, "active") == 0 ? ActiveVersion(key_id) : 0;
	if (active != 0)
	{
		state = "decrypt_only";
		snprintf(detail, sizeof(detail), "to decrypt_only (version %d is active)", active);
	}
	SetVersionState(key_id, version, state, nullptr);
	PublishAtCommit();
	RecordKeyEvent(caller_name, "version_enable", key_id, version, detail);
	CatalogClose(&session);
	PG_RETURN_VOID();
}

// pgkm.destroy_key_version(key_name, version): erases a version's wrapped DEK for good
// (crypto-shredding), once a scan proves that no protected column holds a value under it.
Datum pgkm_destroy_key_version(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32 version = PG_GETARG_INT32(1);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR, (errcode(ERRCODE_INVALID_TRANSACTION_STATE),
						errmsg("pgkm.destroy_key_version() must run at isolation level "
							   "READ COMMITTED"),
						errdetail("Its scan must see the values that writers it waited for "
								  "committed after this transaction's snapshot.")));
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	VersionRow row = LockVersion(key_id, name, version);
	if (strcmp(row.state, "destroyed") == 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("key \"%s\" version %d is already destroyed", name, version)));
	// A disabled version that was active stays the key's active one until a rotation.
	bool disabled_active = strcmp(row.disabled_from, "active") == 0 && ActiveVersion(key_id) == 0;
	if (strcmp(row.state, "active") == 0 || disabled_active)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key \"%s\" version %d is its active version%s and cannot be destroyed",
						name, version, disabled_active ? " (disabled)" : ""),
				 errhint("Rotate the key first (pgkm.rotate_key), and let the re-encryption of "
						 "its protected columns finish.")));
	uint64 scanned = RequireUnreferenced(key_id, name, version);
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum(version)};
	CatalogExec("UPDATE pgkm.key_versions SET wrapped_dek = NULL, key_check = NULL,"
				" master_key_id = NULL, state = 'destroyed', disabled_from = NULL,"
				" state_changed_at = pg_catalog.now()"
				" WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
				2, types, values, nullptr, SPI_OK_UPDATE);
	PublishAtCommit();
	char detail[96];
	snprintf(detail, sizeof(detail), "was %s; protected columns scanned: %llu", row.state,
			 (unsigned long long)scanned);
	RecordKeyEvent(caller_name, "version_destroy", key_id, version, detail);
	CatalogClose(&session);
	PG_RETURN_VOID();
}

// pgkm.set_rotation_policy(key_name, max_age, max_encryptions): when the worker rotates the
// key. NULL leaves a field unchanged; a zero max_age clears the age policy.
Datum pgkm_set_rotation_policy(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = RequiredText(fcinfo, 0, "key name");
	bool clear_age = false;
	if (!PG_ARGISNULL(1))
	{
		Interval zero;
		memset(&zero, 0, sizeof(zero));
		Datum age = PG_GETARG_DATUM(1);
		clear_age = DatumGetBool(DirectFunctionCall2(interval_eq, age, IntervalPGetDatum(&zero)));
		if (!clear_age &&
			!DatumGetBool(DirectFunctionCall2(interval_gt, age, IntervalPGetDatum(&zero))))
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("max_age must be a positive interval, or 0 to clear it")));
	}
	if (!PG_ARGISNULL(2) && (PG_GETARG_INT64(2) < 1 || PG_GETARG_INT64(2) > kMaxEncryptionsLimit))
		ereport(
			ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("max_encryptions must be between 1 and %lld", (long long)kMaxEncryptionsLimit),
			 errdetail("AES-256-GCM with random nonces must stay well below 2^32 encryptions "
					   "per key version.")));
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	Oid types[4] = {INT8OID, BOOLOID, INTERVALOID, INT8OID};
	Datum values[4] = {Int64GetDatum(key_id), BoolGetDatum(clear_age),
					   PG_ARGISNULL(1) ? (Datum)0 : PG_GETARG_DATUM(1),
					   PG_ARGISNULL(2) ? (Datum)0 : PG_GETARG_DATUM(2)};
	char nulls[4] = {' ', ' ', PG_ARGISNULL(1) ? 'n' : ' ', PG_ARGISNULL(2) ? 'n' : ' '};
	CatalogExec("UPDATE pgkm.keys SET rotation_max_age = CASE WHEN $2 THEN NULL"
				"  ELSE COALESCE($3, rotation_max_age) END,"
				" rotation_max_encryptions = COALESCE($4, rotation_max_encryptions)"
				" WHERE key_id OPERATOR(pg_catalog.=) $1"
				" RETURNING COALESCE(rotation_max_age::pg_catalog.text, 'none'),"
				" rotation_max_encryptions",
				4, types, values, nulls, SPI_OK_UPDATE_RETURNING);
	bool isnull;
	char *detail = psprintf("max_age %s, max_encryptions %lld", CatalogText(0, 1),
							(long long)DatumGetInt64(CatalogValue(0, 2, &isnull)));
	RecordKeyEvent(caller_name, "policy_set", key_id, 0, detail);
	CatalogClose(&session);
	PG_RETURN_VOID();
}

// pgkm.rotate_master_key(): makes the next master key active and re-wraps every stored DEK
// under it, in this transaction; O(key versions), never O(rows). Returns the new label.
Datum pgkm_rotate_master_key(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	CatalogOpenAdmin(&session);
	// Serialises with other master-key changes and with the first create_key.
	CatalogExec("LOCK TABLE pgkm.master_keys IN SHARE ROW EXCLUSIVE MODE", 0, nullptr, nullptr,
				nullptr, SPI_OK_UTILITY);
	if (CatalogExec(
			"SELECT label FROM pgkm.master_keys WHERE state OPERATOR(pg_catalog.=) 'active'", 0,
			nullptr, nullptr, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("there is no master key yet"),
						errhint("The first pgkm.create_key() creates one.")));
	char old_label[kMaxLabel];
	strlcpy(old_label, CatalogText(0, 1), sizeof(old_label));
	std::uint64_t catalog_version = NewestCatalogMasterVersion(guc_master_key_label);

	MasterKeyChoice next;
	PGKM_TOKEN_CALL(NextMasterKey(guc_master_key_label, catalog_version, &next));
	CatalogExec("UPDATE pgkm.master_keys SET state = 'previous'"
				" WHERE state OPERATOR(pg_catalog.=) 'active'",
				0, nullptr, nullptr, nullptr, SPI_OK_UPDATE);
	Oid types[3] = {TEXTOID, BOOLOID, NAMEOID};
	Datum values[3] = {CStringGetTextDatum(next.label), BoolGetDatum(next.generated),
					   CatalogName(caller_name)};
	CatalogExec("INSERT INTO pgkm.master_keys (label, state, generated, created_by)"
				" VALUES ($1, 'active', $2, $3) RETURNING master_key_id",
				3, types, values, nullptr, SPI_OK_INSERT_RETURNING);
	bool isnull;
	int32 master_key_id = DatumGetInt32(CatalogValue(0, 1, &isnull));

	// Serialises with the worker's count flushes, which update many version rows in another
	// order than the rows are locked below (a deadlock otherwise); writes still proceed.
	CatalogExec("LOCK TABLE pgkm.key_versions IN SHARE UPDATE EXCLUSIVE MODE", 0, nullptr, nullptr,
				nullptr, SPI_OK_UTILITY);
	uint64 n;
	WrappedRow *rows = LockWrappedElsewhere(master_key_id, &n);
	auto *key_ids = static_cast<Datum *>(palloc(sizeof(Datum) * kRewrapBatch));
	auto *versions = static_cast<Datum *>(palloc(sizeof(Datum) * kRewrapBatch));
	auto *blobs = static_cast<Datum *>(palloc(sizeof(Datum) * kRewrapBatch));
	char mechanism[sizeof(WrappedDek::mechanism)] = "";
	for (uint64 start = 0; start < n; start += kRewrapBatch)
	{
		int batch = (int)Min(kRewrapBatch, n - start);
		for (int i = 0; i < batch; i++)
		{
			CHECK_FOR_INTERRUPTS();
			const WrappedRow &row = rows[start + i];
			ByteView wrapped(reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(row.wrapped)),
							 VARSIZE_ANY_EXHDR(row.wrapped));
			ByteView check(reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(row.check)),
						   VARSIZE_ANY_EXHDR(row.check));
			WrappedDek dek;
			PGKM_TOKEN_CALL(RewrapDek(row.master_label, next.label, row.key_name,
									  (std::uint32_t)row.key_id, (std::uint32_t)row.version,
									  wrapped, check, &dek));
			bytea *blob = static_cast<bytea *>(palloc(VARHDRSZ + dek.wrapped_len));
			SET_VARSIZE(blob, VARHDRSZ + dek.wrapped_len);
			memcpy(VARDATA(blob), dek.wrapped, dek.wrapped_len);
			key_ids[i] = Int64GetDatum(row.key_id);
			versions[i] = Int32GetDatum(row.version);
			blobs[i] = PointerGetDatum(blob);
			strlcpy(mechanism, dek.mechanism, sizeof(mechanism));
		}
		StoreRewrapped(key_ids, versions, blobs, batch, master_key_id, mechanism);
	}
	PublishAtCommit();

	ereport(LOG, (errmsg("pgkm: rotated master key from \"%s\" to \"%s\" (%llu key versions "
						 "re-wrapped)",
						 old_label, next.label, (unsigned long long)n),
				  errdetail(next.generated ? "pgkm generated \"%s\" in PKCS#11 token \"%s\"."
										   : "pgkm found \"%s\" in PKCS#11 token \"%s\".",
							next.label, guc_pkcs11_token_label)));
	char *detail =
		psprintf("%s -> %s (%s; %llu key versions re-wrapped)", old_label, next.label,
				 next.generated ? "generated" : "found in the token", (unsigned long long)n);
	RecordKeyEvent(caller_name, "master_rotate", 0, 0, detail);
	CatalogClose(&session);
	PG_RETURN_TEXT_P(cstring_to_text(next.label));
}

// pgkm.retire_master_key(label): marks a master key that no longer wraps any DEK retired, so
// it may leave the token. Refuses the active master key and one still in use.
Datum pgkm_retire_master_key(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *label = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	CatalogOpenAdmin(&session);
	char *state;
	int32 master_key_id = LockMasterKey(label, &state);
	if (strcmp(state, "active") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("master key \"%s\" is the active master key and cannot be retired", label),
				 errhint("Rotate the master key first: pgkm.rotate_master_key().")));
	if (strcmp(state, "retired") == 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("master key \"%s\" is already retired", label)));
	RequireNothingWrappedUnder(master_key_id, label);
	Oid id_type[1] = {INT4OID};
	Datum id_value[1] = {Int32GetDatum(master_key_id)};
	CatalogExec("UPDATE pgkm.master_keys SET state = 'retired', retired_at = pg_catalog.now()"
				" WHERE master_key_id OPERATOR(pg_catalog.=) $1",
				1, id_type, id_value, nullptr, SPI_OK_UPDATE);
	RecordKeyEvent(caller_name, "master_retire", 0, 0, label);
	CatalogClose(&session);
	PG_RETURN_VOID();
}
