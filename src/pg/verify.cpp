// Integrity verification: pgkm.verify(relation, max_rows_per_second) scans the registered
// protected columns in batches through a cursor, tries to open every non-NULL value under its
// context (the plaintext is wiped at once, never returned), and returns counts by column, key
// and version, with failures by kind and the first failing primary keys. Its progress is kept
// in shared slots that pgkm.verify_progress shows.
#include "pgkm/core/format.hpp"

#include "pgkm/pg/aead_calls.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/verify.hpp"

#include "pgkm/pg/postgres.hpp"

extern "C"
{
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "storage/procarray.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "catalog/pg_class.h"
#include "utils/backend_status.h"
#include "utils/syscache.h"
#include "utils/wait_event.h"
}

namespace pgkm::pg
{

namespace
{

// What happened to one value. Ok first; the failures in the order of the result columns.
enum Kind
{
	kOk,
	kMissingKey,     // no such key or version in the catalog
	kDestroyed,      // the version was destroyed (or its key erased)
	kDisabled,       // the version is disabled or retired
	kDenied,         // the caller may not decrypt with the key
	kAuthFailed,     // authentication failed (the value, its header or its context altered)
	kWrongMasterKey, // the DEK does not unwrap: master key missing or wrong, token failing
	kMalformed,      // not a pgkm value: too short, unknown format or algorithm
	kKinds
};

constexpr const char *kKindNames[kKinds] = {
	"ok",     "missing_key", "destroyed",        "disabled",
	"denied", "auth_failed", "wrong_master_key", "malformed"};
constexpr int kFirstFailures = 3;  // failing keys kept per kind and group
constexpr int kMaxGroups = 64;     // groups per column; further unknown versions share one
constexpr int kMaxVersions = 256;  // version outcomes remembered per run
constexpr int kBatchRows = 1000;   // rows fetched per batch when not throttled
constexpr int kVerifySlots = 16;   // verifications shown by pgkm.verify_progress at once
constexpr int kResultColumns = 15; // OUT columns of pgkm.verify

// One running verification, in shared memory (pid 0: free).
struct VerifySlot
{
	slock_t mutex;
	pid_t pid;
	Oid dbid;
	Oid relid;
	NameData column;
	int64 rows_done;
	int64 rows_total; // estimate from pg_class.reltuples, -1 when unknown
	int64 failures;
	TimestampTz started_at;
};

VerifySlot *slots = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;
#if PG_VERSION_NUM >= 150000
shmem_request_hook_type prev_shmem_request_hook = nullptr;
#endif

// The outcome of one key version for this run, found once.
struct VersionOutcome
{
	std::uint32_t key_id;
	std::uint32_t version;
	Kind kind;                 // kOk: values are opened one by one
	core::Algorithm algorithm; // the key's
	char key_name[NAMEDATALEN];
};

// The counts of one (column, key, version); key_id -1 for values whose header names no key.
struct Group
{
	int64 key_id;
	std::int32_t version;
	char key_name[NAMEDATALEN];
	bool named;
	int64 counts[kKinds];
	char *first[kKinds][kFirstFailures];
};

// The state of one run: the version outcomes and the current column's groups.
struct Run
{
	FmgrInfo *flinfo;
	VersionOutcome outcomes[kMaxVersions];
	int n_outcomes;
	Group groups[kMaxGroups];
	int n_groups;
	int64 total_values;
	int64 total_failures;
	VerifySlot *slot;
};

// Asks the postmaster for the slots.
void RequestVerifyShmem()
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(VerifySlot) * kVerifySlots));
}

#if PG_VERSION_NUM >= 150000
// shmem_request_hook: chains, then requests the slots.
void VerifyShmemRequest()
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestVerifyShmem();
}
#endif

// shmem_startup_hook: chains, then creates or attaches to the slots.
void VerifyShmemStartup()
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bool found;
	slots = static_cast<VerifySlot *>(
		ShmemInitStruct("pgkm verify", sizeof(VerifySlot) * kVerifySlots, &found));
	if (!found)
	{
		memset(slots, 0, sizeof(VerifySlot) * kVerifySlots);
		for (int i = 0; i < kVerifySlots; i++)
			SpinLockInit(&slots[i].mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

// Claims a free slot (or one whose process is gone) for this backend; nullptr when all are
// busy (the run goes on, unseen by pgkm.verify_progress).
VerifySlot *ClaimSlot()
{
	if (slots == nullptr)
		return nullptr;
	for (int i = 0; i < kVerifySlots; i++)
	{
		VerifySlot *s = &slots[i];
		SpinLockAcquire(&s->mutex);
		pid_t pid = s->pid;
		SpinLockRelease(&s->mutex);
		if (pid != 0 && pid != MyProcPid && BackendPidGetProc(pid) != nullptr)
			continue;
		SpinLockAcquire(&s->mutex);
		if (s->pid == pid)
		{
			s->pid = MyProcPid;
			s->dbid = MyDatabaseId;
			s->relid = InvalidOid;
			memset(&s->column, 0, sizeof(s->column));
			s->rows_done = s->rows_total = s->failures = 0;
			s->started_at = GetCurrentTimestamp();
			SpinLockRelease(&s->mutex);
			return s;
		}
		SpinLockRelease(&s->mutex);
	}
	return nullptr;
}

// What EndRun undoes: the run's progress slot (or nullptr) and the statement's text.
struct RunEnd
{
	MemoryContextCallback callback;
	VerifySlot *slot;
	char *statement; // nullptr if none
};

// Memory-context callback: when the call ends, on success or error, frees the run's slot (if
// it has one) and puts the statement back as the backend's activity (on an error, postgres.c
// has cleared debug_query_string by then: the text was copied at the start).
void EndRun(void *arg)
{
	auto *end = static_cast<RunEnd *>(arg);
	if (end->slot != nullptr)
	{
		VerifySlot *s = end->slot;
		SpinLockAcquire(&s->mutex);
		if (s->pid == MyProcPid)
			s->pid = 0;
		SpinLockRelease(&s->mutex);
	}
	if (end->statement != nullptr)
		pgstat_report_activity(STATE_RUNNING, end->statement);
}

// Publishes the column being scanned and its row estimate.
void SlotColumn(VerifySlot *s, Oid relid, const char *column, int64 rows_total)
{
	if (s == nullptr)
		return;
	SpinLockAcquire(&s->mutex);
	s->relid = relid;
	namestrcpy(&s->column, column);
	s->rows_done = 0;
	s->rows_total = rows_total;
	SpinLockRelease(&s->mutex);
}

// Publishes the rows done in the current column and the failures of the run so far.
void SlotProgress(VerifySlot *s, int64 rows_done, int64 failures)
{
	if (s == nullptr)
		return;
	SpinLockAcquire(&s->mutex);
	s->rows_done = rows_done;
	s->failures = failures;
	SpinLockRelease(&s->mutex);
}

// Runs fn in an internal subtransaction; returns 0, or the SQLSTATE of the error it raised
// (the error is flushed, the subtransaction rolled back). Used only for the few calls per run
// that find a key version (catalog, privileges, token), never per value.
template <typename Fn> int TrySubtransaction(Fn &&fn)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int sqlstate = 0;
	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		fn();
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(context);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		sqlstate = error->sqlerrcode;
		FreeErrorData(error);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return sqlstate;
}

// Maps the SQLSTATE of a failed KeyForDecrypt to a kind; kKinds for an error verify does not
// expect (it is raised again).
Kind KindOfError(int sqlstate)
{
	if (sqlstate == ERRCODE_INSUFFICIENT_PRIVILEGE)
		return kDenied;
	if (sqlstate == ERRCODE_UNDEFINED_OBJECT)
		return kMissingKey;
	if (sqlstate == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE)
		return kDisabled;
	if (sqlstate == ERRCODE_DATA_CORRUPTED || ERRCODE_TO_CATEGORY(sqlstate) == ERRCODE_SYSTEM_ERROR)
		return kWrongMasterKey;
	return kKinds;
}

// Reads a version's state and its key's algorithm and name from the catalog (as its owner).
// Returns false when there is no such version.
bool ReadVersion(std::uint32_t key_id, std::uint32_t version, VersionOutcome *o)
{
	CatalogSession session;
	CatalogOpen(&session);
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum((int32)version)};
	// The latest catalog, as the key cache reads it: under REPEATABLE READ too, a version
	// disabled or destroyed during the run is classified as the cache will then refuse it.
	bool stale;
	bool found = CatalogQueryLatest("SELECT v.state, k.algorithm, k.name::pg_catalog.text,"
									" pg_catalog.to_jsonb(k) OPERATOR(pg_catalog.->>) 'erased_at'"
									" FROM pgkm.key_versions v JOIN pgkm.keys k"
									"  ON k.key_id OPERATOR(pg_catalog.=) v.key_id"
									" WHERE v.key_id OPERATOR(pg_catalog.=) $1"
									" AND v.version OPERATOR(pg_catalog.=) $2",
									2, types, values, nullptr, &stale, nullptr) == 1;
	if (found)
	{
		char *state = CatalogText(0, 1);
		char *algorithm = CatalogText(0, 2);
		char *name = CatalogText(0, 3);
		char *erased = CatalogText(0, 4);
		strlcpy(o->key_name, name, sizeof(o->key_name));
		o->algorithm = strcmp(algorithm, "aes-256-siv") == 0   ? core::Algorithm::Aes256Siv
					   : strcmp(algorithm, "blind-index") == 0 ? core::Algorithm::BlindIndex
															   : core::Algorithm::Aes256Gcm;
		if (erased != nullptr || strcmp(state, "destroyed") == 0)
			o->kind = kDestroyed;
		else if (strcmp(state, "disabled") == 0 || strcmp(state, "retired") == 0)
			o->kind = kDisabled;
		else
			o->kind = kOk;
	}
	CatalogClose(&session);
	return found;
}

// The outcome of a version this run has found, or nullptr.
VersionOutcome *KnownOutcome(Run *run, std::uint32_t key_id, std::uint32_t version)
{
	for (int i = 0; i < run->n_outcomes; i++)
		if (run->outcomes[i].key_id == key_id && run->outcomes[i].version == version)
			return &run->outcomes[i];
	return nullptr;
}

// Whether values under a version with outcome o are opened one by one (blind-index values
// cannot be: they are checked by header).
bool Opens(const VersionOutcome &o)
{
	return o.kind == kOk && o.algorithm != core::Algorithm::BlindIndex;
}

// Finds what a version means for this run: its catalog state, then (for a usable version of
// a decryptable key) whether the caller may decrypt with it and whether its DEK unwraps.
VersionOutcome FindOutcome(Run *run, std::uint32_t key_id, std::uint32_t version)
{
	if (VersionOutcome *known = KnownOutcome(run, key_id, version))
		return *known;
	VersionOutcome o = {};
	o.key_id = key_id;
	o.version = version;
	if (!ReadVersion(key_id, version, &o))
		o.kind = kMissingKey;
	else if (Opens(o))
	{
		FmgrInfo *flinfo = run->flinfo;
		int sqlstate = TrySubtransaction([&]() { KeyForDecrypt(flinfo, key_id, version); });
		if (sqlstate != 0)
		{
			o.kind = KindOfError(sqlstate);
			if (o.kind == kKinds)
				ereport(ERROR, (errcode(sqlstate),
								errmsg("could not verify values of key \"%s\" version %u",
									   o.key_name, version)));
		}
	}
	if (run->n_outcomes < kMaxVersions)
		run->outcomes[run->n_outcomes++] = o;
	return o;
}

// Forgets the outcome of a version, so that the next FindOutcome finds it anew.
void ForgetOutcome(Run *run, std::uint32_t key_id, std::uint32_t version)
{
	if (VersionOutcome *known = KnownOutcome(run, key_id, version))
		*known = run->outcomes[--run->n_outcomes];
}

// Returns the group of (key_id, version) in the current column; key_id -1 (or a full table
// of groups) gives the shared group of values that name no usable key.
Group *GroupOf(Run *run, int64 key_id, std::int32_t version, const char *name)
{
	for (int i = 0; i < run->n_groups; i++)
		if (run->groups[i].key_id == key_id && run->groups[i].version == version)
			return &run->groups[i];
	if (run->n_groups == kMaxGroups - 1 && key_id != -1)
		return GroupOf(run, -1, 0, nullptr);
	Group *g = &run->groups[run->n_groups++];
	memset(g, 0, sizeof(*g));
	g->key_id = key_id;
	g->version = version;
	g->named = name != nullptr && name[0] != '\0';
	if (g->named)
		strlcpy(g->key_name, name, sizeof(g->key_name));
	return g;
}

// Counts one value of kind in g, keeping its row key among the first failures.
void Count(Run *run, Group *g, Kind kind, const char *row_key, MemoryContext keep)
{
	g->counts[kind]++;
	run->total_values++;
	if (kind == kOk)
		return;
	run->total_failures++;
	for (int i = 0; i < kFirstFailures; i++)
		if (g->first[kind][i] == nullptr)
		{
			g->first[kind][i] = MemoryContextStrdup(keep, row_key);
			return;
		}
}

// Opens one value under version v, ready to decrypt; true when it authenticates. The
// plaintext is wiped before this returns (the AEAD wipes it itself when authentication fails).
bool OpenAndWipe(const VersionEntry *v, const core::Header &header, core::ByteView in,
				 core::ByteView context)
{
	if (header.algorithm != v->algorithm)
		return false;
	std::size_t len = in.size() - core::Overhead(header.algorithm);
	auto *out = static_cast<std::uint8_t *>(palloc(len + 1));
	Failure failure;
	bool ok = RunCore(failure,
					  [&]()
					  {
						  std::span<std::uint8_t> plain(out, len);
						  if (v->algorithm == core::Algorithm::Aes256Siv)
							  v->material->siv().Open(in, context, plain);
						  else
							  v->material->gcm().Open(in, context, plain);
					  });
	explicit_bzero(out, len);
	pfree(out);
	return ok;
}

// Classifies one non-NULL value of a column and counts it.
void VerifyValue(Run *run, core::ByteView in, core::ByteView context, const char *row_key,
				 MemoryContext keep)
{
	core::Header header;
	Failure failure;
	if (!RunCore(failure, [&]() { header = core::ParseHeader(in); }))
	{
		Count(run, GroupOf(run, -1, 0, nullptr), kMalformed, row_key, keep);
		return;
	}
	VersionOutcome o = FindOutcome(run, header.key_id, header.key_version);
	const VersionEntry *v = nullptr;
	if (Opens(o) && (v = CachedForDecrypt(header.key_id, header.key_version)) == nullptr)
	{
		// The catalog changed under the run (a version disabled, destroyed or erased, a role
		// revoked, the master key rotated) or the cache let the version go: its outcome is
		// found again, so that such a value is counted by what it now is, not raised. (Only
		// a second change within these few calls can still make KeyForDecrypt raise.)
		ForgetOutcome(run, header.key_id, header.key_version);
		o = FindOutcome(run, header.key_id, header.key_version);
		if (Opens(o))
			v = KeyForDecrypt(run->flinfo, header.key_id, header.key_version);
	}
	Group *g = GroupOf(run, header.key_id, (std::int32_t)header.key_version,
					   o.kind == kMissingKey ? nullptr : o.key_name);
	Kind kind = o.kind;
	if (kind == kOk && header.algorithm != o.algorithm)
		kind = kAuthFailed;
	else if (Opens(o) && !OpenAndWipe(v, header, in, context))
		kind = kAuthFailed;
	Count(run, g, kind, row_key, keep);
}

// One protected column to scan.
struct ColumnTarget
{
	Oid relid;
	char *column;
	char *context_column; // nullptr: none
	bool context_is_bytea;
};

// Returns the expression of a row's key over alias t: its primary key as text (a composite
// key as a row), or its ctid when it has none.
char *RowKeyExpression(Oid relid)
{
	Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};
	if (SPI_execute_with_args("SELECT pg_catalog.count(*)::pg_catalog.int4,"
							  " pg_catalog.string_agg('t.' OPERATOR(pg_catalog.||)"
							  "  pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n)"
							  " FROM pg_catalog.pg_index i,"
							  " pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, n),"
							  " pg_catalog.pg_attribute a"
							  " WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
							  " AND a.attrelid OPERATOR(pg_catalog.=) i.indrelid"
							  " AND a.attnum OPERATOR(pg_catalog.=) k.attnum",
							  1, types, values, nullptr, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the primary key of relation %u", relid);
	bool isnull;
	int n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (n == 0)
		return pstrdup("t.ctid::pg_catalog.text");
	char *columns = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (n == 1)
		return psprintf("%s::pg_catalog.text", columns);
	return psprintf("ROW(%s)::pg_catalog.text", columns);
}

// Reads the registered protected columns (of relid, or all) that still exist.
List *ReadTargets(Oid relid)
{
	MemoryContext caller = CurrentMemoryContext;
	CatalogSession session;
	CatalogOpen(&session);
	Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};
	char nulls[1] = {relid == InvalidOid ? 'n' : ' '};
	uint64 n = CatalogExec("SELECT p.table_name::pg_catalog.oid, p.column_name::pg_catalog.text,"
						   " p.context_column::pg_catalog.text, a.atttypid OPERATOR(pg_catalog.=)"
						   " 'pg_catalog.bytea'::pg_catalog.regtype"
						   " FROM pgkm.protected_columns p LEFT JOIN pg_catalog.pg_attribute a"
						   "  ON a.attrelid OPERATOR(pg_catalog.=) p.table_name"
						   "  AND a.attname OPERATOR(pg_catalog.=) p.context_column"
						   " WHERE $1 IS NULL OR p.table_name OPERATOR(pg_catalog.=) $1"
						   " ORDER BY p.table_name::pg_catalog.oid, p.column_name",
						   1, types, values, nulls, SPI_OK_SELECT);
	List *targets = NIL;
	for (uint64 i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(caller);
		bool isnull;
		auto *t = static_cast<ColumnTarget *>(palloc0(sizeof(ColumnTarget)));
		t->relid = DatumGetObjectId(CatalogValue(i, 1, &isnull));
		t->column = CatalogText(i, 2);
		t->context_column = CatalogText(i, 3);
		Datum is_bytea = CatalogValue(i, 4, &isnull);
		t->context_is_bytea = !isnull && DatumGetBool(is_bytea);
		targets = lappend(targets, t);
		MemoryContextSwitchTo(old);
	}
	CatalogClose(&session);
	return targets;
}

// Sleeps as long as the run is ahead of max_rows_per_second; cancellable.
void Throttle(int rate, int64 rows, TimestampTz started)
{
	CHECK_FOR_INTERRUPTS();
	if (rate <= 0)
		return;
	for (;;)
	{
		TimestampTz due = started + (TimestampTz)((double)rows * USECS_PER_SEC / rate);
		long ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due);
		if (ms <= 0)
			return;
		(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
						PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

// Appends the current column's groups to the result, in key and version order.
void EmitGroups(Run *run, const ColumnTarget *t, ReturnSetInfo *rsinfo)
{
	for (int i = 0; i < run->n_groups; i++)
		for (int j = i + 1; j < run->n_groups; j++)
		{
			Group *a = &run->groups[i];
			Group *b = &run->groups[j];
			if (b->key_id < a->key_id || (b->key_id == a->key_id && b->version < a->version))
			{
				Group swap = *a;
				*a = *b;
				*b = swap;
			}
		}
	for (int i = 0; i < run->n_groups; i++)
	{
		Group *g = &run->groups[i];
		Datum values[kResultColumns];
		bool nulls[kResultColumns] = {};
		values[0] = ObjectIdGetDatum(t->relid);
		values[1] = CatalogName(t->column);
		nulls[2] = nulls[4] = g->key_id == -1;
		values[2] = Int64GetDatum(g->key_id);
		nulls[3] = !g->named;
		values[3] = g->named ? CStringGetTextDatum(g->key_name) : (Datum)0;
		values[4] = Int32GetDatum(g->version);
		int64 total = 0;
		for (int k = 0; k < kKinds; k++)
			total += g->counts[k];
		values[5] = Int64GetDatum(total);
		for (int k = 0; k < kKinds; k++)
			values[6 + k] = Int64GetDatum(g->counts[k]);
		Datum failures[kKinds * kFirstFailures];
		int n = 0;
		for (int k = 1; k < kKinds; k++)
			for (int f = 0; f < kFirstFailures && g->first[k][f] != nullptr; f++)
				failures[n++] =
					CStringGetTextDatum(psprintf("%s: %s", kKindNames[k], g->first[k][f]));
		values[14] =
			PointerGetDatum(construct_array(failures, n, TEXTOID, -1, false, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	run->n_groups = 0;
}

// Returns a column's row estimate from pg_class (-1 when never analysed or vacuumed).
int64 RowEstimate(Oid relid)
{
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return -1;
	float4 reltuples = ((Form_pg_class)GETSTRUCT(tuple))->reltuples;
	ReleaseSysCache(tuple);
	return reltuples < 0 ? -1 : (int64)reltuples;
}

// Scans one protected column through a cursor, batch by batch, resetting the batch context.
void VerifyColumn(Run *run, const ColumnTarget *t, int rate, TimestampTz started, int64 *rows_run,
				  ReturnSetInfo *rsinfo)
{
	char *relname = get_rel_name(t->relid);
	if (relname == nullptr)
		return;
	char *table =
		quote_qualified_identifier(get_namespace_name(get_rel_namespace(t->relid)), relname);
	const char *column = quote_identifier(t->column);
	char *context = t->context_column == nullptr ? pstrdup("NULL::pg_catalog.bytea")
					: t->context_is_bytea
						? psprintf("t.%s", quote_identifier(t->context_column))
						: psprintf("t.%s::pg_catalog.text", quote_identifier(t->context_column));
	char *sql = psprintf("SELECT %s, t.%s::pg_catalog.bytea, %s FROM %s t"
						 " WHERE t.%s IS NOT NULL",
						 RowKeyExpression(t->relid), column, context, table, column);
	SlotColumn(run->slot, t->relid, t->column, RowEstimate(t->relid));
	pgstat_report_activity(STATE_RUNNING, psprintf("pgkm.verify: %s.%s", table, column));

	MemoryContext keep = CurrentMemoryContext;
	MemoryContext batch_context =
		AllocSetContextCreate(CurrentMemoryContext, "pgkm verify batch", ALLOCSET_DEFAULT_SIZES);
	Portal portal = SPI_cursor_open_with_args(nullptr, sql, 0, nullptr, nullptr, nullptr, true,
											  CURSOR_OPT_NO_SCROLL);
	int fetch = rate > 0 ? Max(1, Min(kBatchRows, rate / 10)) : kBatchRows;
	int64 done = 0;
	for (;;)
	{
		SPI_cursor_fetch(portal, true, fetch);
		uint64 n = SPI_processed;
		if (n == 0)
			break;
		MemoryContext old = MemoryContextSwitchTo(batch_context);
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple row = SPI_tuptable->vals[i];
			TupleDesc desc = SPI_tuptable->tupdesc;
			bool isnull;
			char *row_key = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
			bytea *value = DatumGetByteaPP(SPI_getbinval(row, desc, 2, &isnull));
			Datum context_datum = SPI_getbinval(row, desc, 3, &isnull);
			core::ByteView context_bytes;
			if (!isnull)
				context_bytes = Bytes(DatumGetByteaPP(context_datum));
			VerifyValue(run, Bytes(value), context_bytes, row_key, keep);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_context);
		SPI_freetuptable(SPI_tuptable);
		done += (int64)n;
		*rows_run += (int64)n;
		SlotProgress(run->slot, done, run->total_failures);
		Throttle(rate, *rows_run, started);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(batch_context);
	EmitGroups(run, t, rsinfo);
}

} // namespace

void VerifyInit()
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = VerifyShmemRequest;
#else
	RequestVerifyShmem();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = VerifyShmemStartup;
}

} // namespace pgkm::pg

using namespace pgkm::pg;

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_verify);
	PG_FUNCTION_INFO_V1(pgkm_verify_progress);
	Datum pgkm_verify(PG_FUNCTION_ARGS);
	Datum pgkm_verify_progress(PG_FUNCTION_ARGS);
}

// pgkm.verify(relation, max_rows_per_second): the counts of every registered protected
// column (or those of one table) by key version and outcome. Recorded as one audit record.
Datum pgkm_verify(PG_FUNCTION_ARGS)
{
	Oid relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);
	int rate = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	if (rate < 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("max_rows_per_second must not be negative"),
						errhint("Use 0 for no limit.")));
	RequireSharedMemory();
	InitMaterializedSRF(fcinfo, 0);
	auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);

	auto *run = static_cast<Run *>(palloc0(sizeof(Run)));
	run->flinfo = fcinfo->flinfo;
	run->slot = ClaimSlot();
	auto *end = static_cast<RunEnd *>(palloc0(sizeof(RunEnd)));
	end->slot = run->slot;
	end->statement = debug_query_string ? pstrdup(debug_query_string) : nullptr;
	end->callback.func = EndRun;
	end->callback.arg = end;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &end->callback);
	List *targets = ReadTargets(relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	TimestampTz started = GetCurrentTimestamp();
	int64 rows_run = 0;
	ListCell *cell;
	foreach (cell, targets)
		VerifyColumn(run, static_cast<ColumnTarget *>(lfirst(cell)), rate, started, &rows_run,
					 rsinfo);
	SPI_finish();
	AuditAdmin("verify", nullptr, 0,
			   psprintf("%s: %d columns, %lld values, %lld failed",
						relid == InvalidOid ? "all protected columns"
											: quote_identifier(get_rel_name(relid)),
						list_length(targets), (long long)run->total_values,
						(long long)run->total_failures));
	return (Datum)0;
}

// pgkm_verify_progress(): the running verifications of this database.
Datum pgkm_verify_progress(PG_FUNCTION_ARGS)
{
	InitMaterializedSRF(fcinfo, 0);
	auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
	if (slots == nullptr)
		return (Datum)0;
	for (int i = 0; i < kVerifySlots; i++)
	{
		VerifySlot copy;
		SpinLockAcquire(&slots[i].mutex);
		copy = slots[i];
		SpinLockRelease(&slots[i].mutex);
		if (copy.pid == 0 || copy.dbid != MyDatabaseId || BackendPidGetProc(copy.pid) == nullptr)
			continue;
		Datum values[7];
		bool nulls[7] = {};
		values[0] = Int32GetDatum(copy.pid);
		values[1] = ObjectIdGetDatum(copy.relid);
		nulls[1] = nulls[2] = copy.relid == InvalidOid;
		values[2] = CatalogName(NameStr(copy.column));
		values[3] = Int64GetDatum(copy.rows_done);
		values[4] = Int64GetDatum(copy.rows_total);
		nulls[4] = copy.rows_total < 0;
		values[5] = Int64GetDatum(copy.failures);
		values[6] = TimestampTzGetDatum(copy.started_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum)0;
}
