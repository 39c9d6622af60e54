#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Two hosts on one machine: two network namespaces joined by a veth pair,
# with the project's own test addresses (10.77.0.1/24 and 10.77.0.2/24),
# one rank of the ring test in each, UCX over TCP only (UCX_TLS=tcp), and
# the store hosted by rank 0 on 10.77.0.1, so that rank 1 reaches both the
# store and its peer's memory across the veth link only. Needs root and
# iproute2's `ip`; without them (or without permission to make network
# namespaces) it exits 77, which CTest reports as skipped. The namespaces
# and every rank are removed on every way out.
# Usage: run.sh path/to/test_comm
set -u
TEST_COMM=$1
ns_a="ferry-a-$$"
ns_b="ferry-b-$$"
veth_a="fya$$"
veth_b="fyb$$"
pids=()

skip() { echo "skip: $*"; exit 77; }

cleanup() {
    local ns p
    # Every process still inside a namespace (a rank), by its pid.
    for ns in "$ns_a" "$ns_b"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$p" 2>/dev/null
        done
    done
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    ip netns del "$ns_a" 2>/dev/null
    ip netns del "$ns_b" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 1' INT TERM

[ "$(id -u)" = 0 ] || skip "needs root"
command -v ip >/dev/null || skip "no ip command (Debian package iproute2)"
ip netns add "$ns_a" 2>/dev/null || skip "cannot create network namespaces"
ip netns add "$ns_b" || exit 1
set -e
ip link add "$veth_a" type veth peer name "$veth_b"
ip link set "$veth_a" netns "$ns_a"
ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add 10.77.0.1/24 dev "$veth_a"
ip -n "$ns_b" addr add 10.77.0.2/24 dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do
    ip -n "$ns" link set lo up
done
ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" link set "$veth_b" up
set +e

rx_bytes() { ip netns exec "$ns_a" cat "/sys/class/net/$veth_a/statistics/rx_bytes"; }
rx_before=$(rx_bytes)

# Each namespace is a fresh network stack: the port is free in both.
url="tcp://10.77.0.1:29577"
run_rank() {
    ip netns exec "$1" env FERRY_RANK="$2" FERRY_WORLD_SIZE=2 \
        FERRY_STORE="$url" UCX_TLS=tcp \
        timeout -s KILL 150 "$TEST_COMM" ring 2>&1 | sed "s/^/[$2] /"
    return "${PIPESTATUS[0]}"
}
run_rank "$ns_a" 0 &
pids+=($!)
run_rank "$ns_b" 1 &
pids+=($!)

rc=0
for p in "${pids[@]}"; do
    wait "$p" || rc=1
done
pids=()
if [ $rc != 0 ]; then
    echo "test_netns: a rank failed"
    exit 1
fi
# The ring moved some hundreds of KiB from rank 1 to rank 0: they must have
# crossed the veth link, the namespaces' only connection.
rx=$(( $(rx_bytes) - rx_before ))
if [ "$rx" -lt 200000 ]; then
    echo "test_netns: only $rx bytes crossed the veth link"
    exit 1
fi
echo "test_netns: ring across two namespaces passed ($rx bytes into 10.77.0.1 over veth)"
