-- key_cache: the key cache is bounded by pgkm.key_cache_size (LRU); pgkm.key_cache_stats()
-- shows this backend's figures and, like every admin function, is not for PUBLIC

-- the setting: default, bounds, context
SELECT name, setting, min_val, max_val, context FROM pg_settings
	WHERE name = 'pgkm.key_cache_size';
SELECT pgkm_test_error($$SET pgkm.key_cache_size = 1$$);
SELECT pgkm_test_error($$SET pgkm.key_cache_size = 1000001$$);
SELECT pgkm_test_error($$SET pgkm.key_cache_size = 'many'$$);

-- a new backend's cache: empty, nothing counted yet
SELECT capacity, cached_versions, cached_keys, hits, misses, unwraps, evictions
	FROM pgkm.key_cache_stats();

-- three keys (a subject's name may hold ':' and '/'), used in turn through a cache of two
SELECT count(pgkm.create_key(k)) FROM unnest(ARRAY['cache_a', 'cache:4711', 'cache/42']) k;
SET pgkm.key_cache_size = 2;
CREATE TEMP TABLE cache_rows AS
	SELECT g, k, pgkm_encrypt('value-' || g, k, g::text) AS c
	FROM generate_series(1, 12) g,
	LATERAL (SELECT (ARRAY['cache_a', 'cache:4711', 'cache/42'])[1 + g % 3] AS k) n;
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, g::text) = 'value-' || g) AS right_values
	FROM cache_rows;
-- every value decrypted; never more than two versions or key names: three keys in turn
-- through two places, so each of the 24 lookups (12 encrypts, 12 decrypts) missed and
-- unwrapped, and each new version evicted the least recently used
SELECT capacity, cached_versions, cached_keys, hits, misses, unwraps, evictions,
	unwrap_ms > 0 AS timed, locked_bytes > 0 AS locked, arena_pages >= 1 AS has_pages
	FROM pgkm.key_cache_stats();

-- three call sites in a row, through a cache of two: each site's version is evicted by the
-- other two before the site's next row, which must not use it again (it is unwrapped anew)
SELECT count(*) AS rows, count(*) FILTER (WHERE
		pgkm_decrypt_text(a.c, a.g::text) = 'value-' || a.g AND
		pgkm_decrypt_text(b.c, b.g::text) = 'value-' || b.g AND
		pgkm_decrypt_text(t.c, t.g::text) = 'value-' || t.g) AS right_rows
	FROM cache_rows a, cache_rows b, cache_rows t
	WHERE a.k = 'cache_a' AND b.k = 'cache:4711' AND t.k = 'cache/42';
SELECT cached_versions, hits, misses, unwraps, evictions FROM pgkm.key_cache_stats();

-- a larger cache: the key evicted last is unwrapped again, then all are hits
SET pgkm.key_cache_size = 100;
CREATE TEMP TABLE cache_before AS SELECT * FROM pgkm.key_cache_stats();
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, g::text) = 'value-' || g) AS right_values
	FROM cache_rows;
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, g::text) = 'value-' || g) AS right_values
	FROM cache_rows;
SELECT s.cached_versions, s.hits - b.hits AS hits, s.unwraps - b.unwraps AS unwraps,
	s.evictions - b.evictions AS evictions
	FROM pgkm.key_cache_stats() s, cache_before b;

-- a lower size takes effect at the next use of the cache
SET pgkm.key_cache_size = 2;
SELECT cached_versions FROM pgkm.key_cache_stats();
SELECT pgkm_decrypt_text(c, g::text) FROM cache_rows WHERE g = 12;
SELECT cached_versions FROM pgkm.key_cache_stats();

-- a committed key change empties the cache (counted as a reset)
SELECT resets AS resets_before FROM pgkm.key_cache_stats() \gset
SELECT pgkm.rotate_key('cache_a') AS version;
SELECT pgkm_decrypt_text(c, g::text) FROM cache_rows WHERE g = 12;
SELECT cached_versions, resets - :resets_before AS resets FROM pgkm.key_cache_stats();
RESET pgkm.key_cache_size;

-- only a superuser sets it (also per role or database); the stats are revoked from PUBLIC
CREATE ROLE regress_pgkm_cache_user;
SET ROLE regress_pgkm_cache_user;
SELECT pgkm_test_error($$SET pgkm.key_cache_size = 10$$);
SELECT pgkm_test_error($$SELECT * FROM pgkm.key_cache_stats()$$);
RESET ROLE;
GRANT USAGE ON SCHEMA pgkm TO regress_pgkm_cache_user;
SET ROLE regress_pgkm_cache_user;
SELECT pgkm_test_error($$SELECT * FROM pgkm.key_cache_stats()$$);
RESET ROLE;
ALTER ROLE regress_pgkm_cache_user SET pgkm.key_cache_size = 50;
SELECT setconfig FROM pg_db_role_setting
	WHERE setrole = 'regress_pgkm_cache_user'::regrole;
REVOKE USAGE ON SCHEMA pgkm FROM regress_pgkm_cache_user;
DROP ROLE regress_pgkm_cache_user;
