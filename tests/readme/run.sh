#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The README's C example, exactly as the README shows it: the first ```c
# block is compiled against this build's header and library, with the
# project's warnings as errors, and run as two ranks under ferry-run. Both
# ranks must say "done": rank 1 checks that every byte of rank 0's WRITE
# arrived.
# Usage: run.sh README CC INCLUDE-DIR LIBFERRY FERRY-RUN
set -u
readme=$1 cc=$2 inc=$3 lib=$4 run=$5
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

awk '/^```c$/ && !done { on = 1; next }
     /^```$/ && on { on = 0; done = 1 }
     on' "$readme" >"$dir/example.c"
if ! [ -s "$dir/example.c" ]; then
    echo "FAIL: no \`\`\`c block in $readme"
    exit 1
fi
libdir=$(dirname "$lib")
if ! "$cc" -std=c11 -Wall -Wextra -Werror -I"$inc" "$dir/example.c" \
    -L"$libdir" -lferry -Wl,-rpath,"$libdir" -o "$dir/example"; then
    echo "FAIL: the README's example does not compile"
    exit 1
fi
out=$(cd "$dir" && "$run" -n 2 -- ./example 2>&1)
rc=$?
printf '%s\n' "$out"
if [ $rc -ne 0 ]; then
    echo "FAIL: the README's example exited with $rc"
    exit 1
fi
for r in 0 1; do
    if ! printf '%s\n' "$out" | grep -qx "\[$r\] rank $r: done"; then
        echo "FAIL: rank $r did not say done"
        exit 1
    fi
done
echo "readme: the example compiled and moved its bytes"
