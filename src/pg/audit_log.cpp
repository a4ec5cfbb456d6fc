// pgkm.audit_log: the worker's side of the audit (taking records from the ring, chaining
// them, appending them in its own transactions, continuing a restored chain, sealing
// checkpoints with the token's HMAC key, dropping old partitions behind an anchor) and the
// SQL functions around the log (verify_audit_log, audit_flush, apply_audit_retention). Its
// rows are audit_row.hpp's, its partitions and guards audit_partitions.hpp's.
#include "pgkm/core/audit_chain.hpp"
#include "pgkm/pg/token.hpp"

#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_log.hpp"
#include "pgkm/pg/audit_partitions.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/audit_row.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/worker.hpp"

extern "C"
{
#include "access/htup_details.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/wait_event.h"
#include "storage/proc.h"
#include "utils/snapmgr.h"
}

using pgkm::core::AuditHash;
using pgkm::core::ByteView;
using namespace pgkm::pg;
using namespace pgkm::pg::audit_row;

namespace
{

constexpr int kBatch = 500;

// The writer's state, kept across batches.
AuditEntry *taken = nullptr;
std::uint64_t *positions = nullptr;
TimestampTz last_checkpoint_try = 0;
// The last periodic checkpoint failed (the token is out, say): until one succeeds, the next
// try waits pgkm.worker_naptime, so a failing token is neither hammered nor logged on the
// drain's cadence.
bool checkpoint_failing = false;
TimestampTz checkpoint_retry_at = 0;

// The chain head and checkpoint position from pgkm.audit_state.
struct State
{
	std::int64_t last_seq;
	AuditHash last_hash;
	std::int64_t last_checkpoint_seq;
	TimestampTz last_checkpoint_at; // 0: never
	TimestampTz last_written_at;    // 0: never
};

// Reads and locks the writer's state.
State ReadState()
{
	CatalogExec("SELECT last_seq, last_hash, last_checkpoint_seq, last_checkpoint_at,"
				" last_written_at FROM pgkm.audit_state WHERE id OPERATOR(pg_catalog.=) 1"
				" FOR UPDATE",
				0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "pgkm.audit_state has no row");
	State s;
	bool isnull;
	s.last_seq = DatumGetInt64(CatalogValue(0, 1, &isnull));
	if (!HashFrom(CatalogValue(0, 2, &isnull), &s.last_hash))
		elog(ERROR, "pgkm.audit_state.last_hash is not a SHA-256 hash");
	s.last_checkpoint_seq = DatumGetInt64(CatalogValue(0, 3, &isnull));
	Datum d = CatalogValue(0, 4, &isnull);
	s.last_checkpoint_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = CatalogValue(0, 5, &isnull);
	s.last_written_at = isnull ? 0 : DatumGetTimestampTz(d);
	return s;
}

// Writes the writer's state back.
void WriteState(const State &s)
{
	Oid types[5] = {INT8OID, BYTEAOID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum values[5] = {
		Int64GetDatum(s.last_seq), HashDatum(s.last_hash), Int64GetDatum(s.last_checkpoint_seq),
		TimestampTzGetDatum(s.last_checkpoint_at), TimestampTzGetDatum(s.last_written_at)};
	char nulls[5] = {' ', ' ', ' ', s.last_checkpoint_at ? ' ' : 'n',
					 s.last_written_at ? ' ' : 'n'};
	CatalogExec("UPDATE pgkm.audit_state SET last_seq = $1, last_hash = $2,"
				" last_checkpoint_seq = $3, last_checkpoint_at = $4, last_written_at = $5"
				" WHERE id OPERATOR(pg_catalog.=) 1",
				5, types, values, nulls, SPI_OK_UPDATE);
}

// Chains rows (seq, written_at, prev_hash, hash) onto the state and inserts them in one
// statement.
void AppendRows(Row *rows, int n, State *state)
{
	if (n == 0)
		return;
	TimestampTz written_at = Max(GetCurrentTimestamp(), state->last_written_at);
	EnsurePartition(written_at);
	for (int i = 0; i < n; i++)
	{
		Row &row = rows[i];
		row.values[kSeq] = Int64GetDatum(++state->last_seq);
		row.nulls[kSeq] = false;
		row.values[kWrittenAt] = TimestampTzGetDatum(written_at);
		row.nulls[kWrittenAt] = false;
		row.values[kPrevHash] = HashDatum(state->last_hash);
		row.nulls[kPrevHash] = false;
		state->last_hash = RowHash(row, state->last_hash);
		row.values[kHash] = HashDatum(state->last_hash);
		row.nulls[kHash] = false;
	}
	state->last_written_at = written_at;

	Oid types[kColumnCount];
	Datum arrays[kColumnCount];
	StringInfoData sql;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "INSERT INTO pgkm.audit_log SELECT * FROM unnest(");
	auto *values = static_cast<Datum *>(palloc(sizeof(Datum) * n));
	auto *nulls = static_cast<bool *>(palloc(sizeof(bool) * n));
	for (int c = 0; c < kColumnCount; c++)
	{
		for (int i = 0; i < n; i++)
		{
			values[i] = rows[i].values[c];
			nulls[i] = rows[i].nulls[c];
		}
		Oid element = get_element_type(kColumns[c].array_type);
		int16 typlen;
		bool typbyval;
		char typalign;
		get_typlenbyvalalign(element, &typlen, &typbyval, &typalign);
		int dims[1] = {n};
		int lbs[1] = {1};
		arrays[c] = PointerGetDatum(
			construct_md_array(values, nulls, 1, dims, lbs, element, typlen, typbyval, typalign));
		types[c] = kColumns[c].array_type;
		appendStringInfo(&sql, "%s$%d", c ? ", " : "", c + 1);
	}
	// Unqualified: multi-argument unnest is FROM-clause syntax; search_path is pg_catalog.
	appendStringInfoChar(&sql, ')');
	AuditSetWriter(true);
	CatalogExec(sql.data, kColumnCount, types, arrays, nullptr, SPI_OK_INSERT);
	AuditSetWriter(false);
}

// Continues a restored chain: a state that says the log is empty while the log has records
// means a restore loaded them (pg_dump does not carry pgkm.audit_state), so the chain goes on
// from the newest record, and a 'restored' record says so. Only then: once the chain has a
// record, no other session may add any (pgkm_audit_guard). Call it only when no restore is in
// progress (AuditRestoreInProgress), or it would continue a chain whose later records are
// still to come.
void ContinueRestoredChain(State *state)
{
	State &s = *state;
	if (s.last_seq != 0 ||
		CatalogExec("SELECT seq, hash, written_at FROM pgkm.audit_log ORDER BY seq DESC LIMIT 1", 0,
					nullptr, nullptr, nullptr, SPI_OK_SELECT) != 1)
		return;
	bool isnull;
	s.last_seq = DatumGetInt64(CatalogValue(0, 1, &isnull));
	if (!HashFrom(CatalogValue(0, 2, &isnull), &s.last_hash))
		elog(ERROR, "pgkm.audit_log: record %lld has a malformed hash", (long long)s.last_seq);
	s.last_written_at = DatumGetTimestampTz(CatalogValue(0, 3, &isnull));
	if (CatalogExec("SELECT seq, at FROM pgkm.audit_log WHERE action OPERATOR(pg_catalog.=)"
					" 'checkpoint' ORDER BY seq DESC LIMIT 1",
					0, nullptr, nullptr, nullptr, SPI_OK_SELECT) == 1)
	{
		s.last_checkpoint_seq = DatumGetInt64(CatalogValue(0, 1, &isnull));
		s.last_checkpoint_at = DatumGetTimestampTz(CatalogValue(0, 2, &isnull));
	}
	CatalogExec("SELECT pg_catalog.count(*), pg_catalog.min(seq) FROM pgkm.audit_log", 0, nullptr,
				nullptr, nullptr, SPI_OK_SELECT);
	std::int64_t records = DatumGetInt64(CatalogValue(0, 1, &isnull));
	std::int64_t first = DatumGetInt64(CatalogValue(0, 2, &isnull));
	char detail[160];
	snprintf(detail, sizeof(detail),
			 "continues a restored audit log of %lld records, seq %lld to %lld", (long long)records,
			 (long long)first, (long long)s.last_seq);
	ereport(LOG,
			(errmsg("pgkm worker: database \"%s\": %s", get_database_name(MyDatabaseId), detail)));
	Row row;
	WriterRow(&row, "restored", detail);
	row.values[kRefSeq] = Int64GetDatum(s.last_seq);
	row.nulls[kRefSeq] = false;
	row.values[kRefHash] = HashDatum(s.last_hash);
	row.nulls[kRefHash] = false;
	AppendRows(&row, 1, &s);
}

// Reads and locks the writer's state, to append records: raises while a restore is in
// progress (the caller's records wait in the ring), else continues a restored chain.
State ReadWriterState()
{
	State s = ReadState();
	if (s.last_seq == 0 && AuditRestoreInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the audit log of database \"%s\" is being restored",
						get_database_name(MyDatabaseId)),
				 errdetail("A session that loaded restored audit records is still connected; the "
						   "worker continues the audit chain once it has ended.")));
	ContinueRestoredChain(&s);
	return s;
}

// Appends a writer record whose mac seals (seq, hash) under kind ("checkpoint", "anchor").
void AppendSealed(const char *action, const char *kind, std::int64_t seq, const AuditHash &hash,
				  const char *detail, State *state)
{
	std::uint8_t mac[32];
	bool created = false;
	KeyCacheInit(); // closes the token session at exit, before the module's own atexit
	PGKM_TOKEN_CALL({
		auto message = pgkm::core::AuditCheckpointMessage(kind, seq, hash);
		created = AuditMac(guc_audit_key_label, ByteView(message.data(), message.size()), mac);
	});
	if (created)
		ereport(LOG, (errmsg("pgkm worker: created the audit HMAC key \"%s\" in the token",
							 guc_audit_key_label)));
	Row row;
	WriterRow(&row, action, detail);
	row.values[kRefSeq] = Int64GetDatum(seq);
	row.nulls[kRefSeq] = false;
	row.values[kRefHash] = HashDatum(hash);
	row.nulls[kRefHash] = false;
	auto *b = static_cast<bytea *>(palloc(VARHDRSZ + sizeof(mac)));
	SET_VARSIZE(b, VARHDRSZ + sizeof(mac));
	memcpy(VARDATA(b), mac, sizeof(mac));
	row.values[kMac] = PointerGetDatum(b);
	row.nulls[kMac] = false;
	AppendRows(&row, 1, state);
}

// Seals the chain head with a checkpoint record.
void Checkpoint(State *state)
{
	char detail[64];
	snprintf(detail, sizeof(detail), "seals records up to seq %lld", (long long)state->last_seq);
	std::int64_t sealed = state->last_seq;
	AuditHash hash = state->last_hash;
	AppendSealed("checkpoint", "checkpoint", sealed, hash, detail, state);
	state->last_checkpoint_seq = state->last_seq;
	state->last_checkpoint_at = GetCurrentTimestamp();
}

// Drops partitions older than pgkm.audit_retention, after an anchor record seals the first
// record kept. The partition holding the chain head is never dropped. Returns how many.
int ApplyRetention(State *state)
{
	if (guc_audit_retention <= 0)
		return 0;
	TimestampTz cutoff = GetCurrentTimestamp() - (std::int64_t)guc_audit_retention * USECS_PER_SEC;
	Oid types[1] = {TIMESTAMPTZOID};
	Datum values[1] = {TimestampTzGetDatum(Min(cutoff, state->last_written_at))};
	uint64 n = CatalogExec("SELECT name::pg_catalog.text, upper_bound FROM pgkm.audit_partitions"
						   " WHERE upper_bound OPERATOR(pg_catalog.<=) $1 ORDER BY upper_bound",
						   1, types, values, nullptr, SPI_OK_SELECT);
	if (n == 0)
		return 0;
	MemoryContext keep = CurrentMemoryContext;
	char **names = static_cast<char **>(palloc(sizeof(char *) * n));
	for (uint64 i = 0; i < n; i++)
		names[i] = CatalogText(i, 1);
	bool isnull;
	Datum upper = CatalogValue(n - 1, 2, &isnull);
	(void)keep;

	// The first record kept: the oldest at or after the dropped partitions' end; or, if there
	// is none, the anchor itself (the next seq, chained on the head).
	std::int64_t first_seq = state->last_seq + 1;
	AuditHash first_prev = state->last_hash;
	Oid utypes[1] = {TIMESTAMPTZOID};
	Datum uvalues[1] = {upper};
	if (CatalogExec("SELECT seq, prev_hash FROM pgkm.audit_log"
					" WHERE written_at OPERATOR(pg_catalog.>=) $1 ORDER BY seq LIMIT 1",
					1, utypes, uvalues, nullptr, SPI_OK_SELECT) == 1)
	{
		first_seq = DatumGetInt64(CatalogValue(0, 1, &isnull));
		if (!HashFrom(CatalogValue(0, 2, &isnull), &first_prev))
			elog(ERROR, "pgkm.audit_log: record %lld has a malformed prev_hash",
				 (long long)first_seq);
	}
	StringInfoData detail;
	initStringInfo(&detail);
	appendStringInfo(&detail, "retention drops %d partition(s) before seq %lld:", (int)n,
					 (long long)first_seq);
	for (uint64 i = 0; i < n && detail.len < 200; i++)
		appendStringInfo(&detail, " %s", names[i]);
	AppendSealed("anchor", "anchor", first_seq, first_prev, detail.data, state);
	for (uint64 i = 0; i < n; i++)
		DropPartition(names[i]);
	return (int)n;
}

// Whether pgkm 1.2's audit tables exist in this database.
bool AuditTablesExist()
{
	Oid nsp = get_namespace_oid("pgkm", true);
	return OidIsValid(nsp) && OidIsValid(get_relname_relid("audit_state", nsp));
}

// Ends a failed writer step (in PG_CATCH): aborts its transaction, puts its ring entries back
// for the next try, and logs why.
void AbandonStep(const std::uint64_t *taken_positions, int n, const char *what)
{
	AuditSetWriter(false);
	ErrorData *error = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	AuditUntake(taken_positions, n);
	ereport(WARNING, (errmsg("pgkm worker: %s, will retry: %s", what, error->message)));
	FreeErrorData(error);
}

// Ends a failed seal or retention step (in PG_CATCH): aborts its transaction, answers its
// markers with the error (their waiters raise it; nothing is retried, so no marker holds the
// ring while the token is out), and logs why.
void FailMarkers(const std::uint64_t *marker_positions, int n, const char *what)
{
	AuditSetWriter(false);
	ErrorData *error = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	AuditReleaseFailed(marker_positions, n, unpack_sql_state(error->sqlerrcode), error->message,
					   error->detail, error->hint);
	ereport(WARNING, (errmsg("pgkm worker: %s: %s", what, error->message),
					  error->detail ? errdetail_internal("%s", error->detail) : 0,
					  error->hint ? errhint("%s", error->hint) : 0));
	FreeErrorData(error);
}

// Appends one batch of ring entries in one transaction; markers that ask for a checkpoint or
// retention are served in a second one, so that a token failure never holds records back.
// Returns how many entries it took (-1 after a failure).
int DrainBatch()
{
	int n = AuditTake(MyDatabaseId, taken, positions, kBatch);
	std::uint64_t dropped = AuditTakeDropped(MyDatabaseId);
	if (n == 0 && dropped == 0)
		return 0;
	volatile bool seal = false;
	volatile bool retention = false;
	volatile int plain = 0; // entries served by the first transaction
	std::uint64_t later[kBatch];
	volatile int nlater = 0;
	volatile bool no_tables = false;
	MemoryContext caller = CurrentMemoryContext;
	PG_TRY();
	{
		WorkerBeginStep();
		if (!AuditTablesExist())
			no_tables = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		FlushErrorState();
		AbortCurrentTransaction();
		AuditUntake(positions, n);
		return -1;
	}
	PG_END_TRY();
	if (no_tables)
	{
		// pgkm older than 1.2 here: nothing can keep these records.
		WorkerEndStep();
		AuditRelease(positions, n);
		(void)AuditDiscard(MyDatabaseId);
		return n;
	}
	PG_TRY();
	{
		WorkerSetLocal("synchronous_commit", "on");
		State state = ReadWriterState();
		const char *database = get_database_name(MyDatabaseId);
		Row *rows = static_cast<Row *>(palloc(sizeof(Row) * (n + 1)));
		int nrows = 0;
		if (dropped > 0)
		{
			char detail[128];
			snprintf(detail, sizeof(detail),
					 "%llu audit records were lost: the ring was full (pgkm.audit_overflow)",
					 (unsigned long long)dropped);
			WriterRow(&rows[nrows], "dropped", detail);
			rows[nrows].values[kRowCount] = Int64GetDatum((int64)dropped);
			rows[nrows].nulls[kRowCount] = false;
			rows[nrows].values[kSuccess] = BoolGetDatum(false);
			nrows++;
		}
		for (int i = 0; i < n; i++)
		{
			switch (taken[i].kind)
			{
			case AuditKind::Record:
				RowFromEntry(&rows[nrows++], taken[i], database);
				positions[plain] = positions[i];
				plain = plain + 1;
				break;
			case AuditKind::Flush:
				positions[plain] = positions[i];
				plain = plain + 1;
				break;
			case AuditKind::Seal:
				seal = true;
				later[nlater] = positions[i];
				nlater = nlater + 1;
				break;
			case AuditKind::Retention:
				retention = true;
				later[nlater] = positions[i];
				nlater = nlater + 1;
				break;
			}
		}
		AppendRows(rows, nrows, &state);
		WriteState(state);
		WorkerEndStep();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		ForgetPartitionBound(); // look again next time
		AbandonStep(positions, n, "could not write audit records");
		return -1;
	}
	PG_END_TRY();
	AuditRelease(positions, plain);
	if (nlater == 0)
		return n;

	PG_TRY();
	{
		WorkerBeginStep();
		WorkerSetLocal("synchronous_commit", "on");
		State state = ReadWriterState();
		if (retention)
			(void)ApplyRetention(&state);
		if (seal || retention)
			Checkpoint(&state);
		WriteState(state);
		WorkerEndStep();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		FailMarkers(later, nlater,
					retention ? "could not apply audit retention" : "could not seal the audit log");
		return n;
	}
	PG_END_TRY();
	AuditRelease(later, nlater);
	return n;
}

} // namespace

namespace pgkm::pg
{

int AuditDrain()
{
	if (taken == nullptr)
	{
		taken = static_cast<AuditEntry *>(
			MemoryContextAlloc(TopMemoryContext, sizeof(AuditEntry) * kBatch));
		positions = static_cast<std::uint64_t *>(
			MemoryContextAlloc(TopMemoryContext, sizeof(std::uint64_t) * kBatch));
	}
	EnsureChain();
	int total = 0;
	for (int round = 0; round < 40; round++)
	{
		int n = DrainBatch();
		if (n <= 0)
			return n < 0 ? -1 : total;
		total += n;
		if (n < kBatch)
			break; // the rest is new: it waits for the next cadence and gathers meanwhile
	}
	return total;
}

void AuditHousekeeping(bool retention)
{
	if (checkpoint_failing && GetCurrentTimestamp() < checkpoint_retry_at)
		return;
	EnsureChain();
	MemoryContext caller = CurrentMemoryContext;
	PG_TRY();
	{
		WorkerBeginStep();
		if (AuditTablesExist())
		{
			WorkerSetLocal("synchronous_commit", "on");
			// During a restore the log is left alone, quietly: a state at seq 0 has nothing to
			// seal or drop.
			State state = ReadState();
			if (state.last_seq != 0 || !AuditRestoreInProgress())
			{
				ContinueRestoredChain(&state);
				TimestampTz now = GetCurrentTimestamp();
				bool due =
					state.last_seq > state.last_checkpoint_seq &&
					(state.last_seq - state.last_checkpoint_seq >= guc_audit_checkpoint_records ||
					 now - state.last_checkpoint_at >=
						 (std::int64_t)guc_audit_checkpoint_interval * USECS_PER_SEC);
				int dropped = retention ? ApplyRetention(&state) : 0;
				if (due || dropped > 0)
					Checkpoint(&state);
				WriteState(state);
			}
		}
		WorkerEndStep();
		checkpoint_failing = false;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		AuditSetWriter(false);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("pgkm worker: could not write an audit checkpoint, will retry in %d s: %s",
						guc_worker_naptime, error->message),
				 error->detail ? errdetail_internal("%s", error->detail) : 0,
				 error->hint ? errhint("%s", error->hint) : 0));
		FreeErrorData(error);
		checkpoint_failing = true;
		checkpoint_retry_at =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(), guc_worker_naptime * 1000L);
	}
	PG_END_TRY();
}

bool AuditCheckpointDue()
{
	// Record-count checkpoints are taken by the drain loop's caller through housekeeping;
	// this bounds how often a failing token is retried.
	TimestampTz now = GetCurrentTimestamp();
	if (checkpoint_failing || now - last_checkpoint_try < USECS_PER_SEC)
		return false;
	last_checkpoint_try = now;
	return true;
}

} // namespace pgkm::pg

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
