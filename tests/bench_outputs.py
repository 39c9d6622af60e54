#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ferry-bench's CSV and JSON outputs: runs a short sweep (two block sizes,
two batch sizes, both operations) with --csv and --json and checks that both
files parse, hold one row per operation, block size and batch size, carry
every column with a value of the right type, agree with each other, and
report a positive bandwidth. A second run checks the --memcpy reference's
rows the same way, the figures it does not measure blank (CSV) and null
(JSON). Usage: bench_outputs.py FERRY_BENCH"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

CONF = ["op", "initiator_mem", "target_mem", "alloc", "layout", "scheme",
        "ranks", "threads", "block_size", "batch_size", "iters", "warmup"]
FIGURES = ["bw_gbps", "avg_lat_us", "med_lat_us", "avg_prep_us", "p99_prep_us",
           "avg_post_us", "p99_post_us", "avg_tx_us", "p99_tx_us"]
INTS = {"ranks", "threads", "block_size", "batch_size", "iters", "warmup"}
# What --memcpy does not measure: blank in the CSV, null in the JSON.
MEMCPY_BLANK = set(FIGURES) - {"bw_gbps", "avg_lat_us"}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, file=sys.stderr)


def typed(row, where):
    """Converts a row's values in place; reports what does not convert."""
    for key in CONF + FIGURES:
        blank = row.get("op") == "MEMCPY" and key in MEMCPY_BLANK
        if blank:
            if row.get(key, 0) not in (None, ""):
                fail(f"{where}: {key} = {row.get(key)!r}, not blank")
            row[key] = None
            continue
        if key not in row or row[key] in (None, ""):
            fail(f"{where}: column {key} missing or empty")
            continue
        try:
            if key in INTS:
                row[key] = int(row[key])
            elif key in FIGURES:
                row[key] = float(row[key])
                if not math.isfinite(row[key]) or row[key] < 0:
                    fail(f"{where}: {key} = {row[key]}")
        except (TypeError, ValueError):
            fail(f"{where}: {key} = {row[key]!r} is not a number")


def run(bench, args, tmp):
    csv_path = os.path.join(tmp, "out.csv")
    json_path = os.path.join(tmp, "out.json")
    p = subprocess.run([bench] + args + ["--csv", csv_path, "--json", json_path],
                       capture_output=True, text=True, timeout=240)
    if p.returncode != 0:
        fail(f"ferry-bench {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
        return [], {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if header != CONF + FIGURES:
        fail(f"CSV header {header} is not {CONF + FIGURES}")
    for i, row in enumerate(rows):
        typed(row, f"CSV row {i + 1}")
    with open(json_path) as f:
        doc = json.load(f)
    for key in ("tool", "ferry_version", "bw_unit", "checked", "results"):
        if key not in doc:
            fail(f"JSON lacks {key}")
    results = doc.get("results", [])
    for i, row in enumerate(results):
        typed(row, f"JSON result {i}")
        if set(row) != set(CONF + FIGURES):
            fail(f"JSON result {i} keys {sorted(row)}")
    if len(results) != len(rows):
        fail(f"{len(rows)} CSV rows but {len(results)} JSON results")
    for i, (c, j) in enumerate(zip(rows, results)):
        for key in CONF + FIGURES:
            same = (abs(c[key] - j[key]) <= 1e-6 * max(1.0, abs(j[key]))
                    if key in FIGURES and j[key] is not None
                    else c[key] == j[key])
            if not same:
                fail(f"row {i}: {key} is {c[key]!r} in CSV, {j[key]!r} in JSON")
    return rows, doc


def main():
    bench = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        rows, doc = run(bench, ["--sizes", "1K:2K", "--batch", "1,3",
                                "--iters", "20", "--warmup", "2"], tmp)
        want = [(op, s, b) for op in ("WRITE", "READ") for s in (1024, 2048)
                for b in (1, 3)]
        got = [(r.get("op"), r.get("block_size"), r.get("batch_size")) for r in rows]
        if got != want:
            fail(f"rows {got}, expected {want}")
        for r in rows:
            if r.get("iters") != 20 or r.get("warmup") != 2 or \
                    r.get("bw_gbps", 0) <= 0:
                fail(f"row {r}: wrong iters or no bandwidth")
            if (r.get("initiator_mem"), r.get("target_mem"), r.get("alloc"),
                    r.get("layout"), r.get("scheme"), r.get("ranks"),
                    r.get("threads")) != \
                    ("host", "host", "ferry", "seq", "pairwise", 2, 1):
                fail(f"row {r}: wrong configuration columns")
        if doc.get("checked") is not False:
            fail("JSON says checked without --check")

        rows, _ = run(bench, ["--memcpy", "--sizes", "4K,64K", "--iters", "50"], tmp)
        if [(r.get("op"), r.get("block_size")) for r in rows] != \
                [("MEMCPY", 4096), ("MEMCPY", 65536)]:
            fail(f"--memcpy rows {rows}")
        for r in rows:
            if r.get("bw_gbps", 0) <= 0:
                fail(f"--memcpy row {r}: no bandwidth")
    if failures:
        print(f"bench_outputs: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("bench_outputs: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
