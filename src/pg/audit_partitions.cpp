// The partitions of pgkm.audit_log (see audit_partitions.hpp). Since 1.6 they are ordinary
// tables in schema pgkm, not extension members, each with its own indexes, so that pg_dump
// carries them and their records (pgkm--1.5--1.6.sql); the append-only guard admits records
// from a session other than the worker only while the log is empty, as in a restore.
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_partitions.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"

#include "pgkm/pg/postgres.hpp"

extern "C"
{
#include "access/htup_details.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "storage/lock.h"
#include "storage/proc.h"
}

namespace pgkm::pg
{

namespace
{

TimestampTz partition_upper = 0;  // the newest partition's upper bound, once known
Oid partition_relid = InvalidOid; // the pgkm.audit_log that partition_upper belongs to

// Takes a partition out of the extension if it is a member (as the worker makes them since
// 1.4), so that it can be dropped.
void LeaveExtension(const char *partition)
{
	char *qualified = psprintf("pgkm.%s", quote_identifier(partition));
	Oid types[1] = {TEXTOID};
	Datum values[1] = {CStringGetTextDatum(qualified)};
	if (CatalogExec(
			"SELECT 1 FROM pg_catalog.pg_depend"
			" WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
			" AND objid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
			" AND deptype OPERATOR(pg_catalog.=) 'e'",
			1, types, values, nullptr, SPI_OK_SELECT) > 0)
		CatalogExec(psprintf("ALTER EXTENSION pgkm DROP TABLE %s", qualified), 0, nullptr, nullptr,
					nullptr, SPI_OK_UTILITY);
}

// Creates partition name of pgkm.audit_log for [lower, upper) unless it exists: with its own
// (seq) and (key_name, seq) indexes and its TRUNCATE guard, not a member of the extension,
// so that pg_dump carries it and its records (see pgkm--1.5--1.6.sql). Under the SQL of pgkm
// 1.4 and 1.5 (between a package upgrade and ALTER EXTENSION UPDATE), whose parent indexes
// give every partition its indexes, the partition joins the extension as those versions'
// worker made it. Needs a catalog session.
void CreatePartition(const char *name, Datum lower, Datum upper)
{
	Oid existing = get_relname_relid(name, get_namespace_oid("pgkm", false));
	if (OidIsValid(existing))
	{
		Oid types[1] = {OIDOID};
		Datum values[1] = {ObjectIdGetDatum(existing)};
		if (CatalogExec("SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid OPERATOR(pg_catalog.=)"
						" $1 AND inhparent OPERATOR(pg_catalog.=)"
						" 'pgkm.audit_log'::pg_catalog.regclass",
						1, types, values, nullptr, SPI_OK_SELECT) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_TABLE),
					 errmsg("relation \"pgkm.%s\" exists but is not a partition of pgkm.audit_log",
							name)));
		return;
	}
	bool legacy = CatalogExec("SELECT 1 FROM pg_catalog.pg_index WHERE indrelid"
							  " OPERATOR(pg_catalog.=) 'pgkm.audit_log'::pg_catalog.regclass",
							  0, nullptr, nullptr, nullptr, SPI_OK_SELECT) > 0;
	Oid types[3] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum values[3] = {CStringGetTextDatum(name), lower, upper};
	CatalogExec("SELECT pg_catalog.format('CREATE TABLE pgkm.%I PARTITION OF pgkm.audit_log"
				" FOR VALUES FROM (%L) TO (%L)', $1, $2, $3)",
				3, types, values, nullptr, SPI_OK_SELECT);
	char *create = CatalogText(0, 1);
	CatalogExec(create, 0, nullptr, nullptr, nullptr, SPI_OK_UTILITY);
	const char *quoted = quote_identifier(name);
	if (!legacy)
	{
		CatalogExec(psprintf("CREATE INDEX %s ON pgkm.%s (seq)",
							 quote_identifier(psprintf("%s_seq", name)), quoted),
					0, nullptr, nullptr, nullptr, SPI_OK_UTILITY);
		CatalogExec(psprintf("CREATE INDEX %s ON pgkm.%s (key_name, seq)",
							 quote_identifier(psprintf("%s_key", name)), quoted),
					0, nullptr, nullptr, nullptr, SPI_OK_UTILITY);
	}
	CatalogExec(psprintf("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON pgkm.%s"
						 " FOR EACH STATEMENT EXECUTE FUNCTION pgkm.audit_guard()",
						 quoted),
				0, nullptr, nullptr, nullptr, SPI_OK_UTILITY);
	if (legacy)
		CatalogExec(psprintf("ALTER EXTENSION pgkm ADD TABLE pgkm.%s", quoted), 0, nullptr, nullptr,
					nullptr, SPI_OK_UTILITY);
}

} // namespace

void EnsurePartition(TimestampTz written_at)
{
	// The cache holds for one pgkm.audit_log: DROP and CREATE EXTENSION make another.
	Oid nsp = get_namespace_oid("pgkm", false);
	Oid relid = get_relname_relid("audit_log", nsp);
	if (relid != partition_relid)
		partition_upper = 0;
	partition_relid = relid;
	if (partition_upper != 0 && written_at < partition_upper)
		return;
	CatalogExec("SELECT pg_catalog.max(upper_bound) FROM pgkm.audit_partitions", 0, nullptr,
				nullptr, nullptr, SPI_OK_SELECT);
	bool isnull;
	Datum d = CatalogValue(0, 1, &isnull);
	TimestampTz upper = isnull ? 0 : DatumGetTimestampTz(d);
	if (upper != 0 && written_at < upper)
	{
		partition_upper = upper;
		return;
	}
	std::int64_t width = (std::int64_t)guc_audit_partition_interval * USECS_PER_SEC;
	TimestampTz base = written_at - ((written_at % width) + width) % width;
	TimestampTz lower = Max(base, upper);
	TimestampTz hi = base + width;
	if (hi <= lower)
		hi = lower + width;
	Oid types[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum values[2] = {TimestampTzGetDatum(lower), TimestampTzGetDatum(hi)};
	// audit_records_*: pg_dump writes the data of a schema's tables in name order, and a
	// data-only restore needs the registry (audit_partitions) first (pgkm--1.5--1.6.sql).
	CatalogExec("SELECT 'audit_records_' OPERATOR(pg_catalog.||) pg_catalog.to_char($1 AT TIME"
				" ZONE 'UTC', 'YYYYMMDD_HH24MISS_US')",
				2, types, values, nullptr, SPI_OK_SELECT);
	char *name = CatalogText(0, 1);
	CreatePartition(name, values[0], values[1]);
	Oid ntypes[3] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum nvalues[3] = {CStringGetTextDatum(name), values[0], values[1]};
	// As the writer: the registry's trigger (1.6) lets the row pass, its partition made.
	AuditSetWriter(true);
	CatalogExec("INSERT INTO pgkm.audit_partitions (name, lower_bound, upper_bound)"
				" VALUES ($1, $2, $3)",
				3, ntypes, nvalues, nullptr, SPI_OK_INSERT);
	AuditSetWriter(false);
	partition_upper = hi;
}

void ForgetPartitionBound()
{
	partition_upper = 0;
}

void DropPartition(const char *name)
{
	LeaveExtension(name);
	CatalogExec(psprintf("DROP TABLE pgkm.%s", quote_identifier(name)), 0, nullptr, nullptr,
				nullptr, SPI_OK_UTILITY);
	Oid types[1] = {TEXTOID};
	Datum values[1] = {CStringGetTextDatum(name)};
	CatalogExec("DELETE FROM pgkm.audit_partitions WHERE name OPERATOR(pg_catalog.=) $1", 1, types,
				values, nullptr, SPI_OK_DELETE);
}

namespace
{

// The lock a session loading restored audit records holds until it ends (see
// AuditRestoreInProgress): an advisory lock of the database in pgkm's own key space
// (field 4 is neither 1 nor 2, the spaces of pg_advisory_lock's int8 and int4 keys).
constexpr uint32 kRestoreLockKey = 0x70676b6d; // "pgkm"
constexpr uint16 kRestoreLockSpace = 0x7072;   // "pr"
bool restoring_here = false;

LOCKTAG RestoreLockTag()
{
	LOCKTAG tag;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, kRestoreLockKey, 1, kRestoreLockSpace);
	return tag;
}

} // namespace

bool AuditRestoreInProgress()
{
	LOCKTAG tag = RestoreLockTag();
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, ExclusiveLock, false);
	return false;
}

void AuditRefuseWaitWhileRestoring()
{
	if (likely(!restoring_here))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("this session loaded restored audit records"),
			 errdetail("The pgkm worker continues the restored audit chain once this session has "
					   "ended; until then it writes no audit record of this database."),
			 errhint("Disconnect, then use another session for pgkm.audit_flush() and for audited "
					 "calls under pgkm.audit_durability = sync.")));
}

} // namespace pgkm::pg

using namespace pgkm::pg;

namespace
{

// Holds the restore lock until this session ends, once.
void HoldRestoreLock()
{
	if (restoring_here)
		return;
	LOCKTAG tag = RestoreLockTag();
	(void)LockAcquire(&tag, ShareLock, true, false);
	restoring_here = true;
}

// Whether a session other than the worker may add records or partitions: only while
// pgkm.audit_state says the log is empty, as in a database being restored. The row stays
// locked (FOR SHARE) until the session commits, so the worker cannot start a chain of its own
// under a restore; and the session holds the restore lock until it ends, so the worker
// continues the restored chain only once every record is in (ReadWriterState), not between
// two of a restore's transactions (pg_restore loads each partition in a transaction of its
// own).
// The answer is kept for the rest of the (sub)transaction that took the lock: a subtransaction
// rolled back releases it, so another one asks again.
bool RestoreAllowed()
{
	static LocalTransactionId allowed_in = InvalidLocalTransactionId;
	static SubTransactionId allowed_sub = InvalidSubTransactionId;
#if PG_VERSION_NUM >= 170000
	LocalTransactionId current = MyProc->vxid.lxid;
#else
	LocalTransactionId current = MyProc->lxid;
#endif
	SubTransactionId sub = GetCurrentSubTransactionId();
	if (allowed_in == current && allowed_sub == sub && current != InvalidLocalTransactionId)
		return true;
	CatalogSession session;
	CatalogOpen(&session);
	CatalogExec("SELECT last_seq FROM pgkm.audit_state WHERE id OPERATOR(pg_catalog.=) 1"
				" FOR SHARE",
				0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	bool isnull = true;
	bool empty = SPI_processed == 1 && DatumGetInt64(CatalogValue(0, 1, &isnull)) == 0;
	CatalogClose(&session);
	if (empty)
	{
		HoldRestoreLock();
		allowed_in = current;
		allowed_sub = sub;
	}
	return empty;
}

} // namespace

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_audit_guard);
	PG_FUNCTION_INFO_V1(pgkm_audit_partition_added);
	Datum pgkm_audit_guard(PG_FUNCTION_ARGS);
	Datum pgkm_audit_partition_added(PG_FUNCTION_ARGS);
}

// Trigger on pgkm.audit_log: only the worker inserts, or a restore into an empty log; nobody
// updates, deletes or truncates.
Datum pgkm_audit_guard(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("pgkm.audit_guard() must be called as a trigger")));
	auto *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
	if (TRIGGER_FIRED_BY_INSERT(trigger->tg_event) && (AuditIsWriter() || RestoreAllowed()))
		return PointerGetDatum(trigger->tg_trigtuple);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("pgkm.audit_log is append-only"),
			 errdetail("Only the pgkm worker appends records; retention drops whole "
					   "partitions (pgkm.audit_retention).")));
	PG_RETURN_NULL();
}

// Trigger on pgkm.audit_partitions (BEFORE INSERT, so that a restore into a log with records
// is refused with the reason before the registry's own constraints object): makes the
// partition a restored row names unless it exists (a full restore made it), before its
// records are loaded (see pgkm--1.5--1.6.sql). The worker's own rows pass: EnsurePartition
// made their partition first.
Datum pgkm_audit_partition_added(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("pgkm.audit_partition_added() must be called as a trigger")));
	auto *trigger = reinterpret_cast<TriggerData *>(fcinfo->context);
	if (!TRIGGER_FIRED_BY_INSERT(trigger->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("pgkm.audit_partition_added() must fire for each inserted row")));
	HeapTuple tuple = trigger->tg_trigtuple;
	if (AuditIsWriter())
		return PointerGetDatum(tuple); // EnsurePartition made it
	if (!RestoreAllowed())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the audit log of database \"%s\" already has records",
						get_database_name(MyDatabaseId)),
				 errdetail("Audit records are restored only into a database whose audit log is "
						   "empty: two hash chains cannot be merged."),
				 errhint("Leave the audit log out of a data-only dump into such a database: "
						 "pg_dump --data-only --exclude-table-data='pgkm.audit_*'.")));
	TupleDesc desc = RelationGetDescr(trigger->tg_relation);
	bool null_name, null_lower, null_upper;
	Datum name = heap_getattr(tuple, 1, desc, &null_name);
	Datum lower = heap_getattr(tuple, 2, desc, &null_lower);
	Datum upper = heap_getattr(tuple, 3, desc, &null_upper);
	if (null_name || null_lower || null_upper)
		elog(ERROR, "pgkm.audit_partitions: a row with a NULL name or bound");
	CatalogSession session;
	CatalogOpen(&session);
	CreatePartition(NameStr(*DatumGetName(name)), lower, upper);
	CatalogClose(&session);
	return PointerGetDatum(tuple);
}
