#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The other process of the Python tests: an agent with a progress thread
and one registered buffer, driven over stdin/stdout with JSON lines.

Usage: peer.py KIND SIZE, KIND one of numpy, torch, alloc, bytearray. It
prints {"blob", "addr", "len", "pid"} once, then answers each command:
{"op": "fill", "seed": S} fills the buffer with pattern(S, SIZE);
{"op": "read", "off": O, "len": N} returns those bytes (hex); {"op":
"load", "blob": HEX} loads a peer; {"op": "exit"} ends it.
"""
import json
import os
import sys

import numpy as np

import ferry


def pattern(seed, n):
    """The bytes both sides compute for a seed."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


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
            agent.load_peer(bytes.fromhex(cmd["blob"]))
            reply = {}
        elif op == "exit":
            break
        else:
            reply = {"error": f"unknown op {op}"}
        print(json.dumps(reply), flush=True)
    reg.deregister()
    agent.close()


if __name__ == "__main__":
    main()
