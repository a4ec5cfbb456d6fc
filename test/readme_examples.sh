#!/usr/bin/env bash
# Runs every SQL example of README.md, so the manual cannot rot (issue 7). An example is a
# fenced block opened by ```sql (indented or not). Each runs with psql -v ON_ERROR_STOP=1
# in a throwaway cluster with a SoftHSM2 token, in a database of its own with pgkm created
# (unless the example creates it), as the superuser, as a DBA would paste it. An example
# preceded by the line `<!-- example: continued -->` runs in the previous example's database
# instead, after it. `$1` in an example stands for the application's parameter; this runner
# binds it to the value of the line `<!-- example: $1 = 'value' -->` before the block (an
# example with $1 and no such line fails). A block that is not SQL one can run (a template
# with placeholders) must not be fenced as sql.
# Then checks that the settings table lists every pgkm setting with the default and context
# the server reports.
# Prints "ok N - README example at line L" / "not ok ..." (with psql's output) per example.
#   usage: test/readme_examples.sh [README]
set -uo pipefail
cd "$(dirname "$0")/.."
. test/lib/cluster.sh
readme=${1:-README.md}

work=$(mktemp -d /tmp/pgkm-readme.XXXXXX)
chmod 755 "$work"
# Splits the README into one file per example: NNNN.sql (the SQL), NNNN.mode ("new" or
# "continued"), NNNN.param (the value of $1, if given); NNNN is the fence's line number.
awk -v dir="$work" '
	function flush_marker() { mode = "new"; param = "" }
	BEGIN { flush_marker() }
	/^[ \t]*<!-- example: continued -->[ \t]*$/ { mode = "continued"; next }
	/^[ \t]*<!-- example: \$1 = .* -->[ \t]*$/ {
		p = $0; sub(/^[ \t]*<!-- example: \$1 = /, "", p); sub(/ -->[ \t]*$/, "", p); param = p; next
	}
	!inblock && /^[ \t]*```sql[ \t]*$/ {
		inblock = 1; indent = match($0, /[^ \t]/) - 1
		name = sprintf("%s/%05d", dir, NR)
		printf "%s\n", mode > (name ".mode"); close(name ".mode")
		if (param != "") { printf "%s\n", param > (name ".param"); close(name ".param") }
		printf "" > (name ".sql")
		next
	}
	inblock && /^[ \t]*```[ \t]*$/ { inblock = 0; close(name ".sql"); flush_marker(); next }
	inblock { line = $0; print substr(line, indent + 1) >> (name ".sql"); next }
	/[^ \t]/ && !/^[ \t]*<!--/ { flush_marker() }
' "$readme"

n=0
failures=0
count=$(find "$work" -name '*.sql' | wc -l)
if [ "$count" -eq 0 ]; then
	echo "not ok 1 - no SQL example found in $readme"
	exit 1
fi

pgkm_cluster_init
pgkm_cluster_start || exit 1
db=""
for sql in $(find "$work" -name '*.sql' | sort); do
	base=${sql%.sql}
	line=$((10#$(basename "$base")))
	n=$((n + 1))
	mode=$(cat "$base.mode")
	if [ "$mode" = new ] || [ -z "$db" ]; then
		# The previous example's database goes, with its pgkm worker (max_worker_processes).
		[ -n "$db" ] && pgkm_psql -q -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
		db="example_$line"
		pgkm_psql -q -c "CREATE DATABASE $db" >/dev/null
		if ! grep -qi "CREATE EXTENSION pgkm" "$sql"; then
			pgkm_psql -q -d "$db" -c "CREATE EXTENSION pgkm" >/dev/null 2>&1
			# As in a database that has used pgkm for a while, its worker runs (it starts
			# a moment after CREATE EXTENSION; pgkm.audit_flush() needs it).
			for _ in $(seq 1 60); do
				[ "$(pgkm_psql -d "$db" -At -c "SELECT count(*) FROM pg_stat_activity
					WHERE backend_type = 'pgkm worker' AND datname = current_database()")" = 1 ] &&
					break
				sleep 0.5
			done
		fi
	fi
	param=()
	if [ -f "$base.param" ]; then
		# $1 becomes a psql variable; the block is run through PREPARE-free substitution of
		# :'p1', so the statements run as written apart from the parameter.
		param=(-v "p1=$(sed -e "s/^'//" -e "s/'$//" "$base.param")")
		sed -i "s/\\\$1/:'p1'/g" "$sql"
	elif grep -q '\$1' "$sql" && ! grep -q '\$\$' "$sql"; then
		echo "not ok $n - README example at line $line uses \$1 with no <!-- example: \$1 = ... --> line"
		failures=$((failures + 1))
		continue
	fi
	chmod 644 "$sql"
	if out=$(pgkm_psql -d "$db" -v ON_ERROR_STOP=1 "${param[@]}" -f "$sql" 2>&1); then
		echo "ok $n - README example at line $line"
	else
		echo "not ok $n - README example at line $line"
		echo "$out" | sed 's/^/#   /'
		failures=$((failures + 1))
	fi
done
rm -rf "$work"

# The settings table: every pgkm setting the server knows has a row with its default and
# context as the server reports them ("| `name` | `default` | context |").
settings=$(pgkm_psql -d postgres -At -F'|' -c "SELECT name, coalesce(nullif(boot_val, ''), \$q\$''\$q\$)
	|| coalesce(unit, ''), context FROM pg_settings WHERE name LIKE 'pgkm.%' ORDER BY name")
if [ -z "$settings" ]; then
	n=$((n + 1))
	echo "not ok $n - the server lists no pgkm setting"
	failures=$((failures + 1))
fi
while IFS='|' read -r name default context; do
	[ -n "$name" ] || continue
	n=$((n + 1))
	row="| \`$name\` | \`$default\` | $context |"
	if grep -qF -- "$row" "$readme"; then
		echo "ok $n - README documents $name (default $default, context $context)"
	else
		echo "not ok $n - README has no settings row starting: $row"
		failures=$((failures + 1))
	fi
done <<<"$settings"
# Links inside the README (](#anchor)) point at headings that exist (GitHub's slugs:
# lower case, punctuation dropped, spaces to hyphens).
slugs=$(grep -E '^#{1,6} ' "$readme" | sed -E 's/^#+ //' | tr 'A-Z' 'a-z' |
	sed -E 's/[^a-z0-9 _-]//g; s/ /-/g')
for anchor in $(grep -oE '\]\(#[^)]+\)' "$readme" | sed -E 's/^\]\(#//; s/\)$//' | sort -u); do
	n=$((n + 1))
	if grep -qxF -- "$anchor" <<<"$slugs"; then
		echo "ok $n - README link #$anchor has its heading"
	else
		echo "not ok $n - README link #$anchor points at no heading"
		failures=$((failures + 1))
	fi
done
echo "readme examples: $((n - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
