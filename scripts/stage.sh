#!/usr/bin/env bash
# Builds pgkm and installs it into a private, relocated copy of the local PostgreSQL 15
# (binaries, libraries, share files) under DIR, leaving the system's PostgreSQL untouched.
# PostgreSQL finds its lib and share directories relative to its binaries, so servers
# started from DIR/usr/lib/postgresql/15/bin load the pgkm installed there. Point the test
# scripts at it with PGKM_PG_BINDIR (printed on the last line). Extra arguments go to make
# (e.g. SANITIZE=1).
#   usage: scripts/stage.sh DIR [make arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 DIR [make arguments...]" >&2; exit 2; }
dir=$1
shift
bindir=$(pg_config --bindir)
pkglibdir=$(pg_config --pkglibdir)
sharedir=$(pg_config --sharedir)
# The copy is refreshed from the system's PostgreSQL whenever that is newer.
mkdir -p "$dir$(dirname "$pkglibdir")" "$dir$(dirname "$sharedir")"
cp -a --update "$(dirname "$bindir")/." "$dir$(dirname "$bindir")/"
cp -a --update "$sharedir/." "$dir$sharedir/"
make -s -j"$(nproc)" "$@" >/dev/null
make -s install DESTDIR="$dir" "$@" >/dev/null
chmod -R a+rX "$dir"
echo "PGKM_PG_BINDIR=$dir$bindir"
