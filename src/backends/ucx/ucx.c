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
 * Aborting. UCX cannot recall one put or get, and in UCX 1.13 an endpoint
 * without peer error handling (every same-host one, see above) cannot be
 * force-closed either (ucp_ep_close_nbx refuses UCP_EP_CLOSE_FLAG_FORCE).
 * The one thing that ends every operation of an endpoint, whatever its mode,
 * is destroying its worker. So each connection has a worker of its own, and
 * aborting a connection (a cancel, a stall, a dead peer) destroys that
 * worker: once ucp_worker_destroy() returns, nothing UCX does can touch the
 * memory its operations named (the FIFOs and sockets that could deliver a
 * late reply are gone). The next post opens a fresh worker and endpoint and
 * unpacks the keys again. The agent's own worker, whose address the metadata
 * advertises, serves peers' operations on this agent's memory. The price is
 * a worker per peer (about 4 MiB and 10 file descriptors with Debian's UCX
 * 1.13 and its default transports, and a few milliseconds to open); a peer
 * pays for one stale endpoint each time we abort a connection to it. Two
 * exceptions. A loopback connection (an agent that loaded its own blob)
 * stays on the agent's worker: what it has in flight needs no one else to
 * finish, so an abort lets it finish (two workers of one process over TCP
 * also crash UCX 1.13 now and then). And when the configured transports
 * (FERRY_UCX_TLS) include no shared memory, same-host endpoints use UCX
 * error handling like remote ones: nothing is lost, since only shared
 * memory could not serve it.
 *
 * Known limit (UCX 1.13): a peer replies to operations it received before
 * an abort. Over shared memory the replies vanish into the destroyed
 * worker's FIFO. Over TCP, the peer's UCX cannot deliver the completion of
 * an emulated put and aborts the peer process (ucs_fatal in
 * ucp_request_try_send, via ucp_rma_sw_send_cmpl, whatever the error mode),
 * exactly as it does when an initiator process dies with puts in flight.
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
 * Mapped regions. A key to shared memory that UCX allocated (sysv, posix)
 * maps the peer's segment into this process when it is unpacked, and
 * ucp_rkey_ptr() tells where. A segment into such a region is then moved
 * with memcpy on the posting thread, which is what UCX's put and get do
 * for it too, without the per-operation request handling and the flush
 * of every lane of the endpoint (0.1 us a post; a 64 KiB copy takes 1.3).
 * The segment is attached whole, so the offset from remote to local
 * address found once holds for the key's whole region. A post of at least
 * FERRY_COPY_NT_MIN bytes (by default half the last-level cache, at most
 * 16 MiB) copies with non-temporal stores (util/copy.h): 1.4 to 1.9 times
 * glibc's memcpy, which UCX uses, from 16 MiB up on the 2-core machine of
 * docs/PERFORMANCE.md.
 */
#include "backends/backend.h"
#include "util/config.h"
#include "util/copy.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/time.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <sched.h>
#include <ucp/api/ucp.h>
#include <ucs/debug/log_def.h>
#include <unistd.h>

/* How often endpoints to same-host peers are checked for a dead process. */
#define FERRY__UCX_LIVENESS_NS 20000000ull

/* How long closing an idle endpoint may take before its worker is destroyed
 * anyway. */
#define FERRY__UCX_CLOSE_NS 1000000000ull

struct ferry__ucx_conn;

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
    ucp_worker_h worker; /* serves peers; its address is advertised */
    ucp_address_t *address;
    size_t address_len;
    uint64_t memory_types;
    bool local_err_mode; /* same-host peers get UCX error handling too */
    int epfd; /* every worker's event fd and the watched peers' pidfds */
    struct ferry__ucx_conn *conns; /* every open connection */
    struct ferry__ucx_conn **watched; /* same-host connections */
    size_t nwatched, capwatched;
    uint64_t next_check_ns;
    ferry__ucx_alloc_t *allocs;
    size_t nt_min; /* mapped copies this large bypass the cache */
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

/* A remote key, unpacked on its connection's current endpoint: NULL after
 * an abort until the next post unpacks it again from the packed copy; and
 * whether the region is mapped here (ucp_rkey_ptr): then remote address a
 * is local address a + delta, for as long as the key stays unpacked. */
typedef struct ferry__ucx_rkey {
    ucp_rkey_h rkey;
    enum { FERRY__PTR_UNKNOWN, FERRY__PTR_MAPPED, FERRY__PTR_NONE } ptr;
    uintptr_t delta;
    uint64_t probe; /* a remote address in the region, once it was mapped */
    struct ferry__ucx_conn *conn;
    struct ferry__ucx_rkey *prev, *next; /* the connection's keys */
    uint8_t packed[];
} ferry__ucx_rkey_t;

typedef struct ferry__ucx_conn {
    ucp_worker_h worker; /* NULL after an abort */
    bool own_worker;     /* false: the context's (a loopback connection) */
    ucp_ep_h ep;
    int efd;             /* the worker's event fd, in ctx->epfd */
    uint64_t events;     /* events its worker handled: the stall check's mark */
    ucp_err_handling_mode_t err_mode;
    ucs_status_t failed; /* UCS_OK until the peer is known to be gone */
    bool watched;        /* same host: liveness through pid/pidfd */
    int pidfd;           /* -1 when pidfd_open was refused */
    pid_t pid;
    ferry__ucx_req_t *flushes; /* in flight on this endpoint */
    atomic_uint runs;          /* run()s copying into its mapped keys */
    ferry__ucx_rkey_t *rkeys;
    struct ferry__ucx_conn *prev, *next; /* ctx->conns */
    char peer_name[256];
    uint8_t addr[]; /* the peer's worker address, for reconnecting */
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

static void ferry__ucx_fini(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;

    if (ctx == NULL)
        return;
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

/* Whether a UCX_TLS-style list may select shared-memory transports: an
 * empty list or an exclusion ("^tcp") leaves them in, and so do their names
 * and the aliases that include them. */
static bool ferry__ucx_tls_has_shm(const char *tls)
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

/* A UCP context as ferry uses it (tls, the value of FERRY_UCX_TLS, applied;
 * RMA + AM + wake-up), and the memory types it accepts. */
static ferry_status_t ferry__ucx_context(const char *name, const char *tls,
                                         ucp_context_h *context, uint64_t *memory_types)
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
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE;
    /* AM as well as RMA: without it UCX 1.13 selects no zero-copy RMA lane
     * (cma) for registered user memory on the same host. */
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.request_size = sizeof(ferry__ucx_req_t);
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

static ferry_status_t ferry__ucx_init(const char *agent_name, void **ctx_p)
{
    ferry__ucx_ctx_t *ctx;
    ucp_worker_params_t wparams = {0};
    const char *tls = ferry__config_get("FERRY_UCX_TLS");
    ucs_status_t s;
    ferry_status_t st;

    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a context");
    ctx->epfd = -1;
    ctx->nt_min = ferry__copy_nt_min();

    st = ferry__ucx_context(agent_name, tls, &ctx->context, &ctx->memory_types);
    if (st != FERRY_OK)
        goto err_free;
    ctx->local_err_mode = !ferry__ucx_tls_has_shm(tls);

    /* The core serialises every call into this backend under the agent's
     * lock, so the worker needs no locking of its own. It only serves
     * peers: the requests it holds at the end are UCX's own replies to
     * connections a peer aborted (see the top of this file), which UCX
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
    FERRY_CHECK_GOTO(ferry__ucx_events_init(ctx), st, err_fini);
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
    conn->pidfd = ferry__pidfd_open(pid);
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

/*
 * Destroying a worker with operations in flight is what an abort is for,
 * but UCX warns about it ("N pending operations were not flushed"). A log
 * handler, installed once, turns that one warning into a debug line while
 * this thread is aborting; every other message goes on to UCX's own
 * handlers.
 */
static _Thread_local bool ferry__ucx_aborting;
static pthread_once_t ferry__ucx_log_once = PTHREAD_ONCE_INIT;

static ucs_log_func_rc_t ferry__ucx_log(const char *file, unsigned line,
                                        const char *function, ucs_log_level_t level,
                                        const ucs_log_component_config_t *comp,
                                        const char *message, va_list ap)
{
    (void)file;
    (void)line;
    (void)function;
    (void)level;
    (void)comp;
    (void)ap;
    if (ferry__ucx_aborting && strstr(message, "operations were not flushed") != NULL) {
        ferry__debug("ucx: worker destroyed with operations in flight");
        return UCS_LOG_FUNC_RC_STOP;
    }
    return UCS_LOG_FUNC_RC_CONTINUE;
}

static void ferry__ucx_log_install(void)
{
    ucs_log_push_handler(ferry__ucx_log);
}

static ferry_status_t ferry__ucx_ep_create(ferry__ucx_conn_t *conn)
{
    ucp_ep_params_t ep = {0};
    ucs_status_t s;

    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = (const ucp_address_t *)conn->addr;
    ep.err_mode = conn->err_mode;
    ep.err_handler.cb = ferry__ucx_ep_error;
    ep.err_handler.arg = conn;
    s = ucp_ep_create(conn->worker, &ep, &conn->ep);
    if (s != UCS_OK) {
        conn->ep = NULL;
        return ferry__ucx_error(s, "ucp_ep_create", conn->peer_name);
    }
    return FERRY_OK;
}

/* Opens the connection's worker (unless it shares the context's) and its
 * endpoint to the peer. */
static ferry_status_t ferry__ucx_connect(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    ucp_worker_params_t wp = {0};
    struct epoll_event ev = {.events = EPOLLIN};
    ucs_status_t s;
    ferry_status_t st;

    if (!conn->own_worker) {
        conn->worker = ctx->worker;
        return ferry__ucx_ep_create(conn);
    }
    /* An abort abandons the requests in flight on purpose. */
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_FLAGS;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    wp.flags = UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK;
    s = ucp_worker_create(ctx->context, &wp, &conn->worker);
    if (s != UCS_OK) {
        conn->worker = NULL;
        return ferry__ucx_error(s, "ucp_worker_create", conn->peer_name);
    }
    s = ucp_worker_get_efd(conn->worker, &conn->efd);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_worker_get_efd", conn->peer_name);
        goto err_worker;
    }
    if (epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, conn->efd, &ev) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "ucx: epoll for a connection's event "
                          "fd: %s", strerror(errno));
        goto err_worker;
    }
    FERRY_CHECK_GOTO(ferry__ucx_ep_create(conn), st, err_epoll);
    return FERRY_OK;

err_epoll:
    (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->efd, NULL);
err_worker:
    ucp_worker_destroy(conn->worker);
    conn->worker = NULL;
    conn->ep = NULL;
    return st;
}

/* Closes an idle endpoint politely, for a bounded time. */
static void ferry__ucx_ep_close(ferry__ucx_conn_t *conn)
{
    ucp_request_param_t p = {0};
    ucs_status_ptr_t req = ucp_ep_close_nbx(conn->ep, &p);
    uint64_t deadline = ferry__now_ns() + FERRY__UCX_CLOSE_NS;

    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS &&
               ferry__now_ns() < deadline)
            ucp_worker_progress(conn->worker);
        if (ucp_request_check_status(req) == UCS_INPROGRESS)
            ferry__debug("ucx: closing the endpoint to peer '%s' did not finish; "
                         "destroying its worker", conn->peer_name);
        ucp_request_free(req);
    } else if (UCS_PTR_IS_ERR(req)) {
        ferry__debug("ucx: ucp_ep_close_nbx (peer '%s'): %s", conn->peer_name,
                     ucs_status_string(UCS_PTR_STATUS(req)));
    }
}

/* Waits for the runs copying into the connection's mapped keys to end,
 * before a mapping goes away. The caller holds the agent's lock, which no
 * run takes, so no new run starts meanwhile and a copy ends by itself. */
static void ferry__ucx_runs_wait(ferry__ucx_conn_t *conn)
{
    while (atomic_load_explicit(&conn->runs, memory_order_acquire) != 0)
        sched_yield();
}

/*
 * Destroys the connection's worker, with its endpoint and every operation
 * still queued or outstanding on it: afterwards UCX touches none of their
 * memory. Keys go first (they were unpacked on the endpoint); they are
 * unpacked again on the next connect. A polite close is tried first only
 * when nothing is in flight and the peer is not known to be gone.
 */
static void ferry__ucx_disconnect(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn,
                                  bool polite)
{
    ferry__ucx_runs_wait(conn);
    if (conn->worker == NULL)
        return;
    for (ferry__ucx_rkey_t *k = conn->rkeys; k != NULL; k = k->next) {
        if (k->rkey != NULL)
            ucp_rkey_destroy(k->rkey);
        k->rkey = NULL;
        k->ptr = FERRY__PTR_UNKNOWN; /* a mapping goes with its key */
    }
    if (!conn->own_worker) {
        /* Only the last close: a loopback connection is never aborted. */
        ferry__ucx_ep_close(conn);
        conn->worker = NULL;
        conn->ep = NULL;
        return;
    }
    if (polite && conn->flushes == NULL && conn->failed == UCS_OK)
        ferry__ucx_ep_close(conn);
    (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->efd, NULL);
    pthread_once(&ferry__ucx_log_once, ferry__ucx_log_install);
    ferry__ucx_aborting = true;
    ucp_worker_destroy(conn->worker);
    ferry__ucx_aborting = false;
    conn->worker = NULL;
    conn->ep = NULL;
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
 * Ends every batch in flight on the connection with status why (the detail
 * text is the caller's last error): their flushes are detached, the worker
 * is destroyed, and only then are the completions reported, so that no
 * caller learns of one while UCX could still touch its memory.
 */
static ferry_status_t ferry__ucx_conn_abort(void *vctx, void *vconn, ferry_status_t why)
{
    ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_conn_t *conn = vconn;
    struct ferry__ucx_done { ferry__bk_done_cb cb; void *arg; } *done;
    size_t n = 0, i = 0;

    /* Our own agent on the other side: its batches finish by themselves. */
    if (!conn->own_worker)
        return conn->flushes != NULL ? FERRY_IN_PROGRESS : FERRY_OK;
    for (ferry__ucx_req_t *r = conn->flushes; r != NULL; r = r->next)
        n++;
    done = n > 0 ? malloc(n * sizeof(*done)) : NULL;
    while (conn->flushes != NULL) {
        ferry__ucx_req_t *r = conn->flushes;

        ferry__ucx_unlink(r);
        r->conn = NULL; /* the request itself dies with the worker */
        if (done != NULL) {
            done[i++] = (struct ferry__ucx_done){r->cb, r->arg};
        } else {
            /* Out of memory for the list: report now. The caller holds the
             * agent's lock, and the worker is destroyed before it lets go. */
            r->cb(r->arg, why);
        }
    }
    ferry__ucx_disconnect(ctx, conn, false);
    for (size_t j = 0; j < i; j++)
        done[j].cb(done[j].arg, why);
    free(done);
    return FERRY_OK;
}

/* Fails a same-host connection whose peer process has ended: without UCX
 * error handling nothing else would complete its flushes. */
static void ferry__ucx_fail(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    ferry_status_t st;

    conn->failed = UCS_ERR_CONNECTION_RESET;
    /* An exited process's pidfd stays readable: stop sleeping on it. */
    if (conn->pidfd >= 0)
        (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->pidfd, NULL);
    st = ferry__ucx_error(conn->failed, "peer process exited", conn->peer_name);
    (void)ferry__ucx_conn_abort(ctx, conn, st);
}

/* Fails the endpoints of same-host peers whose process has ended. */
static void ferry__ucx_check_liveness(ferry__ucx_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->nwatched; i++) {
        ferry__ucx_conn_t *conn = ctx->watched[i];

        if (conn->failed != UCS_OK || ferry__pid_alive(conn->pidfd, conn->pid))
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
    ferry_status_t st;

    conn = calloc(1, sizeof(*conn) + len);
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a connection");
    conn->pidfd = -1;
    conn->efd = -1;
    snprintf(conn->peer_name, sizeof(conn->peer_name), "%s", peer->name);
    memcpy(conn->addr, addr, len);
    conn->err_mode = peer->same_host && !ctx->local_err_mode
                         ? UCP_ERR_HANDLING_MODE_NONE
                         : UCP_ERR_HANDLING_MODE_PEER;
    conn->own_worker = !(peer->same_host && peer->pid == (int32_t)getpid());
    if (peer->same_host && peer->pid > 0) {
        st = ferry__ucx_watch(ctx, conn, (pid_t)peer->pid);
        if (st < 0)
            goto err_free;
    }
    FERRY_CHECK_GOTO(ferry__ucx_connect(ctx, conn), st, err_unwatch);
    conn->next = ctx->conns;
    if (ctx->conns != NULL)
        ctx->conns->prev = conn;
    ctx->conns = conn;
    *conn_p = conn;
    return FERRY_OK;

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
    /* The core closes a connection only once no request uses it and its
     * keys are closed; a flush left here would be a late callback, which
     * must not find this memory. */
    while (conn->flushes != NULL) {
        ferry__ucx_req_t *r = conn->flushes;

        ferry__ucx_unlink(r);
        r->conn = NULL;
    }
    ferry__ucx_disconnect(ctx, conn, true);
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        ctx->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    free(conn);
}

static ferry_status_t ferry__ucx_rkey_open(void *vctx, void *vconn,
                                           const uint8_t *data, size_t len,
                                           void **rkey_p)
{
    ferry__ucx_conn_t *conn = vconn;
    ferry__ucx_rkey_t *k;
    ucs_status_t s;

    (void)vctx;
    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    k = calloc(1, sizeof(*k) + len);
    if (k == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a remote key");
    memcpy(k->packed, data, len);
    k->conn = conn;
    /* After an abort the endpoint is reopened, and keys unpacked, at the
     * next post. */
    if (conn->ep != NULL) {
        s = ucp_ep_rkey_unpack(conn->ep, data, &k->rkey);
        if (s != UCS_OK) {
            free(k);
            return ferry__ucx_error(s, "ucp_ep_rkey_unpack", conn->peer_name);
        }
    }
    k->next = conn->rkeys;
    if (conn->rkeys != NULL)
        conn->rkeys->prev = k;
    conn->rkeys = k;
    *rkey_p = k;
    return FERRY_OK;
}

/* Keys are closed before their connection (peer.c). */
static void ferry__ucx_rkey_close(void *vctx, void *vkey)
{
    ferry__ucx_rkey_t *k = vkey;

    (void)vctx;
    ferry__ucx_runs_wait(k->conn);
    if (k->rkey != NULL)
        ucp_rkey_destroy(k->rkey);
    if (k->next != NULL)
        k->next->prev = k->prev;
    if (k->prev != NULL)
        k->prev->next = k->next;
    else
        k->conn->rkeys = k->next;
    free(k);
}

static void ferry__ucx_flush_done(void *request, ucs_status_t status,
                                  void *user_data)
{
    ferry__ucx_req_t *r = request;
    ferry__bk_done_cb cb = r->cb;
    void *arg = r->arg;
    ferry_status_t st = FERRY_OK;

    (void)user_data;
    if (r->conn == NULL) { /* already reported by an abort */
        ucp_request_free(request);
        return;
    }
    ferry__ucx_unlink(r);
    if (r->deferred != UCS_OK)
        status = r->deferred;
    if (status != UCS_OK && r->conn->failed != UCS_OK)
        status = r->conn->failed; /* "canceled" by a failure: peer gone */
    if (status != UCS_OK)
        st = ferry__ucx_error(status, "flush", r->conn->peer_name);
    ucp_request_free(request);
    cb(arg, st);
}

/* Where remote address raddr of rk's region lies in this process, if it is
 * mapped here (the first use asks UCX, later ones reuse the offset). */
static void *ferry__ucx_mapped(ferry__ucx_rkey_t *rk, uint64_t raddr)
{
    void *p;

    if (rk->ptr == FERRY__PTR_MAPPED)
        return (void *)(uintptr_t)(raddr + rk->delta);
    if (rk->ptr == FERRY__PTR_NONE || rk->rkey == NULL)
        return NULL;
    if (ucp_rkey_ptr(rk->rkey, raddr, &p) != UCS_OK) {
        rk->ptr = FERRY__PTR_NONE;
        return NULL;
    }
    rk->ptr = FERRY__PTR_MAPPED;
    rk->delta = (uintptr_t)p - (uintptr_t)raddr;
    rk->probe = raddr;
    return p;
}

/* Reopens a connection after an abort: a new worker, a new endpoint, and
 * every key of the connection unpacked again. A key that was mapped here
 * is mapped again at once: requests prepared to copy into it directly
 * count on it. */
static ferry_status_t ferry__ucx_reconnect(ferry__ucx_ctx_t *ctx, ferry__ucx_conn_t *conn)
{
    ferry_status_t st;
    ucs_status_t s;

    FERRY_CHECK(ferry__ucx_connect(ctx, conn));
    for (ferry__ucx_rkey_t *k = conn->rkeys; k != NULL; k = k->next) {
        s = ucp_ep_rkey_unpack(conn->ep, k->packed, &k->rkey);
        if (s != UCS_OK) {
            st = ferry__ucx_error(s, "ucp_ep_rkey_unpack", conn->peer_name);
            goto err;
        }
        if (k->probe != 0 && ferry__ucx_mapped(k, k->probe) == NULL) {
            st = ferry__error(FERRY_ERR_BACKEND, "ucx: peer '%s': memory that was "
                              "mapped here is not mapped after reconnecting",
                              conn->peer_name);
            goto err;
        }
    }
    ferry__debug("ucx: reconnected to peer '%s'", conn->peer_name);
    return FERRY_OK;

err:
    ferry__ucx_disconnect(ctx, conn, false);
    return st;
}

/*
 * Mapped regions: a batch whose every segment lies in a region mapped here
 * is moved by run() with memcpy, outside the agent's lock. Its plan is this
 * marker; a batch with any other segment has none and goes to UCX whole.
 */
static const char ferry__ucx_direct = 'd';
#define FERRY__UCX_DIRECT ((void *)(uintptr_t)&ferry__ucx_direct)

static ferry_status_t ferry__ucx_prepare(void *vctx, void *vconn,
                                         const ferry__bk_seg_t *segs, size_t n,
                                         void **plan_p)
{
    ferry__ucx_conn_t *conn = vconn;
    size_t i;

    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    if (conn->worker == NULL)
        FERRY_CHECK(ferry__ucx_reconnect(vctx, conn));
    for (i = 0; i < n; i++)
        if (ferry__ucx_mapped(segs[i].rkey, segs[i].raddr) == NULL)
            break;
    *plan_p = i == n ? FERRY__UCX_DIRECT : NULL;
    return FERRY_OK;
}

/*
 * Copies a direct batch. A batch that moves FERRY_COPY_NT_MIN bytes or
 * more, in one segment or many, bypasses the cache for its segments of a
 * page or more (smaller ones would leave partial lines). The fences order
 * the copy with whatever tells the peer (after a WRITE) or told us (before
 * a READ) that the data is ready, as UCX's flush of a shared-memory lane
 * does; the last one also orders the non-temporal stores.
 */
static ferry_status_t ferry__ucx_run(void *vctx, void *vconn, void *plan,
                                     ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                     size_t n)
{
    const ferry__ucx_ctx_t *ctx = vctx;
    ferry__ucx_conn_t *conn = vconn;
    size_t i, total = 0, nt_min = SIZE_MAX;

    (void)plan;
    for (i = 0; i < n && total < ctx->nt_min; i++)
        total += segs[i].len;
    if (total >= ctx->nt_min)
        nt_min = ctx->nt_min < 4096 ? ctx->nt_min : 4096;
    atomic_thread_fence(memory_order_acquire);
    for (i = 0; i < n; i++) {
        const ferry__ucx_rkey_t *rk = segs[i].rkey;
        uint8_t *remote = (uint8_t *)(uintptr_t)(segs[i].raddr + rk->delta);
        uint8_t *local = (uint8_t *)(uintptr_t)segs[i].laddr;

        if (op == FERRY_OP_WRITE)
            ferry__copy(remote, local, segs[i].len, nt_min);
        else
            ferry__copy(local, remote, segs[i].len, nt_min);
    }
    ferry__copy_fence();
    atomic_thread_fence(memory_order_seq_cst);
    atomic_fetch_sub_explicit(&conn->runs, 1, memory_order_release);
    return FERRY_OK;
}

static ferry_status_t ferry__ucx_post(void *vctx, void *vconn, void *plan,
                                      ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                      size_t n, ferry__bk_done_cb cb, void *arg)
{
    ferry__ucx_conn_t *conn = vconn;
    ucp_request_param_t p = {0};
    ucs_status_ptr_t sp;
    ucs_status_t deferred = UCS_OK;
    const char *call = op == FERRY_OP_WRITE ? "ucp_put_nbx" : "ucp_get_nbx";
    ferry__ucx_req_t *r;

    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    if (conn->worker == NULL)
        FERRY_CHECK(ferry__ucx_reconnect(vctx, conn));
    if (plan == FERRY__UCX_DIRECT) {
        /* The keys stay mapped until every run has ended (runs_wait). */
        atomic_fetch_add_explicit(&conn->runs, 1, memory_order_relaxed);
        return FERRY__BK_RUN;
    }

    p.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
    for (size_t i = 0; i < n; i++) {
        const ferry__bk_seg_t *s = &segs[i];
        ucp_rkey_h rkey = ((ferry__ucx_rkey_t *)s->rkey)->rkey;

        p.memh = ((ferry__ucx_reg_t *)s->lreg)->memh;
        if (op == FERRY_OP_WRITE)
            sp = ucp_put_nbx(conn->ep, (const void *)(uintptr_t)s->laddr, s->len,
                             s->raddr, rkey, &p);
        else
            sp = ucp_get_nbx(conn->ep, (void *)(uintptr_t)s->laddr, s->len,
                             s->raddr, rkey, &p);
        if (UCS_PTR_IS_ERR(sp)) {
            /* Segments already posted are in flight: flush them, then
             * report this error when the flush ends. */
            deferred = UCS_PTR_STATUS(sp);
            ferry__debug("ucx: %s failed at segment %zu: %s", call, i,
                         ucs_status_string(deferred));
            break;
        }
        if (sp != NULL)
            ucp_request_free(sp); /* completes on its own; errors reach the flush */
    }

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

/* Every worker, every time: an idle one costs a few nanoseconds, and one
 * left unprogressed could keep its event fd readable for the sleepers. */
static unsigned ferry__ucx_progress(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;
    unsigned n = ucp_worker_progress(ctx->worker), shared = n;

    for (ferry__ucx_conn_t *c = ctx->conns; c != NULL; c = c->next) {
        if (!c->own_worker) {
            c->events += shared;
        } else if (c->worker != NULL) {
            unsigned k = ucp_worker_progress(c->worker);

            c->events += k;
            n += k;
        }
    }
    if (ctx->nwatched > 0) {
        uint64_t now = ferry__now_ns();

        if (now >= ctx->next_check_ns) {
            ctx->next_check_ns = now + FERRY__UCX_LIVENESS_NS;
            ferry__ucx_check_liveness(ctx);
        }
    }
    return n;
}

static uint64_t ferry__ucx_conn_events(void *vctx, void *vconn)
{
    (void)vctx;
    return ((ferry__ucx_conn_t *)vconn)->events;
}

static int ferry__ucx_event_fd(void *vctx)
{
    return ((ferry__ucx_ctx_t *)vctx)->epfd;
}

static ferry_status_t ferry__ucx_arm_one(ucp_worker_h worker)
{
    ucs_status_t s = ucp_worker_arm(worker);

    if (s == UCS_OK)
        return FERRY_OK;
    if (s == UCS_ERR_BUSY)
        return FERRY_ERR_BUSY;
    return ferry__ucx_error(s, "ucp_worker_arm", NULL);
}

static ferry_status_t ferry__ucx_arm(void *vctx)
{
    ferry__ucx_ctx_t *ctx = vctx;

    FERRY_CHECK(ferry__ucx_arm_one(ctx->worker));
    for (ferry__ucx_conn_t *c = ctx->conns; c != NULL; c = c->next)
        if (c->own_worker && c->worker != NULL)
            FERRY_CHECK(ferry__ucx_arm_one(c->worker));
    return FERRY_OK;
}

const ferry__backend_ops_t ferry__ucx_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "ucx",
    .id = FERRY__BK_UCX,
    .flags = 0,
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
    .prepare = ferry__ucx_prepare,
    .unprepare = ferry__bk_unprepare_nothing,
    .post = ferry__ucx_post,
    .run = ferry__ucx_run,
    .progress = ferry__ucx_progress,
    .event_fd = ferry__ucx_event_fd,
    .arm = ferry__ucx_arm,
    .conn_abort = ferry__ucx_conn_abort,
    .conn_events = ferry__ucx_conn_events,
    .post_stream = ferry__bk_post_stream_unsupported, /* the core's flags order it */
    .mem_alloc = ferry__ucx_mem_alloc,
    .mem_free = ferry__ucx_mem_free,
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
    if (ferry__ucx_context(NULL, ferry__config_get("FERRY_UCX_TLS"), &context, &types) !=
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
                  "CUDA IPC, on one host only)");
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
