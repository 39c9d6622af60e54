/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX notifications: a message is one active message (ucp_am_send_nbx,
 * id FERRY__UCX_AM_NOTIF, no header, the core's bytes as data) on the
 * connection's endpoint, received by the handler set on the context's
 * worker, the one whose address peers connect to.
 *
 * Order. The core sends a request's message only after the request
 * completed: after the endpoint flush that ends a post (ucp_ep_flush_nbx
 * completes once every put is in the peer's memory and every get in
 * ours), after a copy into mapped memory and its fences, or after a CUDA
 * IPC copy's completion was seen. So every byte of the transfer is in
 * place before the message is even sent; no UCX fence is needed (nor would
 * one do: UCX 1.13's ucp_worker_fence() orders operations within each
 * interface, and a put and this message may use different lanes). Messages
 * of one endpoint are forced eager (UCP_AM_SEND_FLAG_EAGER): UCX sends
 * eager active messages of an endpoint on its one AM lane, in order, so
 * they arrive in the order they were sent, and never as a rendezvous that
 * the receiver would have to fetch. A message that UCX cannot send at once
 * is copied and queued by UCX behind the ones before it; while any is
 * queued, later ones are queued too rather than tried at once, so none
 * overtakes another.
 *
 * The receiving worker polls the shared-memory interfaces these messages
 * arrive on thanks to its anchor endpoint (ucx.c); without it each one
 * would wake UCX's async thread.
 *
 * A queued message (the first on a new endpoint waits for UCX's wire-up,
 * which needs the peer's answer) leaves only when the connection's worker
 * is progressed. A sender without a progress thread that sends and then
 * waits for something else would keep it, so a send that had to queue
 * sees it out itself: it polls the connection's worker for up to
 * UCX_SEND_SPIN_NS, and the first time on an endpoint not yet wired up
 * then sleeps on its event fd, up to UCX_WIREUP_MS in all (a peer that
 * makes progress answers the wire-up within that even on a loaded
 * machine). That sleep comes once per endpoint: a peer that did not answer
 * in time is stopped or busy, and every later send only polls until a
 * message has left, so a stopped peer holds the agent's lock, and with it
 * the agent's other threads, for UCX_WIREUP_MS once per connection and
 * 50 us a message after that (it used to be UCX_WIREUP_MS a message).
 * Those later messages leave with the agent's next progress. A message
 * on a wired endpoint is queued only behind a full transport, whose peer
 * is not draining: it is not waited for beyond the poll either, so a
 * flood into a slow peer costs each send 50 us at most. The lock is held
 * meanwhile, the price of a message that leaves without the sender's
 * help. Not from inside progress (a request's completion), where the next
 * round of progress is at hand and nesting is not allowed.
 */
#include "backends/ucx/ucx.h"
#include "util/log.h"
#include "util/time.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>

/* How long a send that had to queue polls, then sleeps, to let it go. */
#define UCX_SEND_SPIN_NS 50000ull
#define UCX_WIREUP_MS 200

static void ucx_send_done(void *request, ucs_status_t status, void *user_data)
{
    ucx_req_t *r = request;

    (void)user_data;
    if (status != UCS_OK)
        ferry__info("ucx: a notification to peer '%s' was not sent: %s",
                    r->conn != NULL ? r->conn->peer_name : "(closed)",
                    ucs_status_string(status));
    /* Off its connection's list, or a closing's (conn.c), or none: a
     * link in no list points to itself. */
    ferry__list_del(&r->link);
    free(r->buf);
    ucp_request_free(request);
}

void ferry__ucx_sends_drop(ferry__list_t *sends, ferry__list_t *to, bool destroyed)
{
    while (!ferry__list_empty(sends)) {
        ucx_req_t *r = ferry__container_of(sends->next, ucx_req_t, link);

        ferry__list_del(&r->link);
        r->conn = NULL;
        if (to != NULL)
            ferry__list_add_tail(to, &r->link);
        else if (destroyed)
            free(r->buf); /* the request went with the worker; so does its callback */
    }
}

/* Drives the connection's worker until its queued messages have left, or
 * for a bounded time (see the top of this file). */
static void ucx_send_see_out(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    bool wireup = !conn->wired && !conn->wireup_waited;
    uint64_t start = ferry__now_ns(), spin_end = start + UCX_SEND_SPIN_NS;
    uint64_t end = wireup ? start + (uint64_t)UCX_WIREUP_MS * 1000000 : spin_end;

    ctx->progressing = true;
    while (!ferry__list_empty(&conn->sends) && conn->worker != NULL) {
        uint64_t now = ferry__now_ns();
        struct pollfd pfd = {conn->efd, POLLIN, 0};

        conn->events += ferry__ucx_worker_progress(ctx, conn->worker);
        if (ferry__list_empty(&conn->sends) || now >= end)
            break;
        /* A loopback connection has no fd of its own: it only polls. */
        if (now < spin_end || conn->efd < 0 || ucp_worker_arm(conn->worker) != UCS_OK)
            continue;
        (void)poll(&pfd, 1, (int)((end - now + 999999) / 1000000));
    }
    ctx->progressing = false;
    /* Any send that left proves the endpoint wired up; one that did not
     * leave in time waited for this endpoint's last time. */
    conn->wired = conn->wired || ferry__list_empty(&conn->sends);
    conn->wireup_waited = conn->wireup_waited || wireup;
    if (!ferry__list_empty(&conn->sends))
        ferry__debug("ucx: a notification to peer '%s' is still queued; it leaves "
                     "with the agent's next progress", conn->peer_name);
}

ferry_status_t ferry__ucx_msg_send(void *vctx, void *vconn, const void *data,
                                   size_t len)
{
    ucx_ctx_t *ctx = vctx;
    ucx_conn_t *conn = vconn;
    ucp_request_param_t p = {0};
    ucs_status_ptr_t sp;
    ucx_req_t *r;
    void *buf;

    /* A same-host peer that exited is noticed here (within a millisecond)
     * rather than at the next liveness check of progress, so that a send to
     * it fails. */
    if (!ferry__ucx_conn_alive(ctx, conn))
        return ferry__ucx_error(conn->failed, "notification", conn->peer_name);
    if (conn->worker == NULL)
        FERRY_CHECK(ferry__ucx_reconnect(ctx, conn));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    if (ferry__list_empty(&conn->sends)) {
        /* Most messages leave at once, from the caller's buffer. */
        p.op_attr_mask |= UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
        sp = ucp_am_send_nbx(conn->ep, FERRY__UCX_AM_NOTIF, NULL, 0, data, len, &p);
        if (sp == NULL) {
            conn->wired = true;
            return FERRY_OK;
        }
        if (!UCS_PTR_IS_ERR(sp)) { /* not expected with FORCE_IMM_CMPL */
            ucp_request_cancel(conn->worker, sp);
            ucp_request_free(sp);
            return ferry__error(FERRY_ERR_BACKEND, "ucx: ucp_am_send_nbx returned a "
                                "request for an immediate send (peer '%s')",
                                conn->peer_name);
        }
        if (UCS_PTR_STATUS(sp) != UCS_ERR_NO_RESOURCE)
            return ferry__ucx_error(UCS_PTR_STATUS(sp), "ucp_am_send_nbx",
                                    conn->peer_name);
        p.op_attr_mask &= ~(uint32_t)UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
    }
    buf = malloc(len ? len : 1);
    if (buf == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a %zu-byte "
                            "notification", len);
    memcpy(buf, data, len);
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_CALLBACK;
    p.cb.send = ucx_send_done;
    sp = ucp_am_send_nbx(conn->ep, FERRY__UCX_AM_NOTIF, NULL, 0, buf, len, &p);
    if (sp == NULL) {
        free(buf);
        return FERRY_OK;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        free(buf);
        return ferry__ucx_error(UCS_PTR_STATUS(sp), "ucp_am_send_nbx", conn->peer_name);
    }
    /* The callback cannot run before the next progress, which needs the
     * agent's lock that our caller holds. */
    r = sp;
    r->conn = conn;
    r->buf = buf;
    ferry__list_add(conn->sends.prev, &r->link);
    if (!ctx->progressing)
        ucx_send_see_out(ctx, conn);
    return FERRY_OK;
}

/* Runs inside ucp_worker_progress() of the context's worker, under the
 * agent's lock. Eager data is handed over whole (UCP_AM_FLAG_WHOLE_MSG);
 * a peer that forces a rendezvous breaks the protocol, and the message is
 * dropped (returning UCS_OK releases it). */
static ucs_status_t ucx_msg_recv(void *arg, const void *header, size_t header_length,
                                 void *data, size_t length,
                                 const ucp_am_recv_param_t *param)
{
    ucx_ctx_t *ctx = arg;

    (void)header;
    if (header_length != 0 || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        ferry__warn("ucx: dropped a notification that came with a header or as a "
                    "rendezvous (%zu bytes): not ferry's protocol", length);
        return UCS_OK;
    }
    if (ctx->msg_cb != NULL)
        ctx->msg_cb(ctx->msg_arg, data, length);
    return UCS_OK;
}

ferry_status_t ferry__ucx_msg_listen(void *vctx, ferry__bk_msg_cb cb, void *arg)
{
    ucx_ctx_t *ctx = vctx;
    ucp_am_handler_param_t hp = {0};
    ucs_status_t s;

    ctx->msg_cb = cb;
    ctx->msg_arg = arg;
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = FERRY__UCX_AM_NOTIF;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = ucx_msg_recv;
    hp.arg = ctx;
    s = ucp_worker_set_am_recv_handler(ctx->worker, &hp);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_worker_set_am_recv_handler", NULL);
    return FERRY_OK;
}
