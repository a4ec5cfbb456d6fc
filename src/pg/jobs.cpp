// Protected columns and re-encryption jobs: what the worker re-encrypts, and the DBA's
// controls over it (start, pause, resume, cancel). The worker itself is in worker.cpp.
#include "pgkm/core/format.hpp"

#include "pgkm/pg/admin.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/erasure.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/worker.hpp"

extern "C"
{
#include "catalog/pg_index.h"
#include "utils/syscache.h"
}

using namespace pgkm::pg;

namespace
{

// Raises insufficient_privilege unless the caller owns the table (or is a superuser).
void CheckTableOwner(Oid relid)
{
#if PG_VERSION_NUM >= 160000
	bool owner = object_ownercheck(RelationRelationId, relid, GetUserId());
#else
	bool owner = pg_class_ownercheck(relid, GetUserId());
#endif
	if (!owner)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("must be owner of table %s", get_rel_name(relid))));
}

// Returns the type of a column, raising undefined_column if it does not exist.
Oid ColumnType(Oid relid, const char *column)
{
	AttrNumber attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber || attnum < 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
						errmsg("column \"%s\" of relation \"%s\" does not exist", column,
							   get_rel_name(relid))));
	return get_atttype(relid, attnum);
}

// Raises an error unless the table has a single-column primary key (re-encryption walks it).
void RequireSingleColumnPrimaryKey(Oid relid)
{
	char *name, *type;
	if (!SingleColumnPrimaryKey(relid, &name, &type))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s needs a single-column primary key to be protected",
						get_rel_name(relid)),
				 errdetail("Re-encryption walks the table by its primary key in short batches.")));
}

// Reads a job's key and locks its row; raises undefined_object if there is no such job.
int64 LockJob(int64 job_id, char *state_out, size_t state_size)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(job_id)};
	if (CatalogExec("SELECT key_id, state FROM pgkm.rotation_jobs"
					" WHERE job_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
					1, types, values, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("re-encryption job %lld does not exist", (long long)job_id)));
	bool isnull;
	int64 key_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	strlcpy(state_out, CatalogText(0, 2), state_size);
	return key_id;
}

// Raises insufficient_privilege unless the caller owns the key with this id.
void CheckKeyIdOwner(Oid caller, int64 key_id)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	CatalogExec("SELECT name, owner::oid FROM pgkm.keys WHERE key_id OPERATOR(pg_catalog.=) $1", 1,
				types, values, nullptr, SPI_OK_SELECT);
	bool isnull;
	char *name = CatalogText(0, 1);
	CheckKeyOwner(caller, DatumGetObjectId(CatalogValue(0, 2, &isnull)), name);
}

// Moves a job from one of the states in from (a SQL array literal) to state to.
void ChangeJobState(FunctionCallInfo fcinfo, const char *from, const char *to, const char *action)
{
	RequireSharedMemory();
	int64 job_id = PG_GETARG_INT64(0);
	Oid caller = GetUserId();
	char *caller_name = GetUserNameFromId(caller, false);
	CatalogSession session;
	CatalogOpenAdmin(&session);
	char state[32];
	int64 key_id = LockJob(job_id, state, sizeof(state));
	CheckKeyIdOwner(caller, key_id);
	Oid types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum values[3] = {Int64GetDatum(job_id), CStringGetTextDatum(to), CStringGetTextDatum(from)};
	if (CatalogExec("UPDATE pgkm.rotation_jobs SET state = $2, updated_at = pg_catalog.now(),"
					" finished_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'cancelled'"
					"  THEN pg_catalog.now() END"
					" WHERE job_id OPERATOR(pg_catalog.=) $1"
					" AND state OPERATOR(pg_catalog.=) ANY ($3::text[])",
					3, types, values, nullptr, SPI_OK_UPDATE) != 1)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("re-encryption job %lld is %s and cannot be %s", (long long)job_id,
							   state, to)));
	char detail[64];
	snprintf(detail, sizeof(detail), "job %lld", (long long)job_id);
	RecordKeyEvent(caller_name, action, key_id, 0, detail);
	CatalogClose(&session);
	WakeDatabaseWorker();
}

// Queues one job for a protected column, superseding its open jobs. Returns the job id.
int64 QueueJob(Oid relid, const char *column, int64 key_id, int32 target, const char *actor)
{
	Oid types[5] = {OIDOID, NAMEOID, INT8OID, INT4OID, NAMEOID};
	Datum values[5] = {ObjectIdGetDatum(relid), CatalogName(column), Int64GetDatum(key_id),
					   Int32GetDatum(target), CatalogName(actor)};
	CatalogExec("INSERT INTO pgkm.rotation_jobs (table_name, column_name, key_id, target_version,"
				" created_by) VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5) RETURNING job_id",
				5, types, values, nullptr, SPI_OK_INSERT_RETURNING);
	bool isnull;
	int64 job_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	Oid stypes[3] = {OIDOID, NAMEOID, INT8OID};
	Datum svalues[3] = {ObjectIdGetDatum(relid), CatalogName(column), Int64GetDatum(job_id)};
	CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'cancelled', finished_at = pg_catalog.now(),"
				" error = 'superseded by job ' OPERATOR(pg_catalog.||) $3"
				" WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
				" AND column_name OPERATOR(pg_catalog.=) $2 AND job_id OPERATOR(pg_catalog.<>) $3"
				" AND state OPERATOR(pg_catalog.=) ANY ('{pending,running,paused}')",
				3, stypes, svalues, nullptr, SPI_OK_UPDATE);
	char detail[NAMEDATALEN * 3 + 64];
	snprintf(detail, sizeof(detail), "job %lld: %s.%s", (long long)job_id, get_rel_name(relid),
			 column);
	RecordKeyEvent(actor, "job_queue", key_id, target, detail);
	return job_id;
}

// Reads the algorithm of the key with this id (1.4 and later).
char *KeyAlgorithm(int64 key_id)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	CatalogExec("SELECT algorithm FROM pgkm.keys WHERE key_id OPERATOR(pg_catalog.=) $1", 1, types,
				values, nullptr, SPI_OK_SELECT);
	return CatalogText(0, 1);
}

// Checks protect_column's context and source columns against the key's algorithm: a
// blind-index column names its source (another protected column of the table, holding the
// value's ciphertext under a deterministic or randomized key) and no context; other columns
// name no source.
void CheckSourceColumn(Oid relid, const char *column, int64 key_id, const char *key_name,
					   const char *context, const char *source)
{
	bool blind = strcmp(KeyAlgorithm(key_id), "blind-index") == 0;
	if (!blind)
	{
		if (source)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("source_column applies only to blind-index columns"),
					 errdetail("Key \"%s\" is not a blind-index key: the worker re-encrypts the "
							   "column's own values.",
							   key_name)));
		return;
	}
	if (source == nullptr)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("blind-index column \"%s\" needs a source column", column),
				 errdetail("A blind index cannot be decrypted; after a rotation the worker "
						   "rebuilds it from the column that holds the value encrypted."),
				 errhint("Protect that column first, then pass source_column => its name.")));
	if (context)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("blind-index column \"%s\" takes no context column", column),
				 errdetail("A blind index is computed from the value alone; the source column's "
						   "own registration gives the context its ciphertext needs.")));
	if (strcmp(source, column) == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("blind-index column \"%s\" cannot be its own source", column)));
	(void)ColumnType(relid, source);
	Oid types[2] = {OIDOID, NAMEOID};
	Datum values[2] = {ObjectIdGetDatum(relid), CatalogName(source)};
	if (CatalogExec("SELECT k.algorithm FROM pgkm.protected_columns p JOIN pgkm.keys k"
					" USING (key_id) WHERE p.table_name OPERATOR(pg_catalog.=)"
					" $1::pg_catalog.regclass AND p.column_name OPERATOR(pg_catalog.=) $2",
					2, types, values, nullptr, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source column \"%s\" of %s is not protected", source, get_rel_name(relid)),
				 errhint("Protect it with pgkm.protect_column() first, under its own key.")));
	if (strcmp(CatalogText(0, 1), "blind-index") == 0)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
						errmsg("source column \"%s\" holds blind indexes, not ciphertexts", source),
						errdetail("A blind index is rebuilt from a value that can be decrypted "
								  "(aes-256-gcm or aes-256-siv).")));
}

// Raises dependent_objects_still_exist if a blind-index column of the table names column as
// its source (1.4 and later; before, no column has a source).
void RequireNoDependentIndex(Oid relid, const char *column)
{
	Oid types[2] = {OIDOID, NAMEOID};
	Datum values[2] = {ObjectIdGetDatum(relid), CatalogName(column)};
	if (CatalogExec("SELECT p.column_name::pg_catalog.text FROM pgkm.protected_columns p"
					" WHERE p.table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
					" AND (pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'source_column')"
					"  OPERATOR(pg_catalog.=) $2::pg_catalog.text LIMIT 1",
					2, types, values, nullptr, SPI_OK_SELECT) == 0)
		return;
	ereport(ERROR, (errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					errmsg("column \"%s\" of %s is the source of blind-index column \"%s\"", column,
						   get_rel_name(relid), CatalogText(0, 1)),
					errhint("Unprotect the blind-index column first.")));
}

} // namespace

namespace pgkm::pg
{

bool SingleColumnPrimaryKey(Oid relid, char **quoted_name, char **type)
{
	Oid types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};
	if (CatalogExec("SELECT a.attname::pg_catalog.text,"
					" pg_catalog.format_type(a.atttypid, a.atttypmod)"
					" FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a"
					"  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid"
					"  AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]"
					" WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
					" AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
					1, types, values, nullptr, SPI_OK_SELECT) != 1)
		return false;
	*quoted_name = pstrdup(quote_identifier(CatalogText(0, 1)));
	*type = CatalogText(0, 2);
	return true;
}

void ReportNotProtected(Oid relid, const char *column)
{
	ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
					errmsg("column \"%s\" of %s is not protected", column, get_rel_name(relid))));
}

ProtectedColumn *ProtectedColumnsOf(int64 key_id, uint64 *count)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	uint64 n = CatalogExec("SELECT table_name::pg_catalog.oid, table_name::pg_catalog.text,"
						   " column_name::pg_catalog.text FROM pgkm.protected_columns"
						   " WHERE key_id OPERATOR(pg_catalog.=) $1 ORDER BY 2, 3",
						   1, types, values, nullptr, SPI_OK_SELECT);
	auto *columns = static_cast<ProtectedColumn *>(palloc(sizeof(ProtectedColumn) * (n + 1)));
	uint64 kept = 0;
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		Oid relid = DatumGetObjectId(CatalogValue(i, 1, &isnull));
		if (get_rel_name(relid) == nullptr)
			continue; // the table was dropped: nothing of it can be read any more
		columns[kept].relid = relid;
		columns[kept].table = CatalogText(i, 2);
		columns[kept].column = CatalogText(i, 3);
		kept++;
	}
	*count = kept;
	return columns;
}

int64 RowsUnderVersion(const ProtectedColumn *pc, int64 key_id, int32 version, bool exists_only)
{
	RequireByteaColumn(pc->relid, pc->column);
	char *expr = psprintf("%s::pg_catalog.bytea", quote_identifier(pc->column));
	char *sql =
		psprintf("SELECT %s FROM %s WHERE %s%s", exists_only ? "1" : "pg_catalog.count(*)",
				 pc->table, HeaderPredicate(expr, 1, "=", 2), exists_only ? " LIMIT 1" : "");
	Oid types[2] = {BYTEAOID, BYTEAOID};
	Datum values[2] = {HeaderFieldDatum((std::uint32_t)key_id),
					   HeaderFieldDatum((std::uint32_t)version)};
	OwnerSession owner;
	OwnerOpen(pc->relid, &owner);
	uint64 n = CatalogExec(sql, 2, types, values, nullptr, SPI_OK_SELECT);
	OwnerClose(&owner);
	if (exists_only)
		return (int64)n;
	bool isnull;
	return DatumGetInt64(CatalogValue(0, 1, &isnull));
}

void RequireByteaColumn(Oid relid, const char *column)
{
	AttrNumber attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
						errmsg("protected column \"%s\" of relation \"%s\" does not exist", column,
							   get_rel_name(relid)),
						errhint("Unprotect it with pgkm.unprotect_column().")));
	if (getBaseType(get_atttype(relid, attnum)) != BYTEAOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("protected column \"%s\" of relation \"%s\" is no longer of type bytea",
						column, get_rel_name(relid)),
				 errdetail("pgkm reads and re-encrypts protected columns only as bytea.")));
}

Datum HeaderFieldDatum(std::uint32_t value)
{
	bytea *field = static_cast<bytea *>(palloc(VARHDRSZ + 4));
	SET_VARSIZE(field, VARHDRSZ + 4);
	auto *bytes = reinterpret_cast<std::uint8_t *>(VARDATA(field));
	bytes[0] = (std::uint8_t)(value >> 24);
	bytes[1] = (std::uint8_t)(value >> 16);
	bytes[2] = (std::uint8_t)(value >> 8);
	bytes[3] = (std::uint8_t)value;
	return PointerGetDatum(field);
}

char *HeaderPredicate(const char *expr, int key_param, const char *op, int version_param)
{
	// Format v1 (DESIGN.md): format, algorithm, key id (bytes 3-6), version (bytes 7-10), all
	// big-endian, so bytea order on the 4-byte fields is numeric order.
	static_assert(pgkm::core::kHeaderSize == 10);
	return psprintf("%s IS NOT NULL AND pg_catalog.octet_length(%s) OPERATOR(pg_catalog.>=) 10"
					" AND pg_catalog.substr(%s, 3, 4) OPERATOR(pg_catalog.=) $%d"
					" AND pg_catalog.substr(%s, 7, 4) OPERATOR(pg_catalog.%s) $%d",
					expr, expr, expr, key_param, expr, op, version_param);
}

void QueueReencryption(int64 key_id, int32 target_version, const char *actor)
{
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	uint64 n = CatalogExec("SELECT table_name::oid, column_name::text FROM pgkm.protected_columns"
						   " WHERE key_id OPERATOR(pg_catalog.=) $1 ORDER BY 1, 2",
						   1, types, values, nullptr, SPI_OK_SELECT);
	if (n == 0)
		return;
	// The result is overwritten by QueueJob's statements: copy it first.
	Oid *relids = static_cast<Oid *>(palloc(sizeof(Oid) * n));
	char **columns = static_cast<char **>(palloc(sizeof(char *) * n));
	for (uint64 i = 0; i < n; i++)
	{
		bool isnull;
		relids[i] = DatumGetObjectId(CatalogValue(i, 1, &isnull));
		columns[i] = CatalogText(i, 2);
	}
	for (uint64 i = 0; i < n; i++)
		QueueJob(relids[i], columns[i], key_id, target_version, actor);
	WakeDatabaseWorker();
}

} // namespace pgkm::pg

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_protect_column);
	PG_FUNCTION_INFO_V1(pgkm_unprotect_column);
	PG_FUNCTION_INFO_V1(pgkm_start_reencryption);
	PG_FUNCTION_INFO_V1(pgkm_pause_job);
	PG_FUNCTION_INFO_V1(pgkm_resume_job);
	PG_FUNCTION_INFO_V1(pgkm_cancel_job);
	Datum pgkm_protect_column(PG_FUNCTION_ARGS);
	Datum pgkm_unprotect_column(PG_FUNCTION_ARGS);
	Datum pgkm_start_reencryption(PG_FUNCTION_ARGS);
	Datum pgkm_pause_job(PG_FUNCTION_ARGS);
	Datum pgkm_resume_job(PG_FUNCTION_ARGS);
	Datum pgkm_cancel_job(PG_FUNCTION_ARGS);
}

// pgkm.protect_column(table, column, key_name, context_column, source_column): registers a
// bytea column as encrypted under a key, so the worker re-encrypts it after rotations; a
// blind-index column names its source column instead of a context, and the worker rebuilds
// it from that. The caller must own both the table and the key. (Before 1.4 the function
// has no source_column argument.)
Datum pgkm_protect_column(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("table, column and key name must not be null")));
	Oid relid = PG_GETARG_OID(0);
	char *column = NameStr(*PG_GETARG_NAME(1));
	char *key_name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	char *context = PG_ARGISNULL(3) ? nullptr : NameStr(*PG_GETARG_NAME(3));
	bool has_source_arg = PG_NARGS() > 4;
	char *source = !has_source_arg || PG_ARGISNULL(4) ? nullptr : NameStr(*PG_GETARG_NAME(4));
	char *caller_name = GetUserNameFromId(GetUserId(), false);

	if (get_rel_relkind(relid) != RELKIND_RELATION &&
		get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
						errmsg("%s is not a table", get_rel_name(relid))));
	CheckTableOwner(relid);
	if (ColumnType(relid, column) != BYTEAOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" must be of type bytea to hold pgkm ciphertexts", column)));
	if (context)
		(void)ColumnType(relid, context);

	CatalogSession session;
	int64 key_id = OpenOwnedKey(key_name, &session);
	RefuseIfErased(key_id, key_name, "used to protect a column");
	RequireSingleColumnPrimaryKey(relid);
	if (has_source_arg)
	{
		CheckSourceColumn(relid, column, key_id, key_name, context, source);
	}
	Oid types[6] = {OIDOID, NAMEOID, INT8OID, NAMEOID, NAMEOID, NAMEOID};
	Datum values[6] = {ObjectIdGetDatum(relid),  PG_GETARG_DATUM(1),
					   Int64GetDatum(key_id),    context ? PG_GETARG_DATUM(3) : (Datum)0,
					   CatalogName(caller_name), source ? PG_GETARG_DATUM(4) : (Datum)0};
	char nulls[6] = {' ', ' ', ' ', context ? ' ' : 'n', ' ', source ? ' ' : 'n'};
	CatalogExec(
		has_source_arg
			? "INSERT INTO pgkm.protected_columns (table_name, column_name, key_id,"
			  " context_column, created_by, source_column)"
			  " VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6)"
			  " ON CONFLICT (table_name, column_name) DO UPDATE SET key_id = EXCLUDED.key_id,"
			  " context_column = EXCLUDED.context_column,"
			  " source_column = EXCLUDED.source_column"
			: "INSERT INTO pgkm.protected_columns (table_name, column_name, key_id,"
			  " context_column, created_by) VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5)"
			  " ON CONFLICT (table_name, column_name) DO UPDATE SET key_id = EXCLUDED.key_id,"
			  " context_column = EXCLUDED.context_column",
		has_source_arg ? 6 : 5, types, values, nulls, SPI_OK_INSERT);
	char detail[NAMEDATALEN * 4 + 48];
	snprintf(detail, sizeof(detail), "%s.%s%s%s%s%s", get_rel_name(relid), column,
			 context ? ", context " : "", context ? context : "", source ? ", source " : "",
			 source ? source : "");
	RecordKeyEvent(caller_name, "column_protect", key_id, 0, detail);
	CatalogClose(&session);
	PG_RETURN_VOID();
}

// pgkm.unprotect_column(table, column): forgets a protected column and cancels its jobs.
Datum pgkm_unprotect_column(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	Oid relid = PG_GETARG_OID(0);
	char *column = NameStr(*PG_GETARG_NAME(1));
	Oid caller = GetUserId();
	char *caller_name = GetUserNameFromId(caller, false);
	CheckTableOwner(relid);
	CatalogSession session;
	CatalogOpenAdmin(&session);
	RequireNoDependentIndex(relid, column);
	Oid types[2] = {OIDOID, NAMEOID};
	Datum values[2] = {ObjectIdGetDatum(relid), PG_GETARG_DATUM(1)};
	if (CatalogExec("DELETE FROM pgkm.protected_columns"
					" WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
					" AND column_name OPERATOR(pg_catalog.=) $2 RETURNING key_id",
					2, types, values, nullptr, SPI_OK_DELETE_RETURNING) != 1)
		ReportNotProtected(relid, column);
	bool isnull;
	int64 key_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	CatalogExec("UPDATE pgkm.rotation_jobs SET state = 'cancelled', finished_at = pg_catalog.now(),"
				" error = 'column unprotected'"
				" WHERE table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
				" AND column_name OPERATOR(pg_catalog.=) $2"
				" AND state OPERATOR(pg_catalog.=) ANY ('{pending,running,paused}')",
				2, types, values, nullptr, SPI_OK_UPDATE);
	char detail[NAMEDATALEN * 2 + 8];
	snprintf(detail, sizeof(detail), "%s.%s", get_rel_name(relid), column);
	RecordKeyEvent(caller_name, "column_unprotect", key_id, 0, detail);
	CatalogClose(&session);
	PG_RETURN_VOID();
}

// pgkm.start_reencryption(table, column): queues a job that re-encrypts the column to its
// key's active version. Returns the job id.
Datum pgkm_start_reencryption(PG_FUNCTION_ARGS)
{
	RequireSharedMemory();
	KeyCacheInit();
	Oid relid = PG_GETARG_OID(0);
	char *column = NameStr(*PG_GETARG_NAME(1));
	Oid caller = GetUserId();
	char *caller_name = GetUserNameFromId(caller, false);
	CatalogSession session;
	CatalogOpenAdmin(&session);
	Oid types[2] = {OIDOID, NAMEOID};
	Datum values[2] = {ObjectIdGetDatum(relid), PG_GETARG_DATUM(1)};
	if (CatalogExec("SELECT p.key_id, v.version FROM pgkm.protected_columns p"
					" LEFT JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) p.key_id"
					"  AND v.state OPERATOR(pg_catalog.=) 'active'"
					" WHERE p.table_name OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
					" AND p.column_name OPERATOR(pg_catalog.=) $2",
					2, types, values, nullptr, SPI_OK_SELECT) != 1)
		ReportNotProtected(relid, column);
	bool isnull, no_active;
	int64 key_id = DatumGetInt64(CatalogValue(0, 1, &isnull));
	Datum active = CatalogValue(0, 2, &no_active);
	if (no_active)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("the key of column \"%s\" has no active version", column)));
	CheckKeyIdOwner(caller, key_id);
	int64 job_id = QueueJob(relid, column, key_id, DatumGetInt32(active), caller_name);
	CatalogClose(&session);
	WakeDatabaseWorker();
	PG_RETURN_INT64(job_id);
}

// pgkm.pause_job(job_id): the worker leaves the job between batches.
Datum pgkm_pause_job(PG_FUNCTION_ARGS)
{
	ChangeJobState(fcinfo, "{pending,running}", "paused", "job_pause");
	PG_RETURN_VOID();
}

// pgkm.resume_job(job_id): a paused job continues from its checkpoint.
Datum pgkm_resume_job(PG_FUNCTION_ARGS)
{
	ChangeJobState(fcinfo, "{paused}", "pending", "job_resume");
	PG_RETURN_VOID();
}

// pgkm.cancel_job(job_id): the job stops for good; rows done so far stay re-encrypted.
Datum pgkm_cancel_job(PG_FUNCTION_ARGS)
{
	ChangeJobState(fcinfo, "{pending,running,paused}", "cancelled", "job_cancel");
	PG_RETURN_VOID();
}
