/* pgkm--1.3--1.4.sql: searchable encryption and per-subject erasure. Deterministic
   encryption (AES-256-SIV), rotatable blind indexes (truncated HMAC-SHA-256), a bounded key
   cache for thousands of per-subject keys, and crypto-shredding with pgkm.erase_subject. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.4'" to load this file. \quit

-- == searchable encryption: key algorithms, deterministic values, blind indexes ==

-- Key names may hold a subject's identifier: customer:4711, tenant/42 (per-subject keys).
ALTER TABLE pgkm.keys DROP CONSTRAINT keys_name_check;
ALTER TABLE pgkm.keys ADD CONSTRAINT keys_name_check
	CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_.:/-]{0,62}$');

-- == key cache ==

-- This backend's key cache, bounded by pgkm.key_cache_size (LRU): for sizing the setting and
-- for the tests. Per backend, so PARALLEL RESTRICTED; revoked from PUBLIC below.
CREATE FUNCTION pgkm.key_cache_stats(OUT capacity integer, OUT cached_versions integer,
	OUT cached_keys integer, OUT hits bigint, OUT misses bigint, OUT unwraps bigint,
	OUT unwrap_ms double precision, OUT evictions bigint, OUT resets bigint,
	OUT locked_bytes bigint, OUT arena_pages integer)
	RETURNS record
	AS 'MODULE_PATHNAME', 'pgkm_key_cache_stats'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.key_cache_stats() IS
	'this backend''s key cache: capacity, cached versions and keys, hits, misses, token unwraps '
	'and their time, LRU evictions, resets, locked bytes and arena pages';

-- == erasure and master-key destruction ==

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
