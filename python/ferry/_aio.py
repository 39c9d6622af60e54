# SPDX-License-Identifier: Apache-2.0
"""asyncio waits on ferry requests, through the agent's file descriptor.

One reader per agent and event loop (``loop.add_reader`` on
``ferry_agent_fd()``) takes the agent's completion queue when the fd is
readable and resolves the futures of the requests awaited in that loop: no
thread polls and nothing spins, so one loop can wait on thousands of
transfers. With a progress thread (the default) the fd is readable exactly
while completions wait. Without one, the reader also drives progress, and a
10 ms timer runs while anything is awaited, so that a stalled peer still
ends with ferry.Timeout (the stall check runs in progress).

Every request is prepared with its Xfer as the queue's user_data (see
xfer.c), so an entry names the object to wake. Entries of requests prepared
with a user_data of the caller's are also kept for Agent.completions().

The fd is also readable while received notifications wait, so the reader
takes them too (else the fd would stay readable and the loop spin): into
the agent's list of notifications taken (Agent._notes), from which
notification_async() and Agent.notifications() return them, oldest first.
That list holds at most NOTES_MAX messages: as the library's own queue
does, the reader drops what arrives while it is full and counts it in
Agent.notifications_dropped, so memory stays bounded whoever reads late.
"""
import asyncio
import collections
import weakref

from ._errors import Canceled, Error, Status, Timeout, error_class

TICK_S = 0.01

Completion = collections.namedtuple("Completion", "xfer user_data status")
Completion.__doc__ = """A finished post of a request prepared with user_data:
the Xfer, its user_data, and its Status (Status.OK or the error; xfer.test()
raises the error with its detail text until the request is posted again)."""

Notification = collections.namedtuple("Notification", "peer_name peer data")
Notification.__doc__ = """A received notification: the sending agent's name
(str), its Peer if this agent loaded the sender's blob (the same name and
instance; else None), and the message (bytes, 0 to 4096 of them)."""


class _State:
    """One agent's reader in one event loop."""

    __slots__ = ("loop", "fd", "waiting", "notes_waiting", "tick", "__weakref__")

    def __init__(self, loop, fd):
        self.loop = loop
        self.fd = fd
        self.waiting = set()  # requests with futures in this loop
        self.notes_waiting = collections.deque()  # futures of notification_async
        self.tick = None


def _error_of(xfer, status):
    # test() raises the request's error with its detail text.
    try:
        xfer.test()
    except Error as e:
        return e
    return error_class(status)("", status)


def _dispatch(agent, entries):
    ready = agent._ready
    for xfer, status in entries:
        fut = xfer._future
        if fut is not None:
            xfer._future = None
            if not fut.done():
                if status == 0:
                    fut.set_result(None)
                else:
                    fut.set_exception(_error_of(xfer, status))
        if xfer.user_data is not None:
            # By id, with a weak reference: a request the caller dropped
            # leaves (xfer.c removes its entry when it goes).
            ready[id(xfer)] = (weakref.ref(xfer), status)


# The most notifications the reader keeps taken and unread (the library's
# default queue size, FERRY_NOTIF_QUEUE).
NOTES_MAX = 4096


def _pull(agent):
    # Moves the agent's queue of notifications to agent._notes, dropping and
    # counting what does not fit under NOTES_MAX (the newest, as the
    # library's queue does).
    notes = agent._notes
    new = agent._notif_drain()
    room = max(NOTES_MAX - len(notes), 0)
    if len(new) > room:
        agent._notes_dropped += len(new) - room
        del new[room:]
    notes.extend(map(Notification._make, new))


def _take_notes(agent):
    # Takes the agent's queue (_pull), then hands the oldest to the futures
    # of notification_async, in the order they began to wait.
    notes = agent._notes
    _pull(agent)
    st = agent._aio
    if st is None:
        return
    waiting = st.notes_waiting
    while notes and waiting:
        fut = waiting.popleft()
        if not fut.done():
            fut.set_result(notes.pop(0))


def _on_readable(ref):
    agent = ref()
    if agent is not None and not agent.closed:
        _dispatch(agent, agent._drain(True))
        _take_notes(agent)


def _on_tick(ref):
    agent = ref()
    if agent is None or agent.closed or agent._aio is None:
        return
    st = agent._aio
    st.tick = None
    _dispatch(agent, agent._drain(True))
    _take_notes(agent)
    if st.waiting or st.notes_waiting:
        st.tick = st.loop.call_later(TICK_S, _on_tick, ref)


def _detach_state(st):
    if st.tick is not None:
        st.tick.cancel()
        st.tick = None
    if not st.loop.is_closed():
        try:
            st.loop.remove_reader(st.fd)
        except Exception:  # the loop is gone or in another thread
            pass


def _state(agent, loop):
    st = agent._aio
    if st is not None and st.loop is loop:
        return st
    if st is not None:
        _detach_state(st)
    st = _State(loop, agent.fd)
    loop.add_reader(st.fd, _on_readable, weakref.ref(agent))
    agent._aio = st
    return st


def _retrieve(fut):
    # A future whose waiter timed out or was cancelled: take its
    # exception so that asyncio does not log it as never retrieved.
    if not fut.cancelled():
        fut.exception()


async def _wait(xfer, timeout):
    if xfer.test():
        return
    loop = asyncio.get_running_loop()
    agent = xfer.agent
    st = _state(agent, loop)
    fut = xfer._future
    if fut is None or fut.done() or fut.get_loop() is not loop:
        fut = loop.create_future()
        fut.add_done_callback(_retrieve)
        xfer._future = fut
    st.waiting.add(xfer)
    try:
        # Entries that arrived before the reader was there (or progress due
        # without a progress thread), then a timer for stall checks.
        _dispatch(agent, agent._drain(True))
        if not agent.progress_thread and st.tick is None:
            st.tick = loop.call_later(TICK_S, _on_tick, weakref.ref(agent))
        if timeout is None:
            await asyncio.shield(fut)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                raise Timeout("wait_async: the request is still in flight after the "
                              "timeout (it stays valid: wait again or cancel)") from None
    finally:
        st.waiting.discard(xfer)


def wait_async(xfer, timeout=None):
    """The coroutine behind Xfer.wait_async()."""
    return _wait(xfer, timeout)


async def _post(xfer, timeout):
    if xfer.post():
        return
    await _wait(xfer, timeout)


def post_async(xfer, timeout=None):
    """The coroutine behind Xfer.post_async()."""
    return _post(xfer, timeout)


def completions(agent):
    """The body of Agent.completions()."""
    _dispatch(agent, agent._drain(True))
    ready = agent._ready
    out = []
    for ref, status in ready.values():
        x = ref()
        if x is not None:
            out.append(Completion(x, x.user_data, Status(status)))
    ready.clear()
    return out


def notifications(agent):
    """The body of Agent.notifications()."""
    notes = agent._notes
    out = list(notes)
    del notes[:]
    out.extend(map(Notification._make, agent._notif_drain()))
    return out


async def _next_note(agent, timeout):
    notes = agent._notes
    if not notes:
        _pull(agent)
    if notes:
        return notes.pop(0)
    loop = asyncio.get_running_loop()
    st = _state(agent, loop)
    fut = loop.create_future()
    fut.add_done_callback(_retrieve)
    st.notes_waiting.append(fut)
    try:
        # What arrived before the reader was there, then a timer for
        # progress without a progress thread.
        _take_notes(agent)
        if not agent.progress_thread and st.tick is None:
            st.tick = loop.call_later(TICK_S, _on_tick, weakref.ref(agent))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise Timeout("notification_async: no notification came before the "
                          "timeout") from None
    except BaseException:
        # Cancelled (or timed out) just after a message was handed over:
        # give it back, oldest first, rather than lose it.
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            notes.insert(0, fut.result())
        raise
    finally:
        try:
            st.notes_waiting.remove(fut)
        except ValueError:
            pass


def notification_async(agent, timeout=None):
    """The coroutine behind Agent.notification_async()."""
    return _next_note(agent, timeout)


async def _iter_notes(agent):
    while not agent.closed:
        try:
            note = await _next_note(agent, None)
        except Canceled:
            if agent.closed:
                return
            raise
        yield note


def notifications_async(agent):
    """The async iterator behind Agent.notifications_async()."""
    return _iter_notes(agent)


def detach(agent):
    """Called by Agent.close(): removes the reader and fails what waits."""
    st = agent._aio
    agent._aio = None
    if st is None:
        return
    _detach_state(st)
    for xfer in list(st.waiting):
        fut = xfer._future
        xfer._future = None
        if fut is not None and not fut.done():
            fut.set_exception(Canceled("the agent was closed while this request was awaited"))
    st.waiting.clear()
    while st.notes_waiting:
        fut = st.notes_waiting.popleft()
        if not fut.done():
            fut.set_exception(Canceled("the agent was closed while a notification was "
                                       "awaited"))
