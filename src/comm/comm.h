/*
 * Private parts of the communicator (comm.c, exchange.c): the object, the
 * waiting and cleanup machinery the exchange shares with the barrier, the
 * resolution of parameters and environment (a function of its own so that
 * it can be tested without a store), and the fault-injection hooks the
 * failure tests use.
 */
#ifndef FERRY_COMM_COMM_H
#define FERRY_COMM_COMM_H

#include "ferry.h"
#include "util/status.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define FERRY__COMM_URL_MAX 256
#define FERRY__COMM_PREFIX_MAX 200
#define FERRY__COMM_KEY_MAX (FERRY__COMM_PREFIX_MAX + 64)
#define FERRY__COMM_TEXT_MAX 400

/* What ferry_comm_create() runs with, from params and the environment. */
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
    ferry_store_t *store;         /* collectives, abort */
    pthread_mutex_t lock;         /* one collective at a time */
    uint64_t seq;                 /* collectives started */

    /* Abort state: set once, by this rank's abort or a seen abort key. */
    pthread_mutex_t abort_lock;
    atomic_bool aborted;
    char abort_text[FERRY__COMM_TEXT_MAX];

    /* Heartbeat and watch thread (comm.c), on its own connection. */
    ferry_store_t *hb_store;
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

/* Formats prefix + the rest into key (FERRY__COMM_KEY_MAX bytes). */
void ferry__comm_key(const ferry_comm_t *comm, char *key, const char *fmt, ...)
    FERRY__PRINTF(3, 4);

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

/* Queues key for deletion once every rank is past the next round. */
void ferry__comm_defer(ferry_comm_t *comm, const char *key, bool per_rank);

/* FERRY_ERR_ABORTED with the abort's text if this communicator is aborted. */
ferry_status_t ferry__comm_aborted(ferry_comm_t *comm);

/* A deadline from a collective's timeout (negative: none). */
uint64_t ferry__comm_deadline(int64_t timeout_ns);

/* Blobs the last exchange loaded (tests). */
unsigned ferry__comm_loads(const ferry_comm_t *comm);
void ferry__comm_set_hooks(ferry_comm_t *comm, const ferry__comm_hooks_t *h);

#endif
