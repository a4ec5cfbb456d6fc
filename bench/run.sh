#!/usr/bin/env bash
# Benchmark of the data path against its peers, measured in one run on a throwaway cluster:
# rows per second and time ratios of pgkm_encrypt / pgkm_decrypt against pgcrypto's
# encrypt/decrypt (AES-CBC, raw key, unauthenticated), pgp_sym_encrypt/decrypt, and the
# built-in sha256() as a per-row reference. One core (no parallel query, no JIT); each
# figure is the median of 3 runs. Not a test: it prints, it does not judge.
#   bench/run.sh              1,000,000 x 64 B and 200,000 x 1 KiB (the issue's sizes)
#   ROWS64=100000 ROWS1K=20000 bench/run.sh    a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS64=${ROWS64:-1000000}
ROWS1K=${ROWS1K:-200000}
PGP_ROWS=${PGP_ROWS:-2000}
scripts/deps.sh
scripts/build.sh
. test/lib/cluster.sh
pgkm_cluster_init
as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<CONF
shared_buffers = 1GB
max_parallel_workers_per_gather = 0
jit = off
CONF
pgkm_cluster_start

cp bench/bench.sql "$PGKM_WORK/bench.sql"
[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK/bench.sql"
pgkm_psql -q -v ON_ERROR_STOP=1 -v rows64="$ROWS64" -v rows1k="$ROWS1K" -v pgp_rows="$PGP_ROWS" \
	-f "$PGKM_WORK/bench.sql"
