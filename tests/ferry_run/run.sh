#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# ferry-run's launcher duties, checked from the outside with shell ranks:
# the environment each rank gets, "[rank] " line prefixes on stdout and
# stderr, exit code propagation (first failed rank's code, 128 + signal for
# a signal), stopping the other ranks (SIGTERM, then SIGKILL after the
# grace period), forwarding SIGINT/SIGTERM, its usage errors (each named),
# the check of a --store URL before any rank starts, and the job secret
# each job gets. Every case runs under timeout(1), and no rank may be left
# running afterwards.
# Usage: run.sh path/to/ferry-run
set -u
RUN=$1
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Markers in every rank's command line (its $0) and in every sleep a rank
# starts (a duration no other process uses), to find leftovers by.
mark="ferry-run-test-$$"
export NAP="49.$$"

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Runs ferry-run under a hard limit; sets rc, out, err.
run() {
    timeout -s KILL 60 "$RUN" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}

# The pids of processes whose command line matches (from /proc, so that
# the test needs no procps).
find_procs() {
    local f
    for f in /proc/[0-9]*/cmdline; do
        tr '\0' ' ' 2>/dev/null <"$f" | grep -qE "$1" && basename "$(dirname "$f")"
    done
}

leftovers() {
    local pids
    pids=$(find_procs "$mark|sleep $NAP" | grep -vx "$$")
    if [ -n "$pids" ]; then
        fail "$1: processes left running: $pids"
        kill -KILL $pids 2>/dev/null
    fi
}

# 1. Environment and prefixes; a partial last line is completed.
run -n 3 -- sh -c 'echo "env $FERRY_RANK $FERRY_WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE ${FERRY_STORE%%:*}"; echo "to stderr" >&2; printf "no newline"' "$mark"
[ $rc = 0 ] || fail "plain run: exit $rc"
for r in 0 1 2; do
    grep -qx "\[$r\] env $r 3 $r 3 tcp" <<<"$out" || fail "rank $r env line missing: $out"
    grep -qx "\[$r\] no newline" <<<"$out" || fail "rank $r partial line missing"
    grep -qx "\[$r\] to stderr" <<<"$err" || fail "rank $r stderr line missing: $err"
done
[ "$(wc -l <<<"$out")" = 6 ] || fail "expected 6 stdout lines, got: $out"
# The store ferry-run hosts answers while the ranks run.
run -n 1 -- bash -c 'a=${FERRY_STORE#tcp://}; exec 3<>/dev/tcp/${a%:*}/${a##*:} && echo ok' "$mark"
[ $rc = 0 ] && grep -qx "\[0\] ok" <<<"$out" || fail "store not reachable: $rc $out $err"

# 2. One rank fails: its code comes back, the others are stopped at once.
start=$(date +%s)
run -n 4 -- sh -c 'if [ $FERRY_RANK = 2 ]; then exit 7; fi; exec sleep $NAP' "$mark"
[ $rc = 7 ] || fail "exit code: expected 7, got $rc"
[ $(($(date +%s) - start)) -lt 20 ] || fail "the others were not stopped"
grep -q "rank 2 exited with 7" <<<"$err" || fail "no report of rank 2: $err"
leftovers "exit 7"

# 3. A rank that ignores SIGTERM is SIGKILLed after the grace period.
run -n 2 --grace 1 -- sh -c 'if [ $FERRY_RANK = 0 ]; then exit 3; fi; trap "" TERM; sleep $NAP; echo survived' "$mark"
[ $rc = 3 ] || fail "grace: expected 3, got $rc"
grep -q survived <<<"$out" && fail "a rank survived SIGTERM and SIGKILL"
leftovers "grace"

# 4. A rank killed by a signal: 128 + the signal.
run -n 3 -- sh -c 'if [ $FERRY_RANK = 1 ]; then kill -KILL $$; fi; exec sleep $NAP' "$mark"
[ $rc = 137 ] || fail "signal: expected 137, got $rc"
leftovers "signal"

# 5. SIGINT and SIGTERM to ferry-run reach every rank.
for sig in INT TERM; do
    rm -f "$tmp"/got.*
    rm -f "$tmp"/ready.*
    # Not under timeout(1), which would turn the signal into its own.
    "$RUN" -n 3 -- sh -c \
        "trap 'touch $tmp/got.\$FERRY_RANK; exit 5' $sig; sleep \$NAP & touch $tmp/ready.\$FERRY_RANK; wait" "$mark" \
        >"$tmp/out" 2>&1 &
    pid=$!
    # A watchdog that ends by itself soon after ferry-run does.
    (for _ in $(seq 600); do
        kill -0 $pid 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -KILL $pid) &
    watchdog=$!
    # Wait until every rank has set its trap.
    for _ in $(seq 300); do
        [ -e "$tmp/ready.0" ] && [ -e "$tmp/ready.1" ] && [ -e "$tmp/ready.2" ] && break
        sleep 0.1
    done
    kill -$sig $pid
    wait $pid
    rc=$?
    wait $watchdog
    [ $rc = 5 ] || fail "SIG$sig: expected 5, got $rc ($(cat "$tmp/out"))"
    for r in 0 1 2; do
        [ -e "$tmp/got.$r" ] || fail "SIG$sig did not reach rank $r"
    done
    leftovers "SIG$sig"
done

# 6. Help, usage errors and a program that does not exist. -h and --help:
# the usage on stdout, exit 0. A mistake names what was wrong on the first
# line of stderr, exit 2, and starts no rank.
for h in -h --help; do
    run $h
    [ $rc = 0 ] || fail "$h: expected 0, got $rc"
    grep -q '^usage: ferry-run' <<<"$out" || fail "$h: no usage on stdout: $out"
    [ -z "$err" ] || fail "$h: wrote to stderr: $err"
done
# args|the first line of stderr (each list ends with a rank that leaves a
# trace, to prove that none started).
while IFS='|' read -r args want; do
    rm -f "$tmp/started"
    # Word splitting of args is the point: each is an argument list.
    # shellcheck disable=SC2086
    run $args -- sh -c "touch $tmp/started"
    [ $rc = 2 ] || fail "$args: expected 2, got $rc"
    [ "$(head -n 1 <<<"$err")" = "$want" ] ||
        fail "$args: stderr starts '$(head -n 1 <<<"$err")', not '$want'"
    [ -e "$tmp/started" ] && fail "$args: a rank was started"
done <<'EOF'
--bogus -n 2|ferry-run: unknown option '--bogus'
-q -n 2|ferry-run: unknown option '-q'
-n 0|ferry-run: -n takes a number from 1 to 4096, not '0'
-n abc|ferry-run: -n takes a number from 1 to 4096, not 'abc'
-n 4097|ferry-run: -n takes a number from 1 to 4096, not '4097'
-n 2 --grace soon|ferry-run: --grace takes seconds from 0 to 3600, not 'soon'
|ferry-run: -n N is required
EOF
# An option without its argument (nothing after it).
for opt in -n --store --grace; do
    run -n 1 $opt
    [ $rc = 2 ] || fail "$opt with no argument: expected 2, got $rc"
    [ "$(head -n 1 <<<"$err")" = "ferry-run: option '$opt' needs an argument" ] ||
        fail "$opt with no argument: stderr starts '$(head -n 1 <<<"$err")'"
    grep -q '^usage: ferry-run' <<<"$err" || fail "$opt with no argument: no usage on stderr"
done
run -n 2
[ $rc = 2 ] || fail "no program: expected 2, got $rc"
[ "$(head -n 1 <<<"$err")" = "ferry-run: no program to run" ] ||
    fail "no program: stderr starts '$(head -n 1 <<<"$err")'"
run -n 2 -- /nonexistent/program
[ $rc = 127 ] || fail "missing program: expected 127, got $rc"
grep -q "cannot run '/nonexistent/program'" <<<"$err" || fail "no text for a missing program: $err"

# 7. A --store URL that no rank could use is refused before any rank
# starts, with the library's reason; a good one, whether or not a store is
# up yet (rank 0 hosts one when none answers), reaches the ranks as given.
while IFS='|' read -r url want; do
    rm -f "$tmp/started"
    run -n 2 --store "$url" -- sh -c "touch $tmp/started"
    [ $rc = 2 ] || fail "--store $url: expected 2, got $rc"
    # A prefix: the resolver's own words end the last line.
    [[ "$err" == "ferry-run: --store: $want"* ]] ||
        fail "--store $url: '$err', not 'ferry-run: --store: $want...'"
    [ -e "$tmp/started" ] && fail "--store $url: a rank was started"
done <<'EOF'
tcp://127.0.0.1:99999|store: URL 'tcp://127.0.0.1:99999': port '99999' is not a number from 1 to 65535
tcp://127.0.0.1:http|store: URL 'tcp://127.0.0.1:http': port 'http' is not a number from 1 to 65535
tcp://127.0.0.1:0|store: URL 'tcp://127.0.0.1:0': port 0 is not a port a store listens on (a server started with port 0 picks a free port and reports which)
tcp://127.0.0.1|store: URL 'tcp://127.0.0.1' is not tcp://host:port
tcp://:5000|store: URL 'tcp://:5000' is not tcp://host:port
127.0.0.1:5000|store: URL '127.0.0.1:5000' does not start with tcp://
garbage|store: URL 'garbage' does not start with tcp://
tcp://nohost.invalid:5000|store tcp://nohost.invalid:5000: cannot resolve 'nohost.invalid'
EOF
for url in tcp://127.0.0.1:1 tcp://localhost:1 'tcp://[::1]:1'; do
    run -n 2 --store "$url" -- sh -c 'echo "$FERRY_STORE"'
    [ $rc = 0 ] || fail "--store $url: expected 0, got $rc ($err)"
    [ "$(grep -cxF -e "[0] $url" -e "[1] $url" <<<"$out")" = 2 ] ||
        fail "--store $url: the ranks saw '$out'"
done

# 7b. --etcd: a URL the etcd client's parser refuses is refused before any
# rank starts (as is any, in a build without etcd support); a good one
# reaches the ranks with a fresh key prefix, whether or not etcd is up;
# --store and --etcd together are a usage error.
while IFS='|' read -r url want; do
    rm -f "$tmp/started"
    run -n 2 --etcd "$url" -- sh -c "touch $tmp/started"
    [ $rc = 2 ] || fail "--etcd $url: expected 2, got $rc"
    [[ "$err" == "ferry-run: --etcd: $want"* || "$err" == *"built without"* ]] ||
        fail "--etcd $url: '$err', not 'ferry-run: --etcd: $want...'"
    [ -e "$tmp/started" ] && fail "--etcd $url: a rank was started"
done <<'EOF'
etcd://127.0.0.1:2379|dir: etcd: 'etcd://127.0.0.1:2379' has no prefix
etcd://127.0.0.1:0/x|dir: etcd: 'etcd://127.0.0.1:0/x': endpoint '127.0.0.1:0' has no valid port
tcp://127.0.0.1:2379/x|dir: etcd: 'tcp://127.0.0.1:2379/x' is not etcd://
EOF
run -n 2 --etcd etcd://127.0.0.1:1,127.0.0.1:2/jobs -- sh -c 'echo "$FERRY_STORE $FERRY_COMM_PREFIX"'
if [[ "$err" != *"built without"* ]]; then
    [ $rc = 0 ] || fail "--etcd: expected 0, got $rc ($err)"
    [ "$(grep -cE '^\[[01]\] etcd://127.0.0.1:1,127.0.0.1:2/jobs ferry/run-[0-9]+-[0-9]+/$' <<<"$out")" = 2 ] ||
        fail "--etcd: the ranks saw '$out'"
fi
run -n 2 --store tcp://127.0.0.1:1 --etcd etcd://127.0.0.1:1/x -- true
[ $rc = 2 ] && [[ "$err" == "ferry-run: one store: --store or --etcd, once"* ]] ||
    fail "--store with --etcd: $rc '$err'"

# 8. Each job hosting its own store gets a secret of its own (64 hex
# digits), the same in every rank; one the user set is handed on as it is.
unset FERRY_JOB_SECRET
run -n 2 -- sh -c 'echo "secret $FERRY_JOB_SECRET"' "$mark"
s0=$(sed -n 's/^\[0\] secret //p' <<<"$out")
s1=$(sed -n 's/^\[1\] secret //p' <<<"$out")
[[ $s0 =~ ^[0-9a-f]{64}$ ]] && [ "$s0" = "$s1" ] || fail "job secret: '$s0' '$s1'"
run -n 1 -- sh -c 'echo "secret $FERRY_JOB_SECRET"' "$mark"
s2=$(sed -n 's/^\[0\] secret //p' <<<"$out")
[ -n "$s2" ] && [ "$s2" != "$s0" ] || fail "two jobs share a secret: '$s0' '$s2'"
export FERRY_JOB_SECRET=user-chosen-secret-0123456789
run -n 1 -- sh -c 'echo "secret $FERRY_JOB_SECRET"' "$mark"
grep -qx "\[0\] secret $FERRY_JOB_SECRET" <<<"$out" || fail "the user's secret: $out"
unset FERRY_JOB_SECRET

if [ $fails -gt 0 ]; then
    echo "test_ferry_run: $fails check(s) failed"
    exit 1
fi
echo "test_ferry_run: all checks passed"
