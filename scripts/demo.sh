#!/usr/bin/env bash
# make demo: installs what is missing, builds, starts a throwaway cluster with a SoftHSM2
# token and walks through encrypt, decrypt, rotate and key status. Removes it all after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "== build"
scripts/build.sh
. test/lib/cluster.sh
echo "== throwaway cluster and SoftHSM2 token"
pgkm_cluster_init
pgkm_cluster_start
echo "   data and token in $PGKM_WORK (removed on exit)"
cp scripts/demo.sql "$PGKM_WORK/demo.sql"
[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK/demo.sql"
echo "== walkthrough"
pgkm_psql -v ON_ERROR_STOP=1 -e -f "$PGKM_WORK/demo.sql" 2>&1 | sed 's/^/   /'
echo "== server log (no key, PIN or plaintext ever appears here)"
grep -vE "listening on|database system|starting PostgreSQL" "$PGKM_WORK/server.log" |
	sed 's/^/   /' || true
echo "== done"
