#!/usr/bin/env bash
# Benchmark of online rotation, measured in one run on a throwaway cluster:
#  1. re-encryption of ROWS rows of 64-byte values by the worker (no throttling) against
#     the floor of a plain "UPDATE t SET v = v" walking the same rows in the same batches;
#  2. pgbench TPS of a read/write workload on the protected table, without and with a job
#     running at the default throttling;
#  3. master-key rotation over VERSIONS key versions with SoftHSM2.
# Not a test: it prints, it does not judge.  ROWS=100000 VERSIONS=1000 for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
VERSIONS=${VERSIONS:-10000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
scripts/deps.sh
scripts/build.sh
. test/lib/cluster.sh
pgkm_cluster_init
as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<CONF
shared_buffers = 1GB
max_wal_size = 4GB
jit = off
CONF
pgkm_cluster_start
psql_q() { pgkm_psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

echo "== loading $ROWS rows"
psql_q <<SQL
CREATE EXTENSION pgkm;
SELECT pgkm.create_key('bench') > 0;
CREATE TABLE t (id bigint PRIMARY KEY, v bytea, other int NOT NULL DEFAULT 0);
INSERT INTO t SELECT i, pgkm_encrypt(substr(decode(repeat(md5(i::text), 4), 'hex'), 1, 64), 'bench', i::text)
	FROM generate_series(1, $ROWS) i;
SELECT pgkm.protect_column('t', 'v', 'bench', 'id');
VACUUM ANALYZE t;
CREATE PROCEDURE floor_update(batch int) LANGUAGE plpgsql AS \$\$
DECLARE
	last bigint := 0;
	top bigint;
BEGIN
	LOOP
		-- EXECUTE plans each batch for its own bounds, as the worker's statements are.
		EXECUTE format('WITH b AS (SELECT id FROM t WHERE id > %s ORDER BY id LIMIT %s'
			' FOR UPDATE SKIP LOCKED), u AS (UPDATE t SET v = v FROM b WHERE t.id = b.id'
			' RETURNING t.id) SELECT max(id) FROM u', last, batch) INTO top;
		EXIT WHEN top IS NULL;
		last := top;
		COMMIT;
	END LOOP;
END
\$\$;
SQL
batch=$(psql_q -c "SHOW pgkm.rotation_batch_size")

echo "== 1. re-encryption against the plain UPDATE floor (batches of $batch rows)"
floor_ms=$(psql_q -c "\\timing on" -c "CALL floor_update($batch)" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
psql_q -c "VACUUM t" >/dev/null
psql_q <<SQL >/dev/null
ALTER SYSTEM SET pgkm.rotation_batch_delay = 0;
ALTER SYSTEM SET pgkm.rotation_max_rows_per_second = 0;
SELECT pg_reload_conf();
SQL
sleep 1
psql_q -c "SELECT pgkm.rotate_key('bench')" >/dev/null
job=$(psql_q -c "SELECT max(job_id) FROM pgkm.rotation_jobs")
until [ "$(psql_q -c "SELECT state FROM pgkm.rotation_jobs WHERE job_id = $job")" = done ]; do sleep 0.2; done
job_ms=$(psql_q -c "SELECT round(extract(epoch FROM finished_at - started_at) * 1000) FROM pgkm.rotation_jobs WHERE job_id = $job")
psql_q -c "SELECT 'floor (plain UPDATE t SET v = v): ' || round($floor_ms) || ' ms, ' || round($ROWS / ($floor_ms / 1000.0)) || ' rows/s'"
psql_q -c "SELECT 're-encryption job:                ' || $job_ms || ' ms, ' || round($ROWS / ($job_ms / 1000.0)) || ' rows/s'"
psql_q -c "SELECT 'ratio job / floor: ' || round($job_ms / $floor_ms, 2) || '  [target <= 1.5]'"
psql_q <<SQL >/dev/null
ALTER SYSTEM RESET pgkm.rotation_batch_delay;
ALTER SYSTEM RESET pgkm.rotation_max_rows_per_second;
SELECT pg_reload_conf();
SQL
psql_q -c "VACUUM ANALYZE t" >/dev/null

echo "== 2. pgbench read/write on the protected table, ${SECONDS_PER_RUN}s each, 2 clients"
cat > "$PGKM_WORK/rw.sql" <<SQL
\\set id random(1, $ROWS)
SELECT pgkm_decrypt(v, :id::text) FROM t WHERE id = :id;
UPDATE t SET other = other + 1 WHERE id = :id;
SQL
[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK/rw.sql"
bench_tps() {
	as_pg "$PG_BINDIR/pgbench" -h "$PGKM_WORK" -p "$PGKM_PORT" -U postgres -n -c 2 -j 2 \
		-T "$SECONDS_PER_RUN" -f "$PGKM_WORK/rw.sql" postgres 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
tps_idle=$(bench_tps)
psql_q -c "SELECT pgkm.rotate_key('bench')" >/dev/null
job=$(psql_q -c "SELECT max(job_id) FROM pgkm.rotation_jobs")
tps_job=$(bench_tps)
done_rows=$(psql_q -c "SELECT rows_done FROM pgkm.rotation_jobs WHERE job_id = $job")
psql_q -c "SELECT pgkm.cancel_job(job_id) FROM pgkm.rotation_jobs WHERE job_id = $job AND state IN ('pending', 'running', 'paused')" >/dev/null
psql_q -c "SELECT 'TPS without a job: ' || $tps_idle || ', with a job at default throttling: ' || $tps_job || ' (job re-encrypted ' || $done_rows || ' rows meanwhile)'"
psql_q -c "SELECT 'TPS drop: ' || round(100 * (1 - $tps_job / $tps_idle), 1) || '%  [target <= 20%]'"

echo "== 3. master-key rotation over $VERSIONS key versions"
keys=$(( VERSIONS / 100 ))
psql_q <<SQL >/dev/null
DO \$\$
BEGIN
	FOR k IN 1..$keys LOOP
		PERFORM pgkm.create_key('mk_' || k);
		FOR r IN 2..100 LOOP
			PERFORM pgkm.rotate_key('mk_' || k);
		END LOOP;
	END LOOP;
END
\$\$;
SQL
versions=$(psql_q -c "SELECT count(*) FROM pgkm.key_versions WHERE wrapped_dek IS NOT NULL")
ms=$(psql_q -c "\\timing on" -c "SELECT pgkm.rotate_master_key()" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
psql_q -c "SELECT 'rotate_master_key: ' || $versions || ' key versions re-wrapped in ' || round($ms / 1000.0, 2) || ' s  [target < 10 s]'"
