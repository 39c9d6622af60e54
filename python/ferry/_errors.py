# SPDX-License-Identifier: Apache-2.0
"""ferry's exceptions: one class per status family of ``ferry_status_t``.

Every exception that libferry reports is a :class:`ferry.Error` carrying the
status (:class:`ferry.Status`) and the detail text of ``ferry_last_error()``.
The classes also derive from the closest built-in exception where one fits,
so ``except TimeoutError`` or ``except ValueError`` catch them too.
"""
import enum


class Status(enum.IntEnum):
    """The values of ``ferry_status_t`` (include/ferry/status.h)."""

    OK = 0
    IN_PROGRESS = 1
    ERR_INVALID = -1
    ERR_NO_MEMORY = -2
    ERR_NOT_FOUND = -3
    ERR_NOT_REGISTERED = -4
    ERR_OUT_OF_RANGE = -5
    ERR_MISMATCH = -6
    ERR_UNSUPPORTED = -7
    ERR_BUSY = -8
    ERR_TIMEOUT = -9
    ERR_CANCELED = -10
    ERR_PEER_LOST = -11
    ERR_ABORTED = -12
    ERR_PROTOCOL = -13
    ERR_BACKEND = -14
    ERR_SYSTEM = -15


class Error(Exception):
    """A failure reported by libferry.

    Attributes:
        status: the :class:`Status` of the failure.
        detail: ``ferry_last_error()``'s text for it (may be empty).
    """

    status = None

    def __new__(cls, *args, **kwargs):
        # OSError (under TimeoutError, ConnectionError) would read the
        # arguments as (errno, strerror, filename): give it none.
        return super().__new__(cls)

    def __init__(self, detail="", status=None, text=None):
        if status is None:
            status = type(self).status if type(self).status is not None else Status.ERR_SYSTEM
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.detail = detail
        if not text:
            name = status.name if isinstance(status, Status) else f"status {status}"
            text = name.replace("ERR_", "", 1).replace("_", " ").lower()
        head = text
        message = f"{head}: {detail}" if detail else head
        super().__init__(message)
        self.args = (message,)

    def __reduce__(self):
        return (type(self), (self.detail, int(self.status), None))


class InvalidArgument(Error, ValueError):
    """A bad argument: a wrong value, a non-contiguous or empty buffer, a closed object."""

    status = Status.ERR_INVALID


class NotRegistered(InvalidArgument):
    """A descriptor lies in no registration (or its registration was dropped)."""

    status = Status.ERR_NOT_REGISTERED


class OutOfRange(InvalidArgument):
    """A descriptor runs past the end of its registration."""

    status = Status.ERR_OUT_OF_RANGE


class Mismatch(InvalidArgument):
    """Local and remote descriptors do not pair up (count, length or kind)."""

    status = Status.ERR_MISMATCH


class NoMemory(Error, MemoryError):
    """Out of memory."""

    status = Status.ERR_NO_MEMORY


class NotFound(Error, LookupError):
    """Something named does not exist (an address ferry did not allocate, a key)."""

    status = Status.ERR_NOT_FOUND


class Unsupported(Error):
    """No backend of this build can do it here (GPU memory without a CUDA driver...)."""

    status = Status.ERR_UNSUPPORTED


class Busy(Error):
    """In use: a request still in flight, memory still registered or viewed."""

    status = Status.ERR_BUSY


class Timeout(Error, TimeoutError):
    """A wait ran out of time, or a request stalled past its stall timeout."""

    status = Status.ERR_TIMEOUT


class Canceled(Error):
    """The request was canceled (by cancel(), or by a cancel of another request
    to the same peer)."""

    status = Status.ERR_CANCELED


class PeerLost(Error, ConnectionError):
    """The peer is gone: its process died, it was forgotten or replaced."""

    status = Status.ERR_PEER_LOST


class Aborted(Error):
    """A collective was aborted by a rank (its abort, death or timeout)."""

    status = Status.ERR_ABORTED


class Protocol(Error):
    """A malformed metadata blob or wire message."""

    status = Status.ERR_PROTOCOL


class Backend(Error):
    """The transport (UCX, CUDA) failed."""

    status = Status.ERR_BACKEND


class System(Error):
    """A system call failed."""

    status = Status.ERR_SYSTEM


_BY_STATUS = {
    cls.status: cls
    for cls in (InvalidArgument, NotRegistered, OutOfRange, Mismatch, NoMemory, NotFound,
                Unsupported, Busy, Timeout, Canceled, PeerLost, Aborted, Protocol, Backend,
                System)
}


for _cls in [Status, Error] + list(_BY_STATUS.values()):
    _cls.__module__ = "ferry"


def error_class(status):
    """The exception class of a status code (:class:`Error` for an unknown one)."""
    return _BY_STATUS.get(status, Error)
