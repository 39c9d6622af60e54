/*
 * UCX backend: one UCP context and worker per agent, one endpoint per peer
 * connection (peer error handling, so a dead peer fails its requests instead
 * of hanging them), remote keys unpacked once per remote region, and a batch
 * posted as one ucp_put_nbx/ucp_get_nbx per segment followed by one endpoint
 * flush, whose completion means the bytes are in place remotely (WRITE) or
 * locally (READ).
 *
 * Liveness. UCX's shared-memory transports (posix, sysv, cma) cannot serve
 * an endpoint in peer error handling mode: asking for it leaves only TCP,
 * about a hundred times slower. So an endpoint to a peer on the same host
 * (same boot id and PID namespace) is created without UCX error handling and
 * watched through a pidfd instead: when the peer process ends, the endpoint
 * is marked failed and force-closed, which completes whatever was in flight
 * with PEER_LOST. Peers on other hosts use UCX's peer error handling.
 *
 * Posting allocates nothing: the per-operation requests are released at once
 * (their errors surface through the flush), and the flush's own completion
 * state lives in the space UCX reserves in each request for its user
 * (request_size).
 *
 * Allocation. UCX 1.13 moves bytes between processes of one host with a
 * direct copy only into memory it allocated itself (ucp_mem_map with
 * UCP_MEM_MAP_ALLOCATE: a sysv or posix shared-memory segment, which a peer
 * maps when it unpacks the key); for any other memory its put and get are
 * emulated with active messages, one copy on each side, and need the
 * target's CPU. mem_alloc hands out such segments, as ucx_perftest uses, and
 * a registration inside one reuses the segment's memory handle.
 *
 * Lanes (FERRY_UCX_LANES > 1). A copy into shared memory runs on the
 * posting thread, and one thread's copy is limited by what one core can
 * move. Segments of FERRY_UCX_STRIPE_MIN bytes or more are then split into
 * one piece per lane: the posting thread moves the first on the agent's
 * worker, and each other lane, a thread with a worker and an endpoint per
 * connection of its own, moves its piece in parallel and flushes it. The
 * lane threads sleep on a condition variable when idle. A striped batch
 * completes in progress() once the main flush and every lane are done,
 * which lanes signal through an eventfd in the agent's event set.
 *
 * Mapped regions. A key to shared memory that UCX allocated (sysv, posix)
 * maps the peer's segment into this process when it is unpacked, and
 * ucp_rkey_ptr() tells where. A segment into such a region is then moved
 * with memcpy on the posting thread, which is what UCX's put and get do
 * for it too, without the per-operation request handling and the flush
 * of every lane of the endpoint (0.1 us a post; a 64 KiB copy takes 1.3).
 * The segment is attached whole, so the offset from remote to local
 * address found once holds for the key's whole region.
 */
#include "backends/backend.h"
#include "util/config.h"
#include "util/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "util/time.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* How often endpoints to same-host peers are checked for a dead process. */
#define FERRY__UCX_LIVENESS_NS 20000000ull

struct ferry__ucx_conn;
struct ferry__ucx_lane;

/* Lanes besides the agent's worker, striped batches in flight at once, and
 * jobs queued per lane: fixed, so that posting allocates nothing. */
#define FERRY__UCX_MAX_LANES 8
#define FERRY__UCX_STRIPES 64
#define FERRY__UCX_LANE_JOBS 64

/* A striped batch in flight. Under the agent's lock except the two atomics,
 * which lane threads update. */
typedef struct ferry__ucx_stripe {
    ferry__bk_done_cb cb;
    void *arg;
    bool main_done;          /* the posting thread's piece is flushed */
    ferry_status_t main_st;  /* and how it ended */
    char errmsg[256];        /* its detail text on failure */
    atomic_uint lanes_left;  /* lane jobs still running */
    _Atomic ucs_status_t lane_status; /* the first lane failure */
    struct ferry__ucx_stripe *next; /* free list, or the in-flight list */
} ferry__ucx_stripe_t;

/* A segment from mem_alloc(); registrations inside it share its handle. */
typedef struct ferry__ucx_alloc {
    void *addr;
    size_t len;
    ucp_mem_h memh;
    unsigned regs; /* registrations using it */
    struct ferry__ucx_alloc *next;
} ferry__ucx_alloc_t;

typedef struct ferry__ucx_ctx {
    ucp_context_h context;
    ucp_worker_h worker;
    ucp_address_t *address;
    size_t address_len;
    uint64_t memory_types;
    int epfd; /* the worker's event fd and the watched peers' pidfds */
    struct ferry__ucx_conn **watched; /* same-host connections */
    size_t nwatched, capwatched;
    uint64_t next_check_ns;
    ferry__ucx_alloc_t *allocs;
    unsigned nlanes;                /* lanes besides the agent's worker */
    struct ferry__ucx_lane *lanes;
    uint64_t stripe_min;            /* segments this long are striped */
    int lane_efd;                   /* eventfd: a lane finished a job */
    ferry__ucx_stripe_t *stripes;   /* FERRY__UCX_STRIPES of them */
    ferry__ucx_stripe_t *free_stripes, *busy_stripes;
} ferry__ucx_ctx_t;

typedef struct ferry__ucx_reg {
    ucp_mem_h memh;
    ferry__ucx_alloc_t *alloc; /* the allocation it lies in, or NULL */
    void *rkey_buf;
    size_t rkey_len;
} ferry__ucx_reg_t;

/* Our part of every UCX request (request_size): the flush's completion,
 * linked into its connection's list of flushes in flight. */
typedef struct ferry__ucx_req {
    ferry__bk_done_cb cb;
    void *arg;
    struct ferry__ucx_conn *conn; /* NULL once orphaned by a dead peer */
    struct ferry__ucx_req *prev, *next;
    ucs_status_t deferred; /* an error from posting, reported at flush end */
} ferry__ucx_req_t;

/* A remote key unpacked on the agent's endpoint and on each lane's, and
 * whether the region is mapped here (ucp_rkey_ptr): then remote address
 * a is local address a + delta. */
typedef struct ferry__ucx_rkey {
    ucp_rkey_h main;
    ucp_rkey_h lane[FERRY__UCX_MAX_LANES];
    enum { FERRY__PTR_UNKNOWN, FERRY__PTR_MAPPED, FERRY__PTR_NONE } ptr;
    uintptr_t delta;
} ferry__ucx_rkey_t;

typedef struct ferry__ucx_conn {
    ucp_ep_h ep;         /* NULL once force-closed after a failure */
    ucp_ep_h lane_ep[FERRY__UCX_MAX_LANES]; /* one per lane, or none */
    ucs_status_t failed; /* UCS_OK until the peer is known to be gone */
    bool watched;        /* same host: liveness through pid/pidfd */
    int pidfd;           /* -1 when pidfd_open was refused */
    pid_t pid;
    ferry__ucx_req_t *flushes; /* in flight on this endpoint */
    char peer_name[256];
} ferry__ucx_conn_t;

static ferry_status_t ferry__ucx_status(ucs_status_t s)
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
static ferry_status_t ferry__ucx_error(ucs_status_t s, const char *call,
                                       const char *peer)
{
    if (peer != NULL)
        return ferry__error(ferry__ucx_status(s), "ucx: %s: %s (peer '%s')",
                            call, ucs_status_string(s), peer);
    return ferry__error(ferry__ucx_status(s), "ucx: %s: %s", call,
                        ucs_status_string(s));
}

/* ---- Lanes --------------------------------------------------------------- */

/* A job for a lane: its pieces of a posted batch. The segments belong to
 * the request, which stays alive while in flight. */
typedef struct ferry__ucx_job {
    ucp_ep_h ep;
    const ferry__bk_seg_t *segs;
    size_t n;
    ferry_xfer_op_t op;
    unsigned k, nl; /* this lane's piece, of nl */
    uint64_t min;
    ferry__ucx_stripe_t *stripe;
} ferry__ucx_job_t;

typedef struct ferry__ucx_lane {
    ucp_worker_h worker; /* thread mode MULTI: the agent's thread opens and
                          * closes endpoints on it while the lane posts */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    ferry__ucx_job_t jobs[FERRY__UCX_LANE_JOBS]; /* a ring, under lock */
    unsigned head, tail;
    bool stop;
    unsigned k; /* its piece: 1 .. nlanes */
    int efd;    /* the context's lane_efd */
} ferry__ucx_lane_t;

static ucs_status_t ferry__ucx_issue(ucp_ep_h ep, ferry_xfer_op_t op,
                                     const ferry__bk_seg_t *segs, size_t n,
                                     unsigned k, unsigned nl, uint64_t min);

/* Progresses a worker until a request from it is done; returns its status. */
static ucs_status_t ferry__ucx_wait_req(ucp_worker_h worker, ucs_status_ptr_t req)
{
    ucs_status_t s;

    if (req == NULL)
        return UCS_OK;
    if (UCS_PTR_IS_ERR(req))
        return UCS_PTR_STATUS(req);
    while ((s = ucp_request_check_status(req)) == UCS_INPROGRESS)
        ucp_worker_progress(worker);
    ucp_request_free(req);
    return s;
}

static void *ferry__ucx_lane_main(void *arg)
{
    ferry__ucx_lane_t *lane = arg;
    ucp_request_param_t p = {0};
    const uint64_t one = 1;

    pthread_mutex_lock(&lane->lock);
    for (;;) {
        ferry__ucx_job_t job;
        ucs_status_t s, f;

        while (lane->head == lane->tail && !lane->stop)
            pthread_cond_wait(&lane->cv, &lane->lock);
        if (lane->head == lane->tail)
            break;
        job = lane->jobs[lane->head++ % FERRY__UCX_LANE_JOBS];
        pthread_mutex_unlock(&lane->lock);

        s = ferry__ucx_issue(job.ep, job.op, job.segs, job.n, job.k, job.nl, job.min);
        f = ferry__ucx_wait_req(lane->worker, ucp_ep_flush_nbx(job.ep, &p));
        if (s == UCS_OK)
            s = f;
        if (s != UCS_OK) {
            ucs_status_t ok = UCS_OK;
            atomic_compare_exchange_strong(&job.stripe->lane_status, &ok, s);
        }
        atomic_fetch_sub_explicit(&job.stripe->lanes_left, 1, memory_order_release);
        if (write(lane->efd, &one, sizeof(one)) != sizeof(one))
            ferry__warn("ucx: lane %u cannot signal a finished job: %s", lane->k,
                        strerror(errno));
        pthread_mutex_lock(&lane->lock);
    }
    pthread_mutex_unlock(&lane->lock);
    return NULL;
}

static void ferry__ucx_lanes_fini(ferry__ucx_ctx_t *ctx)
{
    for (unsigned i = 0; ctx->lanes != NULL && i < ctx->nlanes; i++) {
        ferry__ucx_lane_t *lane = &ctx->lanes[i];

        if (lane->started) {
            pthread_mutex_lock(&lane->lock);
            lane->stop = true;
            pthread_cond_signal(&lane->cv);
            pthread_mutex_unlock(&lane->lock);
            pthread_join(lane->thread, NULL);
            pthread_cond_destroy(&lane->cv);
            pthread_mutex_destroy(&lane->lock);
        }
        if (lane->worker != NULL)
            ucp_worker_destroy(lane->worker);
    }
    free(ctx->lanes);
    free(ctx->stripes);
    if (ctx->lane_efd >= 0)
        close(ctx->lane_efd);
}

/* FERRY_UCX_LANES - 1 lanes, each a worker and a sleeping thread. */
static ferry_status_t ferry__ucx_lanes_init(ferry__ucx_ctx_t *ctx)
{
    uint64_t lanes = ferry__config_get_size("FERRY_UCX_LANES");
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_MULTI};
    struct epoll_event ev = {.events = EPOLLIN};
    ucs_status_t s;

    ctx->lane_efd = -1;
    if (lanes < 1 || lanes > FERRY__UCX_MAX_LANES + 1)
        return ferry__error(FERRY_ERR_INVALID, "ucx: FERRY_UCX_LANES=%llu (1 to %d "
                            "allowed)", (unsigned long long)lanes,
                            FERRY__UCX_MAX_LANES + 1);
    if (lanes == 1)
        return FERRY_OK;
    ctx->stripe_min = ferry__config_get_size("FERRY_UCX_STRIPE_MIN");
    if (ctx->stripe_min < lanes * 4096)
        ctx->stripe_min = lanes * 4096; /* every piece at least a page */
    ctx->lanes = calloc(lanes - 1, sizeof(*ctx->lanes));
    ctx->stripes = calloc(FERRY__UCX_STRIPES, sizeof(*ctx->stripes));
    ctx->lane_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->lanes == NULL || ctx->stripes == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for lanes");
    if (ctx->lane_efd < 0 || epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, ctx->lane_efd, &ev) != 0)
        return ferry__error(FERRY_ERR_SYSTEM, "ucx: lanes' eventfd: %s", strerror(errno));
    for (unsigned i = 0; i < FERRY__UCX_STRIPES; i++) {
        ctx->stripes[i].next = ctx->free_stripes;
        ctx->free_stripes = &ctx->stripes[i];
    }
    ctx->nlanes = (unsigned)lanes - 1;
    for (unsigned i = 0; i < ctx->nlanes; i++) {
        ferry__ucx_lane_t *lane = &ctx->lanes[i];

        lane->k = i + 1;
        lane->efd = ctx->lane_efd;
        s = ucp_worker_create(ctx->context, &wp, &lane->worker);
        if (s != UCS_OK)
            return ferry__ucx_error(s, "ucp_worker_create (lane)", NULL);
        pthread_mutex_init(&lane->lock, NULL);
        pthread_cond_init(&lane->cv, NULL);
        if (pthread_create(&lane->thread, NULL, ferry__ucx_lane_main, lane) != 0) {
            pthread_cond_destroy(&lane->cv);
            pthread_mutex_destroy(&lane->lock);
            return ferry__error(FERRY_ERR_SYSTEM, "ucx: cannot start lane thread");
        }
        lane->started = true;
    }
    return FERRY_OK;
}

/* Opens the connection's endpoint on every lane, with the parameters of
 * the main one. */
static ferry_status_t ferry__ucx_lane_eps_open(ferry__ucx_ctx_t *ctx,
                                               ferry__ucx_conn_t *conn,
                                               const ucp_ep_params_t *ep)
{
    ucp_ep_params_t lp = *ep;
    ucs_status_t s;

    /* Failures reach the lanes through their flushes; the handler would run
     * on the lane's thread, so lane endpoints have none. */
    lp.field_mask &= ~(uint64_t)UCP_EP_PARAM_FIELD_ERR_HANDLER;
    for (unsigned i = 0; i < ctx->nlanes; i++) {
        s = ucp_ep_create(ctx->lanes[i].worker, &lp, &conn->lane_ep[i]);
        if (s != UCS_OK)
            return ferry__ucx_error(s, "ucp_ep_create (lane)", conn->peer_name);
    }
    return FERRY_OK;
}

/* Closes the lane endpoints; the core closes a connection only when no
 * request on it is in flight, so no lane job uses them. */
static void ferry__ucx_lane_eps_close(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = UCP_EP_CLOSE_FLAG_FORCE};

    for (unsigned i = 0; i < ctx->nlanes; i++) {
        if (conn->lane_ep[i] == NULL)
            continue;
        (void)ferry__ucx_wait_req(ctx->lanes[i].worker,
                                  ucp_ep_close_nbx(conn->lane_ep[i], &p));
        conn->lane_ep[i] = NULL;
    }
}

static void ferry__ucx_fini(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;

    if (ctx == NULL)
        return;
    ferry__ucx_lanes_fini(ctx);
    while (ctx->allocs != NULL) {
        ferry__ucx_alloc_t *a = ctx->allocs;

        ferry__debug("ucx: freeing an allocation of %zu B the user left", a->len);
        ctx->allocs = a->next;
        (void)ucp_mem_unmap(ctx->context, a->memh);
        free(a);
    }
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
static ferry_status_t ferry__ucx_events_init(ferry__ucx_ctx_t *ctx)
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

static ferry_status_t ferry__ucx_init(const char *agent_name, void **ctx_p)
{
    ferry__ucx_ctx_t *ctx;
    ucp_config_t *config;
    ucp_params_t params = {0};
    ucp_context_attr_t attr = {0};
    ucp_worker_params_t wparams = {0};
    const char *tls = ferry__config_get("FERRY_UCX_TLS");
    ucs_status_t s;
    ferry_status_t st;

    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a context");
    ctx->epfd = -1;
    ctx->lane_efd = -1;

    s = ucp_config_read(NULL, NULL, &config);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_config_read", NULL);
        goto err_free;
    }
    if (tls[0] != '\0') {
        s = ucp_config_modify(config, "TLS", tls);
        if (s != UCS_OK) {
            ucp_config_release(config);
            st = ferry__error(FERRY_ERR_INVALID, "ucx: FERRY_UCX_TLS=%s: %s",
                              tls, ucs_status_string(s));
            goto err_free;
        }
    }
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE |
                        UCP_PARAM_FIELD_NAME;
    /* AM as well as RMA: without it UCX 1.13 selects no zero-copy RMA lane
     * (cma) for registered user memory on the same host. */
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.request_size = sizeof(ferry__ucx_req_t);
    params.name = agent_name;
    s = ucp_init(&params, config, &ctx->context);
    ucp_config_release(config);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_init", NULL);
        goto err_free;
    }

    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    s = ucp_context_query(ctx->context, &attr);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_context_query", NULL);
        goto err_fini;
    }
    ctx->memory_types = attr.memory_types;

    /* The core serialises every call into this backend under the agent's
     * lock, so the worker needs no locking of its own. */
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
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
    FERRY_CHECK_GOTO(ferry__ucx_events_init(ctx), st, err_fini);
    FERRY_CHECK_GOTO(ferry__ucx_lanes_init(ctx), st, err_fini);
    *ctx_p = ctx;
    return FERRY_OK;

err_fini:
    ferry__ucx_fini(ctx);
    return st;
err_free:
    free(ctx);
    return st;
}

static bool ferry__ucx_supports_kind(void *vctx, ferry_mem_kind_t kind)
{
    ferry__ucx_ctx_t *ctx = vctx;

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

static ferry_status_t ferry__ucx_pack_address(void *vctx, ferry__wbuf_t *out)
{
    ferry__ucx_ctx_t *ctx = vctx;

    ferry__wbuf_bytes(out, ctx->address, ctx->address_len);
    return FERRY_OK;
}

static ferry_status_t ferry__ucx_mem_register(void *vctx, const ferry_desc_t *desc,
                                              void **lreg_p)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_reg_t *reg;
    ucp_mem_map_params_t mp = {0};
    ucs_status_t s;
    ferry_status_t st;

    reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a registration");
    for (ferry__ucx_alloc_t *a = ctx->allocs; a != NULL; a = a->next) {
        uintptr_t start = (uintptr_t)a->addr;

        if (desc->addr >= start && desc->addr - start <= a->len &&
            desc->len <= a->len - (desc->addr - start)) {
            reg->alloc = a;
            reg->memh = a->memh;
            goto pack;
        }
    }
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                    UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    mp.address = (void *)(uintptr_t)desc->addr;
    mp.length = desc->len;
    mp.memory_type = desc->kind == FERRY_MEM_CUDA ? UCS_MEMORY_TYPE_CUDA
                                                  : UCS_MEMORY_TYPE_HOST;
    s = ucp_mem_map(ctx->context, &mp, &reg->memh);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_mem_map", NULL);
        goto err_free;
    }
pack:
    /* Packed once here, so that packing metadata is a copy. */
    s = ucp_rkey_pack(ctx->context, reg->memh, &reg->rkey_buf, &reg->rkey_len);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_rkey_pack", NULL);
        goto err_unmap;
    }
    if (reg->alloc != NULL)
        reg->alloc->regs++;
    *lreg_p = reg;
    return FERRY_OK;

err_unmap:
    if (reg->alloc == NULL)
        ucp_mem_unmap(ctx->context, reg->memh);
err_free:
    free(reg);
    return st;
}

static ferry_status_t ferry__ucx_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out)
{
    ferry__ucx_reg_t *reg = lreg;

    (void)vctx;
    ferry__wbuf_bytes(out, reg->rkey_buf, reg->rkey_len);
    return FERRY_OK;
}

static void ferry__ucx_mem_deregister(void *vctx, void *lreg)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_reg_t *reg = lreg;
    ucs_status_t s;

    ucp_rkey_buffer_release(reg->rkey_buf);
    if (reg->alloc != NULL) {
        reg->alloc->regs--;
    } else {
        s = ucp_mem_unmap(ctx->context, reg->memh);
        if (s != UCS_OK)
            ferry__warn("ucx: ucp_mem_unmap: %s", ucs_status_string(s));
    }
    free(reg);
}

static ferry_status_t ferry__ucx_mem_alloc(void *vctx, size_t len,
                                           ferry_mem_kind_t kind, void **addr_p)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_alloc_t *a;
    ucp_mem_map_params_t mp = {0};
    ucp_mem_attr_t attr = {0};
    ucs_status_t s;

    if (kind != FERRY_MEM_HOST)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "ucx: allocates host memory "
                            "only");
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for an allocation");
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                    UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = NULL;
    mp.length = len;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    s = ucp_mem_map(ctx->context, &mp, &a->memh);
    if (s != UCS_OK) {
        free(a);
        return ferry__ucx_error(s, "ucp_mem_map(ALLOCATE)", NULL);
    }
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    s = ucp_mem_query(a->memh, &attr);
    if (s != UCS_OK) {
        (void)ucp_mem_unmap(ctx->context, a->memh);
        free(a);
        return ferry__ucx_error(s, "ucp_mem_query", NULL);
    }
    a->addr = attr.address;
    a->len = attr.length;
    a->next = ctx->allocs;
    ctx->allocs = a;
    *addr_p = a->addr;
    return FERRY_OK;
}

static ferry_status_t ferry__ucx_mem_free(void *vctx, void *addr)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_alloc_t **pa, *a;
    ucs_status_t s;

    for (pa = &ctx->allocs; *pa != NULL && (*pa)->addr != addr; pa = &(*pa)->next)
        ;
    a = *pa;
    if (a == NULL)
        return ferry__error(FERRY_ERR_NOT_FOUND, "ucx: %p starts no allocation", addr);
    if (a->regs > 0)
        return ferry__error(FERRY_ERR_BUSY, "ucx: %u registration(s) still use "
                            "the allocation at %p", a->regs, addr);
    *pa = a->next;
    s = ucp_mem_unmap(ctx->context, a->memh);
    free(a);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_mem_unmap", NULL);
    return FERRY_OK;
}

static void ferry__ucx_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ferry__ucx_conn_t *conn = arg;

    (void)ep;
    conn->failed = status;
    ferry__info("ucx: connection to peer '%s' failed: %s", conn->peer_name,
                ucs_status_string(status));
}

static bool ferry__ucx_peer_alive(ferry__ucx_conn_t *conn)
{
    struct pollfd pfd = {conn->pidfd, POLLIN, 0};

    if (conn->pidfd >= 0)
        return poll(&pfd, 1, 0) == 0; /* readable once the process ended */
    return kill(conn->pid, 0) == 0 || errno != ESRCH;
}

static ferry_status_t ferry__ucx_watch(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn,
                                       pid_t pid)
{
    if (ctx->nwatched == ctx->capwatched) {
        size_t cap = ctx->capwatched ? ctx->capwatched * 2 : 8;
        ferry__ucx_conn_t **w = realloc(ctx->watched, cap * sizeof(*w));

        if (w == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory to watch a peer");
        ctx->watched = w;
        ctx->capwatched = cap;
    }
    conn->pid = pid;
    conn->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (conn->pidfd < 0 && errno == ESRCH)
        return ferry__error(FERRY_ERR_PEER_LOST, "ucx: peer '%s' (pid %d) is not "
                            "running", conn->peer_name, (int)pid);
    if (conn->pidfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN};

        if (epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, conn->pidfd, &ev) != 0)
            ferry__warn("ucx: cannot watch peer '%s' for exit: %s", conn->peer_name,
                        strerror(errno));
    }
    conn->watched = true;
    ctx->watched[ctx->nwatched++] = conn;
    return FERRY_OK;
}

static void ferry__ucx_unwatch(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    for (size_t i = 0; i < ctx->nwatched; i++) {
        if (ctx->watched[i] == conn) {
            ctx->watched[i] = ctx->watched[--ctx->nwatched];
            break;
        }
    }
    if (conn->pidfd >= 0) {
        (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->pidfd, NULL);
        close(conn->pidfd);
    }
    conn->watched = false;
}

/* Releases an endpoint; a failed one by force, which completes everything
 * still in flight on it with an error. */
static void ferry__ucx_ep_release(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    ucp_request_param_t p = {0};
    ucs_status_ptr_t req;
    uint64_t deadline = ferry__now_ns() + 5000000000ull;

    if (conn->ep == NULL)
        return;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = conn->failed != UCS_OK ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    req = ucp_ep_close_nbx(conn->ep, &p);
    conn->ep = NULL;
    if (UCS_PTR_IS_PTR(req)) {
        if (conn->failed != UCS_OK)
            deadline = ferry__now_ns() + 100000000ull; /* nothing to wait for */
        while (ucp_request_check_status(req) == UCS_INPROGRESS &&
               ferry__now_ns() < deadline)
            ucp_worker_progress(ctx->worker);
        if (ucp_request_check_status(req) == UCS_INPROGRESS)
            ferry__warn("ucx: closing the endpoint to peer '%s' did not finish "
                        "in 5 s; leaving it to the worker", conn->peer_name);
        ucp_request_free(req);
    } else if (UCS_PTR_IS_ERR(req)) {
        ferry__debug("ucx: ucp_ep_close_nbx (peer '%s'): %s", conn->peer_name,
                     ucs_status_string(UCS_PTR_STATUS(req)));
    }
}

static void ferry__ucx_unlink(ferry__ucx_req_t *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        r->conn->flushes = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/*
 * Fails a same-host connection whose peer process has ended. Without UCX
 * error handling nothing completes the flushes in flight, so they are
 * completed here with PEER_LOST and orphaned (a late callback from UCX only
 * frees them); the forced close then drops whatever UCX still queued, so no
 * operation touches the requests' local memory after they are reported.
 */
static void ferry__ucx_fail(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    conn->failed = UCS_ERR_CONNECTION_RESET;
    /* An exited process's pidfd stays readable: stop sleeping on it. */
    if (conn->pidfd >= 0)
        (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->pidfd, NULL);
    while (conn->flushes != NULL) {
        ferry__ucx_req_t *r = conn->flushes;
        ferry_status_t st;

        ferry__ucx_unlink(r);
        r->conn = NULL;
        st = ferry__ucx_error(conn->failed, "peer process exited", conn->peer_name);
        r->cb(r->arg, st);
    }
    ferry__ucx_ep_release(ctx, conn);
}

/* Fails the endpoints of same-host peers whose process has ended. */
static void ferry__ucx_check_liveness(ferry__ucx_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->nwatched; i++) {
        ferry__ucx_conn_t *conn = ctx->watched[i];

        if (conn->failed != UCS_OK || ferry__ucx_peer_alive(conn))
            continue;
        ferry__info("ucx: peer '%s' (pid %d) has exited", conn->peer_name,
                    (int)conn->pid);
        ferry__ucx_fail(ctx, conn);
    }
}

static ferry_status_t ferry__ucx_conn_open(void *vctx, const uint8_t *addr,
                                           size_t len, const ferry__bk_peer_t *peer,
                                           void **conn_p)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_conn_t *conn;
    ucp_ep_params_t ep = {0};
    ucs_status_t s;
    ferry_status_t st;

    (void)len; /* the blob parser checked the section's bounds */
    conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a connection");
    conn->pidfd = -1;
    snprintf(conn->peer_name, sizeof(conn->peer_name), "%s", peer->name);
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = (const ucp_address_t *)addr;
    ep.err_mode = peer->same_host ? UCP_ERR_HANDLING_MODE_NONE
                                  : UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = ferry__ucx_ep_error;
    ep.err_handler.arg = conn;
    if (peer->same_host && peer->pid > 0) {
        st = ferry__ucx_watch(ctx, conn, (pid_t)peer->pid);
        if (st < 0)
            goto err_free;
    }
    s = ucp_ep_create(ctx->worker, &ep, &conn->ep);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_ep_create", peer->name);
        goto err_unwatch;
    }
    FERRY_CHECK_GOTO(ferry__ucx_lane_eps_open(ctx, conn, &ep), st, err_close);
    *conn_p = conn;
    return FERRY_OK;

err_close:
    ferry__ucx_lane_eps_close(ctx, conn);
    ferry__ucx_ep_release(ctx, conn);
err_unwatch:
    if (conn->watched)
        ferry__ucx_unwatch(ctx, conn);
err_free:
    free(conn);
    return st;
}

static void ferry__ucx_conn_close(void *vctx, void *vconn)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_conn_t *conn = vconn;

    if (conn->watched)
        ferry__ucx_unwatch(ctx, conn);
    ferry__ucx_lane_eps_close(ctx, conn);
    ferry__ucx_ep_release(ctx, conn);
    /* The core closes a connection only once no request uses it; anything
     * left would be a late callback, which must not find this memory. */
    while (conn->flushes != NULL) {
        ferry__ucx_req_t *r = conn->flushes;

        ferry__ucx_unlink(r);
        r->conn = NULL;
    }
    free(conn);
}

static void ferry__ucx_rkey_close(void *vctx, void *vrkey)
{
    ferry__ucx_rkey_t *rk = vrkey;

    (void)vctx;
    if (rk->main != NULL)
        ucp_rkey_destroy(rk->main);
    for (unsigned k = 0; k < FERRY__UCX_MAX_LANES; k++)
        if (rk->lane[k] != NULL)
            ucp_rkey_destroy(rk->lane[k]);
    free(rk);
}

static ferry_status_t ferry__ucx_rkey_open(void *vctx, void *vconn,
                                           const uint8_t *data, size_t len,
                                           void **rkey_p)
{
    ferry__ucx_conn_t *conn = vconn;
    ferry__ucx_rkey_t *rk;
    ucs_status_t s;

    (void)len;
    if (conn->ep == NULL)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    rk = calloc(1, sizeof(*rk));
    if (rk == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a remote key");
    s = ucp_ep_rkey_unpack(conn->ep, data, &rk->main);
    for (unsigned k = 0; s == UCS_OK && k < FERRY__UCX_MAX_LANES; k++)
        if (conn->lane_ep[k] != NULL)
            s = ucp_ep_rkey_unpack(conn->lane_ep[k], data, &rk->lane[k]);
    if (s != UCS_OK) {
        ferry__ucx_rkey_close(vctx, rk);
        return ferry__ucx_error(s, "ucp_ep_rkey_unpack", conn->peer_name);
    }
    *rkey_p = rk;
    return FERRY_OK;
}

static void ferry__ucx_flush_done(void *request, ucs_status_t status,
                                  void *user_data)
{
    ferry__ucx_req_t *r = request;
    ferry__bk_done_cb cb = r->cb;
    void *arg = r->arg;
    ferry_status_t st = FERRY_OK;

    (void)user_data;
    if (r->conn == NULL) { /* already reported when its peer died */
        ucp_request_free(request);
        return;
    }
    ferry__ucx_unlink(r);
    if (r->deferred != UCS_OK)
        status = r->deferred;
    if (status != UCS_OK && r->conn->failed != UCS_OK)
        status = r->conn->failed; /* "canceled" by a force close: peer gone */
    if (status != UCS_OK)
        st = ferry__ucx_error(status, "flush", r->conn->peer_name);
    ucp_request_free(request);
    cb(arg, st);
}

/* The piece of segment s that lane k of nl moves: all of it for lane 0
 * when the segment is shorter than min (nothing for the others), else the
 * k-th of nl page-aligned parts, the last taking the rest. Returns its
 * length, 0 for none. */
static uint64_t ferry__ucx_piece(const ferry__bk_seg_t *s, unsigned k, unsigned nl,
                                 uint64_t min, uint64_t *off_p)
{
    uint64_t step;

    *off_p = 0;
    if (nl == 1 || s->len < min)
        return k == 0 ? s->len : 0;
    step = (s->len / nl) & ~(uint64_t)4095;
    *off_p = step * k;
    return k + 1 == nl ? s->len - *off_p : step;
}

/* Issues lane k's pieces of the n segments on ep (rkeys for lane k: the
 * main key for 0, else lane[k - 1]). Returns UCS_OK or the first error;
 * pieces issued before it are in flight, for the caller's flush. */
static ucs_status_t ferry__ucx_issue(ucp_ep_h ep, ferry_xfer_op_t op,
                                     const ferry__bk_seg_t *segs, size_t n,
                                     unsigned k, unsigned nl, uint64_t min)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH};
    ucs_status_ptr_t sp;

    for (size_t i = 0; i < n; i++) {
        const ferry__bk_seg_t *s = &segs[i];
        const ferry__ucx_rkey_t *rk = s->rkey;
        ucp_rkey_h rkey = k == 0 ? rk->main : rk->lane[k - 1];
        uint64_t off, len = ferry__ucx_piece(s, k, nl, min, &off);

        if (len == 0)
            continue;
        p.memh = ((ferry__ucx_reg_t *)s->lreg)->memh;
        if (op == FERRY_OP_WRITE)
            sp = ucp_put_nbx(ep, (const void *)(uintptr_t)(s->laddr + off), len,
                             s->raddr + off, rkey, &p);
        else
            sp = ucp_get_nbx(ep, (void *)(uintptr_t)(s->laddr + off), len,
                             s->raddr + off, rkey, &p);
        if (UCS_PTR_IS_ERR(sp)) {
            ferry__debug("ucx: %s failed at segment %zu: %s",
                         op == FERRY_OP_WRITE ? "ucp_put_nbx" : "ucp_get_nbx", i,
                         ucs_status_string(UCS_PTR_STATUS(sp)));
            return UCS_PTR_STATUS(sp);
        }
        if (sp != NULL)
            ucp_request_free(sp); /* completes on its own; errors reach the flush */
    }
    return UCS_OK;
}

/* Issues the pieces of lane 0 on the connection's endpoint and flushes it;
 * cb(arg) reports the end unless it ended inline (FERRY_OK or an error
 * returned). */
static ferry_status_t ferry__ucx_post_main(ferry__ucx_conn_t *conn, ferry_xfer_op_t op,
                                           const ferry__bk_seg_t *segs, size_t n,
                                           unsigned nl, uint64_t min,
                                           ferry__bk_done_cb cb, void *arg)
{
    ucp_request_param_t p = {0};
    ucs_status_ptr_t sp;
    ucs_status_t deferred;
    const char *call = op == FERRY_OP_WRITE ? "ucp_put_nbx" : "ucp_get_nbx";
    ferry__ucx_req_t *r;

    /* Segments already posted when one fails are in flight: flush them,
     * then report the error when the flush ends. */
    deferred = ferry__ucx_issue(conn->ep, op, segs, n, 0, nl, min);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
    p.cb.send = ferry__ucx_flush_done;
    sp = ucp_ep_flush_nbx(conn->ep, &p);
    if (sp == NULL) {
        if (deferred != UCS_OK)
            return ferry__ucx_error(deferred, call, conn->peer_name);
        return FERRY_OK;
    }
    if (UCS_PTR_IS_ERR(sp))
        return ferry__ucx_error(deferred != UCS_OK ? deferred : UCS_PTR_STATUS(sp),
                                "ucp_ep_flush_nbx", conn->peer_name);
    /* The callback cannot run before the next progress, which needs the
     * agent's lock that our caller holds. */
    r = sp;
    r->cb = cb;
    r->arg = arg;
    r->conn = conn;
    r->deferred = deferred;
    r->prev = NULL;
    r->next = conn->flushes;
    if (conn->flushes != NULL)
        conn->flushes->prev = r;
    conn->flushes = r;
    return FERRY_IN_PROGRESS;
}

/* Completion of the posting thread's piece of a striped batch. */
static void ferry__ucx_stripe_main_done(void *arg, ferry_status_t st)
{
    ferry__ucx_stripe_t *g = arg;

    g->main_done = true;
    g->main_st = st;
    if (st < 0)
        snprintf(g->errmsg, sizeof(g->errmsg), "%s", ferry_last_error());
}

/* Hands each lane its pieces, moves the first on the agent's worker, and
 * completes in progress() once all are done. Falls back to the posting
 * thread alone when every stripe or a lane's queue is taken. */
static ferry_status_t ferry__ucx_post_striped(ferry__ucx_ctx_t *ctx,
                                              ferry__ucx_conn_t *conn,
                                              ferry_xfer_op_t op,
                                              const ferry__bk_seg_t *segs, size_t n,
                                              ferry__bk_done_cb cb, void *arg)
{
    ferry__ucx_stripe_t *g = ctx->free_stripes;
    unsigned nl = ctx->nlanes + 1;
    ferry_status_t st;

    for (unsigned i = 0; g != NULL && i < ctx->nlanes; i++)
        if (conn->lane_ep[i] == NULL)
            g = NULL;
    if (g == NULL)
        return ferry__ucx_post_main(conn, op, segs, n, 1, UINT64_MAX, cb, arg);
    ctx->free_stripes = g->next;
    g->cb = cb;
    g->arg = arg;
    g->main_done = false;
    atomic_store(&g->lanes_left, 0);
    atomic_store(&g->lane_status, UCS_OK);
    for (unsigned i = 0; i < ctx->nlanes; i++) {
        ferry__ucx_lane_t *lane = &ctx->lanes[i];
        ferry__ucx_job_t job = {conn->lane_ep[i], segs, n, op, i + 1, nl,
                                ctx->stripe_min, g};

        pthread_mutex_lock(&lane->lock);
        if (lane->tail - lane->head < FERRY__UCX_LANE_JOBS) {
            lane->jobs[lane->tail++ % FERRY__UCX_LANE_JOBS] = job;
            atomic_fetch_add(&g->lanes_left, 1);
            pthread_cond_signal(&lane->cv);
        } else {
            /* The lane is that far behind: the posting thread takes its
             * piece too, as an unstriped segment list of one lane. */
            atomic_store(&g->lane_status, UCS_ERR_NO_RESOURCE);
        }
        pthread_mutex_unlock(&lane->lock);
    }
    if (atomic_load(&g->lane_status) == UCS_ERR_NO_RESOURCE) {
        /* Rare: let the lanes that took a job finish it, and move the whole
         * batch here (their pieces are moved twice, with the same bytes). */
        atomic_store(&g->lane_status, UCS_OK);
        nl = 1;
    }
    st = ferry__ucx_post_main(conn, op, segs, n, nl, nl == 1 ? UINT64_MAX
                                                            : ctx->stripe_min,
                              ferry__ucx_stripe_main_done, g);
    if (st != FERRY_IN_PROGRESS)
        ferry__ucx_stripe_main_done(g, st);
    g->next = ctx->busy_stripes;
    ctx->busy_stripes = g;
    return FERRY_IN_PROGRESS;
}

/* Completes the striped batches whose pieces are all done. */
static unsigned ferry__ucx_reap_stripes(ferry__ucx_ctx_t *ctx)
{
    ferry__ucx_stripe_t **pg = &ctx->busy_stripes;
    unsigned n = 0;
    uint64_t count;

    if (read(ctx->lane_efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        ferry__warn("ucx: reading the lanes' eventfd: %s", strerror(errno));
    while (*pg != NULL) {
        ferry__ucx_stripe_t *g = *pg;
        ferry_status_t st;
        ucs_status_t ls;

        if (!g->main_done ||
            atomic_load_explicit(&g->lanes_left, memory_order_acquire) > 0) {
            pg = &g->next;
            continue;
        }
        *pg = g->next;
        st = g->main_st;
        ls = atomic_load(&g->lane_status);
        if (st < 0)
            ferry__error(st, "%s", g->errmsg);
        else if (ls != UCS_OK)
            st = ferry__ucx_error(ls, "lane flush", NULL);
        g->next = ctx->free_stripes;
        ctx->free_stripes = g;
        g->cb(g->arg, st);
        n++;
    }
    return n;
}

/* Where remote address raddr of rk's region lies in this process, if it is
 * mapped here (the first use asks UCX, later ones reuse the offset). */
static void *ferry__ucx_mapped(ferry__ucx_rkey_t *rk, uint64_t raddr)
{
    void *p;

    if (rk->ptr == FERRY__PTR_MAPPED)
        return (void *)(uintptr_t)(raddr + rk->delta);
    if (rk->ptr == FERRY__PTR_NONE)
        return NULL;
    if (ucp_rkey_ptr(rk->main, raddr, &p) != UCS_OK) {
        rk->ptr = FERRY__PTR_NONE;
        return NULL;
    }
    rk->ptr = FERRY__PTR_MAPPED;
    rk->delta = (uintptr_t)p - (uintptr_t)raddr;
    return p;
}

/* Copies the leading segments whose remote region is mapped here; returns
 * how many. The fences order the copy with whatever tells the peer (after
 * a WRITE) or told us (before a READ) that the data is ready, as UCX's
 * flush of a shared-memory lane does. */
static size_t ferry__ucx_copy_mapped(ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                     size_t n)
{
    size_t i;

    atomic_thread_fence(memory_order_acquire);
    for (i = 0; i < n; i++) {
        uint8_t *remote = ferry__ucx_mapped(segs[i].rkey, segs[i].raddr);
        uint8_t *local = (uint8_t *)(uintptr_t)segs[i].laddr;

        if (remote == NULL)
            break;
        if (op == FERRY_OP_WRITE)
            memmove(remote, local, segs[i].len);
        else
            memmove(local, remote, segs[i].len);
    }
    atomic_thread_fence(memory_order_seq_cst);
    return i;
}

static ferry_status_t ferry__ucx_post(void *vctx, void *vconn, ferry_xfer_op_t op,
                                      const ferry__bk_seg_t *segs, size_t n,
                                      ferry__bk_done_cb cb, void *arg)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_conn_t *conn = vconn;
    size_t done;

    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    if (ctx->nlanes > 0) {
        for (size_t i = 0; i < n; i++)
            if (segs[i].len >= ctx->stripe_min)
                return ferry__ucx_post_striped(ctx, conn, op, segs, n, cb, arg);
    }
    done = ferry__ucx_copy_mapped(op, segs, n);
    if (done == n)
        return FERRY_OK;
    return ferry__ucx_post_main(conn, op, segs + done, n - done, 1, UINT64_MAX, cb,
                                arg);
}

static unsigned ferry__ucx_progress(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;
    unsigned n = ucp_worker_progress(ctx->worker);

    if (ctx->busy_stripes != NULL)
        n += ferry__ucx_reap_stripes(ctx);

    if (ctx->nwatched > 0) {
        uint64_t now = ferry__now_ns();

        if (now >= ctx->next_check_ns) {
            ctx->next_check_ns = now + FERRY__UCX_LIVENESS_NS;
            ferry__ucx_check_liveness(ctx);
        }
    }
    return n;
}

static int ferry__ucx_event_fd(void *vctx)
{
    return ((ferry__ucx_ctx_t *)vctx)->epfd;
}

static ferry_status_t ferry__ucx_arm(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ucs_status_t s = ucp_worker_arm(ctx->worker);

    if (s == UCS_OK)
        return FERRY_OK;
    if (s == UCS_ERR_BUSY)
        return FERRY_ERR_BUSY;
    return ferry__ucx_error(s, "ucp_worker_arm", NULL);
}

const ferry__backend_ops_t ferry__ucx_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "ucx",
    .id = FERRY__BK_UCX,
    .init = ferry__ucx_init,
    .fini = ferry__ucx_fini,
    .supports_kind = ferry__ucx_supports_kind,
    .pack_address = ferry__ucx_pack_address,
    .mem_register = ferry__ucx_mem_register,
    .mem_pack = ferry__ucx_mem_pack,
    .mem_deregister = ferry__ucx_mem_deregister,
    .conn_open = ferry__ucx_conn_open,
    .conn_close = ferry__ucx_conn_close,
    .rkey_open = ferry__ucx_rkey_open,
    .rkey_close = ferry__ucx_rkey_close,
    .post = ferry__ucx_post,
    .progress = ferry__ucx_progress,
    .event_fd = ferry__ucx_event_fd,
    .arm = ferry__ucx_arm,
    .mem_alloc = ferry__ucx_mem_alloc,
    .mem_free = ferry__ucx_mem_free,
};
