#!/usr/bin/env bash
# Benchmark of many per-subject keys (issue 6), measured in one run on a throwaway cluster:
#  1. creating KEYS keys, a few statements of many keys each (keys/s), and encrypting one
#     value under each (every one a miss of the key cache);
#  2. token unwraps per second: pgkm.key_cache_stats() counts the unwraps and the time spent
#     in them (C_UnwrapKey under the cluster-wide token lock, the key check and the HKDF);
#  3. decrypting a random mix of MIX of those values (drawn with repeats, in random key
#     order) at pgkm.key_cache_size 100, 1000 and 20000, each in a fresh session (an empty
#     cache): the first pass, then the same mix again in that session. Its peers, in the same
#     run: the same number of values under one cached key (the data path without misses),
#     and the built-in sha256() over the mix's ciphertexts (a per-row floor).
# The access audit is off for these (pgkm.audit_level = none), so that they show the cache;
# one more row decrypts the mix with a cache of 20000 at the default audit level (statement),
# whose per-statement aggregates hold 32 keys: beyond that each use flushes records.
# One core per query (no parallel query, no JIT); each figure is the median of ROUNDS runs.
# Not a test: it prints ratios against the peers, it does not judge.
#   bench/keys.sh                                   10,000 keys, a mix of 20,000, 3 rounds
#   KEYS=2000 MIX=5000 ROUNDS=1 bench/keys.sh       a quicker run
#   NO_BUILD=1 bench/keys.sh                        uses the installed pgkm as it is (with
#                                                   PGKM_PG_BINDIR: a copy from scripts/stage.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000}
MIX=${MIX:-20000}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-"100 1000 20000"}
scripts/deps.sh
[ -n "${NO_BUILD:-}" ] || scripts/build.sh
. test/lib/cluster.sh
pgkm_cluster_init
as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<CONF
shared_buffers = 256MB
max_parallel_workers_per_gather = 0
jit = off
pgkm.key_cache_ttl = '1h'
CONF
pgkm_cluster_start
psql_q() { pgkm_psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

psql_q >/dev/null <<SQL
CREATE EXTENSION pgkm;
-- Milliseconds one run of a query takes.
CREATE FUNCTION run_ms(q text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE q;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END
\$\$;
CREATE TABLE results (what text, size int, round int, first_ms float8, again_ms float8,
	unwraps bigint, evictions bigint, unwrap_ms float8);
SQL
echo "PostgreSQL $(psql_q -c "SHOW server_version"), pgkm $(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'pgkm'"), $(nproc) CPUs; $ROUNDS round(s), median"

echo "== 1. $KEYS keys (subject_<n> and customer:<n>), four statements"
statements=4
ms=$(psql_q -c "SELECT run_ms(format('SELECT count(pgkm.create_key(CASE WHEN g %% 2 = 0 THEN ''subject_'' ELSE ''customer:'' END || g)) FROM generate_series(%s, %s) g', i * $KEYS / $statements + 1, (i + 1) * $KEYS / $statements)) FROM generate_series(0, $statements - 1) i" | paste -sd+ | bc)
echo "created in $(printf '%.2f' "$(bc -l <<<"$ms / 1000")") s: $(bc <<<"$KEYS * 1000 / $ms") keys/s"
psql_q >/dev/null -c "CREATE TABLE subjects (id int PRIMARY KEY, key_name text NOT NULL, c bytea)"
line=$(psql_q -F ' ' <<SQL
CREATE TEMP TABLE r AS SELECT run_ms(\$q\$INSERT INTO subjects SELECT g, k,
	pgkm_encrypt('value-' || g, k, g::text) FROM generate_series(1, $KEYS) g,
	LATERAL (SELECT CASE WHEN g % 2 = 0 THEN 'subject_' ELSE 'customer:' END || g AS k) n\$q\$)
	AS ms;
SELECT r.ms, s.unwraps FROM r, pgkm.key_cache_stats() s;
SQL
)
read -r ms unwraps <<<"$line"
echo "one value encrypted under each key in $(printf '%.2f' "$(bc -l <<<"$ms / 1000")") s: $(bc <<<"$KEYS * 1000 / $ms") encrypts/s ($unwraps token unwraps, cache size 1000)"

psql_q >/dev/null <<SQL
SELECT setseed(0.42);
CREATE TABLE mix AS SELECT r.n, s.id, s.c FROM (SELECT n, 1 + floor(random() * $KEYS)::int AS id
	FROM generate_series(1, $MIX) n) r JOIN subjects s USING (id) ORDER BY r.n;
SELECT pgkm.create_key('one_key');
CREATE TABLE one AS SELECT n, id, pgkm_encrypt('value-' || id, 'one_key', id::text) AS c FROM mix;
VACUUM ANALYZE subjects, mix, one;
SQL
distinct=$(psql_q -c "SELECT count(DISTINCT id) FROM mix")
decrypt="SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, id::text) = 'value-' || id)"
echo "== 2, 3. a random mix of $MIX values of $distinct distinct keys, $ROUNDS round(s)"

# One run of a query in a fresh session at a cache size: the first pass and the pass again,
# with the session's unwraps, evictions and unwrap time, stored in results.
run() {
	local what=$1 size=$2 round=$3 query=$4 audit=${5:-none}
	psql_q >/dev/null <<SQL
SET pgkm.key_cache_size = $size;
SET pgkm.audit_level = $audit;
CREATE TEMP TABLE r AS SELECT run_ms(\$q\$$query\$q\$) AS first_ms;
ALTER TABLE r ADD COLUMN again_ms float8;
UPDATE r SET again_ms = run_ms(\$q\$$query\$q\$);
INSERT INTO results SELECT '$what', $size, $round, r.first_ms, r.again_ms, s.unwraps,
	s.evictions, s.unwrap_ms FROM r, pgkm.key_cache_stats() s;
SQL
}
for round in $(seq "$ROUNDS"); do
	for size in $SIZES; do
		run mix "$size" "$round" "$decrypt FROM mix"
	done
	run "mix, audit_level = statement" 20000 "$round" "$decrypt FROM mix" statement
	run "one key" 1000 "$round" "$decrypt FROM one"
	run "sha256(c)" 1000 "$round" "SELECT count(*) FILTER (WHERE sha256(c) IS NOT NULL) FROM mix"
	psql_q -c "SELECT count(*) = $MIX FROM (SELECT 1 FROM mix WHERE pgkm_decrypt_text(c, id::text) = 'value-' || id) x" | grep -qx t ||
		{ echo "a value of the mix did not decrypt to its plaintext" >&2; exit 1; }
done

pgkm_psql -X -q -v ON_ERROR_STOP=1 <<SQL
\pset footer off
CREATE TEMP VIEW m AS SELECT what, size,
	percentile_cont(0.5) WITHIN GROUP (ORDER BY first_ms) AS first_ms,
	percentile_cont(0.5) WITHIN GROUP (ORDER BY again_ms) AS again_ms,
	percentile_cont(0.5) WITHIN GROUP (ORDER BY unwraps) AS unwraps,
	percentile_cont(0.5) WITHIN GROUP (ORDER BY evictions) AS evictions,
	sum(unwraps) AS all_unwraps, sum(unwrap_ms) AS all_unwrap_ms
	FROM results GROUP BY what, size;
SELECT round(sum(all_unwraps) / (sum(all_unwrap_ms) / 1000)) AS "token unwraps/s",
	round((sum(all_unwrap_ms) / sum(all_unwraps) * 1000)::numeric, 1) AS "us per unwrap",
	sum(all_unwraps) AS "unwraps measured"
	FROM m WHERE what LIKE 'mix%';
SELECT CASE WHEN what = 'mix' THEN 'mix, key_cache_size ' || size
	WHEN what LIKE 'mix%' THEN what || ', size ' || size ELSE what END AS decrypting,
	round(first_ms) AS "first pass ms", round($MIX / (first_ms / 1000)) AS "rows/s",
	round((first_ms / (SELECT first_ms FROM m WHERE what = 'one key'))::numeric, 2)
		AS "x one key",
	round((first_ms / (SELECT again_ms FROM m WHERE what = 'sha256(c)'))::numeric, 2)
		AS "x sha256",
	unwraps, evictions,
	round(again_ms) AS "again ms", round($MIX / (again_ms / 1000)) AS "again rows/s",
	round((again_ms / (SELECT again_ms FROM m WHERE what = 'one key'))::numeric, 2)
		AS "again x one key"
	FROM m ORDER BY what = 'mix' DESC, what LIKE 'mix%' DESC, size, what;
SQL
echo "first pass: a fresh session (empty cache); again: the same mix in that session. x one key,"
echo "x sha256: time ratios against the same number of values under one cached key (its second"
echo "pass) and against sha256() over the mix's ciphertexts. A miss costs a catalog read and an"
echo "unwrap; at size 100 and 1000 most of the mix misses. Audit off but in the row that says"
echo "otherwise."
