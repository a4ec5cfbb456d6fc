// pgkm.audit_log, the worker's side: taking records from the ring, chaining them, appending
// them in its own transactions, continuing a restored chain, sealing checkpoints with the
// token's HMAC key, dropping old partitions behind an anchor. Its rows are audit_row.hpp's,
// its partitions and guards audit_partitions.hpp's, its SQL functions audit_log_sql.cpp's.
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
#include "pgkm/pg/worker.hpp"

extern "C"
{
#include "commands/dbcommands.h"
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

// Whether a restore is still loading this log: the state is at seq 0 (no chain yet) and a
// session that loaded records is still connected.
bool BeingRestored(const State &s)
{
	return s.last_seq == 0 && AuditRestoreInProgress();
}

// Continues a restored chain: a state that says the log is empty while the log has records
// means a restore loaded them (pg_dump does not carry pgkm.audit_state), so the chain goes on
// from the newest record, and a 'restored' record says so. Only then: once the chain has a
// record, no other session may add any (pgkm_audit_guard). Call it only when no restore is in
// progress (BeingRestored), or it would continue a chain whose later records are
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
	if (BeingRestored(s))
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
			if (!BeingRestored(state))
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
