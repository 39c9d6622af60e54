/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The UCX backend's private header: the types its files share (the context,
 * allocations, registrations, connections, remote keys and our part of
 * every UCX request) and the functions one file offers the others. The
 * files: ucx.c (the context, its workers' progress and sleep, the ops
 * table), conn.c (connections, liveness, aborts, remote keys), xfer.c
 * (posts: UCX's put/get and flush, and the mapped-memory fast path),
 * mem.c (registrations and allocations), msg.c (notifications as active
 * messages). Not installed; the core sees only
 * the ops table (backends/backend.h).
 */
#ifndef FERRY_BACKENDS_UCX_UCX_H
#define FERRY_BACKENDS_UCX_UCX_H

#include "backends/backend.h"
#include "util/list.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <ucp/api/ucp.h>

/* A segment from mem_alloc(); registrations inside it share its handle. */
typedef struct ucx_alloc {
    void *addr;
    size_t len;
    ucp_mem_h memh;
    unsigned regs; /* registrations using it */
    ferry__list_t link; /* ctx->allocs */
} ucx_alloc_t;

/* The most memory domains a UCP context has (the bits of a key's md_map). */
#define UCX_MAX_MDS 64

/* One of the context's memory domains, as a peer's key names it by index
 * (rkey.c). */
typedef struct ucx_md {
    char name[16]; /* UCT_MD_NAME_MAX */
    char cmpt[16]; /* UCT_COMPONENT_NAME_MAX: the component, e.g. "sysv" */
    size_t key_size; /* its rkey_packed_size */
    enum { UCX_SHM_NONE, UCX_SHM_SYSV, UCX_SHM_POSIX } shm; /* what a key attaches */
} ucx_md_t;

/* The most active-message handlers a context installs (ferry__ucx_am_listen). */
#define UCX_MAX_AM 4

typedef struct ucx_ctx {
    ucp_context_h context;
    ucp_worker_h worker; /* serves peers; its address is advertised */
    ucp_worker_h anchor; /* never progressed: see ucx_anchor_open() */
    ucp_ep_h anchor_ep;  /* from worker to anchor, never used */
    ucp_address_t *address;
    size_t address_len;
    uint64_t memory_types;
    bool local_err_mode; /* same-host peers get UCX error handling too */
    /* An abort of a connection over TCP keeps its worker, retired, rather
     * than destroying it (conn.c): the default; the staged backend's
     * context, whose peers must see their replies fail, turns it off. */
    bool retire_tcp;
    int epfd; /* every worker's event fd and the watched peers' pidfds */
    ferry__list_t conns; /* every open connection (ucx_conn_t) */
    ferry__list_t closing; /* endpoints closing after their connection (conn.c) */
    struct ucx_conn **watched; /* same-host connections */
    size_t nwatched, capwatched;
    uint64_t next_check_ns;
    ferry__list_t allocs; /* ucx_alloc_t */
    size_t nt_min; /* mapped copies this large bypass the cache */
    bool vet; /* peers' keys are checked (rkey.c knows this UCX's layout) */
    unsigned nmds;
    ucx_md_t mds[UCX_MAX_MDS];
    ferry__bk_msg_cb msg_cb; /* where received notifications go (msg.c) */
    void *msg_arg;
    /* Active-message handlers that every worker of the context gets: the
     * context's own and each connection's (ferry__ucx_am_listen). */
    ucp_am_handler_param_t am[UCX_MAX_AM];
    unsigned nam;
    bool progressing; /* inside ucp_worker_progress: no nested progress */
    /* The worker inside ferry__ucx_worker_progress now, else NULL: its
     * callbacks learn which connection a message came in on. */
    ucp_worker_h current;
} ucx_ctx_t;

typedef struct ucx_reg {
    ucp_mem_h memh;
    ucx_alloc_t *alloc; /* the allocation it lies in, or NULL */
    void *rkey_buf;
    size_t rkey_len;
} ucx_reg_t;

/* Our part of every UCX request (request_size): the flush's completion,
 * linked into its connection's list of flushes in flight; or a message
 * send in flight (msg.c), with the copy of the message it owns, linked
 * into the connection's list of sends. */
typedef struct ucx_req {
    ferry__bk_done_cb cb;
    void *arg;
    struct ucx_conn *conn; /* NULL once orphaned by a dead peer */
    ferry__list_t link;    /* conn->flushes or conn->sends */
    ucs_status_t deferred; /* an error from posting, reported at flush end */
    void *buf;             /* a send's message, freed when it ends */
} ucx_req_t;

/* A remote key, unpacked on its connection's current endpoint: NULL after
 * an abort until the next post unpacks it again from the packed copy; and
 * whether the region is mapped here (ucp_rkey_ptr): then remote address a
 * is local address a + delta, for as long as the key stays unpacked. */
typedef struct ucx_rkey {
    ucp_rkey_h rkey;
    enum { UCX_PTR_UNKNOWN, UCX_PTR_MAPPED, UCX_PTR_NONE } ptr;
    uintptr_t delta;
    uint64_t probe; /* a remote address in the region, once it was mapped */
    struct ucx_conn *conn;
    ferry__list_t link; /* conn->rkeys */
    uint8_t packed[];
} ucx_rkey_t;

typedef struct ucx_conn {
    ucp_worker_h worker; /* NULL after an abort */
    bool own_worker;     /* false: the context's (a loopback connection) */
    ucp_ep_h ep;
    int efd;             /* the worker's event fd, in ctx->epfd */
    uint64_t events;     /* events its worker handled: the stall check's mark */
    ucp_err_handling_mode_t err_mode;
    ucs_status_t failed; /* UCS_OK until the peer is known to be gone */
    bool same_host;      /* the blob's host identity is this host's */
    bool watched;        /* same host: liveness through pid/pidfd */
    int pidfd;           /* -1 when pidfd_open was refused */
    pid_t pid;
    ferry__list_t flushes; /* in flight on this endpoint (ucx_req_t) */
    ferry__list_t sends;   /* messages in flight on it (ucx_req_t, msg.c) */
    bool wired;            /* a message has left on this endpoint (msg.c) */
    bool wireup_waited;    /* a send waited for its wire-up once (msg.c) */
    uint64_t next_alive_ns; /* when a send next asks after the peer's pid */
    bool tcp;              /* its endpoint's active messages go over TCP */
    ferry__list_t retired; /* workers aborts took off it (TCP), never progressed */
    unsigned nretired;
    atomic_uint runs;      /* run()s copying into its mapped keys */
    ferry__list_t rkeys;   /* ucx_rkey_t */
    ferry__list_t link;    /* ctx->conns */
    char peer_name[256];
    uint8_t addr[]; /* the peer's worker address, for reconnecting */
} ucx_conn_t;

/* ucx.c: records "ucx: <call>: <ucs text>" (and the peer, if not NULL) and
 * returns the mapped status. */
ferry_status_t ferry__ucx_error(ucs_status_t s, const char *call, const char *peer);

/* ucx.c: ucp_worker_progress(worker), with ctx->current set to worker
 * meanwhile (and restored after), so that an active-message handler can
 * tell which connection's worker a message arrived on (the staged
 * backend's replies must come in on their own connection's). Every
 * progress of this backend's workers goes through here. */
unsigned ferry__ucx_worker_progress(ucx_ctx_t *ctx, ucp_worker_h worker);

/* ucx.c: a context whose UCP context selects the transports tls (UCX_TLS
 * syntax; empty: UCX's choice) instead of FERRY_UCX_TLS's, with the UCX
 * settings cfg (NULL, or name/value pairs ending with a NULL name: "name"
 * is UCX_name without the prefix) applied, for a backend built on this one
 * (backends/staged). */
ferry_status_t ferry__ucx_init_tls(const char *agent_name, const char *tls,
                                   const char *const *cfg, void **ctx_p);
/* Installs an active-message handler (hp, its id, callback, argument and
 * flags set) on the context's worker, and on the worker of every
 * connection opened or reopened later: replies that a peer sends through
 * the reply endpoint of a message arrive on the connection's worker.
 * Before the first connection; at most UCX_MAX_AM handlers. */
ferry_status_t ferry__ucx_am_listen(ucx_ctx_t *ctx, const ucp_am_handler_param_t *hp);

/* conn.c: connections, liveness and keys. */
ferry_status_t ferry__ucx_conn_open(void *vctx, const uint8_t *addr, size_t len,
                                    const ferry__bk_peer_t *peer, void **conn_p);
void ferry__ucx_conn_close(void *vctx, void *vconn);
ferry_status_t ferry__ucx_conn_abort(void *vctx, void *vconn, ferry_status_t why);
uint64_t ferry__ucx_conn_events(void *vctx, void *vconn);
ferry_status_t ferry__ucx_rkey_open(void *vctx, void *vconn,
                                    const ferry__bk_rregion_t *region,
                                    const uint8_t *data, size_t len, void **rkey_p);
void ferry__ucx_rkey_close(void *vctx, void *vkey);
/* Reopens a connection after an abort (its worker is NULL). */
ferry_status_t ferry__ucx_reconnect(ucx_ctx_t *ctx, ucx_conn_t *conn);
/* PEER_LOST (and the connection failed) if a same-host peer's process has
 * ended, even before progress() noticed: prepare promises it. */
ferry_status_t ferry__ucx_check_alive(ucx_ctx_t *ctx, ucx_conn_t *conn);
/* Fails the connections of same-host peers whose process has ended (from
 * progress(), every so often). */
void ferry__ucx_check_liveness(ucx_ctx_t *ctx);

/* Drives the polite closes that outlived their connections (each on its
 * own worker, see ucx_close_later() in conn.c) once, destroying the workers
 * of those that ended or ran out of time; with drain, until none is left
 * (at most a second). Under the agent's lock, like everything here. */
void ferry__ucx_closing_progress(ucx_ctx_t *ctx, bool drain);

/* rkey.c: the context's memory domains, read once at init, and the check of
 * a peer's packed key against them, its region and its process: the key
 * UCX may see goes to out (len bytes at most; shared-memory keys of a peer
 * on another host are dropped), its length to *out_len. FERRY_ERR_PROTOCOL
 * for a key that does not fit, FERRY_ERR_PEER_LOST when the peer's segment
 * is gone with its process. */
ferry_status_t ferry__ucx_mds_init(ucx_ctx_t *ctx);
ferry_status_t ferry__ucx_rkey_vet(ucx_ctx_t *ctx, ucx_conn_t *conn,
                                   const ferry__bk_rregion_t *region, const uint8_t *data,
                                   size_t len, uint8_t *out, size_t *out_len);

/* xfer.c: posts. */
ferry_status_t ferry__ucx_prepare(void *vctx, void *vconn, const ferry__bk_seg_t *segs,
                                  size_t n, void **plan_p);
ferry_status_t ferry__ucx_post(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                               const ferry__bk_seg_t *segs, size_t n,
                               ferry__bk_done_cb cb, void *arg);
ferry_status_t ferry__ucx_run(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                              const ferry__bk_seg_t *segs, size_t n);
/* Where remote address raddr of rk's region lies in this process, or NULL
 * if it is not mapped here. */
void *ferry__ucx_mapped(ucx_rkey_t *rk, uint64_t raddr);

/* msg.c: notifications. The active message id they travel under. */
#define FERRY__UCX_AM_NOTIF 0x4e46u
ferry_status_t ferry__ucx_msg_send(void *vctx, void *vconn, const void *data,
                                   size_t len);
ferry_status_t ferry__ucx_msg_listen(void *vctx, ferry__bk_msg_cb cb, void *arg);
/* Takes every message off sends (a connection's, or a closing's,
 * conn.c), each no longer its connection's: onto the list to, whose
 * worker still carries them (a polite close), or, with to NULL, dropped;
 * with destroyed true their worker is gone, so UCX will not report them
 * and their buffers are freed here. */
void ferry__ucx_sends_drop(ferry__list_t *sends, ferry__list_t *to, bool destroyed);
/* conn.c: fails a same-host connection whose peer process has ended
 * (asking at most once a millisecond); returns whether it still looks
 * alive. */
bool ferry__ucx_conn_alive(ucx_ctx_t *ctx, ucx_conn_t *conn);

/* mem.c: registrations and allocations. */
ferry_status_t ferry__ucx_mem_register(void *vctx, const ferry_desc_t *desc,
                                       void **lreg_p);
ferry_status_t ferry__ucx_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out);
void ferry__ucx_mem_deregister(void *vctx, void *lreg);
ferry_status_t ferry__ucx_mem_alloc(void *vctx, size_t len, ferry_mem_kind_t kind,
                                    void **addr_p);
ferry_status_t ferry__ucx_mem_free(void *vctx, void *addr);
/* Frees the allocations the user left (the context goes away). */
void ferry__ucx_allocs_free(ucx_ctx_t *ctx);

#endif
