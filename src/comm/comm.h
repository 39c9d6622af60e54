/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private parts of the communicator, shared by its files (comm.c lists
 * them): the object, the key names and their deferred deletion, the abort,
 * the rounds and waits the exchange shares with the barrier, the heartbeat
 * thread, the resolution of parameters and environment (a function of its
 * own so that it can be tested without a store), and the fault-injection
 * hooks the failure tests use.
 */
#ifndef FERRY_COMM_COMM_H
#define FERRY_COMM_COMM_H

#include "ferry.h"
#include "comm/kv.h"
#include "util/status.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define FERRY__COMM_URL_MAX 256
#define FERRY__COMM_PREFIX_MAX 200
#define FERRY__COMM_KEY_MAX (FERRY__COMM_PREFIX_MAX + 64)
#define FERRY__COMM_TEXT_MAX 400

/* What ferry_comm_create() runs with, from params and the environment
 * (env.c). */
typedef struct ferry__comm_cfg {
    int rank, size;
    char url[FERRY__COMM_URL_MAX];
    char prefix[FERRY__COMM_PREFIX_MAX + 1];
    uint64_t timeout_ns, liveness_ns;
    const char *source; /* which launcher's variables gave rank and size */
} ferry__comm_cfg_t;

/* Fills cfg from params (may be NULL) and the environment; FERRY_ERR_INVALID
 * with a text naming the variable for anything missing or malformed. */
ferry_status_t ferry__comm_resolve(const ferry_comm_params_t *params,
                                   ferry__comm_cfg_t *cfg);

/* Fault injection for tests: called, when set, on this rank's packed blob
 * before it is published, and just before the exchange's final barrier. */
typedef struct ferry__comm_hooks {
    void (*blob)(void *blob, size_t len, void *arg);
    void (*before_barrier)(ferry_comm_t *comm, void *arg);
    void *arg;
} ferry__comm_hooks_t;

/* A key this rank will delete once every rank has passed collective
 * `before` (per_rank: the stem is followed by a rank number). */
typedef struct ferry__comm_pending {
    char key[FERRY__COMM_KEY_MAX];
    bool per_rank;
    uint64_t before;
} ferry__comm_pending_t;

struct ferry_comm {
    ferry__comm_cfg_t cfg;
    int rank, size;
    bool hosted;                  /* rank 0 runs the store in-process */
    ferry_store_server_t *server; /* rank 0's, when hosted */
    ferry__kv_t *kv;              /* collectives, abort */
    pthread_mutex_t lock;         /* one collective at a time */
    uint64_t seq;                 /* collectives started */
    /* The failure that closed kv's connection for good (kv.h's lost), as
     * its collective reported it; "" while none has. Under lock. */
    char lost_text[FERRY__COMM_TEXT_MAX];

    /* Abort state: set once, by this rank's abort or a seen abort key. */
    pthread_mutex_t abort_lock;
    atomic_bool aborted;
    char abort_text[FERRY__COMM_TEXT_MAX];

    /* Heartbeat and watch thread (heartbeat.c), on its own connection. */
    ferry__kv_t *hb_kv;
    pthread_t hb_thread;
    bool hb_started;
    pthread_mutex_t hb_lock;
    pthread_cond_t hb_cv;
    bool hb_stop, hb_watch, hb_failed, others_gone;
    uint64_t beat_ns;
    char (*hb_last)[32];    /* each rank's last heartbeat value */
    uint64_t *hb_changed;   /* when it last changed */

    /* Keys to delete once every rank is past a later collective. */
    ferry__comm_pending_t *pending;
    size_t npending, pending_cap;

    /* Exchange (exchange.c). */
    ferry_agent_t *agent;
    uint64_t epoch;
    ferry_peer_t **peers;
    uint64_t *digests; /* of the blob loaded from each rank; 0 = none */
    unsigned loads;    /* blobs the last exchange loaded */
    ferry__comm_hooks_t hooks;
};

/* keys.c ----------------------------------------------------------------- */

/* Formats prefix + the rest into key (FERRY__COMM_KEY_MAX bytes). */
void ferry__comm_key(const ferry_comm_t *comm, char *key, const char *fmt, ...)
    FERRY__PRINTF(3, 4);

/* The keys "<stem>0" to "<stem><size - 1>", one per rank, in a single
 * allocation that free() releases; NULL when out of memory. */
const char **ferry__comm_rank_keys(const ferry_comm_t *comm, const char *stem);

/* Queues key for deletion once every rank is past the next round. */
void ferry__comm_defer(ferry_comm_t *comm, const char *key, bool per_rank);

/* Deletes the pending keys of rounds before the one just completed. */
void ferry__comm_flush_pending(ferry_comm_t *comm);

/* Deletes key, logging (not returning) a failure: a key left behind costs
 * the store a few bytes, never a rank its collective. */
void ferry__comm_delete_key(ferry__kv_t *kv, const char *key);

/* abort.c ---------------------------------------------------------------- */

/* FERRY_ERR_ABORTED with the abort's text if this communicator is aborted. */
ferry_status_t ferry__comm_aborted(ferry_comm_t *comm);

/* Checks the abort key once (a store call); FERRY_ERR_ABORTED if set. */
ferry_status_t ferry__comm_check_abort(ferry_comm_t *comm);

/*
 * Publishes "<rank> <reason>" through kv as the job's abort unless one is
 * there already, and takes whichever is there afterwards as the local
 * abort. Returns 1 if this call's abort won, 0 if an earlier one stands, or
 * a store error.
 */
int ferry__comm_publish_abort(ferry_comm_t *comm, ferry__kv_t *kv, int rank,
                              const char *reason);

/* round.c ---------------------------------------------------------------- */

/* A deadline from a collective's timeout (negative: none). */
uint64_t ferry__comm_deadline(int64_t timeout_ns);

/*
 * Begins collective `what`, under comm->lock: holds every store call of it
 * to its deadline, plus a second for telling the job that this rank gave
 * up (its abort), so that a stalled store cannot keep the collective past
 * it. Returns the abort if there is one, or FERRY_ERR_PEER_LOST naming the
 * failure of an earlier collective that closed the store connection (the
 * store's own text would say only that it is closed); the collective then
 * does not run. Either way ferry__comm_end() follows, with the
 * collective's status: it lifts the cap and, when this failure is the one
 * that closed the connection, keeps its text for the later ones.
 */
ferry_status_t ferry__comm_begin(ferry_comm_t *c, uint64_t deadline,
                                 const char *what);
void ferry__comm_end(ferry_comm_t *c, ferry_status_t st);

/*
 * Waits until every key exists, in slices, checking the abort key between
 * them. Returns OK, the abort, a store error, or FERRY_ERR_TIMEOUT (with
 * no detail: the caller decides what a timeout means) at the deadline.
 */
ferry_status_t ferry__comm_wait_keys(ferry_comm_t *comm,
                                     const char *const *keys, size_t n,
                                     uint64_t deadline);

/*
 * Gives up on keys[i] (rank i's): names the ranks whose keys are still
 * missing in an abort of the job, and returns TIMEOUT if this rank's abort
 * is the one that stands, else that other abort.
 */
ferry_status_t ferry__comm_give_up(ferry_comm_t *comm, const char *const *keys,
                                   size_t n, uint64_t started,
                                   const char *what);

/*
 * One collective round: publishes this rank's contribution under
 * "c/<seq>/<rank>", waits until every rank's is there (watching the abort
 * key, until deadline), and, when values_p is not NULL, fetches them all.
 * Deletes the keys of earlier rounds that every rank is now past. With the
 * comm lock held.
 */
ferry_status_t ferry__comm_round(ferry_comm_t *comm, const void *data,
                                 size_t len, void **values_p, size_t *lens_p,
                                 uint64_t deadline, const char *what);

/* heartbeat.c ------------------------------------------------------------ */

/* Starts the heartbeat thread (watching the others once comm->hb_watch is
 * set); FERRY_ERR_SYSTEM if it cannot. */
ferry_status_t ferry__comm_hb_start(ferry_comm_t *comm);

/* Stops and joins the heartbeat thread, if it runs. */
void ferry__comm_hb_stop(ferry_comm_t *comm);

/* comm.c ----------------------------------------------------------------- */

/* Blobs the last exchange loaded (tests). */
unsigned ferry__comm_loads(const ferry_comm_t *comm);
void ferry__comm_set_hooks(ferry_comm_t *comm, const ferry__comm_hooks_t *h);

#endif
