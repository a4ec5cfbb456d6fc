// Key administration: create_key, rotate_key, alter_key_roles, the encryption counters
// and the trigger that publishes catalog changes. Catalog writes run in a catalog
// session (as the catalog owner); authorisation is checked against the real caller first.
#include "pgkm/pg/token.hpp"

#include "pgkm/pg/admin.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/erasure.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include "commands/trigger.h"
#include "utils/regproc.h"
}

using namespace pgkm::pg;

namespace
{

// Encryption counts added to the catalog in this transaction, subtracted from shared
// memory only if it commits (in TopTransactionContext); then the counters of versions that
// can no longer encrypt are freed.
CounterEntry *pending_flush = nullptr;
int pending_flush_count = 0;
bool flushed_this_transaction = false;
CounterEntry *pending_release = nullptr;
int pending_release_count = 0;
bool flush_callback_registered = false;
// Set while a flush updates pgkm.key_versions: a count is not cached by any backend, so that
// update must not empty every key cache (and reach for the token again) at commit.
bool flushing_counts = false;

// Raises invalid_parameter_value unless name is a valid key name (as the CHECK says).
void ValidateKeyName(const char *name)
{
	size_t len = strlen(name);
	bool ok = len >= 1 && len <= 63 && (isalpha((unsigned char)name[0]) || name[0] == '_');
	for (size_t i = 1; ok && i < len; i++)
		ok = isalnum((unsigned char)name[i]) || strchr("_.-:/", name[i]) != nullptr;
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("invalid key name \"%s\"", name),
				 errdetail("A key name has 1 to 63 characters: a letter or underscore, "
						   "then letters, digits, underscores, dots, hyphens, colons or "
						   "slashes (as in customer:4711).")));
}

// Reads the non-null text argument arg or raises null_value_not_allowed.
char *RequiredText(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

// Transaction callback: makes a flush's subtraction from shared memory final at commit.
void FlushXactCallback(XactEvent event, void *)
{
	if (event == XACT_EVENT_COMMIT)
	{
		for (int i = 0; i < pending_flush_count; i++)
			CounterSubtract(pending_flush[i]);
		for (int i = 0; i < pending_release_count; i++)
			CounterRelease(pending_release[i]);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
	{
		pending_flush = pending_release = nullptr;
		pending_flush_count = pending_release_count = 0;
		flushed_this_transaction = false;
		flushing_counts = false;
	}
}

} // namespace

namespace pgkm::pg
{

MasterKeyRow ActiveMasterKey(const char *caller_name)
{
	// FOR SHARE: a concurrent master-key rotation cannot demote it before this wrap commits.
	static const char *select_sql = "SELECT master_key_id, label FROM pgkm.master_keys"
									" WHERE state OPERATOR(pg_catalog.=) 'active' FOR SHARE";
	MasterKeyRow row;
	if (CatalogExec(select_sql, 0, nullptr, nullptr, nullptr, SPI_OK_SELECT) == 0)
	{
		CatalogExec("LOCK TABLE pgkm.master_keys IN SHARE ROW EXCLUSIVE MODE", 0, nullptr, nullptr,
					nullptr, SPI_OK_UTILITY);
	}
	if (CatalogExec(select_sql, 0, nullptr, nullptr, nullptr, SPI_OK_SELECT) == 1)
	{
		bool isnull;
		row.id = DatumGetInt32(CatalogValue(0, 1, &isnull));
		strlcpy(row.label, CatalogText(0, 2), sizeof(row.label));
		return row;
	}

	MasterKeyChoice choice;
	PGKM_TOKEN_CALL(FindOrGenerateMasterKey(guc_master_key_label, &choice));

	Oid types[3] = {TEXTOID, BOOLOID, NAMEOID};
	Datum values[3] = {CStringGetTextDatum(choice.label), BoolGetDatum(choice.generated),
					   CatalogName(caller_name)};
	CatalogExec("INSERT INTO pgkm.master_keys (label, generated, created_by)"
				" VALUES ($1, $2, $3) RETURNING master_key_id",
				3, types, values, nullptr, SPI_OK_INSERT_RETURNING);
	bool isnull;
	row.id = DatumGetInt32(CatalogValue(0, 1, &isnull));
	strlcpy(row.label, choice.label, sizeof(row.label));
	ereport(LOG, (errmsg(choice.generated
							 ? "pgkm: generated master key \"%s\" in PKCS#11 token \"%s\""
							 : "pgkm: using master key \"%s\" found in PKCS#11 token \"%s\"",
						 row.label, guc_pkcs11_token_label)));
	return row;
}

NewVersion WrapNewVersion(int64 key_id, int32 version, const char *caller_name)
{
	MasterKeyRow master = ActiveMasterKey(caller_name);
	NewVersion result;
	result.master_key_id = master.id;
	PGKM_TOKEN_CALL(
		NewWrappedDek(master.label, (std::uint32_t)key_id, (std::uint32_t)version, &result.dek));
	return result;
}

void StoreVersion(int64 key_id, int32 version, const NewVersion &v, const char *caller_name)
{
	bytea *wrapped = static_cast<bytea *>(palloc(VARHDRSZ + v.dek.wrapped_len));
	SET_VARSIZE(wrapped, VARHDRSZ + v.dek.wrapped_len);
	memcpy(VARDATA(wrapped), v.dek.wrapped, v.dek.wrapped_len);
	bytea *check = static_cast<bytea *>(palloc(VARHDRSZ + sizeof(v.dek.check)));
	SET_VARSIZE(check, VARHDRSZ + sizeof(v.dek.check));
	memcpy(VARDATA(check), v.dek.check, sizeof(v.dek.check));

	Oid types[7] = {INT8OID, INT4OID, BYTEAOID, BYTEAOID, INT4OID, TEXTOID, NAMEOID};
	Datum values[7] = {Int64GetDatum(key_id),          Int32GetDatum(version),
					   PointerGetDatum(wrapped),       PointerGetDatum(check),
					   Int32GetDatum(v.master_key_id), CStringGetTextDatum(v.dek.mechanism),
					   CatalogName(caller_name)};
	CatalogExec("INSERT INTO pgkm.key_versions (key_id, version, state, wrapped_dek, key_check,"
				" master_key_id, wrap_mechanism, created_by)"
				" VALUES ($1, $2, 'active', $3, $4, $5, $6, $7)",
				7, types, values, nullptr, SPI_OK_INSERT);
	CounterReset((std::uint32_t)key_id, (std::uint32_t)version);
}

int64 LockKey(const char *name, Oid *owner)
{
	Oid types[1] = {TEXTOID};
	Datum values[1] = {CStringGetTextDatum(name)};
	if (CatalogExec("SELECT key_id, owner::oid FROM pgkm.keys WHERE name OPERATOR(pg_catalog.=) $1"
					" FOR UPDATE",
					1, types, values, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("key \"%s\" does not exist", name)));
	bool isnull;
	*owner = DatumGetObjectId(CatalogValue(0, 2, &isnull));
	return DatumGetInt64(CatalogValue(0, 1, &isnull));
}

void CheckKeyOwner(Oid caller, Oid owner, const char *name)
{
	if (superuser_arg(caller) || has_privs_of_role(caller, owner))
		return;
	AuditAdminDenied("key administration", name, "must be owner of key");
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("must be owner of key \"%s\"", name)));
}

int64 OpenOwnedKey(const char *name, CatalogSession *session)
{
	Oid caller = GetUserId();
	CatalogOpenAdmin(session);
	Oid owner;
	int64 key_id = LockKey(name, &owner);
	CheckKeyOwner(caller, owner, name);
	return key_id;
}

int64 FlushEncryptionCounts()
{
	if (!flush_callback_registered)
	{
		RegisterXactCallback(FlushXactCallback, nullptr);
		flush_callback_registered = true;
	}
	// Counts taken by a flush leave shared memory only at commit: a second flush in the same
	// transaction would add them again.
	if (flushed_this_transaction)
		return 0;
	// Serialises flushes, so no count is added to the catalog twice.
	CatalogExec("LOCK TABLE pgkm.key_versions IN SHARE UPDATE EXCLUSIVE MODE", 0, nullptr, nullptr,
				nullptr, SPI_OK_UTILITY);
	int n;
	CounterEntry *entries = CounterSnapshot(&n);
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	pending_flush = static_cast<CounterEntry *>(palloc(sizeof(CounterEntry) * (n + 1)));
	pending_release = static_cast<CounterEntry *>(palloc(sizeof(CounterEntry) * (n + 1)));
	MemoryContextSwitchTo(old);
	flushed_this_transaction = true;

	// One statement for every count: thousands of keys are normal.
	Datum *ids = static_cast<Datum *>(palloc(sizeof(Datum) * (n + 1)));
	Datum *versions = static_cast<Datum *>(palloc(sizeof(Datum) * (n + 1)));
	Datum *counts = static_cast<Datum *>(palloc(sizeof(Datum) * (n + 1)));
	int64 total = 0;
	int m = 0;
	for (int i = 0; i < n; i++)
	{
		if (entries[i].version > PG_INT32_MAX)
			continue;
		ids[m] = Int64GetDatum(entries[i].key_id);
		versions[m] = Int32GetDatum((int32)entries[i].version);
		counts[m] = Int64GetDatum((int64)entries[i].unflushed);
		entries[m++] = entries[i];
	}
	if (m == 0)
		return 0;
	Oid types[3] = {INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum values[3] = {
		PointerGetDatum(construct_array(ids, m, INT8OID, 8, true, TYPALIGN_DOUBLE)),
		PointerGetDatum(construct_array(versions, m, INT4OID, 4, true, TYPALIGN_INT)),
		PointerGetDatum(construct_array(counts, m, INT8OID, 8, true, TYPALIGN_DOUBLE))};
	flushing_counts = true;
	CatalogExec(
		"UPDATE pgkm.key_versions kv"
		" SET encryptions = kv.encryptions OPERATOR(pg_catalog.+) s.n"
		" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
		" AS s(k, v, n)"
		" WHERE s.n OPERATOR(pg_catalog.>) 0 AND kv.key_id OPERATOR(pg_catalog.=) s.k"
		" AND kv.version OPERATOR(pg_catalog.=) s.v",
		3, types, values, nullptr, SPI_OK_UPDATE);
	flushing_counts = false;
	for (int i = 0; i < m; i++)
		if (entries[i].unflushed > 0)
		{
			pending_flush[pending_flush_count++] = entries[i];
			total += (int64)entries[i].unflushed;
		}

	// Versions that can no longer encrypt: retired, destroyed, or gone with their key.
	uint64 rows =
		CatalogExec("SELECT s.i FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))"
					" WITH ORDINALITY AS s(k, v, i) WHERE NOT EXISTS ("
					"SELECT FROM pgkm.key_versions kv WHERE kv.key_id OPERATOR(pg_catalog.=) s.k"
					" AND kv.version OPERATOR(pg_catalog.=) s.v"
					" AND kv.state OPERATOR(pg_catalog.<>) ALL ('{retired,destroyed}'))",
					2, types, values, nullptr, SPI_OK_SELECT);
	for (uint64 r = 0; r < rows; r++)
	{
		bool isnull;
		int64 i = DatumGetInt64(CatalogValue(r, 1, &isnull)); // 1-based, into entries
		pending_release[pending_release_count++] = entries[i - 1];
	}
	return total;
}

int32 RotateKeyLocked(int64 key_id, const char *key_name, const char *actor, const char *why)
{
	// An erased key gets no new version, neither by hand nor by the worker's policy.
	RefuseIfErased(key_id, key_name, "rotated");
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	CatalogExec("SELECT pg_catalog.max(version) FROM pgkm.key_versions"
				" WHERE key_id OPERATOR(pg_catalog.=) $1",
				1, types, values, nullptr, SPI_OK_SELECT);
	bool isnull;
	Datum max_version = CatalogValue(0, 1, &isnull);
	if (!isnull && DatumGetInt32(max_version) == PG_INT32_MAX)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("key \"%s\" has no versions left", key_name)));
	int32 version = isnull ? 1 : DatumGetInt32(max_version) + 1;
	NewVersion next = WrapNewVersion(key_id, version, actor);
	CatalogExec("UPDATE pgkm.key_versions SET state = 'decrypt_only',"
				" state_changed_at = pg_catalog.now()"
				" WHERE key_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'active'",
				1, types, values, nullptr, SPI_OK_UPDATE);
	StoreVersion(key_id, version, next, actor);
	RecordKeyEvent(actor, "key_rotate", key_id, version, why);
	QueueReencryption(key_id, version, actor);
	return version;
}

} // namespace pgkm::pg

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_create_key);
	PG_FUNCTION_INFO_V1(pgkm_rotate_key);
	PG_FUNCTION_INFO_V1(pgkm_alter_key_roles);
	PG_FUNCTION_INFO_V1(pgkm_encryption_counts);
	PG_FUNCTION_INFO_V1(pgkm_flush_encryption_counts);
	PG_FUNCTION_INFO_V1(pgkm_catalog_changed);
	Datum pgkm_create_key(PG_FUNCTION_ARGS);
	Datum pgkm_rotate_key(PG_FUNCTION_ARGS);
	Datum pgkm_alter_key_roles(PG_FUNCTION_ARGS);
	Datum pgkm_encryption_counts(PG_FUNCTION_ARGS);
	Datum pgkm_flush_encryption_counts(PG_FUNCTION_ARGS);
	Datum pgkm_catalog_changed(PG_FUNCTION_ARGS);
}

// The blind-index length of a new key when none is given: 8 bytes (64 bits) give no false
// positive in practice below billions of rows; shorter ones leak less (README).
static constexpr int kDefaultBlindIndexBytes = 8;

// Reads create_key's algorithm and blind_index_bytes arguments (absent before 1.4) and checks
// them; *bytes is the stored length, or 0 (NULL) for keys that are not blind-index keys.
static const char *KeyAlgorithmArguments(FunctionCallInfo fcinfo, int *bytes)
{
	const char *algorithm =
		PG_NARGS() > 3 && !PG_ARGISNULL(3) ? text_to_cstring(PG_GETARG_TEXT_PP(3)) : "aes-256-gcm";
	bool given = PG_NARGS() > 4 && !PG_ARGISNULL(4);
	*bytes = given ? PG_GETARG_INT32(4) : 0;
	if (strcmp(algorithm, "aes-256-gcm") != 0 && strcmp(algorithm, "aes-256-siv") != 0 &&
		strcmp(algorithm, "blind-index") != 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("unknown key algorithm \"%s\"", algorithm),
						errdetail("A key's algorithm is aes-256-gcm (randomized: pgkm_encrypt), "
								  "aes-256-siv (deterministic: pgkm_encrypt_det) or blind-index "
								  "(pgkm_blind_index).")));
	if (strcmp(algorithm, "blind-index") != 0)
	{
		if (given)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("blind_index_bytes applies only to blind-index keys")));
		return algorithm;
	}
	if (!given)
		*bytes = kDefaultBlindIndexBytes;
	if (*bytes < 1 || *bytes > (int)pgkm::core::kBlindIndexMaxBytes)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("blind_index_bytes must be between 1 and %zu, not %d",
							   pgkm::core::kBlindIndexMaxBytes, *bytes),
						errdetail("A blind index keeps that many bytes of an HMAC-SHA-256.")));
	return algorithm;
}

// pgkm.create_key(name, encrypt_role, decrypt_role, algorithm, blind_index_bytes): a new key
// with version 1 active.
Datum pgkm_create_key(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = RequiredText(fcinfo, 0, "key name");
	ValidateKeyName(name);
	int blind_index_bytes;
	const char *algorithm = KeyAlgorithmArguments(fcinfo, &blind_index_bytes);
	Oid caller = GetUserId();
	Oid encrypt_role = PG_ARGISNULL(1) ? caller : PG_GETARG_OID(1);
	Oid decrypt_role = PG_ARGISNULL(2) ? caller : PG_GETARG_OID(2);
	char *caller_name = GetUserNameFromId(caller, false);

	CatalogSession session;
	CatalogOpenAdmin(&session);
	Oid name_type[1] = {TEXTOID};
	Datum name_value[1] = {CStringGetTextDatum(name)};
	if (CatalogExec("SELECT 1 FROM pgkm.keys WHERE name OPERATOR(pg_catalog.=) $1", 1, name_type,
					name_value, nullptr, SPI_OK_SELECT) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT), errmsg("key \"%s\" already exists", name)));
	CatalogExec("SELECT pg_catalog.nextval('pgkm.keys_key_id_seq')", 0, nullptr, nullptr, nullptr,
				SPI_OK_SELECT);
	bool isnull;
	int64 key_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	if (key_id > (int64)PG_UINT32_MAX)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("no key ids are left")));

	NewVersion first = WrapNewVersion(key_id, 1, caller_name);
	Oid types[8] = {INT8OID, TEXTOID, OIDOID, OIDOID, OIDOID, NAMEOID, TEXTOID, INT4OID};
	Datum values[8] = {Int64GetDatum(key_id),          CStringGetTextDatum(name),
					   ObjectIdGetDatum(caller),       ObjectIdGetDatum(encrypt_role),
					   ObjectIdGetDatum(decrypt_role), CatalogName(caller_name),
					   CStringGetTextDatum(algorithm), Int32GetDatum(blind_index_bytes)};
	char nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', blind_index_bytes ? ' ' : 'n'};
	// Before 1.4 the columns algorithm (one value) and blind_index_bytes do not all exist.
	bool v14 = PG_NARGS() > 3;
	CatalogExec(v14 ? "INSERT INTO pgkm.keys (key_id, name, owner, encrypt_role, decrypt_role,"
					  " created_by, algorithm, blind_index_bytes)"
					  " VALUES ($1, $2, $3::pg_catalog.regrole, $4::pg_catalog.regrole,"
					  " $5::pg_catalog.regrole, $6, $7, $8)"
					: "INSERT INTO pgkm.keys (key_id, name, owner, encrypt_role, decrypt_role,"
					  " created_by)"
					  " VALUES ($1, $2, $3::pg_catalog.regrole, $4::pg_catalog.regrole,"
					  " $5::pg_catalog.regrole, $6)",
				v14 ? 8 : 6, types, values, nulls, SPI_OK_INSERT);
	StoreVersion(key_id, 1, first, caller_name);
	char *detail = strcmp(algorithm, "aes-256-gcm") == 0 ? nullptr
				   : blind_index_bytes
					   ? psprintf("algorithm %s, %d bytes", algorithm, blind_index_bytes)
					   : psprintf("algorithm %s", algorithm);
	RecordKeyEvent(caller_name, "key_create", key_id, 1, detail);
	CatalogClose(&session);
	PG_RETURN_INT64(key_id);
}

// pgkm.rotate_key(name): a new active version; the previous one becomes decrypt-only.
Datum pgkm_rotate_key(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = RequiredText(fcinfo, 0, "key name");
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	int32 version = RotateKeyLocked(key_id, name, caller_name, "manual");
	CatalogClose(&session);
	PG_RETURN_INT32(version);
}

// pgkm.alter_key_roles(name, encrypt_role, decrypt_role): NULL leaves a role unchanged.
Datum pgkm_alter_key_roles(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *name = RequiredText(fcinfo, 0, "key name");
	CatalogSession session;
	int64 key_id = OpenOwnedKey(name, &session);
	Oid types[3] = {INT8OID, OIDOID, OIDOID};
	Datum values[3] = {Int64GetDatum(key_id), PG_ARGISNULL(1) ? (Datum)0 : PG_GETARG_DATUM(1),
					   PG_ARGISNULL(2) ? (Datum)0 : PG_GETARG_DATUM(2)};
	char nulls[3] = {' ', PG_ARGISNULL(1) ? 'n' : ' ', PG_ARGISNULL(2) ? 'n' : ' '};
	CatalogExec("UPDATE pgkm.keys SET"
				" encrypt_role = COALESCE($2::pg_catalog.regrole, encrypt_role),"
				" decrypt_role = COALESCE($3::pg_catalog.regrole, decrypt_role)"
				" WHERE key_id OPERATOR(pg_catalog.=) $1",
				3, types, values, nulls, SPI_OK_UPDATE);
	CatalogClose(&session);
	char detail[2 * NAMEDATALEN + 40];
	snprintf(detail, sizeof(detail), "encrypt_role=%s decrypt_role=%s",
			 PG_ARGISNULL(1) ? "(unchanged)" : GetUserNameFromId(PG_GETARG_OID(1), true),
			 PG_ARGISNULL(2) ? "(unchanged)" : GetUserNameFromId(PG_GETARG_OID(2), true));
	AuditAdmin("key_roles", name, 0, detail);
	PG_RETURN_VOID();
}

// pgkm.encryption_counts(): this database's counts in shared memory not yet flushed.
Datum pgkm_encryption_counts(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	ReturnSetInfo *rsinfo = (ReturnSetInfo *)fcinfo->resultinfo;
	InitMaterializedSRF(fcinfo, 0);
	int n;
	CounterEntry *entries = CounterSnapshot(&n);
	for (int i = 0; i < n; i++)
	{
		Datum values[3] = {Int64GetDatum(entries[i].key_id),
						   Int32GetDatum((int32)entries[i].version),
						   Int64GetDatum((int64)entries[i].unflushed)};
		bool nulls[3] = {false, false, false};
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum)0;
}

// pgkm.flush_encryption_counts(): adds the shared-memory counts to pgkm.key_versions;
// shared memory forgets them only when this transaction commits. Returns the total.
Datum pgkm_flush_encryption_counts(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	CatalogSession session;
	CatalogOpen(&session);
	int64 total = FlushEncryptionCounts();
	CatalogClose(&session);
	PG_RETURN_INT64(total);
}

// Statement trigger on the key catalog: any change invalidates key caches at commit, except
// the count updates of a flush.
Datum pgkm_catalog_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("pgkm.catalog_changed() must be called as a trigger")));
	if (!flushing_counts)
		KeyCacheCatalogChanged();
	return PointerGetDatum(nullptr);
}
