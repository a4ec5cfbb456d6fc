// Per-subject erasure (crypto-shredding) and master-key destruction. pgkm.erase_subject
// destroys every version of one key in one transaction, marks the key erased (its name is
// never reused) and returns a report that serves as evidence. pgkm.destroy_master_key deletes
// a retired master key from the token: that is what makes an erased key's wrapped DEKs,
// which survive in backups, WAL and dead row versions taken before the erasure, unreadable.
//
// Decisions (see also the README's "Per-subject keys and erasure"):
// - Every version is destroyed whatever its state, the active one included, irreversibly.
// - Ciphertexts under the key are left where they are: they cannot be decrypted any more
//   (55000, destroyed version), and deleting rows is the application's business.
// - The report counts the values under the key in every registered protected column,
//   whatever key the column is registered with (per-subject keys usually share one column).
//   Each column is scanned as its table's owner, in a subtransaction: a table that cannot be
//   scanned is reported with its error and never stops the erasure.
// - Open re-encryption jobs of the key are cancelled; every backend's key cache is emptied
//   at commit (the generation counter, also with triggers off), and on hot standbys at replay.
#include "pgkm/core/format.hpp"
#include "pgkm/pg/token.hpp"

#include <cstdio>
#include <cstring>

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
#include "utils/json.h"
#include "utils/resowner.h"
}

using namespace pgkm::pg;

namespace
{

// Versions listed by name in the key_events detail; the report lists them all.
constexpr int kVersionsInDetail = 32;

// One version of the key being erased, as it was before.
struct ErasedVersion
{
	int32 version;
	char *state;
	char *master_label; // nullptr when it had no wrapped DEK any more (destroyed before)
};

// What the scan of one protected column found under the erased key.
struct ColumnScan
{
	char *table;          // regclass text, qualified
	char *column;         // unquoted
	char *registered_key; // the key the column is registered with
	bool registered_here; // registered with the erased key
	int64 rows;           // -1: the scan failed
	char *by_version;     // JSON object {"<version>": rows, ...}
	char sqlstate[6];
	char *message; // the scan's error message, when it failed
};

// Reads the non-null text argument arg or raises null_value_not_allowed.
char *RequiredText(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

// Whether pgkm.keys has the erasure columns (pgkm 1.4). Valid once a catalog session is open.
bool ErasureColumnsExist()
{
	Oid relid = CatalogKeysRelid();
	return OidIsValid(relid) && get_attnum(relid, "erased_at") != InvalidAttrNumber;
}

// Appends a JSON string (or null).
void JsonString(StringInfo buf, const char *value)
{
	if (value == nullptr)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

// Appends "<key>": to a JSON object being built, with a comma unless it is the first member.
void JsonKey(StringInfo buf, const char *key, bool *first)
{
	if (!*first)
		appendStringInfoChar(buf, ',');
	*first = false;
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

// Reads a 4-byte big-endian header field returned as bytea.
std::uint32_t HeaderField(Datum d)
{
	bytea *field = DatumGetByteaPP(d);
	if (VARSIZE_ANY_EXHDR(field) != 4)
		return 0;
	auto *b = reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(field));
	return (std::uint32_t)b[0] << 24 | (std::uint32_t)b[1] << 16 | (std::uint32_t)b[2] << 8 | b[3];
}

// Counts the values of one protected column whose header names key_id, by version, as the
// table's owner. May raise any error (the table's code runs): ScanColumn catches it.
void CountUnderKey(ColumnScan *scan, Oid relid, int64 key_id)
{
	RequireByteaColumn(relid, scan->column);
	char *expr = psprintf("%s::pg_catalog.bytea", quote_identifier(scan->column));
	// Every version: a version field, as 4 big-endian bytes, is always >= 0.
	char *sql = psprintf("SELECT pg_catalog.substr(%s, 7, 4), pg_catalog.count(*) FROM %s"
						 " WHERE %s GROUP BY 1 ORDER BY 1",
						 expr, scan->table, HeaderPredicate(expr, 1, ">=", 2));
	Oid types[2] = {BYTEAOID, BYTEAOID};
	Datum values[2] = {HeaderFieldDatum((std::uint32_t)key_id), HeaderFieldDatum(0)};
	OwnerSession owner;
	OwnerOpen(relid, &owner);
	uint64 n = CatalogExec(sql, 2, types, values, nullptr, SPI_OK_SELECT);
	OwnerClose(&owner);
	StringInfoData by_version;
	initStringInfo(&by_version);
	appendStringInfoChar(&by_version, '{');
	int64 rows = 0;
	bool first = true;
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		std::uint32_t version = HeaderField(CatalogValue(i, 1, &isnull));
		int64 count = DatumGetInt64(CatalogValue(i, 2, &isnull));
		char key[16];
		snprintf(key, sizeof(key), "%u", version);
		JsonKey(&by_version, key, &first);
		appendStringInfo(&by_version, "%lld", (long long)count);
		rows += count;
	}
	appendStringInfoChar(&by_version, '}');
	scan->rows = rows;
	scan->by_version = by_version.data;
}

// Scans one protected column in a subtransaction. A failure (a forced row-level security
// policy, a column no longer bytea, a lock timeout, ...) is recorded in the scan, not raised:
// a table must not be able to stop an erasure. A cancel is raised, as it should be.
void ScanColumn(ColumnScan *scan, Oid relid, int64 key_id)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int depth = catalog_session_depth;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		CountUnderKey(scan, relid, key_id);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		ErrorData *error = CopyErrorData();
		if (error->sqlerrcode == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		// The audit's subtransaction callback forgot the open catalog session: it still is.
		catalog_session_depth = depth;
		scan->rows = -1;
		strlcpy(scan->sqlstate, unpack_sql_state(error->sqlerrcode), sizeof(scan->sqlstate));
		scan->message = pstrdup(error->message);
		FreeErrorData(error);
	}
	PG_END_TRY();
}

// Scans every registered protected column for values under key_id. Returns the scans (of
// tables that still exist) and their number in *count.
ColumnScan *ScanProtectedColumns(int64 key_id, uint64 *count)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	uint64 n = CatalogExec("SELECT p.table_name::pg_catalog.oid, p.table_name::pg_catalog.text,"
						   " p.column_name::pg_catalog.text, k.name,"
						   " p.key_id OPERATOR(pg_catalog.=) $1"
						   " FROM pgkm.protected_columns p"
						   " JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) p.key_id"
						   " ORDER BY 2, 3",
						   1, types, values, nullptr, SPI_OK_SELECT);
	auto *scans = static_cast<ColumnScan *>(palloc0(sizeof(ColumnScan) * (n + 1)));
	Oid *relids = static_cast<Oid *>(palloc(sizeof(Oid) * (n + 1)));
	uint64 kept = 0;
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		Oid relid = DatumGetObjectId(CatalogValue(i, 1, &isnull));
		if (get_rel_name(relid) == nullptr)
			continue; // the table was dropped: nothing of it can be read any more
		relids[kept] = relid;
		scans[kept].table = CatalogText(i, 2);
		scans[kept].column = CatalogText(i, 3);
		scans[kept].registered_key = CatalogText(i, 4);
		scans[kept].registered_here = DatumGetBool(CatalogValue(i, 5, &isnull));
		kept++;
	}
	// The scans run statements of their own: the list above is copied first.
	for (uint64 i = 0; i < kept; i++)
	{
		CHECK_FOR_INTERRUPTS();
		ScanColumn(&scans[i], relids[i], key_id);
	}
	*count = kept;
	return scans;
}

// Cancels the key's open re-encryption jobs; returns their ids as a JSON array.
char *CancelJobs(int64 key_id, uint64 *count)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	uint64 n = CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'cancelled',"
						   " updated_at = pg_catalog.now(), finished_at = pg_catalog.now(),"
						   " error = 'key erased'"
						   " WHERE key_id OPERATOR(pg_catalog.=) $1"
						   " AND state OPERATOR(pg_catalog.=) ANY ('{pending,running,paused}')"
						   " RETURNING job_id",
						   1, types, values, nullptr, SPI_OK_UPDATE_RETURNING);
	StringInfoData jobs;
	initStringInfo(&jobs);
	appendStringInfoChar(&jobs, '[');
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		appendStringInfo(&jobs, "%s%lld", i ? "," : "",
						 (long long)DatumGetInt64(CatalogValue(i, 1, &isnull)));
	}
	appendStringInfoChar(&jobs, ']');
	*count = n;
	return jobs.data;
}

// Locks and reads every version of the key, oldest first.
ErasedVersion *LockVersions(int64 key_id, uint64 *count)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	uint64 n = CatalogExec(
		"SELECT v.version, v.state, m.label FROM pgkm.key_versions v"
		" LEFT JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id"
		" WHERE v.key_id OPERATOR(pg_catalog.=) $1 ORDER BY v.version FOR UPDATE OF v",
		1, types, values, nullptr, SPI_OK_SELECT);
	auto *versions = static_cast<ErasedVersion *>(palloc0(sizeof(ErasedVersion) * (n + 1)));
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		versions[i].version = DatumGetInt32(CatalogValue(i, 1, &isnull));
		versions[i].state = CatalogText(i, 2);
		versions[i].master_label = CatalogText(i, 3);
	}
	*count = n;
	return versions;
}

// Raises object_not_in_prerequisite_state if the key was erased already.
void RefuseErasedTwice(int64 key_id, const char *name)
{
	char *when = KeyErasure(key_id);
	if (when)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("key \"%s\" was already erased", name),
						errdetail("pgkm.erase_subject() destroyed every version of it %s.", when)));
}

// Makes hot standbys empty their backends' key caches too, when they replay this transaction.
// The generation counter that empties every cache at commit lives in this server's shared
// memory, and a standby's backends would otherwise keep a key they cached until
// pgkm.key_cache_ttl. A relcache invalidation of pgkm.keys travels in the commit record; each
// backend, here and on every standby, processes it at its next transaction start, and the key
// cache's relcache callback then empties its cache.
void InvalidateCachesOnStandbys()
{
	CacheInvalidateRelcacheByRelid(CatalogKeysRelid());
}

// Appends what remains of the key after the erasure, and how to close it, as a JSON array.
void AppendRemains(StringInfo buf, const ErasedVersion *versions, uint64 nversions,
				   int64 rows_found, uint64 failed_scans)
{
	appendStringInfoChar(buf, '[');
	bool first_item = true;
	auto item = [&](const char *text)
	{
		if (!first_item)
			appendStringInfoChar(buf, ',');
		first_item = false;
		escape_json(buf, text);
	};
	// One item per master key that wrapped a DEK of the key: backups before now hold it.
	bool any_wrapped = false;
	for (uint64 i = 0; i < nversions; i++)
	{
		const char *label = versions[i].master_label;
		if (label == nullptr)
			continue;
		any_wrapped = true;
		bool seen = false;
		for (uint64 j = 0; j < i && !seen; j++)
			seen = versions[j].master_label && strcmp(versions[j].master_label, label) == 0;
		if (seen)
			continue;
		StringInfoData listed;
		initStringInfo(&listed);
		int in_label = 0;
		for (uint64 j = i; j < nversions; j++)
			if (versions[j].master_label && strcmp(versions[j].master_label, label) == 0)
				appendStringInfo(&listed, "%s%d", in_label++ ? ", " : "", versions[j].version);
		item(psprintf(
			"Backups taken before this erasure committed (base backups, WAL archives, dumps) "
			"hold the wrapped DEK of version%s %s under master key \"%s\", and decrypt this "
			"key's data as long as that master key exists. Rotate the master key "
			"(pgkm.rotate_master_key()), retire \"%s\" (pgkm.retire_master_key()) and destroy "
			"it (pgkm.destroy_master_key()) once no retained backup was taken before the "
			"rotation; also delete it from the HSM's own backups.",
			in_label > 1 ? "s" : "", listed.data, label, label));
	}
	if (any_wrapped)
		item("Until VACUUM, the old row versions of pgkm.key_versions that held these wrapped "
			 "DEKs remain in the table's files, and WAL keeps them longer; they are under the "
			 "same master key(s), so destroying them closes this too.");
	else
		item("No version of this key had a wrapped DEK any more (all were destroyed before).");
	if (rows_found > 0)
		item(psprintf("%lld value%s in protected columns remain under this key and can no longer "
					  "be decrypted; delete or overwrite the rows if they must go too.",
					  (long long)rows_found, rows_found == 1 ? "" : "s"));
	if (failed_scans > 0)
		item(psprintf("%llu protected column%s could not be scanned (see column_errors); values "
					  "under this key there, if any, are equally undecryptable.",
					  (unsigned long long)failed_scans, failed_scans == 1 ? "" : "s"));
	item("Only registered protected columns were scanned: ciphertexts copied elsewhere are "
		 "equally undecryptable, but plaintext read before the erasure (application caches, "
		 "exports, logs) is beyond pgkm.");
	item("Every backend empties its key cache at its next pgkm call after this commits; until "
		 "then an idle backend that had the key cached keeps its working key in locked memory.");
	appendStringInfoChar(buf, ']');
}

// Everything an erasure did and found: for its records and its report.
struct Erasure
{
	const char *name;
	int64 key_id;
	const char *current_user;
	const char *session_user;
	const char *erased_at; // as JSON writes a timestamptz, unquoted
	const ErasedVersion *versions;
	uint64 nversions;
	uint64 destroyed;
	const ColumnScan *scans;
	uint64 ncolumns;
	uint64 failed_scans;
	uint64 columns_with_rows;
	int64 rows_found;
	const char *jobs; // JSON array of job ids
	uint64 njobs;
	int64 event_id;
};

// Sums up the scans: rows found, columns with rows, columns that could not be scanned.
void Tally(Erasure *e)
{
	for (uint64 i = 0; i < e->ncolumns; i++)
	{
		if (e->scans[i].rows < 0)
			e->failed_scans++;
		else if (e->scans[i].rows > 0)
		{
			e->rows_found += e->scans[i].rows;
			e->columns_with_rows++;
		}
	}
}

// Records the erasure in pgkm.key_events, then in the audit log with the event's id, so the
// two records name each other. Returns the event id.
int64 RecordErasure(const Erasure &e)
{
	StringInfoData detail;
	initStringInfo(&detail);
	appendStringInfoString(&detail, "versions");
	for (uint64 i = 0; i < e.nversions && i < (uint64)kVersionsInDetail; i++)
		appendStringInfo(&detail, "%s %d (%s)", i ? "," : "", e.versions[i].version,
						 e.versions[i].state);
	if (e.nversions > (uint64)kVersionsInDetail)
		appendStringInfo(&detail, ", ... (%llu in all)", (unsigned long long)e.nversions);
	appendStringInfo(&detail, "; %lld rows found in %llu of %llu protected columns",
					 (long long)e.rows_found, (unsigned long long)e.columns_with_rows,
					 (unsigned long long)e.ncolumns);
	if (e.failed_scans > 0)
		appendStringInfo(&detail, " (%llu not scanned)", (unsigned long long)e.failed_scans);
	appendStringInfo(&detail, "; jobs cancelled: %llu; session user %s",
					 (unsigned long long)e.njobs, e.session_user);
	Oid types[3] = {NAMEOID, INT8OID, TEXTOID};
	Datum values[3] = {CatalogName(e.current_user), Int64GetDatum(e.key_id),
					   CStringGetTextDatum(detail.data)};
	CatalogExec("INSERT INTO pgkm.key_events (actor, action, key_id, detail)"
				" VALUES ($1, 'key_erase', $2, $3) RETURNING event_id",
				3, types, values, nullptr, SPI_OK_INSERT_RETURNING);
	bool isnull;
	int64 event_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	AuditAdmin("key_erase", e.name, 0,
			   psprintf("key_events %lld: %s", (long long)event_id, detail.data));
	return event_id;
}

// Appends the scanned columns as a JSON array: with errors (the scans that failed) or without
// (those that held values under the key, or are registered with it).
void AppendColumns(StringInfo buf, const Erasure &e, bool errors)
{
	appendStringInfoChar(buf, '[');
	bool first = true;
	for (uint64 i = 0; i < e.ncolumns; i++)
	{
		const ColumnScan &s = e.scans[i];
		if (errors ? s.rows >= 0 : (s.rows < 0 || (s.rows == 0 && !s.registered_here)))
			continue;
		appendStringInfoString(buf, first ? "{\"table\":" : ",{\"table\":");
		first = false;
		JsonString(buf, s.table);
		appendStringInfoString(buf, ",\"column\":");
		JsonString(buf, s.column);
		if (errors)
		{
			appendStringInfoString(buf, ",\"sqlstate\":");
			JsonString(buf, s.sqlstate);
			appendStringInfoString(buf, ",\"message\":");
			JsonString(buf, s.message);
			appendStringInfoChar(buf, '}');
			continue;
		}
		appendStringInfoString(buf, ",\"registered_key\":");
		JsonString(buf, s.registered_key);
		appendStringInfo(buf, ",\"rows\":%lld,\"rows_by_version\":%s}", (long long)s.rows,
						 s.by_version);
	}
	appendStringInfoChar(buf, ']');
}

// The report that pgkm.erase_subject returns, as JSON text.
char *ReportJson(const Erasure &e)
{
	StringInfoData report;
	initStringInfo(&report);
	bool first = true;
	appendStringInfoChar(&report, '{');
	JsonKey(&report, "key_name", &first);
	JsonString(&report, e.name);
	JsonKey(&report, "key_id", &first);
	appendStringInfo(&report, "%lld", (long long)e.key_id);
	JsonKey(&report, "erased_at", &first);
	appendStringInfo(&report, "\"%s\"", e.erased_at);
	JsonKey(&report, "erased_by", &first);
	appendStringInfoString(&report, "{\"current_user\":");
	JsonString(&report, e.current_user);
	appendStringInfoString(&report, ",\"session_user\":");
	JsonString(&report, e.session_user);
	appendStringInfoChar(&report, '}');
	JsonKey(&report, "versions", &first);
	appendStringInfoChar(&report, '[');
	for (uint64 i = 0; i < e.nversions; i++)
	{
		appendStringInfo(&report, "%s{\"version\":%d,\"state_before\":", i ? "," : "",
						 e.versions[i].version);
		JsonString(&report, e.versions[i].state);
		appendStringInfoString(&report, ",\"master_key\":");
		JsonString(&report, e.versions[i].master_label);
		appendStringInfoChar(&report, '}');
	}
	appendStringInfoChar(&report, ']');
	JsonKey(&report, "versions_destroyed", &first);
	appendStringInfo(&report, "%llu", (unsigned long long)e.destroyed);
	JsonKey(&report, "columns_scanned", &first);
	appendStringInfo(&report, "%llu", (unsigned long long)(e.ncolumns - e.failed_scans));
	JsonKey(&report, "columns", &first);
	AppendColumns(&report, e, false);
	JsonKey(&report, "column_errors", &first);
	AppendColumns(&report, e, true);
	JsonKey(&report, "rows_found", &first);
	appendStringInfo(&report, "%lld", (long long)e.rows_found);
	JsonKey(&report, "jobs_cancelled", &first);
	appendStringInfoString(&report, e.jobs);
	JsonKey(&report, "key_event_id", &first);
	appendStringInfo(&report, "%lld", (long long)e.event_id);
	// The worker appends the audit record once this transaction commits, so its seq is not
	// known yet: these fields find it.
	JsonKey(&report, "audit_record", &first);
	appendStringInfoString(&report, "{\"action\":\"key_erase\",\"key_name\":");
	JsonString(&report, e.name);
	appendStringInfo(&report,
					 ",\"backend_pid\":%d,\"detail_starts_with\":\"key_events %lld:\","
					 "\"written\":\"by the pgkm worker after this transaction commits\"}",
					 MyProcPid, (long long)e.event_id);
	JsonKey(&report, "remains", &first);
	AppendRemains(&report, e.versions, e.nversions, e.rows_found, e.failed_scans);
	appendStringInfoChar(&report, '}');
	return report.data;
}

} // namespace

namespace pgkm::pg
{

char *KeyErasure(int64 key_id)
{
	MemoryContext caller = CurrentMemoryContext;
	CatalogSession session;
	CatalogOpen(&session);
	char *result = nullptr;
	if (ErasureColumnsExist())
	{
		Oid types[1] = {INT8OID};
		Datum values[1] = {Int64GetDatum(key_id)};
		bool stale;
		if (CatalogQueryLatest("SELECT 'at ' OPERATOR(pg_catalog.||) erased_at::pg_catalog.text"
							   " OPERATOR(pg_catalog.||) ' by '"
							   " OPERATOR(pg_catalog.||) erased_by::pg_catalog.text"
							   " FROM pgkm.keys WHERE key_id OPERATOR(pg_catalog.=) $1"
							   " AND erased_at IS NOT NULL",
							   1, types, values, nullptr, &stale) == 1)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);
			result = CatalogText(0, 1);
			MemoryContextSwitchTo(old);
		}
	}
	CatalogClose(&session);
	return result;
}

void RefuseIfErased(int64 key_id, const char *key_name, const char *what)
{
	char *when = KeyErasure(key_id);
	if (when == nullptr)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("key \"%s\" was erased and cannot be %s", key_name, what),
			 errdetail("pgkm.erase_subject() destroyed every version of it %s; nothing can be "
					   "encrypted or decrypted under it any more.",
					   when),
			 errhint("An erased key keeps its name so that the name is never reused: use a key "
					 "of another name for new data.")));
}

} // namespace pgkm::pg

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_erase_subject);
	PG_FUNCTION_INFO_V1(pgkm_destroy_master_key);
	Datum pgkm_erase_subject(PG_FUNCTION_ARGS);
	Datum pgkm_destroy_master_key(PG_FUNCTION_ARGS);
}

// pgkm.erase_subject(key_name): destroys every version of the key (crypto-shredding), marks it
// erased, cancels its jobs and returns a jsonb report: the evidence of what was destroyed,
// by whom and when, what the protected columns held under it, and what remains.
Datum pgkm_erase_subject(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	Erasure e = {};
	e.name = RequiredText(fcinfo, 0, "key name");
	e.current_user = GetUserNameFromId(GetUserId(), false);
	e.session_user = GetUserNameFromId(GetSessionUserId(), false);
	MemoryContext caller = CurrentMemoryContext;

	// Locks order: the key row, then its jobs (a worker batch holds its job, then may retire
	// versions), then its versions. Other key administration locks the key row first.
	CatalogSession session;
	e.key_id = OpenOwnedKey(e.name, &session);
	RefuseErasedTwice(e.key_id, e.name);
	e.jobs = CancelJobs(e.key_id, &e.njobs);
	e.scans = ScanProtectedColumns(e.key_id, &e.ncolumns);
	e.versions = LockVersions(e.key_id, &e.nversions);

	Oid types[3] = {INT8OID, NAMEOID, NAMEOID};
	Datum values[3] = {Int64GetDatum(e.key_id), CatalogName(e.current_user),
					   CatalogName(e.session_user)};
	e.destroyed = CatalogExec(
		"UPDATE pgkm.key_versions SET wrapped_dek = NULL, key_check = NULL, master_key_id = NULL,"
		" state = 'destroyed', disabled_from = NULL, state_changed_at = pg_catalog.now()"
		" WHERE key_id OPERATOR(pg_catalog.=) $1"
		" AND state OPERATOR(pg_catalog.<>) 'destroyed'",
		1, types, values, nullptr, SPI_OK_UPDATE);
	CatalogExec("UPDATE pgkm.keys SET erased_at = pg_catalog.clock_timestamp(), erased_by = $2,"
				" erased_session_user = $3 WHERE key_id OPERATOR(pg_catalog.=) $1"
				" RETURNING erased_at",
				3, types, values, nullptr, SPI_OK_UPDATE_RETURNING);
	bool isnull;
	e.erased_at = JsonEncodeDateTime(nullptr, CatalogValue(0, 1, &isnull), TIMESTAMPTZOID, nullptr);
	// Every backend's cache, at commit, even with triggers off; and on hot standbys.
	KeyCacheCatalogChanged();
	InvalidateCachesOnStandbys();

	Tally(&e);
	e.event_id = RecordErasure(e);
	char *report = ReportJson(e);
	MemoryContext old = MemoryContextSwitchTo(caller);
	char *json = pstrdup(report);
	MemoryContextSwitchTo(old);
	CatalogClose(&session);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

// pgkm.destroy_master_key(label): deletes a retired master key from the token for good and
// records it. Superuser only: every DEK the key ever wrapped, in every backup and in every
// database that shares the token, becomes unreadable.
Datum pgkm_destroy_master_key(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	char *label = RequiredText(fcinfo, 0, "master key label");
	char *caller_name = GetUserNameFromId(GetUserId(), false);
	if (!superuser())
	{
		AuditAdminDenied("master key destruction", nullptr, "must be superuser");
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("must be superuser to destroy a master key"),
						errdetail("Every key version it ever wrapped, in every backup, becomes "
								  "unreadable for good.")));
	}
	CatalogSession session;
	CatalogOpenAdmin(&session);
	char *state;
	int32 master_key_id = LockMasterKey(label, &state);
	if (strcmp(state, "destroyed") == 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("master key \"%s\" is already destroyed", label)));
	if (strcmp(state, "active") == 0)
		ereport(
			ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("master key \"%s\" is the active master key and cannot be destroyed", label),
			 errhint("Rotate the master key first (pgkm.rotate_master_key()), then retire this "
					 "one (pgkm.retire_master_key('%s')).",
					 label)));
	if (strcmp(state, "retired") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("master key \"%s\" is not retired and cannot be destroyed", label),
				 errdetail("Only a retired master key, one that wraps no key version, can be "
						   "destroyed."),
				 errhint("Retire it first: pgkm.retire_master_key('%s') checks that no key version "
						 "is wrapped under it.",
						 label)));
	// Retirement proved that nothing is wrapped under it; a hand edit since then is refused.
	RequireNothingWrappedUnder(master_key_id, label);
	Oid update_types[2] = {INT4OID, NAMEOID};
	Datum update_values[2] = {Int32GetDatum(master_key_id), CatalogName(caller_name)};
	CatalogExec("UPDATE pgkm.master_keys SET state = 'destroyed',"
				" destroyed_at = pg_catalog.clock_timestamp(), destroyed_by = $2"
				" WHERE master_key_id OPERATOR(pg_catalog.=) $1",
				2, update_types, update_values, nullptr, SPI_OK_UPDATE);
	// Every backend drops keys it unwrapped under it (a restored copy's, say), also with
	// triggers off, and so do standbys' backends.
	KeyCacheCatalogChanged();
	InvalidateCachesOnStandbys();
	// The token is the last step: if it fails, the transaction rolls back and nothing is
	// recorded. If the commit fails after it, the key is gone and the catalog still says
	// retired: destroying it again records it (the token no longer holds it).
	bool existed = false;
	PGKM_TOKEN_CALL(existed = DestroyMasterKey(label));
	RecordKeyEvent(caller_name, "master_destroy", 0, 0,
				   psprintf("%s%s", label, existed ? "" : " (was not in the token)"));
	CatalogClose(&session);
	if (existed)
		ereport(LOG, (errmsg("pgkm: destroyed master key \"%s\" in PKCS#11 token \"%s\"", label,
							 guc_pkcs11_token_label)));
	else
		ereport(NOTICE,
				(errmsg("master key \"%s\" was not in PKCS#11 token \"%s\"; it is recorded as "
						"destroyed",
						label, guc_pkcs11_token_label),
				 errdetail("It was deleted from the token before, by pkcs11-tool or the HSM's "
						   "officers, say.")));
	PG_RETURN_VOID();
}
