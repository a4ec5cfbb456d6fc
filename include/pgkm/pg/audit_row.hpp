// One row of pgkm.audit_log: its columns in table order, as Datums, and its place in the hash
// chain. Shared by the worker that appends rows (audit_log.cpp) and verify_audit_log.
#pragma once

#include <cstdint>

#include "pgkm/core/audit_chain.hpp"
#include "pgkm/pg/audit_ring.hpp"
#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg::audit_row
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
inline constexpr Column kColumns[] = {
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
inline constexpr int kColumnCount = lengthof(kColumns);
inline constexpr int kHashed = kColumnCount - 2;
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

// Copies a bytea into a hash; false unless it has exactly 32 bytes.
bool HashFrom(Datum d, core::AuditHash *out);

// A hash as a palloc'd bytea.
Datum HashDatum(const core::AuditHash &hash);

// Computes the hash of a row over prev_hash and its hashed columns (EnsureChain first).
core::AuditHash RowHash(const Row &row, const core::AuditHash &prev);

// Makes the chain objects once per process.
void EnsureChain();

// Starts a row with every column NULL.
void ClearRow(Row *row);

// Fills a row from a ring entry (seq, written_at and hashes come later).
void RowFromEntry(Row *row, const AuditEntry &e, const char *database);

// Starts a row that the writer itself records (checkpoint, anchor, dropped, restored).
void WriterRow(Row *row, const char *action, const char *detail);

} // namespace pgkm::pg::audit_row
