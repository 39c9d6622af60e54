# SPDX-License-Identifier: Apache-2.0
"""torch CPU tensors between two processes: the peer's memory is a torch
tensor, the local side tensors of several dtypes and views at random
offsets (storage offsets the DLPack export carries), WRITE and READ, every
byte checked; an Allocation seen by torch through DLPack; bad tensors
(non-contiguous, requiring grad, on the meta device) raise, never crash."""
import numpy as np
import pytest
import torch

import ferry
from conftest import PeerProcess, segments

SIZE = 1 << 20


@pytest.fixture(scope="module")
def peer():
    """One peer process for the file (importing torch takes seconds)."""
    p = PeerProcess("torch", SIZE)
    yield p
    p.close()


@pytest.fixture
def agent():
    with ferry.Agent(name="torch") as a:
        yield a


def as_bytes(t):
    return bytes(t.contiguous().view(torch.uint8).numpy())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.int64, torch.bfloat16,
                                   torch.float16])
def test_tensor_views_round_trip(agent, peer, rng, dtype):
    item = torch.tensor([], dtype=dtype).element_size()
    n_elems = SIZE // item
    base = torch.from_numpy(rng.integers(0, 256, SIZE, dtype=np.uint8)).view(dtype)
    agent.register(base)
    p = agent.load_peer(peer.blob)
    segs = segments(rng, 32, n_elems, SIZE // item, 2048)
    # Each local descriptor is a view of base at an element offset.
    views = [base[lo:lo + n] for lo, _, n in segs]
    remote = [(peer.addr + r * item, n * item) for _, r, n in segs]
    with agent.prepare("write", views, p, remote) as w:
        w.post() or w.wait(30)
    for v, (_, r, n) in zip(views, segs):
        assert peer.read(r * item, n * item) == as_bytes(v)
    expect = base.clone()
    base.zero_()
    with agent.prepare("read", views, p, remote) as rd:
        rd.post() or rd.wait(30)
    for lo, _, n in segs:
        assert torch.equal(base[lo:lo + n].view(torch.uint8), expect[lo:lo + n].view(torch.uint8))


def test_2d_tensor_rows(agent, peer, rng):
    t = torch.arange(256 * 1024, dtype=torch.int32).reshape(256, 1024)
    agent.register(t)
    p = agent.load_peer(peer.blob)
    rows = sorted(rng.choice(256, 40, replace=False).tolist())
    x = agent.prepare("write", [t[r] for r in rows], p,
                      [(peer.addr + i * 4096, 4096) for i in range(len(rows))])
    x.post() or x.wait(30)
    for i, r in enumerate(rows):
        assert peer.read(i * 4096, 4096) == as_bytes(t[r])


def test_allocation_as_tensor(agent, peer):
    a = agent.alloc(SIZE)
    t = torch.from_dlpack(a)
    assert t.dtype == torch.uint8 and t.numel() == SIZE and t.data_ptr() == a.addr
    t.copy_(torch.arange(SIZE, dtype=torch.int64).remainder(251).to(torch.uint8))
    agent.register(a)
    p = agent.load_peer(peer.blob)
    with agent.prepare("write", a, p, (peer.addr, SIZE)) as x:
        x.post() or x.wait(30)
    assert peer.read(SIZE - 4096, 4096) == as_bytes(t[-4096:])


def test_bad_tensors(agent):
    with pytest.raises(ferry.InvalidArgument):
        agent.register(torch.zeros(64, 64).t())
    with pytest.raises(ferry.InvalidArgument):
        agent.register(torch.zeros(64, 64)[:, ::2])
    with pytest.raises(ferry.InvalidArgument):
        agent.register(torch.zeros(0))
    with pytest.raises(RuntimeError):  # torch's own: detach() first
        agent.register(torch.zeros(8, requires_grad=True))
    with pytest.raises((ferry.Error, RuntimeError, TypeError)):
        agent.register(torch.zeros(8, device="meta"))
    # Contiguous views and transposed-back tensors are fine.
    agent.register(torch.zeros(64, 64)[8:16]).deregister()
    agent.register(torch.zeros(64, 64).t().contiguous()).deregister()
