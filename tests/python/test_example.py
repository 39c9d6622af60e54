# SPDX-License-Identifier: Apache-2.0
"""examples/kv_transfer.py on CPU tensors, small: started by itself (its own
store and two ranks) and as a ferry-run job; it checks every byte it moved
and exits non-zero otherwise. (test_gpu.py runs it on CUDA tensors.)"""
import os
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "kv_transfer.py")
SMALL = ["--layers", "4", "--blocks", "64", "--block-bytes", "4096", "--request-blocks", "8",
         "--requests", "20"]


def check(out):
    assert "every byte checked" in out, out
    assert "latency median" in out and "GB/s" in out


def test_self_launched():
    r = subprocess.run([sys.executable, EXAMPLE] + SMALL, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    check(r.stdout)


def test_under_ferry_run():
    run = os.environ.get("FERRY_TEST_FERRY_RUN")
    if not run:
        pytest.skip("FERRY_TEST_FERRY_RUN (the ferry-run binary) is not set")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_RANK")}
    r = subprocess.run([run, "-n", "2", "--", sys.executable, EXAMPLE] + SMALL,
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    check(r.stdout)
