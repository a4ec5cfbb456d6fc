// Catalog sessions: SPI as the owner of pgkm's tables, with search_path pinned, so that
// applications need no table privileges and no object of theirs is ever resolved.
#include "pgkm/pg/catalog.hpp"

extern "C"
{
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
}

namespace pgkm::pg
{

namespace
{

Oid keys_relid = InvalidOid;

// Returns the owner of pgkm.keys, the identity catalog sessions run as.
Oid CatalogOwner()
{
	Oid nsp = get_namespace_oid("pgkm", true);
	Oid rel = OidIsValid(nsp) ? get_relname_relid("keys", nsp) : InvalidOid;
	if (!OidIsValid(rel))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("extension pgkm is not installed in this database"),
						errhint("Run CREATE EXTENSION pgkm.")));
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(rel));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", rel);
	Oid owner = ((Form_pg_class)GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	keys_relid = rel;
	return owner;
}

// Acts as role, as a security-restricted operation, with search_path pinned to pg_catalog
// in a new GUC nesting level (returned; the caller's user and context are saved).
int EnterRestricted(Oid role, Oid *saved_user, int *saved_sec_context)
{
	GetUserIdAndSecContext(saved_user, saved_sec_context);
	SetUserIdAndSecContext(role, *saved_sec_context | SECURITY_LOCAL_USERID_CHANGE |
									 SECURITY_RESTRICTED_OPERATION);
	int nest_level = NewGUCNestLevel();
	(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							GUC_ACTION_SAVE, true, 0, false);
	return nest_level;
}

} // namespace

int catalog_session_depth = 0;

namespace
{

Oid catalog_caller = InvalidOid; // who opened the outermost catalog session

} // namespace

void CatalogOpen(CatalogSession *session)
{
	session->guc_nest_level =
		EnterRestricted(CatalogOwner(), &session->saved_user, &session->saved_sec_context);
	if (catalog_session_depth == 0)
		catalog_caller = session->saved_user;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	catalog_session_depth++;
}

void CatalogOpenAdmin(CatalogSession *session)
{
	CatalogOpen(session);
	CatalogExec("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgkm'", 0, nullptr,
				nullptr, nullptr, SPI_OK_SELECT);
	const char *installed = SPI_processed == 1 ? CatalogText(0, 1) : nullptr;
	if (installed && strcmp(installed, kSqlVersion) != 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("pgkm's SQL objects in this database are version %s, and this pgkm "
							   "library administers keys with version %s",
							   installed, kSqlVersion),
						errdetail("Encryption and decryption keep working until the update."),
						errhint("Run ALTER EXTENSION pgkm UPDATE in this database.")));
}

void CatalogClose(CatalogSession *session)
{
	SPI_finish();
	if (catalog_session_depth > 0)
		catalog_session_depth--;
	AtEOXact_GUC(true, session->guc_nest_level);
	SetUserIdAndSecContext(session->saved_user, session->saved_sec_context);
}

uint64 CatalogExec(const char *sql, int nargs, const Oid *types, const Datum *values,
				   const char *nulls, int expected_status)
{
	int rc = SPI_execute_with_args(sql, nargs, const_cast<Oid *>(types),
								   const_cast<Datum *>(values), nulls, false, 0);
	if (rc != expected_status)
		elog(ERROR, "pgkm catalog statement failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

uint64 CatalogQueryLatest(const char *sql, int nargs, const Oid *types, const Datum *values,
						  const char *nulls, bool *stale, SPIPlanPtr *saved)
{
	*stale = IsInParallelMode() && IsolationUsesXactSnapshot();
	if (IsInParallelMode())
		return CatalogExec(sql, nargs, types, values, nulls, SPI_OK_SELECT);
	SPIPlanPtr plan = saved ? *saved : nullptr;
	if (plan == nullptr)
		plan = SPI_prepare(sql, nargs, const_cast<Oid *>(types));
	if (plan == nullptr)
		elog(ERROR, "pgkm catalog query failed: %s", SPI_result_code_string(SPI_result));
	if (saved && *saved == nullptr)
	{
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "pgkm catalog query failed: SPI_keepplan");
		*saved = plan;
	}
	int rc = SPI_execute_snapshot(plan, const_cast<Datum *>(values), nulls, GetLatestSnapshot(),
								  InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pgkm catalog query failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

Datum CatalogName(const char *s)
{
	Name name = static_cast<Name>(palloc0(NAMEDATALEN));
	namestrcpy(name, s);
	return NameGetDatum(name);
}

Datum CatalogValue(uint64 row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

char *CatalogText(uint64 row, int col)
{
	bool isnull;
	Datum d = CatalogValue(row, col, &isnull);
	return isnull ? nullptr : text_to_cstring(DatumGetTextPP(d));
}

Oid CatalogCaller()
{
	return catalog_session_depth > 0 ? catalog_caller : GetUserId();
}

Oid CatalogKeysRelid()
{
	return keys_relid;
}

void OwnerOpen(Oid relid, OwnerSession *session)
{
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
						errmsg("protected table with OID %u does not exist", relid)));
	Oid owner = ((Form_pg_class)GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	session->guc_nest_level =
		EnterRestricted(owner, &session->saved_user, &session->saved_sec_context);
	// A policy the owner forces on the table must not hide rows from a scan that proves a
	// version unused, nor from re-encryption: such a statement fails instead.
	(void)set_config_option("row_security", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							true, 0, false);
}

void OwnerClose(OwnerSession *session)
{
	AtEOXact_GUC(false, session->guc_nest_level);
	SetUserIdAndSecContext(session->saved_user, session->saved_sec_context);
}

} // namespace pgkm::pg
