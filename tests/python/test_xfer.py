# SPDX-License-Identifier: Apache-2.0
"""Transfers between two processes (this one and peer.py) from numpy arrays,
bytearray and memoryview, with every descriptor form: random lengths at
random offsets on both sides, every byte checked where it arrived."""
import numpy as np
import pytest

import ferry
from conftest import PeerProcess, pattern, segments

SIZE = 1 << 20


@pytest.fixture(scope="module")
def peers():
    """One peer process of each kind for the file, started when first used."""
    made = {}

    def get(kind, size=SIZE):
        if (kind, size) not in made:
            made[kind, size] = PeerProcess(kind, size)
        return made[kind, size]

    yield get
    for p in made.values():
        p.close()


@pytest.fixture
def agent():
    with ferry.Agent(name="initiator") as a:
        yield a


def local_of(agent, kind):
    if kind == "numpy":
        buf = np.zeros(SIZE, np.uint8)
        return buf, buf
    if kind == "bytearray":
        buf = bytearray(SIZE)
        return buf, np.frombuffer(buf, np.uint8)
    if kind == "memoryview":
        buf = memoryview(bytearray(SIZE))
        return buf, np.frombuffer(buf, np.uint8)
    buf = agent.alloc(SIZE)
    return buf, np.frombuffer(buf, np.uint8)


@pytest.mark.parametrize("local_kind", ["numpy", "bytearray", "memoryview", "alloc"])
@pytest.mark.parametrize("peer_kind", ["numpy", "alloc"])
def test_write_then_read_back(agent, peers, rng, local_kind, peer_kind):
    peer = peers(peer_kind)
    buf, view = local_of(agent, local_kind)
    agent.register(buf)
    p = agent.load_peer(peer.blob)
    segs = segments(rng, 64, SIZE, SIZE, 8192)
    view[:] = rng.integers(0, 256, SIZE, dtype=np.uint8)
    # Local: slices of the array itself (numpy) or tuples; remote: tuples.
    if local_kind == "numpy":
        local = [view[lo:lo + n] for lo, _, n in segs]
    else:
        base = ferry.describe(buf)[0]
        local = [(base + lo, n) for lo, _, n in segs]
    remote = [(peer.addr + r, n) for _, r, n in segs]
    with agent.prepare("write", local, p, remote) as w:
        assert w.count == 64 and w.op == "write"
        w.post() or w.wait(30)
    got = np.frombuffer(peer.read(0, SIZE), np.uint8)
    for lo, r, n in segs:
        assert np.array_equal(got[r:r + n], view[lo:lo + n]), (lo, r, n)
    # READ it back into cleared memory: each local range gets its remote one.
    expect = view.copy()
    view[:] = 0
    with agent.prepare("read", local, p, remote) as rd:
        rd.post() or rd.wait(30)
    for lo, _, n in segs:
        assert bytes(view[lo:lo + n]) == bytes(expect[lo:lo + n])
    outside = np.ones(SIZE, bool)
    for lo, _, n in segs:
        outside[lo:lo + n] = False
    assert not view[outside].any(), "a READ wrote outside its ranges"


def test_read_pattern(agent, spawn, rng):
    peer = spawn("numpy", SIZE)  # its own: it is filled
    peer.fill(1234)
    expect = pattern(1234, SIZE)
    dst = np.zeros(SIZE, np.uint8)
    agent.register(dst)
    p = agent.load_peer(peer.blob)
    segs = segments(rng, 200, SIZE, SIZE, 4096)
    x = agent.prepare("read", [(dst.ctypes.data + lo, n) for lo, _, n in segs], p,
                      [(peer.addr + r, n) for _, r, n in segs])
    for _ in range(3):  # re-posted: the same bytes each time
        dst[:] = 0
        x.post() or x.wait(30)
        for lo, r, n in segs:
            assert np.array_equal(dst[lo:lo + n], expect[r:r + n])
    x.release()
    assert x.released


@pytest.mark.parametrize("form", ["desc_dtype", "uint64_n2", "uint64_n4", "tuples"])
def test_descriptor_forms(agent, peers, rng, form):
    n = 10000
    peer = peers("alloc", n * 64)
    src = rng.integers(0, 256, n * 64, dtype=np.uint8)
    agent.register(src)
    p = agent.load_peer(peer.blob)
    lens = rng.integers(1, 65, n).astype(np.uint64)
    loff = rng.permutation(n).astype(np.uint64) * 64
    roff = np.arange(n, dtype=np.uint64) * 64
    laddr = src.ctypes.data + loff
    raddr = peer.addr + roff
    if form == "desc_dtype":
        local, remote = ferry.descs(laddr, lens), ferry.descs(raddr, lens, "host")
        assert local.dtype == ferry.desc_dtype and local.itemsize == ferry._ferry.DESC_SIZE
    elif form == "uint64_n2":
        local, remote = np.stack([laddr, lens], 1), np.stack([raddr, lens], 1)
    elif form == "uint64_n4":
        z = np.zeros(n, np.uint64)
        local = np.stack([laddr, lens, z + ferry.MEM_HOST, z], 1)
        remote = np.stack([raddr, lens, z, z], 1)
    else:
        local = list(zip(laddr.tolist(), lens.tolist()))
        remote = list(zip(raddr.tolist(), lens.tolist()))
    x = agent.prepare(ferry.WRITE, local, p, remote)
    assert x.count == n
    x.post() or x.wait(30)
    got = np.frombuffer(peer.read(0, n * 64), np.uint8)
    for i in range(0, n, 97):  # a sample: the reply is hex over a pipe
        o, r, k = int(loff[i]), int(roff[i]), int(lens[i])
        assert np.array_equal(got[r:r + k], src[o:o + k]), i


def test_many_posts(agent, peers, rng):
    peer = peers("alloc")
    src = np.zeros(SIZE, np.uint8)
    agent.register(src)
    p = agent.load_peer(peer.blob)
    off, n = int(rng.integers(0, SIZE // 2)), int(rng.integers(1, SIZE // 2))
    x = agent.prepare("write", src[:n], p, (peer.addr + off, n))
    for i in range(100):
        src[:n] = i
        x.post() or x.wait(10)
    assert peer.read(off, n) == bytes([99]) * n
