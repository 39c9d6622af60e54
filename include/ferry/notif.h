/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/notif.h: notifications. Small messages between agents, ordered
 * after the data they announce: one attached to a request, delivered each
 * time a post of it completes, and stand-alone ones; received into a
 * bounded queue on the target agent, drained without blocking or waited
 * for, and signalled on ferry_agent_fd(). Part of <ferry.h>; the wire
 * format is in docs/NOTIF.md.
 *
 * Guarantees (what is ordered with what):
 *  - A request's message (FERRY_XFER_PARAM_NOTIF) leaves once per post
 *    that completes successfully, and only after that post is complete:
 *    for a WRITE, every byte of it is in the target's memory (UCX reported
 *    the endpoint flushed, a copy into mapped memory ended with a fence,
 *    the CUDA IPC copy's completion was seen, or the target acknowledged
 *    the last staged chunk after its copies into its memory ended), so a
 *    target that reads the announced range as soon as it drains the
 *    message finds the new bytes;
 *    for a READ, every byte was read (it is in local memory), so the target
 *    may change the range as soon as it drains the message. A post that
 *    fails, is canceled or times out sends nothing. A message that cannot
 *    be sent when its post completes (the peer is gone) fails the post
 *    with that error, so the initiator learns that the target was not
 *    told. A stream-ordered post (ferry/stream.h) sends it when the
 *    progress thread sees the stream's copies and the other parts done.
 *  - The message leaves from whichever thread sees the completion: the
 *    progress thread, ferry_agent_progress(), any test or wait, or the
 *    posting thread for a post that completes inline. The initiator does
 *    not have to test or wait for it to go. A message that UCX cannot send
 *    at once is queued: the first on a new connection waits for UCX to
 *    connect (the peer must make progress to answer), a later one for room
 *    in a full transport (the peer must drain). A stand-alone send, or a
 *    post that completes inline, then drives the connection itself until
 *    the message has left: the first time on a connection not yet wired
 *    up it polls for 50 us and then sleeps, 200 ms at most; otherwise it
 *    polls for 50 us at most (holding the agent's lock), so a stopped peer
 *    holds the agent's other threads 200 ms once per connection, then
 *    50 us a message. What is still queued after that, or
 *    was queued from inside progress, leaves during the agent's next
 *    progress. So an agent without a progress thread should keep making
 *    calls (any progress, test, wait or drain) while messages may be
 *    queued.
 *  - A stand-alone message (ferry_notif_send()) leaves after every message
 *    of a request to that peer whose post completed before the call, so it
 *    is ordered after those transfers' bytes too; a transfer still in
 *    flight when it is sent is not ordered with it.
 *  - The messages of one agent to one peer are received in the order in
 *    which they left (FIFO per sender). Messages from different senders
 *    are interleaved in arrival order. Nothing is ordered across peers.
 *  - Messages travel on the UCX endpoint to the peer (every peer has one;
 *    a CUDA IPC request opens it at prepare), as UCX eager active
 *    messages, which UCX delivers in order on an endpoint.
 *  - A connection that is aborted (ferry_xfer_cancel(), the stall timeout)
 *    or a peer that dies may lose the messages still in flight on it;
 *    messages received before stay queued.
 *  - Forgetting a peer (ferry_peer_forget()) with messages still queued to
 *    it does not wait for them: its connection's close, which lets them
 *    leave first, goes on in the agent's progress for up to a second (see
 *    ferry_peer_forget() for who drives it); a peer that does not take
 *    them within that second (it is stopped) loses them.
 */
#ifndef FERRY_NOTIF_H
#define FERRY_NOTIF_H

#include "agent.h"
#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest message, in bytes; 0-byte messages are allowed. */
#define FERRY_NOTIF_MAX 4096

/*
 * A received message. The library allocates it; ferry_notif_free() frees
 * it, with everything it points to.
 */
typedef struct ferry_notif {
    /* The sending agent's name (NUL-terminated). */
    const char *peer_name;
    /* The sender as loaded on this agent when the message arrived (the same
     * name and instance), or NULL if this agent has not loaded its blob.
     * Valid until that peer is forgotten or replaced. */
    ferry_peer_t *peer;
    /* len bytes of message (len may be 0). */
    const void *msg;
    size_t len;
} ferry_notif_t;

/*
 * Sends a stand-alone message of len bytes (0 to FERRY_NOTIF_MAX) to peer:
 * it is received after every message this agent sent to the peer before,
 * including those of requests whose posts completed before this call, and
 * so after those transfers' bytes (see the top of this file). It is on its
 * way when the call returns (msg may be reused); nothing tells the sender
 * that it arrived. Returns FERRY_ERR_INVALID for a NULL agent or peer, a
 * NULL msg with len > 0, a peer of another agent or len over
 * FERRY_NOTIF_MAX; FERRY_ERR_PEER_LOST when the peer is known to be gone
 * (a same-host peer's exit is known within a millisecond) or was replaced; FERRY_ERR_UNSUPPORTED when the peer
 * advertises no UCX address; or the transport's error. Any thread.
 */
FERRY_API ferry_status_t ferry_notif_send(ferry_agent_t *agent, ferry_peer_t *peer,
                                          const void *msg, size_t len);

/*
 * Replaces the message of a request prepared with FERRY_XFER_PARAM_NOTIF
 * (for example with the id of the next request it serves), without
 * preparing it again: the next posts send len bytes (0 to
 * FERRY_NOTIF_MAX) copied from msg. Returns FERRY_ERR_INVALID for a NULL
 * request, a NULL msg with len > 0, len over FERRY_NOTIF_MAX, or a
 * request prepared without a message; FERRY_ERR_BUSY while the request is
 * in flight (the message of a post is fixed when it starts);
 * FERRY_ERR_NO_MEMORY. Any thread, not concurrently with a post of the
 * same request.
 */
FERRY_API ferry_status_t ferry_xfer_set_notif(ferry_xfer_t *xfer, const void *msg,
                                              size_t len);

/*
 * Takes up to max received messages, oldest first, from the agent's queue
 * into out[0..*n_p) and writes their number to *n_p (0 when none waits).
 * Never blocks: without a progress thread it first drives the agent's
 * transports once (as ferry_agent_progress()), so that a loop of drains
 * receives. Each message taken is the caller's, to free with
 * ferry_notif_free(). Returns FERRY_ERR_INVALID for a NULL agent or n_p,
 * or a NULL out with max > 0. Any thread.
 *
 * The queue holds at most FERRY_AGENT_PARAM_NOTIF_QUEUE messages (default
 * FERRY_NOTIF_QUEUE, 4096), so it takes at most that many times
 * FERRY_NOTIF_MAX plus 300 bytes; a message that arrives while it is full
 * is dropped and counted (ferry_notif_dropped()), with a warning in the
 * log the first time. The sender is not told: drain faster than the
 * senders send, or agree on credits in the messages themselves.
 */
FERRY_API ferry_status_t ferry_notif_drain(ferry_agent_t *agent, ferry_notif_t **out,
                                           size_t max, size_t *n_p);

/*
 * Waits until the agent's queue holds a message, up to timeout_ns (0
 * checks once, a negative value waits without limit), driving the
 * transports meanwhile when there is no progress thread. It polls for
 * FERRY_WAIT_SPIN_US and then sleeps on the transports' events (as
 * ferry_xfer_wait()), so a long wait costs almost no CPU. Returns FERRY_OK
 * when a message waits (take it with ferry_notif_drain()),
 * FERRY_ERR_TIMEOUT when none came in time, FERRY_ERR_INVALID for a NULL
 * agent. Any thread; another thread may drain the message first.
 */
FERRY_API ferry_status_t ferry_notif_wait(ferry_agent_t *agent, int64_t timeout_ns);

/*
 * Writes to *count_p how many messages this agent has dropped because its
 * queue was full, since it was created. Returns FERRY_ERR_INVALID for a
 * NULL argument. Any thread.
 */
FERRY_API ferry_status_t ferry_notif_dropped(ferry_agent_t *agent, uint64_t *count_p);

/* Frees a message from ferry_notif_drain(). Accepts NULL. Any thread. */
FERRY_API void ferry_notif_free(ferry_notif_t *notif);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_NOTIF_H */
