#!/usr/bin/env bash
# Builds and installs pgkm.so (PGXS) and builds the pure layers and unit tests (CMake).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
make -s -j"$(nproc)" >/dev/null
$sudo make -s install >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
