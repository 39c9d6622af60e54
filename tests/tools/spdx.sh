#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Every source file of the tree carries the licence's SPDX line in its first
# three lines (C after nothing, scripts after their #! line), and LICENSE
# is the Apache License 2.0 that line names. Source files are those git
# tracks (every file when the tree is not a git checkout), by their kind:
# C sources and headers, CUDA sources, shell and Python scripts, CMake
# files, the Makefile and any file starting with #!.
#
# Usage: spdx.sh SOURCE_DIR
set -eu

src=$(cd "$1" && pwd)
tag='SPDX-License-Identifier: Apache-2.0'
fail=0

grep -q 'Apache License' "$src/LICENSE" && grep -q 'Version 2.0, January 2004' "$src/LICENSE" ||
    { echo "test_spdx: FAIL: LICENSE is not the Apache License 2.0" >&2; exit 1; }

if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    files=$(git -C "$src" ls-files)
else
    files=$(cd "$src" && find . -path ./build -prune -o -path ./.git -prune -o -type f -print |
        sed 's|^\./||')
fi
n=0
for f in $files; do
    p=$src/$f
    [ -f "$p" ] && [ ! -L "$p" ] || continue
    case $f in
    *.c | *.h | *.cu | *.sh | *.py | *.pyi | *.cmake | *.in | *CMakeLists.txt | Makefile | */Makefile) ;;
    *) head -c 2 "$p" | grep -q '^#!' || continue ;;
    esac
    n=$((n + 1))
    if ! head -n 3 "$p" | grep -q "$tag"; then
        echo "test_spdx: FAIL: $f has no '$tag' line at its top" >&2
        fail=1
    fi
done
[ "$n" -gt 50 ] || { echo "test_spdx: FAIL: only $n source files found under $src" >&2; exit 1; }
[ "$fail" -eq 0 ] || exit 1
echo "test_spdx: $n source files, each with its SPDX line"
