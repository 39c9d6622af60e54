#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The skip list that ends `make test` (tests/ctest-summary), on a small CTest
# project of its own: a test that passes, two that skip (one printing a
# "skip:" line among others, one printing only an ordinary line) and, in a
# second run, one that fails. The list must name each skipped test with its
# reason, leave the others out, and the exit status must stay ctest's.
#
# Usage: ctest_summary.sh CTEST_SUMMARY
set -eu

summary=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-summary.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "test_ctest_summary: FAIL: $*" >&2
    [ ! -f "$tmp/out" ] || sed 's/^/  | /' "$tmp/out" >&2
    exit 1
}

mkdir "$tmp/src"
cat >"$tmp/src/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.15...3.28)
project(summary LANGUAGES NONE)
enable_testing()
add_test(NAME passes COMMAND sh -c "echo fine")
add_test(NAME skips_why COMMAND sh -c "echo setting up; echo 'skip: no widget (/dev/widget is absent)'; echo bye; exit 77")
add_test(NAME skips_plain COMMAND sh -c "echo nothing to do here; exit 77")
set_tests_properties(skips_why skips_plain PROPERTIES SKIP_RETURN_CODE 77)
if(WITH_FAILURE)
  add_test(NAME fails COMMAND sh -c "exit 3")
endif()
EOF
cmake -S "$tmp/src" -B "$tmp/build" >"$tmp/out" 2>&1 || fail "cmake failed"

"$summary" "$tmp/build" -j 2 >"$tmp/out" 2>&1 || fail "exit status $? with no failing test"
grep -q '^2 tests skipped (they did not run):$' "$tmp/out" || fail "no count of 2 skipped tests"
grep -Eq '^  skips_why +no widget \(/dev/widget is absent\)$' "$tmp/out" ||
    fail "skips_why is not listed with its skip: line"
grep -Eq '^  skips_plain +nothing to do here$' "$tmp/out" ||
    fail "skips_plain is not listed with its last line"
! grep -Eq '^  passes' "$tmp/out" || fail "a passing test is listed as skipped"

cmake -DWITH_FAILURE=ON "$tmp/build" >"$tmp/out" 2>&1 || fail "cmake failed"
status=0
"$summary" "$tmp/build" >"$tmp/out" 2>&1 || status=$?
[ "$status" = 8 ] || fail "exit status $status with a failing test, ctest's is 8"
grep -q '^2 tests skipped' "$tmp/out" || fail "no skip list after a failure"

status=0
"$summary" "$tmp/nowhere" >"$tmp/out" 2>&1 || status=$?
[ "$status" = 2 ] && grep -q "no build directory '$tmp/nowhere'" "$tmp/out" ||
    fail "a missing build directory gave status $status"

echo "test_ctest_summary: all checks passed"
