#!/usr/bin/env bash
# Runs the GoogleTest unit tests of the pure layers (core, provider with SoftHSM2).
set -euo pipefail
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure -j"$(nproc)"
