#!/usr/bin/env bash
# Benchmark of the access audit (pgkm 1.2), measured in one run on one throwaway cluster with
# shared_preload_libraries = 'pgkm,pgaudit' and the server log going to files through the
# logging collector, as in production. pgbench select-only TPS (prepared protocol, 2 clients,
# 2 threads) of a point read that decrypts one protected value per transaction, under:
#   none       pgkm.audit_level = none, pgaudit.log = none (the baseline)
#   statement  pgkm.audit_level = statement
#   row        pgkm.audit_level = row
#   pgaudit    pgkm.audit_level = none, pgaudit.log = 'read' (pgaudit's session read logging
#              to the server log: the anchor)
# Rounds are interleaved (none, statement, row, pgaudit, none, ...) so that drift affects every
# configuration alike; each figure is the median of ROUNDS runs. After every run the script
# calls pgkm.audit_flush() and reports how many records the worker had not yet committed when
# pgbench finished, how long the flush took, how many records the run added, and the CPU the
# pgkm worker used meanwhile (% of one CPU; pgbench shares the machine) with the machine's
# context switches per second, and how much of the machine anything else used ("other load",
# kernel threads included, so a few % when idle; another cluster or a build on the machine
# disturbs the figures). Then it checks the chain with pgkm.verify_audit_log() and lists the
# server log's errors, warnings and crashes.
# Not a test: it prints the issue's targets next to the figures, it does not judge.
#   bench/audit.sh                                  30 s per run, 3 rounds, 100,000 rows
#   BENCH_SECONDS=10 ROUNDS=1 bench/audit.sh        a quicker run
#   NO_BUILD=1 bench/audit.sh                       uses the installed pgkm as it is
# Without pgkm 1.2 installed (no pgkm.audit_flush) the statement and row runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_SECONDS=${BENCH_SECONDS:-30}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-100000}
WARMUP_SECONDS=${WARMUP_SECONDS:-5}
scripts/deps.sh
[ -n "${NO_BUILD:-}" ] || scripts/build.sh
. test/lib/cluster.sh
pgkm_cluster_init
as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<CONF
shared_preload_libraries = 'pgkm,pgaudit'
shared_buffers = 1GB
max_parallel_workers_per_gather = 0
jit = off
logging_collector = on
log_directory = 'log'
CONF
pgkm_cluster_start
psql_q() { pgkm_psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
LOGDIR="$PGKM_PGDATA/log"

echo "== loading $ROWS rows"
psql_q >/dev/null <<SQL
CREATE EXTENSION pgkm;
CREATE EXTENSION pgaudit;
SELECT pgkm.create_key('bench_key') > 0;
CREATE TABLE acct (id bigint PRIMARY KEY, ssn bytea);
INSERT INTO acct SELECT i, pgkm_encrypt(lpad(((i * 7919) % 1000000000)::text, 9, '0'), 'bench_key', i::text)
	FROM generate_series(1, $ROWS) i;
SELECT pgkm.protect_column('acct', 'ssn', 'bench_key', 'id');
VACUUM ANALYZE acct;
CHECKPOINT;
SQL
[ "$(psql_q -c "SELECT pgkm_decrypt_text(ssn, id::text) FROM acct WHERE id = 42")" = 000332598 ] ||
	{ echo "acct: row 42 does not decrypt to its value" >&2; exit 1; }
audit=$(psql_q -c "SELECT to_regproc('pgkm.audit_flush') IS NOT NULL")
echo "PostgreSQL $(psql_q -c "SHOW server_version"), pgkm $(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'pgkm'")," \
	"pgaudit $(psql_q -c "SELECT extversion FROM pg_extension WHERE extname = 'pgaudit'"), $(nproc) CPUs;" \
	"${BENCH_SECONDS}s per run, $ROUNDS round(s), median"
echo "pgkm workers running: $(psql_q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkm worker'")"
configs=(none statement row pgaudit)
if [ "$audit" != t ]; then
	echo "pgkm.audit_flush() is missing: this pgkm has no access audit; statement and row runs skipped"
	configs=(none pgaudit)
fi

cat > "$PGKM_WORK/select.sql" <<SQL
\\set id random(1, $ROWS)
SELECT pgkm_decrypt_text(ssn, id::text) FROM acct WHERE id = :id;
SQL
[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK/select.sql"

# Sets pgkm.audit_level and pgaudit.log for the sessions started from now on.
set_levels() {
	local level=$1 pgaudit=$2 want got
	local args=(-c "ALTER SYSTEM SET pgaudit.log = '$pgaudit'")
	[ "$audit" = t ] && args+=(-c "ALTER SYSTEM SET pgkm.audit_level = '$level'")
	psql_q "${args[@]}" -c "SELECT pg_reload_conf()" >/dev/null
	want=$pgaudit
	[ "$audit" = t ] && want="$pgaudit $level"
	for _ in $(seq 100); do
		got=$(psql_q -c "SHOW pgaudit.log")
		[ "$audit" = t ] && got="$got $(psql_q -c "SHOW pgkm.audit_level")"
		[ "$got" = "$want" ] && return 0
		sleep 0.1
	done
	echo "settings not applied: want '$want', got '$got'" >&2
	return 1
}

# Runs pgbench for $1 seconds; sets tps and txns.
run_pgbench() {
	local out rc=0
	# A worker that stopped draining the ring would block the clients (audit_overflow = wait).
	out=$(as_pg timeout $(($1 + 120)) "$PG_BINDIR/pgbench" -h "$PGKM_WORK" -p "$PGKM_PORT" -U postgres -n -M prepared \
		-c 2 -j 2 -T "$1" -f "$PGKM_WORK/select.sql" postgres 2>&1) || rc=$?
	if [ "$rc" -ne 0 ]; then
		if [ "$rc" -eq 124 ]; then
			echo "pgbench did not finish within $(($1 + 120)) s: its clients were blocked" >&2
		else
			echo "pgbench failed (exit $rc):" >&2
			echo "$out" >&2
		fi
		return 1
	fi
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
}

# Newest seq committed in pgkm.audit_log, and the same after pgkm.audit_flush() with the time
# it took: sets committed, head and flush_ms (-1 when the flush failed or took over 120 s).
flush_audit() {
	local out
	committed=$(psql_q -c "SELECT coalesce(max(seq), 0) FROM pgkm.audit_log")
	if out=$(psql_q -c "SET statement_timeout = '120s'" -c "\\timing on" -c "SELECT pgkm.audit_flush()" 2>&1); then
		head=$(sed -n 1p <<<"$out")
		flush_ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out")
	else
		echo "pgkm.audit_flush() failed: $out" >&2
		head=$(psql_q -c "SELECT coalesce(max(seq), 0) FROM pgkm.audit_log")
		flush_ms=-1
	fi
}

# CPU time (clock ticks) the database's pgkm worker has used so far.
worker_ticks() {
	local pid
	pid=$(psql_q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkm worker' AND datname = current_database()")
	if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
		sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }'
	else
		echo 0
	fi
}
CLK_TCK=$(getconf CLK_TCK)
ctxt() { awk '$1 == "ctxt" { print $2 }' /proc/stat; }

# CPU ticks of the machine (busy and stolen), of the cluster's processes (live ones and those
# the postmaster reaped) and of this script's children (pgbench, psql): cpu_mark takes a
# snapshot, cpu_other sets other to the share of the machine used since by anything else, such
# as other clusters or builds on the same machine. Both run in this shell, for times.
cpu_snapshot() {
	local pm machine cluster children
	times >"$PGKM_WORK/times"
	pm=$(head -1 "$PGKM_PGDATA/postmaster.pid")
	machine=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
	cluster=$({ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '{
		p = 0
		for (i = length($0); i > 0; i--) if (substr($0, i, 1) == ")") { p = i; break }
		split(substr($0, p + 2), f, " ")
		if ($1 == pm) t += f[12] + f[13] + f[14] + f[15]
		else if (f[2] == pm) t += f[12] + f[13]
	} END { print t + 0 }')
	children=$(awk -v hz="$CLK_TCK" 'NR == 2 {
		for (i = 1; i <= 2; i++) { split($i, m, /[ms]/); t += (m[1] * 60 + m[2]) * hz }
		print int(t)
	}' "$PGKM_WORK/times")
	snapshot="$EPOCHREALTIME $machine $cluster $children"
}
cpu_mark() {
	cpu_snapshot
	cpu0=$snapshot
}
cpu_other() {
	cpu_snapshot
	other=$(awk -v a="$cpu0" -v b="$snapshot" -v hz="$CLK_TCK" -v ncpu="$(nproc)" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		o = (y[2] - x[2]) - (y[3] - x[3]) - (y[4] - x[4])
		printf "%.0f", 100 * (o > 0 ? o : 0) / (hz * (y[1] - x[1]) * ncpu)
	}')
}

audit_lines() { cat "$LOGDIR"/* 2>/dev/null | grep -c 'AUDIT: SESSION' || true; }
log_bytes() { du -cb "$LOGDIR" | tail -1 | cut -f1; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A tps_of records_of decrypts_of flush_of backlog_of failed_of
for c in "${configs[@]}"; do
	tps_of[$c]="" records_of[$c]=0 decrypts_of[$c]=0 flush_of[$c]=0 backlog_of[$c]=0 failed_of[$c]=0
done
head=0
[ "$audit" = t ] && flush_audit

echo "== warm-up, ${WARMUP_SECONDS}s"
set_levels none none
run_pgbench "$WARMUP_SECONDS"

echo "== pgbench select-only on the protected column, ${BENCH_SECONDS}s per run, 2 clients"
for round in $(seq "$ROUNDS"); do
	for c in "${configs[@]}"; do
		case $c in
		none | pgaudit) level=none ;;
		*) level=$c ;;
		esac
		pgaudit=none
		[ "$c" = pgaudit ] && pgaudit='read'
		set_levels "$level" "$pgaudit"
		lines0=$(audit_lines)
		bytes0=$(log_bytes)
		ticks0=$(worker_ticks)
		ctxt0=$(ctxt)
		cpu_mark
		run_pgbench "$BENCH_SECONDS"
		cpu_other
		switches=$(($(ctxt) - ctxt0))
		ticks=$(($(worker_ticks) - ticks0))
		tps_of[$c]+=" $tps"
		line=$(printf 'round %d/%d  %-9s  tps %9.1f  (%d transactions)  other load %d%%  pgkm worker CPU %.0f%%, %.0f context switches/s' \
			"$round" "$ROUNDS" "$c" "$tps" "$txns" "$other" \
			"$(awk -v t="$ticks" -v hz="$CLK_TCK" -v s="$BENCH_SECONDS" 'BEGIN { print 100 * t / hz / s }')" \
			"$(awk -v n="$switches" -v s="$BENCH_SECONDS" 'BEGIN { print n / s }')")
		if [ "$audit" = t ]; then
			prev=$head
			flush_audit
			read -r records decrypts uses <<<"$(psql_q -F ' ' -c "SELECT count(*),
				count(*) FILTER (WHERE action = 'decrypt'), coalesce(sum(row_count) FILTER (WHERE action = 'decrypt'), 0)
				FROM pgkm.audit_log WHERE seq > $prev AND seq <= $head")"
			backlog=$((head - committed))
			records_of[$c]=$((records_of[$c] + records))
			decrypts_of[$c]=$((decrypts_of[$c] + decrypts))
			[ "$backlog" -gt "${backlog_of[$c]}" ] && backlog_of[$c]=$backlog
			[ "$flush_ms" = -1 ] && failed_of[$c]=$((failed_of[$c] + 1))
			flush_of[$c]=$(awk -v a="${flush_of[$c]}" -v b="$flush_ms" 'BEGIN { print (b > a) ? b : a }')
			line+=$(printf '  pgkm: %d records (%d decrypt, %d uses), %.0f/s; %d not yet committed at the end, audit_flush() %.1f ms' \
				"$records" "$decrypts" "$uses" "$(awk -v r="$records" -v s="$BENCH_SECONDS" 'BEGIN { print r / s }')" \
				"$backlog" "$flush_ms")
		fi
		if [ "$c" = pgaudit ]; then
			line+=$(printf '  pgaudit: %d log lines, %.1f MB' "$(($(audit_lines) - lines0))" \
				"$(awk -v a="$bytes0" -v b="$(log_bytes)" 'BEGIN { print (b - a) / 1048576 }')")
		fi
		echo "$line"
	done
done
set_levels none none

echo "== results (median of $ROUNDS)"
# shellcheck disable=SC2086 # the lists are split on purpose
base=$(median ${tps_of[none]})
# shellcheck disable=SC2086
anchor=$(median ${tps_of[pgaudit]})
printf '%-30s %12s %10s %12s   %s\n' configuration "TPS" cost "cost/pgaudit" target
for c in "${configs[@]}"; do
	case $c in
	none) label="none (baseline)" target="" ;;
	statement) label="pgkm.audit_level = statement" target="cost <= 5%, cheaper than pgaudit" ;;
	row) label="pgkm.audit_level = row" target="cost <= 15%, cheaper than pgaudit" ;;
	pgaudit) label="pgaudit.log = 'read'" target="(the anchor)" ;;
	esac
	# shellcheck disable=SC2086
	awk -v label="$label" -v c="$c" -v tps="$(median ${tps_of[$c]})" -v base="$base" -v anchor="$anchor" \
		-v target="$target" 'BEGIN {
		cost = (base - tps) / base; acost = (base - anchor) / base
		cs = (c == "none") ? "-" : sprintf("%.1f%%", 100 * cost)
		rs = "-"
		if (c == "statement" || c == "row") rs = (acost > 0) ? sprintf("%.2f", cost / acost) : "n/a"
		printf "%-30s %12.1f %10s %12s   %s\n", label, tps, cs, rs, target
	}'
done
if [ "$audit" = t ]; then
	echo "== pgkm audit records (all rounds)"
	for c in statement row; do
		printf '%-9s  %d records, %.0f/s; worst backlog when pgbench ended: %d records, worst audit_flush(): %.1f ms\n' \
			"$c" "${records_of[$c]}" "$(awk -v r="${records_of[$c]}" -v s="$((BENCH_SECONDS * ROUNDS))" 'BEGIN { print r / s }')" \
			"${backlog_of[$c]}" "${flush_of[$c]}"
		[ "${failed_of[$c]}" -eq 0 ] || echo "$c: pgkm.audit_flush() failed or timed out ${failed_of[$c]} time(s)"
	done
	for c in none pgaudit; do
		[ "${decrypts_of[$c]}" -eq 0 ] ||
			echo "$c: ${decrypts_of[$c]} decrypt records written with pgkm.audit_level = none"
	done
	psql_q -F ' ' -c "SELECT 'verify_audit_log: ok=' || ok || ' records=' || records || ' checkpoints=' || checkpoints ||
		coalesce(' broken_seq=' || broken_seq || ' problem=' || problem, '') FROM pgkm.verify_audit_log()"
fi

echo "== server log: errors, warnings and crashes"
sleep 1 # a backend that crashes on exit
problems=$(cat "$PGKM_WORK/server.log" "$LOGDIR"/* 2>/dev/null |
	grep -E ' (WARNING|ERROR|FATAL|PANIC): |terminated by signal|exited with exit code [1-9]' || true)
if [ -z "$problems" ]; then
	echo "none"
else
	echo "$(wc -l <<<"$problems") line(s); distinct messages:"
	sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //' <<<"$problems" | sort | uniq -c | sort -rn | head -20
fi
