#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Every plot in docs/perf can be redrawn from data committed beside it:
# bench/plot -l names each PNG of docs/perf, each CSV it lists is there
# with the columns bench/plot reads and at least one row, and no CSV lies
# there unused. Where gnuplot is installed, each plot is also drawn from
# its CSVs into a temporary file (nothing in docs/perf is written).
#
# Usage: perf_plots.sh SOURCE_DIR
set -eu

src=$(cd "$1" && pwd)
perf=$src/docs/perf
plot=$src/bench/plot
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-plots.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "test_perf_plots: FAIL: $*" >&2
    exit 1
}

"$plot" -l >"$tmp/list" || fail "bench/plot -l failed"
for png in "$perf"/*.png; do
    name=$(basename "$png")
    grep -q "^$name " "$tmp/list" || fail "docs/perf/$name is not in bench/plot -l"
done
: >"$tmp/used"
while read -r image csvs; do
    [ -f "$perf/$image" ] || fail "bench/plot -l names docs/perf/$image, which is absent"
    for csv in $csvs; do
        echo "$csv" >>"$tmp/used"
        [ -f "$perf/$csv" ] || fail "docs/perf/$image: its CSV docs/perf/$csv is absent"
        header=$(head -n 1 "$perf/$csv")
        for column in op block_size bw_gbps; do
            echo ",$header," | grep -q ",$column," ||
                fail "docs/perf/$csv has no $column column"
        done
        [ "$(wc -l <"$perf/$csv")" -ge 2 ] || fail "docs/perf/$csv has no rows"
    done
    if command -v gnuplot >/dev/null; then
        # The CSV names are words on purpose: a list.
        # shellcheck disable=SC2086
        (cd "$perf" && "$plot" -o "$tmp/$image" $csvs) >"$tmp/out" 2>&1 ||
            fail "bench/plot could not draw $image: $(cat "$tmp/out")"
        [ -s "$tmp/$image" ] || fail "bench/plot drew an empty $image"
    fi
done <"$tmp/list"
for csv in "$perf"/*.csv; do
    grep -qx "$(basename "$csv")" "$tmp/used" ||
        fail "docs/perf/$(basename "$csv") is not the data of any plot"
done
if command -v gnuplot >/dev/null; then
    echo "test_perf_plots: $(wc -l <"$tmp/list") plots, their CSVs present and drawn"
else
    echo "test_perf_plots: $(wc -l <"$tmp/list") plots, their CSVs present (no gnuplot: not drawn)"
fi
