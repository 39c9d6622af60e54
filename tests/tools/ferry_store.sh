#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# ferry-store's command line, checked from the outside: -h and --help print
# the usage and succeed; each mistake (an unknown option, an option without
# its argument, a stray argument, a port that is not 0 to 65535) is named
# on stderr, exit 2, and starts no server; --bind takes a host name: with
# --bind localhost the printed line gives the numeric address it listens
# on, and a client that reaches it as tcp://localhost:PORT sets and gets
# keys through it; a name that does not resolve, or a port already taken,
# is a clear error, exit 1; numeric addresses and a fixed --port still
# work. Every server is stopped by its pid (SIGTERM, exit 0).
# Usage: ferry_store.sh FERRY-STORE FERRY-COMM-BENCH
set -u
store=$1
client=$2
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

# --- Help and mistakes ---------------------------------------------------------
for h in -h --help; do
    timeout -s KILL 30 "$store" $h >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 0 ] || bad "ferry-store $h exited with $rc, not 0"
    grep -q '^usage: ferry-store' "$tmp/out" || bad "ferry-store $h: no usage on stdout"
    grep -q -- '--bind HOST' "$tmp/out" || bad "ferry-store $h does not describe --bind"
    [ -s "$tmp/err" ] && bad "ferry-store $h wrote to stderr: $(cat "$tmp/err")"
done
# args|the first line of stderr|whether the usage follows. A server that
# started by mistake would print its line on stdout and wait, killed by
# timeout(1): both are failures.
while IFS='|' read -r args want usage; do
    # Word splitting of args is the point: each is an argument list.
    # shellcheck disable=SC2086
    timeout -s KILL 30 "$store" $args >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 2 ] || bad "ferry-store $args exited with $rc, not 2"
    [ "$(head -n 1 "$tmp/err")" = "$want" ] ||
        bad "ferry-store $args: stderr starts '$(head -n 1 "$tmp/err")', not '$want'"
    if [ "$usage" = usage ]; then
        grep -q '^usage: ferry-store' "$tmp/err" || bad "ferry-store $args: no usage on stderr"
    else
        [ "$(wc -l <"$tmp/err")" -eq 1 ] || bad "ferry-store $args: more than one line: $(cat "$tmp/err")"
    fi
    [ -s "$tmp/out" ] && bad "ferry-store $args wrote to stdout: $(cat "$tmp/out")"
done <<'EOF'
--bogus|ferry-store: unknown option '--bogus'|usage
--bogus=1|ferry-store: unknown option '--bogus'|usage
-q|ferry-store: unknown option '-q'|usage
--help=1|ferry-store: option '--help' takes no argument|usage
--port|ferry-store: option '--port' needs an argument|usage
--bind|ferry-store: option '--bind' needs an argument|usage
--port 0 x|ferry-store: unexpected argument 'x'|usage
--port 70000|ferry-store: --port takes a number from 0 to 65535, not '70000'|one
--port 65536|ferry-store: --port takes a number from 0 to 65535, not '65536'|one
--port abc|ferry-store: --port takes a number from 0 to 65535, not 'abc'|one
--port -1|ferry-store: --port takes a number from 0 to 65535, not '-1'|one
--port=80x|ferry-store: --port takes a number from 0 to 65535, not '80x'|one
EOF

# A name that does not resolve (.invalid never does).
timeout -s KILL 30 "$store" --bind nohost.invalid --port 0 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] || bad "--bind nohost.invalid exited with $rc, not 1"
grep -q "^ferry-store: cannot resolve --bind 'nohost.invalid': " "$tmp/err" ||
    bad "--bind nohost.invalid: '$(cat "$tmp/err")'"
[ -s "$tmp/out" ] && bad "--bind nohost.invalid wrote to stdout: $(cat "$tmp/out")"

# --- Serving -------------------------------------------------------------------
# Starts ferry-store with the given arguments in the background; sets pid,
# and addr and port from its line "ferry-store listening on ADDR port N"
# (empty if it printed none within 30 s, or ended).
start() {
    : >"$tmp/serve.out"
    "$store" "$@" >"$tmp/serve.out" 2>"$tmp/serve.err" &
    pid=$!
    pids="$pids $pid"
    addr="" port=""
    for _ in $(seq 300); do
        if grep -q . "$tmp/serve.out"; then
            addr=$(sed -n 's/^ferry-store listening on \([^ ]*\) port [0-9]*$/\1/p' "$tmp/serve.out")
            port=$(sed -n 's/^ferry-store listening on [^ ]* port \([0-9]*\)$/\1/p' "$tmp/serve.out")
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] || bad "ferry-store $*: no 'listening' line: '$(cat "$tmp/serve.out")' $(cat "$tmp/serve.err")"
}

# Stops the server started last, by pid: SIGTERM, a clean exit 0.
stop() {
    kill -TERM "$pid"
    # A watchdog, in case it ignores SIGTERM (the test fails, nothing
    # stays); it ends by itself once the server is reaped.
    (for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -KILL "$pid") &
    watchdog=$!
    wait "$pid"
    rc=$?
    wait "$watchdog"
    [ $rc -eq 0 ] || bad "ferry-store $1: SIGTERM ended it with $rc, not 0"
    grep -q '^ferry-store: Terminated, stopping$' "$tmp/serve.err" ||
        bad "ferry-store $1: no word on stopping: $(cat "$tmp/serve.err")"
}

# --bind localhost: the printed address is numeric, one of localhost's, and
# a client that knows only the name gets a working store there: 200 SETs,
# each read back by a GET that waits for the key (ferry-comm-bench exits 1
# on any failing call).
start --bind localhost --port 0
if [ -n "$port" ]; then
    printf '%s\n' "$addr" | grep -Eq '^([0-9]+\.){3}[0-9]+$|^[0-9a-fA-F:]*:[0-9a-fA-F:.]*$' ||
        bad "--bind localhost printed '$addr', not a numeric address"
    if command -v getent >/dev/null; then
        getent ahosts localhost | awk '{ print $1 }' | grep -qxF "$addr" ||
            bad "--bind localhost listens on $addr, which is not an address of localhost"
    fi
    timeout -s KILL 60 "$client" store --clients 1 --seconds 0.2 \
        --store "tcp://localhost:$port" >"$tmp/client" 2>&1
    rc=$?
    [ $rc -eq 0 ] || bad "a client of tcp://localhost:$port failed ($rc): $(cat "$tmp/client")"
    grep -Eq '^1 +[0-9]+ ' "$tmp/client" ||
        bad "the client of tcp://localhost:$port printed no result: $(cat "$tmp/client")"

    # The same name and port while that server holds them: refused, the
    # address and the reason named.
    timeout -s KILL 30 "$store" --bind localhost --port "$port" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 1 ] || bad "a second --bind localhost --port $port exited with $rc, not 1"
    grep -q "bind $addr port $port: Address already in use" "$tmp/err" ||
        bad "a second --bind localhost --port $port: '$(cat "$tmp/err")'"
    stop "--bind localhost"
fi

# A numeric address and a fixed port (the one just freed) as before.
if [ -n "$port" ]; then
    fixed=$port
    start --bind 127.0.0.1 --port "$fixed"
    [ "$addr" = 127.0.0.1 ] || bad "--bind 127.0.0.1 printed '$addr'"
    [ "$port" = "$fixed" ] || bad "--port $fixed printed port '$port'"
    [ -n "$port" ] && stop "--bind 127.0.0.1"
fi
# The default address is loopback.
start --port 0
[ "$addr" = 127.0.0.1 ] || bad "the default address is '$addr', not 127.0.0.1"
[ -n "$port" ] && stop "(default)"

[ $fail -eq 0 ] && echo "ferry_store: all checks passed"
exit $fail
