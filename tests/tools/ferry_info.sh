#!/bin/sh
# ferry-info: names both backends and says whether each is usable, reports
# UCX's transports and whether it takes GPU memory, explains a missing CUDA
# driver, lists every FERRY_* variable with -c, and refuses bad arguments.
# Usage: ferry_info.sh FERRY-INFO
set -u
info=$1
fail=0
out=$("$info") || { echo "FAIL: ferry-info exited with $?"; exit 1; }
echo "$out"
expect() {
    if printf '%s\n' "$2" | grep -q -- "$1"; then :; else
        echo "FAIL: no '$1' in the output"; fail=1; fi
}
expect '^ferry [0-9]*\.[0-9]*\.[0-9]*$' "$out"
expect '^  ucx  *built, usable' "$out"
expect '^  cuda_ipc  *built, ' "$out"
expect '^  transports: .*/' "$out"
expect '^  accepts GPU memory: ' "$out"
if [ -e /dev/nvidiactl ]; then
    expect '^  device 0: ' "$out"
else
    expect 'unavailable: no CUDA driver was found\|unavailable: a CUDA driver was found but' "$out"
fi
cfg=$("$info" -c) || { echo "FAIL: ferry-info -c exited with $?"; exit 1; }
for v in FERRY_LOG FERRY_UCX_TLS FERRY_MD_MAX FERRY_WAIT_SPIN_US FERRY_CUDA_PIN_HOST \
         FERRY_CUDA_FD_HANDOFF FERRY_COPY_NT_MIN FERRY_XFER_STALL_MS; do
    expect "^  $v = " "$cfg"
done
if "$info" --bogus >/dev/null 2>&1; then echo "FAIL: a bad argument was accepted"; fail=1; fi
[ $fail -eq 0 ] && echo "ferry_info: all checks passed"
exit $fail
