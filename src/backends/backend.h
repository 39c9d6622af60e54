/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The contract between the core and a transport backend. A backend is one
 * const ops table (its size first, then its name, its wire id and its
 * capability flags) whose functions see only plain data and the backend's
 * own opaque handles: a context per agent, a local registration per region,
 * a connection per peer, an unpacked key per remote region and a plan per
 * prepared batch.
 *
 * Locking. The core calls every operation with the agent's lock held, so a
 * backend needs no locking of its own, with one exception: run(), the
 * second half of a post, which the posting thread calls after letting go
 * of the lock so that a bulk copy holds up no other thread. A backend whose
 * post() hands a batch to run() counts the runs in progress on the
 * connection and waits for them (with the lock held: run() never takes it)
 * before anything a run touches goes away: an abort, a reconnect, a closed
 * key or connection. The completion callback given to post() runs inside
 * progress(), under the lock.
 *
 * Indexing. The core knows a backend by its slot in ferry__backends[],
 * everywhere; the wire id appears only in the metadata blob (core/md.c).
 *
 * Every operation is set: an operation a backend cannot perform points to a
 * stub (below) that returns FERRY_ERR_UNSUPPORTED with a text, never NULL;
 * what the core may ask of a backend is said by its flags.
 */
#ifndef FERRY_BACKENDS_BACKEND_H
#define FERRY_BACKENDS_BACKEND_H

#include "ferry.h"
#include "util/buf.h"
#include "util/secret.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Backend ids as they appear in metadata blobs; never renumbered. */
enum {
    FERRY__BK_UCX = 1,
    FERRY__BK_CUDA_IPC = 2,
    FERRY__BK_STAGED = 3
};

/* Backends compiled in: the slots of ferry__backends[] (core/agent.c), by
 * which a region, a peer or a request keeps one handle per backend. */
#define FERRY__NBK 3

/* Backend flags: what the core may ask of it. */
enum {
    /* Reaches only peers on the same host (the blobs' host identities agree). */
    FERRY__BK_SAME_HOST_ONLY = 1u << 0,
    /* Its transfers are copies that post_stream() enqueues on a CUDA stream;
     * without it, the core starts the backend's parts from the progress
     * thread when a stream reaches a flag (src/core/stream.c). */
    FERRY__BK_STREAM_COPIES = 1u << 1,
    /* Carries notifications (msg_send, msg_listen): the core sends every
     * message through the first backend that has this flag. */
    FERRY__BK_MESSAGES = 1u << 2
};

/* What post() returns for a batch that the caller must finish with run(),
 * without the agent's lock: the batch is in flight until run() returns. */
#define FERRY__BK_RUN ((ferry_status_t)2)

/* One contiguous piece of a transfer, fully resolved at prepare. */
typedef struct ferry__bk_seg {
    uint64_t laddr;
    uint64_t raddr;
    uint64_t len;
    void *lreg; /* the backend's local registration of the region */
    void *rkey; /* the backend's unpacked key of the remote region */
} ferry__bk_seg_t;

/* Who a connection goes to. */
typedef struct ferry__bk_peer {
    const char *name; /* for messages */
    bool same_host;   /* same kernel and PID namespace (host identity) */
    int32_t pid;      /* the peer's process id, meaningful when same_host */
    bool sealed;      /* its blob carries a job secret's seal */
} ferry__bk_peer_t;

/* The remote region a key opens, as the peer's blob describes it: what a
 * backend checks the key against before handing it to its transport. */
typedef struct ferry__bk_rregion {
    uint32_t id;
    ferry_mem_kind_t kind;
    uint64_t addr;
    uint64_t len;
} ferry__bk_rregion_t;

/* Completion of a posted batch: called once, from progress(). */
typedef void (*ferry__bk_done_cb)(void *arg, ferry_status_t status);

/* A message received from a peer: called from progress(), under the lock;
 * data is valid only during the call. */
typedef void (*ferry__bk_msg_cb)(void *arg, const void *data, size_t len);

typedef struct ferry__backend_ops {
    size_t size; /* sizeof(ferry__backend_ops_t), for forward checks */
    const char *name;
    uint16_t id;
    unsigned flags; /* FERRY__BK_* */

    /* Creates the per-agent context. secret: the agent's job secret
     * (secret->set false without one), never NULL, which outlives the
     * context: a backend that authenticates its own messages keeps the
     * pointer (staged), the others ignore it. */
    ferry_status_t (*init)(const char *agent_name, const ferry__secret_t *secret,
                           void **ctx_p);
    void (*fini)(void *ctx);
    /* Whether memory of this kind can be registered (and so transferred). */
    bool (*supports_kind)(void *ctx, ferry_mem_kind_t kind);
    /* Appends the address peers need to connect to this context. */
    ferry_status_t (*pack_address)(void *ctx, ferry__wbuf_t *out);

    ferry_status_t (*mem_register)(void *ctx, const ferry_desc_t *desc,
                                   void **lreg_p);
    /* Appends what a peer needs to reach the region (its remote key); a
     * region for which nothing is appended is not advertised for this
     * backend (it serves only the local side of transfers). */
    ferry_status_t (*mem_pack)(void *ctx, void *lreg, ferry__wbuf_t *out);
    void (*mem_deregister)(void *ctx, void *lreg);

    /* Connects to a peer's packed address. */
    ferry_status_t (*conn_open)(void *ctx, const uint8_t *addr, size_t len,
                                const ferry__bk_peer_t *peer, void **conn_p);
    /* Closes a connection, waiting (bounded) for what is in flight. */
    void (*conn_close)(void *ctx, void *conn);
    /* Opens the key (data, len: the peer's bytes, unchecked) of a region
     * on a connection; bytes that do not fit the region or the peer are
     * FERRY_ERR_PROTOCOL, before the transport sees them. */
    ferry_status_t (*rkey_open)(void *ctx, void *conn, const ferry__bk_rregion_t *region,
                                const uint8_t *data, size_t len, void **rkey_p);
    void (*rkey_close)(void *ctx, void *rkey);
    /* Optional. Called without the agent lock, before a prepare takes it,
     * for each remote region that the prepare names and whose key is not
     * open yet: fetches now what rkey_open would otherwise wait for from the
     * peer under the lock (CUDA IPC: a VMM export's descriptors, which a
     * stopped peer's hand-off socket holds back for seconds), so that a
     * stopped peer holds only the preparing thread. addr: the peer's
     * address for this backend. Failures are kept for rkey_open to report. */
    void (*rkey_prefetch)(void *ctx, const uint8_t *addr, size_t addr_len,
                          const uint8_t *data, size_t len);
    /* With rkey_prefetch, under the lock at the end of a prepare that
     * called it: drops what it fetched from the peer at addr and no
     * rkey_open took (the prepare failed, or chose another backend), so
     * that nothing fetched outlives its prepare (a later export could
     * reuse the number it was fetched by). A concurrent prepare to the
     * same peer may lose its own fetches so: its import then fetches
     * under the lock, as without a prefetch. */
    void (*rkey_prefetch_end)(void *ctx, const uint8_t *addr, size_t addr_len);

    /*
     * Readies n segments on a connection that every post of one request
     * will start together (as post, run and post_stream receive them), once,
     * at prepare: for example opening the remote memory where the copy will
     * run, or finding that every segment lies in memory mapped here. What it
     * keeps for them goes to *plan_p (NULL for nothing), which the later
     * calls receive, until unprepare(). An error fails the prepare.
     */
    ferry_status_t (*prepare)(void *ctx, void *conn, const ferry__bk_seg_t *segs,
                              size_t n, void **plan_p);
    /* Frees what prepare() kept (the request is released). */
    void (*unprepare)(void *ctx, void *plan);
    /*
     * Starts n segments in one batch on a connection. Returns FERRY_OK if the
     * batch completed inline (cb is not called), FERRY_IN_PROGRESS if cb will
     * be called from a later progress(), FERRY__BK_RUN if the caller is to
     * move the batch with run() (cb is not called), or an error (nothing is
     * left in flight, cb is not called).
     */
    ferry_status_t (*post)(void *ctx, void *conn, void *plan, ferry_xfer_op_t op,
                           const ferry__bk_seg_t *segs, size_t n,
                           ferry__bk_done_cb cb, void *arg);
    /*
     * Moves a batch for which post() returned FERRY__BK_RUN, without the
     * agent's lock (the one operation called so), and returns its status:
     * the batch is complete when it returns. It touches only the segments'
     * memory and what post() kept valid for it.
     */
    ferry_status_t (*run)(void *ctx, void *conn, void *plan, ferry_xfer_op_t op,
                          const ferry__bk_seg_t *segs, size_t n);
    /* Drives the transport once; returns how many events it handled. */
    unsigned (*progress)(void *ctx);
    /* A file descriptor that becomes readable when progress() has work,
     * once arm() has returned FERRY_OK; -1 if the backend has none. */
    int (*event_fd)(void *ctx);
    /* Prepares event_fd() for sleeping: FERRY_OK; FERRY_IN_PROGRESS when
     * armed, but work that no fd signals is under way and needs progress
     * (a connection closing in the background): sleep a short nap at
     * most; or FERRY_ERR_BUSY when events are already pending (progress
     * first, then arm again). */
    ferry_status_t (*arm)(void *ctx);

    /*
     * Ends every batch in flight on the connection, calling each one's
     * callback with why (the detail text is the caller's last error), and
     * makes sure that the transport touches none of their memory any more:
     * FERRY_OK when that is done before it returns, FERRY_IN_PROGRESS when
     * the callbacks will come from a later progress(). The connection stays
     * usable: the next post reopens it.
     */
    ferry_status_t (*conn_abort)(void *ctx, void *conn, ferry_status_t why);
    /* A count that grows while the transport makes headway on the
     * connection (events handled): the core's stall check compares it. */
    uint64_t (*conn_events)(void *ctx, void *conn);
    /*
     * Enqueues n segments on a CUDA stream (a CUstream): stream-ordered
     * transfers of a backend whose transfers are copies
     * (FERRY__BK_STREAM_COPIES). Nothing is tracked: the stream orders what
     * follows.
     */
    ferry_status_t (*post_stream)(void *ctx, void *conn, void *plan,
                                  ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                  size_t n, void *stream);
    /*
     * Allocates len bytes of memory of the given kind that this backend
     * moves fastest, writing its address to *addr_p (UCX on one host:
     * shared memory that peers map and copy into directly). A later
     * mem_register of a range inside it uses the allocation's own
     * registration. FERRY_ERR_UNSUPPORTED for a kind it cannot allocate.
     */
    ferry_status_t (*mem_alloc)(void *ctx, size_t len, ferry_mem_kind_t kind,
                                void **addr_p);
    /* Frees an allocation from mem_alloc(): FERRY_ERR_NOT_FOUND if addr
     * starts none of this backend's, FERRY_ERR_BUSY while registrations
     * still use it. */
    ferry_status_t (*mem_free)(void *ctx, void *addr);
    /*
     * Sends len bytes (copied before it returns) as one message to the
     * connection's peer (FERRY__BK_MESSAGES): the peer's msg_listen()
     * callback receives it after everything that completed on the
     * connection before the call, and after the earlier messages on it.
     * FERRY_ERR_PEER_LOST when the peer is known to be gone.
     */
    ferry_status_t (*msg_send)(void *ctx, void *conn, const void *data, size_t len);
    /* Where the context delivers the messages peers send it (from
     * progress()); called once, before the first progress(). */
    ferry_status_t (*msg_listen)(void *ctx, ferry__bk_msg_cb cb, void *arg);
} ferry__backend_ops_t;

/* Stubs for the operations a backend does not need or cannot perform
 * (backend.c): a prepare that keeps nothing, and refusals. */
ferry_status_t ferry__bk_prepare_nothing(void *ctx, void *conn,
                                         const ferry__bk_seg_t *segs, size_t n,
                                         void **plan_p);
void ferry__bk_unprepare_nothing(void *ctx, void *plan);
ferry_status_t ferry__bk_run_unsupported(void *ctx, void *conn, void *plan,
                                         ferry_xfer_op_t op,
                                         const ferry__bk_seg_t *segs, size_t n);
ferry_status_t ferry__bk_post_stream_unsupported(void *ctx, void *conn, void *plan,
                                                 ferry_xfer_op_t op,
                                                 const ferry__bk_seg_t *segs,
                                                 size_t n, void *stream);

ferry_status_t ferry__bk_msg_send_unsupported(void *ctx, void *conn, const void *data,
                                             size_t len);
ferry_status_t ferry__bk_msg_listen_nothing(void *ctx, ferry__bk_msg_cb cb, void *arg);

extern const ferry__backend_ops_t ferry__ucx_ops;
/* For ferry-info: UCX's version, transports and memory types. */
void ferry__ucx_describe(FILE *out);
extern const ferry__backend_ops_t ferry__cuda_ipc_ops;
extern const ferry__backend_ops_t ferry__staged_ops;
/* For ferry-info: what the staged backend is for and its bounce buffers. */
void ferry__staged_describe(FILE *out);

#endif
