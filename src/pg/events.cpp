// The record of key administration (pgkm.key_events): who did what to which key, and when;
// each is also an audit record (audit.cpp).
#include "pgkm/pg/admin.hpp"
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/catalog.hpp"

namespace pgkm::pg
{

void RecordKeyEvent(const char *actor, const char *action, int64 key_id, int32 version,
					const char *detail)
{
	Oid types[5] = {NAMEOID, TEXTOID, INT8OID, INT4OID, TEXTOID};
	Datum values[5] = {CatalogName(actor), CStringGetTextDatum(action), Int64GetDatum(key_id),
					   Int32GetDatum(version), detail ? CStringGetTextDatum(detail) : (Datum)0};
	char nulls[5] = {' ', ' ', key_id ? ' ' : 'n', version ? ' ' : 'n', detail ? ' ' : 'n'};
	CatalogExec("INSERT INTO pgkm.key_events (actor, action, key_id, version, detail)"
				" VALUES ($1, $2, $3, $4, $5) RETURNING (SELECT k.name FROM pgkm.keys k"
				"  WHERE k.key_id OPERATOR(pg_catalog.=) $3)",
				5, types, values, nulls, SPI_OK_INSERT_RETURNING);
	// The access audit records it too, as succeeded or rolled back with the transaction.
	AuditAdmin(action, CatalogText(0, 1), version, detail);
}

} // namespace pgkm::pg
