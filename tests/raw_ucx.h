/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A raw UCX sender for the tests that feed ferry's workers what a peer
 * could send them (tests/lib/raw_ucx.c): a UCX context and worker of its
 * own, an endpoint to a worker address from a ferry blob, and active
 * messages of any id, header and data, sent eager as ferry's are. Nothing
 * of ferry is used to send, so malformed messages reach the receiver as
 * they are.
 */
#ifndef FERRY_TEST_RAW_UCX_H
#define FERRY_TEST_RAW_UCX_H

#include <stddef.h>
#include <ucp/api/ucp.h>

typedef struct xr_sender {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;
} xr_sender_t;

/* Opens a sender with an endpoint to the worker address addr (from a
 * blob, or a worker of this process). Returns 0, or -1 (printed). */
int xr_open(xr_sender_t *s, const void *addr);

/* Sends one active message (id, hlen header bytes, len data bytes) and
 * drives the sender's worker, and pump(arg) when pump is not NULL (the
 * receiving agent, when it is in this process and has no progress thread),
 * until it has left, 10 s at most. Returns 0 when sent, else -1. */
int xr_send(xr_sender_t *s, unsigned id, const void *hdr, size_t hlen, const void *data,
            size_t len, void (*pump)(void *), void *arg);

/* Drives the sender's worker once (its active-message handlers run). */
void xr_progress(xr_sender_t *s);

/* Closes the endpoint (forced) and frees the worker and context. */
void xr_close(xr_sender_t *s);

#endif
