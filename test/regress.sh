#!/usr/bin/env bash
# Runs the pg_regress suites (sql/, expected/) against a throwaway cluster with a SoftHSM2
# token. The extension must be installed (make install). Prints pg_regress's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
. test/lib/cluster.sh

tests=${REGRESS_ONLY:-$(sed -n "s/^REGRESS = //p" Makefile)}
pgkm_cluster_init

# Fixtures the error tests need: a wrong PIN, a PIN file others can read, and a foreign
# AES key in the token that did not wrap any DEK.
as_pg sh -c "umask 077; echo 00000000 > '$PGKM_WORK/pin.wrong'"
as_pg sh -c "echo 00000000 > '$PGKM_WORK/pin.open'; chmod 644 '$PGKM_WORK/pin.open'"
# A PIN file whose content is a random marker, which no output may ever show (attacks).
as_pg sh -c "umask 077; echo pgkm-marker-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n') > '$PGKM_WORK/pin.marker'"
as_pg pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$PGKM_TOKEN_LABEL" --login \
	--pin "$(as_pg cat "$PGKM_PIN_FILE")" --keygen --key-type AES:32 --label pgkm-foreign \
	--sensitive --usage-wrap >/dev/null 2>&1

pgkm_cluster_start
as_pg mkdir "$PGKM_WORK/regress"
cp -r sql expected "$PGKM_WORK/regress/"
[ "$(id -u)" -eq 0 ] && chown -R "$PGKM_OS_USER" "$PGKM_WORK/regress"

status=0
as_pg env PGKM_TEST_DIR="$PGKM_WORK" \
	"$(dirname "$("$PG_BINDIR/pg_config" --pgxs)")/../test/regress/pg_regress" \
	--host="$PGKM_WORK" --port="$PGKM_PORT" --user=postgres \
	--bindir="$PG_BINDIR" --inputdir="$PGKM_WORK/regress" --outputdir="$PGKM_WORK/regress" \
	--dbname=contrib_regression $tests | tee "$PGKM_WORK/regress.out" || status=$?
if [ $status -ne 0 ]; then
	[ -f "$PGKM_WORK/regress/regression.diffs" ] && cat "$PGKM_WORK/regress/regression.diffs"
	mkdir -p results && cp "$PGKM_WORK/regress/regression.diffs" results/ 2>/dev/null || true
	echo "--- server log (tail)"; tail -50 "$PGKM_WORK/server.log"
fi
# Secrets must never reach the server log: the token PIN is random for this run.
if grep -qF "$(as_pg cat "$PGKM_PIN_FILE")" "$PGKM_WORK/server.log"; then
	echo "regress: the token PIN appeared in the server log" >&2
	status=1
fi
exit $status
