#!/usr/bin/env bash
# Benchmark of searchable encryption (pgkm 1.4), measured in one run on a throwaway cluster:
#  1. lookup latency by equality on ROWS rows of e-mail addresses: pgbench (prepared protocol,
#     one client, one lookup per transaction, one random existing e-mail each) looking a row
#     up through a btree index by
#       plaintext   email = $1
#       det         email_det = pgkm_encrypt_det($1, 'user_email')
#       det_all     email_det = ANY(pgkm_encrypt_det_all($1, 'user_email')): the query that
#                   keeps working during a rotation, with the key at one version
#       det_rot     the same during a rotation: the key has a new active version and the row
#                   is still under the old one (two values to look up, the second matches)
#       bidx        email_bidx = ANY(pgkm_blind_index_all($1, 'user_email_bidx')) AND
#                   pgkm_decrypt_text(email_enc) = $1 (the candidates' check: a truncated
#                   HMAC may match another value)
#     Rounds are interleaved so that drift affects every variant alike; it prints the median
#     per-lookup latency (from pgbench's per-transaction log), TPS and the ratio to plaintext,
#     and confirms the index scans with EXPLAIN and the indexes' idx_scan counters.
#     pgbench cannot send a string it did not read: $1 is the random row number and every
#     variant builds the e-mail 'user<n>@example.com' from it in the statement.
#  2. rows/s of pgkm_encrypt_det, pgkm_blind_index, pgkm_encrypt and the built-in sha256()
#     over the same ROWS e-mail addresses (bytea), one core, median of 3 runs of
#     SELECT count(f(v)), the bare scan subtracted.
# Not a test: it prints the issue's target next to the figures, it does not judge.
#   bench/searchable.sh                                   1,000,000 rows, 3 rounds of 10 s
#   ROWS=100000 ROUNDS=1 LOOKUP_SECONDS=5 bench/searchable.sh    a quicker run
#   NO_BUILD=1 bench/searchable.sh                        uses the installed pgkm as it is
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
ROUNDS=${ROUNDS:-3}
LOOKUP_SECONDS=${LOOKUP_SECONDS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-3}
scripts/deps.sh
[ -n "${NO_BUILD:-}" ] || scripts/build.sh
. test/lib/cluster.sh
pgkm_cluster_init
as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<CONF
shared_buffers = 1GB
max_wal_size = 4GB
max_parallel_workers_per_gather = 0
jit = off
CONF
pgkm_cluster_start
psql_q() { pgkm_psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
load_start=$EPOCHREALTIME

echo "== loading $ROWS rows"
psql_q <<SQL
CREATE EXTENSION pgkm;
CREATE EXTENSION pg_prewarm;
SELECT pgkm.create_key('user_email', algorithm => 'aes-256-siv') > 0;
SELECT pgkm.create_key('user_email_rot', algorithm => 'aes-256-siv') > 0;
SELECT pgkm.create_key('user_email_bidx', algorithm => 'blind-index') > 0;
SELECT pgkm.create_key('user_email_enc') > 0;
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, email_det bytea NOT NULL,
	email_det_rot bytea NOT NULL, email_bidx bytea NOT NULL, email_enc bytea NOT NULL);
INSERT INTO users SELECT i, e, pgkm_encrypt_det(e, 'user_email'),
	pgkm_encrypt_det(e, 'user_email_rot'), pgkm_blind_index(e, 'user_email_bidx'),
	pgkm_encrypt(e, 'user_email_enc')
	FROM generate_series(1, $ROWS) i, LATERAL (SELECT 'user' || i || '@example.com' AS e) x;
CREATE INDEX users_email ON users (email);
CREATE INDEX users_email_det ON users (email_det);
CREATE INDEX users_email_det_rot ON users (email_det_rot);
CREATE INDEX users_email_bidx ON users (email_bidx);
-- The same values as bytea, for the throughput of the functions and of sha256().
CREATE TABLE tv AS SELECT convert_to(email, 'UTF8') AS v FROM users;
-- A rotation under way: version 2 is active, every row is still under version 1.
SELECT pgkm.rotate_key('user_email_rot') = 2;
VACUUM ANALYZE users, tv;
CHECKPOINT;
SQL
echo "loaded in $(awk -v a="$load_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s;" \
	"PostgreSQL $(psql_q -c "SHOW server_version"), pgkm $(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'pgkm'")," \
	"$(nproc) CPUs, database collation $(psql_q -c "SELECT datcollate FROM pg_database WHERE datname = current_database()")"
psql_q -c "SELECT 'table ' || pg_size_pretty(pg_table_size('users')) || ', indexes: ' ||
	string_agg(c.relname || ' ' || pg_size_pretty(pg_relation_size(c.oid)), ', ' ORDER BY c.relname)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'users'::regclass"

variants=(plaintext det det_all det_rot bidx)
declare -A where_of index_of
# The e-mail of row \$1, as every variant builds it.
e="('user' || \$1::bigint || '@example.com')"
where_of[plaintext]="email = $e"
where_of[det]="email_det = pgkm_encrypt_det($e, 'user_email')"
where_of[det_all]="email_det = ANY(pgkm_encrypt_det_all($e, 'user_email'))"
where_of[det_rot]="email_det_rot = ANY(pgkm_encrypt_det_all($e, 'user_email_rot'))"
where_of[bidx]="email_bidx = ANY(pgkm_blind_index_all($e, 'user_email_bidx')) AND pgkm_decrypt_text(email_enc) = $e"
index_of[plaintext]=users_email
index_of[det]=users_email_det
index_of[det_all]=users_email_det
index_of[det_rot]=users_email_det_rot
index_of[bidx]=users_email_bidx

echo "== plans: the generic plan of each prepared statement, and the plans the plan cache chose"
echo "   in 10 executions with the default plan_cache_mode = auto (custom plans are planned anew at"
echo "   each execution)"
executions=()
for i in $(seq 10); do executions+=(-c "EXECUTE q($((i * 4711 % ROWS + 1)))"); done
for v in "${variants[@]}"; do
	echo "-- $v: SELECT id FROM users WHERE ${where_of[$v]}"
	psql_q -c "PREPARE q(bigint) AS SELECT id FROM users WHERE ${where_of[$v]}" "${executions[@]}" \
		-c "SELECT 'auto: ' || generic_plans || ' generic, ' || custom_plans || ' custom' FROM pg_prepared_statements" \
		-c "SET plan_cache_mode = force_generic_plan" \
		-c "EXPLAIN (COSTS OFF) EXECUTE q(4711)" | grep -v '^[0-9]*$' | sed 's/^/   /'
done

# Every variant finds exactly its row, for a sample of rows (the lookups measure real work).
psql_q <<SQL
DO \$\$
DECLARE
	r bigint;
	found bigint[];
BEGIN
	FOR k IN 1..200 LOOP
		r := 1 + (k * 7919) % $ROWS;
		$(for v in "${variants[@]}"; do
			printf "found := ARRAY(SELECT id FROM users WHERE %s);\n" "${where_of[$v]//\$1/r}"
			printf "\t\tIF found IS DISTINCT FROM ARRAY[r] THEN RAISE EXCEPTION '%s: row %% found as %%', r, found; END IF;\n" "$v"
		done)
	END LOOP;
END
\$\$;
SQL

for v in "${variants[@]}"; do
	cat >"$PGKM_WORK/$v.sql" <<SQL
\\set r random(1, $ROWS)
SELECT id FROM users WHERE ${where_of[$v]//\$1/:r};
SQL
done
[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK"/*.sql
psql_q -c "SELECT sum(pg_prewarm(c.oid)) > 0 FROM pg_class c WHERE c.relname IN ('users',
	'users_email', 'users_email_det', 'users_email_det_rot', 'users_email_bidx')" >/dev/null

# Runs pgbench on variant $1 for $2 seconds with plan_cache_mode $4, logging each transaction
# under prefix $3; sets tps and lat (median latency in us).
run_pgbench() {
	local out
	rm -f "$PGKM_WORK/$3".*
	out=$(as_pg env PGOPTIONS="-c plan_cache_mode=$4" "$PG_BINDIR/pgbench" -h "$PGKM_WORK" -p "$PGKM_PORT" -U postgres -n -M prepared \
		-c 1 -j 1 -T "$2" -l --log-prefix="$PGKM_WORK/$3" -f "$PGKM_WORK/$1.sql" postgres 2>&1) ||
		{ echo "pgbench failed: $out" >&2; return 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
	lat=$(cat "$PGKM_WORK/$3".* | awk '{ print $3 }' | median)
}
idx_scans() { psql_q -c "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = '$1'"; }
cpu_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }

modes=(auto force_generic_plan)
echo "== warm-up, ${WARMUP_SECONDS}s per variant"
for v in "${variants[@]}"; do run_pgbench "$v" "$WARMUP_SECONDS" warm auto; done

echo "== lookups: pgbench -M prepared, 1 client, ${LOOKUP_SECONDS}s per run, $ROUNDS round(s), interleaved;"
echo "   each variant under plan_cache_mode = auto (the default), then force_generic_plan"
echo "   (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
declare -A lat_of tps_of
for round in $(seq "$ROUNDS"); do
	for v in "${variants[@]}"; do for m in "${modes[@]}"; do
		scans0=$(idx_scans "${index_of[$v]}")
		read -r busy0 idle0 <<<"$(cpu_ticks)"
		run_pgbench "$v" "$LOOKUP_SECONDS" "lk" "$m"
		read -r busy1 idle1 <<<"$(cpu_ticks)"
		sleep 0.6 # the statistics are flushed at most every 500 ms
		scans=$(($(idx_scans "${index_of[$v]}") - scans0))
		txns=$(cat "$PGKM_WORK"/lk.* | wc -l)
		lat_of[$v.$m]+=" $lat" tps_of[$v.$m]+=" $tps"
		printf 'round %d/%d  %-7s %-9s  median %7.1f us  tps %8.1f  %7d lookups, %7d scans of %s  machine busy %.0f%%\n' \
			"$round" "$ROUNDS" "${m%%_*}" "$v" "$lat" "$tps" "$txns" "$scans" "${index_of[$v]}" \
			"$(awk -v b="$((busy1 - busy0))" -v i="$((idle1 - idle0))" 'BEGIN { print 100 * b / (b + i) }')"
	done; done
done
echo "   (load average after: $(cut -d' ' -f1-3 /proc/loadavg); 'machine busy': the share of both CPUs in use,"
echo "   this run's pgbench and server included; they take turns, so about 50% when nothing else runs)"

echo "== throughput: SELECT count(f(v)) over $ROWS e-mail addresses (bytea, $(psql_q -c "SELECT round(avg(length(v)), 1) FROM tv") bytes on average), median of 3, scan subtracted"
pgkm_psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
\pset footer off
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
CREATE TEMP TABLE results AS SELECT * FROM (VALUES
	(1, 'scan: sum(length(v))', bench_ms('SELECT sum(length(v)) FROM tv')),
	(2, 'sha256(v)', bench_ms('SELECT count(sha256(v)) FROM tv')),
	(3, 'pgkm_encrypt(v, k)', bench_ms('SELECT count(pgkm_encrypt(v, ''user_email_enc'')) FROM tv')),
	(4, 'pgkm_encrypt_det(v, k)', bench_ms('SELECT count(pgkm_encrypt_det(v, ''user_email'')) FROM tv')),
	(5, 'pgkm_blind_index(v, k)', bench_ms('SELECT count(pgkm_blind_index(v, ''user_email_bidx'')) FROM tv')))
	AS r(ord, what, ms);
WITH n AS (SELECT count(*) AS rows FROM tv),
s AS (SELECT ms AS scan FROM results WHERE ord = 1),
r AS (SELECT ord, what, ms, greatest(ms - scan, 0.001) AS net FROM results, s),
p AS (SELECT max(net) FILTER (WHERE ord = 2) AS sha, max(net) FILTER (WHERE ord = 3) AS enc FROM r)
SELECT what, round(ms::numeric, 1) AS ms, round((ms * 1e6 / rows)::numeric) AS "ns/row",
	CASE WHEN ord > 1 THEN round((net * 1e6 / rows)::numeric) END AS "net ns/row",
	CASE WHEN ord > 1 THEN round((rows / (net / 1000))::numeric) END AS "net rows/s",
	CASE WHEN ord > 1 THEN round((net / enc)::numeric, 2) END AS "time/pgkm_encrypt",
	CASE WHEN ord > 1 THEN round((net / sha)::numeric, 2) END AS "time/sha256"
	FROM r, p, n ORDER BY ord;
SQL

echo "== lookup results (median of $ROUNDS runs' medians; ratios to plaintext in the same plan_cache_mode)"
printf '%-10s %11s %9s %7s   %11s %9s %7s   %s\n' "" "auto: us" TPS ratio "generic: us" TPS ratio target
for v in "${variants[@]}"; do
	line=$(printf '%-10s' "$v")
	for m in "${modes[@]}"; do
		# shellcheck disable=SC2086 # the lists are split on purpose
		line+=$(awk -v v="$v" -v lat="$(printf '%s\n' ${lat_of[$v.$m]} | median)" \
			-v tps="$(printf '%s\n' ${tps_of[$v.$m]} | median)" \
			-v base="$(printf '%s\n' ${lat_of[plaintext.$m]} | median)" 'BEGIN {
			printf " %11.1f %9.1f %7s  ", lat, tps, (v == "plaintext") ? "-" : sprintf("%.2f", lat / base)
		}')
	done
	[ "$v" = plaintext ] || line+=" <= 2"
	echo "$line"
done
