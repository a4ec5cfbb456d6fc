-- Data-path benchmark queries (driven by bench/run.sh). Times are medians of 3 runs of
-- "SELECT count(f(v)) FROM t"; the scan alone is measured and shown for reference.
\pset footer off
CREATE EXTENSION pgkm;
CREATE EXTENSION pgcrypto;
SELECT pgkm.create_key('bench') \gset

CREATE FUNCTION bench_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	runs float8[] := '{}';
BEGIN
	FOR i IN 1..3 LOOP
		t0 := clock_timestamp();
		EXECUTE q;
		runs := runs || extract(epoch FROM clock_timestamp() - t0) * 1000;
	END LOOP;
	RETURN (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(runs) x);
END
$$;

CREATE TABLE results (size text, what text, rows bigint, ms float8);

SET client_min_messages = warning;
-- Loads n rows of len-byte values and their pgcrypto, pgkm and pgp ciphertexts.
CREATE FUNCTION load_size(n bigint, len int, pgp_n bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	rawkey bytea := decode(repeat('42', 32), 'hex');
BEGIN
	EXECUTE 'DROP TABLE IF EXISTS t';
	EXECUTE format($q$CREATE TABLE t AS SELECT i AS id,
		substr(decode(repeat(md5(i::text), %s), 'hex'), 1, %s) AS v
		FROM generate_series(1, %s) i$q$, (len / 16) + 1, len, n);
	-- One ciphertext column per table: rows stay under the TOAST threshold, so every
	-- function reads an inline value, as it would in a table with one protected column.
	EXECUTE 'DROP TABLE IF EXISTS tc, tk';
	EXECUTE format('CREATE TABLE tc AS SELECT id, encrypt(v, %L, %L) AS c FROM t', rawkey, 'aes');
	EXECUTE 'CREATE TABLE tk AS SELECT id, pgkm_encrypt(v, ''bench'') AS c FROM t';
	EXECUTE 'ALTER TABLE t ADD PRIMARY KEY (id)';
	EXECUTE 'ALTER TABLE tk ADD PRIMARY KEY (id)';
	EXECUTE 'DROP TABLE IF EXISTS tp';
	EXECUTE format('CREATE TABLE tp AS SELECT v, pgp_sym_encrypt_bytea(v, %L) AS c FROM t LIMIT %s',
		'bench passphrase', pgp_n);
END
$$;

-- Times each function over the loaded rows.
CREATE FUNCTION measure(size text, n bigint, pgp_n bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	rawkey bytea := decode(repeat('42', 32), 'hex');
BEGIN
	INSERT INTO results VALUES
		(size, 'scan: sum(length(v))', n, bench_ms('SELECT sum(length(v)) FROM t')),
		(size, 'sha256(v)', n, bench_ms('SELECT count(sha256(v)) FROM t')),
		(size, 'pgcrypto encrypt (aes-cbc)', n,
			bench_ms(format('SELECT count(encrypt(v, %L, %L)) FROM t', rawkey, 'aes'))),
		(size, 'pgcrypto decrypt (aes-cbc)', n,
			bench_ms(format('SELECT count(decrypt(c, %L, %L)) FROM tc', rawkey, 'aes'))),
		(size, 'pgkm_encrypt', n, bench_ms('SELECT count(pgkm_encrypt(v, ''bench'')) FROM t')),
		(size, 'pgkm_decrypt', n, bench_ms('SELECT count(pgkm_decrypt(c)) FROM tk')),
		(size, 'pgp_sym_encrypt', pgp_n,
			bench_ms('SELECT count(pgp_sym_encrypt_bytea(v, ''bench passphrase'')) FROM tp')),
		(size, 'pgp_sym_decrypt', pgp_n,
			bench_ms('SELECT count(pgp_sym_decrypt_bytea(c, ''bench passphrase'')) FROM tp'));
	-- Every pgkm ciphertext decrypts to its value: the timings measured real work.
	IF (SELECT count(*) FROM t JOIN tk USING (id) WHERE pgkm_decrypt(c) = v) <> n THEN
		RAISE EXCEPTION 'pgkm round trip failed';
	END IF;
END
$$;

SELECT load_size(:rows64, 64, :pgp_rows);
VACUUM ANALYZE t, tc, tk, tp;
SELECT measure('64 B', :rows64, :pgp_rows);
SELECT load_size(:rows1k, 1024, :pgp_rows / 4);
VACUUM ANALYZE t, tc, tk, tp;
SELECT measure('1 KiB', :rows1k, :pgp_rows / 4);

\echo
\echo 'Per-row cost and rows/s (one core, median of 3; pgp_* on a subset, scaled per row)'
SELECT size, what, rows, round(ms::numeric, 1) AS ms,
	round((ms * 1e6 / rows)::numeric) AS ns_per_row,
	round((rows / (ms / 1000))::numeric) AS rows_per_s
	FROM results ORDER BY size DESC, what;

\echo 'Time ratios per row (lower is better for pgkm); targets from the issue in brackets'
WITH r AS (SELECT size, what, ms / rows AS per_row FROM results),
p AS (SELECT size,
	max(per_row) FILTER (WHERE what = 'pgkm_encrypt') AS enc,
	max(per_row) FILTER (WHERE what = 'pgkm_decrypt') AS dec,
	max(per_row) FILTER (WHERE what = 'pgcrypto encrypt (aes-cbc)') AS pc_enc,
	max(per_row) FILTER (WHERE what = 'pgcrypto decrypt (aes-cbc)') AS pc_dec,
	max(per_row) FILTER (WHERE what = 'sha256(v)') AS sha,
	max(per_row) FILTER (WHERE what = 'pgp_sym_encrypt') AS pgp_enc,
	max(per_row) FILTER (WHERE what = 'pgp_sym_decrypt') AS pgp_dec
	FROM r GROUP BY size)
SELECT size,
	round((dec / pc_dec)::numeric, 2) AS "decrypt/pgcrypto [<=0.5]",
	round((dec / sha)::numeric, 2) AS "decrypt/sha256 [<=0.7]",
	round((enc / pc_enc)::numeric, 2) AS "encrypt/pgcrypto [<=0.6]",
	round((pgp_enc / enc)::numeric) AS "pgp_enc/encrypt [>=20]",
	round((pgp_dec / dec)::numeric) AS "pgp_dec/decrypt [>=20]"
	FROM p ORDER BY size DESC;
