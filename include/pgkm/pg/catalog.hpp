// Access to pgkm's catalog tables through SPI, as the catalog's owner, with search_path
// pinned: callers need no privileges on the tables, and no user object is resolved.
#pragma once

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// An open catalog session: the saved identity and setting nest level.
struct CatalogSession
{
	Oid saved_user;
	int saved_sec_context;
	int guc_nest_level;
};

// The version of pgkm's SQL objects this library is built for: pgkm.control's
// default_version (if they disagree, every administration call in the tests fails).
inline constexpr const char *kSqlVersion = "1.6";

// Connects SPI as the owner of the pgkm schema's tables with search_path pinned.
void CatalogOpen(CatalogSession *session);
// CatalogOpen for key administration: refuses (55000, with a hint to run ALTER EXTENSION
// pgkm UPDATE) when this database's pgkm SQL objects are not the version this library was
// built for. Between a package upgrade and the update, the data path keeps working with
// the old objects; administration, which writes the newer catalog, does not.
void CatalogOpenAdmin(CatalogSession *session);
// Finishes SPI and restores the caller's identity and settings.
void CatalogClose(CatalogSession *session);

// Runs a parameterised statement; raises an error unless SPI returns expected_status.
// Returns SPI_processed.
uint64 CatalogExec(const char *sql, int nargs, const Oid *types, const Datum *values,
				   const char *nulls, int expected_status);

// Runs a parameterised read-only query like CatalogExec, but under the latest committed
// state rather than the transaction's snapshot: the key cache must never keep roles or
// states that a repeatable-read snapshot still shows after a change committed. In
// parallel mode (where no new snapshot may be taken) it uses the transaction's snapshot and
// marks *stale, so the caller can drop what it cached at the end of the transaction.
// With saved, the statement is prepared once per backend and its plan kept in *saved (a
// static of the caller): for the key cache's lookups, which run once per key and miss.
uint64 CatalogQueryLatest(const char *sql, int nargs, const Oid *types, const Datum *values,
						  const char *nulls, bool *stale, SPIPlanPtr *saved = nullptr);

// A value for a parameter of type name: a palloc'd NameData of NAMEDATALEN bytes holding s
// (truncated like the name type). A C string is not a name Datum: PostgreSQL copies
// NAMEDATALEN bytes from it.
Datum CatalogName(const char *s);

// Reads column col (1-based) of row row of the last result; isnull is set.
Datum CatalogValue(uint64 row, int col, bool *isnull);
// Reads a text column as a palloc'd C string in the current memory context (NULL if null).
char *CatalogText(uint64 row, int col);

// How many catalog sessions are open in this process: the audit hooks ignore pgkm's own
// queries. Reset at the end of every (sub)transaction, since an error skips CatalogClose.
extern int catalog_session_depth;

// The role the caller acted as: inside a catalog session, the user it was opened by (the
// caller of the SQL function, not the catalog owner it runs as); otherwise the current user.
// Audit records name this role as their current user.
Oid CatalogCaller();

// Returns the OID of pgkm.keys as last seen by CatalogOpen (InvalidOid before that).
Oid CatalogKeysRelid();

// An open table-owner session: the saved identity and setting nest level.
struct OwnerSession
{
	Oid saved_user;
	int saved_sec_context;
	int guc_nest_level;
};

// Runs the statements that follow as the owner of the user table relid, as a
// security-restricted operation with search_path pinned: whatever code the table brings
// (triggers, index expressions, constraints, domains, casts, policies) runs with its
// owner's rights, never with pgkm's. SPI must be connected.
void OwnerOpen(Oid relid, OwnerSession *session);
// Restores the identity, undoing every setting the table's code changed.
void OwnerClose(OwnerSession *session);

} // namespace pgkm::pg
