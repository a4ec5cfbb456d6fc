// pgkm.audit_log: the worker's side of the audit (taking records from the ring, chaining
// them, appending them in its own transactions, sealing checkpoints with the token's HMAC
// key, dropping old partitions behind an anchor) and the SQL functions around the log
// (verify_audit_log, audit_flush, apply_audit_retention, the append-only guard).
#include "pgkm/core/audit_chain.hpp"
#include "pgkm/pg/token.hpp"

#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/audit_log.hpp"
#include "pgkm/pg/audit_ring.hpp"
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

namespace
{

// The columns of pgkm.audit_log in table order. All but the last two are hashed.
enum ColumnType : std::uint8_t
{
	kInt8,
	kInt4,
	kTimestamp,
	kText,
	kBool,
	kBytea,
};
struct Column
{
	const char *name;
	ColumnType type;
	Oid array_type;
};
constexpr Column kColumns[] = {
	{"seq", kInt8, INT8ARRAYOID},
	{"at", kTimestamp, TIMESTAMPTZARRAYOID},
	{"written_at", kTimestamp, TIMESTAMPTZARRAYOID},
	{"database_name", kText, TEXTARRAYOID},
	{"session_user_name", kText, TEXTARRAYOID},
	{"current_user_name", kText, TEXTARRAYOID},
	{"application_name", kText, TEXTARRAYOID},
	{"client_addr", kText, TEXTARRAYOID},
	{"backend_pid", kInt4, INT4ARRAYOID},
	{"action", kText, TEXTARRAYOID},
	{"key_name", kText, TEXTARRAYOID},
	{"key_version", kInt4, INT4ARRAYOID},
	{"relation", kText, TEXTARRAYOID},
	{"column_name", kText, TEXTARRAYOID},
	{"command", kText, TEXTARRAYOID},
	{"query_id", kInt8, INT8ARRAYOID},
	{"row_context", kText, TEXTARRAYOID},
	{"row_count", kInt8, INT8ARRAYOID},
	{"success", kBool, BOOLARRAYOID},
	{"sqlstate", kText, TEXTARRAYOID},
	{"detail", kText, TEXTARRAYOID},
	{"ref_seq", kInt8, INT8ARRAYOID},
	{"ref_hash", kBytea, BYTEAARRAYOID},
	{"mac", kBytea, BYTEAARRAYOID},
	{"prev_hash", kBytea, BYTEAARRAYOID},
	{"hash", kBytea, BYTEAARRAYOID},
};
constexpr int kColumnCount = lengthof(kColumns);
constexpr int kHashed = kColumnCount - 2;
enum ColumnIndex
{
	kSeq = 0,
	kAt = 1,
	kWrittenAt = 2,
	kDatabase = 3,
	kSessionUser = 4,
	kCurrentUser = 5,
	kAppName = 6,
	kClientAddr = 7,
	kPid = 8,
	kAction = 9,
	kKeyName = 10,
	kKeyVersion = 11,
	kRelation = 12,
	kColumnName = 13,
	kCommand = 14,
	kQueryId = 15,
	kRowContext = 16,
	kRowCount = 17,
	kSuccess = 18,
	kSqlstate = 19,
	kDetail = 20,
	kRefSeq = 21,
	kRefHash = 22,
	kMac = 23,
	kPrevHash = 24,
	kHash = 25,
};

// One row of pgkm.audit_log as Datums.
struct Row
{
	Datum values[kColumnCount];
	bool nulls[kColumnCount];
};

// One hashed field, read out of its Datum before any C++ code runs on it.
struct Field
{
	ColumnType type;
	bool null;
	std::int64_t number;
	bool flag;
	const std::uint8_t *data;
	std::size_t len;
};

constexpr int kBatch = 500;

// The writer's state, kept across batches.
pgkm::core::AuditChain *chain = nullptr;
pgkm::core::AuditEncoder *encoder = nullptr;
AuditEntry *taken = nullptr;
std::uint64_t *positions = nullptr;
TimestampTz partition_upper = 0;  // the newest partition's upper bound, once known
Oid partition_relid = InvalidOid; // the pgkm.audit_log that partition_upper belongs to
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

// Copies a bytea into a hash; false unless it has exactly 32 bytes.
bool HashFrom(Datum d, AuditHash *out)
{
	bytea *b = DatumGetByteaPP(d);
	if (VARSIZE_ANY_EXHDR(b) != out->size())
		return false;
	memcpy(out->data(), VARDATA_ANY(b), out->size());
	return true;
}

Datum HashDatum(const AuditHash &hash)
{
	auto *b = static_cast<bytea *>(palloc(VARHDRSZ + hash.size()));
	SET_VARSIZE(b, VARHDRSZ + hash.size());
	memcpy(VARDATA(b), hash.data(), hash.size());
	return PointerGetDatum(b);
}

// Computes the hash of a row over prev_hash and its hashed columns.
AuditHash RowHash(const Row &row, const AuditHash &prev)
{
	Field fields[kHashed];
	for (int i = 0; i < kHashed; i++)
	{
		Field &f = fields[i];
		f = Field{kColumns[i].type, row.nulls[i], 0, false, nullptr, 0};
		if (f.null)
			continue;
		Datum d = row.values[i];
		switch (f.type)
		{
		case kInt8:
			f.number = DatumGetInt64(d);
			break;
		case kInt4:
			f.number = DatumGetInt32(d);
			break;
		case kTimestamp:
			f.number = DatumGetTimestampTz(d);
			break;
		case kBool:
			f.flag = DatumGetBool(d);
			break;
		case kText:
		case kBytea:
		{
			struct varlena *v = PG_DETOAST_DATUM_PACKED(d);
			f.data = reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(v));
			f.len = VARSIZE_ANY_EXHDR(v);
			break;
		}
		}
	}
	AuditHash hash;
	PGKM_CORE({
		encoder->Clear();
		for (const Field &f : fields)
		{
			if (f.null)
				encoder->Null();
			else if (f.type == kText)
				encoder->Text(std::string_view(reinterpret_cast<const char *>(f.data), f.len));
			else if (f.type == kBytea)
				encoder->Bytes(ByteView(f.data, f.len));
			else if (f.type == kBool)
				encoder->Bool(f.flag);
			else
				encoder->Int(f.number);
		}
		hash = chain->Next(prev, encoder->bytes());
	});
	return hash;
}

// Makes the chain objects once per process.
void EnsureChain()
{
	if (chain)
		return;
	PGKM_CORE({
		chain = new pgkm::core::AuditChain();
		encoder = new pgkm::core::AuditEncoder();
	});
}

// Sets a text column, NULL when empty.
void SetText(Row *row, int col, const char *value)
{
	row->nulls[col] = value == nullptr || value[0] == '\0';
	row->values[col] = row->nulls[col] ? (Datum)0 : CStringGetTextDatum(value);
}

// Starts a row with every column NULL.
void ClearRow(Row *row)
{
	for (int i = 0; i < kColumnCount; i++)
	{
		row->values[i] = (Datum)0;
		row->nulls[i] = true;
	}
}

// Fills a row from a ring entry (seq, written_at and hashes come later).
void RowFromEntry(Row *row, const AuditEntry &e, const char *database)
{
	ClearRow(row);
	row->values[kAt] = TimestampTzGetDatum(e.at);
	row->nulls[kAt] = false;
	SetText(row, kDatabase, database);
	SetText(row, kSessionUser, e.session_user);
	SetText(row, kCurrentUser, e.current_user);
	SetText(row, kAppName, e.application_name);
	SetText(row, kClientAddr, e.client_addr);
	row->values[kPid] = Int32GetDatum(e.pid);
	row->nulls[kPid] = e.pid == 0;
	SetText(row, kAction, e.action);
	SetText(row, kKeyName, e.key_name);
	row->values[kKeyVersion] = Int32GetDatum(e.key_version);
	row->nulls[kKeyVersion] = e.key_version == 0;
	SetText(row, kRelation, e.relation);
	SetText(row, kColumnName, e.column);
	SetText(row, kCommand, e.command);
	row->values[kQueryId] = Int64GetDatum(e.query_id);
	row->nulls[kQueryId] = !e.has_query_id;
	SetText(row, kRowContext, e.row_context);
	row->values[kRowCount] = Int64GetDatum(e.row_count);
	row->nulls[kRowCount] = !e.has_row_count;
	row->values[kSuccess] = BoolGetDatum(e.success);
	row->nulls[kSuccess] = false;
	SetText(row, kSqlstate, e.sqlstate);
	SetText(row, kDetail, e.detail);
}

// Starts a row that the writer itself records (checkpoint, anchor, dropped).
void WriterRow(Row *row, const char *action, const char *detail)
{
	AuditEntry e;
	memset(&e, 0, sizeof(e));
	e.at = GetCurrentTimestamp();
	e.pid = MyProcPid;
	e.success = true;
	strlcpy(e.session_user, GetUserNameFromId(GetSessionUserId(), true), sizeof(e.session_user));
	strlcpy(e.current_user, e.session_user, sizeof(e.current_user));
	strlcpy(e.application_name, "pgkm worker", sizeof(e.application_name));
	strlcpy(e.action, action, sizeof(e.action));
	strlcpy(e.detail, detail ? detail : "", sizeof(e.detail));
	RowFromEntry(row, e, get_database_name(MyDatabaseId));
}

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

// Makes sure a partition holds written_at: the newest partition, or a new one from its upper
// bound (or the interval's start) to the end of the interval.
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

// Reads and locks the writer's state. A state that says the log is empty while the log has
// records means a restore loaded them (pg_dump does not carry pgkm.audit_state): the chain
// continues from the newest record, and a 'restored' record says so. Only then: once the
// chain has a record, no other session may add any (pgkm_audit_guard).
State ReadWriterState()
{
	State s = ReadState();
	if (s.last_seq != 0 ||
		CatalogExec("SELECT seq, hash, written_at FROM pgkm.audit_log ORDER BY seq DESC LIMIT 1", 0,
					nullptr, nullptr, nullptr, SPI_OK_SELECT) != 1)
		return s;
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
	{
		LeaveExtension(names[i]);
		CatalogExec(psprintf("DROP TABLE pgkm.%s", quote_identifier(names[i])), 0, nullptr, nullptr,
					nullptr, SPI_OK_UTILITY);
		Oid ntypes[1] = {TEXTOID};
		Datum nvalues[1] = {CStringGetTextDatum(names[i])};
		CatalogExec("DELETE FROM pgkm.audit_partitions WHERE name OPERATOR(pg_catalog.=) $1", 1,
					ntypes, nvalues, nullptr, SPI_OK_DELETE);
	}
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
		partition_upper = 0; // look again next time
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
			State state = ReadWriterState();
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
	PG_FUNCTION_INFO_V1(pgkm_audit_guard);
	PG_FUNCTION_INFO_V1(pgkm_audit_partition_added);
	PG_FUNCTION_INFO_V1(pgkm_verify_audit_log);
	PG_FUNCTION_INFO_V1(pgkm_audit_flush);
	PG_FUNCTION_INFO_V1(pgkm_apply_audit_retention);
	Datum pgkm_audit_guard(PG_FUNCTION_ARGS);
	Datum pgkm_audit_partition_added(PG_FUNCTION_ARGS);
	Datum pgkm_verify_audit_log(PG_FUNCTION_ARGS);
	Datum pgkm_audit_flush(PG_FUNCTION_ARGS);
	Datum pgkm_apply_audit_retention(PG_FUNCTION_ARGS);
}

// Whether a session other than the worker may add records or partitions: only while
// pgkm.audit_state says the log is empty, as in a database being restored. The row stays
// locked (FOR SHARE) until the session commits, so the worker cannot start a chain of its own
// under a restore, and continues the restored one once it is in (ReadWriterState).
bool RestoreAllowed()
{
	static LocalTransactionId allowed_in = InvalidLocalTransactionId;
#if PG_VERSION_NUM >= 170000
	LocalTransactionId current = MyProc->vxid.lxid;
#else
	LocalTransactionId current = MyProc->lxid;
#endif
	if (allowed_in == current && current != InvalidLocalTransactionId)
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
		allowed_in = current;
	return empty;
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
