#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Disaggregated serving's KV-cache hand-off, prefill to decode, with ferry.

Two processes, each with a paged KV cache: one torch tensor of shape
(layers, blocks, block_bytes). The prefill rank writes a request's KV into
blocks scattered through its cache and publishes their ids; the decode
rank takes blocks of its own cache, READs the request's blocks for every
layer (layers x blocks descriptors, built as numpy arrays, one prepared
request, whose notification tells prefill, once every byte has been read,
that it may free its blocks), and checks them. Prints
each request's latency (prepare + transfer) and the throughput.

    python3 examples/kv_transfer.py                    # starts both ranks itself
    ferry-run -n 2 -- python3 examples/kv_transfer.py  # or as a job
    python3 examples/kv_transfer.py --device cuda      # on the GPU (CUDA IPC)

Requests travel through the job's store; their completions are the
READs' notifications (prepare(..., notify=), agent.wait_notification,
agent.notifications).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

import ferry

torch = None  # imported by the ranks only: the launcher does not need it


def options():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=256, help="blocks in each rank's cache")
    ap.add_argument("--block-bytes", type=int, default=16384,
                    help="bytes of one layer's block (K and V)")
    ap.add_argument("--request-blocks", type=int, default=32, help="blocks per request")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--in-flight", type=int, default=4,
                    help="requests prefill may have waiting for decode")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args()


def launch():
    """Without a launcher: a store and two ranks of this same script."""
    with ferry.StoreServer() as srv:
        procs = [subprocess.Popen([sys.executable] + sys.argv,
                                  env=dict(os.environ, FERRY_RANK=str(r), FERRY_WORLD_SIZE="2",
                                           FERRY_STORE=srv.url))
                 for r in range(2)]
        codes = [p.wait() for p in procs]
    sys.exit(max(codes))


def expected(req, layer, block_ids):
    """The byte prefill writes in a request's j-th block of a layer."""
    return (req * 7 + layer * 3 + np.arange(len(block_ids))) % 251


def make_cache(agent, o):
    shape = (o.layers, o.blocks, o.block_bytes)
    nbytes = o.layers * o.blocks * o.block_bytes
    if o.device == "cpu":
        # Memory from ferry's allocator: same-host peers copy it directly.
        mem = agent.alloc(nbytes)
        cache = torch.from_dlpack(mem).view(shape)
    else:
        mem = cache = torch.empty(shape, dtype=torch.uint8, device=o.device)
    agent.register(mem)
    return cache


def descs(base, o, block_ids):
    """(addr, len) rows of every layer's blocks: layers x len(block_ids)."""
    ids = np.asarray(block_ids, np.uint64)
    layer = np.arange(o.layers, dtype=np.uint64)[:, None] * np.uint64(o.blocks * o.block_bytes)
    addr = np.uint64(base) + layer + ids[None, :] * np.uint64(o.block_bytes)
    return np.stack([addr.reshape(-1), np.full(addr.size, o.block_bytes, np.uint64)], 1)


def wait_done(agent, req, done):
    """Until decode's READ of request req has told us (its notification)."""
    while req not in done:
        if not agent.wait_notification(60):
            sys.exit(f"prefill: no word of request {req} from decode in 60 s")
        done.update(int(n.data.split()[1]) for n in agent.notifications())


def prefill(o, comm, agent, store, cache):
    rng = random.Random(o.seed)
    free = list(range(o.blocks))
    owned, done = {}, set()
    for req in range(o.requests):
        while len(owned) >= o.in_flight or len(free) < o.request_blocks:
            oldest = min(owned)
            wait_done(agent, oldest, done)
            free += owned.pop(oldest)
        ids = rng.sample(free, o.request_blocks)
        for b in ids:
            free.remove(b)
        for layer in range(o.layers):  # "compute" the request's KV
            vals = torch.as_tensor(expected(req, layer, ids), dtype=torch.uint8)
            cache[layer, ids] = vals.to(cache.device)[:, None].expand(-1, o.block_bytes)
        if cache.is_cuda:
            torch.cuda.synchronize()
        owned[req] = ids
        store.set(f"kv/req/{req}", json.dumps(ids))
    for req in sorted(owned):
        wait_done(agent, req, done)


def decode(o, comm, agent, store, cache, prefill_base):
    peer = comm.peer(0)
    base = cache.data_ptr()
    rng = random.Random(o.seed + 1)
    lat, moved = [], 0
    # A warm-up READ of the whole cache: the first touch of each page of a
    # same-host peer's memory, mapped here, costs a page fault; a serving
    # engine pays it once, at start.
    t0 = time.perf_counter()
    with agent.prepare("read", cache, peer, (prefill_base, cache.numel())) as x:
        x.post() or x.wait(120)
    print(f"decode: warm-up READ of the whole cache ({cache.numel() / 2**20:.0f} MiB) took "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
    comm.barrier(timeout=120)
    for req in range(o.requests):
        theirs = json.loads(store.get(f"kv/req/{req}"))
        mine = rng.sample(range(o.blocks), o.request_blocks)
        t0 = time.perf_counter()
        # Its notification leaves once every byte is read: prefill may
        # then reuse the blocks, while we check our copy.
        with agent.prepare("read", descs(base, o, mine), peer,
                           descs(prefill_base, o, theirs), notify=f"done {req}") as x:
            x.post() or x.wait(60)
        lat.append(time.perf_counter() - t0)
        moved += o.layers * o.request_blocks * o.block_bytes
        agent.progress()  # orders our reads after the transfer's copies
        got = cache[:, mine, :]
        for layer in range(o.layers):
            want = torch.as_tensor(expected(req, layer, theirs), dtype=torch.uint8)
            if not torch.equal(got[layer], want.to(cache.device)[:, None].expand(
                    -1, o.block_bytes)):
                sys.exit(f"decode: request {req}, layer {layer}: wrong bytes")
    lat_us = np.array(lat) * 1e6
    print(f"decode: {o.requests} requests of {o.layers} layers x {o.request_blocks} blocks of "
          f"{o.block_bytes} B ({o.layers * o.request_blocks} descriptors, "
          f"{moved // o.requests / 2**20:.1f} MiB) on {o.device}: latency median "
          f"{np.median(lat_us):.0f} us, p99 {np.percentile(lat_us, 99):.0f} us; "
          f"{moved / sum(lat) / 1e9:.2f} GB/s; every byte checked", flush=True)


def main():
    global torch
    o = options()
    if "FERRY_RANK" not in os.environ and "RANK" not in os.environ:
        launch()
    import torch
    if o.device != "cpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    with ferry.Comm(timeout=120) as comm, ferry.Agent(name=f"kv-rank{comm.rank}") as agent:
        if comm.size != 2:
            sys.exit("kv_transfer: run two ranks (prefill and decode)")
        cache = make_cache(agent, o)
        comm.exchange(agent, timeout=120)
        bases = [int(b) for b in comm.allgather(str(cache.data_ptr()), timeout=120)]
        url = os.environ.get("FERRY_STORE") or "tcp://{}:{}".format(
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
        with ferry.Store(url, timeout=120) as store:
            if comm.rank == 0:
                comm.barrier(timeout=120)  # the decode rank's warm-up
                prefill(o, comm, agent, store, cache)
            else:
                decode(o, comm, agent, store, cache, bases[0])
            comm.barrier(timeout=120)
        del cache


if __name__ == "__main__":
    main()
