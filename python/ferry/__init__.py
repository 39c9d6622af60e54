# SPDX-License-Identifier: Apache-2.0
"""ferry: one-sided memory transfers between processes (host and GPU).

A thin layer over libferry's C API (``include/ferry.h``). A process makes an
:class:`Agent`, registers the memory that transfers use (numpy arrays, torch
tensors, anything with the buffer protocol, ``__dlpack__`` or
``__cuda_array_interface__``), gives its :meth:`Agent.metadata` blob to its
peers by any channel, loads theirs with :meth:`Agent.load_peer`, and prepares
READ and WRITE requests (:class:`Xfer`) that it posts as often as it likes,
waiting on them with the GIL released or in asyncio::

    import ferry, numpy as np

    with ferry.Agent(name="decode-0") as agent:
        cache = np.zeros(1 << 20, np.uint8)
        agent.register(cache)
        peer = agent.load_peer(blob_from_prefill)
        x = agent.prepare("read", cache[:4096], peer, (remote_addr, 4096))
        x.post() or x.wait(timeout=5)          # or: await x.post_async()

Errors are :class:`Error` subclasses, one per status family
(:class:`PeerLost`, :class:`Timeout`, :class:`Canceled`, :class:`Busy`,
:class:`Protocol`, :class:`Unsupported`, :class:`InvalidArgument`, ...), each
with its :class:`Status` and ``ferry_last_error()``'s text.

Descriptor lists for :meth:`Agent.prepare` may be numpy arrays of
:data:`desc_dtype` (used in place) or uint64 arrays of shape (n, 2): 10^5
descriptors cost one C loop, not 10^5 Python objects (see :func:`descs`).

Notifications are small messages (0 to 4096 bytes) between agents, ordered
after the data they announce: ``prepare(..., notify=msg)`` sends msg to the
peer after each successful post's bytes, :meth:`Agent.notify` sends a
stand-alone one, and the receiver takes them with
:meth:`Agent.notifications` (never blocks), :meth:`Agent.wait_notification`
(GIL released) or ``await agent.notification_async()``, as
:class:`Notification` tuples (peer_name, peer, data).
"""
from ._errors import (Aborted, Backend, Busy, Canceled, Error, InvalidArgument, Mismatch,
                      NoMemory, NotFound, NotRegistered, OutOfRange, PeerLost, Protocol,
                      Status, System, Timeout, Unsupported, error_class)
from . import _ferry
from ._ferry import (Agent, Allocation, Comm, Mem, Peer, Store, StoreServer, Xfer, describe,
                     info, status_str, version)
from ._aio import Completion, Notification

__all__ = [
    "Agent", "Allocation", "Comm", "Completion", "Mem", "Notification", "Peer", "Store",
    "StoreServer", "Xfer",
    "Error", "InvalidArgument", "NotRegistered", "OutOfRange", "Mismatch", "NoMemory",
    "NotFound", "Unsupported", "Busy", "Timeout", "Canceled", "PeerLost", "Aborted",
    "Protocol", "Backend", "System", "Status", "error_class", "MEM_AUTO", "MEM_HOST",
    "MEM_CUDA", "READ", "WRITE", "desc_dtype", "descs", "describe", "info", "status_str",
    "version", "__version__",
]

#: Memory kinds (ferry_mem_kind_t); the strings "auto", "host", "cuda" work too.
MEM_AUTO = _ferry.MEM_AUTO
MEM_HOST = _ferry.MEM_HOST
MEM_CUDA = _ferry.MEM_CUDA
#: Operations for Agent.prepare; the strings "read" and "write" work too.
READ = "read"
WRITE = "write"

__version__ = "0.1.0"


_DTYPE = None


def _desc_dtype():
    global _DTYPE
    if _DTYPE is None:
        import numpy

        _DTYPE = numpy.dtype([("addr", "<u8"), ("len", "<u8"), ("kind", "<i4"),
                              ("device", "<i4")])
    return _DTYPE


def descs(addr, length, kind=MEM_AUTO, device=0):
    """A numpy array of :data:`desc_dtype`: n descriptors from array-likes
    (or scalars, broadcast) of addresses, lengths, kinds and devices.

    Its memory has ``ferry_desc_t``'s layout, so :meth:`Agent.prepare` uses
    it in place. For example, 10^5 blocks of a KV cache::

        blocks = numpy.asarray(block_ids, numpy.uint64)
        local = ferry.descs(base + blocks * block_bytes, block_bytes)
    """
    import numpy

    addr = numpy.asarray(addr, dtype=numpy.uint64)
    n = addr.size
    out = numpy.empty(n, dtype=_desc_dtype())
    out["addr"] = addr.reshape(-1)
    out["len"] = numpy.broadcast_to(numpy.asarray(length, numpy.uint64), (n,))
    out["kind"] = {"auto": MEM_AUTO, "host": MEM_HOST, "cuda": MEM_CUDA}.get(kind, kind)
    out["device"] = device
    return out


def __getattr__(name):
    # numpy is imported only by those who use the descriptor arrays.
    if name == "desc_dtype":
        return _desc_dtype()
    raise AttributeError(f"module 'ferry' has no attribute '{name}'")
