/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The target's part of a staged transfer, served from its progress: a
 * WRITE chunk is copied into an incoming bounce buffer and from there into
 * the target's memory (memcpy, or cuMemcpyAsync into GPU memory), and only
 * when those copies have ended does the reply leave, so the initiator (and
 * a notification it sends after the request) never learns of a chunk
 * before its last byte is in place. A READ chunk is gathered into an
 * outgoing buffer and sent back in the reply.
 *
 * Every piece a message names is checked against this agent's own
 * registrations (token, generation, range) before a byte is copied; a
 * chunk that fails the check is answered with the error and copies
 * nothing. A chunk that finds no free buffer waits in a FIFO queue with
 * UCX's copy of the message (held with UCS_INPROGRESS), bounded by the
 * initiators' credits: the target delays, never drops.
 *
 * Replies go on an endpoint of the target's own to the initiator
 * connection's worker (stg_rep_t, staged.h says why), opened when the
 * connection's first chunk of an epoch comes and closed once dead.
 *
 * With a job secret, a chunk's seal is checked first, before its epoch is
 * recorded, an endpoint is looked up, opened or marked dead, or any of it
 * reaches UCX (check_seal); a chunk that fails is dropped with a warning
 * and no reply (there is no trusted address to send one to: its
 * initiator's stall timeout ends the request). Replies are sealed.
 */
#include "backends/staged/staged.h"
#include "util/log.h"
#include "util/time.h"

#include <stdlib.h>
#include <string.h>

/* UCX's error callback of a reply endpoint: the initiator's worker is gone.
 * The endpoint is closed from the next progress (ferry__stg_reps_close). */
static void rep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    stg_rep_t *rep = arg;

    (void)ep;
    ferry__debug("staged: the reply endpoint of an initiator's connection failed: %s",
                 ucs_status_string(status));
    rep->dead = true;
}

/* The reply endpoint of connection id at epoch, if one is open (it may be
 * dead), changing nothing. */
static stg_rep_t *rep_find(stg_ctx_t *ctx, uint64_t id, uint16_t epoch)
{
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->reps) {
        stg_rep_t *rep = ferry__container_of(l, stg_rep_t, link);

        if (rep->id == id && rep->epoch == epoch)
            return rep;
    }
    return NULL;
}

/* The reply endpoint of connection id at epoch, to the worker at addr
 * (alen bytes), opened if need be (dead if it failed since), with mac the
 * seal that vouched for addr (NULL without a secret): NULL when it cannot
 * be. */
static stg_rep_t *rep_get(stg_ctx_t *ctx, uint64_t id, uint16_t epoch, const void *addr,
                          size_t alen, const uint8_t *mac)
{
    ucp_ep_params_t ep = {0};
    ferry__list_t *l, *tmp;
    stg_rep_t *rep;
    ucs_status_t s;

    ferry__list_each(l, tmp, &ctx->reps) {
        rep = ferry__container_of(l, stg_rep_t, link);
        if (rep->id != id)
            continue;
        if (rep->epoch == epoch)
            return rep; /* dead: the caller drops the chunk */
        rep->dead = true; /* an epoch before: that worker is gone */
    }
    if (alen == 0 || (rep = calloc(1, sizeof(*rep))) == NULL)
        return NULL;
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = addr;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = rep_error;
    ep.err_handler.arg = rep;
    s = ucp_ep_create(ctx->ucx->worker, &ep, &rep->ep);
    if (s != UCS_OK) {
        ferry__warn("staged: cannot open an endpoint to an initiator (%zu address "
                    "bytes): %s", alen, ucs_status_string(s));
        free(rep);
        return NULL;
    }
    rep->id = id;
    rep->epoch = epoch;
    if (mac != NULL)
        memcpy(rep->mac, mac, sizeof(rep->mac));
    ferry__list_add(&ctx->reps, &rep->link);
    return rep;
}

void ferry__stg_rep_put(stg_ctx_t *ctx, stg_op_t *op)
{
    stg_rep_t *rep = op->rep;

    (void)ctx;
    op->rep = NULL;
    if (rep != NULL && --rep->refs == 0 && rep->ep == NULL) {
        ferry__list_del(&rep->link);
        free(rep);
    }
}

void ferry__stg_reps_close(stg_ctx_t *ctx, bool all)
{
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->reps) {
        stg_rep_t *rep = ferry__container_of(l, stg_rep_t, link);
        ucp_request_param_t p = {0};
        ucs_status_ptr_t sp;
        ucp_ep_h ep = rep->ep;

        if ((!rep->dead && !all) || ep == NULL)
            continue;
        /* Its replies in flight end (canceled) and drop their references;
         * the last one frees it. Nothing touches rep after the close. */
        rep->dead = true;
        rep->ep = NULL;
        if (rep->refs == 0) {
            ferry__list_del(&rep->link);
            free(rep);
        }
        p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = UCP_EP_CLOSE_FLAG_FORCE;
        sp = ucp_ep_close_nbx(ep, &p);
        if (UCS_PTR_IS_PTR(sp))
            ucp_request_free(sp);
    }
}

/* Sends op's reply (status, and len bytes at data for a READ), unless its
 * initiator's connection is gone. The op ends when it has left, which
 * frees its buffer. */
static void reply(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t status, const void *data,
                  size_t len)
{
    ucs_status_ptr_t sp;

    if (op->rep == NULL || op->rep->dead) {
        ferry__debug("staged: dropped a reply: its initiator's connection is gone");
        ferry__stg_op_free(ctx, op);
        return;
    }
    /* The connection and epoch go back too: the initiator checks them. */
    op->hdr.h = (stg_hdr_t){ctx->stage_mac != NULL ? STG_MAGIC_SEALED : STG_MAGIC,
                            op->type, op->rep->epoch, status, 0, op->cookie,
                            status < 0 ? 0 : op->bytes, op->rep->id};
    if (ctx->stage_mac != NULL) {
        stg_seal_t seal;

        memcpy(seal.key_id, ctx->secret->id, sizeof(seal.key_id));
        if (ferry__stg_reply_mac(ctx, &op->hdr.h, seal.mac) < 0) {
            ferry__warn("staged: a reply was not sealed, nor sent: %s", ferry_last_error());
            ferry__stg_op_free(ctx, op);
            return;
        }
        memcpy(op->hdr.tail, &seal, sizeof(seal));
    }
    sp = ferry__stg_am_send(op, op->rep->ep, STG_AM_REPLY, &op->hdr,
                            sizeof(op->hdr.h) + (ctx->stage_mac != NULL ? sizeof(stg_seal_t) : 0),
                            data, status < 0 ? 0 : len);
    if (UCS_PTR_IS_PTR(sp)) {
        op->req = sp;
        return;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        ferry__debug("staged: a reply was not sent: %s",
                     ucs_status_string(UCS_PTR_STATUS(sp)));
        op->rep->dead = true;
    }
    ferry__stg_op_free(ctx, op);
}

void ferry__stg_target_copied(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st)
{
    ferry__stg_events_drop(ctx, op);
    if (ctx->reply_delay_ns > 0 && !op->delayed) {
        /* Tests: the reply leaves from a later progress, as after a GPU
         * copy; the bounce buffer stays taken until then. */
        op->delayed = true;
        op->dstatus = st;
        op->due = ferry__now_ns() + ctx->reply_delay_ns;
        op->state = STG_DELAYED;
        ctx->ndelayed++;
        return;
    }
    op->state = STG_SENDING;
    if (st < 0) {
        ferry__warn("staged: a chunk's copies failed: %s", ferry_last_error());
        reply(ctx, op, st, NULL, 0);
    } else if (op->type == STG_AM_WRITE) {
        /* Every byte is in place: the buffer is free before the reply. */
        ferry__stg_op_put_slot(op);
        reply(ctx, op, FERRY_OK, NULL, 0);
    } else {
        reply(ctx, op, FERRY_OK, stg_slot(op->pool, op->slot), op->bytes);
    }
}

/* Releases the message's data once it has been copied. */
static void drop_data(stg_ctx_t *ctx, stg_op_t *op)
{
    if (op->data != NULL && op->held)
        ucp_am_data_release(ctx->ucx->worker, op->data);
    op->data = NULL;
}

/* Serves op, which holds a buffer of its pool: checks its pieces, copies. */
static void serve(stg_ctx_t *ctx, stg_op_t *op)
{
    size_t tlen = (size_t)op->npieces * sizeof(stg_piece_t);
    uint8_t *buf = stg_slot(op->pool, op->slot);
    stg_piece_t *table = (stg_piece_t *)(void *)(buf - tlen);
    uint64_t sum = 0;
    ferry_status_t st;

    memcpy(table, op->data, tlen);
    for (uint32_t i = 0; i < op->npieces; i++) {
        const stg_reg_t *r = ferry__stg_reg_find(ctx, &table[i]);

        if (r == NULL || table[i].len == 0) {
            ferry__debug("staged: a chunk names a piece of %llu bytes at 0x%llx "
                         "outside this agent's registrations",
                         (unsigned long long)table[i].len,
                         (unsigned long long)table[i].addr);
            drop_data(ctx, op);
            reply(ctx, op, FERRY_ERR_NOT_REGISTERED, NULL, 0);
            return;
        }
        ctx->smem[i] = table[i].addr;
        ctx->slen[i] = table[i].len;
        ctx->sdev[i] = r->kind == FERRY_MEM_CUDA ? r->device : -1;
        sum += table[i].len;
    }
    if (sum != op->bytes) {
        drop_data(ctx, op);
        reply(ctx, op, FERRY_ERR_PROTOCOL, NULL, 0);
        return;
    }
    if (op->type == STG_AM_WRITE)
        memcpy(buf, (const uint8_t *)op->data + tlen, op->bytes);
    drop_data(ctx, op);
    op->state = STG_SENDING;
    st = ferry__stg_copy(ctx, op, buf, op->type == STG_AM_READ, ctx->smem, ctx->slen,
                         ctx->sdev, op->npieces);
    if (st < 0 || op->state != STG_COPYING)
        ferry__stg_target_copied(ctx, op, st);
}

static void reply_due(stg_ctx_t *ctx, stg_op_t *op, void *arg)
{
    if (op->state != STG_DELAYED || op->due > *(uint64_t *)arg)
        return;
    ctx->ndelayed--;
    ctx->handled++;
    ferry__stg_target_copied(ctx, op, op->dstatus);
}

void ferry__stg_replies_due(stg_ctx_t *ctx)
{
    uint64_t now = ferry__now_ns();

    if (ctx->ndelayed > 0)
        ferry__stg_ops_each(ctx, reply_due, &now);
}

void ferry__stg_serve_queued(stg_ctx_t *ctx)
{
    for (int q = 0; q < 2; q++) {
        stg_pool_t *pool = q == 0 ? &ctx->in : &ctx->out;

        while (!ferry__list_empty(&ctx->waitq[q])) {
            stg_op_t *op = ferry__container_of(ctx->waitq[q].next, stg_op_t, link);
            unsigned slot;

            if (op->rep == NULL || op->rep->dead) {
                /* Its initiator aborted while it waited: no copy, no reply
                 * (ferry__stg_op_free unlinks it). */
                ferry__debug("staged: dropped a queued chunk of an aborted connection");
                ctx->handled++;
                ferry__stg_op_free(ctx, op);
                continue;
            }
            if (ferry__stg_pool_take(ctx, pool, &slot) != FERRY_OK)
                break;
            ferry__list_del(&op->link);
            ferry__list_init(&op->link);
            op->pool = pool;
            op->slot = slot;
            ctx->handled++;
            serve(ctx, op);
        }
    }
}

/* Whether a chunk of connection id at epoch is older than one already seen
 * from it (the connection was aborted and reopened since): records the
 * newest epoch of each recent connection. */
static bool stale_epoch(stg_ctx_t *ctx, uint64_t id, uint16_t epoch)
{
    unsigned i;

    for (i = 0; i < STG_EPOCHS; i++) {
        if (ctx->epochs[i].id != id)
            continue;
        if ((int16_t)(uint16_t)(epoch - ctx->epochs[i].epoch) < 0)
            return true;
        ctx->epochs[i].epoch = epoch;
        return false;
    }
    /* A connection not seen lately takes the oldest entry. */
    i = ctx->next_epoch++ % STG_EPOCHS;
    ctx->epochs[i].id = id;
    ctx->epochs[i].epoch = epoch;
    return false;
}

/*
 * Whether a chunk's seal (NULL: it has none) vouches for its connection,
 * epoch and worker address (alen bytes at addr), for a target with a
 * secret; warns with the reason when not. Changes nothing: it runs before
 * anything of the chunk is used. The first chunk of an epoch has its MAC
 * computed; the later ones repeat the seal that opened the epoch's reply
 * endpoint, which a constant-time comparison checks.
 */
static bool check_seal(stg_ctx_t *ctx, const stg_hdr_t *h, const stg_seal_t *seal,
                       const void *addr, size_t alen)
{
    const char *why = ferry__stg_seal_refusal(ctx, seal);
    const stg_rep_t *rep = why == NULL ? rep_find(ctx, h->conn_id, h->epoch) : NULL;
    uint8_t mac[FERRY__MAC_LEN];

    if (rep != NULL)
        memcpy(mac, rep->mac, sizeof(mac));
    else if (why == NULL && ferry__stg_chunk_mac(ctx, h->conn_id, h->epoch, addr, alen, mac) < 0)
        why = ferry_last_error();
    if (why == NULL && !ferry__ct_equal(seal->mac, mac, sizeof(mac)))
        why = "its seal does not verify";
    if (why != NULL)
        ferry__warn("staged: dropped a chunk (%zu address bytes), without a reply: %s",
                    alen, why);
    return why == NULL;
}

/* A chunk from an initiator (STG_AM_WRITE or STG_AM_READ), in progress of
 * this context's worker. Returns UCS_INPROGRESS when it keeps the data to
 * serve the chunk later, UCS_OK when done with it. */
ucs_status_t ferry__stg_on_request(void *arg, const void *header, size_t header_length,
                                   void *data, size_t length,
                                   const ucp_am_recv_param_t *param)
{
    stg_ctx_t *ctx = arg;
    stg_hdr_t h = {0};
    stg_seal_t seal;
    stg_op_t *op;
    stg_pool_t *pool;
    unsigned slot;
    ferry_status_t st;
    size_t off = sizeof(h);
    bool ok, sealed = false;

    ctx->handled++;
    if (header_length >= sizeof(h)) {
        memcpy(&h, header, sizeof(h));
        sealed = h.magic == STG_MAGIC_SEALED;
        off += sealed ? sizeof(seal) : 0;
    }
    /* Ferry's magic, a seal if it says so, and an address after them. */
    if (header_length <= off || header_length > off + STG_ADDR_MAX ||
        (h.magic != STG_MAGIC && !sealed) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        ferry__warn("staged: dropped a chunk that is not ferry's protocol (%zu header "
                    "bytes, %zu data bytes)", header_length, length);
        return UCS_OK;
    }
    if (sealed)
        memcpy(&seal, (const uint8_t *)header + sizeof(h), sizeof(seal));
    /* Without a secret a seal is skipped: the network is trusted. */
    if (ctx->stage_mac != NULL &&
        !check_seal(ctx, &h, sealed ? &seal : NULL, (const uint8_t *)header + off,
                    header_length - off))
        return UCS_OK;
    ok = (h.type == STG_AM_WRITE || h.type == STG_AM_READ) &&
         h.npieces >= 1 && h.npieces <= STG_MAX_PIECES &&
         length == (size_t)h.npieces * sizeof(stg_piece_t) +
                       (h.type == STG_AM_WRITE ? h.bytes : 0);
    /* A malformed chunk too: its connection and epoch are what the rest
     * trusts (a seal vouches for them), and an older epoch's must not
     * mark the newer one's endpoint dead (rep_get). */
    if (stale_epoch(ctx, h.conn_id, h.epoch)) {
        /* Its connection is gone: nobody waits for the reply. */
        ferry__debug("staged: dropped a chunk of an aborted connection");
        return UCS_OK;
    }
    if (ferry__stg_op_new(ctx, &op) < 0) {
        ferry__warn("staged: no memory to serve a chunk; dropped (its initiator times "
                    "out)");
        return UCS_OK;
    }
    op->target = true;
    op->type = h.type == STG_AM_READ ? STG_AM_READ : STG_AM_WRITE;
    op->cookie = h.cookie;
    op->rep = rep_get(ctx, h.conn_id, h.epoch, (const uint8_t *)header + off,
                      header_length - off, ctx->stage_mac != NULL ? seal.mac : NULL);
    if (op->rep != NULL)
        op->rep->refs++;
    if (op->rep != NULL && op->rep->dead) {
        ferry__debug("staged: dropped a chunk of an aborted connection");
        ferry__stg_op_free(ctx, op);
        return UCS_OK;
    }
    op->npieces = h.npieces;
    op->bytes = h.bytes;
    if (!ok || h.bytes > ctx->chunk) {
        ferry__warn("staged: refused a chunk of %llu bytes in %u pieces (%zu data "
                    "bytes)%s", (unsigned long long)h.bytes, (unsigned)h.npieces, length,
                    ok ? ": larger than this agent's FERRY_STAGE_CHUNK" : ": malformed");
        reply(ctx, op, ok ? FERRY_ERR_UNSUPPORTED : FERRY_ERR_PROTOCOL, NULL, 0);
        return UCS_OK;
    }
    op->data = data;
    op->data_len = length;
    pool = op->type == STG_AM_WRITE ? &ctx->in : &ctx->out;
    st = ferry__list_empty(&ctx->waitq[pool == &ctx->out])
             ? ferry__stg_pool_take(ctx, pool, &slot)
             : FERRY_ERR_BUSY;
    if (st == FERRY_ERR_BUSY) {
        /* Held until a buffer frees (UCP_AM_FLAG_PERSISTENT_DATA). */
        op->held = true;
        op->state = STG_QUEUED;
        ferry__list_add(ctx->waitq[pool == &ctx->out].prev, &op->link);
        return UCS_INPROGRESS;
    }
    if (st < 0) {
        op->data = NULL;
        reply(ctx, op, st, NULL, 0);
        return UCS_OK;
    }
    op->pool = pool;
    op->slot = slot;
    serve(ctx, op); /* copies the data before it returns */
    return UCS_OK;
}
