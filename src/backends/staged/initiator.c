/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The initiator's part of a staged transfer. A post queues the request's
 * run; the pump (post and every progress) starts its chunks, oldest run
 * first, while the connection has credits and the pool a bounce buffer:
 *
 *   WRITE  gather the chunk's pieces into an outgoing buffer (memcpy, or
 *          cuMemcpyAsync from GPU memory whose event progress polls) ->
 *          send STG_AM_WRITE (the table, then the bytes) -> the buffer is
 *          free once UCX has sent it -> the target's reply ends the chunk
 *   READ   reserve an incoming buffer -> send STG_AM_READ (the table) ->
 *          the reply's bytes into the buffer -> scatter them into local
 *          memory (memcpy, or cuMemcpyAsync into GPU memory) -> the chunk
 *          ends when the copies have
 *
 * With several chunks in flight the stages overlap: chunk k+1 is gathered
 * while chunk k travels and the target copies chunk k-1 into place. A run
 * ends (its callback, from progress) when all its chunks have, or, after a
 * failure, when the chunks in flight have: the first failure is its result.
 */
#include "backends/staged/staged.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static stg_plan_t *run_plan(stg_run_t *run)
{
    return ferry__container_of(run, stg_plan_t, run);
}

/* Records a run's first failure with the thread's detail text. */
static void run_fail(stg_run_t *run, ferry_status_t st)
{
    if (st >= 0 || run->status < 0)
        return;
    run->status = st;
    snprintf(run->why, sizeof(run->why), "%s", ferry_last_error());
}

/* Ends an initiator op's chunk with st. */
static void chunk_end(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st)
{
    stg_run_t *run = &op->plan->run;

    run_fail(run, st);
    run->inflight--;
    run->conn->inflight--;
    run->conn->events++;
    ferry__stg_op_free(ctx, op);
}

/* Sends op's message: its header (op->hdr, filled: hlen bytes) and len
 * bytes at data, to ep. */
static ferry_status_t send_msg(stg_op_t *op, ucp_ep_h ep, unsigned id, size_t hlen,
                               const void *data, size_t len, const char *peer)
{
    /* No UCX reply endpoint: the target replies to the address in the
     * header. */
    ucs_status_ptr_t sp = ferry__stg_am_send(op, ep, id, &op->hdr, hlen, data, len);

    if (sp == NULL)
        return FERRY_OK;
    if (UCS_PTR_IS_ERR(sp))
        return ferry__ucx_error(UCS_PTR_STATUS(sp), "ucp_am_send_nbx", peer);
    op->req = sp;
    return FERRY_IN_PROGRESS;
}

/* An initiator op's message has left (st FERRY_OK) or could not. */
static void init_sent(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st)
{
    if (st < 0) {
        chunk_end(ctx, op, st);
        return;
    }
    op->sent = true;
    if (op->type == STG_AM_WRITE) {
        /* The bytes are UCX's now: the buffer is free for the next chunk. */
        ferry__stg_op_put_slot(op);
        if (op->acked) {
            chunk_end(ctx, op, FERRY_OK);
            return;
        }
    }
    op->state = STG_WAITING;
}

/* The address of the worker that conn sends from (which the target replies
 * to), fetched once per epoch, and with a secret its seal, made then too:
 * it covers only what stays the same for the epoch (staged.h). */
static ferry_status_t conn_address(stg_ctx_t *ctx, stg_conn_t *conn)
{
    ucp_address_t *a;
    size_t alen;
    ucs_status_t s;

    if (conn->addr != NULL && conn->addr_epoch == conn->epoch)
        return FERRY_OK;
    s = ucp_worker_get_address(conn->uc->worker, &a, &alen);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_worker_get_address", conn->uc->peer_name);
    if (alen > STG_ADDR_MAX) {
        ucp_worker_release_address(conn->uc->worker, a);
        return ferry__error(FERRY_ERR_UNSUPPORTED, "staged: the UCX worker's address "
                            "is %zu bytes (at most %u)", alen, STG_ADDR_MAX);
    }
    free(conn->addr);
    conn->addr = malloc(alen);
    if (conn->addr == NULL) {
        ucp_worker_release_address(conn->uc->worker, a);
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
    }
    memcpy(conn->addr, a, alen);
    conn->alen = alen;
    ucp_worker_release_address(conn->uc->worker, a);
    if (ctx->stage_mac != NULL) {
        memcpy(conn->seal.key_id, ctx->secret->id, sizeof(conn->seal.key_id));
        FERRY_CHECK(ferry__stg_chunk_mac(ctx, conn->id, conn->epoch, conn->addr, alen,
                                         conn->seal.mac));
    }
    conn->addr_epoch = conn->epoch;
    ferry__debug("staged: connection to peer '%s': its worker's address (in every "
                 "chunk) is %zu bytes", conn->uc->peer_name, alen);
    return FERRY_OK;
}

static void send_chunk(stg_ctx_t *ctx, stg_op_t *op)
{
    stg_plan_t *plan = op->plan;
    const stg_chunk_t *c = &plan->chunks[op->chunk];
    stg_conn_t *conn = plan->run.conn;
    size_t tlen = (size_t)c->n * sizeof(stg_piece_t);
    size_t sl = ctx->stage_mac != NULL ? sizeof(stg_seal_t) : 0;
    ferry_status_t st;

    op->hdr.h = (stg_hdr_t){sl > 0 ? STG_MAGIC_SEALED : STG_MAGIC, (uint16_t)op->type,
                            conn->epoch, 0, c->n, ferry__stg_cookie(ctx, op), c->bytes,
                            conn->id};
    st = conn_address(ctx, conn);
    if (st == FERRY_OK) {
        size_t hlen = sizeof(op->hdr.h) + sl + conn->alen;

        memcpy(op->hdr.tail, &conn->seal, sl);
        memcpy(op->hdr.tail + sl, conn->addr, conn->alen);
        if (op->type == STG_AM_WRITE)
            st = send_msg(op, conn->uc->ep, STG_AM_WRITE, hlen,
                          stg_slot(op->pool, op->slot) - tlen, tlen + c->bytes,
                          conn->uc->peer_name);
        else
            st = send_msg(op, conn->uc->ep, STG_AM_READ, hlen, plan->table + c->first,
                          tlen, conn->uc->peer_name);
    }
    if (st != FERRY_IN_PROGRESS)
        init_sent(ctx, op, st);
}

/* Starts chunk c of plan: FERRY_OK (started, or failed into the run),
 * FERRY_ERR_BUSY when no buffer is free. */
static ferry_status_t start_chunk(stg_ctx_t *ctx, stg_plan_t *plan, uint32_t c)
{
    stg_run_t *run = &plan->run;
    const stg_chunk_t *ch = &plan->chunks[c];
    stg_pool_t *pool = run->op == FERRY_OP_WRITE ? &ctx->out : &ctx->in;
    stg_op_t *op;
    unsigned slot;
    ferry_status_t st;

    st = ferry__stg_pool_take(ctx, pool, &slot);
    if (st == FERRY_ERR_BUSY)
        return st;
    if (st == FERRY_OK && (st = ferry__stg_op_new(ctx, &op)) < 0)
        ferry__stg_pool_put(pool, slot);
    if (st < 0) {
        run_fail(run, st);
        return FERRY_OK;
    }
    op->pool = pool;
    op->slot = slot;
    pool->init_held++;
    op->plan = plan;
    op->chunk = c;
    op->type = run->op == FERRY_OP_WRITE ? STG_AM_WRITE : STG_AM_READ;
    run->next++;
    run->inflight++;
    run->conn->inflight++;
    if (op->type == STG_AM_WRITE) {
        uint8_t *buf = stg_slot(pool, slot);
        size_t tlen = (size_t)ch->n * sizeof(stg_piece_t);

        /* The table goes just before the bytes: one message carries both. */
        memcpy(buf - tlen, plan->table + ch->first, tlen);
        st = ferry__stg_copy(ctx, op, buf, true, plan->laddr + ch->first,
                             plan->llen + ch->first, plan->ldev + ch->first, ch->n);
        if (st < 0) {
            ferry__error_prefix("staged: gathering a chunk");
            chunk_end(ctx, op, st);
            return FERRY_OK;
        }
        if (op->state == STG_COPYING)
            return FERRY_OK; /* sent once the copies end */
    }
    send_chunk(ctx, op);
    return FERRY_OK;
}

void ferry__stg_pump(stg_ctx_t *ctx)
{
    for (ferry__list_t *l = ctx->runs.next; l != &ctx->runs; l = l->next) {
        stg_run_t *run = ferry__container_of(l, stg_run_t, link);
        stg_plan_t *plan = run_plan(run);

        while (run->status == FERRY_OK && run->next < plan->nchunks &&
               run->conn->inflight < ctx->credits &&
               start_chunk(ctx, plan, run->next) == FERRY_OK)
            ;
    }
}

void ferry__stg_runs_finish(stg_ctx_t *ctx, stg_conn_t *conn)
{
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->runs) {
        stg_run_t *run = ferry__container_of(l, stg_run_t, link);

        if ((conn != NULL && run->conn != conn) || run->inflight > 0 ||
            (run->status == FERRY_OK && run->next < run_plan(run)->nchunks))
            continue;
        ferry__list_del(&run->link);
        run->conn->runs--;
        if (run->status < 0)
            (void)ferry__error(run->status, "%s", run->why);
        run->cb(run->arg, run->status);
    }
}

ferry_status_t ferry__stg_post(void *vctx, void *vconn, void *vplan, ferry_xfer_op_t op,
                               const ferry__bk_seg_t *segs, size_t n,
                               ferry__bk_done_cb cb, void *arg)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = vconn;
    stg_plan_t *plan = vplan;
    stg_run_t *run = &plan->run;

    (void)segs;
    (void)n;
    if (conn->uc->failed != UCS_OK)
        return ferry__ucx_error(conn->uc->failed, "endpoint", conn->uc->peer_name);
    if (conn->uc->worker == NULL) {
        FERRY_CHECK(ferry__ucx_reconnect(ctx->ucx, conn->uc));
        conn->epoch++;
    }
    run->conn = conn;
    run->op = op;
    run->cb = cb;
    run->arg = arg;
    run->next = 0;
    run->inflight = 0;
    run->status = FERRY_OK;
    run->why[0] = '\0';
    ferry__list_add(ctx->runs.prev, &run->link);
    conn->runs++;
    /* Failures here end the run from the next progress, as the core asks
     * of a post that returns FERRY_IN_PROGRESS. */
    ferry__stg_pump(ctx);
    return FERRY_IN_PROGRESS;
}

void ferry__stg_init_copied(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st)
{
    ferry__stg_events_drop(ctx, op);
    op->state = STG_WAITING;
    if (st < 0 || op->type == STG_AM_READ) {
        /* A READ's scatter was its last stage. */
        chunk_end(ctx, op, st);
        return;
    }
    send_chunk(ctx, op);
}

ucs_status_ptr_t ferry__stg_am_send(stg_op_t *op, ucp_ep_h ep, unsigned id, const void *hdr,
                                    size_t hlen, const void *data, size_t len)
{
    ucp_request_param_t p = {0};

    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK |
                     UCP_OP_ATTR_FIELD_USER_DATA;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = ferry__stg_sent;
    p.user_data = op;
    op->state = STG_SENDING;
    return ucp_am_send_nbx(ep, id, hdr, hlen, data, len, &p);
}

/* The completion of any op's message (target or initiator). */
void ferry__stg_sent(void *request, ucs_status_t status, void *user_data)
{
    stg_op_t *op = user_data;
    stg_ctx_t *ctx = op->ctx;

    ucp_request_free(request);
    if (op->req != request)
        return; /* its op ended meanwhile (an abort) */
    op->req = NULL;
    ctx->handled++;
    if (op->target) {
        if (status != UCS_OK && op->rep != NULL)
            op->rep->dead = true; /* its initiator is gone */
        if (status != UCS_OK)
            ferry__debug("staged: a reply was not sent: %s", ucs_status_string(status));
        ferry__stg_op_free(ctx, op);
        return;
    }
    if (status != UCS_OK && op->plan->run.conn->uc->failed != UCS_OK)
        status = op->plan->run.conn->uc->failed; /* "canceled" by the peer's end */
    init_sent(ctx, op, status == UCS_OK ? FERRY_OK
                                        : ferry__ucx_error(status, "ucp_am_send_nbx",
                                                           op->plan->run.conn->uc->peer_name));
}

/* For a context with a secret: whether a reply's seal (NULL: none) vouches
 * for its header; warns with the reason when not. */
static bool reply_sealed(stg_ctx_t *ctx, const stg_hdr_t *h, const stg_seal_t *seal)
{
    uint8_t mac[FERRY__MAC_LEN];
    const char *why = ferry__stg_seal_refusal(ctx, seal);

    if (why == NULL && ferry__stg_reply_mac(ctx, h, mac) < 0)
        why = ferry_last_error();
    else if (why == NULL && !ferry__ct_equal(seal->mac, mac, sizeof(mac)))
        why = "its seal does not verify";
    if (why != NULL)
        ferry__warn("staged: dropped a reply: %s", why);
    return why == NULL;
}

/* A target's reply: a WRITE chunk's end or a READ chunk's bytes. Runs in
 * progress of a connection's worker; returning UCS_OK releases the data.
 * Nothing of it is used before its seal (with a secret), its operation,
 * and the worker it came in on and the connection it names (its
 * operation's) have been checked. */
ucs_status_t ferry__stg_on_reply(void *arg, const void *header, size_t header_length,
                                 void *data, size_t length,
                                 const ucp_am_recv_param_t *param)
{
    stg_ctx_t *ctx = arg;
    stg_hdr_t h = {0};
    stg_seal_t seal;
    stg_op_t *op;
    stg_conn_t *conn;
    const stg_chunk_t *c;
    ferry_status_t st;
    bool sealed;

    ctx->handled++;
    if (header_length >= sizeof(h))
        memcpy(&h, header, sizeof(h));
    sealed = h.magic == STG_MAGIC_SEALED;
    if (header_length != sizeof(h) + (sealed ? sizeof(seal) : 0) ||
        (h.magic != STG_MAGIC && !sealed) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        ferry__warn("staged: dropped a reply of %zu header bytes%s: not ferry's "
                    "protocol", header_length,
                    (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) ? " sent as a "
                                                                       "rendezvous" : "");
        return UCS_OK;
    }
    if (sealed)
        memcpy(&seal, (const uint8_t *)header + sizeof(h), sizeof(seal));
    /* Without a secret a seal is skipped: the network is trusted. */
    if (ctx->stage_mac != NULL && !reply_sealed(ctx, &h, sealed ? &seal : NULL))
        return UCS_OK;
    op = ferry__stg_op_find(ctx, h.cookie);
    if (op == NULL || op->target || op->type != h.type ||
        (op->state != STG_WAITING && op->state != STG_SENDING) ||
        (op->type == STG_AM_WRITE && op->acked)) {
        ferry__debug("staged: dropped a late or unknown reply");
        return UCS_OK;
    }
    conn = op->plan->run.conn;
    /* A reply comes only on the worker its chunk left from, naming that
     * connection and epoch: a peer cannot end another connection's chunks
     * (the worker is known only inside its progress, ucx.h). */
    if (conn->uc->worker != ctx->ucx->current || h.conn_id != conn->id ||
        h.epoch != conn->epoch) {
        ferry__warn("staged: dropped a reply for a chunk to peer '%s' that %s",
                    conn->uc->peer_name,
                    conn->uc->worker != ctx->ucx->current
                        ? "came in on another connection's worker"
                        : "names another connection or epoch");
        return UCS_OK;
    }
    conn->events++;
    c = &op->plan->chunks[op->chunk];
    if (h.status < 0) {
        st = h.status >= FERRY_ERR_SYSTEM ? h.status : FERRY_ERR_PROTOCOL;
        (void)ferry__error(st, "staged: peer '%s' could not serve a chunk of %llu "
                           "bytes: %s", conn->uc->peer_name,
                           (unsigned long long)c->bytes, ferry_status_str(st));
        if (op->req != NULL)
            op->req = NULL; /* the send's completion finds no op */
        chunk_end(ctx, op, st);
        return UCS_OK;
    }
    if (op->type == STG_AM_WRITE) {
        if (length != 0 || h.bytes != c->bytes)
            goto bad;
        op->acked = true;
        if (op->sent)
            chunk_end(ctx, op, FERRY_OK);
        return UCS_OK;
    }
    if (length != c->bytes || h.bytes != c->bytes)
        goto bad;
    if (op->req != NULL)
        op->req = NULL; /* the request's reply came: its send is done */
    memcpy(stg_slot(op->pool, op->slot), data, length);
    st = ferry__stg_copy(ctx, op, stg_slot(op->pool, op->slot), false,
                         op->plan->laddr + c->first, op->plan->llen + c->first,
                         op->plan->ldev + c->first, c->n);
    if (st < 0)
        ferry__error_prefix("staged: scattering a chunk");
    if (st < 0 || op->state != STG_COPYING)
        chunk_end(ctx, op, st);
    return UCS_OK;

bad:
    st = ferry__error(FERRY_ERR_PROTOCOL, "staged: peer '%s' answered a chunk of %llu "
                      "bytes with %zu (header %llu)", conn->uc->peer_name,
                      (unsigned long long)c->bytes, length, (unsigned long long)h.bytes);
    op->req = NULL;
    chunk_end(ctx, op, st);
    return UCS_OK;
}

static void end_conn_op(stg_ctx_t *ctx, stg_op_t *op, void *arg)
{
    stg_conn_t *conn = arg;

    if (op->target || op->plan->run.conn != conn)
        return;
    op->req = NULL;
    chunk_end(ctx, op, FERRY_ERR_CANCELED); /* the run's status is set */
}

void ferry__stg_conn_fail(stg_ctx_t *ctx, stg_conn_t *conn, ferry_status_t why)
{
    for (ferry__list_t *l = ctx->runs.next; l != &ctx->runs; l = l->next) {
        stg_run_t *run = ferry__container_of(l, stg_run_t, link);

        if (run->conn == conn && run->status == FERRY_OK) {
            run->status = why;
            snprintf(run->why, sizeof(run->why), "%s", ferry_last_error());
        }
    }
}

void ferry__stg_conn_end(stg_ctx_t *ctx, stg_conn_t *conn, ferry_status_t why)
{
    char text[256];

    snprintf(text, sizeof(text), "%s", ferry_last_error());
    ferry__stg_conn_fail(ctx, conn, why);
    /* Nothing of UCX touches a buffer once the worker is gone, and no copy
     * of ours once the streams are done. */
    (void)ferry__error(why, "%s", text);
    (void)ferry__ucx_ops.conn_abort(ctx->ucx, conn->uc, why);
    if (ctx->ncopying > 0)
        ferry__stg_copies_sync(ctx);
    ferry__stg_ops_each(ctx, end_conn_op, conn);
    ferry__stg_runs_finish(ctx, conn);
}
