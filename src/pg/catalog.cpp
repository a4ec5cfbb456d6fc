// Catalog sessions: SPI as the owner of pgkm's tables, with search_path pinned, so that
// applications need no table privileges and no object of theirs is ever resolved.
#include "pgkm/pg/catalog.hpp"

extern "C"
{
#include "catalog/pg_class.h"
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

} // namespace

int catalog_session_depth = 0;

void CatalogOpen(CatalogSession *session)
{
	Oid owner = CatalogOwner();
	GetUserIdAndSecContext(&session->saved_user, &session->saved_sec_context);
	SetUserIdAndSecContext(owner, session->saved_sec_context | SECURITY_LOCAL_USERID_CHANGE |
									  SECURITY_RESTRICTED_OPERATION);
	session->guc_nest_level = NewGUCNestLevel();
	(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	catalog_session_depth++;
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

Oid CatalogKeysRelid()
{
	return keys_relid;
}

} // namespace pgkm::pg
