#!/usr/bin/env bash
# make fuzz: builds the libFuzzer targets of test/fuzz (clang, ASan + UBSan + libFuzzer) and
# runs them for SECONDS in all (default: $FUZZ_SECONDS, else 600): fuzz_ciphertext (the
# ciphertext parser and the AES-256-GCM open path) three quarters of the time,
# fuzz_key_material the rest. Each starts from the committed seeds in test/fuzz/corpus/<target>
# with a fresh working corpus in a temporary directory, so the repository is never written.
# Any crash, sanitizer report, leak, timeout or out-of-memory fails the run (exit 1); the
# failing input is kept in build-fuzz/artifacts/ with the command that reproduces it.
# FUZZ_TARGETS="fuzz_ciphertext" runs a subset. The last line sums up:
#   "fuzz: N passed, M failed" (one per target).
#   usage: scripts/fuzz.sh [SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${FUZZ_SECONDS:-600}}
targets=(${FUZZ_TARGETS:-fuzz_ciphertext fuzz_key_material})
build=build-fuzz
artifacts=$build/artifacts

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 2 ]; then
	echo "usage: $0 [SECONDS] (at least 2)" >&2
	exit 2
fi
if ! command -v clang++ >/dev/null; then
	echo "fuzz: clang++ is missing: run scripts/deps.sh" >&2
	echo "fuzz: 0 passed, ${#targets[@]} failed"
	exit 1
fi

echo "fuzz: building $build (clang++ -fsanitize=fuzzer,address,undefined)"
if ! { cmake -S test/fuzz -B "$build" -DCMAKE_CXX_COMPILER=clang++ \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
	cmake --build "$build" -j2 >/dev/null; }; then
	echo "fuzz: the build failed (libclang-rt-14-dev provides the libFuzzer runtime)" >&2
	echo "fuzz: 0 passed, ${#targets[@]} failed"
	exit 1
fi
mkdir -p "$artifacts"
work=$(mktemp -d /tmp/pgkm-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Seconds for one target: fuzz_key_material gets a quarter (at least 1 s) when both run.
share()
{
	local target=$1
	if [ ${#targets[@]} -eq 1 ]; then
		echo "$seconds"
	elif [ "$target" = fuzz_key_material ]; then
		echo $(( seconds / 4 > 0 ? seconds / 4 : 1 ))
	else
		echo $(( (seconds - (seconds / 4 > 0 ? seconds / 4 : 1)) / (${#targets[@]} - 1) ))
	fi
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
passed=0
failed=0
for target in "${targets[@]}"; do
	t=$(share "$target")
	seeds=test/fuzz/corpus/$target
	mkdir -p "$work/$target"
	dict=()
	[ -f "test/fuzz/$target.dict" ] && dict=("-dict=test/fuzz/$target.dict")
	log=$work/$target.log
	rm -f "$artifacts/$target-"*
	echo "== fuzz $target for ${t} s (seeds: $(find "$seeds" -type f | wc -l) files)"
	# The per-input timeout and the memory limit make a hang or a blow-up a finding.
	timeout -k 30 $(( t + 300 )) "$build/$target" -max_total_time="$t" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/$target-" \
		"${dict[@]}" "$work/$target" "$seeds" >"$log" 2>&1
	rc=$?
	done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
	corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$done_line")
	findings=$(grep -cE '^==[0-9]+==ERROR|^SUMMARY: |runtime error:|property violated|^ERROR: libFuzzer' "$log")
	echo "fuzz: $target: ${execs:-0} execs (${rate:-0}/s), cov: ${cov:-?}, ft: ${ft:-?}, corpus: ${corp:-?}"
	if [ "$rc" -eq 0 ] && [ "$findings" -eq 0 ] && [ -n "$done_line" ] && [ "${execs:-0}" -gt 0 ]; then
		echo "fuzz: $target: ok, no finding"
		passed=$(( passed + 1 ))
	else
		echo "fuzz: $target: FAILED (exit $rc, $findings report lines)" >&2
		grep -E -A25 '^==[0-9]+==ERROR|runtime error:|property violated|^ERROR: libFuzzer' "$log" | head -60 >&2
		for a in "$artifacts/$target-"*; do
			[ -e "$a" ] && echo "fuzz: reproduce with: $build/$target $a" >&2
		done
		failed=$(( failed + 1 ))
	fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
