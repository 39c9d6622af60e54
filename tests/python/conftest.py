# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures of the Python tests: a peer process (peer.py) and the
seeded random numbers every test draws from (FERRY_TEST_SEED to repeat a
run; the seed is printed on failure)."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = int(os.environ.get("FERRY_TEST_SEED", random.randrange(1 << 30)))


def pytest_report_header(config):
    return f"FERRY_TEST_SEED={SEED}"


@pytest.fixture
def rng(request):
    import numpy as np

    return np.random.default_rng([SEED, hash(request.node.name) & 0xFFFFFFFF])


class PeerProcess:
    """A peer.py process: its blob, buffer address and length, and commands."""

    def __init__(self, kind="numpy", size=1 << 20, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "peer.py"), kind,
                                      str(size)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=e)
        hello = json.loads(self.proc.stdout.readline())
        self.blob = bytes.fromhex(hello["blob"])
        self.addr, self.len, self.pid = hello["addr"], hello["len"], hello["pid"]

    def call(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {self.pid} ended (exit {self.proc.poll()})")
        return json.loads(line)

    def fill(self, seed):
        self.call(op="fill", seed=seed)

    def read(self, off, n):
        return bytes.fromhex(self.call(op="read", off=off, len=n)["data"])

    def stop(self):
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self):
        os.kill(self.pid, signal.SIGCONT)

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cont()
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def spawn():
    """spawn(kind, size, env) starts a peer.py process, closed after the test."""
    peers = []

    def make(kind="numpy", size=1 << 20, env=None):
        p = PeerProcess(kind, size, env)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def pattern(seed, n):
    """The bytes peer.py's fill writes for a seed."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def segments(rng, count, local_size, remote_size, max_len):
    """count (local_off, remote_off, len) triples at random offsets and
    lengths, disjoint on each side (so every byte has one source), the local
    ones in shuffled order."""
    rslot, lslot = remote_size // count, local_size // count
    order = rng.permutation(count)
    out = []
    for i in range(count):
        n = int(rng.integers(1, min(max_len, rslot, lslot) + 1))
        r = i * rslot + int(rng.integers(0, rslot - n + 1))
        loc = int(order[i]) * lslot + int(rng.integers(0, lslot - n + 1))
        out.append((loc, r, n))
    return out


def write_all(agent, peer, fill=1):
    """A WRITE request of a registered array of `fill` bytes over the whole
    of peer's buffer (not posted), and the array."""
    import numpy as np

    src = np.full(peer.len, fill, np.uint8)
    agent.register(src)
    p = agent.load_peer(peer.blob)
    return agent.prepare("write", src, p, (peer.addr, peer.len)), src
