#!/usr/bin/env bash
# Installs the Debian packages pgkm needs to build and test, if any is missing.
set -euo pipefail

packages=(
	build-essential cmake clang clang-format
	libclang-rt-14-dev
	postgresql-15 postgresql-contrib postgresql-server-dev-15 libpq-dev libipc-run-perl
	libssl-dev libp11-kit-dev softhsm2 opensc
	googletest libgtest-dev nlohmann-json3-dev
	postgresql-15-pgaudit
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
