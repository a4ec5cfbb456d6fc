# Throwaway PostgreSQL cluster with a SoftHSM2 token, for tests, the demo and benchmarks.
# Source it, then: pgkm_cluster_init; pgkm_cluster_start; pgkm_psql ...; cleanup is
# automatic (trap on EXIT). The server runs as an unprivileged user (postgres when we are
# root), listens on a Unix socket in a fresh temp directory only, and is removed after.

# PGKM_PG_BINDIR selects another (e.g. a relocated copy made by scripts/stage.sh).
PG_BINDIR=${PGKM_PG_BINDIR:-$(pg_config --bindir)}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PGKM_TOKEN_LABEL=pgkm-test
PGKM_PORT=${PGKM_PORT:-54329}
# PGKM_SERVER_ENV adds environment to the server only (pg_ctl start), as VAR=value words
# separated by spaces, without quotes or glob characters: scripts/sanitize.sh preloads the
# ASan runtime and sets ASAN_OPTIONS/UBSAN_OPTIONS this way. PGKM_SERVER_LOG_DIR, if set,
# receives a copy of the server log before the cluster is removed (sanitize.sh scans them).
PGKM_SERVER_ENV=${PGKM_SERVER_ENV:-}

if [ "$(id -u)" -eq 0 ]; then
	PGKM_OS_USER=postgres
	# From /: the checkout may be unreadable to postgres (CI clones into a private dir).
	as_pg() { (cd / && runuser -u postgres -- env SOFTHSM2_CONF="$SOFTHSM2_CONF" "$@"); }
else
	PGKM_OS_USER=$(id -un)
	as_pg() { env SOFTHSM2_CONF="$SOFTHSM2_CONF" "$@"; }
fi

# Creates the work dir, the token (random PIN in a 0600 file) and an initialised cluster.
pgkm_cluster_init() {
	PGKM_WORK=$(mktemp -d /tmp/pgkm-test.XXXXXX)
	chmod 700 "$PGKM_WORK"
	[ "$(id -u)" -eq 0 ] && chown "$PGKM_OS_USER" "$PGKM_WORK"
	export SOFTHSM2_CONF="$PGKM_WORK/softhsm2.conf"
	PGKM_PGDATA="$PGKM_WORK/data"
	PGKM_PIN_FILE="$PGKM_WORK/pin"
	trap pgkm_cluster_cleanup EXIT

	as_pg mkdir "$PGKM_WORK/tokens"
	as_pg sh -c "cat > '$SOFTHSM2_CONF'" <<-CONF
		directories.tokendir = $PGKM_WORK/tokens
		objectstore.backend = file
		log.level = ERROR
		slots.removable = false
		library.reset_on_fork = true
	CONF
	local pin so_pin
	pin=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	so_pin=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	as_pg sh -c "umask 077; cat > '$PGKM_PIN_FILE'" <<<"$pin"
	as_pg softhsm2-util --init-token --free --label "$PGKM_TOKEN_LABEL" \
		--so-pin "$so_pin" --pin "$pin" >/dev/null
	as_pg "$PG_BINDIR/initdb" -D "$PGKM_PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
		--no-sync >/dev/null
	as_pg sh -c "cat >> '$PGKM_PGDATA/postgresql.conf'" <<-CONF
		listen_addresses = ''
		port = $PGKM_PORT
		unix_socket_directories = '$PGKM_WORK'
		shared_preload_libraries = 'pgkm'
		pgkm.pkcs11_module = '$SOFTHSM_MODULE'
		pgkm.pkcs11_token_label = '$PGKM_TOKEN_LABEL'
		pgkm.pkcs11_pin_file = '$PGKM_PIN_FILE'
		max_connections = 40
		log_min_messages = warning
		log_line_prefix = '%m [%p] '
	CONF
}

# Starts the server; on failure shows its log.
pgkm_cluster_start() {
	# shellcheck disable=SC2086 # PGKM_SERVER_ENV is a list of words
	if ! as_pg env $PGKM_SERVER_ENV "$PG_BINDIR/pg_ctl" -D "$PGKM_PGDATA" \
		-l "$PGKM_WORK/server.log" -w -t 60 start >/dev/null; then
		echo "cluster: server did not start; its log:" >&2
		cat "$PGKM_WORK/server.log" >&2
		return 1
	fi
}

# Stops the server if it runs: fast, else immediate (a fast shutdown requested during crash
# recovery can hang, and under set -e a failed stop would skip the rest of the cleanup).
pgkm_cluster_stop() {
	[ -f "$PGKM_PGDATA/postmaster.pid" ] || return 0
	as_pg "$PG_BINDIR/pg_ctl" -D "$PGKM_PGDATA" -w -t 60 -m fast stop >/dev/null 2>&1 ||
		as_pg "$PG_BINDIR/pg_ctl" -D "$PGKM_PGDATA" -w -t 60 -m immediate stop >/dev/null 2>&1 ||
		true
}

# Runs psql against the cluster as the superuser postgres.
pgkm_psql() {
	as_pg "$PG_BINDIR/psql" -X -h "$PGKM_WORK" -p "$PGKM_PORT" -U postgres "$@"
}

# Stops the server and removes every file of the throwaway cluster and token.
pgkm_cluster_cleanup() {
	[ -n "${PGKM_WORK:-}" ] || return 0
	pgkm_cluster_stop
	if [ -n "${PGKM_SERVER_LOG_DIR:-}" ] && [ -f "$PGKM_WORK/server.log" ]; then
		cp "$PGKM_WORK/server.log" "$PGKM_SERVER_LOG_DIR/$(basename "$PGKM_WORK").log"
	fi
	[ -n "${PGKM_KEEP:-}" ] && { echo "cluster: kept $PGKM_WORK" >&2; return 0; }
	rm -rf "$PGKM_WORK"
}
