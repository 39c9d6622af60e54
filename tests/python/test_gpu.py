# SPDX-License-Identifier: Apache-2.0
"""CUDA tensors from torch (label gpu; every test skips without a GPU, and
CTest then reports the file as skipped): registration through DLPack and
the CUDA array interface, a device-to-device WRITE and READ with a peer
process on the same GPU (CUDA IPC), host to device, an Allocation of GPU
memory seen by torch, and post_on_stream / wait_on_stream with a torch
stream. CTest runs the file twice: with torch's default caching allocator
and with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (VMM memory)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ferry

if not os.path.exists("/dev/nvidiactl") or not torch.cuda.is_available():
    pytest.skip("no CUDA GPU (or torch without CUDA: Debian's python3-torch is CPU-only)",
                allow_module_level=True)

SIZE = 8 << 20
DEV = int(os.environ.get("FERRY_TEST_DEVICE", "0"))

# The peer: a CUDA tensor on its device, registered; prints blob and address,
# then on each line "fill S" / "sum" / "exit" fills it with S or prints the
# sum of its bytes (a torch int64).
PEER = textwrap.dedent("""
    import json, sys, torch, ferry
    dev = int(sys.argv[1])
    torch.cuda.set_device(dev)
    t = torch.zeros(SIZE, dtype=torch.uint8, device=f"cuda:{dev}")
    with ferry.Agent(name="gpu-peer") as agent:
        agent.register(t)
        print(json.dumps({"blob": agent.metadata().hex(), "addr": t.data_ptr()}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            torch.cuda.synchronize()
            if cmd[0] == "fill":
                t.fill_(int(cmd[1])); torch.cuda.synchronize(); print("ok", flush=True)
            elif cmd[0] == "sum":
                print(int(t.to(torch.int64).sum()), flush=True)
            else:
                break
""").replace("SIZE", str(SIZE))


@pytest.fixture(scope="module")
def peer():
    dev = os.environ.get("FERRY_TEST_TARGET_DEVICE", str(DEV))
    p = subprocess.Popen([sys.executable, "-c", PEER, dev], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    hello = json.loads(p.stdout.readline())
    p.blob, p.addr = bytes.fromhex(hello["blob"]), hello["addr"]

    def call(line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    p.call = call
    yield p
    p.stdin.write("exit\n")
    p.stdin.close()
    p.wait(timeout=60)


@pytest.fixture
def agent():
    torch.cuda.set_device(DEV)
    with ferry.Agent(name="gpu") as a:
        yield a


def test_register_forms(agent):
    t = torch.ones(1 << 20, device=f"cuda:{DEV}")
    m = agent.register(t)
    assert m.descs[0][:3] == (t.data_ptr(), t.numel() * 4, ferry.MEM_CUDA)
    m.deregister()

    class CAI:  # only the CUDA array interface, as Numba exposes it
        __cuda_array_interface__ = t.__cuda_array_interface__

    agent.register(CAI()).deregister()
    with pytest.raises(ferry.InvalidArgument):
        agent.register(torch.ones(64, 64, device=f"cuda:{DEV}").t())


@pytest.mark.parametrize("local", ["cuda", "host"])
def test_write_read_with_peer(agent, peer, local):
    dev = f"cuda:{DEV}" if local == "cuda" else "cpu"
    src = torch.full((SIZE,), 7, dtype=torch.uint8, device=dev)
    agent.register(src)
    p = agent.load_peer(peer.blob)
    torch.cuda.synchronize()
    with agent.prepare("write", src, p, (peer.addr, SIZE)) as w:
        w.post() or w.wait(60)
    assert int(peer.call("sum")) == 7 * SIZE
    peer.call("fill 3")
    with agent.prepare("read", src, p, (peer.addr, SIZE)) as r:
        r.post() or r.wait(60)
    torch.cuda.synchronize()
    assert int(src.to(torch.int64).sum()) == 3 * SIZE


def test_alloc_cuda(agent):
    a = agent.alloc(1 << 20, "cuda", device=DEV)
    t = torch.from_dlpack(a)
    assert t.is_cuda and t.numel() == 1 << 20 and t.data_ptr() == a.addr
    assert t.device.index == DEV
    t.fill_(1)
    agent.register(a).deregister()


def test_post_on_stream(peer):
    torch.cuda.set_device(DEV)
    with ferry.Agent(name="gpu-stream", progress_thread=True) as agent:
        src = torch.zeros(SIZE, dtype=torch.uint8, device=f"cuda:{DEV}")
        agent.register(src)
        p = agent.load_peer(peer.blob)
        x = agent.prepare("write", src, p, (peer.addr, SIZE))
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for i in range(1, 6):
                src.fill_(i)
                x.post_on_stream(s)
                x.wait_on_stream(s)
        s.synchronize()
        assert int(peer.call("sum")) == 5 * SIZE
        x.post_on_stream(s.cuda_stream)  # a raw handle works too
        x.wait_on_stream(s.cuda_stream)
        s.synchronize()
        x.release()


def test_example_on_gpu():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                           "kv_transfer.py")
    r = subprocess.run([sys.executable, example, "--device", "cuda", "--requests", "20"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every byte checked" in r.stdout
    print(r.stdout)
