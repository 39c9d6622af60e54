/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX backend: one UCP context and worker per agent, one endpoint per peer
 * connection (peer error handling, so a dead peer fails its requests instead
 * of hanging them), remote keys unpacked once per remote region, and a batch
 * posted as one ucp_put_nbx/ucp_get_nbx per segment followed by one endpoint
 * flush, whose completion means the bytes are in place remotely (WRITE) or
 * locally (READ).
 *
 * This file holds the context: the UCP context and the agent's worker (with
 * the anchor that keeps it polling for same-host messages), the one fd a
 * waiter sleeps on, the progress and arming of every worker, the
 * ops table, and ferry-info's description of UCX. Connections, liveness and
 * aborts are in conn.c, posts and the mapped-memory fast path in xfer.c,
 * registrations and allocations in mem.c; ucx.h holds what they share.
 */
#include "backends/ucx/ucx.h"
#include "util/config.h"
#include "util/copy.h"
#include "util/log.h"
#include "util/time.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <ucs/debug/log_def.h>
#include <unistd.h>

/* How often endpoints to same-host peers are checked for a dead process. */
#define UCX_LIVENESS_NS 20000000ull

static ferry_status_t ucx_status(ucs_status_t s)
{
    switch (s) {
    case UCS_OK:
        return FERRY_OK;
    case UCS_INPROGRESS:
        return FERRY_IN_PROGRESS;
    case UCS_ERR_NO_MEMORY:
        return FERRY_ERR_NO_MEMORY;
    case UCS_ERR_CANCELED:
        return FERRY_ERR_CANCELED;
    case UCS_ERR_TIMED_OUT:
        return FERRY_ERR_TIMEOUT;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
        return FERRY_ERR_PEER_LOST;
    default:
        return FERRY_ERR_BACKEND;
    }
}

/* Records "ucx: <call>: <ucs text>" and returns the mapped status. */
ferry_status_t ferry__ucx_error(ucs_status_t s, const char *call, const char *peer)
{
    if (peer != NULL)
        return ferry__error(ucx_status(s), "ucx: %s: %s (peer '%s')",
                            call, ucs_status_string(s), peer);
    return ferry__error(ucx_status(s), "ucx: %s: %s", call,
                        ucs_status_string(s));
}

/* How long opening or closing the anchor endpoint may drive the two
 * workers (they are in this process: microseconds, unless the machine is
 * starved). */
#define UCX_ANCHOR_NS 1000000000ull

/* Drives the agent's worker and the anchor until req ends, for a bounded
 * time; returns its status (UCS_INPROGRESS if it did not end). */
static ucs_status_t ucx_anchor_drive(ucx_ctx_t *ctx, ucs_status_ptr_t req)
{
    uint64_t deadline = ferry__now_ns() + UCX_ANCHOR_NS;
    ucs_status_t s;

    if (!UCS_PTR_IS_PTR(req))
        return UCS_PTR_STATUS(req);
    while ((s = ucp_request_check_status(req)) == UCS_INPROGRESS &&
           ferry__now_ns() < deadline) {
        ferry__ucx_worker_progress(ctx, ctx->worker);
        ferry__ucx_worker_progress(ctx, ctx->anchor);
    }
    ucp_request_free(req);
    return s;
}

static void ucx_anchor_close(ucx_ctx_t *ctx)
{
    ucp_request_param_t p = {0};

    if (ctx->anchor_ep != NULL)
        (void)ucx_anchor_drive(ctx, ucp_ep_close_nbx(ctx->anchor_ep, &p));
    ctx->anchor_ep = NULL;
    if (ctx->anchor != NULL)
        ucp_worker_destroy(ctx->anchor);
    ctx->anchor = NULL;
}

/*
 * The anchor: keeps the agent's worker polling the interfaces that
 * same-host peers' messages arrive on.
 *
 * Why. With the wake-up feature that ferry asks for, UCP's adaptive
 * progress (UCX_ADAPTIVE_PROGRESS, on by default) stops polling an
 * interface that no endpoint of its worker uses, arms it, and leaves it
 * to UCX's async thread. The agent's worker serves peers and has no
 * endpoint of its own (connections live on workers of their own, conn.c),
 * so every interface of it is such a one. An interface that receives an
 * RMA or tag message is then switched back to polling, but one that
 * receives a UCP active message is not (UCX 1.13 counts only the former,
 * ucp_worker_iface_check_events_do): every notification went through a
 * sendto() from the sender to the armed interface, a wake-up of the
 * receiver's async thread, and a re-arm (epoll_ctl) by its next progress,
 * several microseconds and a thread switch each (docs/PERFORMANCE.md,
 * "Notifications"). Turning adaptive progress off instead would poll the
 * TCP interfaces too, an epoll_wait() per interface and worker on every
 * progress.
 *
 * How. An endpoint's lanes keep their interfaces polled for as long as it
 * lives (ucp_worker_iface_progress_ep). So the agent's worker gets one
 * endpoint, to a second worker of this process that nothing else uses:
 * UCX reaches it through shared memory, the transports that same-host
 * peers use, so exactly those interfaces stay polled. It costs a worker
 * (a few MiB and file descriptors) per agent; nothing is ever sent on it.
 * Messages from other hosts still take the wake-up path, and with
 * FERRY_UCX_TLS naming no shared-memory transport there is no anchor.
 *
 * A failure here is not the agent's: it only costs latency, and is logged.
 */
static void ucx_anchor_open(ucx_ctx_t *ctx)
{
    ucp_worker_params_t wp = {0};
    ucp_ep_params_t ep = {0};
    ucp_request_param_t p = {0};
    ucp_address_t *addr;
    size_t len;
    ucs_status_t s;

    /* Without shared memory (FERRY_UCX_TLS) no peer's message comes
     * through an interface that it would keep polled. */
    if (ctx->local_err_mode)
        return;
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    s = ucp_worker_create(ctx->context, &wp, &ctx->anchor);
    if (s != UCS_OK) {
        ctx->anchor = NULL;
        goto err;
    }
    s = ucp_worker_get_address(ctx->anchor, &addr, &len);
    if (s != UCS_OK)
        goto err;
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep.address = addr;
    s = ucp_ep_create(ctx->worker, &ep, &ctx->anchor_ep);
    ucp_worker_release_address(ctx->anchor, addr);
    if (s != UCS_OK) {
        ctx->anchor_ep = NULL;
        goto err;
    }
    /* Its wire-up ends here, not in some later progress of the agent. */
    s = ucx_anchor_drive(ctx, ucp_ep_flush_nbx(ctx->anchor_ep, &p));
    if (s == UCS_OK)
        return;
err:
    ferry__info("ucx: the agent's worker will not poll for same-host messages "
                "(%s); notifications will take UCX's wake-up path",
                ucs_status_string(s));
    ucx_anchor_close(ctx);
}

static void ucx_fini(void *vctx)
{
    ucx_ctx_t *ctx = vctx;

    if (ctx == NULL)
        return;
    ferry__ucx_closing_progress(ctx, true);
    ucx_anchor_close(ctx);
    ferry__ucx_allocs_free(ctx);
    free(ctx->watched);
    if (ctx->epfd >= 0)
        close(ctx->epfd);
    if (ctx->address != NULL)
        ucp_worker_release_address(ctx->worker, ctx->address);
    if (ctx->worker != NULL)
        ucp_worker_destroy(ctx->worker);
    if (ctx->context != NULL)
        ucp_cleanup(ctx->context);
    free(ctx);
}

/* One fd for sleeping: the worker's wake-up fd and, later, the pidfds of
 * same-host peers, so that a peer's death wakes a sleeping waiter. */
static ferry_status_t ucx_events_init(ucx_ctx_t *ctx)
{
    struct epoll_event ev = {.events = EPOLLIN};
    ucs_status_t s;
    int efd;

    s = ucp_worker_get_efd(ctx->worker, &efd);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_worker_get_efd", NULL);
    ctx->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ctx->epfd < 0 || epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, efd, &ev) != 0)
        return ferry__error(FERRY_ERR_SYSTEM, "ucx: epoll for the worker's event "
                            "fd: %s", strerror(errno));
    return FERRY_OK;
}

/* Whether a UCX_TLS-style list may select shared-memory transports: an
 * empty list or an exclusion ("^tcp") leaves them in, and so do their names
 * and the aliases that include them. */
static bool ucx_tls_has_shm(const char *tls)
{
    static const char *const shm[] = {"all", "sm", "shm", "posix", "sysv",
                                      "cma", "knem", "xpmem", "mm"};
    char buf[256], *save = NULL;

    if (tls[0] == '\0' || tls[0] == '^' || strlen(tls) >= sizeof(buf))
        return true;
    memcpy(buf, tls, strlen(tls) + 1);
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
        for (size_t i = 0; i < sizeof(shm) / sizeof(shm[0]); i++)
            if (strcmp(t, shm[i]) == 0)
                return true;
    return false;
}

/*
 * A UCP context as ferry uses it (tls, the value of FERRY_UCX_TLS, applied;
 * RMA + AM + wake-up; keepalive off), and the memory types it accepts.
 *
 * Keepalive. UCP's keepalive (UCX_KEEPALIVE_INTERVAL, 20 s in UCX 1.13)
 * checks every endpoint once per interval from inside ucp_worker_progress(),
 * which counts each check as an event, and its timer wakes the worker's
 * event fd. The stall timeout (core/xfer.c) takes a connection's events
 * as its headway, so a round restarted it: against a peer stopped during
 * a WRITE over TCP, where nothing else moves, a 21 s stall timeout fired
 * after 41 s, and any round that could reach the peer put it off. What
 * keepalive finds, ferry finds without it: a dead process on this host
 * through its pid (conn.c, within 20 ms), one on another host through the
 * transport's reset, a vanished host through the TCP socket's own
 * keepalive (UCX_TCP_KEEPIDLE, which stays on) or, for a request in
 * flight, the stall timeout. So ferry turns it off. A UCX_KEEPALIVE_INTERVAL
 * in the environment is the user's choice and wins; its rounds then count
 * as headway again and put the stall timeout off (README).
 */
static ferry_status_t ucx_context(const char *name, const char *tls,
                                  const char *const *cfg, ucp_context_h *context,
                                  uint64_t *memory_types)
{
    ucp_config_t *config;
    ucp_params_t params = {0};
    ucp_context_attr_t attr = {0};
    ucs_status_t s;

    s = ucp_config_read(NULL, NULL, &config);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_config_read", NULL);
    if (tls[0] != '\0' && (s = ucp_config_modify(config, "TLS", tls)) != UCS_OK) {
        ucp_config_release(config);
        return ferry__error(FERRY_ERR_INVALID, "ucx: FERRY_UCX_TLS=%s: %s", tls,
                            ucs_status_string(s));
    }
    /* UCP's keepalive off, unless the user asked for it (see above). */
    if (getenv("UCX_KEEPALIVE_INTERVAL") == NULL &&
        (s = ucp_config_modify(config, "KEEPALIVE_INTERVAL", "inf")) != UCS_OK) {
        ucp_config_release(config);
        return ferry__error(FERRY_ERR_BACKEND, "ucx: UCX_KEEPALIVE_INTERVAL=inf: %s",
                            ucs_status_string(s));
    }
    for (; cfg != NULL && cfg[0] != NULL; cfg += 2) {
        s = ucp_config_modify(config, cfg[0], cfg[1]);
        if (s != UCS_OK) {
            ucp_config_release(config);
            return ferry__error(FERRY_ERR_BACKEND, "ucx: UCX_%s=%s: %s", cfg[0], cfg[1],
                                ucs_status_string(s));
        }
    }
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE;
    /* AM as well as RMA: without it UCX 1.13 selects no zero-copy RMA lane
     * (cma) for registered user memory on the same host. */
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.request_size = sizeof(ucx_req_t);
    if (name != NULL) {
        params.field_mask |= UCP_PARAM_FIELD_NAME;
        params.name = name;
    }
    s = ucp_init(&params, config, context);
    ucp_config_release(config);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_init", NULL);
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    s = ucp_context_query(*context, &attr);
    if (s != UCS_OK) {
        ucp_cleanup(*context);
        return ferry__ucx_error(s, "ucp_context_query", NULL);
    }
    *memory_types = attr.memory_types;
    return FERRY_OK;
}

ferry_status_t ferry__ucx_init_tls(const char *agent_name, const char *tls,
                                   const char *const *cfg, void **ctx_p)
{
    ucx_ctx_t *ctx;
    ucp_worker_params_t wparams = {0};
    ucs_status_t s;
    ferry_status_t st;

    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a context");
    ctx->epfd = -1;
    ferry__list_init(&ctx->conns);
    ferry__list_init(&ctx->allocs);
    ferry__list_init(&ctx->closing);
    ctx->nt_min = ferry__copy_nt_min();

    st = ucx_context(agent_name, tls, cfg, &ctx->context, &ctx->memory_types);
    if (st != FERRY_OK)
        goto err_free;
    /* UCX reads UCX_TLS itself when FERRY_UCX_TLS does not override it. */
    ctx->local_err_mode = !ucx_tls_has_shm(tls[0] != '\0' || getenv("UCX_TLS") == NULL
                                               ? tls : getenv("UCX_TLS"));
    ctx->retire_tcp = true;
    FERRY_CHECK_GOTO(ferry__ucx_mds_init(ctx), st, err_fini);

    /* The core serialises every call into this backend under the agent's
     * lock, so the worker needs no locking of its own. It only serves
     * peers: the requests it holds at the end are UCX's own replies to
     * connections a peer aborted (see conn.c), which UCX
     * would otherwise report as leaks one by one. */
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE |
                         UCP_WORKER_PARAM_FIELD_FLAGS;
    wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
    wparams.flags = UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK;
    s = ucp_worker_create(ctx->context, &wparams, &ctx->worker);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_worker_create", NULL);
        goto err_fini;
    }
    s = ucp_worker_get_address(ctx->worker, &ctx->address, &ctx->address_len);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_worker_get_address", NULL);
        goto err_fini;
    }
    FERRY_CHECK_GOTO(ucx_events_init(ctx), st, err_fini);
    ucx_anchor_open(ctx);
    *ctx_p = ctx;
    return FERRY_OK;

err_fini:
    ucx_fini(ctx);
    return st;
err_free:
    free(ctx);
    return st;
}

static ferry_status_t ucx_init(const char *agent_name, const ferry__secret_t *secret,
                               void **ctx_p)
{
    (void)secret; /* UCX's own messages carry nothing a peer could misuse */
    return ferry__ucx_init_tls(agent_name, ferry__config_get("FERRY_UCX_TLS"), NULL, ctx_p);
}

ferry_status_t ferry__ucx_am_listen(ucx_ctx_t *ctx, const ucp_am_handler_param_t *hp)
{
    ucs_status_t s;

    if (ctx->nam == UCX_MAX_AM)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: more than %d message "
                            "handlers", UCX_MAX_AM);
    s = ucp_worker_set_am_recv_handler(ctx->worker, hp);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_worker_set_am_recv_handler", NULL);
    ctx->am[ctx->nam++] = *hp;
    return FERRY_OK;
}

static bool ucx_supports_kind(void *vctx, ferry_mem_kind_t kind)
{
    ucx_ctx_t *ctx = vctx;

    switch (kind) {
    case FERRY_MEM_HOST:
        return true;
    case FERRY_MEM_CUDA:
        /* Only a UCX built with CUDA support may be handed device memory:
         * one without it maps device pointers as host memory and fails
         * later, far from the cause. */
        return (ctx->memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    default:
        return false;
    }
}

static ferry_status_t ucx_pack_address(void *vctx, ferry__wbuf_t *out)
{
    ucx_ctx_t *ctx = vctx;

    ferry__wbuf_bytes(out, ctx->address, ctx->address_len);
    return FERRY_OK;
}

unsigned ferry__ucx_worker_progress(ucx_ctx_t *ctx, ucp_worker_h worker)
{
    ucp_worker_h outer = ctx->current;
    unsigned n;

    ctx->current = worker;
    n = ucp_worker_progress(worker);
    ctx->current = outer;
    return n;
}

/* Every worker, every time: an idle one costs a few nanoseconds, and one
 * left unprogressed could keep its event fd readable for the sleepers. */
static unsigned ucx_progress(void *vctx)
{
    ucx_ctx_t *ctx = vctx;
    unsigned n, shared;
    ferry__list_t *l, *tmp;

    /* Callbacks may send messages (msg.c), which must not progress a
     * worker from inside its own progress. */
    ctx->progressing = true;
    n = ferry__ucx_worker_progress(ctx, ctx->worker);
    shared = n;

    ferry__list_each(l, tmp, &ctx->conns) {
        ucx_conn_t *c = ferry__container_of(l, ucx_conn_t, link);

        if (!c->own_worker) {
            c->events += shared;
        } else if (c->worker != NULL) {
            unsigned k = ferry__ucx_worker_progress(ctx, c->worker);

            c->events += k;
            n += k;
        }
    }
    ferry__ucx_closing_progress(ctx, false);
    ctx->progressing = false;
    if (ctx->nwatched > 0) {
        uint64_t now = ferry__now_ns();

        if (now >= ctx->next_check_ns) {
            ctx->next_check_ns = now + UCX_LIVENESS_NS;
            ferry__ucx_check_liveness(ctx);
        }
    }
    return n;
}

static int ucx_event_fd(void *vctx)
{
    return ((ucx_ctx_t *)vctx)->epfd;
}

static ferry_status_t ucx_arm_one(ucp_worker_h worker)
{
    ucs_status_t s = ucp_worker_arm(worker);

    if (s == UCS_OK)
        return FERRY_OK;
    if (s == UCS_ERR_BUSY)
        return FERRY_ERR_BUSY;
    return ferry__ucx_error(s, "ucp_worker_arm", NULL);
}

static ferry_status_t ucx_arm(void *vctx)
{
    ucx_ctx_t *ctx = vctx;
    ferry__list_t *l, *tmp;

    FERRY_CHECK(ucx_arm_one(ctx->worker));
    ferry__list_each(l, tmp, &ctx->conns) {
        ucx_conn_t *c = ferry__container_of(l, ucx_conn_t, link);

        if (c->own_worker && c->worker != NULL)
            FERRY_CHECK(ucx_arm_one(c->worker));
    }
    /* A closing worker is out of the epoll set: only progress ends its
     * close (conn.c), so a sleeper must come back for it. */
    return ferry__list_empty(&ctx->closing) ? FERRY_OK : FERRY_IN_PROGRESS;
}

const ferry__backend_ops_t ferry__ucx_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "ucx",
    .id = FERRY__BK_UCX,
    .flags = FERRY__BK_MESSAGES,
    .init = ucx_init,
    .fini = ucx_fini,
    .supports_kind = ucx_supports_kind,
    .pack_address = ucx_pack_address,
    .mem_register = ferry__ucx_mem_register,
    .mem_pack = ferry__ucx_mem_pack,
    .mem_deregister = ferry__ucx_mem_deregister,
    .conn_open = ferry__ucx_conn_open,
    .conn_close = ferry__ucx_conn_close,
    .rkey_open = ferry__ucx_rkey_open,
    .rkey_close = ferry__ucx_rkey_close,
    .prepare = ferry__ucx_prepare,
    .unprepare = ferry__bk_unprepare_nothing,
    .post = ferry__ucx_post,
    .run = ferry__ucx_run,
    .progress = ucx_progress,
    .event_fd = ucx_event_fd,
    .arm = ucx_arm,
    .conn_abort = ferry__ucx_conn_abort,
    .conn_events = ferry__ucx_conn_events,
    .post_stream = ferry__bk_post_stream_unsupported, /* the core's flags order it */
    .mem_alloc = ferry__ucx_mem_alloc,
    .mem_free = ferry__ucx_mem_free,
    .msg_send = ferry__ucx_msg_send,
    .msg_listen = ferry__ucx_msg_listen,
};

/* ferry-info: UCX's version, the transports a default context selects and
 * the memory types it accepts. */
void ferry__ucx_describe(FILE *out)
{
    ucp_context_h context;
    uint64_t types;
    char *text = NULL, *line, *save = NULL;
    size_t len = 0;
    FILE *mem;

    fprintf(out, "ucx:\n  version: %s\n", ucp_get_version_string());
    if (ucx_context(NULL, ferry__config_get("FERRY_UCX_TLS"), NULL, &context, &types) !=
        FERRY_OK) {
        fprintf(out, "  unusable: %s\n", ferry_last_error());
        return;
    }
    fprintf(out, "  memory types:");
    for (int t = 0; t < UCS_MEMORY_TYPE_LAST; t++)
        if (types & UCS_BIT(t))
            fprintf(out, " %s", ucs_memory_type_names[t]);
    fprintf(out, "\n  accepts GPU memory: %s\n",
            types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)
                ? "yes"
                : "no (this UCX has no CUDA support: GPU memory goes through "
                  "CUDA IPC on one host, and to other hosts through the staged "
                  "backend's host bounce buffers)");
    /* The transports, from UCX's own resource listing ("... -- tl/dev"). */
    mem = open_memstream(&text, &len);
    if (mem != NULL) {
        ucp_context_print_info(context, mem);
        fclose(mem);
        fprintf(out, "  transports:");
        for (line = strtok_r(text, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            const char *tl = strstr(line, "-- ");

            if (strstr(line, "resource") != NULL && tl != NULL)
                fprintf(out, " %s", tl + 3);
        }
        fprintf(out, "\n");
        free(text);
    }
    ucp_cleanup(context);
}
