// The SQL functions around pgkm.audit_log: verify_audit_log (recomputes the chain and checks
// its seals through the token), audit_flush and apply_audit_retention (which ask this
// database's worker, audit_log.cpp, and wait for it).
#include "pgkm/core/audit_chain.hpp"
#include "pgkm/pg/token.hpp"

#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_partitions.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/audit_row.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include "commands/dbcommands.h"
#include "utils/datum.h"
#include "utils/wait_event.h"
}

using pgkm::core::AuditHash;
using pgkm::core::ByteView;
using namespace pgkm::pg;
using namespace pgkm::pg::audit_row;

namespace
{

// Queues a marker for this database's worker and waits until the worker served it.
void WaitForWorker(AuditKind kind)
{
	RequireSharedMemory();
	AuditRefuseWaitWhileRestoring();
	if (RecoveryInProgress())
		ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
						errmsg("the audit log cannot be written during recovery"),
						errdetail("On a hot standby, audit records go to the server log.")));
	for (int waited = 0; !WorkerRunning(MyDatabaseId); waited++)
	{
		if (waited >= 100)
			ereport(
				ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no pgkm worker runs in database \"%s\"", get_database_name(MyDatabaseId)),
				 errhint("SELECT pgkm.start_worker() starts it; check max_worker_processes.")));
		(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100,
						PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	AuditEntry marker;
	memset(&marker, 0, sizeof(marker));
	marker.dbid = MyDatabaseId;
	marker.kind = kind;
	AuditOutcome outcome;
	AuditWaitDurable(AuditEnqueue(&marker, 1, AuditFull::Wait), &outcome);
	if (outcome.sqlstate[0] != '\0')
		ereport(
			ERROR,
			(errcode(MAKE_SQLSTATE(outcome.sqlstate[0], outcome.sqlstate[1], outcome.sqlstate[2],
								   outcome.sqlstate[3], outcome.sqlstate[4])),
			 errmsg("the pgkm worker could not %s: %s",
					kind == AuditKind::Seal ? "seal the audit log" : "apply audit retention",
					outcome.message),
			 outcome.detail[0] ? errdetail_internal("%s", outcome.detail) : 0,
			 outcome.hint[0] ? errhint("%s", outcome.hint)
							 : errhint("The worker tries again at its next naptime.")));
}

// Reads one number in a catalog session.
int64 CatalogNumber(const char *sql)
{
	CatalogSession session;
	CatalogOpen(&session);
	CatalogExec(sql, 0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	bool isnull;
	Datum d = CatalogValue(0, 1, &isnull);
	int64 n = isnull ? 0 : DatumGetInt64(d);
	CatalogClose(&session);
	return n;
}

// What verify_audit_log found.
struct Verdict
{
	int64 records = 0;
	int64 checkpoints = 0;
	int64 first_seq = 0;
	int64 last_seq = 0;
	int64 sealed_through = 0;
	int64 broken_seq = 0;
	char *problem = nullptr;
};

// Records the first problem found.
void Break(Verdict *v, int64 seq, const char *problem)
{
	if (v->problem)
		return;
	v->broken_seq = seq;
	v->problem = pstrdup(problem);
}

// Checks a sealed record's mac through the token.
bool MacVerifies(const char *kind, int64 seq, const AuditHash &hash, Datum mac_datum)
{
	bytea *mac = DatumGetByteaPP(mac_datum);
	ByteView mac_view(reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(mac)),
					  VARSIZE_ANY_EXHDR(mac));
	bool ok = false;
	KeyCacheInit();
	PGKM_TOKEN_CALL({
		auto message = pgkm::core::AuditCheckpointMessage(kind, seq, hash);
		ok =
			AuditVerifyMac(guc_audit_key_label, ByteView(message.data(), message.size()), mac_view);
	});
	return ok;
}

// An anchor that vouches for the removal of the records before ref_seq.
struct Anchor
{
	int64 ref_seq;
	AuditHash ref_hash;
	Datum mac;
};

} // namespace

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_verify_audit_log);
	PG_FUNCTION_INFO_V1(pgkm_audit_flush);
	PG_FUNCTION_INFO_V1(pgkm_apply_audit_retention);
	Datum pgkm_verify_audit_log(PG_FUNCTION_ARGS);
	Datum pgkm_audit_flush(PG_FUNCTION_ARGS);
	Datum pgkm_apply_audit_retention(PG_FUNCTION_ARGS);
}

// pgkm.verify_audit_log(): recomputes every hash and link, and checks every checkpoint and
// anchor through the token. Names the first broken link.
Datum pgkm_verify_audit_log(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	EnsureChain();
	TupleDesc tupdesc;
	if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	Verdict v;
	MemoryContext caller = CurrentMemoryContext;
	CatalogSession session;
	CatalogOpen(&session);

	// Anchors first: the oldest kept record needs one unless the chain starts at seq 1.
	uint64 nanchors = CatalogExec("SELECT ref_seq, ref_hash, mac FROM pgkm.audit_log"
								  " WHERE action OPERATOR(pg_catalog.=) 'anchor' ORDER BY seq",
								  0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	MemoryContext old = MemoryContextSwitchTo(caller);
	auto *anchors = static_cast<Anchor *>(palloc0(sizeof(Anchor) * (nanchors + 1)));
	int usable_anchors = 0;
	for (uint64 i = 0; i < nanchors; i++)
	{
		bool n1, n2, n3;
		Datum seq = CatalogValue(i, 1, &n1);
		Datum hash = CatalogValue(i, 2, &n2);
		Datum mac = CatalogValue(i, 3, &n3);
		Anchor &a = anchors[usable_anchors];
		if (n1 || n2 || n3 || !HashFrom(hash, &a.ref_hash))
			continue;
		a.ref_seq = DatumGetInt64(seq);
		a.mac = datumCopy(mac, false, -1);
		usable_anchors++;
	}
	MemoryContextSwitchTo(old);

	StringInfoData sql;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	for (int c = 0; c < kColumnCount; c++)
		appendStringInfo(&sql, "%s%s", c ? ", " : "", kColumns[c].name);
	appendStringInfoString(&sql, " FROM pgkm.audit_log ORDER BY seq, written_at, hash");
	SPIPlanPtr plan = SPI_prepare(sql.data, 0, nullptr);
	if (plan == nullptr)
		elog(ERROR, "pgkm: could not prepare the audit log scan");
	Portal portal = SPI_cursor_open(nullptr, plan, nullptr, nullptr, true);
	AuditHash prev_hash = pgkm::core::ZeroAuditHash();
	int64 prev_seq = 0;
	bool first = true;
	char message[256];
	MemoryContext rows_context =
		AllocSetContextCreate(CurrentMemoryContext, "pgkm audit verify", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 5000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			if (v.problem)
			{
				v.records++; // counted, no longer checked: the chain is broken before
				continue;
			}
			MemoryContext row_old = MemoryContextSwitchTo(rows_context);
			Row row;
			for (int c = 0; c < kColumnCount; c++)
				row.values[c] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, c + 1,
											  &row.nulls[c]);
			int64 seq = DatumGetInt64(row.values[kSeq]);
			AuditHash stored_prev, stored_hash;
			bool well_formed = !row.nulls[kPrevHash] && !row.nulls[kHash] &&
							   HashFrom(row.values[kPrevHash], &stored_prev) &&
							   HashFrom(row.values[kHash], &stored_hash);
			v.records++;
			v.last_seq = seq;
			if (!well_formed)
				Break(&v, seq, "record altered: prev_hash or hash is not a SHA-256 hash");
			else if (first)
			{
				v.first_seq = seq;
				if (seq == 1 && stored_prev != pgkm::core::ZeroAuditHash())
					Break(&v, seq, "the first record does not start the chain");
				else if (seq != 1)
				{
					bool vouched = false;
					for (int a = 0; a < usable_anchors && !vouched; a++)
						vouched = anchors[a].ref_seq == seq && anchors[a].ref_hash == stored_prev &&
								  MacVerifies("anchor", seq, stored_prev, anchors[a].mac);
					if (!vouched)
					{
						snprintf(message, sizeof(message),
								 "records before seq %lld are missing and no anchor vouches for "
								 "their removal",
								 (long long)seq);
						Break(&v, seq, message);
					}
				}
			}
			else if (seq == prev_seq)
			{
				snprintf(message, sizeof(message),
						 "seq %lld appears more than once: a record was inserted", (long long)seq);
				Break(&v, seq, message);
			}
			else if (seq != prev_seq + 1)
			{
				if (seq == prev_seq + 2)
					snprintf(message, sizeof(message), "record seq %lld is missing: deleted",
							 (long long)prev_seq + 1);
				else
					snprintf(message, sizeof(message),
							 "records seq %lld to %lld are missing: deleted",
							 (long long)prev_seq + 1, (long long)seq - 1);
				Break(&v, prev_seq + 1, message);
			}
			else if (stored_prev != prev_hash)
				Break(&v, seq,
					  "prev_hash does not link to the record before: records were inserted, "
					  "deleted or reordered");
			if (v.problem == nullptr && RowHash(row, stored_prev) != stored_hash)
				Break(&v, seq, "record altered: its content does not match its hash");
			if (v.problem == nullptr && !row.nulls[kAction])
			{
				char *action = TextDatumGetCString(row.values[kAction]);
				bool checkpoint = strcmp(action, "checkpoint") == 0;
				bool anchor = strcmp(action, "anchor") == 0;
				if (checkpoint || anchor)
				{
					AuditHash ref;
					bool ok = !row.nulls[kRefSeq] && !row.nulls[kRefHash] && !row.nulls[kMac] &&
							  HashFrom(row.values[kRefHash], &ref) &&
							  MacVerifies(action, DatumGetInt64(row.values[kRefSeq]), ref,
										  row.values[kMac]);
					if (ok && checkpoint &&
						(DatumGetInt64(row.values[kRefSeq]) != prev_seq || ref != prev_hash))
						ok = false;
					if (!ok)
						Break(&v, seq,
							  checkpoint ? "checkpoint does not verify: its token MAC does not "
										   "match the chain (rewritten or forged)"
										 : "anchor does not verify: its token MAC does not match");
					else if (checkpoint)
					{
						v.checkpoints++;
						v.sealed_through = prev_seq;
					}
				}
			}
			prev_seq = seq;
			prev_hash = stored_hash;
			first = false;
			MemoryContextSwitchTo(row_old);
			MemoryContextReset(rows_context);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);

	// Records cut off the end, or added after the writer's head.
	if (v.problem == nullptr)
	{
		// Read-only: the statement's snapshot, the one the scan saw.
		if (SPI_execute("SELECT last_seq FROM pgkm.audit_state", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "pgkm: could not read pgkm.audit_state");
		bool isnull;
		int64 head = SPI_processed == 1 ? DatumGetInt64(CatalogValue(0, 1, &isnull)) : 0;
		if (v.last_seq < head)
		{
			snprintf(message, sizeof(message),
					 "records seq %lld to %lld are missing: the writer's head is at seq %lld",
					 (long long)v.last_seq + 1, (long long)head, (long long)head);
			Break(&v, v.last_seq + 1, message);
		}
		else if (v.last_seq > head)
		{
			snprintf(message, sizeof(message),
					 "seq %lld is beyond the writer's head (seq %lld): a record was inserted",
					 (long long)head + 1, (long long)head);
			Break(&v, head + 1, message);
		}
	}
	old = MemoryContextSwitchTo(caller);
	char *problem = v.problem ? pstrdup(v.problem) : nullptr;
	MemoryContextSwitchTo(old);
	CatalogClose(&session);

	Datum values[8];
	bool nulls[8] = {false, false, false, false, false, false, false, false};
	values[0] = BoolGetDatum(problem == nullptr);
	values[1] = Int64GetDatum(v.records);
	values[2] = Int64GetDatum(v.checkpoints);
	values[3] = Int64GetDatum(v.first_seq);
	nulls[3] = v.records == 0;
	values[4] = Int64GetDatum(v.last_seq);
	nulls[4] = v.records == 0;
	values[5] = Int64GetDatum(v.sealed_through);
	nulls[5] = v.checkpoints == 0;
	values[6] = Int64GetDatum(v.broken_seq);
	nulls[6] = problem == nullptr;
	values[7] = problem ? CStringGetTextDatum(problem) : (Datum)0;
	nulls[7] = problem == nullptr;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

// pgkm.audit_flush(seal): waits until the worker wrote every record queued before, and with
// seal a checkpoint after them. Returns the chain head's seq.
Datum pgkm_audit_flush(PG_FUNCTION_ARGS)
{
	WaitForWorker(PG_GETARG_BOOL(0) ? AuditKind::Seal : AuditKind::Flush);
	PG_RETURN_INT64(CatalogNumber("SELECT last_seq FROM pgkm.audit_state"));
}

// pgkm.apply_audit_retention(): has the worker apply pgkm.audit_retention now. Returns the
// number of partitions dropped.
Datum pgkm_apply_audit_retention(PG_FUNCTION_ARGS)
{
	int64 before = CatalogNumber("SELECT pg_catalog.count(*) FROM pgkm.audit_partitions");
	WaitForWorker(AuditKind::Retention);
	int64 after = CatalogNumber("SELECT pg_catalog.count(*) FROM pgkm.audit_partitions");
	PG_RETURN_INT64(before > after ? before - after : 0);
}
