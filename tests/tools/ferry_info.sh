#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# ferry-info, checked against what it describes rather than against its own
# wording: it is linked to the shared library (no private copy) and reports
# that library's version, the one the source tree builds; it lists exactly
# the backends, and each is usable or says why not; what it says about UCX
# agrees with itself and with ucx_info; what it says about CUDA matches
# whether this machine has an NVIDIA driver (/dev/nvidiactl); -c prints
# exactly the library's configuration table, each variable with a default
# and its value here; -h and --help print the usage and succeed, and a
# bad argument is refused, named.
# Usage: ferry_info.sh FERRY-INFO
set -u
info=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
fail=0
bad() {
    echo "FAIL: $*"
    fail=1
}
has() { # has REGEX TEXT: TEXT has a line matching REGEX (extended)
    printf '%s\n' "$2" | grep -Eq -- "$1"
}
expect() {
    has "$1" "$2" || bad "no line matching '$1' in the output"
}
count() { # count REGEX TEXT: how many lines match
    printf '%s\n' "$2" | grep -Ec -- "$1"
}
# The lines of one section: from its heading to the next unindented line.
section() {
    printf '%s\n' "$2" | awk -v h="$1:" '$0 == h { on = 1; next }
                                         /^[^ ]/ { on = 0 } on'
}

out=$("$info") || { echo "FAIL: ferry-info exited with $?"; exit 1; }
echo "$out"

# --- The library it describes --------------------------------------------
# The shared library, not a private copy: a NEEDED entry, no ferry__
# internals inside the program, and the library that the loader finds here
# is the version the source tree builds (the file name carries it).
abi=$(sed -n 's/^set(FERRY_ABI_MAJOR \([0-9]*\))$/\1/p' "$root/CMakeLists.txt")
version=$(sed -n 's/^project(ferry VERSION \([0-9.]*\) .*/\1/p' "$root/CMakeLists.txt")
[ -n "$abi" ] && [ -n "$version" ] || bad "no version or ABI major in CMakeLists.txt"
readelf -d "$info" | grep -q "(NEEDED).*\[libferry\.so\.$abi\]" ||
    bad "ferry-info is not linked to libferry.so.$abi"
if nm "$info" 2>/dev/null | grep -q ' ferry__'; then
    bad "ferry-info holds internal ferry__ functions: a static copy of the library"
fi
lib=$(ldd "$info" | awk '$1 == "libferry.so.'"$abi"'" { print $3 }')
if [ -z "$lib" ] || [ ! -e "$lib" ]; then
    bad "the loader finds no libferry.so.$abi for ferry-info"
elif [ "$(basename "$(realpath "$lib")")" != "libferry.so.$version" ]; then
    bad "ferry-info loads $(realpath "$lib"), not libferry.so.$version"
fi
header=$(sed -n 's/^#define FERRY_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
    "$root/include/ferry/status.h" | paste -sd. -)
[ "$header" = "$version" ] || bad "ferry/status.h says $header, CMakeLists.txt $version"
[ "$(printf '%s\n' "$out" | head -n 1)" = "ferry $version" ] ||
    bad "the first line is not 'ferry $version'"

# --- Backends ----------------------------------------------------------------
# Exactly the three backends, each once, and every one either usable or with
# the reason it is not; staging through bounce buffers needs no GPU to start.
backends=$(section backends "$out")
[ "$(count . "$backends")" -eq 3 ] || bad "backends: expected 3 lines: $backends"
for b in ucx cuda_ipc staged; do
    [ "$(count "^  $b +built, (usable|unusable: .+)$" "$backends")" -eq 1 ] ||
        bad "backends: no single well-formed line for $b"
done
expect '^  ucx +built, usable$' "$out"
expect '^  staged +built, usable$' "$out"

# --- UCX ---------------------------------------------------------------------
ucx=$(section ucx "$out")
expect '^  transports: [a-z_0-9]+/' "$ucx"
types=$(printf '%s\n' "$ucx" | sed -n 's/^  memory types://p')
has ' host( |$)' "$types" || bad "ucx: memory types '$types' lack host"
if has ' cuda( |$)' "$types"; then
    expect '^  accepts GPU memory: yes$' "$ucx"
else
    expect '^  accepts GPU memory: no ' "$ucx"
fi
if command -v ucx_info >/dev/null; then
    want=$(ucx_info -v | sed -n 's/^# \(Library \)*[Vv]ersion:* *\([0-9.]*\).*/\2/p' | head -n 1)
    [ -z "$want" ] || expect "^  version: $want\$" "$ucx"
fi

# --- CUDA --------------------------------------------------------------------
# With a driver, CUDA IPC is usable and every device is listed; without one,
# both sections say so, with the same reason.
cuda=$(section cuda "$out")
cuda_ipc=$(printf '%s\n' "$backends" | sed -n 's/^  cuda_ipc *built, //p')
if [ -e /dev/nvidiactl ]; then
    [ "$cuda_ipc" = usable ] || bad "a GPU driver is here, but cuda_ipc is $cuda_ipc"
    expect '^  driver API: [0-9]+\.[0-9]+$' "$cuda"
    n=$(printf '%s\n' "$cuda" | sed -n 's/^  devices: \([0-9]*\)$/\1/p')
    [ "${n:-0}" -ge 1 ] || bad "cuda: no device count, or none"
    [ "$(count '^  device [0-9]+: ' "$cuda")" -eq "${n:-0}" ] ||
        bad "cuda: $n devices, but a different number of device lines"
else
    reason=$(printf '%s\n' "$cuda" | sed -n 's/^  unavailable: //p')
    [ -n "$reason" ] || bad "no /dev/nvidiactl, yet cuda does not say it is unavailable"
    [ "$cuda_ipc" = "unusable: $reason" ] ||
        bad "cuda_ipc says '$cuda_ipc', the cuda section 'unavailable: $reason'"
fi

# --- Configuration -----------------------------------------------------------
# -c prints the library's table (src/util/config.c), all of it and nothing
# else, in its order; every FERRY_* name that the library's sources quote
# is in it; each entry has a default, which is its value when unset, and a
# variable set in the environment shows its value, marked.
table=$(grep -oE '^ *\{"FERRY_[A-Z0-9_]+"' "$root/src/util/config.c" | grep -oE 'FERRY_[A-Z0-9_]+')
unset_all=$(for v in $table; do printf ' -u %s' "$v"; done)
# shellcheck disable=SC2086
cfg=$(env $unset_all FERRY_LOG=error "$info" -c) ||
    { echo "FAIL: ferry-info -c exited with $?"; exit 1; }
listed=$(printf '%s\n' "$cfg" | sed -n 's/^  \(FERRY_[A-Z0-9_]*\) = .*/\1/p')
[ -n "$table" ] || bad "no FERRY_* entries found in src/util/config.c"
[ "$listed" = "$table" ] ||
    bad "-c lists '$(echo $listed)', the table holds '$(echo $table)'"
for v in $(grep -rhoE '"FERRY_[A-Z0-9_]+"' "$root/src" | tr -d '"' | sort -u); do
    printf '%s\n' "$table" | grep -qx "$v" ||
        bad "the library reads $v, which the configuration table lacks"
done
printf '%s\n' "$cfg" | awk '
    NR == 1 { if ($0 != "configuration (environment variables):") bad = "first line: " $0; next }
    /^  FERRY_/ { name = $1; value = $0; sub(/^  [A-Z0-9_]+ = /, "", value); next }
    /^      default "/ {
        d = $0; sub(/^      default "/, "", d); sub(/": .*/, "", d)
        if ($0 !~ /": ./) bad = bad " " name ":no-help"
        if (name == "FERRY_LOG") {
            if (value != "error  (set)" || d != "warn") bad = bad " FERRY_LOG:" value
        } else if (value != d) bad = bad " " name ":value-not-default"
        name = ""; next
    }
    { bad = bad " stray:" $0 }
    END { if (bad != "") { print "FAIL: -c:" bad; exit 1 } }' || fail=1
[ "$(count '^      default "' "$cfg")" -eq "$(count '^  FERRY_' "$cfg")" ] ||
    bad "-c: not every variable has a default line"

# --- Arguments ---------------------------------------------------------------
# -h and --help: the usage on stdout, nothing on stderr, exit 0. A mistake
# is named on stderr (the flag, or the stray argument), the usage follows,
# exit 2, and nothing reaches stdout.
err_file="${TMPDIR:-/tmp}/ferry_info.$$"
for args in -h --help; do
    help=$("$info" $args 2>"$err_file")
    rc=$?
    [ $rc -eq 0 ] || bad "ferry-info $args exited with $rc, not 0"
    has '^usage: ferry-info' "$help" || bad "ferry-info $args printed no usage on stdout"
    has '^  -c ' "$help" || bad "ferry-info $args does not describe -c"
    [ -s "$err_file" ] && bad "ferry-info $args wrote to stderr: $(cat "$err_file")"
done
# args|the first line of stderr
while IFS='|' read -r args want; do
    # Word splitting of args is the point: each is an argument list.
    # shellcheck disable=SC2086
    stdout=$("$info" $args 2>"$err_file")
    rc=$?
    [ $rc -eq 2 ] || bad "ferry-info $args exited with $rc, not 2"
    [ "$(head -n 1 "$err_file")" = "$want" ] ||
        bad "ferry-info $args: stderr starts '$(head -n 1 "$err_file")', not '$want'"
    grep -q '^usage: ferry-info' "$err_file" ||
        bad "ferry-info $args printed no usage on stderr"
    [ -z "$stdout" ] || bad "ferry-info $args wrote to stdout: $stdout"
done <<'EOF'
--bogus|ferry-info: unknown option '--bogus'
-x|ferry-info: unknown option '-x'
-cx|ferry-info: unknown option '-x'
--bogus=1|ferry-info: unknown option '--bogus'
--help=1|ferry-info: option '--help' takes no argument
x|ferry-info: unexpected argument 'x'
-c x|ferry-info: unexpected argument 'x'
EOF
rm -f "$err_file"

[ $fail -eq 0 ] && echo "ferry_info: all checks passed"
exit $fail
