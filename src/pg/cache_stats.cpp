// pgkm.key_cache_stats(): this backend's key cache in figures (size, hits, misses, token
// unwraps, evictions, locked memory), for DBAs sizing pgkm.key_cache_size and for the tests.
#include "pgkm/pg/key_cache.hpp"

using namespace pgkm::pg;

extern "C"
{
	PG_FUNCTION_INFO_V1(pgkm_key_cache_stats);
	Datum pgkm_key_cache_stats(PG_FUNCTION_ARGS);
}

// pgkm.key_cache_stats(): one row of this backend's figures since it started; reads neither
// the catalog nor the token.
Datum pgkm_key_cache_stats(PG_FUNCTION_ARGS)
{
	TupleDesc tupdesc;
	if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	KeyCacheStats s;
	KeyCacheReadStats(&s);
	Datum values[11] = {
		Int32GetDatum(s.capacity),           Int32GetDatum(s.cached_versions),
		Int32GetDatum(s.cached_keys),        Int64GetDatum((int64)s.hits),
		Int64GetDatum((int64)s.misses),      Int64GetDatum((int64)s.unwraps),
		Float8GetDatum(s.unwrap_ms),         Int64GetDatum((int64)s.evictions),
		Int64GetDatum((int64)s.resets),      Int64GetDatum((int64)s.locked_bytes),
		Int32GetDatum((int32)s.arena_pages),
	};
	bool nulls[11] = {};
	if (tupdesc->natts != 11)
		elog(ERROR, "pgkm.key_cache_stats() must return 11 columns");
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
