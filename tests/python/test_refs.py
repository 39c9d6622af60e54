# SPDX-License-Identifier: Apache-2.0
"""Reference counts and lifetimes: a registered object outlives its last
Python reference until deregistered (its memory still takes transfers);
10 000 register/deregister and prepare/release cycles leak neither
references nor memory; DLPack and buffer views of an Allocation keep it."""
import gc
import sys
import tracemalloc
import weakref

import numpy as np

import ferry


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_registered_object_kept_alive():
    with ferry.Agent(name="refs") as agent:
        src = np.arange(4096, dtype=np.uint8)
        agent.register(src)
        dst = np.zeros(4096, np.uint8)
        gone = weakref.ref(dst)
        m = agent.register(dst)
        addr = dst.ctypes.data
        del dst
        gc.collect()
        assert gone() is not None, "a registered array was freed"
        me = agent.load_peer(agent.metadata())
        x = agent.prepare("write", src, me, (addr, 4096))
        x.post() or x.wait(10)
        assert np.array_equal(m.objects[0], src)
        x.release()
        m.deregister()
        gc.collect()
        assert gone() is None, "a deregistered array was kept"


def test_no_leak_over_10000_cycles():
    with ferry.Agent(name="leak") as agent:
        buf = np.zeros(1 << 16, np.uint8)
        base = agent.register(buf)
        me = agent.load_peer(agent.metadata())
        refs = sys.getrefcount(buf), sys.getrefcount(me), sys.getrefcount(agent)

        # Each cycle makes and drops one kind of object, in turn: a
        # registration (about 2 ms of UCX work each, hence the rotation), a
        # request posted to completion, an allocation viewed by numpy, a
        # blob loaded again, a descriptor table parsed.
        table = np.array([[buf.ctypes.data, 64]] * 100, np.uint64)
        remote = table.copy()
        remote[:, 0] += 4096

        def cycle(i):
            k = i % 5
            if k == 0:
                agent.register(buf[i % 1000:i % 1000 + 4096]).deregister()
            elif k == 1:
                x = agent.prepare("write", (buf.ctypes.data, 64), me,
                                  (buf.ctypes.data + 4096, 64), user_data=i)
                x.post() or x.wait(10)
                x.release()
            elif k == 2:
                a = agent.alloc(4096)
                np.frombuffer(a, np.uint8)[:] = 1
                del a
            elif k == 3:
                assert agent.load_peer(agent.metadata()) is me
            else:
                with agent.prepare("read", table, me, remote) as x:
                    assert x.count == 100

        for i in range(500):  # warm up allocator caches
            cycle(i)
        gc.collect()
        tracemalloc.start()
        rss0 = rss_kib()
        py0 = tracemalloc.get_traced_memory()[0]
        for i in range(10000):
            cycle(i)
        agent.completions()
        gc.collect()
        py1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        rss1 = rss_kib()
        assert (sys.getrefcount(buf), sys.getrefcount(me), sys.getrefcount(agent)) == refs
        assert py1 - py0 < 64 * 1024, f"Python heap grew by {py1 - py0} bytes"
        assert rss1 - rss0 < 8 * 1024, f"RSS grew by {rss1 - rss0} KiB"
        base.deregister()


def test_allocation_views():
    agent = ferry.Agent(name="views")
    a = agent.alloc(1 << 20)
    view = np.frombuffer(a, np.uint8)
    mv = memoryview(a)
    gone = weakref.ref(a) if hasattr(a, "__weakref__") else None
    del a
    view[:] = 3
    mv[0] = 4
    agent.close()
    assert view[0] == 4 and view[1:].sum() == 3 * ((1 << 20) - 1)
    del view, mv
    gc.collect()
    assert gone is None or gone() is None
