#!/usr/bin/env bash
# Runs the integration tests (test/integration: GoogleTest + libpq, issue 3) against the
# pgkm that `make install` installed. Builds nothing: scripts/build.sh builds
# build/pgkm_integration. Each test starts its own throwaway cluster and SoftHSM2 token in
# /tmp/pgkm-it.*, run as the postgres OS user when this runs as root, and removes it
# (PGKM_KEEP=1 keeps them). Arguments go to the test binary (e.g. --gtest_filter=...).
# The last line sums up: "integration: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${PGKM_INTEGRATION_BIN:-build/pgkm_integration}
if [ ! -x "$bin" ]; then
	echo "integration: $bin is missing: run scripts/build.sh first" >&2
	echo "integration: 0 passed, 1 failed"
	exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every wait in the tests has its own timeout; this one only guards against a hang.
timeout -k 30 1200 "$bin" --gtest_color=no "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$log" | tail -1)
failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$log" | tail -1)
passed=${passed:-0}
failed=${failed:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
	failed=1 # crashed, or hung and was killed, before GoogleTest's summary
fi
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
	echo "integration: no test ran" >&2
	status=1
	failed=1
fi
echo "integration: $passed passed, $failed failed"
exit "$status"
