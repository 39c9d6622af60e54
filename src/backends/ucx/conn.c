/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX connections: an endpoint per peer, on a worker of its own, watched
 * for the peer's death; aborting a connection; and the remote keys
 * unpacked on it, which a reconnect unpacks again. Everything here runs
 * under the agent's lock; before a mapping goes away, ucx_runs_wait() lets
 * the run()s copying into it (xfer.c) end.
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
 * exceptions. A loopback connection (an agent that loaded its own blob,
 * known by its own worker address) stays on the agent's worker: what it has
 * in flight needs no one else to finish, so an abort lets it finish (two
 * workers of one process over TCP also crash UCX 1.13 now and then).
 * Another agent of the same process is not loopback: nothing says that
 * anyone drives it, and an emulated put waits for its target's progress,
 * so its connection has a worker of its own like any peer's, and an abort
 * ends what it was sent at once; it has no pid of its own to watch. And
 * when the configured transports (FERRY_UCX_TLS, or else UCX_TLS) include
 * no shared memory, same-host endpoints use UCX error handling like remote
 * ones: nothing is lost, since only shared memory could not serve it.
 *
 * A peer replies to operations it received before an abort. Over shared
 * memory the replies vanish into the destroyed worker's FIFO. Over TCP,
 * UCX 1.13 cannot take the closed sockets: a peer that still holds emulated
 * puts of the closed endpoint in its sockets (it was stopped, or busy) finds
 * its endpoint failed when it reads them, cannot send their completions,
 * and aborts ("unexpected error: Endpoint timeout", ucs_fatal in
 * ucp_request_try_send via ucp_put_handler), or trips an assertion while
 * purging a wire-up reply (ucp_request_send_state_ff). So an abort of a
 * connection whose endpoint runs over TCP keeps its worker instead,
 * retired: out of the epoll set and never progressed again, so that UCX
 * touches none of the aborted operations' memory (over TCP the kernel has
 * copied whatever left; nothing an idle worker does reads or writes user
 * memory), while its sockets stay open for the peer to finish against. A
 * connection keeps at most UCX_RETIRED_MAX of them, each a worker's memory
 * and descriptors, and destroys them when it closes. Left open: a peer
 * that was stopped before it answered the endpoint's very first contact
 * (the wire-up) still aborts once the retired worker is destroyed, at
 * the connection's close: UCX 1.13 purges its pending wire-up reply with
 * an assertion. A same-process initiator dies the same way when it exits.
 * And a peer holds that reply, too, until this process accepts the TCP
 * connection the peer opens back to it, which takes progress of the
 * connection's worker (or, once the connection is closed, of the closing
 * worker below, in this agent's progress; a retired worker never accepts
 * it): a peer that exits in between dies of the same assertion. Seen: an
 * endpoint opened, never used and forgotten without driving the agent
 * (test_rkey, before it completed a WRITE there), and a stall timeout that
 * aborted a reconnected endpoint before its wire-up ended
 * (test_same_process over TCP, with a 250 ms stall timeout under load). A
 * request completed on the endpoint ends its wire-up.
 */
#include "backends/ucx/ucx.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/time.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <ucs/debug/log_def.h>
#include <unistd.h>

/* How long closing an idle endpoint may take before its worker is destroyed
 * anyway. */
#define UCX_CLOSE_NS 1000000000ull

/* How many workers aborted TCP endpoints may keep per connection (see the
 * top of this file); beyond it, the oldest is destroyed. */
#define UCX_RETIRED_MAX 8

/* A worker an abort took off a connection over TCP. */
typedef struct ucx_retired {
    ucp_worker_h worker;
    ucp_ep_h ep; /* to force-close first, or NULL */
    ferry__list_t link; /* conn->retired, oldest first */
} ucx_retired_t;

static void ucx_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucx_conn_t *conn = arg;

    (void)ep;
    conn->failed = status;
    ferry__info("ucx: connection to peer '%s' failed: %s", conn->peer_name,
                ucs_status_string(status));
}

static ferry_status_t ucx_watch(ucx_ctx_t *ctx, ucx_conn_t *conn,
                                pid_t pid)
{
    if (ctx->nwatched == ctx->capwatched) {
        size_t cap = ctx->capwatched ? ctx->capwatched * 2 : 8;
        ucx_conn_t **w = realloc(ctx->watched, cap * sizeof(*w));

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

static void ucx_unwatch(ucx_ctx_t *ctx, ucx_conn_t *conn)
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
static _Thread_local bool ucx_aborting;
static pthread_once_t ucx_log_once = PTHREAD_ONCE_INIT;

static ucs_log_func_rc_t ucx_log(const char *file, unsigned line,
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
    if (ucx_aborting && strstr(message, "operations were not flushed") != NULL) {
        ferry__debug("ucx: worker destroyed with operations in flight");
        return UCS_LOG_FUNC_RC_STOP;
    }
    return UCS_LOG_FUNC_RC_CONTINUE;
}

static void ucx_log_install(void)
{
    ucs_log_push_handler(ucx_log);
}

/* How long a forced close of an endpoint may take before its worker goes. */
#define UCX_FORCE_NS 100000000ull

/*
 * Destroys a worker with whatever it still holds. An endpoint in peer error
 * handling mode (ep, else NULL) is force-closed first: that ends its
 * operations without touching their memory (UCX fails them), and UCX 1.13
 * asserts when it destroys an endpoint whose emulated gets still wait for
 * replies (ucp_ep_destroy_base). Without error handling UCX refuses the
 * force; an endpoint over shared memory keeps no such list.
 */
static void ucx_worker_drop(ucx_ctx_t *ctx, ucp_worker_h worker, ucp_ep_h ep)
{
    pthread_once(&ucx_log_once, ucx_log_install);
    ucx_aborting = true;
    if (ep != NULL) {
        ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_EP_CLOSE_FLAG_FORCE};
        ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
        uint64_t deadline = ferry__now_ns() + UCX_FORCE_NS;

        if (UCS_PTR_IS_PTR(req)) {
            /* Nothing of the operations is left to progress: only the
             * endpoint's own teardown. */
            while (ucp_request_check_status(req) == UCS_INPROGRESS &&
                   ferry__now_ns() < deadline)
                ferry__ucx_worker_progress(ctx, worker);
            ucp_request_free(req);
        }
    }
    ucp_worker_destroy(worker);
    ucx_aborting = false;
}

/* Whether the endpoint's active messages (and so the emulated puts and
 * gets) go over TCP: its lane that carries "am" is a tcp resource, as
 * ucp_ep_print_info() lists them ("lane[0]:  0:tcp/lo.0 md[0] -> ... am"). */
static bool ucx_ep_on_tcp(ucp_ep_h ep)
{
    char *text = NULL, *line, *save = NULL;
    size_t len = 0;
    bool tcp = false;
    FILE *mem = open_memstream(&text, &len);

    if (mem == NULL)
        return false;
    ucp_ep_print_info(ep, mem);
    fclose(mem);
    for (line = strtok_r(text, "\n", &save); line != NULL && !tcp;
         line = strtok_r(NULL, "\n", &save)) {
        char *tok, *tsave = NULL;
        bool lane_tcp;

        if (strstr(line, "lane[") == NULL)
            continue;
        lane_tcp = strstr(line, "tcp/") != NULL;
        for (tok = strtok_r(line, " ", &tsave); tok != NULL; tok = strtok_r(NULL, " ", &tsave))
            if (strcmp(tok, "am") == 0)
                tcp = lane_tcp;
    }
    free(text);
    return tcp;
}

/* The connection's endpoint if a forced close may end it (peer error
 * handling, and the peer not known to be gone: UCX failed its operations
 * then), else NULL. */
static ucp_ep_h ucx_ep_forcible(const ucx_conn_t *conn)
{
    return conn->err_mode == UCP_ERR_HANDLING_MODE_PEER && conn->failed == UCS_OK
               ? conn->ep
               : NULL;
}

/* Keeps the connection's worker, retired (see the top of this file), and
 * destroys the oldest retired one beyond UCX_RETIRED_MAX; returns false if
 * it could not be kept. */
static bool ucx_retire(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ucx_retired_t *r = malloc(sizeof(*r));

    if (r == NULL)
        return false;
    if (conn->nretired == UCX_RETIRED_MAX) {
        ucx_retired_t *old = ferry__container_of(conn->retired.next, ucx_retired_t, link);

        ferry__list_del(&old->link);
        conn->nretired--;
        ucx_worker_drop(ctx, old->worker, old->ep);
        free(old);
    }
    r->worker = conn->worker;
    r->ep = ucx_ep_forcible(conn);
    ferry__list_add_tail(&conn->retired, &r->link);
    conn->nretired++;
    ferry__debug("ucx: connection to peer '%s' over TCP: its worker retired (%u "
                 "kept)", conn->peer_name, conn->nretired);
    return true;
}

/* Destroys the connection's retired workers (it closes). */
static void ucx_retired_drop(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    while (!ferry__list_empty(&conn->retired)) {
        ucx_retired_t *r = ferry__container_of(conn->retired.next, ucx_retired_t, link);

        ferry__list_del(&r->link);
        ucx_worker_drop(ctx, r->worker, r->ep);
        free(r);
    }
    conn->nretired = 0;
}

static ferry_status_t ucx_ep_create(ucx_conn_t *conn)
{
    ucp_ep_params_t ep = {0};
    ucs_status_t s;

    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = (const ucp_address_t *)conn->addr;
    ep.err_mode = conn->err_mode;
    ep.err_handler.cb = ucx_ep_error;
    ep.err_handler.arg = conn;
    s = ucp_ep_create(conn->worker, &ep, &conn->ep);
    if (s != UCS_OK) {
        conn->ep = NULL;
        return ferry__ucx_error(s, "ucp_ep_create", conn->peer_name);
    }
    conn->tcp = ucx_ep_on_tcp(conn->ep);
    return FERRY_OK;
}

/* Opens the connection's worker (unless it shares the context's) and its
 * endpoint to the peer. */
static ferry_status_t ucx_connect(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ucp_worker_params_t wp = {0};
    struct epoll_event ev = {.events = EPOLLIN};
    ucs_status_t s;
    ferry_status_t st;

    /* A new endpoint: its first queued message waits for the wire-up. */
    conn->wired = false;
    conn->wireup_waited = false;
    if (!conn->own_worker) {
        conn->worker = ctx->worker;
        return ucx_ep_create(conn);
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
    for (unsigned i = 0; i < ctx->nam; i++) {
        s = ucp_worker_set_am_recv_handler(conn->worker, &ctx->am[i]);
        if (s != UCS_OK) {
            st = ferry__ucx_error(s, "ucp_worker_set_am_recv_handler", conn->peer_name);
            goto err_worker;
        }
    }
    if (epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, conn->efd, &ev) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "ucx: epoll for a connection's event "
                          "fd: %s", strerror(errno));
        goto err_worker;
    }
    FERRY_CHECK_GOTO(ucx_ep_create(conn), st, err_epoll);
    return FERRY_OK;

err_epoll:
    (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->efd, NULL);
err_worker:
    ucp_worker_destroy(conn->worker);
    conn->worker = NULL;
    conn->ep = NULL;
    return st;
}

/* Closes an idle endpoint politely, for a bounded time, spinning on its
 * worker under the agent's lock: only where the close cannot be kept for
 * later (ucx_close_later: no memory), and for a loopback connection. */
static void ucx_ep_close(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ucp_request_param_t p = {0};
    ucs_status_ptr_t req = ucp_ep_close_nbx(conn->ep, &p);
    uint64_t deadline = ferry__now_ns() + UCX_CLOSE_NS;

    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS &&
               ferry__now_ns() < deadline)
            ferry__ucx_worker_progress(ctx, conn->worker);
        if (ucp_request_check_status(req) == UCS_INPROGRESS)
            ferry__debug("ucx: closing the endpoint to peer '%s' did not finish; "
                         "destroying its worker", conn->peer_name);
        ucp_request_free(req);
    } else if (UCS_PTR_IS_ERR(req)) {
        ferry__debug("ucx: ucp_ep_close_nbx (peer '%s'): %s", conn->peer_name,
                     ucs_status_string(UCS_PTR_STATUS(req)));
    }
}

/*
 * A polite close under way on the worker of a connection that is gone. A
 * close can wait for the peer (an endpoint whose wire-up it never answered
 * because it is stopped, messages queued for a peer that does not drain):
 * spinning here would hold the agent's lock, and every thread of the agent
 * with it, for up to UCX_CLOSE_NS. So the close is started, the worker
 * kept, and ucx_progress() drives it with the other workers until it ends
 * or its time runs out, then destroys the worker. The close flushes the
 * endpoint, so messages still queued on it (msg.c) leave first, as they
 * did when the close spun in place; they move to the closing's list, and
 * whichever has not left when the worker goes is freed with it.
 */
typedef struct ucx_closing {
    ferry__list_t link;
    ucp_worker_h worker;
    void *req;
    uint64_t deadline;
    ferry__list_t sends; /* the connection's queued messages (ucx_req_t) */
} ucx_closing_t;

/* Starts closing the connection's idle endpoint politely, to be ended by
 * progress; its worker and queued messages are the closing's (or the
 * worker is destroyed now if the close ended at once). False if it could
 * not be kept (no memory): the caller closes it the old way. */
static bool ucx_close_later(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ucx_closing_t *c = malloc(sizeof(*c));
    ucp_request_param_t p = {0};
    ucs_status_ptr_t req;

    if (c == NULL)
        return false;
    req = ucp_ep_close_nbx(conn->ep, &p);
    if (!UCS_PTR_IS_PTR(req)) {
        if (UCS_PTR_IS_ERR(req))
            ferry__debug("ucx: ucp_ep_close_nbx (peer '%s'): %s", conn->peer_name,
                         ucs_status_string(UCS_PTR_STATUS(req)));
        free(c);
        ucx_worker_drop(ctx, conn->worker, NULL);
        return true;
    }
    c->worker = conn->worker;
    c->req = req;
    c->deadline = ferry__now_ns() + UCX_CLOSE_NS;
    ferry__list_init(&c->sends);
    ferry__ucx_sends_drop(&conn->sends, &c->sends, false);
    ferry__list_add(&ctx->closing, &c->link);
    return true;
}

void ferry__ucx_closing_progress(ucx_ctx_t *ctx, bool drain)
{
    ferry__list_t *l, *tmp;

    do {
        ferry__list_each(l, tmp, &ctx->closing) {
            ucx_closing_t *c = ferry__container_of(l, ucx_closing_t, link);

            ferry__ucx_worker_progress(ctx, c->worker);
            if (ucp_request_check_status(c->req) == UCS_INPROGRESS) {
                if (ferry__now_ns() < c->deadline)
                    continue;
                ferry__debug("ucx: closing an endpoint did not finish; "
                             "destroying its worker");
            }
            ucp_request_free(c->req);
            ferry__list_del(&c->link);
            ucx_worker_drop(ctx, c->worker, NULL);
            /* What did not leave went with the worker (a message whose
             * callback ran has left the list). */
            ferry__ucx_sends_drop(&c->sends, NULL, true);
            free(c);
        }
        if (drain && !ferry__list_empty(&ctx->closing))
            sched_yield();
    } while (drain && !ferry__list_empty(&ctx->closing));
}

/* Waits for the runs copying into the connection's mapped keys to end,
 * before a mapping goes away. The caller holds the agent's lock, which no
 * run takes, so no new run starts meanwhile and a copy ends by itself. */
static void ucx_runs_wait(ucx_conn_t *conn)
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
static void ucx_disconnect(ucx_ctx_t *ctx, ucx_conn_t *conn, bool polite)
{
    ferry__list_t *l, *tmp;

    ucx_runs_wait(conn);
    if (conn->worker == NULL)
        return;
    ferry__list_each(l, tmp, &conn->rkeys) {
        ucx_rkey_t *k = ferry__container_of(l, ucx_rkey_t, link);

        if (k->rkey != NULL)
            ucp_rkey_destroy(k->rkey);
        k->rkey = NULL;
        k->ptr = UCX_PTR_UNKNOWN; /* a mapping goes with its key */
    }
    if (!conn->own_worker) {
        /* Only the last close: a loopback connection is never aborted. */
        ucx_ep_close(ctx, conn);
        conn->worker = NULL;
        conn->ep = NULL;
        return;
    }
    (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->efd, NULL);
    if (polite && ferry__list_empty(&conn->flushes) && conn->failed == UCS_OK) {
        /* No transfer in flight: the close, and the messages still queued
         * on the endpoint, may end outside this call (and the agent's
         * lock). */
        if (ucx_close_later(ctx, conn)) {
            conn->worker = NULL;
            conn->ep = NULL;
            return;
        }
        ucx_ep_close(ctx, conn); /* which also lets queued messages leave */
    }
    /* A dead peer reads nothing more: its sockets may close. */
    if (polite || !conn->tcp || !ctx->retire_tcp || conn->failed != UCS_OK ||
        !ucx_retire(ctx, conn))
        ucx_worker_drop(ctx, conn->worker, polite ? NULL : ucx_ep_forcible(conn));
    conn->worker = NULL;
    conn->ep = NULL;
}

/* Takes the connection's first flush in flight off its list, orphaned: its
 * completion, if UCX still calls it, reports nothing (ucx_flush_done). */
static ucx_req_t *ucx_orphan_first(ucx_conn_t *conn)
{
    ucx_req_t *r = ferry__container_of(conn->flushes.next, ucx_req_t, link);

    ferry__list_del(&r->link);
    r->conn = NULL;
    return r;
}

/*
 * Ends every batch in flight on the connection with status why (the detail
 * text is the caller's last error): their flushes are detached, the worker
 * is destroyed, and only then are the completions reported, so that no
 * caller learns of one while UCX could still touch its memory.
 */
ferry_status_t ferry__ucx_conn_abort(void *vctx, void *vconn, ferry_status_t why)
{
    ucx_ctx_t *ctx = vctx;
    ucx_conn_t *conn = vconn;
    struct ucx_done { ferry__bk_done_cb cb; void *arg; } *done;
    ferry__list_t *l, *tmp;
    size_t n = 0, i = 0;

    /* Our own agent on the other side: its batches finish by themselves. */
    if (!conn->own_worker)
        return !ferry__list_empty(&conn->flushes) ? FERRY_IN_PROGRESS : FERRY_OK;
    ferry__list_each(l, tmp, &conn->flushes)
        n++;
    done = n > 0 ? malloc(n * sizeof(*done)) : NULL;
    while (!ferry__list_empty(&conn->flushes)) {
        /* The request itself dies with the worker. */
        ucx_req_t *r = ucx_orphan_first(conn);

        if (done != NULL) {
            done[i++] = (struct ucx_done){r->cb, r->arg};
        } else {
            /* Out of memory for the list: report now. The caller holds the
             * agent's lock, and the worker is destroyed before it lets go. */
            r->cb(r->arg, why);
        }
    }
    ucx_disconnect(ctx, conn, false);
    /* Messages in flight are lost (a retired worker, never progressed
     * again, reports nothing either). */
    ferry__ucx_sends_drop(&conn->sends, NULL, true);
    for (size_t j = 0; j < i; j++)
        done[j].cb(done[j].arg, why);
    free(done);
    return FERRY_OK;
}

/* Fails a same-host connection whose peer process has ended: without UCX
 * error handling nothing else would complete its flushes. */
static void ucx_fail(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ferry_status_t st;

    conn->failed = UCS_ERR_CONNECTION_RESET;
    /* An exited process's pidfd stays readable: stop sleeping on it. */
    if (conn->pidfd >= 0)
        (void)epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, conn->pidfd, NULL);
    st = ferry__ucx_error(conn->failed, "peer process exited", conn->peer_name);
    (void)ferry__ucx_conn_abort(ctx, conn, st);
}

/* A system call costs about as much as a message on this host's shared
 * memory, so a connection's peer is asked after at most once per interval
 * (by the sends of msg.c and by prepare); an exit is then noticed within
 * it. */
#define UCX_ALIVE_NS 1000000ull

bool ferry__ucx_conn_alive(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    uint64_t now;

    if (conn->failed != UCS_OK || !conn->watched)
        return conn->failed == UCS_OK;
    now = ferry__now_ns();
    if (now < conn->next_alive_ns)
        return true;
    conn->next_alive_ns = now + UCX_ALIVE_NS;
    if (!ferry__pid_alive(conn->pidfd, conn->pid)) {
        ferry__info("ucx: peer '%s' (pid %d) has exited", conn->peer_name,
                    (int)conn->pid);
        ucx_fail(ctx, conn);
    }
    return conn->failed == UCS_OK;
}

ferry_status_t ferry__ucx_check_alive(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    if (ferry__ucx_conn_alive(ctx, conn))
        return FERRY_OK;
    return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
}

/* Fails the endpoints of same-host peers whose process has ended (from
 * progress(), every so often). */
void ferry__ucx_check_liveness(ucx_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->nwatched; i++) {
        ucx_conn_t *conn = ctx->watched[i];

        if (conn->failed != UCS_OK || ferry__pid_alive(conn->pidfd, conn->pid))
            continue;
        ferry__info("ucx: peer '%s' (pid %d) has exited", conn->peer_name,
                    (int)conn->pid);
        ucx_fail(ctx, conn);
    }
}

ferry_status_t ferry__ucx_conn_open(void *vctx, const uint8_t *addr,
                                    size_t len, const ferry__bk_peer_t *peer,
                                    void **conn_p)
{
    ucx_ctx_t *ctx = vctx;
    ucx_conn_t *conn;
    ferry_status_t st;

    conn = calloc(1, sizeof(*conn) + len);
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a connection");
    conn->pidfd = -1;
    conn->efd = -1;
    ferry__list_init(&conn->flushes);
    ferry__list_init(&conn->sends);
    ferry__list_init(&conn->rkeys);
    ferry__list_init(&conn->retired);
    ferry__list_init(&conn->link);
    snprintf(conn->peer_name, sizeof(conn->peer_name), "%s", peer->name);
    memcpy(conn->addr, addr, len);
    conn->err_mode = peer->same_host && !ctx->local_err_mode
                         ? UCP_ERR_HANDLING_MODE_NONE
                         : UCP_ERR_HANDLING_MODE_PEER;
    /* Loopback: this agent's own worker address, in its own blob. Another
     * agent of this process is a peer like any other: nobody may drive it,
     * and an abort must end what it was sent without its help. */
    conn->own_worker = !(len == ctx->address_len &&
                         memcmp(addr, ctx->address, len) == 0);
    conn->same_host = peer->same_host;
    conn->pid = peer->same_host ? (pid_t)peer->pid : 0;
    /* This process outlives its own agents: no pid to watch. */
    if (peer->same_host && peer->pid > 0 && peer->pid != (int32_t)getpid()) {
        st = ucx_watch(ctx, conn, (pid_t)peer->pid);
        if (st < 0)
            goto err_free;
    }
    FERRY_CHECK_GOTO(ucx_connect(ctx, conn), st, err_unwatch);
    ferry__list_add(&ctx->conns, &conn->link);
    *conn_p = conn;
    return FERRY_OK;

err_unwatch:
    if (conn->watched)
        ucx_unwatch(ctx, conn);
err_free:
    free(conn);
    return st;
}

void ferry__ucx_conn_close(void *vctx, void *vconn)
{
    ucx_ctx_t *ctx = vctx;
    ucx_conn_t *conn = vconn;

    if (conn->watched)
        ucx_unwatch(ctx, conn);
    /* The core closes a connection only once no request uses it and its
     * keys are closed; a flush left here would be a late callback, which
     * must not find this memory. */
    while (!ferry__list_empty(&conn->flushes))
        (void)ucx_orphan_first(conn);
    ucx_disconnect(ctx, conn, true);
    ferry__ucx_sends_drop(&conn->sends, NULL, conn->own_worker);
    ucx_retired_drop(ctx, conn);
    ferry__list_del(&conn->link);
    free(conn);
}

ferry_status_t ferry__ucx_rkey_open(void *vctx, void *vconn,
                                    const ferry__bk_rregion_t *region,
                                    const uint8_t *data, size_t len, void **rkey_p)
{
    ucx_conn_t *conn = vconn;
    ucx_rkey_t *k;
    ucs_status_t s;
    ferry_status_t st;
    size_t klen;

    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    k = calloc(1, sizeof(*k) + len);
    if (k == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a remote key");
    /* UCX trusts every byte of a key (rkey.c): only a vetted copy reaches
     * it, now and when a reconnect unpacks it again. */
    st = ferry__ucx_rkey_vet(vctx, conn, region, data, len, k->packed, &klen);
    if (st < 0) {
        free(k);
        return st;
    }
    k->conn = conn;
    /* After an abort the endpoint is reopened, and keys unpacked, at the
     * next post. */
    if (conn->ep != NULL) {
        s = ucp_ep_rkey_unpack(conn->ep, k->packed, &k->rkey);
        if (s != UCS_OK) {
            free(k);
            return ferry__ucx_error(s, "ucp_ep_rkey_unpack", conn->peer_name);
        }
    }
    ferry__list_add(&conn->rkeys, &k->link);
    *rkey_p = k;
    return FERRY_OK;
}

/* Keys are closed before their connection (peer.c). */
void ferry__ucx_rkey_close(void *vctx, void *vkey)
{
    ucx_rkey_t *k = vkey;

    (void)vctx;
    ucx_runs_wait(k->conn);
    if (k->rkey != NULL)
        ucp_rkey_destroy(k->rkey);
    ferry__list_del(&k->link);
    free(k);
}

/* Reopens a connection after an abort: a new worker, a new endpoint, and
 * every key of the connection unpacked again. A key that was mapped here
 * is mapped again at once: requests prepared to copy into it directly
 * count on it. */
ferry_status_t ferry__ucx_reconnect(ucx_ctx_t *ctx, ucx_conn_t *conn)
{
    ferry__list_t *l, *tmp;
    ferry_status_t st;
    ucs_status_t s;

    FERRY_CHECK(ucx_connect(ctx, conn));
    ferry__list_each(l, tmp, &conn->rkeys) {
        ucx_rkey_t *k = ferry__container_of(l, ucx_rkey_t, link);

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
    ucx_disconnect(ctx, conn, false);
    return st;
}

uint64_t ferry__ucx_conn_events(void *vctx, void *vconn)
{
    (void)vctx;
    return ((ucx_conn_t *)vconn)->events;
}
