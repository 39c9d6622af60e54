# SPDX-License-Identifier: Apache-2.0
"""The store and the communicator from Python: every Store call against the
embedded StoreServer, and a two-rank job (two processes joined through the
server as FERRY_STORE) that exchanges metadata with Comm, WRITEs random
bytes from rank 0 into rank 1 and checks them there."""
import os
import subprocess
import sys
import textwrap

import pytest

import ferry


def test_store_calls():
    with ferry.StoreServer() as srv, ferry.Store(srv.url, timeout=10) as st:
        assert srv.port > 0 and srv.url.startswith("tcp://127.0.0.1:")
        st.set("a", b"one")
        st.set("s", "text")
        assert st.get("a") == b"one" and st.get(b"s") == b"text"
        assert st.add("n", 5) == 5 and st.add("n", -2) == 3
        assert st.check(["a", "n"]) and not st.check(["missing"])
        st.wait(["a"], timeout=1)
        with pytest.raises(ferry.Timeout):
            st.wait(["missing"], timeout=0.2)
        assert st.compare_set("cas", b"", b"x") == b"x"
        assert st.compare_set("cas", b"x", b"y") == b"y"
        st.append("app", b"ab")
        st.append("app", bytearray(b"cd"))
        assert st.get("app") == b"abcd"
        st.multi_set(["m1", "m2"], [b"v1", "v2"])
        assert st.multi_get(["m1", "m2"]) == [b"v1", b"v2"]
        assert st.num_keys() >= 6
        assert st.delete_key("a") and not st.delete_key("a")
        st.ping()
        with pytest.raises(ferry.InvalidArgument):
            st.set("bad\0key", b"")
        with pytest.raises(TypeError):
            st.check("one-key-not-a-list")
    with pytest.raises(ferry.InvalidArgument):
        ferry.Store("not a url", timeout=1)


RANK = textwrap.dedent("""
    import numpy as np, ferry
    with ferry.Comm(timeout=60) as comm, ferry.Agent(name=f"rank{comm.rank}") as agent:
        buf = np.zeros(1 << 20, np.uint8)
        agent.register(buf)
        comm.exchange(agent, timeout=60)
        addrs = [int(a) for a in comm.allgather(str(buf.ctypes.data), timeout=60)]
        assert comm.peer(comm.rank).name == f"rank{comm.rank}"
        if comm.rank == 0:
            buf[:] = np.random.default_rng(SEED).integers(0, 256, buf.size, dtype=np.uint8)
            x = agent.prepare("write", buf, comm.peer(1), (addrs[1], buf.nbytes))
            x.post() or x.wait(30)
        comm.barrier(timeout=60)
        if comm.rank == 1:
            agent.progress()
            want = np.random.default_rng(SEED).integers(0, 256, buf.size, dtype=np.uint8)
            assert np.array_equal(buf, want), "rank 1: the bytes differ"
        comm.barrier(timeout=60)
        print(f"rank {comm.rank}: ok", flush=True)
""")


def test_comm_two_ranks():
    with ferry.StoreServer() as srv:
        procs = []
        for rank in range(2):
            env = dict(os.environ, FERRY_RANK=str(rank), FERRY_WORLD_SIZE="2",
                       FERRY_STORE=srv.url, FERRY_COMM_PREFIX=f"pytest{os.getpid()}/")
            procs.append(subprocess.Popen([sys.executable, "-c",
                                           RANK.replace("SEED", str(os.getpid()))],
                                          env=env, stdout=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert outs == ["rank 0: ok\n", "rank 1: ok\n"]


def test_comm_abort_in_process():
    with ferry.StoreServer() as srv, ferry.Comm(rank=0, size=1, store=srv.url,
                                                timeout=10) as comm:
        assert (comm.rank, comm.size) == (0, 1)
        assert comm.allgather(b"solo") == [b"solo"]
        comm.abort("giving up on purpose")
        with pytest.raises(ferry.Aborted) as e:
            comm.barrier(timeout=5)
        assert "giving up on purpose" in e.value.detail
