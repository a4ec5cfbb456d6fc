// The access audit, producer side. Executor hooks note statements that read or write
// protected columns; the data path reports each use of a key and each failure; the
// administration functions report their actions. Records are built here with who, when and
// from where, and go to the worker through the shared ring (audit_ring.cpp) or, on a hot
// standby, to the server log as JSON. Nothing here raises an error on the application's
// path except where pgkm.audit_overflow = error asks for it.
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_partitions.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include <fcntl.h>
#include <unistd.h>

#include "access/parallel.h"
#include "access/xlog.h"
#include "common/hashfn.h"
#include "common/ip.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "utils/backend_status.h"
#include "utils/json.h"
#if PG_VERSION_NUM >= 140000 && PG_VERSION_NUM < 160000
#include "utils/queryjumble.h"
#elif PG_VERSION_NUM >= 160000
#include "nodes/queryjumble.h"
#endif
}

namespace pgkm::pg
{

namespace
{

inline constexpr int kMaxNoteColumns = 8;
inline constexpr int kMaxNotes = 16;
// Distinct (statement, operation, key version) counts a backend keeps before it writes them
// out early. Each holds a whole AuditEntry (about 2.3 KB), in a static array whose pages
// become resident only as a statement uses that many versions (at most about 300 KB), and
// stay: an array grown and freed per statement fragmented the heap of a backend that ran
// statements over hundreds of keys. A statement over per-subject keys touches one version
// per subject; each gets one record (more if it touches more than this many at once).
inline constexpr int kMaxAggregates = 128;
inline constexpr int kAggregateSlots = 2 * kMaxAggregates; // open addressing, a power of two

// A protected column as the hooks see it.
struct ProtectedColumn
{
	Oid relid;
	AttrNumber attnum;
	std::uint32_t key_id;
	char relation[2 * kAuditNameLen + 8];
	char column[kAuditNameLen];
};

// A statement that touches protected columns, from ExecutorStart to ExecutorEnd.
struct Note
{
	QueryDesc *query;
	std::uint64_t id;
	SubTransactionId subid;
	const char *command;
	bool has_query_id;
	std::int64_t query_id;
	int ncolumns;
	ProtectedColumn columns[kMaxNoteColumns];
	std::uint32_t covered; // columns that a use record already accounts for
	bool parallel;         // a parallel plan: workers record their own key uses
};

// Uses of one key version by one operation in one statement, counted until it ends.
struct Aggregate
{
	std::uint64_t note_id; // 0: not attributed to a noted statement
	AuditOp op;
	std::uint32_t key_id;
	std::uint32_t version;
	std::int64_t count;
	AuditEntry entry; // everything but the count, filled at the first use
};

// An administration action waiting for its transaction's outcome.
struct AdminRecord
{
	SubTransactionId subid;
	AuditEntry entry;
};

ExecutorStart_hook_type prev_executor_start = nullptr;
ExecutorRun_hook_type prev_executor_run = nullptr;
ExecutorFinish_hook_type prev_executor_finish = nullptr;
ExecutorEnd_hook_type prev_executor_end = nullptr;

bool access_suppressed = false;
bool audit_writer = false;
int nesting_level = 0;

// What is known about this database's pgkm, refreshed like the key cache.
bool catalog_valid = false;
bool audit_available = false; // pgkm 1.2 or later is installed here
std::uint64_t catalog_generation = 0;
TimestampTz catalog_expires = 0;
Oid audit_log_relid = InvalidOid;
Oid protected_columns_relid = InvalidOid;
ProtectedColumn *protected_columns = nullptr; // in TopMemoryContext
int protected_count = 0;

// Entries this backend queued that the worker may not have taken yet: repeated uses with the
// same who, what and where are added to them (AuditMerge) rather than queued anew.
struct OpenEntry
{
	std::uint64_t pos; // 0: unused
	AuditEntry entry;
};
inline constexpr int kOpenEntries = 16;
OpenEntry open_entries[kOpenEntries];
int open_next = 0;

Note notes[kMaxNotes];
int note_depth = 0;
std::uint64_t next_note_id = 1;
Aggregate aggregates[kMaxAggregates]; // in order of first use
int aggregate_count = 0;
// Index of aggregates by (note, op, key, version): the position + 1, 0 for an empty slot.
std::int16_t aggregate_index[kAggregateSlots];
AdminRecord *admin_records = nullptr; // in TopMemoryContext
int admin_count = 0;
int admin_capacity = 0;

// Names of roles seen, so records made while aborting need no catalog access.
struct RoleName
{
	Oid role;
	char name[kAuditNameLen];
};
RoleName role_names[8];
int role_names_next = 0;
char client_addr[64];
bool client_addr_known = false;

// Copies src into a fixed field, truncating.
template <std::size_t N> void Put(char (&field)[N], const char *src)
{
	strlcpy(field, src ? src : "", N);
}

// Returns the name of a role, from the small cache when possible.
const char *RoleNameOf(Oid role)
{
	for (auto &r : role_names)
		if (r.role == role && role != InvalidOid)
			return r.name;
	const char *name = GetUserNameFromId(role, true);
	RoleName &slot = role_names[role_names_next++ % lengthof(role_names)];
	slot.role = role;
	Put(slot.name, name ? name : "");
	return slot.name;
}

// The client's address as text, empty for a Unix socket or a background process.
const char *ClientAddr()
{
	if (client_addr_known)
		return client_addr;
	client_addr_known = true;
	client_addr[0] = '\0';
	if (MyBEEntry == nullptr)
		return client_addr;
	const SockAddr &addr = MyBEEntry->st_clientaddr;
	if (addr.addr.ss_family != AF_INET && addr.addr.ss_family != AF_INET6)
		return client_addr;
	char host[NI_MAXHOST];
	if (pg_getnameinfo_all(&addr.addr, addr.salen, host, sizeof(host), nullptr, 0,
						   NI_NUMERICHOST) == 0)
		Put(client_addr, host);
	return client_addr;
}

// Starts an entry with who, when and from where.
void StartEntry(AuditEntry *e, const char *action)
{
	memset(e, 0, sizeof(*e));
	e->dbid = MyDatabaseId;
	e->kind = AuditKind::Record;
	e->at = GetCurrentTimestamp();
	e->pid = MyProcPid;
	e->success = true;
	Put(e->session_user, RoleNameOf(GetSessionUserId()));
	// Key administration records from inside a catalog session (which runs as the catalog's
	// owner) name the role that called the function.
	Put(e->current_user, RoleNameOf(CatalogCaller()));
	Put(e->application_name, application_name);
	Put(e->client_addr, ClientAddr());
	Put(e->action, action);
}

// Appends "key=value" to buf when value is not empty.
void AppendField(StringInfo buf, const char *key, const char *value)
{
	if (value && value[0])
		appendStringInfo(buf, " %s=%s", key, value);
}

// Mirrors a record as a NOTICE with its deterministic fields and no context
// (pgkm.audit_notice).
void Mirror(const AuditEntry *e)
{
	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfo(&buf, "pgkm audit: action=%s", e->action);
	AppendField(&buf, "key", e->key_name);
	if (e->key_version)
		appendStringInfo(&buf, " version=%d", e->key_version);
	AppendField(&buf, "relation", e->relation);
	AppendField(&buf, "column", e->column);
	AppendField(&buf, "command", e->command);
	if (e->has_row_count)
		appendStringInfo(&buf, " rows=%lld", (long long)e->row_count);
	if (e->row_context[0])
		appendStringInfoString(&buf, " row_context=nonce");
	appendStringInfo(&buf, " success=%s", e->success ? "true" : "false");
	AppendField(&buf, "sqlstate", e->sqlstate);
	AppendField(&buf, "detail", e->detail);
	// No CONTEXT: the caller's would show the statement's bind parameters (with
	// log_parameter_max_length_on_error), to the client as well as in the log.
	ErrorContextCallback *saved_context = error_context_stack;
	error_context_stack = nullptr;
	ereport(NOTICE, (errmsg_internal("%s", buf.data)));
	error_context_stack = saved_context;
	pfree(buf.data);
}

// Appends "key":"value" (or null) to a JSON object.
void JsonText(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ",\"%s\":", key);
	if (value && value[0])
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

// Writes a record to the server log as one JSON object with a fixed prefix, and to
// pgkm.audit_file when set: where no table can be written (a hot standby).
void LogAsJson(const AuditEntry *e)
{
	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"at\":");
	escape_json(&buf, timestamptz_to_str(e->at));
	appendStringInfo(&buf, ",\"database_oid\":%u", e->dbid);
	JsonText(&buf, "session_user", e->session_user);
	JsonText(&buf, "current_user", e->current_user);
	JsonText(&buf, "application_name", e->application_name);
	JsonText(&buf, "client_addr", e->client_addr);
	appendStringInfo(&buf, ",\"backend_pid\":%d", e->pid);
	JsonText(&buf, "action", e->action);
	JsonText(&buf, "key_name", e->key_name);
	if (e->key_version)
		appendStringInfo(&buf, ",\"key_version\":%d", e->key_version);
	JsonText(&buf, "relation", e->relation);
	JsonText(&buf, "column_name", e->column);
	JsonText(&buf, "command", e->command);
	if (e->has_query_id)
		appendStringInfo(&buf, ",\"query_id\":%lld", (long long)e->query_id);
	JsonText(&buf, "row_context", e->row_context);
	if (e->has_row_count)
		appendStringInfo(&buf, ",\"row_count\":%lld", (long long)e->row_count);
	appendStringInfo(&buf, ",\"success\":%s", e->success ? "true" : "false");
	JsonText(&buf, "sqlstate", e->sqlstate);
	JsonText(&buf, "detail", e->detail);
	appendStringInfoString(&buf, ",\"standby\":true}");
	ereport(LOG,
			(errmsg_internal("pgkm_audit: %s", buf.data), errhidestmt(true), errhidecontext(true)));
	if (guc_audit_file && guc_audit_file[0])
	{
		appendStringInfoChar(&buf, '\n');
		// O_APPEND makes each line's write land whole at the end, whichever backend writes.
		int fd = open(guc_audit_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		bool written = fd >= 0 && write(fd, buf.data, buf.len) == buf.len;
		if (fd >= 0)
			close(fd);
		if (!written)
			ereport(LOG, (errmsg("pgkm_audit: could not append to pgkm.audit_file \"%s\": %m",
								 guc_audit_file)));
	}
	pfree(buf.data);
}

// Hands records on: to the ring, or on a hot standby to the server log. Returns the ring
// position of the last one (0 when logged or dropped).
std::uint64_t Emit(const AuditEntry *entries, int n, AuditFull full)
{
	if (n <= 0)
		return 0;
	if (guc_audit_notice)
		for (int i = 0; i < n; i++)
			Mirror(&entries[i]);
	if (RecoveryInProgress())
	{
		for (int i = 0; i < n; i++)
			LogAsJson(&entries[i]);
		return 0;
	}
	return AuditEnqueue(entries, n, full);
}

// Whether two records differ only in when, how many and which rows.
bool SameRecord(const AuditEntry &a, const AuditEntry &b)
{
	return a.dbid == b.dbid && a.success == b.success && a.has_query_id == b.has_query_id &&
		   a.query_id == b.query_id && a.key_version == b.key_version &&
		   strcmp(a.action, b.action) == 0 && strcmp(a.key_name, b.key_name) == 0 &&
		   strcmp(a.relation, b.relation) == 0 && strcmp(a.column, b.column) == 0 &&
		   strcmp(a.command, b.command) == 0 && strcmp(a.current_user, b.current_user) == 0 &&
		   strcmp(a.session_user, b.session_user) == 0 &&
		   strcmp(a.application_name, b.application_name) == 0 &&
		   strcmp(a.sqlstate, b.sqlstate) == 0 && strcmp(a.detail, b.detail) == 0;
}

// Hands on n uses described by e (with one row context at row level): added to an entry of
// the same record that the worker has not taken yet, or queued as a new one. So a session
// that runs one statement many times makes one record per drain of the worker, with the
// count, and at row level one record per kAuditRowContexts uses, with their row contexts.
void EmitUses(const AuditEntry &e, std::int64_t n, const char *row_context, AuditFull full)
{
	if (guc_audit_notice || RecoveryInProgress())
	{
		AuditEntry shown = e;
		shown.has_row_count = true;
		shown.row_count = n;
		Put(shown.row_context, row_context);
		if (guc_audit_notice)
			Mirror(&shown);
		if (RecoveryInProgress())
		{
			LogAsJson(&shown);
			return;
		}
	}
	for (auto &open : open_entries)
		if (guc_audit_gather && open.pos != 0 &&
			(open.entry.row_context_len > 0) == (row_context != nullptr) &&
			SameRecord(open.entry, e)) // row-level and statement-level records stay apart
		{
			if (AuditMerge(open.pos, n, row_context))
				return;
			open.pos = 0; // taken (or full): a new entry follows
			break;
		}
	OpenEntry &slot = open_entries[open_next++ % kOpenEntries];
	slot.entry = e;
	slot.entry.has_row_count = true;
	slot.entry.row_count = n;
	Put(slot.entry.row_context, row_context);
	slot.entry.row_context_len = (std::uint16_t)strlen(slot.entry.row_context);
	slot.pos = AuditEnqueue(&slot.entry, 1, full);
}

// The ring policy that pgkm.audit_overflow asks for.
AuditFull OverflowPolicy()
{
	switch (guc_audit_overflow)
	{
	case kOverflowDrop:
		return AuditFull::Drop;
	case kOverflowError:
		return AuditFull::Error;
	default:
		return AuditFull::Wait;
	}
}

// Reads this database's protected columns (in an internal subtransaction, so that a
// failure leaves the application's transaction alone). False if that failed.
bool LoadProtectedColumns()
{
	static const char *sql = "SELECT pc.table_name::pg_catalog.oid, a.attnum, pc.key_id,"
							 " pc.table_name::pg_catalog.text, pc.column_name::pg_catalog.text"
							 " FROM pgkm.protected_columns pc JOIN pg_catalog.pg_attribute a"
							 " ON a.attrelid OPERATOR(pg_catalog.=) pc.table_name"
							 " AND a.attname OPERATOR(pg_catalog.=) pc.column_name";
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;
	BeginInternalSubTransaction(nullptr);
	PG_TRY();
	{
		CatalogSession session;
		CatalogOpen(&session);
		uint64 n = CatalogExec(sql, 0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
		auto *loaded = static_cast<ProtectedColumn *>(
			MemoryContextAllocZero(TopMemoryContext, sizeof(ProtectedColumn) * (n + 1)));
		for (uint64 i = 0; i < n; i++)
		{
			bool isnull;
			loaded[i].relid = DatumGetObjectId(CatalogValue(i, 1, &isnull));
			loaded[i].attnum = DatumGetInt16(CatalogValue(i, 2, &isnull));
			loaded[i].key_id = (std::uint32_t)DatumGetInt64(CatalogValue(i, 3, &isnull));
			Put(loaded[i].relation, CatalogText(i, 4));
			Put(loaded[i].column, CatalogText(i, 5));
		}
		CatalogClose(&session);
		ReleaseCurrentSubTransaction();
		if (protected_columns)
			pfree(protected_columns);
		protected_columns = loaded;
		protected_count = (int)n;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		ErrorData *error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING,
				(errmsg("pgkm audit: could not read pgkm.protected_columns: %s", error->message)));
		FreeErrorData(error);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	return ok;
}

// Whether the audit applies in this database (pgkm 1.2 installed), refreshing what is known
// of its catalog when the key generation moved, the TTL ran out or a relation changed.
bool Available()
{
	if (!SharedMemoryReady() || !IsTransactionState())
		return false;
	std::uint64_t generation = ReadGeneration();
	TimestampTz now = GetCurrentStatementStartTimestamp();
	if (likely(catalog_valid && generation == catalog_generation && now < catalog_expires))
		return audit_available;
	if (IsInParallelMode() && !IsParallelWorker())
		return audit_available; // the leader: no subtransactions here; keep what is known
	Oid nsp = get_namespace_oid("pgkm", true);
	audit_log_relid = OidIsValid(nsp) ? get_relname_relid("audit_log", nsp) : InvalidOid;
	protected_columns_relid =
		OidIsValid(nsp) ? get_relname_relid("protected_columns", nsp) : InvalidOid;
	audit_available = OidIsValid(audit_log_relid) && OidIsValid(protected_columns_relid);
	protected_count = 0;
	// A parallel worker notes no statement, so it needs no protected columns (and may not
	// open the subtransaction that reads them).
	if (audit_available && !IsParallelWorker() && !LoadProtectedColumns())
		protected_count = 0;
	catalog_valid = true;
	catalog_generation = generation;
	catalog_expires = TimestampTzPlusMilliseconds(now, (int64)guc_key_cache_ttl * 1000);
	return audit_available;
}

// Relation-cache callback: a change to pgkm's tables (or any, while pgkm is not installed,
// since CREATE EXTENSION makes relations not known yet) makes the hooks look again.
void AuditRelcacheCallback(Datum, Oid relid)
{
	if (relid == InvalidOid || !audit_available || relid == audit_log_relid ||
		relid == protected_columns_relid)
		catalog_valid = false;
}

// Whether a column (attnum) is in a permission bitmap of RTE columns.
bool ColumnIn(Bitmapset *columns, AttrNumber attnum)
{
	return bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, columns) ||
		   bms_is_member(0 - FirstLowInvalidHeapAttributeNumber, columns); // whole row
}

// The name of a command for the log.
const char *CommandName(CmdType cmd)
{
	switch (cmd)
	{
	case CMD_SELECT:
		return "SELECT";
	case CMD_INSERT:
		return "INSERT";
	case CMD_UPDATE:
		return "UPDATE";
	case CMD_DELETE:
		return "DELETE";
#if PG_VERSION_NUM >= 150000
	case CMD_MERGE:
		return "MERGE";
#endif
	default:
		return "OTHER";
	}
}

// Whether the access audit records anything for this process now. A parallel worker records
// its own key uses and failures (pgkm 1.5: the data path is PARALLEL SAFE); the leader alone
// notes statements.
bool AccessAudited()
{
	return guc_audit_level != kAuditNone && !access_suppressed;
}

// Pushes a note if the statement reads or writes protected columns; false otherwise. Never in
// a parallel worker: the leader notes the statement and writes its 'access' records.
bool NoteStatement(QueryDesc *query, int eflags)
{
	if (!AccessAudited() || IsParallelWorker() || catalog_session_depth > 0 ||
		(eflags & EXEC_FLAG_EXPLAIN_ONLY) || note_depth >= kMaxNotes || !Available() ||
		protected_count == 0)
		return false;
	Note *note = &notes[note_depth];
	note->ncolumns = 0;
	ListCell *cell;
	foreach (cell, query->plannedstmt->rtable)
	{
		auto *rte = static_cast<RangeTblEntry *>(lfirst(cell));
		if (rte->rtekind != RTE_RELATION)
			continue;
#if PG_VERSION_NUM >= 160000
		if (rte->perminfoindex == 0)
			continue;
		auto *perm = static_cast<RTEPermissionInfo *>(
			list_nth(query->plannedstmt->permInfos, rte->perminfoindex - 1));
		Bitmapset *selected = perm->selectedCols, *inserted = perm->insertedCols,
				  *updated = perm->updatedCols;
#else
		Bitmapset *selected = rte->selectedCols, *inserted = rte->insertedCols,
				  *updated = rte->updatedCols;
#endif
		for (int i = 0; i < protected_count && note->ncolumns < kMaxNoteColumns; i++)
		{
			const ProtectedColumn &pc = protected_columns[i];
			if (pc.relid != rte->relid)
				continue;
			if (ColumnIn(selected, pc.attnum) || ColumnIn(inserted, pc.attnum) ||
				ColumnIn(updated, pc.attnum))
				note->columns[note->ncolumns++] = pc;
		}
	}
	if (note->ncolumns == 0)
		return false;
	note->query = query;
	note->id = next_note_id++;
	note->subid = GetCurrentSubTransactionId();
	note->command = CommandName(query->operation);
	note->query_id = (std::int64_t)query->plannedstmt->queryId;
	note->has_query_id = note->query_id != 0;
	note->covered = 0;
	note->parallel = query->plannedstmt->parallelModeNeeded;
	note_depth++;
	return true;
}

// Fills an entry's statement fields from a note, and its relation and column when exactly
// one of the note's columns is under key_id (marking it covered).
void Attribute(AuditEntry *e, Note *note, std::uint32_t key_id)
{
	Put(e->command, note->command);
	e->has_query_id = note->has_query_id;
	e->query_id = note->query_id;
	int match = -1;
	for (int i = 0; i < note->ncolumns; i++)
	{
		if (note->columns[i].key_id != key_id)
			continue;
		note->covered |= 1u << i;
		match = match == -1 ? i : -2;
	}
	if (match >= 0)
	{
		Put(e->relation, note->columns[match].relation);
		Put(e->column, note->columns[match].column);
	}
}

// Marks an entry made in a parallel worker, which has no notes: the leader's query id, and a
// detail saying where the use happened (the backend_pid is the worker's).
void AttributeParallelWorker(AuditEntry *e)
{
	if (!IsParallelWorker())
		return;
#if PG_VERSION_NUM >= 140000
	std::uint64_t id = pgstat_get_my_query_id();
	e->has_query_id = id != 0;
	e->query_id = (std::int64_t)id;
#endif
	if (e->detail[0] == '\0')
		Put(e->detail, "in a parallel worker");
}

// The innermost noted statement that touches a column under key_id, or nullptr.
Note *NoteFor(std::uint32_t key_id)
{
	for (int d = note_depth - 1; d >= 0; d--)
		for (int i = 0; i < notes[d].ncolumns; i++)
			if (notes[d].columns[i].key_id == key_id)
				return &notes[d];
	return nullptr;
}

// The first index slot to probe for an aggregate.
std::uint32_t AggregateSlot(std::uint64_t note_id, AuditOp op, std::uint32_t key_id,
							std::uint32_t version)
{
	std::uint32_t h = hash_combine(murmurhash32(key_id), murmurhash32(version));
	h = hash_combine(h, murmurhash32((std::uint32_t)note_id ^ (std::uint32_t)(note_id >> 32)));
	h = hash_combine(h, (std::uint32_t)op);
	return h & (kAggregateSlots - 1);
}

// Finds the aggregate of (note_id, op, key_id, version), or the free index slot for it.
Aggregate *FindAggregate(std::uint64_t note_id, AuditOp op, std::uint32_t key_id,
						 std::uint32_t version, std::uint32_t *free_slot)
{
	std::uint32_t slot = AggregateSlot(note_id, op, key_id, version);
	for (;; slot = (slot + 1) & (kAggregateSlots - 1))
	{
		if (aggregate_index[slot] == 0)
		{
			*free_slot = slot;
			return nullptr;
		}
		Aggregate &a = aggregates[aggregate_index[slot] - 1];
		if (a.note_id == note_id && a.op == op && a.key_id == key_id && a.version == version)
			return &a;
	}
}

// Rebuilds the index after the array changed.
void IndexAggregates()
{
	memset(aggregate_index, 0, sizeof(aggregate_index));
	for (int i = 0; i < aggregate_count; i++)
	{
		Aggregate &a = aggregates[i];
		std::uint32_t slot;
		(void)FindAggregate(a.note_id, a.op, a.key_id, a.version, &slot);
		aggregate_index[slot] = (std::int16_t)(i + 1);
	}
}

// Emits the aggregates of one note (note_id) or of all (note_id == UINT64_MAX).
void FlushAggregates(std::uint64_t note_id, AuditFull full)
{
	int kept = 0;
	int n = aggregate_count;
	aggregate_count = 0; // an error while emitting must not emit them twice
	memset(aggregate_index, 0, sizeof(aggregate_index));
	for (int i = 0; i < n; i++)
	{
		Aggregate &a = aggregates[i];
		if (note_id != UINT64_MAX && a.note_id != note_id)
		{
			if (kept != i)
				aggregates[kept] = a;
			kept++;
			continue;
		}
		if (a.count > 0)
			EmitUses(a.entry, a.count, nullptr, full);
	}
	aggregate_count = kept;
	IndexAggregates();
}

// Ends a note: its aggregates, then an 'access' record for each column no use covered.
void FinishNote(Note *note, std::int64_t processed, AuditFull full)
{
	FlushAggregates(note->id, full);
	AuditEntry out[kMaxNoteColumns];
	int n = 0;
	for (int i = 0; i < note->ncolumns; i++)
	{
		if (note->covered & (1u << i))
			continue;
		AuditEntry &e = out[n++];
		StartEntry(&e, "access");
		Put(e.command, note->command);
		e.has_query_id = note->has_query_id;
		e.query_id = note->query_id;
		Put(e.relation, note->columns[i].relation);
		Put(e.column, note->columns[i].column);
		e.has_row_count = processed >= 0;
		e.row_count = processed;
		// The leader does not see the workers' uses: they are in records of the same query id.
		if (note->parallel)
			Put(e.detail, "parallel plan: key uses in parallel workers are in their own records");
	}
	(void)Emit(out, n, full);
}

// Records the refusal of a noted statement by ExecutorStart (table permissions, mostly),
// in PG_CATCH. Never raises.
void NoteRefused(Note *note)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	ErrorData *error = CopyErrorData();
	MemoryContextSwitchTo(old);
	AuditEntry out[kMaxNoteColumns];
	for (int i = 0; i < note->ncolumns; i++)
	{
		AuditEntry &e = out[i];
		bool denied = error->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE;
		StartEntry(&e, denied ? "denied" : "failed");
		e.success = false;
		Put(e.sqlstate, unpack_sql_state(error->sqlerrcode));
		Put(e.command, note->command);
		e.has_query_id = note->has_query_id;
		e.query_id = note->query_id;
		Put(e.relation, note->columns[i].relation);
		Put(e.column, note->columns[i].column);
		snprintf(e.detail, sizeof(e.detail), "%s", error->message ? error->message : "");
	}
	(void)Emit(out, note->ncolumns, AuditFull::Drop);
	FreeErrorData(error);
}

// ExecutorStart hook: notes the statement; records a refusal of a noted one.
void AuditExecutorStart(QueryDesc *query, int eflags)
{
	bool noted = NoteStatement(query, eflags);
	if (!noted)
	{
		if (prev_executor_start)
			prev_executor_start(query, eflags);
		else
			standard_ExecutorStart(query, eflags);
		return;
	}
	PG_TRY();
	{
		if (prev_executor_start)
			prev_executor_start(query, eflags);
		else
			standard_ExecutorStart(query, eflags);
	}
	PG_CATCH();
	{
		if (note_depth > 0 && notes[note_depth - 1].query == query)
		{
			NoteRefused(&notes[note_depth - 1]);
			note_depth--;
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
}

// ExecutorRun hook: tracks the nesting level.
void AuditExecutorRun(QueryDesc *query, ScanDirection direction, uint64 count, bool execute_once)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_run)
			prev_executor_run(query, direction, count, execute_once);
		else
			standard_ExecutorRun(query, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

// ExecutorFinish hook: tracks the nesting level.
void AuditExecutorFinish(QueryDesc *query)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(query);
		else
			standard_ExecutorFinish(query);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

// ExecutorEnd hook: ends the statement's note; at the top level, also flushes uses that no
// noted statement accounts for.
void AuditExecutorEnd(QueryDesc *query)
{
	if (note_depth > 0 && notes[note_depth - 1].query == query)
	{
		Note *note = &notes[note_depth - 1];
		std::int64_t processed = query->estate ? (std::int64_t)query->estate->es_processed : -1;
		FinishNote(note, processed,
				   OverflowPolicy() == AuditFull::Error ? AuditFull::Drop : OverflowPolicy());
		note_depth--;
	}
	if (prev_executor_end)
		prev_executor_end(query);
	else
		standard_ExecutorEnd(query);
	if (nesting_level == 0 && aggregate_count > 0)
		FlushAggregates(UINT64_MAX,
						OverflowPolicy() == AuditFull::Error ? AuditFull::Drop : OverflowPolicy());
}

// Emits the pending administration records of a subtransaction (subid) or of all
// (InvalidSubTransactionId), as succeeded or rolled back.
void FlushAdmin(SubTransactionId subid, bool committed, AuditFull full)
{
	int kept = 0;
	for (int i = 0; i < admin_count; i++)
	{
		AdminRecord &r = admin_records[i];
		if (subid != InvalidSubTransactionId && r.subid != subid)
		{
			admin_records[kept++] = r;
			continue;
		}
		if (!committed)
		{
			r.entry.success = false;
			char detail[sizeof(r.entry.detail)];
			snprintf(detail, sizeof(detail), "rolled back%s%s", r.entry.detail[0] ? ": " : "",
					 r.entry.detail);
			Put(r.entry.detail, detail);
		}
		(void)Emit(&r.entry, 1, full);
	}
	admin_count = kept;
}

// Transaction callback: flushes what the transaction produced; forgets notes at the end.
void AuditXactCallback(XactEvent event, void *)
{
	switch (event)
	{
	case XACT_EVENT_PRE_COMMIT:
	case XACT_EVENT_PARALLEL_PRE_COMMIT:
	case XACT_EVENT_PRE_PREPARE:
		if (aggregate_count > 0)
			FlushAggregates(UINT64_MAX, access_suppressed ? AuditFull::Drop : OverflowPolicy());
		if (admin_count > 0)
			FlushAdmin(InvalidSubTransactionId, true,
					   access_suppressed ? AuditFull::Drop : OverflowPolicy());
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		if (aggregate_count > 0)
			FlushAggregates(UINT64_MAX, AuditFull::Drop);
		if (admin_count > 0)
			FlushAdmin(InvalidSubTransactionId, false, AuditFull::Drop);
		note_depth = 0;
		nesting_level = 0;
		catalog_session_depth = 0;
		break;
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
	case XACT_EVENT_PREPARE:
		note_depth = 0;
		catalog_session_depth = 0;
		break;
	default:
		break;
	}
}

// Subtransaction callback: a rolled-back savepoint ends its notes and fails its
// administration actions.
void AuditSubXactCallback(SubXactEvent event, SubTransactionId subid, SubTransactionId, void *)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	while (note_depth > 0 && notes[note_depth - 1].subid == subid)
	{
		FlushAggregates(notes[note_depth - 1].id, AuditFull::Drop);
		note_depth--;
	}
	if (admin_count > 0)
		FlushAdmin(subid, false, AuditFull::Drop);
	catalog_session_depth = 0;
}

// Writes the row context 'nonce:<24 hex digits>' of a ciphertext's nonce.
void FormatNonce(char (&out)[kAuditRowContextToken], const std::uint8_t *nonce)
{
	static const char hex[] = "0123456789abcdef";
	char *p = out;
	memcpy(p, "nonce:", 6);
	p += 6;
	for (int i = 0; i < 12; i++)
	{
		*p++ = hex[nonce[i] >> 4];
		*p++ = hex[nonce[i] & 15];
	}
	*p = '\0';
}

} // namespace

AuditTarget audit_failing;

void AuditFailDataPath(AuditOp op)
{
	AuditTarget target = audit_failing;
	if (target.key_name == nullptr && target.key_id != 0)
		target.key_name = CachedKeyName(target.key_id, target.key_version);
	AuditFailure(op, target);
}

const char *AuditOpName(AuditOp op)
{
	switch (op)
	{
	case AuditOp::Encrypt:
		return "encrypt";
	case AuditOp::Decrypt:
		return "decrypt";
	case AuditOp::Rewrap:
		return "rewrap";
	case AuditOp::EncryptDeterministic:
		return "encrypt_det";
	case AuditOp::BlindIndex:
		return "blind_index";
	}
	return "unknown";
}

void AuditInit()
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = AuditExecutorStart;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = AuditExecutorRun;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = AuditExecutorFinish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = AuditExecutorEnd;
	RegisterXactCallback(AuditXactCallback, nullptr);
	RegisterSubXactCallback(AuditSubXactCallback, nullptr);
	CacheRegisterRelcacheCallback(AuditRelcacheCallback, (Datum)0);
#if PG_VERSION_NUM >= 140000
	EnableQueryId();
#endif
}

void AuditUse(AuditOp op, const VersionEntry *v, const std::uint8_t *nonce)
{
	if (!AccessAudited() || !Available())
		return;
	bool sync = guc_audit_durability == kDurabilitySync && !RecoveryInProgress();
	if (sync)
		AuditRefuseWaitWhileRestoring(); // before plaintext leaves, and before the record
	Note *note = NoteFor(v->key_id);
	if (guc_audit_level == kAuditRow)
	{
		AuditEntry e;
		StartEntry(&e, AuditOpName(op));
		Put(e.key_name, v->key_name);
		e.key_version = (std::int32_t)v->version;
		if (note)
			Attribute(&e, note, v->key_id);
		else
			AttributeParallelWorker(&e);
		char context[kAuditRowContextToken] = "";
		if (nonce)
			FormatNonce(context, nonce);
		if (!sync)
		{
			EmitUses(e, 1, nonce ? context : nullptr, OverflowPolicy());
			return;
		}
		e.has_row_count = true;
		e.row_count = 1;
		Put(e.row_context, context);
		AuditWaitDurable(Emit(&e, 1, OverflowPolicy()));
		return;
	}
	std::uint64_t note_id = note ? note->id : 0;
	std::uint32_t slot;
	if (Aggregate *found = FindAggregate(note_id, op, v->key_id, v->version, &slot))
	{
		found->count++;
		return;
	}
	if (aggregate_count == kMaxAggregates)
	{
		FlushAggregates(UINT64_MAX, OverflowPolicy());
		(void)FindAggregate(note_id, op, v->key_id, v->version, &slot);
	}
	Aggregate &a = aggregates[aggregate_count];
	a.note_id = note_id;
	a.op = op;
	a.key_id = v->key_id;
	a.version = v->version;
	StartEntry(&a.entry, AuditOpName(op));
	Put(a.entry.key_name, v->key_name);
	a.entry.key_version = (std::int32_t)v->version;
	if (note)
		Attribute(&a.entry, note, v->key_id);
	else
		AttributeParallelWorker(&a.entry);
	if (sync)
	{
		// The statement's first use is written and made durable before plaintext leaves.
		AuditEntry first = a.entry;
		first.has_row_count = true;
		first.row_count = 1;
		std::uint64_t pos = Emit(&first, 1, OverflowPolicy());
		a.count = 0;
		aggregate_index[slot] = (std::int16_t)++aggregate_count;
		AuditWaitDurable(pos);
		return;
	}
	if (guc_audit_overflow == kOverflowError && !RecoveryInProgress() && !AuditRingHasRoom(1))
		AuditReportRingFull(); // fail closed before the first plaintext of the statement
	a.count = 1;
	aggregate_index[slot] = (std::int16_t)++aggregate_count;
}

void AuditFailure(AuditOp op, const AuditTarget &target)
{
	if (!AccessAudited() || !Available())
		return;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	ErrorData *error = CopyErrorData();
	MemoryContextSwitchTo(old);
	bool denied = error->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE;
	AuditEntry e;
	StartEntry(&e, denied ? "denied" : "failed");
	e.success = false;
	Put(e.sqlstate, unpack_sql_state(error->sqlerrcode));
	Put(e.key_name, target.key_name);
	e.key_version = (std::int32_t)target.key_version;
	snprintf(e.detail, sizeof(e.detail), "%s: %s", AuditOpName(op),
			 error->message ? error->message : "");
	FreeErrorData(error);
	Note *note = target.key_id ? NoteFor(target.key_id) : nullptr;
	if (note == nullptr && note_depth > 0)
		note = &notes[note_depth - 1];
	if (note && target.key_id)
		Attribute(&e, note, target.key_id);
	else if (note)
	{
		Put(e.command, note->command);
		e.has_query_id = note->has_query_id;
		e.query_id = note->query_id;
	}
	else
		AttributeParallelWorker(&e);
	(void)Emit(&e, 1, AuditFull::Drop);
}

void AuditAdmin(const char *action, const char *key_name, std::int32_t version, const char *detail)
{
	if (!SharedMemoryReady())
		return;
	if (admin_count == admin_capacity)
	{
		int capacity = admin_capacity ? admin_capacity * 2 : 16;
		admin_records = static_cast<AdminRecord *>(
			admin_records ? repalloc(admin_records, sizeof(AdminRecord) * capacity)
						  : MemoryContextAlloc(TopMemoryContext, sizeof(AdminRecord) * capacity));
		admin_capacity = capacity;
	}
	AdminRecord &r = admin_records[admin_count++];
	r.subid = GetCurrentSubTransactionId();
	StartEntry(&r.entry, action);
	Put(r.entry.key_name, key_name);
	r.entry.key_version = version;
	Put(r.entry.detail, detail);
}

void AuditAdminDenied(const char *action, const char *key_name, const char *message)
{
	if (!SharedMemoryReady() || !Available())
		return;
	AuditEntry e;
	StartEntry(&e, "denied");
	e.success = false;
	Put(e.sqlstate, "42501");
	Put(e.key_name, key_name);
	snprintf(e.detail, sizeof(e.detail), "%s: %s", action, message);
	(void)Emit(&e, 1, AuditFull::Drop);
}

void AuditSuppressAccess()
{
	access_suppressed = true;
}

void AuditSetWriter(bool writing)
{
	audit_writer = writing;
}

bool AuditIsWriter()
{
	return audit_writer;
}

} // namespace pgkm::pg
