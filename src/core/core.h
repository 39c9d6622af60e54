/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private structures of the core: the agent, its registrations, its peers
 * and its requests, and the relations between them.
 *
 * Ownership and locking. The agent's one mutex guards everything below it:
 * the registry, the peer list, every backend call but run() and every
 * request's in-flight state. Two exceptions, both in xfer.c: a backend's
 * run() (a copy into mapped memory) happens after the posting thread let
 * go of the lock, and a "lone" post (every part a run) is ended by that
 * thread with atomic stores unless another thread claimed the request
 * (ferry__xfer_claim_locked). A request's state word is also read without
 * the lock by test/wait, so that a finished request is reported without
 * contention.
 *
 * Lifetimes are reference counts held under the lock:
 *  - a ferry_mem_t is referenced by the registry (until deregistered) and
 *    by every prepared request that uses one of its regions; "active" counts
 *    the requests in flight, which make deregistration BUSY;
 *  - a peer's metadata is a ferry__remote_t, referenced by the peer (until
 *    replaced or forgotten) and by every prepared request;
 *  - the metadata versions of one running instance of a peer share a
 *    ferry__inst_t that holds the backend connections, so reloading a blob
 *    after new registrations keeps the endpoints and earlier requests; when
 *    the peer is forgotten or a new instance appears under its name, the
 *    old instance is retired and every request on it refuses to post with
 *    PEER_LOST.
 */
#ifndef FERRY_CORE_CORE_H
#define FERRY_CORE_CORE_H

#include "backends/backend.h"
#include "core/md.h"
#include "util/imap.h"
#include "util/list.h"
#include "util/status.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct ferry__region {
    ferry_desc_t desc;
    uint32_t id; /* unique within the agent, advertised in blobs */
    ferry_mem_t *mem;
    void *lreg[FERRY__NBK]; /* each backend's registration, or NULL */
} ferry__region_t;

struct ferry_mem {
    ferry_agent_t *agent;
    ferry__list_t link;
    unsigned refs;   /* the registry's one plus one per prepared request */
    /* Requests in flight that use this memory: changed under the lock, but
     * for the end of a lone copy (xfer.c), hence atomic. */
    _Atomic unsigned active;
    bool dead;       /* deregistered; kept alive for prepared requests */
    size_t n;
    ferry__region_t regions[];
};

typedef struct ferry__inst {
    unsigned refs; /* metadata versions of this instance */
    bool retired;
    void *conn[FERRY__NBK]; /* each backend's connection, opened on first use */
} ferry__inst_t;

typedef struct ferry__rregion {
    ferry__md_region_t md;    /* points into the remote's blob copy */
    void *rkey[FERRY__NBK];   /* unpacked on first use, per backend */
    atomic_bool opened[FERRY__NBK]; /* rkey[k] is set: read without the lock */
} ferry__rregion_t;

typedef struct ferry__remote {
    unsigned refs;
    ferry__inst_t *inst;
    uint8_t *blob; /* private copy; md fields point into it */
    ferry__md_t md;
    ferry__rregion_t *regions;
    ferry__imap_t map; /* remote address ranges -> ferry__rregion_t */
    bool prefetch;     /* a GPU region has a key of a backend with rkey_prefetch */
} ferry__remote_t;

struct ferry_peer {
    ferry_agent_t *agent;
    ferry__list_t link;
    char name[FERRY__MD_NAME_MAX + 1];
    ferry__remote_t *remote;
};

enum {
    FERRY__XFER_NEW = 0, /* prepared, never posted */
    FERRY__XFER_ACTIVE,
    FERRY__XFER_DONE
};

/* A post whose every part is a run() (a copy into mapped memory) is "lone":
 * it stays off the agent's active list, and its end is recorded without
 * the lock unless another thread took an interest in it meanwhile. */
enum {
    FERRY__SOLO_NONE = 0, /* not a lone post */
    FERRY__SOLO_RUNNING,  /* copying; ends without the lock */
    FERRY__SOLO_CLAIMED,  /* another thread is involved: ends under the lock */
    FERRY__SOLO_ENDING    /* ended (or being ended) without the lock */
};

/* The segments of a request that one backend moves, with everything a post
 * hands to it, resolved at prepare: the connection pointer stays valid for
 * the peer instance's life (a backend reopens a broken one in place). */
typedef struct ferry__xfer_part {
    const ferry__backend_ops_t *ops;
    void *ctx;             /* the agent's context of that backend */
    void *conn;            /* its connection to the peer */
    void *plan;            /* what its prepare() kept for these segments */
    uint32_t first, count; /* a range of the request's segments */
} ferry__xfer_part_t;

struct ferry_xfer {
    ferry_agent_t *agent;
    ferry__list_t link;
    ferry_xfer_op_t op;
    ferry__remote_t *remote;
    ferry_mem_t **mems; /* distinct local registrations used */
    size_t nmems;
    ferry__bk_seg_t *segs;
    size_t nsegs;
    ferry__xfer_part_t parts[FERRY__NBK];
    unsigned nparts;
    unsigned pending;         /* parts still in flight (under the lock) */
    ferry_status_t first_err; /* first failure among the parts */
    _Atomic int state;
    _Atomic int solo;         /* FERRY__SOLO_* */
    _Atomic ferry_status_t result;
    char errmsg[512]; /* detail text of a failure seen in progress */
    /* Under the lock, while in flight: */
    ferry__list_t alink;  /* agent->active */
    bool aborting;        /* its connections are being aborted */
    uint64_t mark;        /* the transports' headway at mark_ns */
    uint64_t mark_ns;
    /* Completion queue (FERRY_XFER_PARAM_USER_DATA), under the lock. An
     * entry waits while cqlink is in agent->cq (else it points to itself);
     * its status is first_err, which only the next post resets. */
    bool notify;
    ferry__list_t cqlink;
    void *user_data;
    struct ferry__xstream *stream; /* stream-ordered state (stream.c) */
    /* Notification (FERRY_XFER_PARAM_NOTIF): sent by xfer_finish() after
     * each successful post, on the messages' backend connection, opened
     * at prepare. has_msg is fixed at prepare; the bytes change only
     * between posts (ferry_xfer_set_notif), under the lock. */
    bool has_msg;
    uint8_t *msg;
    size_t msg_len;
};

struct ferry_agent {
    pthread_mutex_t lock;
    pthread_cond_t done_cv; /* broadcast when a request finishes */
    bool polling;           /* a thread sleeps on epfd for the others */
    int epfd;               /* the backends' event fds and wakefd */
    int wakefd;             /* eventfd: stops the progress thread */
    bool has_thread;
    atomic_bool stopping;
    atomic_bool fd_used;    /* ferry_agent_fd() was called: progress arms */
    uint64_t spin_ns;       /* how long a wait polls before sleeping */
    uint64_t stall_ns;      /* no headway for this long: TIMEOUT (0: never) */
    uint64_t next_stall_ns; /* when the stall check runs next */
    int cqfd;               /* eventfd: readable while cq holds entries */
    int appfd;              /* ferry_agent_fd(): epoll set for the caller */
    int napfd;              /* timerfd in appfd (no progress thread): ends
                               the caller's sleep while the transports
                               cannot be armed (progress.c) */
    int nap_ms;             /* the next such nap; 0: no nap under way */
    pthread_t thread;
    char name[FERRY__MD_NAME_MAX + 1];
    char host_id[FERRY__MD_NAME_MAX + 1];
    uint64_t incarnation; /* random per agent: tells restarts apart */
    ferry__secret_t secret; /* the job secret's keys, if one is set */
    void *bk_ctx[FERRY__NBK];
    ferry__imap_t registry; /* local address ranges -> ferry__region_t */
    uint32_t next_region_id;
    ferry__list_t mems, peers, xfers;
    ferry__list_t active; /* requests in flight */
    ferry__list_t armed;  /* requests a stream may trigger (stream.c) */
    ferry__list_t cq;     /* finished requests that asked to be queued */
    /* Notifications (notif.c), under the lock but for nq_len, which waits
     * read without it. */
    int msg_slot;          /* the backend that carries them, or -1 */
    uint64_t msg_seq;      /* of the next one sent */
    int msgfd;             /* eventfd: readable while nq holds messages,
                              once ferry_agent_fd() was called */
    bool msgfd_set;        /* msgfd is readable now */
    ferry__list_t nq;      /* received, oldest first (ferry__notif_t) */
    _Atomic size_t nq_len;
    size_t nq_max;
    uint64_t nq_dropped;   /* arrived while nq was full */
};

/* A received notification as the queue holds it and the caller gets it
 * (pub first: ferry_notif_free() finds the rest from it); the sender's
 * name and the message follow in data. */
typedef struct ferry__notif {
    ferry_notif_t pub;
    ferry__list_t link; /* agent->nq */
    char data[];
} ferry__notif_t;

extern const ferry__backend_ops_t *const ferry__backends[FERRY__NBK];

/* Whether x is in flight; without the lock, a snapshot. */
static inline bool ferry__in_flight(ferry_xfer_t *x)
{
    return atomic_load_explicit(&x->state, memory_order_acquire) == FERRY__XFER_ACTIVE;
}

/* The slot of the backend with wire id id, or -1 (agent.c). */
int ferry__backend_slot(uint16_t id);

void ferry__agent_lock(ferry_agent_t *agent);
void ferry__agent_unlock(ferry_agent_t *agent);

/* progress.c: the agent's events, its progress thread, and waiting. */
ferry_status_t ferry__events_init(ferry_agent_t *agent, bool thread);
/* Under the lock: makes agent->cqfd readable (entries waiting) or not. */
void ferry__cq_signal(ferry_agent_t *agent, bool ready);
/* Under the lock: makes an eventfd readable (ready) or not (a level). */
void ferry__fd_level(ferry_agent_t *agent, int fd, bool ready);
void ferry__events_fini(ferry_agent_t *agent);
/* Under the lock: drives every backend once; returns the events handled. */
unsigned ferry__progress_locked(ferry_agent_t *agent);
/* Waits until x is no longer in flight or until deadline_ns (UINT64_MAX:
 * none); returns x's result, FERRY_IN_PROGRESS on timeout. */
ferry_status_t ferry__wait(ferry_xfer_t *x, uint64_t deadline_ns);
/* Waits until agent->nq holds a message or until deadline_ns: FERRY_OK, or
 * FERRY_IN_PROGRESS on timeout. */
ferry_status_t ferry__wait_notif(ferry_agent_t *agent, uint64_t deadline_ns);

/* notif.c: the messages' backend and the receive queue (agent creation,
 * after the backends and events; teardown); sending one message of len
 * bytes to a peer's metadata version, under the lock. */
ferry_status_t ferry__notif_init(ferry_agent_t *agent, size_t queue);
void ferry__notif_fini(ferry_agent_t *agent);
ferry_status_t ferry__notif_send_locked(ferry_agent_t *agent, ferry__remote_t *remote,
                                        const void *msg, size_t len);
/* Under the lock: msgfd's level follows the queue (once the fd is used). */
void ferry__notif_signal_locked(ferry_agent_t *agent);
/* Under the lock: makes sure that a lone post of x in progress ends under
 * the lock (where this thread will see it), or has ended (xfer.c). Every
 * path that changes a request in flight, or sleeps until it ends, calls it
 * first. */
void ferry__xfer_claim_locked(ferry_xfer_t *x);
/* The result of a finished request, with its detail text on failure. */
ferry_status_t ferry__xfer_result(ferry_xfer_t *x);
/* Under the lock: times out requests whose transports made no headway for
 * agent->stall_ns (xfer.c; called by every progress). */
void ferry__stall_check_locked(ferry_agent_t *agent);
/* Takes the lock: the peer named name has gone (the directory saw it
 * leave): its instance is retired, so new prepares and posts to it are
 * PEER_LOST until a new blob of that name is loaded, and its requests in
 * flight end with PEER_LOST and a text carrying why. No such peer: no-op. */
void ferry__peer_lost(ferry_agent_t *agent, const char *name, const char *why);

/* Takes the lock: whether agent has a peer named name (loaded, whether or
 * not it has gone since). */
bool ferry__peer_known(ferry_agent_t *agent, const char *name);

/* xfer.c, under the lock: whether x may be posted now (FERRY_OK, or BUSY,
 * PEER_LOST, NOT_REGISTERED with a text naming call); and starting x's
 * parts, as a post does, except (skip_stream) those of backends that put
 * their copies on the stream itself (FERRY__BK_STREAM_COPIES), running the
 * parts that a backend hands to run() at once, under the lock. */
ferry_status_t ferry__xfer_postable_locked(ferry_xfer_t *x, const char *call);
ferry_status_t ferry__xfer_start_locked(ferry_xfer_t *x, bool skip_stream);

/* stream.c, under the lock: triggers set by streams, started (returns how
 * many); a triggered run's end, signalled to the stream; teardown. */
typedef struct ferry__xstream ferry__xstream_t;
unsigned ferry__stream_poll_locked(ferry_agent_t *agent);
void ferry__stream_done_locked(ferry_xfer_t *x);
void ferry__stream_release_locked(ferry_xfer_t *x);

/* Under the lock: drop a reference; the last one frees (mem.c, peer.c). */
void ferry__mem_unref(ferry_mem_t *mem);
void ferry__remote_unref(ferry_agent_t *agent, ferry__remote_t *remote);
/* Under the lock: the backend connection of a remote, opened on first use. */
ferry_status_t ferry__remote_conn(ferry_agent_t *agent, ferry__remote_t *remote,
                                  unsigned slot, void **conn_p);
/* Under the lock: the unpacked key of a remote region, on first use. */
ferry_status_t ferry__remote_rkey(ferry_agent_t *agent, ferry__remote_t *remote,
                                  ferry__rregion_t *rr, unsigned slot,
                                  void **rkey_p);
/* Without the lock, the caller holding a reference to remote: the backends'
 * rkey_prefetch for the GPU regions that descs (remote addresses) name and
 * whose keys are not open yet; only: a backend forced by the prepare, or 0.
 * Nothing when no region of remote has such a key or the peer is on
 * another host. */
void ferry__remote_prefetch(ferry_agent_t *agent, ferry__remote_t *remote,
                            const ferry_desc_t *descs, size_t n, uint16_t only);
/* Under the lock, at the end of a prepare that prefetched: the backends'
 * rkey_prefetch_end (what was fetched and not taken is dropped). */
void ferry__remote_prefetch_end(ferry_agent_t *agent, ferry__remote_t *remote);
/* Under the lock: deregister without the BUSY check (agent teardown). */
void ferry__mem_drop(ferry_mem_t *mem);
/* Agent teardown helpers. */
void ferry__peer_forget_locked(ferry_peer_t *peer);

#endif
