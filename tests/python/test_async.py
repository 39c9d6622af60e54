# SPDX-License-Identifier: Apache-2.0
"""asyncio waits through the agent's fd: 1 000 transfers in flight at once
awaited by one event loop (with and without a progress thread), every
byte checked; post_async; a timeout; and the completion queue."""
import asyncio
import gc
import weakref

import numpy as np
import pytest

import ferry
from conftest import write_all

N = 1000
BLOCK = 4096


@pytest.mark.parametrize("thread", [True, False], ids=["progress_thread", "loop_progress"])
def test_thousand_concurrent(spawn, rng, thread):
    # Ordinary memory on the peer: its progress thread must serve every
    # transfer, so they really are in flight together.
    peer = spawn("numpy", N * BLOCK)
    with ferry.Agent(name="aio", progress_thread=thread) as agent:
        src = rng.integers(0, 256, N * BLOCK, dtype=np.uint8)
        back = np.zeros_like(src)
        agent.register([src, back])
        p = agent.load_peer(peer.blob)
        order = rng.permutation(N)
        writes = [agent.prepare("write", src[i * BLOCK:(i + 1) * BLOCK], p,
                                (peer.addr + int(order[i]) * BLOCK, BLOCK)) for i in range(N)]
        reads = [agent.prepare("read", back[i * BLOCK:(i + 1) * BLOCK], p,
                               (peer.addr + int(order[i]) * BLOCK, BLOCK)) for i in range(N)]

        async def main():
            await asyncio.gather(*(w.post_async(timeout=60) for w in writes))
            # post() all first, then await: many wait_async at once.
            for r in reads:
                r.post()
            await asyncio.gather(*(r.wait_async(timeout=60) for r in reads))

        asyncio.run(main())
        assert np.array_equal(back, src)
        for x in writes + reads:
            x.release()


def test_wait_async_timeout_and_cancel(spawn):
    peer = spawn("numpy", 8 << 20)
    with ferry.Agent(name="aio-stop", stall_timeout=0) as agent:
        x, _ = write_all(agent, peer)
        peer.stop()
        try:
            async def main():
                x.post()
                with pytest.raises(ferry.Timeout):
                    await x.wait_async(timeout=0.3)
                # Still in flight: cancel, and the await reports it.
                assert x.cancel() in (True, False)
                with pytest.raises(ferry.Canceled):
                    await x.wait_async(timeout=10)

            asyncio.run(main())
        finally:
            peer.cont()


def test_completions(spawn):
    peer = spawn("numpy", 1 << 20)
    with ferry.Agent(name="cq") as agent:
        src = np.arange(1 << 20, dtype=np.uint32).view(np.uint8)[:1 << 20]
        agent.register(src)
        p = agent.load_peer(peer.blob)
        xs = [agent.prepare("write", src[i << 16:(i + 1) << 16], p,
                            (peer.addr + (i << 16), 1 << 16), user_data=("block", i))
              for i in range(16)]
        pending = {x.user_data for x in xs if not x.post()}
        seen = set()
        for _ in range(2000):
            for c in agent.completions():
                assert c.status == ferry.Status.OK
                assert c.xfer.user_data == c.user_data
                seen.add(c.user_data)
            if seen >= pending:
                break
            import time
            time.sleep(0.005)
        assert seen == pending
        assert agent.completions() == []
        assert peer.read(0, 1 << 20) == bytes(src)
        # A completion the asyncio reader took waits for completions(), but
        # does not keep its request alive.
        x = agent.prepare("write", src, p, (peer.addr, 1 << 20), user_data="dropped")
        gone = weakref.ref(x)

        async def post_all():
            await x.post_async(timeout=30)
            await asyncio.gather(*(y.post_async(timeout=30) for y in xs))

        asyncio.run(post_all())
        del x
        gc.collect()
        assert gone() is None
        left = {c.user_data for c in agent.completions()}
        assert "dropped" not in left and left <= {x.user_data for x in xs}


def test_agent_close_fails_waiters(spawn):
    peer = spawn("numpy", 4 << 20)
    agent = ferry.Agent(name="aio-close", stall_timeout=0)
    x, _ = write_all(agent, peer)
    peer.stop()
    try:
        async def main():
            x.post()
            task = asyncio.ensure_future(x.wait_async())
            await asyncio.sleep(0.05)
            agent.close()
            with pytest.raises(ferry.Canceled):
                await task

        asyncio.run(main())
        assert x.released
    finally:
        peer.cont()
