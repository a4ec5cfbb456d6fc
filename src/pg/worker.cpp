// Background workers. The launcher starts one worker per database at server start (and
// CREATE EXTENSION starts its database's worker); a worker whose database lacks the
// extension exits with status 0 and is not restarted. Each worker loops: flush encryption
// counts and apply rotation policies every pgkm.worker_naptime, and run re-encryption jobs
// one batch per short transaction, walking the table by primary key with SKIP LOCKED and
// checkpointing in the batch's own transaction. Errors are caught per step: a failing job is
// marked failed, a lock or statement timeout is retried later.
#include "pgkm/pg/admin.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_log.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/worker.hpp"

extern "C"
{
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/snapmgr.h"
}

using namespace pgkm::pg;

extern "C"
{
	PGDLLEXPORT void pgkm_launcher_main(Datum arg);
	PGDLLEXPORT void pgkm_worker_main(Datum arg);
	PG_FUNCTION_INFO_V1(pgkm_start_worker);
	Datum pgkm_start_worker(PG_FUNCTION_ARGS);
}

namespace
{

constexpr int kRestartSeconds = 5;
constexpr const char *kActor = "pgkm worker";

// Whether this transaction queued work for the worker (or asked for one), and the callback
// that acts on it once the transaction has committed and its work is visible.
bool wake_at_commit = false;
bool wake_callback_registered = false;

bool RegisterDatabaseWorker(Oid dbid);

// Transaction callback: at commit, wakes the database's worker, or starts one if none runs
// (a worker started earlier could not have seen the uncommitted extension or jobs).
void WakeAtCommit(XactEvent event, void *)
{
	if (!wake_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		if (WorkerRunning(MyDatabaseId))
			WorkerWake(MyDatabaseId);
		else if (!RegisterDatabaseWorker(MyDatabaseId))
			ereport(WARNING, (errmsg("pgkm: could not start the worker of this database"),
							  errhint("Raise max_worker_processes.")));
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_at_commit = false;
}

// How long a busy worker waits between two drains of the audit ring (ms).
constexpr long kAuditCadenceMs = 20;

// The job the current batch works on, kept where an ERROR's longjmp cannot lose it.
int64 batch_job_id = 0;

// What one step of the worker did, so the loop knows how long to wait.
enum class Step
{
	Idle,    // no open job: wait for the naptime or a wake-up
	Worked,  // a batch re-encrypted rows: wait the throttle delay
	Blocked, // rows remain but are locked or timed out: wait the naptime
	Retry,   // the batch failed in a way that passes (a timeout, the token): not before the naptime
};

// A job as read at the start of a batch.
struct Job
{
	int64 job_id;
	Oid relid;
	char column[NAMEDATALEN];
	int64 key_id;
	int32 target;
	char state[16];
	char phase[16];
	char *last_key; // NULL: from the start
	int64 rows_done;
};

// Fills a bgworker registration for pgkm's library.
void FillWorker(BackgroundWorker *worker, const char *function, const char *type, Datum arg)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = kRestartSeconds;
	strlcpy(worker->bgw_library_name, "pgkm", BGW_MAXLEN);
	strlcpy(worker->bgw_function_name, function, BGW_MAXLEN);
	strlcpy(worker->bgw_type, type, BGW_MAXLEN);
	worker->bgw_main_arg = arg;
}

// Registers the worker of one database.
bool RegisterDatabaseWorker(Oid dbid)
{
	BackgroundWorker worker;
	FillWorker(&worker, "pgkm_worker_main", "pgkm worker", ObjectIdGetDatum(dbid));
	snprintf(worker.bgw_name, BGW_MAXLEN, "pgkm worker for database %u", dbid);
	BackgroundWorkerHandle *handle;
	return RegisterDynamicBackgroundWorker(&worker, &handle);
}

// Sets a setting for the current transaction only.
void SetLocal(const char *name, const char *value)
{
	(void)set_config_option(name, value, PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
							false);
}

// Sets an integer setting (in ms) for the current transaction only.
void SetLocalInt(const char *name, int value)
{
	char text[32];
	snprintf(text, sizeof(text), "%d", value);
	SetLocal(name, text);
}

// Starts a transaction with SPI connected, a snapshot, and search_path pinned.
void BeginStep()
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	SetLocal("search_path", "pg_catalog, pg_temp");
}

// Commits the step's transaction.
void EndStep()
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, nullptr);
}

// Whether pgkm 1.1 or later is installed in this database (checked in its own transaction).
bool ExtensionReady()
{
	BeginStep();
	bool ready = false;
	if (CatalogExec("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgkm'", 0,
					nullptr, nullptr, nullptr, SPI_OK_SELECT) == 1)
	{
		char *version = CatalogText(0, 1);
		ready = version && strcmp(version, "1.0") != 0;
	}
	EndStep();
	return ready;
}

// Returns the schema the data-path functions live in, quoted.
const char *ExtensionSchema()
{
	CatalogExec("SELECT n.nspname::text FROM pg_catalog.pg_extension e"
				" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
				" WHERE e.extname OPERATOR(pg_catalog.=) 'pgkm'",
				0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	return quote_identifier(CatalogText(0, 1));
}

// Puts jobs left running by a crash or a stop back to pending: they resume from their
// checkpoint.
void RecoverJobs()
{
	BeginStep();
	uint64 n = CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'pending'"
						   " WHERE state OPERATOR(pg_catalog.=) 'running'",
						   0, nullptr, nullptr, nullptr, SPI_OK_UPDATE);
	EndStep();
	if (n > 0)
		ereport(LOG,
				(errmsg("pgkm worker: resuming %llu re-encryption job(s) from their checkpoint",
						(unsigned long long)n)));
}

// Reads the oldest open job and locks it; false if there is none.
bool NextJob(Job *job)
{
	if (CatalogExec("SELECT job_id, table_name::oid, column_name::text, key_id, target_version,"
					" state, phase, last_key, rows_done FROM pgkm.rotation_jobs"
					" WHERE state OPERATOR(pg_catalog.=) ANY ('{pending,running}')"
					" ORDER BY job_id LIMIT 1 FOR UPDATE SKIP LOCKED",
					0, nullptr, nullptr, nullptr, SPI_OK_SELECT) != 1)
		return false;
	bool isnull;
	job->job_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	job->relid = DatumGetObjectId(CatalogValue(0, 2, &isnull));
	strlcpy(job->column, CatalogText(0, 3), NAMEDATALEN);
	job->key_id = DatumGetInt64(CatalogValue(0, 4, &isnull));
	job->target = DatumGetInt32(CatalogValue(0, 5, &isnull));
	strlcpy(job->state, CatalogText(0, 6), sizeof(job->state));
	strlcpy(job->phase, CatalogText(0, 7), sizeof(job->phase));
	job->last_key = CatalogText(0, 8);
	job->rows_done = DatumGetInt64(CatalogValue(0, 9, &isnull));
	return true;
}

// Marks a job failed with a message (in the current transaction).
void FailJob(int64 job_id, const char *message)
{
	Oid types[2] = {INT8OID, TEXTOID};
	Datum values[2] = {Int64GetDatum(job_id), CStringGetTextDatum(message)};
	CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'failed', error = $2,"
				" updated_at = pg_catalog.now(), finished_at = pg_catalog.now()"
				" WHERE job_id OPERATOR(pg_catalog.=) $1",
				2, types, values, nullptr, SPI_OK_UPDATE);
}

// The SQL pieces of one protected column: table, primary key, context expression.
struct Target
{
	char *table;     // schema-qualified and quoted
	char *column;    // quoted
	char *pk;        // quoted
	char *pk_type;   // format_type of the primary key
	char *context;   // expression over alias t, or NULL::bytea
	const char *ext; // schema of pgkm_rewrap, quoted
	const char *why; // set when the job cannot run
	// A blind-index column: its source column (quoted; NULL otherwise), the source's context
	// expression and key. The worker rebuilds the index from the source, decrypted inside
	// pgkm_blind_index_rebuild.
	char *source;
	char *source_context;
	int64 source_key_id;
};

// Returns the context expression of a context column over alias t (NULL::bytea if none).
char *ContextExpression(const char *context, bool is_bytea)
{
	if (context == nullptr)
		return pstrdup("NULL::pg_catalog.bytea");
	if (is_bytea)
		return psprintf("t.%s", quote_identifier(context));
	return psprintf("t.%s::pg_catalog.text", quote_identifier(context));
}

// Resolves what a job needs to build its statements.
Target ResolveTarget(const Job *job)
{
	Target t = {};
	char *relname = get_rel_name(job->relid);
	if (relname == nullptr)
	{
		t.why = "the table no longer exists";
		return t;
	}
	t.table =
		quote_qualified_identifier(get_namespace_name(get_rel_namespace(job->relid)), relname);
	t.column = pstrdup(quote_identifier(job->column));
	RequireByteaColumn(job->relid, job->column);
	t.ext = ExtensionSchema();
	if (!SingleColumnPrimaryKey(job->relid, &t.pk, &t.pk_type))
	{
		t.why = "the table has no single-column primary key";
		return t;
	}
	Oid types[2] = {OIDOID, NAMEOID};
	Datum values[2] = {ObjectIdGetDatum(job->relid), CatalogName(job->column)};
	// source_column exists from 1.4 on: read through to_jsonb, it is NULL before.
	if (CatalogExec("SELECT p.context_column::text, a.atttypid OPERATOR(pg_catalog.=)"
					" 'pg_catalog.bytea'::pg_catalog.regtype,"
					" pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'source_column',"
					" s.key_id, s.context_column::text, sa.atttypid OPERATOR(pg_catalog.=)"
					" 'pg_catalog.bytea'::pg_catalog.regtype"
					" FROM pgkm.protected_columns p LEFT JOIN pg_catalog.pg_attribute a"
					"  ON a.attrelid OPERATOR(pg_catalog.=) p.table_name"
					"  AND a.attname OPERATOR(pg_catalog.=) p.context_column"
					" LEFT JOIN pgkm.protected_columns s"
					"  ON s.table_name OPERATOR(pg_catalog.=) p.table_name"
					"  AND s.column_name::pg_catalog.text OPERATOR(pg_catalog.=)"
					"  (pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'source_column')"
					" LEFT JOIN pg_catalog.pg_attribute sa"
					"  ON sa.attrelid OPERATOR(pg_catalog.=) s.table_name"
					"  AND sa.attname OPERATOR(pg_catalog.=) s.context_column"
					" WHERE p.table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
					" AND p.column_name OPERATOR(pg_catalog.=) $2",
					2, types, values, nullptr, SPI_OK_SELECT) != 1)
	{
		t.why = "the column is no longer protected";
		return t;
	}
	bool isnull;
	t.context = ContextExpression(CatalogText(0, 1), DatumGetBool(CatalogValue(0, 2, &isnull)));
	char *source = CatalogText(0, 3);
	if (source == nullptr)
		return t;
	bool unprotected;
	Datum source_key = CatalogValue(0, 4, &unprotected);
	if (unprotected)
	{
		t.why = "the source column of the blind index is no longer protected";
		return t;
	}
	t.source_key_id = DatumGetInt64(source_key);
	t.source_context =
		ContextExpression(CatalogText(0, 5), DatumGetBool(CatalogValue(0, 6, &isnull)));
	RequireByteaColumn(job->relid, source);
	t.source = pstrdup(quote_identifier(source));
	return t;
}

// The predicate "holds a ciphertext of this key ($2) older than the target version ($3)".
char *OldPredicate(const Target &t, const char *alias)
{
	return HeaderPredicate(psprintf("%s%s::pg_catalog.bytea", alias, t.column), 2, "<", 3);
}

// Counts the rows that still hold an older version (no locks taken), as the table's owner.
int64 CountOld(const Job *job, const Target &t)
{
	char *sql =
		psprintf("SELECT pg_catalog.count(*) FROM %s WHERE %s", t.table, OldPredicate(t, ""));
	Oid types[3] = {TEXTOID, BYTEAOID, BYTEAOID};
	Datum values[3] = {(Datum)0, HeaderFieldDatum((std::uint32_t)job->key_id),
					   HeaderFieldDatum((std::uint32_t)job->target)};
	char nulls[3] = {'n', ' ', ' '};
	OwnerSession owner;
	OwnerOpen(job->relid, &owner);
	CatalogExec(sql, 3, types, values, nulls, SPI_OK_SELECT);
	OwnerClose(&owner);
	bool isnull;
	return DatumGetInt64(CatalogValue(0, 1, &isnull));
}

// Retires the key's decrypt-only versions older than target that no protected column
// references any more (a scan of every protected column of the key proves it).
void RetireUnreferenced(int64 key_id, int32 target)
{
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum(target)};
	uint64 n = CatalogExec("SELECT version FROM pgkm.key_versions"
						   " WHERE key_id OPERATOR(pg_catalog.=) $1"
						   " AND version OPERATOR(pg_catalog.<) $2"
						   " AND state OPERATOR(pg_catalog.=) 'decrypt_only' ORDER BY version",
						   2, types, values, nullptr, SPI_OK_SELECT);
	int32 *versions = static_cast<int32 *>(palloc(sizeof(int32) * (n + 1)));
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		versions[i] = DatumGetInt32(CatalogValue(i, 1, &isnull));
	}
	uint64 ncols;
	ProtectedColumn *columns = ProtectedColumnsOf(key_id, &ncols);
	for (uint64 i = 0; i < n; i++)
	{
		bool referenced = false;
		Datum args[2] = {Int64GetDatum(key_id), Int32GetDatum(versions[i])};
		for (uint64 c = 0; c < ncols && !referenced; c++)
			referenced = RowsUnderVersion(&columns[c], key_id, versions[i], true) > 0;
		if (referenced)
			continue;
		CatalogExec("UPDATE pgkm.key_versions SET state = 'retired',"
					" state_changed_at = pg_catalog.now()"
					" WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
					2, types, args, nullptr, SPI_OK_UPDATE);
		RecordKeyEvent(kActor, "version_retire", key_id, versions[i],
					   "no protected column references it");
		// Batches run in replica mode, where the catalog trigger does not fire.
		KeyCacheCatalogChanged();
	}
}

// Re-encrypts one batch of the oldest open job, checkpointing it in the same transaction.
Step RunBatch()
{
	Job job;
	if (!NextJob(&job))
		return Step::Idle;
	batch_job_id = job.job_id;
	Target t = ResolveTarget(&job);
	if (t.why)
	{
		FailJob(job.job_id, t.why);
		return Step::Worked;
	}

	Oid id_types[1] = {INT8OID};
	Datum id_values[1] = {Int64GetDatum(job.job_id)};
	if (strcmp(job.state, "pending") == 0)
	{
		int64 total = job.rows_done + CountOld(&job, t);
		Oid types[2] = {INT8OID, INT8OID};
		Datum values[2] = {Int64GetDatum(job.job_id), Int64GetDatum(total)};
		CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'running', rows_total = $2,"
					" started_at = COALESCE(started_at, pg_catalog.now()),"
					" updated_at = pg_catalog.now() WHERE job_id OPERATOR(pg_catalog.=) $1",
					2, types, values, nullptr, SPI_OK_UPDATE);
		if (job.rows_done == 0)
			RecordKeyEvent(kActor, "job_start", job.key_id, job.target,
						   psprintf("job %lld: %s.%s, %lld rows", (long long)job.job_id, t.table,
									t.column, (long long)total));
	}

	// The new value is computed inside the UPDATE from the row it locked; the predicate
	// makes the statement idempotent and leaves rows that others locked to a later pass.
	// It runs as the table's owner, so the table's own code (triggers that fire in replica
	// mode, index expressions, constraints, domains) never runs with the worker's rights;
	// pgkm_rewrap may use the job's key without the owner holding its roles. A blind-index
	// column is set from its source column instead ($5: the blind-index key), by
	// pgkm_blind_index_rebuild, which may use both keys likewise.
	char *new_value =
		t.source
			? psprintf("%s.pgkm_blind_index_rebuild(t.%s::pg_catalog.bytea, %s, $5)", t.ext,
					   t.source, t.source_context)
			: psprintf("%s.pgkm_rewrap(t.%s::pg_catalog.bytea, %s)", t.ext, t.column, t.context);
	char *sql = psprintf(
		"WITH batch AS (SELECT %s AS k FROM %s WHERE %s %s ORDER BY %s LIMIT $4"
		" FOR UPDATE SKIP LOCKED),"
		" done AS (UPDATE %s t SET %s = %s FROM batch"
		" WHERE t.%s OPERATOR(pg_catalog.=) batch.k AND %s RETURNING t.%s AS k)"
		" SELECT pg_catalog.count(*), pg_catalog.max(k)::pg_catalog.text FROM done",
		t.pk, t.table, OldPredicate(t, ""),
		job.last_key ? psprintf("AND %s OPERATOR(pg_catalog.>) $1::%s", t.pk, t.pk_type) : "", t.pk,
		t.table, t.column, new_value, t.pk, OldPredicate(t, "t."), t.pk);
	Oid types[5] = {TEXTOID, BYTEAOID, BYTEAOID, INT4OID, INT8OID};
	Datum values[5] = {job.last_key ? CStringGetTextDatum(job.last_key) : (Datum)0,
					   HeaderFieldDatum((std::uint32_t)job.key_id),
					   HeaderFieldDatum((std::uint32_t)job.target),
					   Int32GetDatum(guc_rotation_batch_size), Int64GetDatum(job.key_id)};
	char nulls[5] = {job.last_key ? ' ' : 'n', ' ', ' ', ' ', ' '};
	OwnerSession owner;
	OwnerOpen(job.relid, &owner);
	KeyCacheAllowRewrap((std::uint32_t)job.key_id, (std::uint32_t)t.source_key_id);
	CatalogExec(sql, 5, types, values, nulls, SPI_OK_SELECT);
	KeyCacheAllowRewrap(0);
	OwnerClose(&owner);
	bool isnull;
	int64 n = DatumGetInt64(CatalogValue(0, 1, &isnull));
	if (n > 0)
	{
		char *last = CatalogText(0, 2);
		Oid ctypes[3] = {INT8OID, TEXTOID, INT8OID};
		Datum cvalues[3] = {Int64GetDatum(job.job_id), CStringGetTextDatum(last), Int64GetDatum(n)};
		CatalogExec("UPDATE pgkm.rotation_jobs SET last_key = $2,"
					" rows_done = rows_done OPERATOR(pg_catalog.+) $3,"
					" batches = batches OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now()"
					" WHERE job_id OPERATOR(pg_catalog.=) $1",
					3, ctypes, cvalues, nullptr, SPI_OK_UPDATE);
		return Step::Worked;
	}

	// The pass is over. A fresh count decides: nothing old is left, or another pass.
	int64 left = CountOld(&job, t);
	if (left == 0)
	{
		CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'done', phase = 'finished',"
					" last_key = NULL, updated_at = pg_catalog.now(),"
					" finished_at = pg_catalog.now() WHERE job_id OPERATOR(pg_catalog.=) $1",
					1, id_types, id_values, nullptr, SPI_OK_UPDATE);
		RecordKeyEvent(kActor, "job_finish", job.key_id, job.target,
					   psprintf("job %lld: %lld rows re-encrypted", (long long)job.job_id,
								(long long)job.rows_done));
		RetireUnreferenced(job.key_id, job.target);
		return Step::Worked;
	}
	bool nothing_this_pass = job.last_key == nullptr;
	CatalogExec("UPDATE pgkm.rotation_jobs SET phase = 'sweep', last_key = NULL,"
				" sweeps = sweeps OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now()"
				" WHERE job_id OPERATOR(pg_catalog.=) $1",
				1, id_types, id_values, nullptr, SPI_OK_UPDATE);
	// A whole pass that found only locked rows waits before trying again.
	return nothing_this_pass ? Step::Blocked : Step::Worked;
}

// Returns what a failed job records: the error's message, explained for a unique violation
// (a deterministic or blind-index column under a unique index: a row written under the new
// version during the rotation already holds the value an old row is being rewritten to).
char *FailureMessage(const ErrorData *error)
{
	if (error->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
		return error->message;
	return psprintf("%s: another row already holds this value under the new key version (a "
					"duplicate written while the rotation ran, which the unique index could not "
					"see across versions); remove the duplicate, then queue the job again with "
					"pgkm.start_reencryption()",
					error->message);
}

// Runs one batch in its own transaction; a failure marks the job failed, except a lock or
// statement timeout, or the token being unusable (58000, F0000: a row is not at fault), which
// is retried after the naptime.
Step RunBatchStep()
{
	volatile Step step = Step::Idle;
	batch_job_id = 0;
	MemoryContext oldcontext = CurrentMemoryContext;
	PG_TRY();
	{
		BeginStep();
		SetLocal("session_replication_role", "replica");
		SetLocalInt("lock_timeout", guc_rotation_lock_timeout);
		SetLocalInt("statement_timeout", guc_rotation_statement_timeout);
		step = RunBatch();
		EndStep();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		KeyCacheAllowRewrap(0);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		bool retry = error->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
					 error->sqlerrcode == ERRCODE_QUERY_CANCELED ||
					 error->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
					 error->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
					 error->sqlerrcode == ERRCODE_SYSTEM_ERROR ||
					 error->sqlerrcode == ERRCODE_CONFIG_FILE_ERROR;
		ereport(retry ? LOG : WARNING,
				(errmsg("pgkm worker: re-encryption job %lld %s: %s", (long long)batch_job_id,
						retry ? "will retry" : "failed", error->message),
				 error->detail ? errdetail_internal("%s", error->detail) : 0));
		if (!retry && batch_job_id != 0)
		{
			BeginStep();
			FailJob(batch_job_id, FailureMessage(error));
			EndStep();
		}
		FreeErrorData(error);
		step = retry ? Step::Retry : Step::Blocked;
	}
	PG_END_TRY();
	return step;
}

// Rotates one key that its policy says is due, in its own transaction; a failure is logged
// and retried at the next naptime.
void RotateByPolicy(const char *name, const char *why)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	PG_TRY();
	{
		BeginStep();
		CatalogSession session;
		CatalogOpen(&session);
		Oid owner;
		int64 key_id = LockKey(name, &owner);
		int32 version = RotateKeyLocked(key_id, name, kActor, why);
		CatalogClose(&session);
		EndStep();
		ereport(LOG,
				(errmsg("pgkm worker: rotated key \"%s\" to version %d (%s)", name, version, why)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
}

// Flushes encryption counts and rotates keys whose policy says so, each in its own
// transaction; a failure is logged and retried at the next naptime.
void Housekeeping()
{
	MemoryContext oldcontext = CurrentMemoryContext;
	PG_TRY();
	{
		BeginStep();
		CatalogSession session;
		CatalogOpen(&session);
		(void)FlushEncryptionCounts();
		CatalogClose(&session);
		EndStep();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();

	// Keys due for rotation: the active version is older than max_age, or has encrypted
	// max_encryptions values (the counts were just flushed).
	BeginStep();
	uint64 n = CatalogExec(
		"SELECT k.name, CASE WHEN v.encryptions OPERATOR(pg_catalog.>=) k.rotation_max_encryptions"
		"  THEN 'automatic: ' OPERATOR(pg_catalog.||) v.encryptions OPERATOR(pg_catalog.||)"
		"  ' encryptions' ELSE 'automatic: older than ' OPERATOR(pg_catalog.||)"
		"  k.rotation_max_age::pg_catalog.text END"
		" FROM pgkm.keys k JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) k.key_id"
		"  AND v.state OPERATOR(pg_catalog.=) 'active'"
		" WHERE v.encryptions OPERATOR(pg_catalog.>=) k.rotation_max_encryptions"
		" OR pg_catalog.now() OPERATOR(pg_catalog.-) v.created_at OPERATOR(pg_catalog.>)"
		"  k.rotation_max_age ORDER BY k.key_id",
		0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
	MemoryContext keep = MemoryContextSwitchTo(TopMemoryContext);
	char **names = static_cast<char **>(palloc(sizeof(char *) * (n + 1)));
	char **whys = static_cast<char **>(palloc(sizeof(char *) * (n + 1)));
	for (uint64 i = 0; i < n; i++)
	{
		names[i] = CatalogText(i, 1);
		whys[i] = CatalogText(i, 2);
	}
	MemoryContextSwitchTo(keep);
	EndStep();

	for (uint64 i = 0; i < n; i++)
	{
		RotateByPolicy(names[i], whys[i]);
		pfree(names[i]);
		pfree(whys[i]);
	}
	pfree(names);
	pfree(whys);
}

// Releases the database's worker slot when the worker exits.
void ReleaseSlot(int, Datum arg)
{
	WorkerRelease(DatumGetObjectId(arg));
}

// Exits (status 0: not restarted) when DROP DATABASE, or another command that needs the
// database to itself, holds its lock: such a command waits only 5 s for other sessions.
// The next pgkm administration call in the database starts a worker again if needed.
void StepAsideForDatabaseCommands(Oid dbid)
{
	LOCKTAG tag;
	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, dbid, 0);
	if (LockAcquire(&tag, AccessShareLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		ereport(LOG,
				(errmsg("pgkm worker: leaving database %u, which a command needs alone", dbid)));
		proc_exit(0);
	}
	LockRelease(&tag, AccessShareLock, true);
}

TimestampTz last_step_aside_check = 0;

// Sleeps up to ms milliseconds, or until woken, looking at least once a second whether a
// command needs the database alone.
void Nap(long ms)
{
	while (ms > 0)
	{
		long slice = Min(ms, 1000L);
		int rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, slice,
						   PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		// Audit records wake the worker often: look for database commands once a second.
		TimestampTz now = GetCurrentTimestamp();
		if (OidIsValid(MyDatabaseId) && now - last_step_aside_check >= USECS_PER_SEC)
		{
			last_step_aside_check = now;
			StepAsideForDatabaseCommands(MyDatabaseId);
		}
		if (rc & WL_LATCH_SET)
			return;
		ms -= slice;
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending || ConfigReloadPending)
			return;
	}
}

// Reloads the settings on SIGHUP; exits on SIGTERM: with status 1 (restarted), unless a
// command that needs the database alone sent it (DROP DATABASE ... WITH (FORCE) terminates
// the database's sessions while it holds the database's lock): a worker restarted into a
// dropped database would fail to connect every few seconds for good, holding a worker slot.
void HandleSignals()
{
	CHECK_FOR_INTERRUPTS();
	if (ShutdownRequestPending)
	{
		if (OidIsValid(MyDatabaseId))
			StepAsideForDatabaseCommands(MyDatabaseId); // exits with status 0
		proc_exit(1);
	}
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

} // namespace

namespace pgkm::pg
{

void WorkerBeginStep()
{
	BeginStep();
}

void WorkerEndStep()
{
	EndStep();
}

void WorkerSetLocal(const char *name, const char *value)
{
	SetLocal(name, value);
}

void WorkerInit()
{
	BackgroundWorker launcher;
	FillWorker(&launcher, "pgkm_launcher_main", "pgkm launcher", (Datum)0);
	strlcpy(launcher.bgw_name, "pgkm launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&launcher);
}

bool StartDatabaseWorker()
{
	bool running = WorkerRunning(MyDatabaseId);
	WakeDatabaseWorker();
	return !running;
}

void WakeDatabaseWorker()
{
	if (!wake_callback_registered)
	{
		RegisterXactCallback(WakeAtCommit, nullptr);
		wake_callback_registered = true;
	}
	wake_at_commit = true;
}

} // namespace pgkm::pg

// pgkm.start_worker(): starts this database's worker unless one runs.
Datum pgkm_start_worker(PG_FUNCTION_ARGS)
{
	// CREATE EXTENSION calls this; it must work without shared_preload_libraries too (a
	// restore, say), where the data path then explains what is missing.
	if (!SharedMemoryReady())
	{
		ereport(WARNING,
				(errmsg("pgkm is not loaded via shared_preload_libraries: no background worker"),
				 errhint("Add pgkm to shared_preload_libraries in postgresql.conf and restart the "
						 "server.")));
		PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(StartDatabaseWorker());
}

// The launcher: starts a worker for every database that accepts connections, then waits.
// Workers of databases without pgkm exit at once with status 0 and are not restarted.
void pgkm_launcher_main(Datum)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);

	List *databases = NIL;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	Relation rel = table_open(DatabaseRelationId, AccessShareLock);
	TableScanDesc scan = table_beginscan_catalog(rel, 0, nullptr);
	HeapTuple tuple;
	MemoryContext txn = MemoryContextSwitchTo(TopMemoryContext);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != nullptr)
	{
		Form_pg_database db = (Form_pg_database)GETSTRUCT(tuple);
		if (db->datallowconn && !db->datistemplate)
			databases = lappend_oid(databases, db->oid);
	}
	MemoryContextSwitchTo(txn);
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();

	ListCell *cell;
	foreach (cell, databases)
	{
		Oid dbid = lfirst_oid(cell);
		if (!WorkerRunning(dbid) && !RegisterDatabaseWorker(dbid))
			ereport(WARNING,
					(errmsg("pgkm launcher: could not start a worker for database %u", dbid),
					 errhint("Raise max_worker_processes.")));
	}
	for (;;)
	{
		HandleSignals();
		Nap(3600 * 1000L);
	}
}

// The worker of one database.
void pgkm_worker_main(Datum arg)
{
	Oid dbid = DatumGetObjectId(arg);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("pgkm worker");

	if (!WorkerClaim(dbid))
		proc_exit(0); // another worker serves this database
	before_shmem_exit(ReleaseSlot, ObjectIdGetDatum(dbid));
	if (!ExtensionReady())
	{
		(void)AuditDiscard(dbid);
		proc_exit(0); // no pgkm (1.1 or later) here: not restarted
	}
	AuditSuppressAccess(); // re-encryption is not an access; administration is still recorded
	RecoverJobs();

	TimestampTz next_housekeeping = 0;
	TimestampTz next_batch = 0; // a batch to retry waits the naptime, even with audit records
	for (;;)
	{
		HandleSignals();
		if (GetCurrentTimestamp() >= next_housekeeping)
		{
			if (!ExtensionReady())
			{
				(void)AuditDiscard(dbid);
				proc_exit(0); // DROP EXTENSION
			}
			Housekeeping();
			AuditHousekeeping(true);
			next_housekeeping =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), guc_worker_naptime * 1000L);
		}
		int audited = AuditDrain();
		if (audited > 0 && AuditCheckpointDue())
			AuditHousekeeping(false);
		TimestampTz started = GetCurrentTimestamp();
		Step step = started >= next_batch ? RunBatchStep() : Step::Idle;
		if (step == Step::Retry)
			next_batch = TimestampTzPlusMilliseconds(started, guc_worker_naptime * 1000L);
		long wait = guc_worker_naptime * 1000L;
		if (step == Step::Blocked || step == Step::Retry || audited < 0)
			next_housekeeping = 0; // a failure may mean DROP EXTENSION: look at once
		if (audited < 0)
			wait = Min(wait, 1000L); // retry the audit soon
		if (step == Step::Worked)
		{
			// Throttle: the batch delay, stretched to honour the rows-per-second cap.
			wait = guc_rotation_batch_delay;
			if (guc_rotation_max_rows_per_second > 0)
			{
				long min_ms =
					(long)guc_rotation_batch_size * 1000L / guc_rotation_max_rows_per_second;
				long spent = (long)((GetCurrentTimestamp() - started) / 1000);
				wait = Max(wait, min_ms - spent);
			}
		}
		// Audit records keep coming: drain them on a short cadence, so that a session's
		// repeated statements gather in one record (AuditMerge) and the worker is not woken
		// for each. Producers wake a worker that sleeps long (idle) at once.
		if (audited >= 0 && AuditPending(dbid))
			wait = Min(wait, kAuditCadenceMs);
		if (wait > kAuditCadenceMs)
		{
			AuditWorkerIdle(dbid, true);
			if (AuditPending(dbid))
				wait = kAuditCadenceMs; // came in after the drain: no wake-up was sent
		}
		if (wait > 0)
			Nap(wait);
		AuditWorkerIdle(dbid, false);
	}
}
