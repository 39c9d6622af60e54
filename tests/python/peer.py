#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The other process of the Python tests: an agent with a progress thread
and one registered buffer, driven over stdin/stdout with JSON lines.

Usage: peer.py KIND SIZE, KIND one of numpy, torch, alloc, bytearray. It
prints {"blob", "addr", "len", "pid"} once, then answers each command:
{"op": "fill", "seed": S} fills the buffer with pattern(S, SIZE);
{"op": "read", "off": O, "len": N} returns those bytes (hex); {"op":
"load", "blob": HEX} loads a peer; {"op": "send", "msgs": [HEX, ...]} sends
those notifications to it, in order; {"op": "recv", "count": N, "timeout":
S, "check": B} waits for N notifications and returns them ("msgs", hex,
with "names" and "known": whether the sender was the loaded peer), and with
check, "bad": the indices of those whose announced range (see announce())
did not hold the announced bytes when the message was taken; {"op":
"exit"} ends it.
"""
import hashlib
import json
import os
import struct
import sys
import time

import numpy as np

import ferry


def pattern(seed, n):
    """The bytes both sides compute for a seed."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def announce(off, data):
    """A notification announcing that data was written at off: the offset,
    length and a digest of the bytes, which recv with check verifies."""
    return struct.pack("<QQ", off, len(data)) + hashlib.blake2b(
        bytes(data), digest_size=16).digest()


def check_announced(view, msg):
    """True if view holds the bytes that msg (from announce()) announces."""
    if len(msg) != 32:
        return False
    off, n = struct.unpack_from("<QQ", msg)
    got = hashlib.blake2b(view[off:off + n].tobytes(), digest_size=16).digest()
    return got == msg[16:]


def recv(agent, view, cmd):
    msgs, names, known, bad = [], [], [], []
    deadline = time.monotonic() + cmd.get("timeout", 30)
    while len(msgs) < cmd["count"]:
        left = deadline - time.monotonic()
        if left <= 0 or not agent.wait_notification(left):
            break
        for note in agent.notifications():
            # Checked as soon as taken: the bytes came before the message.
            if cmd.get("check") and not check_announced(view, note.data):
                bad.append(len(msgs))
            msgs.append(note.data.hex())
            names.append(note.peer_name)
            known.append(note.peer is not None and note.peer.name == note.peer_name)
    return {"msgs": msgs, "names": names, "known": known, "bad": bad}


def main():
    kind, size = sys.argv[1], int(sys.argv[2])
    stall = os.environ.get("FERRY_TEST_PEER_STALL")
    agent = ferry.Agent(name=f"peer-{os.getpid()}", progress_thread=True,
                        stall_timeout=float(stall) if stall else None)
    if kind == "numpy":
        mem = np.zeros(size, np.uint8)
        view = mem
    elif kind == "torch":
        import torch
        mem = torch.zeros(size, dtype=torch.uint8)
        view = mem.numpy()
    elif kind == "alloc":
        mem = agent.alloc(size)
        view = np.frombuffer(mem, np.uint8)
        view[:] = 0
    elif kind == "bytearray":
        mem = bytearray(size)
        view = np.frombuffer(mem, np.uint8)
    else:
        raise SystemExit(f"peer.py: unknown kind {kind}")
    reg = agent.register(mem)
    loaded = None
    addr = reg.addr
    print(json.dumps({"blob": agent.metadata().hex(), "addr": addr, "len": size,
                      "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        # A call on the agent orders our reads after the progress thread's
        # copies (ferry.h, FERRY_AGENT_PARAM_PROGRESS_THREAD).
        agent.progress()
        op = cmd["op"]
        if op == "fill":
            view[:] = pattern(cmd["seed"], size)
            reply = {}
        elif op == "read":
            reply = {"data": bytes(view[cmd["off"]:cmd["off"] + cmd["len"]]).hex()}
        elif op == "load":
            loaded = agent.load_peer(bytes.fromhex(cmd["blob"]))
            reply = {}
        elif op == "send":
            for m in cmd["msgs"]:
                agent.notify(loaded, bytes.fromhex(m))
            reply = {}
        elif op == "recv":
            reply = recv(agent, view, cmd)
        elif op == "exit":
            break
        else:
            reply = {"error": f"unknown op {op}"}
        print(json.dumps(reply), flush=True)
    reg.deregister()
    agent.close()


if __name__ == "__main__":
    main()
