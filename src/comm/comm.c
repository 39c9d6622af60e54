/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator: N ranks that find each other through a c10d-compatible
 * store (src/store/) or an etcd cluster, with a barrier, an allgather, and
 * a job-wide abort that every waiting rank notices, so that no collective
 * hangs when one rank fails. This file creates and destroys one: rank 0
 * finds or hosts a TCPStore (every rank just connects to etcd), every rank
 * claims its rank, starts its heartbeat and waits for the
 * others; on the way out, rank 0 keeps a store it hosts until the others
 * have left, and the last rank to leave an external store deletes the
 * job's keys. The rest, one idea a file:
 *   env.c        parameters and environment
 *   keys.c       key names and deferred deletion (the key layout)
 *   abort.c      the job-wide abort
 *   round.c      collective rounds, waiting, barrier and allgather
 *   heartbeat.c  the heartbeat and watch thread
 *   exchange.c   the collective metadata exchange
 *   kv.h         the store operations all of them use, on a TCPStore
 *                (kv.c) or on etcd (kv_etcd.c; kv_none.c without etcd)
 */
#include "comm/comm.h"
#include "store/store.h"
#include "util/log.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROBE_NS 300000000ull /* rank 0: is a store already there? */

/* The time etcd may stay out of reach before the communicator takes it
 * for lost, and the TTL of the job's lease on it: from the liveness time,
 * since a rank cut off from the store for that long is as good as dead. */
static uint64_t etcd_lease_ns(const ferry_comm_t *c)
{
    uint64_t ttl = 3 * c->cfg.liveness_ns;

    return ttl < 10000000000ull ? 10000000000ull : ttl;
}

/* A connection to the job's store: etcd (kv_etcd.c), or a TCPStore with
 * the given timeout. */
static ferry_status_t comm_open(ferry_comm_t *c, uint64_t timeout_ns,
                                ferry__kv_t **kv_p)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = timeout_ns};
    ferry_store_t *s;
    char lease_key[FERRY__COMM_KEY_MAX];

    if (ferry__kv_is_etcd(c->cfg.url)) {
        ferry__comm_key(c, lease_key, "lease");
        return ferry__kv_etcd_open(c->cfg.url, lease_key, etcd_lease_ns(c),
                                   timeout_ns, c->cfg.liveness_ns, kv_p);
    }
    FERRY_CHECK(ferry_store_connect(c->cfg.url, &sp, &s));
    return ferry__kv_from_store(s, kv_p);
}

/*
 * Rank 0: use the store at the URL if one answers, else start one bound to
 * the URL's address. If that fails too (the address is another host's, or
 * someone else just bound the port), connect and wait for a store there.
 * Every rank of a job on etcd just connects: the cluster is the store.
 */
static ferry_status_t comm_connect(ferry_comm_t *c)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = c->cfg.timeout_ns};
    ferry_store_params_t probe = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                                  .timeout_ns = PROBE_NS};
    ferry_store_server_params_t srvp = {
        .field_mask = FERRY_STORE_SERVER_PARAM_PORT};
    char host[FERRY__COMM_URL_MAX], port[8], addr[INET6_ADDRSTRLEN] = "";
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;

    ferry_store_t *s;

    if (c->rank != 0 || ferry__kv_is_etcd(c->cfg.url))
        return comm_open(c, c->cfg.timeout_ns, &c->kv);
    if (ferry_store_connect(c->cfg.url, &probe, &s) == FERRY_OK) {
        /* A store is running there. The probe's short limit was for
         * finding out; kept, it would fail any later call that waits a
         * little longer for a reply (a busy machine, a stalled store). */
        ferry__store_set_timeout(s, c->cfg.timeout_ns);
        return ferry__kv_from_store(s, &c->kv);
    }
    /* The URL was checked when the configuration was resolved. */
    FERRY_CHECK(ferry__store_parse_url(c->cfg.url, host, sizeof(host), port,
                                       sizeof(port)));
    srvp.port = (uint16_t)strtoul(port, NULL, 10);
    if (getaddrinfo(host, NULL, &hints, &ai) == 0) {
        void *a = ai->ai_family == AF_INET6
                      ? (void *)&((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr
                      : (void *)&((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr;

        inet_ntop(ai->ai_family, a, addr, sizeof(addr));
        freeaddrinfo(ai);
    }
    if (addr[0] && ferry_store_server_start(addr, &srvp, &c->server) ==
                       FERRY_OK) {
        c->hosted = true;
        ferry__info("comm: rank 0 hosts the store on %s port %u", addr,
                    srvp.port);
    } else {
        ferry__debug("comm: rank 0 could not host the store at %s (%s); "
                     "waiting for one", c->cfg.url, ferry_last_error());
    }
    FERRY_CHECK(ferry_store_connect(c->cfg.url, &sp, &s));
    return ferry__kv_from_store(s, &c->kv);
}

/* Claims this rank, starts the heartbeat, waits for every rank, and checks
 * that they agree on the size. */
static ferry_status_t comm_join(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX], mine[FERRY__COMM_TEXT_MAX], host[128] = "?";
    const char **keys = NULL;
    void **vals = NULL, *got = NULL;
    size_t *lens = NULL, glen = 0, n = (size_t)c->size;
    uint64_t started = ferry__now_ns();
    ferry_status_t st;

    gethostname(host, sizeof(host) - 1);
    ferry__comm_key(c, key, "hb/%d", c->rank);
    FERRY_CHECK(ferry__kv_set(c->kv, key, "0", 1));
    ferry__comm_key(c, key, "join/%d", c->rank);
    /* The nonce tells two communicators of one process apart. */
    snprintf(mine, sizeof(mine), "%d %s %d %llx %d", c->size, host,
             (int)getpid(),
             (unsigned long long)(ferry__now_ns() ^ (uintptr_t)c), c->hosted);
    FERRY_CHECK(ferry__kv_compare_set(c->kv, key, "", 0, mine,
                                        strlen(mine), &got, &glen));
    if (glen != strlen(mine) || memcmp(got, mine, glen) != 0) {
        st = ferry__error(FERRY_ERR_INVALID,
                          "comm: rank %d was already joined by another process "
                          "('%.*s': size, host, pid, ...); two processes with one "
                          "rank, or a store that still holds an earlier job "
                          "under prefix '%s'", c->rank,
                          (int)(glen > 200 ? 200 : glen), (char *)got,
                          c->cfg.prefix);
        ferry_store_free(got);
        return st;
    }
    ferry_store_free(got);

    FERRY_CHECK(ferry__comm_hb_start(c));

    ferry__comm_key(c, key, "join/");
    keys = ferry__comm_rank_keys(c, key);
    vals = calloc(n, sizeof(*vals));
    lens = calloc(n, sizeof(*lens));
    if (keys == NULL || vals == NULL || lens == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "comm: no memory");
        goto out;
    }
    st = ferry__comm_wait_keys(c, keys, n,
                               ferry__comm_deadline((int64_t)c->cfg.timeout_ns));
    if (st == FERRY_ERR_TIMEOUT)
        st = ferry__comm_give_up(c, keys, n, started, "joining");
    if (st == FERRY_OK) /* a job that aborted before this rank came */
        st = ferry__comm_check_abort(c);
    if (st != FERRY_OK)
        goto out;
    FERRY_CHECK_GOTO(ferry__kv_multi_get(c->kv, keys, n, vals, lens), st,
                     out);
    for (size_t i = 0; i < n; i++) {
        char *end;
        long sz = strtol(vals[i], &end, 10);

        if (i == 0)
            c->hosted = strlen(vals[i]) > 2 &&
                        strcmp((char *)vals[i] + strlen(vals[i]) - 2, " 1") == 0;
        if (end != vals[i] && sz == c->size)
            continue;
        char reason[FERRY__COMM_TEXT_MAX];

        snprintf(reason, sizeof(reason), "rank %zu joined as '%.100s' (size, "
                 "host, pid, ...), but rank %d's world size is %d", i,
                 (char *)vals[i], c->rank, c->size);
        (void)ferry__comm_publish_abort(c, c->kv, c->rank, reason);
        st = ferry__error(FERRY_ERR_INVALID, "comm: %s", reason);
        goto out;
    }
    pthread_mutex_lock(&c->hb_lock);
    c->hb_watch = true;
    pthread_mutex_unlock(&c->hb_lock);
    st = FERRY_OK;
out:
    for (size_t i = 0; vals && i < n; i++)
        ferry_store_free(vals[i]);
    free(keys);
    free(vals);
    free(lens);
    return st;
}

/* Stops the heartbeat, closes the connections (and rank 0's server) and
 * frees everything; for a communicator at any stage of its creation. */
static void comm_free(ferry_comm_t *c)
{
    ferry__comm_hb_stop(c);
    ferry__kv_close(c->hb_kv);
    ferry__kv_close(c->kv);
    ferry_store_server_stop(c->server);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->abort_lock);
    pthread_mutex_destroy(&c->hb_lock);
    pthread_cond_destroy(&c->hb_cv);
    free(c->hb_last);
    free(c->hb_changed);
    free(c->peers);
    free(c->digests);
    free(c->pending);
    free(c);
}

ferry_status_t ferry_comm_create(const ferry_comm_params_t *params,
                                 ferry_comm_t **comm_p)
{
    ferry__errsave_t save;
    ferry_comm_t *c;
    ferry_status_t st;

    if (comm_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_create: NULL comm_p");
    /* Rank 0's probe of a store it then starts fails as a matter of course. */
    ferry__error_save(&save);
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm_create: no memory");
    FERRY_CHECK_GOTO(ferry__comm_resolve(params, &c->cfg), st, err_free);
    c->rank = c->cfg.rank;
    c->size = c->cfg.size;
    c->beat_ns = c->cfg.liveness_ns / 10;
    if (c->beat_ns > 1000000000ull)
        c->beat_ns = 1000000000ull;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->abort_lock, NULL);
    pthread_mutex_init(&c->hb_lock, NULL);
    pthread_cond_init(&c->hb_cv, NULL);
    c->hb_last = calloc((size_t)c->size, sizeof(*c->hb_last));
    c->hb_changed = calloc((size_t)c->size, sizeof(*c->hb_changed));
    c->peers = calloc((size_t)c->size, sizeof(*c->peers));
    c->digests = calloc((size_t)c->size, sizeof(*c->digests));
    if (!c->hb_last || !c->hb_changed || !c->peers || !c->digests) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "comm_create: no memory for "
                          "%d ranks", c->size);
        goto err_destroy;
    }
    FERRY_CHECK_GOTO(comm_connect(c), st, err_destroy);
    /* The heartbeat's own connection: a collective's long wait on the
     * other one must not delay it. Its calls are bounded by the liveness
     * time, so a stuck store does not stall it longer than that. */
    FERRY_CHECK_GOTO(comm_open(c, c->cfg.liveness_ns, &c->hb_kv), st,
                     err_destroy);
    FERRY_CHECK_GOTO(comm_join(c), st, err_destroy);
    ferry__debug("comm: rank %d of %d joined through %s (%s)", c->rank,
                 c->size, c->cfg.url, c->cfg.source);
    *comm_p = c;
    return ferry__error_keep(&save, FERRY_OK);

err_destroy:
    ferry__error_prefix("comm_create (rank %d of %d)", c->rank, c->size);
    {
        char text[512];

        /* Teardown talks to the store and may overwrite the detail. */
        snprintf(text, sizeof(text), "%s", ferry_last_error());
        comm_free(c);
        return ferry__error(st, "%s", text);
    }
err_free:
    free(c);
    return st;
}

/* The last rank to leave an external store deletes the job's keys (an
 * in-process store goes away with rank 0 anyway). Each rank says "done"
 * before it counts itself out, so nobody writes a key after this. */
/* How long ferry_comm_destroy() gives the store to record the leave. */
#define COMM_LEAVE_NS 1000000000ull

static void comm_leave(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX], k2[FERRY__COMM_KEY_MAX + 16];
    int64_t left = 0;

    ferry__comm_key(c, key, "hb/%d", c->rank);
    if (ferry__kv_set(c->kv, key, "done", 4) != FERRY_OK || c->hosted)
        return;
    ferry__comm_key(c, key, "left");
    if (ferry__kv_add(c->kv, key, 1, &left) != FERRY_OK ||
        left != c->size || atomic_load(&c->aborted))
        return;
    ferry__comm_delete_key(c->kv, key);
    for (int i = 0; i < c->size; i++) {
        ferry__comm_key(c, key, "hb/%d", i);
        ferry__comm_delete_key(c->kv, key);
        ferry__comm_key(c, key, "join/%d", i);
        ferry__comm_delete_key(c->kv, key);
        /* Every rank ran the same rounds, so its pending keys are this
         * rank's with its own number. */
        for (size_t j = 0; j < c->npending; j++) {
            if (!c->pending[j].per_rank && i > 0)
                continue;
            snprintf(k2, sizeof(k2), c->pending[j].per_rank ? "%s%d" : "%s",
                     c->pending[j].key, i);
            ferry__comm_delete_key(c->kv, k2);
        }
    }
}

void ferry_comm_destroy(ferry_comm_t *comm)
{
    if (comm == NULL)
        return;
    if (comm->server != NULL) {
        /* The others use the store this process serves: wait until each
         * has left or is dead (the heartbeat thread decides). */
        struct timespec ts;
        uint64_t deadline = ferry__comm_deadline((int64_t)comm->cfg.timeout_ns);

        pthread_mutex_lock(&comm->hb_lock);
        while (!comm->others_gone && !comm->hb_failed && comm->hb_started &&
               ferry__now_ns() < deadline) {
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&comm->hb_cv, &comm->hb_lock, &ts);
        }
        if (!comm->others_gone)
            ferry__warn("comm: rank 0 stops the store while some ranks may "
                        "still use it");
        pthread_mutex_unlock(&comm->hb_lock);
    }
    /* A stalled store must not hold the rank here: the heartbeat's call
     * under way ends within a slice of its wait, and the leave's calls
     * within COMM_LEAVE_NS (a store that takes longer keeps the job's
     * keys; an in-process one goes anyway). */
    ferry__kv_set_cap(comm->hb_kv, ferry__now_ns());
    ferry__comm_hb_stop(comm);
    ferry__kv_set_cap(comm->kv, ferry__now_ns() + COMM_LEAVE_NS);
    comm_leave(comm);
    comm_free(comm);
}

int ferry_comm_rank(const ferry_comm_t *comm)
{
    return comm ? comm->rank : -1;
}

int ferry_comm_size(const ferry_comm_t *comm)
{
    return comm ? comm->size : 0;
}

unsigned ferry__comm_loads(const ferry_comm_t *comm)
{
    return comm->loads;
}

void ferry__comm_set_hooks(ferry_comm_t *comm, const ferry__comm_hooks_t *h)
{
    comm->hooks = *h;
}
