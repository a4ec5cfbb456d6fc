#!/usr/bin/env bash
# Checks that every C++ file is formatted as .clang-format says (run by make test).
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.cpp' '*.hpp' 2>/dev/null || find src include test -name '*.cpp' -o -name '*.hpp')
clang-format --dry-run --Werror $files
echo "format: $(echo "$files" | wc -w) files formatted as .clang-format says"
