# SPDX-License-Identifier: Apache-2.0
"""Notifications between two processes: a message per post that arrives
after the post's bytes (the receiver checks the announced range of random
data as soon as it takes each message), set_notify between posts, the FIFO
order of stand-alone messages both ways with sizes 0 to 4096 (4097 raises
InvalidArgument), the sleeping wait with a timeout and the GIL released,
the asyncio path (with and without a progress thread), and the bound on
the messages the asyncio reader takes and nobody reads."""
import asyncio
import threading
import time

import numpy as np
import pytest

import ferry
from conftest import segments
from peer import announce

SIZE = 4 << 20
COUNT = 64


def connect(agent, peer):
    """Loads the peer's blob here and ours there: each side knows the other."""
    p = agent.load_peer(peer.blob)
    peer.call(op="load", blob=agent.metadata().hex())
    return p


def test_messages_after_bytes(spawn, rng):
    peer = spawn("numpy", SIZE)
    with ferry.Agent(name="notif-writer") as agent:
        src = rng.integers(0, 256, SIZE, dtype=np.uint8)
        agent.register(src)
        p = connect(agent, peer)
        segs = segments(rng, COUNT, SIZE, SIZE, 64 << 10)
        xs = [agent.prepare("write", src[loc:loc + n], p, (peer.addr + r, n),
                            notify=announce(r, src[loc:loc + n])) for loc, r, n in segs]
        for rnd in range(2):
            if rnd:
                # New bytes in the same ranges, each request's message replaced.
                src[:] = rng.integers(0, 256, SIZE, dtype=np.uint8)
                for x, (loc, r, n) in zip(xs, segs):
                    x.set_notify(announce(r, src[loc:loc + n]))
            # All in flight together; the peer checks each range on arrival.
            for x in xs:
                x.post()
            got = peer.call(op="recv", count=COUNT, timeout=30, check=True)
            for x in xs:
                x.wait(30)
            assert len(got["msgs"]) == COUNT
            assert got["bad"] == []
            assert set(got["names"]) == {agent.name}
            assert all(got["known"])
            want = sorted(announce(r, src[loc:loc + n]).hex() for loc, r, n in segs)
            assert sorted(got["msgs"]) == want
        # A message per successful post: a re-post sends it again.
        xs[0].post() or xs[0].wait(30)
        again = peer.call(op="recv", count=1, timeout=30, check=True)
        assert again["msgs"] == [announce(segs[0][1], src[segs[0][0]:segs[0][0] +
                                                           segs[0][2]]).hex()]
        assert again["bad"] == []


def test_fifo_and_sizes(spawn, rng):
    peer = spawn("numpy", 1 << 20)
    with ferry.Agent(name="notif-fifo") as agent:
        p = connect(agent, peer)
        sizes = [0, 4096] + [int(n) for n in rng.integers(0, 4097, 198)]
        msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
        # To the peer, stand-alone, in order (str is sent as UTF-8).
        for m in msgs:
            agent.notify(p, m)
        agent.notify(p, "done")
        got = peer.call(op="recv", count=len(msgs) + 1, timeout=30)
        assert got["msgs"] == [m.hex() for m in msgs] + [b"done".hex()]
        assert all(got["known"])
        # From the peer, in order: our Peer object names the sender.
        peer.call(op="send", msgs=[m.hex() for m in msgs])
        notes = []
        deadline = time.monotonic() + 30
        while len(notes) < len(msgs) and time.monotonic() < deadline:
            notes += agent.notifications()
        assert [n.data for n in notes] == msgs
        assert all(n.peer is p and n.peer_name == p.name for n in notes)
        assert all(isinstance(n, tuple) and len(n) == 3 for n in notes)
        assert agent.notifications() == []
        assert agent.notifications_dropped == 0
        # Over the maximum, everywhere a message is given.
        buf = np.zeros(4096, np.uint8)
        agent.register(buf)
        with pytest.raises(ferry.InvalidArgument):
            agent.notify(p, bytes(4097))
        with pytest.raises(ferry.InvalidArgument):
            agent.prepare("write", buf, p, (peer.addr, 4096), notify=bytes(4097))
        x = agent.prepare("write", buf, p, (peer.addr, 4096), notify=b"")
        with pytest.raises(ferry.InvalidArgument):
            x.set_notify(bytes(4097))
        with pytest.raises(TypeError):
            agent.notify(p, 17)
        # set_notify on a request prepared without a message.
        y = agent.prepare("write", buf, p, (peer.addr, 4096))
        with pytest.raises(ferry.InvalidArgument):
            y.set_notify(b"x")
        # Nothing of the failed calls reached the peer.
        x.post() or x.wait(30)
        got = peer.call(op="recv", count=1, timeout=30)
        assert got["msgs"] == [""]
        assert peer.call(op="recv", count=1, timeout=0.05)["msgs"] == []


def test_wait_timeout_and_gil(spawn):
    peer = spawn("numpy", 1 << 20)
    with ferry.Agent(name="notif-wait") as agent:
        p = connect(agent, peer)
        assert agent.wait_notification(0) is False
        t0 = time.monotonic()
        assert agent.wait_notification(0.2) is False
        assert 0.18 <= time.monotonic() - t0 < 2
        # Another Python thread (which needs the GIL) makes the peer send
        # while this one sleeps in the wait.
        th = threading.Thread(target=lambda: (time.sleep(0.1),
                                              peer.call(op="send", msgs=[b"ping".hex()])))
        t0 = time.monotonic()
        th.start()
        try:
            assert agent.wait_notification(10) is True
        finally:
            th.join()
        assert time.monotonic() - t0 < 5
        assert agent.notifications() == [(p.name, p, b"ping")]
        assert agent.wait_notification(0) is False
        agent.close()
        with pytest.raises(ferry.InvalidArgument):
            agent.notifications()


@pytest.mark.parametrize("thread", [True, False], ids=["progress_thread", "loop_progress"])
def test_asyncio(spawn, rng, thread):
    peer = spawn("numpy", 1 << 20)
    with ferry.Agent(name="notif-aio", progress_thread=thread) as agent:
        p = connect(agent, peer)
        msgs = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
                for n in rng.integers(0, 4097, 20)]
        src = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
        agent.register(src)
        x = agent.prepare("write", src, p, (peer.addr, src.size), notify=announce(0, src))

        async def main():
            loop = asyncio.get_running_loop()
            with pytest.raises(ferry.Timeout):
                await agent.notification_async(timeout=0.1)
            # Awaited before the peer sends: the fd reader wakes it.
            first = asyncio.ensure_future(agent.notification_async(timeout=30))
            await asyncio.sleep(0.02)
            await loop.run_in_executor(None, lambda: peer.call(op="send",
                                                               msgs=[m.hex() for m in msgs]))
            notes = [await first]
            async for n in agent.notifications_async():
                notes.append(n)
                if len(notes) == len(msgs):
                    break
            assert [n.data for n in notes] == msgs
            assert all(n.peer is p for n in notes)
            # A transfer and its message in the same loop.
            await x.post_async(timeout=30)
            return await loop.run_in_executor(None, lambda: peer.call(
                op="recv", count=1, timeout=30, check=True))

        got = asyncio.run(asyncio.wait_for(main(), 60))
        assert got["msgs"] == [announce(0, src).hex()] and got["bad"] == []
        assert agent.notifications() == []


def test_asyncio_reader_bounded(spawn, monkeypatch):
    # The reader takes what arrives even when nobody awaits it; its list
    # stops at NOTES_MAX, the newest are dropped and counted, none is lost
    # without a count.
    monkeypatch.setattr(ferry._aio, "NOTES_MAX", 8)
    peer = spawn("numpy", 1 << 20)
    sent = [bytes([i]) * (i + 1) for i in range(40)]
    with ferry.Agent(name="notif-bound") as agent:
        connect(agent, peer)

        async def main():
            loop = asyncio.get_running_loop()
            with pytest.raises(ferry.Timeout):  # attaches the reader
                await agent.notification_async(timeout=0.05)
            await loop.run_in_executor(None, lambda: peer.call(
                op="send", msgs=[m.hex() for m in sent]))
            deadline = loop.time() + 30
            while (len(agent._notes) + agent.notifications_dropped < len(sent) and
                   loop.time() < deadline):
                await asyncio.sleep(0.01)

        asyncio.run(asyncio.wait_for(main(), 60))
        assert len(agent._notes) == 8
        assert agent.notifications_dropped == len(sent) - 8
        assert [n.data for n in agent.notifications()] == sent[:8]
