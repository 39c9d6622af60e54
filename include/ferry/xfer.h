/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/xfer.h: transfers. READ and WRITE requests between local registered
 * memory and the memory a peer advertised, validated once at prepare and
 * posted any number of times, then tested, waited on, canceled or released;
 * and the agent's completion queue, which reports their ends to an event
 * loop. Part of <ferry.h>; ferry/stream.h orders the same requests on CUDA
 * streams.
 */
#ifndef FERRY_XFER_H
#define FERRY_XFER_H

#include "agent.h"
#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ferry_xfer_op {
    FERRY_OP_WRITE = 0, /* local -> remote */
    FERRY_OP_READ = 1   /* remote -> local */
} ferry_xfer_op_t;

/* Transport backends, as ferry_xfer_params_t.backend names them. */
typedef enum ferry_backend {
    FERRY_BACKEND_ANY = 0,     /* the library's choice (the default) */
    FERRY_BACKEND_UCX = 1,     /* UCX: host memory, any host; GPU memory only
                                * where UCX itself supports CUDA */
    FERRY_BACKEND_CUDA_IPC = 2, /* CUDA IPC: the peer's GPU memory, same host */
    FERRY_BACKEND_STAGED = 3    /* staging through pinned host bounce buffers
                                 * over UCX: GPU memory of a peer on another
                                 * host where UCX takes no GPU memory (and,
                                 * forced, any memory: see ferry_xfer_prepare) */
} ferry_backend_t;

enum {
    FERRY_XFER_PARAM_USER_DATA = 1u << 0,
    FERRY_XFER_PARAM_BACKEND = 1u << 1,
    FERRY_XFER_PARAM_NOTIF = 1u << 2
};

typedef struct ferry_xfer_params {
    uint64_t field_mask;
    /*
     * FERRY_XFER_PARAM_USER_DATA: puts the request's completions in its
     * agent's completion queue (see ferry_agent_completions()), each with
     * this value of the caller's. Default: not queued.
     */
    void *user_data;
    /*
     * FERRY_XFER_PARAM_BACKEND: serves every pair with this backend only
     * (prepare fails with FERRY_ERR_UNSUPPORTED where it cannot). Default:
     * FERRY_BACKEND_ANY.
     */
    ferry_backend_t backend;
    /*
     * FERRY_XFER_PARAM_NOTIF: a message of notif_len bytes (0 to
     * FERRY_NOTIF_MAX, copied at prepare) that the peer's agent receives
     * each time a post of the request completes successfully, never before
     * that post's bytes are in the peer's memory (WRITE) or in local memory
     * (READ); ferry_xfer_set_notif() changes it between posts. See
     * ferry/notif.h for the guarantees. Prepare fails with
     * FERRY_ERR_INVALID when notif_len is over the maximum (or notif is
     * NULL with notif_len > 0), FERRY_ERR_UNSUPPORTED when the peer
     * advertises no UCX address (the messages' path). Default: no message.
     */
    const void *notif;
    size_t notif_len;
} ferry_xfer_params_t;

/*
 * Prepares a request that moves local[i] to or from remote[i] for every i,
 * on the given peer. Everything is validated here, once: each local
 * descriptor lies inside one local registration, each remote descriptor
 * inside one registration the peer advertised, and the two lists pair up.
 * Errors name the offending descriptor index:
 *   FERRY_ERR_INVALID        bad op, NULL arrays, zero counts or lengths
 *   FERRY_ERR_MISMATCH       nlocal != nremote, len or kind of a pair differ
 *   FERRY_ERR_NOT_REGISTERED a descriptor's start lies in no registration
 *   FERRY_ERR_OUT_OF_RANGE   a descriptor starts in a registration and runs
 *                            past its end
 *   FERRY_ERR_PEER_LOST      the peer was forgotten or replaced, or (same
 *                            host) its process has exited
 *   FERRY_ERR_UNSUPPORTED    no backend can serve a pair; the text names
 *                            the pair and what each backend lacks
 *   FERRY_ERR_TIMEOUT        (same host, the peer's VMM GPU memory, its file
 *                            descriptors fetched from its hand-off socket:
 *                            FERRY_CUDA_FD_HANDOFF) the peer did not hand
 *                            them over within 5 s, as when it is stopped;
 *                            that wait holds only the calling thread, not
 *                            the agent's others
 * Pairs are checked in order and the first failure is returned; within a
 * pair: a zero length (INVALID), lengths that differ (MISMATCH), the local
 * descriptor's registration, then the remote one's (NOT_REGISTERED or
 * OUT_OF_RANGE), then each side's kind (MISMATCH). So a descriptor that is
 * both of the wrong kind and unregistered is NOT_REGISTERED.
 * Where registrations overlap, a descriptor uses, of those that hold all
 * of it, the one that starts highest (nearest below its start); of several
 * that start at the same address, the latest registered. The request keeps
 * that registration busy while it is in flight (ferry_mem_deregister() of
 * it is FERRY_ERR_BUSY; of the others, not), and depends on it: once it is
 * deregistered the request cannot be posted again (NOT_REGISTERED), even if
 * the same range is registered anew. Prepare it again instead.
 * Each pair goes to a backend chosen here: GPU memory of a peer on the
 * same host through CUDA IPC (the peer's allocation is mapped on first
 * use; a post's copies start after the work queued before it on the
 * legacy default stream, not after other streams' work: synchronise those,
 * or use ferry_xfer_post_on_stream(); the peer's own writes to its memory
 * are the peer's to finish, with a synchronisation, before it lets a READ
 * start, since a cuMemcpy from pageable memory may return before its DMA
 * ends), host memory through UCX, GPU memory to another host through UCX
 * where UCX reports CUDA support and otherwise by staging (the staged
 * backend: chunks copied through pinned host bounce buffers and sent over
 * UCX in a pipeline; docs/STAGING.md), which also serves local GPU memory
 * with a peer's host memory on one host. CUDA IPC serves a remote GPU region
 * with local GPU or host memory. Unlike UCX's RMA, a staged transfer needs
 * the target's agent driven (its progress thread, ferry_agent_progress() or
 * a wait), since the target copies each chunk into place; the request
 * completes only once the last byte is in the destination's memory (for a
 * WRITE, after the target's copies into its GPU memory). Peers on "another
 * host" are those whose host identity differs (FERRY_HOST_ID overrides it).
 * params->backend (FERRY_XFER_PARAM_BACKEND) restricts the choice to one
 * backend; FERRY_BACKEND_STAGED stages any pair, host memory included. A CUDA IPC batch of several segments is copied
 * by one launch of ferry's copy kernel over a table built here (segments
 * up to FERRY_CUDA_COPY_MAX; longer ones, and a lone segment, by the copy
 * engines; FERRY_CUDA_COPY chooses), so a paged KV cache's thousands of
 * small blocks move at about the speed of one contiguous copy.
 * Destinations of one request must not overlap: which bytes land where
 * they overlap is undefined (copies run in parallel, in no set order).
 * Up to 2^32 - 1 descriptors per request. params may be NULL. On success
 * *xfer_p holds a request that may be posted any number of times. Any
 * thread.
 */
FERRY_API ferry_status_t ferry_xfer_prepare(
    ferry_agent_t *agent, ferry_xfer_op_t op, const ferry_desc_t *local,
    size_t nlocal, ferry_peer_t *peer, const ferry_desc_t *remote,
    size_t nremote, const ferry_xfer_params_t *params, ferry_xfer_t **xfer_p);

/*
 * Starts the transfer. Returns FERRY_OK if it completed inline (for a WRITE,
 * the bytes are then visible in the peer's memory; for a READ, in local
 * memory), FERRY_IN_PROGRESS if it is under way, FERRY_ERR_BUSY if the
 * request is still in flight from an earlier post, FERRY_ERR_NOT_REGISTERED
 * if a local registration it uses was deregistered, FERRY_ERR_PEER_LOST if
 * the peer is gone or was replaced, or the transport's error. Any thread.
 * A transfer into or out of a same-host peer's memory that is mapped here
 * (the peer's ferry_mem_alloc() memory) is copied by the calling thread,
 * without holding the agent's lock, so threads that post different
 * requests of one agent copy in parallel; it completes inline.
 */
FERRY_API ferry_status_t ferry_xfer_post(ferry_xfer_t *xfer);

/*
 * Makes progress without blocking and reports the request's state:
 * FERRY_IN_PROGRESS while in flight, then FERRY_OK or the transfer's error
 * once it has finished (FERRY_ERR_PEER_LOST if the peer died,
 * FERRY_ERR_CANCELED after ferry_xfer_cancel(), FERRY_ERR_TIMEOUT after the
 * stall timeout); the result stays until the next post. Returns
 * FERRY_ERR_INVALID for a request never posted. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_test(ferry_xfer_t *xfer);

/*
 * Waits for the request to finish: timeout_ns 0 tests once (a request still
 * in flight then gives FERRY_ERR_TIMEOUT, where ferry_xfer_test() gives
 * FERRY_IN_PROGRESS), a negative value waits without limit. It polls for a short time (FERRY_WAIT_SPIN_US) and
 * then sleeps on the transports' events, so a long wait costs almost no CPU.
 * Returns what ferry_xfer_test() would, or FERRY_ERR_TIMEOUT if the time ran
 * out (the request stays valid and may be waited on again). A request that
 * ended by the stall timeout reports FERRY_ERR_TIMEOUT too, with a detail
 * text that says "stall timeout"; ferry_xfer_test() tells the two apart
 * (FERRY_IN_PROGRESS for the first). Any thread; any number of threads may
 * wait on different requests at once.
 */
FERRY_API ferry_status_t ferry_xfer_wait(ferry_xfer_t *xfer, int64_t timeout_ns);

/*
 * Stops a request in flight. Returns FERRY_OK once nothing will touch the
 * request's local memory any more: it may then be deregistered and freed,
 * and test and wait report FERRY_ERR_CANCELED. Returns FERRY_IN_PROGRESS if
 * a transport must still hand the request back; test and wait then report
 * FERRY_ERR_CANCELED once it has (UCX never needs this; the return exists
 * for transports that cannot stop at once). A request that is not in
 * flight (never posted, or finished) is left as it is: FERRY_OK, and test
 * and wait keep reporting its result. FERRY_ERR_INVALID for NULL.
 *
 * What a canceled transfer leaves behind is undefined: a WRITE may have
 * written any part of the remote range, a READ any part of the local one.
 * Bytes of a WRITE that had already reached the peer's side may still be
 * applied there after cancel returns (never read from local memory again),
 * so the peer should not rely on that range until told by other means.
 *
 * A transport cannot recall one operation of many, so cancel closes the
 * connection to the request's peer: every other request in flight to that
 * peer ends as well, with FERRY_ERR_CANCELED and a detail text that says
 * so. Requests are not harmed otherwise: any of them, the canceled one
 * included, may be posted again, which reopens the connection (a peer that
 * is gone still gives FERRY_ERR_PEER_LOST). To stop one request to a
 * healthy peer without touching the others, wait for it instead. A request
 * to this same agent (a loopback peer: the agent loaded its own blob) needs
 * no one else to finish, so it is not stopped: cancel returns
 * FERRY_IN_PROGRESS and it ends, CANCELED, when its transfer does. Another
 * agent of the same process is an ordinary peer, whether or not anything
 * drives it: cancel, the stall timeout and release end a request to it as
 * they end one to another process. Cancel leaves ferry_last_error() as it
 * was.
 *
 * Over TCP (UCX_TLS or FERRY_UCX_TLS=tcp, or peers on other hosts
 * without RDMA), UCX 1.13 aborts a peer that finds WRITEs of a closed
 * connection in its sockets, so there cancel does not close the
 * connection's sockets: it sets its UCX worker aside, never to be driven
 * again (up to 8 per peer, each a few MiB; they go when the peer is
 * forgotten). Known limits: a peer whose answer to the connection's first
 * contact (UCX's wire-up) had not arrived when the connection was canceled,
 * timed out or forgotten (the peer was stopped, or busy, or this agent was
 * not driven meanwhile) may abort when that worker goes or when the peer
 * exits; a peer whose initiator process dies mid-transfer still aborts, as
 * does one still reading a canceled WRITE when its initiator forgets it or
 * destroys its agent right after the cancel (all UCX bugs). A request
 * completed on a connection ends its first contact. Over shared memory,
 * the default between processes of one host, none of this happens. Any
 * thread.
 */
FERRY_API ferry_status_t ferry_xfer_cancel(ferry_xfer_t *xfer);

/*
 * Frees a request. A request still in flight is canceled first (see
 * ferry_xfer_cancel(), including what that does to other requests to the
 * same peer), and freed only once its transport has handed it back, so
 * that nothing writes into or reads from its memory afterwards; with UCX
 * that is at once. Its entry in the completion queue, if one waits there,
 * is dropped. Accepts NULL. No other thread may use the request
 * meanwhile.
 */
FERRY_API void ferry_xfer_release(ferry_xfer_t *xfer);

/*
 * The agent's completion queue. A request prepared with
 * FERRY_XFER_PARAM_USER_DATA adds exactly one entry each time a post of it
 * that returned FERRY_IN_PROGRESS finishes (successfully, with an error,
 * canceled or timed out); a post that returns anything else reports its
 * outcome by its return value and adds nothing. Such a request may still
 * be tested and waited on. Posting it again before its entry was drained
 * drops that entry (the caller evidently learned of the completion another
 * way), so the queue never holds more entries than there are requests.
 *
 * A queue rather than a callback: entries are taken by the caller's own
 * thread, when it chooses, so there are no rules about what may be called
 * from inside a callback, no callbacks on the progress thread, and no lock
 * held across the caller's code; and it fits an event loop through
 * ferry_agent_fd(), which is readable while entries wait.
 */
typedef struct ferry_completion {
    ferry_xfer_t *xfer;     /* the request that finished */
    void *user_data;        /* its FERRY_XFER_PARAM_USER_DATA */
    ferry_status_t status;  /* FERRY_OK or its error; ferry_xfer_test(xfer)
                               gives the same status with its detail text
                               until the request is posted again */
} ferry_completion_t;

/*
 * Moves up to max entries, oldest first, from the agent's completion queue
 * to out[0..*n_p) and writes their number to *n_p (0 when none waits). It
 * does not drive progress: call it after ferry_agent_progress(), a wait, or
 * when ferry_agent_fd() is readable; with a progress thread, whenever
 * convenient. Returns FERRY_ERR_INVALID for a NULL agent or n_p, or a NULL
 * out with max > 0. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_completions(ferry_agent_t *agent,
                                                 ferry_completion_t *out,
                                                 size_t max, size_t *n_p);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_XFER_H */
