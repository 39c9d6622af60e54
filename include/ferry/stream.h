/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/stream.h: stream-ordered transfers. A request from
 * ferry_xfer_prepare() started and awaited in the order of a CUDA stream,
 * and so capturable in a CUDA graph, without this header needing CUDA's
 * own: a stream is passed as void *. Part of <ferry.h>.
 */
#ifndef FERRY_STREAM_H
#define FERRY_STREAM_H

#include "status.h"
#include "xfer.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Stream-ordered transfers. ferry_xfer_post_on_stream() enqueues the start
 * of the transfer on a CUDA stream (a CUstream, passed as void *): it
 * begins once the stream's earlier work is done. ferry_xfer_wait_on_stream()
 * makes a stream's later work wait for the transfer. Both only enqueue and
 * return at once; both may be captured into a CUDA graph, and every replay
 * of the graph then moves the data again (the protocol's values never
 * change). Pairs served by CUDA IPC are copies put on the stream itself
 * (a launch of the copy kernel over the table the prepare built, and
 * cuMemcpyAsync for segments left to the copy engines);
 * pairs served by a network backend (host memory through UCX) are started
 * by the agent's progress thread when the stream writes a flag in
 * page-locked host memory, and signal their end through a second flag that
 * the waiting stream polls, so such requests need an agent created with
 * FERRY_AGENT_PARAM_PROGRESS_THREAD (else FERRY_ERR_INVALID). The progress
 * thread notices a flag at once while it is busy and within about 1 ms when
 * it had been idle. A request with a notification (FERRY_XFER_PARAM_NOTIF)
 * takes the flags too, whatever its backends, and so needs the progress
 * thread: the stream writes the start flag after its CUDA IPC copies, and
 * the progress thread, seeing it, starts the other parts and sends the
 * message once all have completed (at once when there are none). Every
 * replay of a graph sends the message again; it is the one set when the
 * stream reached the flag.
 *
 * Errors: a transfer that fails still releases the waiting stream (the GPU
 * never hangs on it); its status is what ferry_xfer_test() and
 * ferry_xfer_wait() report, and the next ferry_xfer_post_on_stream() of the
 * request returns it once. FERRY_ERR_UNSUPPORTED without a CUDA driver,
 * FERRY_ERR_INVALID for wait_on_stream() of a request never posted on a
 * stream, and post_on_stream() checks what ferry_xfer_post() checks. CUDA
 * IPC copies run without the host, so nothing checks the peer when they
 * run: a graph that holds them, replayed after the peer's process exited,
 * copies into or out of its orphaned memory without an error (its memory
 * stays mapped here until the peer is forgotten). A host post, or the next
 * stream post, of the request reports FERRY_ERR_PEER_LOST.
 *
 * What the caller keeps alive: the request, its registrations and its
 * peer, for as long as any stream or graph that enqueued it may still run
 * it (synchronise the streams, or destroy the graph's executables, before
 * ferry_xfer_release(): a graph replayed after the release would read a
 * freed copy table); from its first stream post on, the request counts
 * as in flight for ferry_mem_deregister() (BUSY) until released. Post and
 * wait in pairs, in that order: a stream post while the previous run is
 * still going starts once it ends. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_post_on_stream(ferry_xfer_t *xfer, void *stream);
FERRY_API ferry_status_t ferry_xfer_wait_on_stream(ferry_xfer_t *xfer, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_STREAM_H */
