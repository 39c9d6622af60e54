/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The staged backend's private header: GPU memory to and from a peer on
 * another host through any UCX, by staging through host bounce buffers.
 * The files: staged.c (the context, its UCX context, registrations, keys,
 * connections, the ops table), plan.c (a request's chunks, planned once at
 * prepare), pool.c (the bounce buffers, the copies into and out of them,
 * and the table of operations in flight), initiator.c (posts: each chunk's
 * pipeline and the replies) and target.c (the target's part, served from
 * its progress). Not installed; the core sees only the ops table.
 *
 * The protocol (docs/STAGING.md draws it). Every message is a UCX active
 * message on the staging context's own worker, eager (the receiver never
 * has to fetch anything), with a 40-byte header (stg_hdr_t):
 *
 *   STG_AM_WRITE  initiator -> target: one chunk of a WRITE; the data is the
 *                 chunk's table (npieces stg_piece_t: the target's region
 *                 token and generation, address and length of each piece)
 *                 followed by its bytes, gathered from the initiator's
 *                 memory into an outgoing bounce buffer
 *   STG_AM_READ   initiator -> target: one chunk of a READ; the data is the
 *                 table alone
 *   STG_AM_REPLY  target -> initiator: a WRITE chunk's end (status, no
 *                 data: sent once the last byte is in the target's memory)
 *                 or a READ chunk's bytes (or its error)
 *
 * A WRITE or READ message's header is the stg_hdr_t followed by the UCX
 * address of the worker the initiator's connection sends from; with a job
 * secret, a seal (stg_seal_t) comes between them (below). The target
 * replies on an endpoint of its own to that worker (stg_rep_t), one per
 * connection and epoch, never on the message's reply endpoint: UCX owns
 * that one and frees it when the initiator's worker goes (an abort), which
 * a reply sent from a later progress (after a GPU copy, or a wait for a
 * bounce buffer) would then use. Its own endpoint stays until the target
 * closes it; its error callback marks it dead and replies to it are
 * dropped (the initiator has aborted: nobody waits for them).
 *
 * The header's cookie names the initiator's operation (stg_op_t, by index
 * and generation, which starts at a random value in each slot) and comes
 * back in the reply, which is checked against the operation before
 * anything of it is used: a late reply to an aborted operation is dropped,
 * and so is one that arrives on a worker other than its connection's (one
 * peer cannot end another's chunks). Its connection id and epoch (bumped
 * each time the initiator reconnects after an abort) let the target drop
 * a chunk that an aborted connection left on the way and that arrives
 * after one of its successor's: the old bytes never land over the retry's.
 * A reply echoes them, and the initiator checks them too.
 *
 * Seals (docs/STAGING.md). With a job secret every WRITE and READ header
 * is sealed (magic STG_MAGIC_SEALED, then stg_seal_t: the secret's key id
 * and an HMAC-SHA-256 with its stage_key over "chunk", the connection id,
 * the epoch and the worker address), made once per connection epoch; a
 * target with a secret checks it before anything of the header is used
 * and drops a chunk that fails, without a reply: the address reaches UCX
 * only once its seal verifies, and a forger cannot touch an epoch or an
 * endpoint. A reply is sealed too (HMAC over "reply" and its 40-byte
 * header) and an initiator with a secret drops one that is not. A party
 * without a secret skips a seal (and sends none): without a secret the
 * network is trusted, the worker address included.
 *
 * Flow control. An initiator keeps at most FERRY_STAGE_CHUNKS chunks in
 * flight to one peer (the connection's credits) and a chunk needs a bounce
 * buffer of its own: the outgoing pool's for a WRITE (gathered, then sent),
 * the incoming pool's for a READ (received, then scattered). A target serves
 * a WRITE chunk into its incoming pool and a READ chunk out of its
 * outgoing pool; a chunk that finds the pool empty waits in a FIFO queue,
 * holding UCX's copy of the message, until a buffer frees: the target
 * delays, never drops. The queues are bounded by the initiators' credits.
 * Outgoing and incoming buffers are separate pools, so two agents that
 * WRITE to each other cannot deadlock on them.
 *
 * Locking: everything runs under the agent's lock, in post() and in
 * progress(), which delivers the messages.
 */
#ifndef FERRY_BACKENDS_STAGED_STAGED_H
#define FERRY_BACKENDS_STAGED_STAGED_H

#include "backends/backend.h"
#include "backends/ucx/ucx.h"
#include "cuda/cuda.h"
#include "util/list.h"
#include "util/secret.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Active message ids (the UCX backend's notifications use 0x4e46). */
#define STG_AM_WRITE 0x4e47u
#define STG_AM_READ 0x4e48u
#define STG_AM_REPLY 0x4e49u

#define STG_MAGIC 0x47545346u        /* "FSTG": unsealed */
#define STG_MAGIC_SEALED 0x53545346u /* "FSTS": a stg_seal_t follows the header */

/* The most pieces one chunk carries: bounds a chunk's table (96 KiB). */
#define STG_MAX_PIECES 4096u
#define STG_TABLE_MAX ((size_t)STG_MAX_PIECES * sizeof(stg_piece_t))

/* The most CUDA devices one chunk's copies touch at once. */
#define STG_MAX_DEVS 8

/* Every message's header, in the host's byte order (little-endian hosts). */
typedef struct stg_hdr {
    uint32_t magic;
    uint16_t type;     /* STG_AM_* of the message (a reply: STG_AM_WRITE or
                          STG_AM_READ, the kind of chunk it answers) */
    uint16_t epoch;    /* WRITE, READ: the connection's, bumped by each
                          reconnect after an abort */
    int32_t status;    /* replies: FERRY_OK or the target's error */
    uint32_t npieces;  /* WRITE, READ: entries of the table */
    uint64_t cookie;   /* the initiator's operation, echoed in the reply */
    uint64_t bytes;    /* the chunk's bytes */
    uint64_t conn_id;  /* WRITE, READ: the initiator's connection (random) */
} stg_hdr_t;

_Static_assert(sizeof(stg_hdr_t) == 40, "the header is 40 bytes on the wire");

/* A seal: which secret made it, and the MAC (40 bytes on the wire). */
typedef struct stg_seal {
    uint8_t key_id[FERRY__KEY_ID_LEN]; /* ferry__secret_t.id */
    uint8_t mac[FERRY__MAC_LEN];
} stg_seal_t;

/* The longest worker address a WRITE or READ header carries. */
#define STG_ADDR_MAX 4096u

/* A message's header as an op sends it: the stg_hdr_t, then, sealed, the
 * stg_seal_t, then (WRITE, READ) the connection's worker address. */
typedef struct stg_msg_hdr {
    stg_hdr_t h;
    uint8_t tail[sizeof(stg_seal_t) + STG_ADDR_MAX];
} stg_msg_hdr_t;
_Static_assert(offsetof(stg_msg_hdr_t, tail) == sizeof(stg_hdr_t),
               "the seal or the address follows the header");

/* A target's endpoint to an initiator connection's worker, for the
 * replies to that connection's chunks of one epoch (target.c). */
typedef struct stg_rep {
    uint64_t id;        /* the connection */
    uint16_t epoch;
    ucp_ep_h ep;        /* NULL once closed */
    bool dead;          /* its error callback ran, a reply failed, or a newer
                           epoch came: replies to it are dropped */
    unsigned refs;      /* target ops that hold it */
    ferry__list_t link; /* ctx->reps */
    uint8_t mac[FERRY__MAC_LEN]; /* with a secret: the seal that opened it,
                                    which later chunks of the epoch repeat */
} stg_rep_t;

/* How many initiator connections a target remembers the epoch of. */
#define STG_EPOCHS 256

/* One piece of a chunk as the wire carries it: where it goes (WRITE) or
 * comes from (READ) in the target. */
typedef struct stg_piece {
    uint32_t token; /* the target's registration (its key) */
    uint32_t gen;   /* and that registration's generation */
    uint64_t addr;
    uint64_t len;
} stg_piece_t;

/* A registration: what a key names (the target's side) and how the local
 * side of a chunk is copied (the initiator's). */
typedef struct stg_reg {
    uint32_t token, gen;
    ferry_mem_kind_t kind;
    int device; /* CUDA memory: its device */
    uint64_t addr, len;
} stg_reg_t;

/* The key of a peer's region: its token and generation. */
typedef struct stg_rkey {
    uint32_t token, gen;
} stg_rkey_t;

/* One chunk of a request's plan: pieces [first, first + n) of the plan. */
typedef struct stg_chunk {
    uint32_t first, n;
    uint64_t bytes;
} stg_chunk_t;

/* A request's run in flight: its place in the queue of runs with chunks
 * left to start, and what each post resets. */
typedef struct stg_run {
    ferry__list_t link; /* ctx->runs while in flight */
    struct stg_conn *conn;
    ferry_xfer_op_t op;
    ferry__bk_done_cb cb;
    void *arg;
    uint32_t next;     /* the next chunk to start */
    uint32_t inflight; /* chunks started and not ended */
    ferry_status_t status; /* the first failure */
    char why[256];         /* its text */
} stg_run_t;

/*
 * A request's plan (plan.c): its segments cut into pieces of at most one
 * chunk and grouped into chunks of at most chunk bytes and STG_MAX_PIECES
 * pieces; the wire table (the target's side of every piece) is built once,
 * here. Local piece i is laddr[i] (of kind ldev[i]: -1 host, else the CUDA
 * device), the same length as table[i].
 */
typedef struct stg_plan {
    size_t npieces, nchunks;
    uint64_t *laddr, *llen;
    int *ldev;
    stg_piece_t *table;
    stg_chunk_t *chunks;
    uint64_t total;
    stg_run_t run;
} stg_plan_t;

/* Plans n segments (plan.c): lreg and rkey of each are a stg_reg_t and a
 * stg_rkey_t. FERRY_ERR_NO_MEMORY, or FERRY_OK with *plan_p. */
ferry_status_t ferry__stg_plan(const ferry__bk_seg_t *segs, size_t n, uint64_t chunk,
                               stg_plan_t **plan_p);
void ferry__stg_plan_free(stg_plan_t *plan);

/*
 * A pool of bounce buffers (pool.c), page-locked and mapped for the GPU
 * (cuMemHostAlloc) where CUDA is loaded, allocated on first use. Each slot
 * is, in order: the copy kernel's table for the chunk's GPU pieces (ktab
 * bytes: read by the kernel where it lies), the wire table (STG_TABLE_MAX
 * bytes, the last tlen of them used, so that table and data are one
 * message), the data (a chunk).
 */
typedef struct stg_pool {
    uint8_t *base;
    CUdeviceptr dbase; /* base as the GPU addresses it (pinned only) */
    size_t slot_size, ktab;
    unsigned nslots, nfree;
    unsigned init_held; /* slots that initiator ops hold */
    unsigned *free; /* a stack of free slot indices */
    bool pinned;
} stg_pool_t;

/* Where a slot's data begins (its wire table ends there). */
static inline uint8_t *stg_slot(const stg_pool_t *p, unsigned slot)
{
    return p->base + (size_t)slot * p->slot_size + p->ktab + STG_TABLE_MAX;
}

/* Where a slot's kernel table begins. */
static inline uint8_t *stg_slot_ktab(const stg_pool_t *p, unsigned slot)
{
    return p->base + (size_t)slot * p->slot_size;
}

enum stg_state {
    STG_FREE = 0,
    STG_COPYING,   /* copies into or out of the bounce buffer are running */
    STG_SENDING,   /* a message of ours is in flight */
    STG_WAITING,   /* initiator: for the target's reply */
    STG_QUEUED,    /* target: for a bounce buffer */
    STG_DELAYED    /* target: its reply held back (FERRY_STAGE_TEST_REPLY_DELAY_MS) */
};

/* An operation in flight: one chunk, on either side. */
typedef struct stg_op {
    struct stg_ctx *ctx;
    uint32_t index;    /* in the context's table */
    uint32_t gen;      /* bumped when freed: stale cookies miss */
    int state;         /* enum stg_state */
    bool target;       /* the target's part of a chunk */
    bool sent, acked;  /* initiator WRITE: sent, and the target's reply came */
    uint16_t type;     /* STG_AM_WRITE or STG_AM_READ */
    stg_pool_t *pool;  /* the pool of its bounce buffer, if it holds one */
    unsigned slot;
    /* Initiator: */
    stg_plan_t *plan;
    uint32_t chunk;
    /* Target: */
    stg_rep_t *rep;    /* where the reply goes (a reference) */
    uint64_t due;      /* STG_DELAYED: when the reply leaves */
    ferry_status_t dstatus; /* and the status of its copies */
    bool delayed;      /* its reply has been held back once */
    uint64_t cookie;   /* the initiator's */
    uint32_t npieces;
    uint64_t bytes;
    void *data;        /* the message's data while it waits (held) */
    size_t data_len;
    bool held;         /* data is UCX's (ucp_am_data_release), else malloc'd */
    stg_msg_hdr_t hdr; /* of the message it sends, valid until sent (a
                          reply's: hdr.h alone) */
    void *req;         /* that message's UCX request while in flight */
    ferry__list_t link; /* ctx->waitq while queued (target) */
    /* Copies on CUDA streams: an event per device that has some. */
    unsigned nev;
    uint32_t kt_used;  /* entries of the slot's kernel table in use */
    CUevent ev[STG_MAX_DEVS];
    int evdev[STG_MAX_DEVS];
} stg_op_t;

typedef struct stg_conn {
    ucx_conn_t *uc;       /* the UCX connection under it */
    uint64_t id;          /* random: tells the target which connection */
    uint16_t epoch;       /* bumped by each reconnect after an abort */
    ferry__list_t link;   /* ctx->conns */
    unsigned inflight;    /* chunks in flight: at most ctx->credits */
    uint64_t events;      /* replies received: the stall check's headway */
    uint64_t waits;       /* stall checks that found it waiting for buffers
                             that other connections' chunks hold */
    unsigned runs;        /* runs posted on it and not ended */
    uint8_t *addr;        /* the address of its worker, sent in every chunk */
    size_t alen;
    uint16_t addr_epoch;  /* the epoch addr and seal are of */
    stg_seal_t seal;      /* with a secret: addr's seal, sent in every chunk */
} stg_conn_t;

typedef struct stg_ctx {
    ucx_ctx_t *ucx;       /* its own UCX context and worker */
    const ferry__secret_t *secret; /* the agent's: seals, when set */
    ferry__mac_key_t *stage_mac;   /* its stage_key, readied (set only) */
    uint64_t chunk;       /* FERRY_STAGE_CHUNK */
    unsigned credits;     /* FERRY_STAGE_CHUNKS */
    bool pin;             /* pools page-locked when CUDA is loaded */
    stg_pool_t out, in;   /* outgoing (gathered, sent) and incoming */
    stg_reg_t **regs;     /* by token; NULL when free */
    uint32_t nregs, capregs;
    uint32_t next_gen;
    stg_op_t **opblocks;  /* operations by index, in blocks that never move */
    size_t nops, capops;
    uint32_t *freeops;
    size_t nfreeops;
    ferry__list_t runs;    /* stg_run_t in flight, oldest first */
    /* Target: the newest epoch seen of recent initiator connections, so
     * that chunks an aborted connection left on the way and that arrive
     * after its successor's are dropped, not applied over newer bytes. */
    struct {
        uint64_t id;
        uint16_t epoch;
    } epochs[STG_EPOCHS];
    unsigned next_epoch; /* the entry the next new connection takes */
    ferry__list_t conns;   /* stg_conn_t */
    ferry__list_t reps;    /* stg_rep_t: the target's reply endpoints */
    uint64_t reply_delay_ns; /* FERRY_STAGE_TEST_REPLY_DELAY_MS (tests) */
    size_t ndelayed;       /* target ops in STG_DELAYED */
    /* Scratch for one chunk's copies (target side). */
    uint64_t smem[STG_MAX_PIECES], slen[STG_MAX_PIECES];
    int sdev[STG_MAX_PIECES];
    ferry__list_t waitq[2]; /* target ops queued for a buffer: [0] in, [1] out */
    size_t ncopying;       /* ops with copies on CUDA streams */
    CUstream streams[STG_MAX_DEVS]; /* per device, created on first use */
    unsigned handled;      /* events handled by this progress() */
} stg_ctx_t;

/* pool.c: bounce buffers. */
ferry_status_t ferry__stg_pool_take(stg_ctx_t *ctx, stg_pool_t *p, unsigned *slot_p);
void ferry__stg_pool_put(stg_pool_t *p, unsigned slot);
void ferry__stg_pool_free(stg_pool_t *p);

/* pool.c: operations by cookie. */
ferry_status_t ferry__stg_op_new(stg_ctx_t *ctx, stg_op_t **op_p);
/* Frees op: its bounce buffer back to its pool, its events destroyed, its
 * generation bumped. */
void ferry__stg_op_free(stg_ctx_t *ctx, stg_op_t *op);
/* Gives op's bounce buffer, if it holds one, back to its pool. */
void ferry__stg_op_put_slot(stg_op_t *op);
uint64_t ferry__stg_cookie(const stg_ctx_t *ctx, const stg_op_t *op);
/* The operation a cookie names, or NULL when it names none (any more). */
stg_op_t *ferry__stg_op_find(stg_ctx_t *ctx, uint64_t cookie);
/* Calls fn on every operation in use (fn may free it). */
void ferry__stg_ops_each(stg_ctx_t *ctx, void (*fn)(stg_ctx_t *, stg_op_t *, void *),
                         void *arg);
void ferry__stg_ops_free_all(stg_ctx_t *ctx);

/* pool.c: copies between memory and a bounce buffer. For each of n pieces,
 * len[i] bytes between mem[i] (device dev[i]: -1 for host memory) and
 * buf + the sum of the lengths before it; to_buf: into the buffer. Host
 * pieces are copied before it returns; CUDA pieces are enqueued on the
 * device's stream and op->ev records their end (op->nev > 0): the op is
 * then in ctx->copying until ferry__stg_copies_done() says so. */
ferry_status_t ferry__stg_copy(stg_ctx_t *ctx, stg_op_t *op, uint8_t *buf, bool to_buf,
                               const uint64_t *mem, const uint64_t *len, const int *dev,
                               size_t n);
/* Whether op's CUDA copies have ended (FERRY_OK), not yet
 * (FERRY_IN_PROGRESS), or failed. */
ferry_status_t ferry__stg_copies_done(stg_ctx_t *ctx, stg_op_t *op);
/* Destroys op's events (its copies have ended) and takes it off the count
 * of ops copying. */
void ferry__stg_events_drop(stg_ctx_t *ctx, stg_op_t *op);
/* Waits for every copy on the context's streams (before an abort frees
 * buffers that copies may still use). */
void ferry__stg_copies_sync(stg_ctx_t *ctx);

/* staged.c: the MAC of a chunk's seal (conn id, epoch, worker address) and
 * of a reply's (its header), with the context's stage key. */
ferry_status_t ferry__stg_chunk_mac(stg_ctx_t *ctx, uint64_t conn_id, uint16_t epoch,
                                    const void *addr, size_t alen,
                                    uint8_t mac[FERRY__MAC_LEN]);
ferry_status_t ferry__stg_reply_mac(stg_ctx_t *ctx, const stg_hdr_t *h,
                                    uint8_t mac[FERRY__MAC_LEN]);
/* For a context with a secret: why a message's seal (NULL: it has none)
 * cannot vouch for it before its MAC is even looked at (not sealed, or
 * by another secret), or NULL when its MAC is to be checked. */
const char *ferry__stg_seal_refusal(const stg_ctx_t *ctx, const stg_seal_t *seal);

/* initiator.c. */
ferry_status_t ferry__stg_post(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                               const ferry__bk_seg_t *segs, size_t n,
                               ferry__bk_done_cb cb, void *arg);
/* Starts the chunks that credits and buffers allow. */
void ferry__stg_pump(stg_ctx_t *ctx);
/* Reports the runs that have ended (all of them, or conn's only). */
void ferry__stg_runs_finish(stg_ctx_t *ctx, stg_conn_t *conn);
/* The completion of a message an op sent (a ucp_send_nbx_callback_t). */
void ferry__stg_sent(void *request, ucs_status_t status, void *user_data);
/* Sends op's message (hdr, hlen bytes, then len bytes at data) on ep as
 * active message id, eager (the data leaves with the message, and a peer
 * never has to come back for it: docs/STAGING.md), completing in
 * ferry__stg_sent; marks op STG_SENDING. Returns what ucp_am_send_nbx
 * returned. */
ucs_status_ptr_t ferry__stg_am_send(stg_op_t *op, ucp_ep_h ep, unsigned id, const void *hdr,
                                    size_t hlen, const void *data, size_t len);
/* An initiator op whose copies ended. */
void ferry__stg_init_copied(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st);
/* Gives every run on conn that has not failed the status why (the detail
 * text: the caller's last error); they end once their chunks have. */
void ferry__stg_conn_fail(stg_ctx_t *ctx, stg_conn_t *conn, ferry_status_t why);
/* Ends every run on conn with why (the detail text is the caller's last
 * error), at once: the connection's worker is destroyed first. */
void ferry__stg_conn_end(stg_ctx_t *ctx, stg_conn_t *conn, ferry_status_t why);
ucs_status_t ferry__stg_on_reply(void *arg, const void *header, size_t header_length,
                                 void *data, size_t length,
                                 const ucp_am_recv_param_t *param);

/* target.c. */
ucs_status_t ferry__stg_on_request(void *arg, const void *header, size_t header_length,
                                   void *data, size_t length,
                                   const ucp_am_recv_param_t *param);
/* A target op whose copies ended. */
void ferry__stg_target_copied(stg_ctx_t *ctx, stg_op_t *op, ferry_status_t st);
/* Drops op's reference to its reply endpoint. */
void ferry__stg_rep_put(stg_ctx_t *ctx, stg_op_t *op);
/* Closes the reply endpoints that are dead (all of them: at the end). */
void ferry__stg_reps_close(stg_ctx_t *ctx, bool all);
/* Sends the replies that FERRY_STAGE_TEST_REPLY_DELAY_MS held back and
 * whose time has come. */
void ferry__stg_replies_due(stg_ctx_t *ctx);
/* Serves the queued target ops that a freed buffer lets start. */
void ferry__stg_serve_queued(stg_ctx_t *ctx);
/* The registration a piece names, if the piece lies inside it. */
const stg_reg_t *ferry__stg_reg_find(const stg_ctx_t *ctx, const stg_piece_t *p);

#endif
