// One row of pgkm.audit_log and its hash: the columns as Datums, read out before the core's
// encoder and hash chain run on them (see audit_row.hpp).
#include "pgkm/core/audit_chain.hpp"

#include "pgkm/pg/audit_row.hpp"
#include "pgkm/pg/boundary.hpp"

#include "pgkm/pg/postgres.hpp"

extern "C"
{
#include "commands/dbcommands.h"
}

using pgkm::core::AuditHash;
using pgkm::core::ByteView;

namespace pgkm::pg::audit_row
{

namespace
{

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

// The chain and its field encoder, made once per process (EnsureChain).
pgkm::core::AuditChain *chain = nullptr;
pgkm::core::AuditEncoder *encoder = nullptr;

// Sets a text column, NULL when empty.
void SetText(Row *row, int col, const char *value)
{
	row->nulls[col] = value == nullptr || value[0] == '\0';
	row->values[col] = row->nulls[col] ? (Datum)0 : CStringGetTextDatum(value);
}

} // namespace

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

void EnsureChain()
{
	if (chain)
		return;
	PGKM_CORE({
		chain = new pgkm::core::AuditChain();
		encoder = new pgkm::core::AuditEncoder();
	});
}

void ClearRow(Row *row)
{
	for (int i = 0; i < kColumnCount; i++)
	{
		row->values[i] = (Datum)0;
		row->nulls[i] = true;
	}
}

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

} // namespace pgkm::pg::audit_row
