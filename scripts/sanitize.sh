#!/usr/bin/env bash
# make test SANITIZE=1: the unit, integration, pg_regress and scenario tests with pgkm built
# with AddressSanitizer and UndefinedBehaviorSanitizer. Everything sanitized is built under
# build-asan/, never over the tree's own objects: the unit tests and the integration binary
# (CMake, PGKM_SANITIZE=ON), and pgkm.so (make SANITIZE=1) from a copy of the sources,
# installed into a private relocated PostgreSQL (scripts/stage.sh). PostgreSQL itself is
# not instrumented, so its servers start with the ASan runtime preloaded (PGKM_SERVER_ENV,
# honoured by test/lib/cluster.sh and the integration fixture). ASan reports of every server
# process go to one directory, UBSan reports to the server logs, which the clusters copy out
# (PGKM_SERVER_LOG_DIR). The run fails if a test fails or if a report appears there, in a
# server log or in a test's output. The last line sums up.
#
# Environment: PGKM_SANITIZE_SUITES (default "unit integration regress scenarios");
# PGKM_SANITIZE_PG, a directory for the staged PostgreSQL (default: a temporary one,
# removed after); PGKM_SANITIZE_KEEP=1 keeps the reports and server logs.
# Arguments go to the integration binary (e.g. --gtest_filter=...).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
suites=${PGKM_SANITIZE_SUITES:-unit integration regress scenarios}
jobs=$(nproc)

scripts/deps.sh || exit 1

work=$(mktemp -d /tmp/pgkm-sanitize.XXXXXX)
pgdir=${PGKM_SANITIZE_PG:-$work/pg}
cleanup() {
	if [ -n "${PGKM_SANITIZE_KEEP:-}" ]; then
		echo "sanitize: kept $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
reports=$work/reports # ASan log_path of the servers: one file per reporting process
serverlogs=$work/server-logs
mkdir -p "$reports" "$serverlogs" "$work/out"
chmod 755 "$work"
[ "$(id -u)" -eq 0 ] && chown postgres "$reports"

echo "== build (sanitized: build-asan/)"
build_started=$SECONDS
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGKM_SANITIZE=ON >/dev/null &&
	cmake --build build-asan -j"$jobs" >/dev/null || exit 1
# pgkm.so from a copy of the sources, so the tree's objects stay unsanitized. PGXS tracks no
# header dependencies: a header newer than the last build means a clean build.
tree=build-asan/pgxs
mkdir -p "$tree"
if [ -f "$tree/pgkm.so" ] && [ -n "$(find include src -newer "$tree/pgkm.so" -name '*.hpp')" ]; then
	make -s -C "$tree" clean >/dev/null
fi
tar -cf - --exclude='*.o' --exclude='*.so' --exclude='*.bc' Makefile pgkm.control ./*.sql \
	include src | tar -C "$tree" -xf - || exit 1
scripts/stage.sh "$pgdir" -C "$tree" SANITIZE=1 >/dev/null || exit 1
bindir=$pgdir$(pg_config --bindir)
so=$pgdir$(pg_config --pkglibdir)/pgkm.so
# The staged pgkm.so must be instrumented (else this run proves nothing), and a sanitized
# pgkm.so loads only into a server that has the ASan runtime: a server that starts has it.
symbols=$(nm -D "$so")
if ! grep -q __asan_report_load <<<"$symbols" || ! grep -q '__ubsan_handle_.*_abort' <<<"$symbols"; then
	echo "sanitize: $so is not built with ASan and UBSan" >&2
	exit 1
fi
asan_runtime=$(readlink -f "$(gcc -print-file-name=libasan.so)")
# Two workarounds preloaded with the runtime (see the file): a start-up hang, UBSan's options.
preload=$pgdir/sanitize/libserver_preload.so
mkdir -p "$(dirname "$preload")"
cc -shared -fPIC -O2 -o "$preload" test/sanitize/server_preload.c || exit 1
chmod -R a+rX "$pgdir"
echo "sanitize: built in $((SECONDS - build_started)) s"

# The servers: ASan reports go to $reports/asan.<pid>, UBSan reports to the server log
# (server_preload.c says why), copied to $serverlogs. abort_on_error makes the failing process
# die by SIGABRT, which the postmaster treats as a crash; the server frees by process exit, so
# leak detection is off there.
export PGKM_PG_BINDIR=$bindir
export PGKM_SERVER_LOG_DIR=$serverlogs
export PGKM_SERVER_ENV="LD_PRELOAD=$asan_runtime:$preload \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1:log_path=$reports/asan"
# The test programs themselves (unit tests, integration binary) report to stderr.
export ASAN_OPTIONS=detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
declare -A passed failed seconds
count() { # suite, passed, failed
	passed[$1]=${2:-0}
	failed[$1]=${3:-0}
}
for suite in $suites; do
	out=$work/out/$suite
	suite_started=$SECONDS
	case $suite in
	unit)
		echo "== unit tests (GoogleTest, sanitized)"
		ctest --test-dir build-asan --output-on-failure -j"$jobs" 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		total=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$out")
		bad=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$out")
		count unit $(( ${total:-0} - ${bad:-0} )) "${bad:-1}"
		;;
	integration)
		echo "== integration tests (sanitized pgkm.so and test binary)"
		# Tests that measure a backend's memory itself run in the plain pass only: under ASan,
		# RSS is the sanitizer's (freed memory waits in its quarantine; shadow pages), a scan
		# of the whole address space reads terabytes of shadow mappings, and mlock is a no-op
		# that always succeeds (ASan intercepts it). So they would measure ASan, not pgkm.
		# The large-value tests run here too.
		filter=()
		[ $# -eq 0 ] && filter=(--gtest_filter='-ResourceLimitsRows.*:ResourceLimitsKeys.*:Secrets.KeysOnlyInLockedMemoryAndWipedFromTheCache:Secrets.MlockRefusedWarnsOnceAndWorks:Secrets.EvictedKeyIsWipedFromMemory:ManyKeys.MemoryIsBoundedBySmallCache:Verify.ConstantMemoryOverTheWholeTable')
		PGKM_INTEGRATION_BIN=build-asan/pgkm_integration scripts/integration.sh "${filter[@]}" "$@" 2>&1 |
			tee "$out"
		rc=${PIPESTATUS[0]}
		count integration \
			"$(sed -n 's/^integration: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$out")" \
			"$(sed -n 's/^integration: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$out")"
		;;
	regress)
		echo "== regression tests (pg_regress, sanitized pgkm.so)"
		test/regress.sh 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		count regress "$(grep -cE '^(ok|test) .* \.\.\. ok|^ok [0-9]+ ' "$out")" \
			"$(grep -cE 'FAILED|^not ok' "$out")"
		;;
	scenarios)
		echo "== scenarios (sanitized pgkm.so)"
		test/scenarios.sh 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		count scenarios "$(grep -c '^ok ' "$out")" "$(grep -c '^not ok ' "$out")"
		;;
	*)
		echo "sanitize: unknown suite $suite" >&2
		rc=1
		count "$suite" 0 1
		;;
	esac
	seconds[$suite]=$((SECONDS - suite_started))
	if [ "$rc" -ne 0 ] || [ "${passed[$suite]}" -eq 0 ]; then
		status=1
		[ "${failed[$suite]}" -gt 0 ] || failed[$suite]=1
	fi
done

# Every report: a file in $reports, or a sanitizer's line in a server log or a test's output.
echo "== sanitizer reports"
# (Every ASan/LSan message starts with ==pid==; UBSan's with file:line:col: runtime error:.)
pattern='^==[0-9]+==|(Address|Leak|UndefinedBehavior)Sanitizer|runtime error:'
findings=0
for f in "$reports"/*; do
	[ -e "$f" ] || continue
	echo "--- $f"
	cat "$f"
	findings=$((findings + 1))
done
for f in "$serverlogs"/* "$work"/out/*; do
	[ -e "$f" ] || continue
	if grep -qE "$pattern" "$f"; then
		echo "--- $f"
		grep -E -B2 -A20 "$pattern" "$f" | head -100
		findings=$((findings + 1))
	fi
done
[ "$findings" -eq 0 ] || status=1
echo "sanitize: $findings report(s) in $(ls "$reports" | wc -l) sanitizer log(s) and" \
	"$(ls "$serverlogs" | wc -l) server log(s)"
[ "$status" -eq 0 ] || PGKM_SANITIZE_KEEP=${PGKM_SANITIZE_KEEP:-1}

total_passed=0
total_failed=0
summary=""
for suite in $suites; do
	total_passed=$((total_passed + ${passed[$suite]}))
	total_failed=$((total_failed + ${failed[$suite]}))
	summary+=" $suite ${passed[$suite]}/$((${passed[$suite]} + ${failed[$suite]})) (${seconds[$suite]} s);"
done
echo "sanitize (ASan+UBSan):$summary reports $findings; $((SECONDS - started)) s"
echo "total: $total_passed passed, $total_failed failed"
exit $status
