# SPDX-License-Identifier: Apache-2.0
"""Every exception class raised by a real failure, and the GIL released
while a wait blocks: a peer killed (PeerLost), a stopped peer with a short
stall time (Timeout), cancel (Canceled), a re-post in flight (Busy), a bad
blob (Protocol), bad descriptors (NotRegistered, OutOfRange, Mismatch), a
non-contiguous array or tensor (InvalidArgument), GPU memory without a GPU
(Unsupported); and bad Python input that must raise, never crash."""
import os
import threading
import time

import numpy as np
import pytest

import ferry
from conftest import write_all

MB = 1 << 20


@pytest.fixture
def agent():
    with ferry.Agent(name="errors") as a:
        yield a


def test_peer_killed_is_peer_lost(agent, spawn):
    peer = spawn("numpy", 4 * MB)
    x, _ = write_all(agent, peer)
    x.post() or x.wait(10)
    peer.kill()
    with pytest.raises(ferry.PeerLost) as e:
        x.post() or x.wait(10)
    assert e.value.status == ferry.Status.ERR_PEER_LOST and e.value.detail
    assert isinstance(e.value, ConnectionError)


def test_stopped_peer_is_timeout(spawn):
    peer = spawn("numpy", 8 * MB)
    with ferry.Agent(name="stall", stall_timeout=0.3) as agent:
        x, _ = write_all(agent, peer)
        peer.stop()
        try:
            t0 = time.monotonic()
            with pytest.raises(ferry.Timeout) as e:
                x.post() or x.wait(30)
            assert time.monotonic() - t0 < 10
            assert "stall" in e.value.detail
            assert isinstance(e.value, TimeoutError)
        finally:
            peer.cont()


def test_busy_cancel_and_gil(agent, spawn):
    peer = spawn("numpy", 8 * MB)
    x, _ = write_all(agent, peer)
    peer.stop()
    try:
        assert x.post() is False
        with pytest.raises(ferry.Busy):
            x.post()
        with pytest.raises(ferry.Timeout):
            x.wait(0.05)
        # The GIL is released while wait sleeps: a Python thread counts
        # meanwhile (a wait that held it would leave the count unchanged).
        counter, stop = [0], threading.Event()

        def count():
            while not stop.is_set():
                counter[0] += 1

        t = threading.Thread(target=count)
        t.start()
        time.sleep(0.05)
        before = counter[0]
        with pytest.raises(ferry.Timeout):
            x.wait(0.5)
        during = counter[0] - before
        stop.set()
        t.join()
        assert during > 10000, during
        # Closing the agent while a thread waits is refused, not a crash.
        waiter = threading.Thread(target=lambda: pytest.raises(ferry.Error, x.wait, 1.0))
        waiter.start()
        time.sleep(0.2)
        with pytest.raises(ferry.Busy):
            agent.close()
        with pytest.raises(ferry.Busy):
            x.release()
        waiter.join()
        x.cancel()
        with pytest.raises(ferry.Canceled):
            x.wait(5)
    finally:
        peer.cont()


def test_bad_blob_is_protocol(agent):
    blob = bytearray(agent.metadata())
    with pytest.raises(ferry.Protocol):
        agent.load_peer(b"not a blob")
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ferry.Protocol) as e:
        agent.load_peer(blob)
    assert e.value.detail


def test_descriptor_errors(agent):
    buf = np.zeros(MB, np.uint8)
    other = np.zeros(4096, np.uint8)
    agent.register(buf)
    me = agent.load_peer(agent.metadata())
    base = buf.ctypes.data
    with pytest.raises(ferry.NotRegistered):
        agent.prepare("write", other, me, (base, 4096))
    with pytest.raises(ferry.OutOfRange):
        agent.prepare("write", (base + MB - 10, 20), me, (base, 20))
    with pytest.raises(ferry.Mismatch):
        agent.prepare("write", (base, 10), me, (base + 100, 20))
    with pytest.raises(ferry.InvalidArgument):
        agent.prepare("copy", buf, me, buf)
    with pytest.raises(ferry.InvalidArgument):
        agent.prepare("write", [], me, [])
    with pytest.raises(ferry.InvalidArgument):
        agent.prepare("write", buf, me, buf, notify=bytes(4097))
    # Loopback works: the agent's own blob as a peer.
    buf[:100] = 9
    x = agent.prepare("write", buf[:100], me, (base + 1000, 100))
    x.post() or x.wait(10)
    assert (buf[1000:1100] == 9).all()


def test_bad_python_input(agent):
    with pytest.raises(ferry.InvalidArgument):
        agent.register(np.zeros((64, 64))[:, ::2])
    with pytest.raises(ferry.InvalidArgument):
        agent.register(b"read-only bytes")
    with pytest.raises(ferry.InvalidArgument):
        agent.register(np.zeros(0))
    with pytest.raises(TypeError):
        agent.register(object())
    with pytest.raises(TypeError):
        agent.register(12345)
    with pytest.raises(ferry.InvalidArgument):
        agent.register((0, 0))
    with pytest.raises(ferry.InvalidArgument):
        agent.register((1, 2, "gpu"))
    with pytest.raises(ferry.Protocol):
        agent.load_peer(b"")
    with pytest.raises(TypeError):
        agent.load_peer("a str is not a blob")
    with pytest.raises(TypeError):
        agent.prepare("write", np.zeros(8), "peer", np.zeros(8))
    with pytest.raises(ferry.InvalidArgument):
        ferry.Agent(stall_timeout=-1)
    # The CUDA array interface, read without a GPU (describe only): byte
    # strides that are row-major are one range, others are refused.
    class CAI:
        def __init__(self, strides):
            self.__cuda_array_interface__ = {"data": (0x10000, False), "shape": (4, 8),
                                             "typestr": "<f4", "strides": strides,
                                             "version": 3}

    assert ferry.describe(CAI(None)) == ferry.describe(CAI((32, 4))) == (0x10000, 128, 0, 0)
    with pytest.raises(ferry.InvalidArgument):
        ferry.describe(CAI((64, 4)))
    # Freed memory is refused, not read.
    a = agent.alloc(4096)
    a.free()
    with pytest.raises(ferry.InvalidArgument):
        agent.register(a)
    with pytest.raises(BufferError):
        memoryview(a)
    # A bytearray that is registered cannot be resized under the registration.
    ba = bytearray(4096)
    m = agent.register(ba)
    with pytest.raises(BufferError):
        ba.extend(b"x" * 100000)
    m.deregister()
    ba.extend(b"x")


def test_gpu_memory_without_gpu(agent):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU is present: its tests are test_gpu.py")
    with pytest.raises(ferry.Unsupported) as e:
        agent.alloc(4096, "cuda")
    assert "CUDA" in e.value.detail
    with pytest.raises(ferry.Unsupported):
        agent.register((0x7F0000000000, 4096, "cuda", 0))
    buf = np.zeros(4096, np.uint8)
    agent.register(buf)
    x = agent.prepare("write", buf[:64], agent.load_peer(agent.metadata()), buf[64:128])

    class Stream:  # as torch.cuda.Stream shows its handle
        cuda_stream = 0x1234

    for stream in (Stream(), 0, None, 0x5678):
        with pytest.raises(ferry.Unsupported):
            x.post_on_stream(stream)
    with pytest.raises(TypeError):
        x.post_on_stream("stream")


def test_closed_objects(spawn):
    agent = ferry.Agent(name="closing")
    buf = np.zeros(4096, np.uint8)
    m = agent.register(buf)
    p = agent.load_peer(agent.metadata())
    x = agent.prepare("write", buf[:8], p, buf[8:16])
    a = agent.alloc(4096)
    view = np.frombuffer(a, np.uint8)
    agent.close()
    agent.close()
    assert agent.closed and x.released and not m.registered and not p.loaded
    for call in (lambda: x.post(), lambda: agent.register(buf), lambda: agent.metadata(),
                 lambda: agent.prepare("write", buf, p, buf), lambda: agent.alloc(10)):
        with pytest.raises(ferry.InvalidArgument):
            call()
    m.deregister()
    p.forget()
    # Allocated memory outlives the agent while something views it.
    view[:] = 5
    assert view.sum() == 5 * 4096
    with pytest.raises(ferry.Busy):
        a.free()
    del view
    a.free()
