#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# ferry-bench as a user of other benchmarks meets it, one case per run:
#   job     under ferry-run -n 2 it joins that job as one rank: one run, one
#           banner and one table per operation, from rank 0 only, exit 0;
#           the report's connect line, median, iterations and warm-up,
#           transports, and --check's closing line.
#   death   its ranks are named ferry-bench:r0 and ferry-bench:r1 in
#           /proc/PID/comm; killing only the parent with SIGKILL (as a
#           supervisor does) ends them within 5 s, and so does SIGTERM.
#   wait    a store that refuses connections, and a lone rank whose partner
#           never comes: each says on stderr what it waits for, and fails
#           at --timeout 3 within 8 s, exit non-zero.
#   errors  failures say what failed in words, not C source; port 0 has its
#           own message.
#   sizes   bad --sizes items are refused with exit 2, naming the item.
#   notify  --notify briefly (300 samples a cell): one table, a row per
#           size whose medians are positive, below their p99, and whose
#           differences and ratios are those of its own columns; the
#           ucx_perftest reference measured (where ucx_perftest is
#           installed) or its absence said; no message before its bytes;
#           under ferry-run one table; options it does not take, exit 2.
# Every process started here is stopped by its pid at the end.
# Usage: ferry_bench.sh CASE FERRY-BENCH FERRY-RUN FERRY-STORE
set -u
case=$1
bench=$2
run=$3
store=$4
tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do
        kill -KILL "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
bad() {
    echo "FAIL: $*"
    fail=1
}

# Whether process $1 still runs (a zombie waiting to be reaped does not).
running() {
    [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# Starts a long sweep in the background; sets pid and ranks (the child
# pids, found within 10 s).
start_sweep() {
    "$bench" --sizes 4K:64M --iters 100000 --op write >"$tmp/sweep.out" 2>&1 &
    pid=$!
    pids="$pids $pid"
    ranks=""
    for _ in $(seq 100); do
        ranks=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null)
        [ "$(echo $ranks | wc -w)" -eq 2 ] && break
        sleep 0.1
    done
    pids="$pids $ranks"
    [ "$(echo $ranks | wc -w)" -eq 2 ] || bad "no two ranks under ferry-bench ($pid): '$ranks'"
}

# Waits up to 5 s for every process in $ranks to end; complains otherwise.
expect_gone() {
    for _ in $(seq 50); do
        left=""
        for r in $ranks; do
            running "$r" && left="$left $r"
        done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    bad "$1: ranks$left still run 5 s later"
}

# Starts ferry-store on a free loopback port; sets spid and port.
start_store() {
    "$store" --port 0 >"$tmp/store.out" 2>&1 &
    spid=$!
    pids="$pids $spid"
    port=""
    for _ in $(seq 100); do
        port=$(sed -n 's/^ferry-store listening on [^ ]* port \([0-9]*\)$/\1/p' "$tmp/store.out")
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || bad "ferry-store printed no port: $(cat "$tmp/store.out")"
}

# A loopback port that nothing listens on: one a store just gave back.
closed_port() {
    start_store
    kill -TERM "$spid"
    wait "$spid" 2>/dev/null
    echo "$port"
}

case $case in
job)
    timeout -s KILL 60 "$run" -n 2 -- "$bench" --sizes 1M --iters 20 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 0 ] || bad "ferry-run -n 2 -- ferry-bench exited with $rc: $(cat "$tmp/err")"
    n=$(grep -c 'ferry-bench: ferry ' "$tmp/out")
    [ "$n" -eq 1 ] || bad "$n banners, not 1: $(cat "$tmp/out")"
    for op in WRITE READ; do
        n=$(grep -c "^\[0\] $op, " "$tmp/out")
        [ "$n" -eq 1 ] || bad "$n $op tables, not 1: $(cat "$tmp/out")"
    done
    n=$(grep -c 'Block Size (B)' "$tmp/out")
    [ "$n" -eq 2 ] || bad "$n table headers, not 2 (one per operation): $(cat "$tmp/out")"
    grep -q '^\[1\] ' "$tmp/out" && bad "rank 1 printed results: $(cat "$tmp/out")"
    grep -Eq '^\[0\] 1048576 +1 +20 +2 ' "$tmp/out" ||
        bad "no 1 MiB row with its iterations and warm-up: $(cat "$tmp/out")"
    # The connection apart from the rows, the median beside the mean, the
    # transports in the header.
    grep -Eq '^\[0\] connect: [0-9.]+ ms to 1 target' "$tmp/out" || bad "no connect line: $(cat "$tmp/out")"
    grep -q 'Avg Lat. (us)  Med Lat. (us)' "$tmp/out" || bad "no median column: $(cat "$tmp/out")"
    grep -Eq '^\[0\] ucx transports available: [a-z]' "$tmp/out" || bad "no transports: $(cat "$tmp/out")"
    # --check says what it verified: 2 rows of 5 + 1 warm-up, one target.
    timeout -s KILL 60 "$bench" --sizes 4K,8K --iters 5 --warmup 1 --op write --check \
        >"$tmp/out" 2>"$tmp/err" || bad "--check failed: $(cat "$tmp/err")"
    grep -qx 'check: 12 transfers, 0.074 MB compared, all bytes intact' "$tmp/out" ||
        bad "--check's last line: $(tail -n 1 "$tmp/out")"
    # torchrun's variables alone make it a rank too: rank 1 of 2 with no
    # rank 0 waits for it, and says so (it does not start two of its own).
    start_store
    RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        timeout -s KILL 30 "$bench" --timeout 2 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -ne 0 ] || bad "a lone torchrun rank 1 succeeded"
    grep -q '^ferry-bench\[rank 1\]: waiting for rank 0 of 2 to join' "$tmp/err" ||
        bad "a lone torchrun rank 1 did not wait for rank 0: $(cat "$tmp/err")"
    ;;
death)
    start_sweep
    i=0
    for r in $ranks; do
        # A rank names itself once it runs; it is "exe" from its exec until
        # then, which a slow start (a sanitizer build) makes long.
        for _ in $(seq 100); do
            comm=$(cat "/proc/$r/comm" 2>/dev/null)
            case $comm in
            ferry-bench:r0|ferry-bench:r1) break ;;
            esac
            sleep 0.1
        done
        case $comm in
        ferry-bench:r0|ferry-bench:r1) ;;
        *) bad "rank process $r is named '$comm' 10 s on, not ferry-bench:rN" ;;
        esac
        i=$((i + 1))
    done
    grep -q . "/proc/$pid/comm" && [ "$(cat "/proc/$pid/comm")" = ferry-bench ] ||
        bad "the parent is named '$(cat "/proc/$pid/comm")', not ferry-bench"
    kill -KILL "$pid"
    expect_gone "after SIGKILL to the parent"
    start_sweep
    kill -TERM "$pid"
    expect_gone "after SIGTERM to the parent"
    ;;
wait)
    p=$(closed_port)
    start=$(date +%s)
    timeout -s KILL 30 "$bench" --store "tcp://127.0.0.1:$p" --rank 0 --timeout 3 \
        >"$tmp/out" 2>"$tmp/err"
    rc=$?
    took=$(($(date +%s) - start))
    [ $rc -ne 0 ] || bad "a refused store: exit 0"
    [ $took -le 8 ] || bad "a refused store with --timeout 3 took $took s"
    grep -q "^ferry-bench\[rank 0\]: waiting for the store at tcp://127.0.0.1:$p" "$tmp/err" ||
        bad "a refused store: no waiting line: $(cat "$tmp/err")"
    grep -q "^ferry-bench\[rank 0\]: cannot reach the store tcp://127.0.0.1:$p (--store): " "$tmp/err" ||
        bad "a refused store: no clear error: $(cat "$tmp/err")"
    start_store
    start=$(date +%s)
    FERRY_RANK=0 FERRY_WORLD_SIZE=2 FERRY_STORE="tcp://127.0.0.1:$port" \
        timeout -s KILL 30 "$bench" --timeout 3 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    took=$(($(date +%s) - start))
    [ $rc -ne 0 ] || bad "a lone rank 0: exit 0"
    [ $took -le 8 ] || bad "a lone rank 0 with --timeout 3 took $took s"
    grep -q "^ferry-bench\[rank 0\]: waiting for rank 1 of 2 to join at tcp://127.0.0.1:$port" "$tmp/err" ||
        bad "a lone rank 0 did not say it waits for rank 1: $(cat "$tmp/err")"
    grep -q "^ferry-bench\[rank 0\]: cannot join the job at the store tcp://127.0.0.1:$port (FERRY_STORE): .*timed out" "$tmp/err" ||
        bad "a lone rank 0: no clear error: $(cat "$tmp/err")"
    "$bench" --help | grep -q -- '--timeout SECONDS' || bad "--help does not describe --timeout"
    ;;
errors)
    # cmd|exit code|the line stderr must start with
    while IFS='|' read -r args want line; do
        # shellcheck disable=SC2086
        timeout -s KILL 30 "$bench" $args >"$tmp/out" 2>"$tmp/err"
        rc=$?
        [ $rc -eq "$want" ] || bad "ferry-bench $args exited with $rc, not $want"
        grep -q -- "^$line" "$tmp/err" || bad "ferry-bench $args: '$(cat "$tmp/err")', not '$line...'"
        grep -q 'ferry_[a-z_]*(' "$tmp/err" && bad "ferry-bench $args shows C source: $(cat "$tmp/err")"
    done <<'EOS'
--store tcp://127.0.0.1:0 --rank 0|1|ferry-bench\[rank 0\]: the store URL tcp://127.0.0.1:0 (--store) has port 0, where no store listens
--store tcp://127.0.0.1:x --rank 0|1|ferry-bench\[rank 0\]: cannot reach the store tcp://127.0.0.1:x (--store): .*port 'x'
--store tcp://127.0.0.1:1 --rank 0 --timeout 0.5|1|ferry-bench\[rank 0\]: cannot reach the store tcp://127.0.0.1:1 (--store): .*refused
--timeout 0|2|ferry-bench: --timeout takes seconds above 0
--timeout x|2|ferry-bench: --timeout takes seconds above 0
EOS
    FERRY_RANK=0 FERRY_WORLD_SIZE=2 FERRY_STORE=tcp://127.0.0.1:0 \
        timeout -s KILL 30 "$bench" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 1 ] || bad "FERRY_STORE with port 0 exited with $rc, not 1"
    grep -q 'the store URL tcp://127.0.0.1:0 (FERRY_STORE) has port 0' "$tmp/err" ||
        bad "FERRY_STORE with port 0: '$(cat "$tmp/err")'"
    ;;
sizes)
    # --sizes value|the message (after "ferry-bench: ")
    while IFS='|' read -r val msg; do
        timeout -s KILL 30 "$bench" --memcpy --iters 2 --sizes "$val" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        [ $rc -eq 2 ] || bad "--sizes '$val' exited with $rc, not 2"
        [ "$(cat "$tmp/err")" = "ferry-bench: $msg" ] ||
            bad "--sizes '$val': '$(cat "$tmp/err")', not 'ferry-bench: $msg'"
        [ -s "$tmp/out" ] && bad "--sizes '$val' measured: $(cat "$tmp/out")"
    done <<'EOS'
4K,|--sizes '4K,': item 2 is empty
4K,,8K|--sizes '4K,,8K': item 2 is empty
,4K|--sizes ',4K': item 1 is empty
|--sizes '': item 1 is empty
8K:4K|--sizes item 1: '8K:4K' runs backwards (write the smaller size first)
4K,64K:1K|--sizes item 2: '64K:1K' runs backwards (write the smaller size first)
0|--sizes item 1: '0' must be above 0
4K,0|--sizes item 2: '0' must be above 0
abc|--sizes item 1: 'abc' is not a number (digits, then K, M or G if you like)
4K:|--sizes item 1: '' is not a number (digits, then K, M or G if you like)
4x|--sizes item 1: '4x' is not a number (digits, then K, M or G if you like)
-1|--sizes item 1: '-1' is not a number (digits, then K, M or G if you like)
4K:8K:16K|--sizes item 1: '8K:16K' is not a number (digits, then K, M or G if you like)
99999999999G|--sizes item 1: '99999999999G' is too large
EOS
    # Good lists still measure.
    timeout -s KILL 30 "$bench" --memcpy --iters 2 --sizes 4K:16K,1M >"$tmp/out" 2>"$tmp/err" ||
        bad "--sizes 4K:16K,1M failed: $(cat "$tmp/err")"
    [ "$(grep -Ec '^(4096|8192|16384|1048576) ' "$tmp/out")" -eq 4 ] ||
        bad "--sizes 4K:16K,1M did not give 4 rows: $(cat "$tmp/out")"
    ;;
notify)
    timeout -s KILL 100 "$bench" --notify --sizes 8,64K --iters 300 --warmup 30 \
        >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 0 ] || bad "--notify exited with $rc: $(cat "$tmp/err")"
    grep -q '^ferry-bench --notify: 2 ranks on this host, ferry memory, 300 iterations (+30 warm-up) per cell' \
        "$tmp/out" || bad "no banner: $(cat "$tmp/out")"
    if command -v ucx_perftest >/dev/null; then
        grep -Eq '^ucx_perftest -t ucp_am_lat -s [0-9]+ \(one way, typical\): [0-9.]*[1-9][0-9.]* us before, [0-9.]*[1-9][0-9.]* after$' \
            "$tmp/out" || bad "no ucp_am_lat figures: $(cat "$tmp/out")"
    else
        grep -q '^no UCX reference: ' "$tmp/out" || bad "no word of the missing reference: $(cat "$tmp/out")"
    fi
    [ "$(grep -c '^| size (B) |' "$tmp/out")" -eq 1 ] || bad "not one table: $(cat "$tmp/out")"
    grep -q 'before their bytes' "$tmp/out" && bad "$(grep 'before their bytes' "$tmp/out")"
    # | size | W (p99) | W+m (p99) | added | W+m/W | m (p99) | am | m/am | added/am |
    awk -F'|' -v ref="$(command -v ucx_perftest)" '
        function num(s) { gsub(/[ +]/, "", s); return s + 0 }
        function med(s) { split(s, a, "("); return num(a[1]) }
        function p99(s) { split(s, a, "("); sub(/\)/, "", a[2]); return num(a[2]) }
        function near(a, b) { d = a - b; return (d < 0 ? -d : d) <= 0.011 + 0.011 * (b < 0 ? -b : b) }
        # A ratio x/y printed from medians that the table shows rounded to
        # 0.01 (x within ex of the shown value): it must lie between what
        # the rounded figures allow.
        function ratio_ok(r, x, ex, y) {
            if (y <= 0.005) return r > 0
            lo = (x - ex) / (y + 0.005); hi = (x + ex) / (y - 0.005)
            return r >= lo - 0.011 && r <= hi + 0.011
        }
        $2 ~ /^ [0-9]+ $/ {
            rows[num($2)] = 1
            split("3 4 7", cells, " ")
            for (k = 1; k <= 3; k++) {
                c = cells[k]
                if (!(med($c) > 0) || p99($c) < med($c)) { print "bad cell " c ": " $0; bad = 1 }
            }
            w = med($3); wm = med($4); m = med($7)
            if (!near(num($5), wm - w)) { print "added is not WRITE+message - WRITE: " $0; bad = 1 }
            if (!ratio_ok(num($6), wm, 0.005, w)) { print "bad WRITE+message/WRITE ratio: " $0; bad = 1 }
            if (ref != "") {
                am = num($8)
                if (!(am > 0) || !ratio_ok(num($9), m, 0.005, am) || !ratio_ok(num($10), wm - w, 0.01, am)) {
                    print "bad ucp_am_lat columns: " $0; bad = 1
                }
            }
        }
        END {
            if (!rows[8] || !rows[65536] || length(rows) != 2) { print "not the rows 8 and 65536"; bad = 1 }
            exit bad
        }' "$tmp/out" >"$tmp/awk" || bad "the table: $(cat "$tmp/awk") in $(cat "$tmp/out")"
    # A rank of a ferry-run job: one table, from rank 0.
    timeout -s KILL 100 "$run" -n 2 -- "$bench" --notify --sizes 8 --iters 100 \
        >"$tmp/out" 2>"$tmp/err" || bad "ferry-run -n 2 -- ferry-bench --notify failed: $(cat "$tmp/err")"
    [ "$(grep -c '| size (B) |' "$tmp/out")" -eq 1 ] || bad "under ferry-run, not one table: $(cat "$tmp/out")"
    grep -q '^\[1\] ' "$tmp/out" && bad "rank 1 printed results: $(cat "$tmp/out")"
    for args in "--op read" "--sizes 4" "-n 4" "--csv x.csv" "--check"; do
        # shellcheck disable=SC2086
        timeout -s KILL 30 "$bench" --notify $args >"$tmp/out" 2>"$tmp/err"
        rc=$?
        [ $rc -eq 2 ] || bad "--notify $args exited with $rc, not 2"
        grep -q '^ferry-bench: --notify ' "$tmp/err" || bad "--notify $args: '$(cat "$tmp/err")'"
    done
    ;;
*)
    echo "unknown case '$case'"
    exit 2
    ;;
esac

[ $fail -eq 0 ] && echo "ferry_bench $case: all checks passed"
exit $fail
