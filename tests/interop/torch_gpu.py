#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Real PyTorch CUDA allocations moved by ferry between two processes.

Each process allocates CUDA tensors with torch, hands their pointers and
sizes to libferry through ctypes (kind AUTO: ferry finds out they are GPU
memory), and the two swap metadata blobs over a pipe. The initiator then
WRITEs random bytes into the target's tensor and READs the target's other
tensor back, at random offsets, and both sides check every byte with torch.
Run once with the default caching allocator and once with
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, whose memory comes from
cuMemCreate/cuMemMap. Exits 77 (skipped) without torch or a GPU.
Usage: torch_gpu.py LIBFERRY [--role target FD]
"""
import ctypes
import os
import random
import subprocess
import sys

try:
    import torch
except Exception as e:  # no torch here
    print(f"skip: torch is not importable ({e})")
    sys.exit(77)
if not torch.cuda.is_available():
    print("skip: torch sees no GPU")
    sys.exit(77)

# The device of this process's tensors: FERRY_TEST_DEVICE (default 0); the
# target gets FERRY_TEST_TARGET_DEVICE when that is set (as in the C tests).
DEVICE = int(os.environ.get("FERRY_TEST_DEVICE", "0"))
if DEVICE >= torch.cuda.device_count():
    print(f"skip: no CUDA device {DEVICE} here ({torch.cuda.device_count()} device(s))")
    sys.exit(77)
torch.cuda.set_device(DEVICE)

LIB = ctypes.CDLL(sys.argv[1])
SIZE = 48 << 20      # each tensor, bytes
ITERS = 20
WAIT_NS = 30 * 10**9


class Desc(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("kind", ctypes.c_int), ("device", ctypes.c_int32)]


class AgentParams(ctypes.Structure):
    _fields_ = [("field_mask", ctypes.c_uint64), ("name", ctypes.c_char_p),
                ("progress_thread", ctypes.c_int)]


P = ctypes.c_void_p
PP = ctypes.POINTER(P)
SZ = ctypes.c_size_t
LIB.ferry_status_str.restype = ctypes.c_char_p
LIB.ferry_last_error.restype = ctypes.c_char_p
for name, args in {
        "ferry_agent_create": [P, PP],
        "ferry_agent_destroy": [P],
        "ferry_mem_register": [P, P, SZ, PP],
        "ferry_mem_deregister": [P],
        "ferry_md_pack": [P, PP, ctypes.POINTER(SZ)],
        "ferry_md_free": [P],
        "ferry_peer_load": [P, ctypes.c_char_p, SZ, PP],
        "ferry_peer_forget": [P],
        "ferry_xfer_prepare": [P, ctypes.c_int, P, SZ, P, P, SZ, P, PP],
        "ferry_xfer_post": [P],
        "ferry_xfer_wait": [P, ctypes.c_int64],
        "ferry_xfer_release": [P]}.items():
    getattr(LIB, name).argtypes = args
    if name not in ("ferry_agent_destroy", "ferry_md_free", "ferry_peer_forget",
                    "ferry_xfer_release"):
        getattr(LIB, name).restype = ctypes.c_int


def ok(st, what):
    if st < 0:
        raise RuntimeError(f"{what}: {LIB.ferry_status_str(st).decode()}: "
                           f"{LIB.ferry_last_error().decode()}")
    return st


def agent(name):
    a = P()
    params = AgentParams(1, name.encode(), 0)
    ok(LIB.ferry_agent_create(ctypes.byref(params), ctypes.byref(a)), "agent_create")
    return a


def register(a, tensors):
    descs = (Desc * len(tensors))(*[Desc(t.data_ptr(), t.numel() * t.element_size(), 0, 0)
                                    for t in tensors])
    mem = P()
    ok(LIB.ferry_mem_register(a, descs, len(tensors), ctypes.byref(mem)), "mem_register")
    return mem


def pack(a):
    blob, n = P(), ctypes.c_size_t()
    ok(LIB.ferry_md_pack(a, ctypes.byref(blob), ctypes.byref(n)), "md_pack")
    data = ctypes.string_at(blob, n.value)
    LIB.ferry_md_free(blob)
    return data


def send(f, data):
    f.write(len(data).to_bytes(8, "little") + data)
    f.flush()


def recv(f):
    n = int.from_bytes(f.read(8), "little")
    return f.read(n)


def pattern(seed, n):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda", generator=g)


def target(fd_in, fd_out):
    fin, fout = os.fdopen(fd_in, "rb"), os.fdopen(fd_out, "wb")
    a = agent("torch-target")
    dst = torch.zeros(SIZE, dtype=torch.uint8, device="cuda")
    src = torch.zeros(SIZE, dtype=torch.uint8, device="cuda")
    mem = register(a, [dst, src])
    send(fout, pack(a) + dst.data_ptr().to_bytes(8, "little") +
         src.data_ptr().to_bytes(8, "little"))
    bad = 0
    while True:
        msg = recv(fin).decode().split()
        if msg[0] == "quit":
            break
        it, off, n = int(msg[1]), int(msg[2]), int(msg[3])
        if msg[0] == "fill":        # the READ source for iteration it
            src[off:off + n] = pattern(1000 + it, n)
            torch.cuda.synchronize()
        elif msg[0] == "check":     # the initiator WROTE iteration it
            good = torch.equal(dst[off:off + n], pattern(it, n))
            bad += not good
        send(fout, b"done")
    ok(LIB.ferry_mem_deregister(mem), "mem_deregister")
    LIB.ferry_agent_destroy(a)
    send(fout, str(bad).encode())


def initiator():
    rng = random.Random(int(os.environ.get("FERRY_TEST_SEED", "7")))
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    env = dict(os.environ)
    if "FERRY_TEST_TARGET_DEVICE" in env:
        env["FERRY_TEST_DEVICE"] = env["FERRY_TEST_TARGET_DEVICE"]
    child = subprocess.Popen([sys.executable, __file__, sys.argv[1], "--role", "target",
                              str(to_child_r), str(from_child_w)],
                             pass_fds=(to_child_r, from_child_w), env=env)
    os.close(to_child_r)
    os.close(from_child_w)
    fout, fin = os.fdopen(to_child_w, "wb"), os.fdopen(from_child_r, "rb")
    failures = 0
    try:
        a = agent("torch-initiator")
        buf = torch.zeros(SIZE, dtype=torch.uint8, device="cuda")
        mem = register(a, [buf])
        hello = recv(fin)
        blob, rdst, rsrc = hello[:-16], int.from_bytes(hello[-16:-8], "little"), \
            int.from_bytes(hello[-8:], "little")
        peer = P()
        ok(LIB.ferry_peer_load(a, blob, len(blob), ctypes.byref(peer)), "peer_load")
        for it in range(1, ITERS + 1):
            n = rng.randint(1, SIZE // 2)
            loff, roff = rng.randint(0, SIZE - n), rng.randint(0, SIZE - n)
            for op in (0, 1):       # WRITE, then READ
                if op == 0:
                    buf[loff:loff + n] = pattern(it, n)
                else:
                    send(fout, f"fill {it} {roff} {n}".encode())
                    recv(fin)
                torch.cuda.synchronize()
                ld = Desc(buf.data_ptr() + loff, n, 0, 0)
                rd = Desc((rdst if op == 0 else rsrc) + roff, n, 0, 0)
                x = P()
                ok(LIB.ferry_xfer_prepare(a, op, ctypes.byref(ld), 1, peer,
                                          ctypes.byref(rd), 1, None, ctypes.byref(x)),
                   "xfer_prepare")
                ok(LIB.ferry_xfer_post(x), "xfer_post")
                ok(LIB.ferry_xfer_wait(x, WAIT_NS), "xfer_wait")
                LIB.ferry_xfer_release(x)
                if op == 0:
                    send(fout, f"check {it} {roff} {n}".encode())
                    recv(fin)
                elif not torch.equal(buf[loff:loff + n], pattern(1000 + it, n)):
                    failures += 1
                    print(f"FAIL: READ iteration {it}: {n} bytes at {loff} differ")
        send(fout, b"quit")
        remote_bad = int(recv(fin).decode())
        if remote_bad:
            failures += remote_bad
            print(f"FAIL: the target found {remote_bad} WRITEs with wrong bytes")
        LIB.ferry_peer_forget(peer)
        ok(LIB.ferry_mem_deregister(mem), "mem_deregister")
        LIB.ferry_agent_destroy(a)
    finally:
        if child.wait(timeout=60) != 0:
            failures += 1
            print(f"FAIL: the target exited with {child.returncode}")
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default allocator")
    print(f"torch_gpu ({conf}, device {DEVICE} to device "
          f"{env.get('FERRY_TEST_DEVICE', DEVICE)}): {ITERS} WRITEs and {ITERS} READs of up to "
          f"{SIZE // 2} bytes: {'FAILED' if failures else 'all bytes right'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[2] == "--role":
        target(int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(initiator())
