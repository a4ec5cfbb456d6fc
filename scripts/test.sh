#!/usr/bin/env bash
# make test: installs what is missing, builds, runs every suite (unit, pg_regress,
# scenarios, integration, 60 s of libFuzzer). Exits 0 only if all pass; the last line sums
# up every suite.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

scripts/deps.sh || exit 1
echo "== build"
scripts/build.sh || exit 1

status=0
echo "== format (clang-format)"
scripts/format-check.sh || status=1
echo "== unit tests (GoogleTest)"
scripts/unit.sh 2>&1 | tee "$logs/unit" || status=1
echo "== regression tests (pg_regress)"
test/regress.sh 2>&1 | tee "$logs/regress" || status=1
echo "== scenarios (server start-up, loading, secrets)"
test/scenarios.sh 2>&1 | tee "$logs/scenarios" || status=1
echo "== README examples (every sql block of README.md, run)"
test/readme_examples.sh 2>&1 | tee -a "$logs/scenarios" || status=1
echo "== integration tests (GoogleTest + libpq: workers, concurrency, crashes)"
scripts/integration.sh 2>&1 | tee "$logs/integration" || status=1
echo "== fuzz (libFuzzer, 60 s)"
scripts/fuzz.sh 60 2>&1 | tee "$logs/fuzz" || status=1

# ctest: "100% tests passed, 0 tests failed out of 57"
unit_failed=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$logs/unit")
unit_total=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$logs/unit")
regress_ok=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok [0-9]+ ' "$logs/regress")
regress_failed=$(grep -cE 'FAILED|^not ok' "$logs/regress")
scen_ok=$(grep -c '^ok ' "$logs/scenarios")
scen_failed=$(grep -c '^not ok ' "$logs/scenarios")
# integration.sh: "integration: N passed, M failed"
int_ok=$(sed -n 's/^integration: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$logs/integration")
int_failed=$(sed -n 's/^integration: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$logs/integration")
int_ok=${int_ok:-0}
int_failed=${int_failed:-1}
# fuzz.sh: "fuzz: N passed, M failed" (one per libFuzzer target)
fuzz_ok=$(sed -n 's/^fuzz: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$logs/fuzz")
fuzz_failed=$(sed -n 's/^fuzz: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$logs/fuzz")
fuzz_ok=${fuzz_ok:-0}
fuzz_failed=${fuzz_failed:-1}
passed=$(( ${unit_total:-0} - ${unit_failed:-0} + regress_ok + scen_ok + int_ok + fuzz_ok ))
failed=$(( ${unit_failed:-0} + regress_failed + scen_failed + int_failed + fuzz_failed ))
if [ -z "$unit_total" ] || [ "$regress_ok" -eq 0 ] || [ "$scen_ok" -eq 0 ] || [ "$int_ok" -eq 0 ] ||
	[ "$fuzz_ok" -eq 0 ]; then
	echo "test: a suite ran no test" >&2
	status=1
	failed=$(( failed + 1 ))
fi
[ "$failed" -eq 0 ] || status=1
echo "total: $passed passed, $failed failed"
exit $status
