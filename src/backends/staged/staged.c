/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Staged backend: GPU memory to and from a peer on another host when UCX
 * takes no GPU memory (Debian's UCX, most container images), by staging
 * through host bounce buffers in a pipeline: a WRITE chunk is copied from
 * GPU memory into a bounce buffer, sent as a UCX active message into the
 * target, received into one of the target's bounce buffers and copied into
 * its GPU memory, while the chunks before and after it are in the other
 * stages; a READ runs the same stages the other way. staged.h describes
 * the protocol and its flow control.
 *
 * This file holds the context (a UCX context and worker of its own, made
 * by the UCX backend's code with FERRY_STAGE_TLS's transports, so that
 * connections, peer liveness and aborts are the UCX backend's), the
 * registrations and keys (a key names a registration of the target by
 * token and generation: the target checks every piece a peer names against
 * its own registrations before it copies), the MACs of the seals (with the
 * job secret's stage key), connections, progress, aborts and the ops
 * table.
 *
 * The target's part needs the target's agent driven (its progress thread,
 * ferry_agent_progress() or a wait), unlike the RMA of the UCX backend.
 */
#include "backends/staged/staged.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static void stg_fini(void *vctx);

/* Sizes from the configuration table, checked. */
static ferry_status_t stg_config(stg_ctx_t *ctx)
{
    uint64_t chunk = ferry__config_get_size("FERRY_STAGE_CHUNK");
    uint64_t n = ferry__config_get_size("FERRY_STAGE_CHUNKS");

    if (chunk < 4096 || chunk > (1ull << 30))
        return ferry__error(FERRY_ERR_INVALID, "staged: FERRY_STAGE_CHUNK is %llu "
                            "bytes (4k to 1g)", (unsigned long long)chunk);
    if (n < 1 || n > 1024)
        return ferry__error(FERRY_ERR_INVALID, "staged: FERRY_STAGE_CHUNKS is %llu "
                            "(1 to 1024)", (unsigned long long)n);
    ctx->chunk = chunk;
    ctx->credits = (unsigned)n;
    ctx->reply_delay_ns = ferry__config_get_size("FERRY_STAGE_TEST_REPLY_DELAY_MS") * 1000000ull;
    return FERRY_OK;
}

static ferry_status_t stg_init(const char *agent_name, const ferry__secret_t *secret,
                               void **ctx_p)
{
    static const struct {
        unsigned id;
        ucp_am_recv_callback_t cb;
    } handlers[] = {{STG_AM_WRITE, ferry__stg_on_request},
                    {STG_AM_READ, ferry__stg_on_request},
                    {STG_AM_REPLY, ferry__stg_on_reply}};
    const char *tls = ferry__config_get("FERRY_STAGE_TLS");
    stg_ctx_t *ctx = calloc(1, sizeof(*ctx));
    void *ucx;
    ferry_status_t st;

    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory for a context");
    ctx->pin = true;
    ctx->secret = secret;
    ferry__list_init(&ctx->runs);
    ferry__list_init(&ctx->conns);
    ferry__list_init(&ctx->reps);
    ferry__list_init(&ctx->waitq[0]);
    ferry__list_init(&ctx->waitq[1]);
    st = stg_config(ctx);
    if (st == FERRY_OK && secret->set)
        st = ferry__mac_key_new(secret->stage_key, &ctx->stage_mac);
    if (st < 0) {
        free(ctx);
        return st;
    }
    if (strcmp(ferry__config_get("FERRY_STAGE"), "off") == 0) {
        /* No UCX context: the backend takes no memory and advertises none. */
        *ctx_p = ctx;
        return FERRY_OK;
    }
    if (tls[0] == '\0')
        tls = ferry__config_get("FERRY_UCX_TLS");
    /* Messages copied into the transport, never sent from our buffers in
     * place: UCX 1.13's TCP transport completes an in-place (zero-copy)
     * send twice when its peer dies mid-message and aborts the process
     * (an assertion in uct_invoke_completion). */
    static const char *const cfg[] = {"ZCOPY_THRESH", "inf", NULL};

    st = ferry__ucx_init_tls(agent_name, tls, cfg, &ucx);
    if (st < 0) {
        stg_fini(ctx);
        return st;
    }
    ctx->ucx = ucx;
    /*
     * UCX's peer error handling on every connection, same host included
     * (where it leaves shared memory out: TCP carries the chunks). A target
     * learns of an initiator that aborted a connection only so: its replies
     * to the initiator's destroyed worker then fail and free their bounce
     * buffers, where over shared memory they would wait forever and hold
     * them. Staging serves peers on other hosts, which have it anyway.
     */
    ctx->ucx->local_err_mode = true;
    /*
     * For the same reason an abort destroys the connection's worker even
     * over TCP, where the UCX backend keeps it retired (conn.c): a kept
     * worker would swallow the replies, and the target's buffers would
     * never come back. Its reason does not hold here: a staging target
     * receives only active messages, never the emulated puts whose
     * completions UCX 1.13 cannot send to a closed endpoint.
     */
    ctx->ucx->retire_tcp = false;
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        ucp_am_handler_param_t hp = {0};

        hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                        UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
        hp.id = handlers[i].id;
        /* Whole messages, kept for as long as a chunk waits for a buffer. */
        hp.flags = UCP_AM_FLAG_WHOLE_MSG | UCP_AM_FLAG_PERSISTENT_DATA;
        hp.cb = handlers[i].cb;
        hp.arg = ctx;
        st = ferry__ucx_am_listen(ctx->ucx, &hp);
        if (st < 0) {
            stg_fini(ctx);
            return st;
        }
    }
    *ctx_p = ctx;
    return FERRY_OK;
}

static void stg_drop_held(stg_ctx_t *ctx, stg_op_t *op, void *arg)
{
    (void)arg;
    if (op->data != NULL && op->held) {
        ucp_am_data_release(ctx->ucx->worker, op->data);
        op->data = NULL;
    }
    ferry__stg_rep_put(ctx, op);
}

static void stg_fini(void *vctx)
{
    stg_ctx_t *ctx = vctx;
    const ferry__cuda_t *cu = ferry__cuda_loaded();

    if (ctx == NULL)
        return;
    /* UCX's messages go back to its worker before the worker goes; the
     * copies end before their buffers do. */
    ferry__stg_ops_each(ctx, stg_drop_held, NULL);
    ferry__stg_copies_sync(ctx);
    if (ctx->ucx != NULL)
        ferry__stg_reps_close(ctx, true);
    if (ctx->ucx != NULL)
        ferry__ucx_ops.fini(ctx->ucx);
    for (int d = 0; d < STG_MAX_DEVS && cu != NULL; d++)
        if (ctx->streams[d] != NULL && ferry__cuda_push(d) == FERRY_OK) {
            cu->cuStreamDestroy(ctx->streams[d]);
            ferry__cuda_pop();
        }
    ferry__stg_pool_free(&ctx->out);
    ferry__stg_pool_free(&ctx->in);
    for (uint32_t i = 0; i < ctx->nregs; i++)
        free(ctx->regs[i]);
    free(ctx->regs);
    ferry__stg_ops_free_all(ctx);
    ferry__mac_key_free(ctx->stage_mac);
    free(ctx);
}

ferry_status_t ferry__stg_chunk_mac(stg_ctx_t *ctx, uint64_t conn_id, uint16_t epoch,
                                    const void *addr, size_t alen,
                                    uint8_t mac[FERRY__MAC_LEN])
{
    /* The label keeps a chunk's MAC from ever passing as a reply's. */
    const ferry__mac_part_t parts[] = {{"chunk", 5},
                                       {&conn_id, sizeof(conn_id)},
                                       {&epoch, sizeof(epoch)},
                                       {addr, alen}};

    return ferry__mac_with(ctx->stage_mac, parts, sizeof(parts) / sizeof(parts[0]), mac);
}

ferry_status_t ferry__stg_reply_mac(stg_ctx_t *ctx, const stg_hdr_t *h,
                                    uint8_t mac[FERRY__MAC_LEN])
{
    const ferry__mac_part_t parts[] = {{"reply", 5}, {h, sizeof(*h)}};

    return ferry__mac_with(ctx->stage_mac, parts, sizeof(parts) / sizeof(parts[0]), mac);
}

const char *ferry__stg_seal_refusal(const stg_ctx_t *ctx, const stg_seal_t *seal)
{
    if (seal == NULL)
        return "it is not sealed, and this agent has a job secret (FERRY_JOB_SECRET): "
               "is the peer's unset?";
    if (!ferry__ct_equal(seal->key_id, ctx->secret->id, sizeof(seal->key_id)))
        return "it is sealed with another secret than this agent's (another job's?)";
    return NULL;
}

static bool stg_supports_kind(void *vctx, ferry_mem_kind_t kind)
{
    /* GPU memory needs the CUDA driver, which registering it has loaded. */
    return ((stg_ctx_t *)vctx)->ucx != NULL &&
           (kind == FERRY_MEM_HOST || kind == FERRY_MEM_CUDA);
}

/* Turned off (FERRY_STAGE=off), the address is one zero byte (metadata
 * wants one; a UCX worker address is never that short). */
static ferry_status_t stg_pack_address(void *vctx, ferry__wbuf_t *out)
{
    stg_ctx_t *ctx = vctx;

    if (ctx->ucx == NULL) {
        ferry__wbuf_u8(out, 0);
        return FERRY_OK;
    }
    return ferry__ucx_ops.pack_address(ctx->ucx, out);
}

/* ------------------------------------------------------------------------ */
/* Registrations and keys                                                   */
/* ------------------------------------------------------------------------ */

static ferry_status_t stg_mem_register(void *vctx, const ferry_desc_t *desc, void **lreg_p)
{
    stg_ctx_t *ctx = vctx;
    stg_reg_t *reg = calloc(1, sizeof(*reg));
    uint32_t t;

    if (reg == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
    for (t = 0; t < ctx->nregs && ctx->regs[t] != NULL; t++)
        ;
    if (t == ctx->nregs) {
        if (ctx->nregs == ctx->capregs) {
            uint32_t cap = ctx->capregs ? ctx->capregs * 2 : 64;
            stg_reg_t **regs = realloc(ctx->regs, cap * sizeof(*regs));

            if (regs == NULL) {
                free(reg);
                return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
            }
            ctx->regs = regs;
            ctx->capregs = cap;
        }
        ctx->nregs++;
    }
    reg->token = t;
    reg->gen = ++ctx->next_gen;
    reg->kind = desc->kind;
    reg->device = desc->device;
    reg->addr = desc->addr;
    reg->len = desc->len;
    ctx->regs[t] = reg;
    *lreg_p = reg;
    return FERRY_OK;
}

/* The key: token and generation, u32 each, little-endian. */
static ferry_status_t stg_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out)
{
    const stg_reg_t *reg = lreg;

    (void)vctx;
    ferry__wbuf_u32(out, reg->token);
    ferry__wbuf_u32(out, reg->gen);
    return FERRY_OK;
}

static void stg_mem_deregister(void *vctx, void *lreg)
{
    stg_ctx_t *ctx = vctx;
    stg_reg_t *reg = lreg;

    /* A target's copy into or out of it may still run on a stream. */
    if (ctx->ncopying > 0)
        ferry__stg_copies_sync(ctx);
    ctx->regs[reg->token] = NULL;
    free(reg);
}

const stg_reg_t *ferry__stg_reg_find(const stg_ctx_t *ctx, const stg_piece_t *p)
{
    const stg_reg_t *r;

    if (p->token >= ctx->nregs || (r = ctx->regs[p->token]) == NULL || r->gen != p->gen)
        return NULL;
    if (p->addr < r->addr || p->len > r->len || p->addr - r->addr > r->len - p->len)
        return NULL;
    return r;
}

static ferry_status_t stg_rkey_open(void *vctx, void *vconn,
                                    const ferry__bk_rregion_t *region, const uint8_t *data,
                                    size_t len, void **rkey_p)
{
    stg_rkey_t *k;

    (void)vctx;
    (void)vconn;
    if (len != 8)
        return ferry__error(FERRY_ERR_PROTOCOL, "staged: the key of region %u is %zu "
                            "bytes (8 expected)", region->id, len);
    k = malloc(sizeof(*k));
    if (k == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
    k->token = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
               (uint32_t)data[3] << 24;
    k->gen = (uint32_t)data[4] | (uint32_t)data[5] << 8 | (uint32_t)data[6] << 16 |
             (uint32_t)data[7] << 24;
    *rkey_p = k;
    return FERRY_OK;
}

static void stg_rkey_close(void *vctx, void *rkey)
{
    (void)vctx;
    free(rkey);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static ferry_status_t stg_conn_open(void *vctx, const uint8_t *addr, size_t len,
                                    const ferry__bk_peer_t *peer, void **conn_p)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = calloc(1, sizeof(*conn));
    void *uc;
    ferry_status_t st;

    if (ctx->ucx == NULL || len <= 1) {
        free(conn);
        return ferry__error(FERRY_ERR_UNSUPPORTED, "staged: staging is turned off "
                            "(FERRY_STAGE=off) %s", ctx->ucx == NULL ? "here" :
                            "on the peer");
    }
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
    /* Its target would drop every unsealed chunk unread, and the requests
     * would end only by the stall timeout: say so now. (An agent with a
     * secret loads no unsealed blob, so the other way round cannot come.) */
    if (peer->sealed && ctx->stage_mac == NULL) {
        free(conn);
        return ferry__error(FERRY_ERR_PROTOCOL, "staged: peer '%s' has a job secret (its "
                            "blob is sealed) and this agent has none: it would drop every "
                            "staging chunk sent from here; give this process the job's "
                            "FERRY_JOB_SECRET", peer->name);
    }
    st = ferry__ucx_ops.conn_open(ctx->ucx, addr, len, peer, &uc);
    if (st < 0) {
        free(conn);
        return st;
    }
    conn->uc = uc;
    if (getrandom(&conn->id, sizeof(conn->id), 0) != (ssize_t)sizeof(conn->id))
        conn->id = (uint64_t)(uintptr_t)conn ^ (uint64_t)getpid() << 32 ^ ferry__now_ns();
    ferry__list_add(&ctx->conns, &conn->link);
    *conn_p = conn;
    return FERRY_OK;
}

static void stg_conn_close(void *vctx, void *vconn)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = vconn;

    ferry__ucx_ops.conn_close(ctx->ucx, conn->uc);
    ferry__list_del(&conn->link);
    free(conn->addr);
    free(conn);
}

static ferry_status_t stg_prepare(void *vctx, void *vconn, const ferry__bk_seg_t *segs,
                                  size_t n, void **plan_p)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = vconn;
    stg_plan_t *plan;

    FERRY_CHECK(ferry__ucx_check_alive(ctx->ucx, conn->uc));
    if (conn->uc->worker == NULL) {
        FERRY_CHECK(ferry__ucx_reconnect(ctx->ucx, conn->uc));
        conn->epoch++;
    }
    FERRY_CHECK(ferry__stg_plan(segs, n, ctx->chunk, &plan));
    ferry__debug("staged: %zu segments to peer '%s': %zu chunks of at most %llu "
                 "bytes, %llu bytes in all", n, conn->uc->peer_name, plan->nchunks,
                 (unsigned long long)ctx->chunk, (unsigned long long)plan->total);
    *plan_p = plan;
    return FERRY_OK;
}

static void stg_unprepare(void *vctx, void *plan)
{
    (void)vctx;
    ferry__stg_plan_free(plan);
}

/* Ends what is in flight on a connection whose peer is gone: its worker is
 * destroyed first (nothing of UCX touches the buffers any more), then its
 * runs end with PEER_LOST. */
static void stg_conn_failed(stg_ctx_t *ctx, stg_conn_t *conn)
{
    ferry_status_t why = ferry__ucx_error(conn->uc->failed, "endpoint", conn->uc->peer_name);
    char text[320];

    snprintf(text, sizeof(text), "staged: %s", ferry_last_error());
    ferry__stg_conn_end(ctx, conn, why);
    (void)ferry__error(why, "%s", text);
}

static ferry_status_t stg_conn_abort(void *vctx, void *vconn, ferry_status_t why)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = vconn;

    /* Our own agent on the other side (a loopback peer): UCX keeps its
     * messages, and may still read our buffers, until they have gone, so
     * its runs end with why once their chunks have, as the UCX backend's
     * do (ferry/xfer.h). */
    if (!conn->uc->own_worker) {
        ferry__stg_conn_fail(ctx, conn, why);
        return conn->runs > 0 ? FERRY_IN_PROGRESS : FERRY_OK;
    }
    ferry__stg_conn_end(ctx, conn, why);
    return FERRY_OK;
}

/*
 * Whether conn has nothing in flight and its oldest run waits for a
 * buffer of a pool that initiator chunks hold: chunks of other
 * connections, which end by their own headway or by the stall check of
 * their connection, and free the buffer then.
 */
static bool stg_waits_for_pool(const stg_ctx_t *ctx, const stg_conn_t *conn)
{
    if (conn->inflight > 0 || conn->runs == 0)
        return false;
    for (const ferry__list_t *l = ctx->runs.next; l != &ctx->runs; l = l->next) {
        const stg_run_t *run = ferry__container_of(l, stg_run_t, link);
        const stg_pool_t *pool = run->op == FERRY_OP_WRITE ? &ctx->out : &ctx->in;

        if (run->conn == conn && run->status == FERRY_OK)
            return pool->nfree == 0 && pool->init_held > 0;
    }
    return false;
}

/*
 * The stall check's mark. Waiting for a bounce buffer that other
 * connections' chunks hold is not a stall: the mark moves at every check
 * while it lasts, so a stopped peer that holds the whole pool meets the
 * stall timeout alone, and its end frees the buffers for the others. A
 * wait for buffers that a target's chunks hold (serving a stopped
 * initiator, say) counts as a stall as before: nothing else would end it.
 */
static uint64_t stg_conn_events(void *vctx, void *vconn)
{
    stg_ctx_t *ctx = vctx;
    stg_conn_t *conn = vconn;

    if (stg_waits_for_pool(ctx, conn))
        conn->waits++;
    return ferry__ucx_ops.conn_events(ctx->ucx, conn->uc) + conn->events + conn->waits;
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                 */
/* ------------------------------------------------------------------------ */

static void stg_poll_copy(stg_ctx_t *ctx, stg_op_t *op, void *arg)
{
    ferry_status_t st;

    (void)arg;
    if (op->state != STG_COPYING || op->nev == 0)
        return;
    st = ferry__stg_copies_done(ctx, op);
    if (st == FERRY_IN_PROGRESS)
        return;
    ctx->handled++;
    if (op->target)
        ferry__stg_target_copied(ctx, op, st);
    else
        ferry__stg_init_copied(ctx, op, st);
}

static unsigned stg_progress(void *vctx)
{
    stg_ctx_t *ctx = vctx;
    ferry__list_t *l, *tmp;
    unsigned n;

    if (ctx->ucx == NULL)
        return 0;
    ctx->handled = 0;
    n = ferry__ucx_ops.progress(ctx->ucx);
    if (ctx->ncopying > 0)
        ferry__stg_ops_each(ctx, stg_poll_copy, NULL);
    ferry__list_each(l, tmp, &ctx->conns) {
        stg_conn_t *conn = ferry__container_of(l, stg_conn_t, link);

        if (conn->runs > 0 && conn->uc->failed != UCS_OK)
            stg_conn_failed(ctx, conn);
    }
    ferry__stg_replies_due(ctx);
    ferry__stg_reps_close(ctx, false);
    ferry__stg_serve_queued(ctx);
    ferry__stg_pump(ctx);
    ferry__stg_runs_finish(ctx, NULL);
    return n + ctx->handled;
}

static int stg_event_fd(void *vctx)
{
    stg_ctx_t *ctx = vctx;

    return ctx->ucx != NULL ? ferry__ucx_ops.event_fd(ctx->ucx) : -1;
}

static ferry_status_t stg_arm(void *vctx)
{
    stg_ctx_t *ctx = vctx;

    /* Copies on CUDA streams signal no fd: poll them. */
    if (ctx->ncopying > 0 || ctx->ndelayed > 0)
        return FERRY_ERR_BUSY;
    return ctx->ucx != NULL ? ferry__ucx_ops.arm(ctx->ucx) : FERRY_OK;
}

static ferry_status_t stg_mem_alloc(void *vctx, size_t len, ferry_mem_kind_t kind,
                                    void **addr_p)
{
    (void)vctx;
    (void)len;
    (void)kind;
    (void)addr_p;
    /* No text: the core keeps the reason of the backend before, which
     * could allocate this kind (CUDA IPC's "no CUDA driver"). */
    return FERRY_ERR_UNSUPPORTED;
}

static ferry_status_t stg_mem_free(void *vctx, void *addr)
{
    (void)vctx;
    return ferry__error(FERRY_ERR_NOT_FOUND, "staged: %p starts no allocation", addr);
}

void ferry__staged_describe(FILE *out)
{
    stg_ctx_t probe = {0};

    if (strcmp(ferry__config_get("FERRY_STAGE"), "off") == 0) {
        fprintf(out, "staging:\n  turned off (FERRY_STAGE=off)\n");
        return;
    }
    fprintf(out, "staging:\n  serves: GPU memory of a peer on another host when UCX "
            "takes no GPU memory, and requests that ask for FERRY_BACKEND_STAGED; "
            "the target's agent must be driven (progress thread or "
            "ferry_agent_progress)\n");
    if (stg_config(&probe) < 0)
        fprintf(out, "  %s\n", ferry_last_error());
    else
        fprintf(out, "  bounce buffers: %u of %llu bytes in each of two pools "
                "(FERRY_STAGE_CHUNKS, FERRY_STAGE_CHUNK), allocated on first use; "
                "%u chunks in flight per peer\n", probe.credits,
                (unsigned long long)probe.chunk, probe.credits);
}

const ferry__backend_ops_t ferry__staged_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "staged",
    .id = FERRY__BK_STAGED,
    .flags = 0,
    .init = stg_init,
    .fini = stg_fini,
    .supports_kind = stg_supports_kind,
    .pack_address = stg_pack_address,
    .mem_register = stg_mem_register,
    .mem_pack = stg_mem_pack,
    .mem_deregister = stg_mem_deregister,
    .conn_open = stg_conn_open,
    .conn_close = stg_conn_close,
    .rkey_open = stg_rkey_open,
    .rkey_close = stg_rkey_close,
    .prepare = stg_prepare,
    .unprepare = stg_unprepare,
    .post = ferry__stg_post,
    .run = ferry__bk_run_unsupported,
    .progress = stg_progress,
    .event_fd = stg_event_fd,
    .arm = stg_arm,
    .conn_abort = stg_conn_abort,
    .conn_events = stg_conn_events,
    .post_stream = ferry__bk_post_stream_unsupported, /* the core's flags order it */
    .mem_alloc = stg_mem_alloc,
    .mem_free = stg_mem_free,
    .msg_send = ferry__bk_msg_send_unsupported,
    .msg_listen = ferry__bk_msg_listen_nothing,
};
