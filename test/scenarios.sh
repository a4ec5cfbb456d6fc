#!/usr/bin/env bash
# Scenarios that need their own server start: pgkm loaded without shared_preload_libraries,
# a server refusing a PIN file others can read, and no secret reaching the server log.
# Prints "ok N - name" / "not ok N - name" lines.
set -uo pipefail
cd "$(dirname "$0")/.."
. test/lib/cluster.sh

n=0
failures=0
# Reports one scenario result.
check() {
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failures=$((failures + 1)); fi
}

pgkm_cluster_init

# 1. Without shared_preload_libraries: CREATE EXTENSION works, the data path says why not.
as_pg sed -i "s/^shared_preload_libraries = 'pgkm'/shared_preload_libraries = ''/" \
	"$PGKM_PGDATA/postgresql.conf"
pgkm_cluster_start
out=$(pgkm_psql -v VERBOSITY=verbose -c "CREATE EXTENSION pgkm" \
	-c "SELECT pgkm_encrypt('x'::text, 'k')" 2>&1)
echo "$out" | grep -q "55000: pgkm must be loaded via shared_preload_libraries" &&
	echo "$out" | grep -q "HINT:  Add pgkm to shared_preload_libraries"
check $? "without shared_preload_libraries the data path fails with 55000 and a hint"
echo "$out" | grep -q "WARNING:  01000: pgkm is not loaded via shared_preload_libraries: no background worker"
check $? "without shared_preload_libraries CREATE EXTENSION works and warns that no worker runs"
out=$(pgkm_psql -c "SELECT pgkm.create_key('k')" 2>&1)
echo "$out" | grep -q "pgkm must be loaded via shared_preload_libraries"
check $? "without shared_preload_libraries administration fails clearly"
pgkm_cluster_stop
as_pg sed -i "s/^shared_preload_libraries = ''/shared_preload_libraries = 'pgkm'/" \
	"$PGKM_PGDATA/postgresql.conf"

# 2. A PIN file that others can read stops the server from starting.
as_pg chmod 644 "$PGKM_PIN_FILE"
if pgkm_cluster_start 2>/dev/null; then refused=1; else refused=0; fi
check $refused "the server refuses to start with a PIN file of mode 0644"
grep -q "PIN file .* must be owned by the server's OS user" "$PGKM_WORK/server.log"
check $? "the refusal names the PIN file problem in the server log"
as_pg chmod 600 "$PGKM_PIN_FILE"

# 3. With a proper PIN file it starts; a key round trip works; no secret is logged.
pgkm_cluster_start
check $? "the server starts with a PIN file of mode 0600"
as_pg sed -i "s/^log_min_messages = warning/log_min_messages = debug1/" \
	"$PGKM_PGDATA/postgresql.conf"
pgkm_psql -q -c "SELECT pg_reload_conf()" >/dev/null
out=$(pgkm_psql -At -c "SELECT pgkm.create_key('k')" \
	-c "CREATE TABLE t AS SELECT pgkm_encrypt('plaintext-marker-4711', 'k', 'c') AS v" \
	-c "SELECT pgkm_decrypt_text(v, 'c') FROM t" 2>&1)
echo "$out" | grep -q "^plaintext-marker-4711$"
check $? "round trip after start-up"
grep -q 'generated master key "pgkm-master.v1" in PKCS#11 token "pgkm-test"' "$PGKM_WORK/server.log"
check $? "generating the master key is logged"
# A failing decrypt logs its statement (log_min_error_statement); the statement holds no
# literal, and pgkm's own message holds no byte of the plaintext.
pgkm_psql -q -c "SELECT pgkm_decrypt_text(v, 'd') FROM t" >/dev/null 2>&1
pgkm_psql -q -c "SELECT pgkm_decrypt_text(pgkm_encrypt('\\xfffe'::bytea, 'k'))" >/dev/null 2>&1
pin=$(as_pg cat "$PGKM_PIN_FILE")
! grep -qF "$pin" "$PGKM_WORK/server.log" && ! grep -q "plaintext-marker-4711" "$PGKM_WORK/server.log" &&
	! grep -qi "0xff" "$PGKM_WORK/server.log"
check $? "neither the PIN nor a plaintext reaches the server log"
grep -q "ciphertext authentication failed" "$PGKM_WORK/server.log"
check $? "a failed decrypt is logged (without data)"

# 4. Many fresh backends unwrap at the same moment: SoftHSM2 misreads its token files
#    when processes log in concurrently, so pgkm serialises token calls (TokenLock).
bad=0
for round in 1 2 3; do
	for i in $(seq 1 12); do
		pgkm_psql -At -c "SELECT pgkm_decrypt_text(v, 'c') FROM t" >"$PGKM_WORK/conc.$i" 2>&1 &
	done
	wait
	for i in $(seq 1 12); do
		[ "$(cat "$PGKM_WORK/conc.$i")" = "plaintext-marker-4711" ] || bad=$((bad + 1))
	done
done
[ $bad -eq 0 ]
check $? "36 fresh backends unwrapping concurrently all decrypt ($bad failed)"

pgkm_cluster_stop
echo "scenarios: $((n - failures)) passed, $failures failed"
[ $failures -eq 0 ]
