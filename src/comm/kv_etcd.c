/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator's store operations (kv.h) on etcd, through the
 * directory's client (src/dir/etcd.c), so that a job can rendezvous through
 * an etcd cluster with no process of its own serving a store:
 *   set          put, bound to the job's lease
 *   add          a transaction that puts the sum if the key's modification
 *                revision is still the one read (else it reads again)
 *   compare_set  a transaction on the key's value, or on its absence
 *   check        one read-only transaction of ranges, keys only
 *   wait         check, again and again (2 ms growing to 20 ms apart),
 *                until the keys are there, the time is up or the cap
 *   multi_get    wait, then one read-only transaction of ranges
 *   delete_key   deleterange
 * Every key lives under "<url prefix>/". The job's lease keeps a crashed
 * job's keys from staying forever: every handle renews it as it goes (the
 * heartbeat thread's handle writes every beat), and the keys go a TTL
 * after the last rank stopped.
 *
 * When no member answers (refused, silent, no leader), a call tries again
 * until retry_ns have passed or the cap: an election after a member's
 * death takes a few seconds, and a cluster that stays away that long is a
 * lost store (FERRY_ERR_PEER_LOST, or what the last try got). An ADD is
 * not tried again once a member may have carried it out: counting a rank
 * twice would be worse than failing the collective.
 */
#include "comm/kv.h"
#include "dir/etcd.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX 1024
#define POLL_MIN_NS 2000000ull
#define POLL_MAX_NS 20000000ull
#define RETRY_PAUSE_NS 100000000ull

typedef struct kv_etcd {
    ferry__kv_t base;
    ferry__etcd_t etcd;
    ferry__etcd_conn_t *conn;
    pthread_mutex_t lock; /* one call at a time on conn */
    char prefix[FERRY__ETCD_PREFIX_MAX + 2]; /* "<url prefix>/" */
    char url[256];
    uint64_t cap_ns, retry_ns;
    int64_t lease, ttl_s;
    uint64_t renewed_ns;
} kv_etcd_t;

static kv_etcd_t *of(ferry__kv_t *kv)
{
    return (kv_etcd_t *)(void *)kv;
}

static void full_key(const kv_etcd_t *k, const char *key, char *out)
{
    snprintf(out, KEY_MAX, "%s%s", k->prefix, key);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The end of a call that starts now and may take up to ns (or the cap). */
static uint64_t end_of(const kv_etcd_t *k, uint64_t ns)
{
    uint64_t now = ferry__now_ns(), end = ns >= UINT64_MAX - now ? UINT64_MAX
                                                                : now + ns;

    return end < k->cap_ns ? end : k->cap_ns;
}

/* Renews the job's lease once a third of its TTL has passed. */
static ferry_status_t renew(kv_etcd_t *k)
{
    int64_t ttl = 0;
    ferry_status_t st;

    if (ferry__now_ns() - k->renewed_ns < (uint64_t)k->ttl_s * 1000000000ull / 3)
        return FERRY_OK;
    st = ferry__etcd_lease_keepalive(&k->etcd, k->conn, k->lease, &ttl);
    if (st == FERRY_ERR_NOT_FOUND)
        ttl = 0, st = FERRY_OK;
    FERRY_CHECK(st);
    if (ttl <= 0)
        return ferry__error(FERRY_ERR_PEER_LOST, "etcd: the job's lease %" PRIx64
                            " under '%s' has expired (etcd was out of reach, or "
                            "no rank renewed it, for %" PRId64 " s): the job's "
                            "keys are gone", (uint64_t)k->lease, k->prefix,
                            k->ttl_s);
    k->renewed_ns = ferry__now_ns();
    return FERRY_OK;
}

/* What one operation does, given its arguments. */
typedef ferry_status_t (*op_fn)(kv_etcd_t *k, void *args);

/*
 * Runs op under the lock, with the cap as the client's deadline, after
 * the lease's renewal; tries again while no member answers, for up to
 * retry_ns (idempotent false: only while nothing may have been done).
 */
static ferry_status_t run(kv_etcd_t *k, op_fn op, void *args, bool idempotent)
{
    ferry_status_t st;
    uint64_t end;

    pthread_mutex_lock(&k->lock);
    end = end_of(k, k->retry_ns);
    k->etcd.deadline_ns = k->cap_ns == UINT64_MAX ? 0 : k->cap_ns;
    for (;;) {
        st = renew(k);
        if (st == FERRY_OK)
            st = op(k, args);
        if (st == FERRY_OK || !atomic_load(&k->etcd.unanswered) ||
            (!idempotent && atomic_load(&k->etcd.maybe_done)) ||
            ferry__now_ns() + RETRY_PAUSE_NS >= end)
            break;
        ferry__debug("comm: %s; trying again", ferry_last_error());
        sleep_ns(RETRY_PAUSE_NS);
    }
    if (st != FERRY_OK && atomic_load(&k->etcd.unanswered))
        ferry__error_prefix("comm: store %s", k->url);
    pthread_mutex_unlock(&k->lock);
    return st;
}

/* A put bound to a lease etcd no longer knows is refused as NOT_FOUND. */
static ferry_status_t lease_status(kv_etcd_t *k, ferry_status_t st)
{
    if (st != FERRY_ERR_NOT_FOUND)
        return st;
    return ferry__error(FERRY_ERR_PEER_LOST, "etcd: the job's lease %" PRIx64
                        " under '%s' has expired: the job's keys are gone (%s)",
                        (uint64_t)k->lease, k->prefix, ferry_last_error());
}

/* A copy of len bytes with a zero byte after them. */
static void *dup_value(const void *p, size_t len)
{
    char *v = malloc(len + 1);

    if (v != NULL) {
        memcpy(v, p, len);
        v[len] = '\0';
    }
    return v;
}

/* ------------------------------------------------------------------------ */
/* Operations                                                               */
/* ------------------------------------------------------------------------ */

typedef struct args {
    const char *key;
    const char *const *keys;
    size_t n;
    const void *value, *expected;
    size_t len, expected_len;
    int64_t delta, *sum_p;
    int *ready_p;
    void **values_p, **value_p;
    size_t *lens_p, *len_p;
} args_t;

static ferry_status_t do_set(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char key[KEY_MAX];

    full_key(k, a->key, key);
    return lease_status(k, ferry__etcd_put(&k->etcd, k->conn, key, a->value,
                                           a->len, k->lease, NULL));
}

static ferry_status_t et_set(ferry__kv_t *kv, const char *key,
                             const void *value, size_t len)
{
    args_t a = {.key = key, .value = value, .len = len};

    return run(of(kv), do_set, &a, true);
}

/* A counter's value: decimal text, as the TCPStore keeps it. */
static ferry_status_t parse_count(const char *key, const ferry__etcd_kv_t *kv,
                                  int64_t *v)
{
    char *end;

    errno = 0;
    *v = strtoll(kv->value, &end, 10);
    if (kv->len == 0 || end != (char *)kv->value + kv->len || errno != 0)
        return ferry__error(FERRY_ERR_PROTOCOL, "etcd: add: '%s' holds '%.40s', "
                            "not an integer", key, (char *)kv->value);
    return FERRY_OK;
}

static ferry_status_t do_add(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char key[KEY_MAX], text[24];
    ferry__etcd_cond_t cond = {.kind = FERRY__ETCD_IF_ABSENT};
    int64_t v = 0;

    full_key(k, a->key, key);
    /* Each failed comparison means another rank's ADD went first, so the
     * loop ends after at most one turn per rank. */
    for (;;) {
        ferry__etcd_kv_t *cur = NULL;
        size_t n = 0;
        bool done = false;
        ferry_status_t st;

        snprintf(text, sizeof(text), "%" PRId64, v + a->delta);
        st = ferry__etcd_put_if(&k->etcd, k->conn, key, &cond, text,
                                strlen(text), k->lease, &done, &cur, &n);
        FERRY_CHECK(lease_status(k, st));
        if (done) {
            *a->sum_p = v + a->delta;
            return FERRY_OK;
        }
        v = 0;
        cond.kind = FERRY__ETCD_IF_ABSENT;
        if (n > 0) {
            st = parse_count(a->key, &cur[0], &v);
            cond.kind = FERRY__ETCD_IF_MOD_REV;
            cond.mod_rev = cur[0].mod_rev;
        }
        ferry__etcd_kvs_free(cur, n);
        FERRY_CHECK(st);
    }
}

static ferry_status_t et_add(ferry__kv_t *kv, const char *key, int64_t delta,
                             int64_t *value_p)
{
    args_t a = {.key = key, .delta = delta, .sum_p = value_p};

    return run(of(kv), do_add, &a, false);
}

/* How many of the keys, from the first on, exist (one read). */
static ferry_status_t count_present(kv_etcd_t *k, const char *const *keys,
                                    size_t n, size_t *present_p)
{
    char (*full)[KEY_MAX] = malloc((n ? n : 1) * sizeof(*full));
    const char **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    ferry__etcd_kv_t *kvs = NULL;
    ferry_status_t st = FERRY_OK;
    size_t i = 0;

    if (full == NULL || ptrs == NULL)
        st = ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    for (size_t j = 0; st == FERRY_OK && j < n; j++) {
        full_key(k, keys[j], full[j]);
        ptrs[j] = full[j];
    }
    if (st == FERRY_OK)
        st = ferry__etcd_get_many(&k->etcd, k->conn, ptrs, n, true, &kvs);
    if (st == FERRY_OK) {
        while (i < n && kvs[i].key != NULL)
            i++;
        ferry__etcd_kvs_free(kvs, n);
        *present_p = i;
    }
    free(full);
    free(ptrs);
    return st;
}

static ferry_status_t do_check(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    size_t present = 0;

    FERRY_CHECK(count_present(k, a->keys, a->n, &present));
    *a->ready_p = present == a->n;
    return FERRY_OK;
}

static ferry_status_t et_check(ferry__kv_t *kv, const char *const *keys,
                               size_t n, int *ready_p)
{
    args_t a = {.keys = keys, .n = n, .ready_p = ready_p};

    return run(of(kv), do_check, &a, true);
}

/* Waits for every key until end (ferry__now_ns() time); called under the
 * lock. Keys that appeared stay (nobody deletes a key another rank may
 * still wait for), so each read starts at the first one still missing. */
static ferry_status_t wait_until(kv_etcd_t *k, const char *const *keys,
                                 size_t n, uint64_t end)
{
    uint64_t pause = POLL_MIN_NS, started = ferry__now_ns();
    size_t done = 0;

    for (;;) {
        size_t present = 0;
        uint64_t now;

        FERRY_CHECK(count_present(k, keys + done, n - done, &present));
        done += present;
        if (done == n)
            return FERRY_OK;
        now = ferry__now_ns();
        if (now >= end)
            return ferry__error(FERRY_ERR_TIMEOUT, "etcd: '%s%s' still missing "
                                "after %" PRIu64 " ms", k->prefix, keys[done],
                                (now - started) / 1000000u);
        sleep_ns(end - now < pause ? end - now : pause);
        pause = pause * 2 > POLL_MAX_NS ? POLL_MAX_NS : pause * 2;
    }
}

typedef struct wait_args {
    const char *const *keys;
    size_t n;
    uint64_t end;
} wait_args_t;

static ferry_status_t do_wait(kv_etcd_t *k, void *a_)
{
    wait_args_t *a = a_;

    return wait_until(k, a->keys, a->n, a->end);
}

static ferry_status_t et_wait(ferry__kv_t *kv, const char *const *keys,
                              size_t n, int64_t timeout_ns)
{
    kv_etcd_t *k = of(kv);
    wait_args_t a = {.keys = keys, .n = n};

    pthread_mutex_lock(&k->lock);
    a.end = end_of(k, timeout_ns < 0 ? UINT64_MAX : (uint64_t)timeout_ns);
    pthread_mutex_unlock(&k->lock);
    return run(k, do_wait, &a, true);
}

static ferry_status_t do_compare_set(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char key[KEY_MAX];
    ferry__etcd_cond_t cond = {.kind = a->expected_len == 0
                                           ? FERRY__ETCD_IF_ABSENT
                                           : FERRY__ETCD_IF_VALUE,
                               .value = a->expected, .len = a->expected_len};
    ferry__etcd_kv_t *cur = NULL;
    size_t n = 0;
    bool done = false;
    void *v;
    size_t len;

    /* The TCPStore's rule: the value afterwards; expected itself for a
     * missing key that expected something. (An empty expected value
     * matches only a missing key here, never an empty one: the
     * communicator never stores an empty value where it compares.) */
    full_key(k, a->key, key);
    FERRY_CHECK(lease_status(k, ferry__etcd_put_if(&k->etcd, k->conn, key, &cond,
                                                   a->value, a->len, k->lease,
                                                   &done, &cur, &n)));
    if (done || n == 0) {
        len = done ? a->len : a->expected_len;
        v = dup_value(done ? a->value : a->expected, len);
    } else {
        len = cur[0].len;
        v = cur[0].value;
        cur[0].value = NULL;
    }
    ferry__etcd_kvs_free(cur, n);
    if (v == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    *a->value_p = v;
    *a->len_p = len;
    return FERRY_OK;
}

static ferry_status_t et_compare_set(ferry__kv_t *kv, const char *key,
                                     const void *expected, size_t expected_len,
                                     const void *desired, size_t desired_len,
                                     void **value_p, size_t *len_p)
{
    args_t a = {.key = key, .expected = expected, .expected_len = expected_len,
                .value = desired, .len = desired_len, .value_p = value_p,
                .len_p = len_p};

    /* Done twice, it answers the same: the second finds its own value. */
    return run(of(kv), do_compare_set, &a, true);
}

static ferry_status_t do_delete(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char key[KEY_MAX];

    full_key(k, a->key, key);
    return ferry__etcd_delete(&k->etcd, k->conn, key, NULL);
}

static ferry_status_t et_delete(ferry__kv_t *kv, const char *key)
{
    args_t a = {.key = key};

    return run(of(kv), do_delete, &a, true);
}

static ferry_status_t do_multi_get(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char (*full)[KEY_MAX] = malloc((a->n ? a->n : 1) * sizeof(*full));
    const char **ptrs = calloc(a->n ? a->n : 1, sizeof(*ptrs));
    ferry__etcd_kv_t *kvs = NULL;
    ferry_status_t st = FERRY_OK;

    if (full == NULL || ptrs == NULL)
        st = ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    /* As the TCPStore's, it waits for the keys first (up to the retry
     * time: the communicator reads only keys it knows are there). */
    if (st == FERRY_OK)
        st = wait_until(k, a->keys, a->n, end_of(k, k->retry_ns));
    for (size_t j = 0; st == FERRY_OK && j < a->n; j++) {
        full_key(k, a->keys[j], full[j]);
        ptrs[j] = full[j];
    }
    if (st == FERRY_OK)
        st = ferry__etcd_get_many(&k->etcd, k->conn, ptrs, a->n, false, &kvs);
    for (size_t j = 0; st == FERRY_OK && j < a->n; j++)
        if (kvs[j].key == NULL)
            st = ferry__error(FERRY_ERR_NOT_FOUND, "etcd: '%s' was deleted while "
                              "it was read", ptrs[j]);
    if (st == FERRY_OK) {
        for (size_t j = 0; j < a->n; j++) {
            a->values_p[j] = kvs[j].value;
            a->lens_p[j] = kvs[j].len;
            kvs[j].value = NULL;
        }
    }
    if (kvs != NULL)
        ferry__etcd_kvs_free(kvs, a->n);
    free(full);
    free(ptrs);
    return st;
}

static ferry_status_t et_multi_get(ferry__kv_t *kv, const char *const *keys,
                                   size_t n, void **values_p, size_t *lens_p)
{
    args_t a = {.keys = keys, .n = n, .values_p = values_p, .lens_p = lens_p};

    return run(of(kv), do_multi_get, &a, true);
}

static void et_set_cap(ferry__kv_t *kv, uint64_t deadline_ns)
{
    kv_etcd_t *k = of(kv);

    pthread_mutex_lock(&k->lock);
    k->cap_ns = deadline_ns;
    pthread_mutex_unlock(&k->lock);
}

static void et_close(ferry__kv_t *kv)
{
    kv_etcd_t *k = of(kv);

    /* The lease is the job's, not this handle's: it is left to expire. */
    ferry__etcd_conn_close(k->conn);
    ferry__etcd_fini(&k->etcd);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

static const ferry__kv_ops_t etcd_ops = {
    .size = sizeof(ferry__kv_ops_t),
    .set = et_set,
    .add = et_add,
    .check = et_check,
    .wait = et_wait,
    .compare_set = et_compare_set,
    .delete_key = et_delete,
    .multi_get = et_multi_get,
    .set_cap = et_set_cap,
    .close = et_close,
};

/* ------------------------------------------------------------------------ */
/* Opening: the job's lease                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Finds the job's lease under lease_key, or grants one and claims the key
 * for it (bound to it, so that it goes with the lease); the first handle of
 * the job to claim it wins, and the others use its lease.
 */
static ferry_status_t join_lease(kv_etcd_t *k, void *a_)
{
    const char *lease_key = a_;
    char key[KEY_MAX], text[24];

    full_key(k, lease_key, key);
    for (int attempt = 0; attempt < 5; attempt++) {
        ferry__etcd_cond_t absent = {.kind = FERRY__ETCD_IF_ABSENT};
        ferry__etcd_kv_t *cur = NULL;
        size_t n = 0;
        int64_t id = 0, ttl = 0;
        bool done = false;
        char *end;
        ferry_status_t st;

        FERRY_CHECK(ferry__etcd_range(&k->etcd, k->conn, key, false, false, &cur,
                                      &n, NULL));
        if (n > 0)
            id = strtoll(cur[0].value, &end, 10);
        ferry__etcd_kvs_free(cur, n);
        if (id != 0) {
            st = ferry__etcd_lease_keepalive(&k->etcd, k->conn, id, &ttl);
            if (st != FERRY_ERR_NOT_FOUND)
                FERRY_CHECK(st);
            if (st == FERRY_OK && ttl > 0) {
                k->lease = id;
                return FERRY_OK;
            }
            continue; /* it expired just now: its key goes with it */
        }
        FERRY_CHECK(ferry__etcd_lease_grant(&k->etcd, k->conn, k->ttl_s, &id));
        snprintf(text, sizeof(text), "%" PRId64, id);
        st = ferry__etcd_put_if(&k->etcd, k->conn, key, &absent, text,
                                strlen(text), id, &done, &cur, &n);
        ferry__etcd_kvs_free(cur, n);
        if (st == FERRY_OK && done) {
            k->lease = id;
            return FERRY_OK;
        }
        /* Another rank's lease won (or the claim failed): not this one. */
        if (ferry__etcd_lease_revoke(&k->etcd, k->conn, id) != FERRY_OK)
            ferry__debug("etcd: revoking an unused lease: %s", ferry_last_error());
        FERRY_CHECK(st);
    }
    return ferry__error(FERRY_ERR_BACKEND, "etcd: the job's lease under '%s%s' "
                        "kept changing", k->prefix, lease_key);
}

ferry_status_t ferry__kv_etcd_check_url(const char *url)
{
    ferry__etcd_t e = {0};
    char prefix[FERRY__ETCD_PREFIX_MAX + 1];

    FERRY_CHECK(ferry__etcd_parse_url(url, &e, prefix));
    ferry__etcd_fini(&e);
    return FERRY_OK;
}

ferry_status_t ferry__kv_etcd_open(const char *url, const char *lease_key,
                                   uint64_t ttl_ns, uint64_t connect_ns,
                                   uint64_t retry_ns, ferry__kv_t **kv_p)
{
    kv_etcd_t *k = calloc(1, sizeof(*k));
    char prefix[FERRY__ETCD_PREFIX_MAX + 1];
    ferry_status_t st;

    if (k == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    st = ferry__etcd_parse_url(url, &k->etcd, prefix);
    if (st != FERRY_OK) {
        free(k);
        return st;
    }
    k->base.ops = &etcd_ops;
    pthread_mutex_init(&k->lock, NULL);
    snprintf(k->prefix, sizeof(k->prefix), "%s/", prefix);
    snprintf(k->url, sizeof(k->url), "%s", url);
    /* One call to one member is held to the directory's limit; a call
     * that no member answers is tried again for retry_ns. */
    k->etcd.timeout_ns = ferry__config_get_size("FERRY_DIR_TIMEOUT_MS") * 1000000u;
    k->cap_ns = UINT64_MAX;
    k->retry_ns = connect_ns; /* the cluster need not be up yet */
    k->ttl_s = (int64_t)((ttl_ns + 999999999u) / 1000000000u);
    st = ferry__etcd_conn_open(&k->conn);
    if (st == FERRY_OK) {
        /* Not renewed while it is being found. */
        k->renewed_ns = ferry__now_ns();
        st = run(k, join_lease, (void *)lease_key, true);
        k->renewed_ns = ferry__now_ns();
        k->retry_ns = retry_ns;
    }
    if (st != FERRY_OK) {
        et_close(&k->base);
        return st;
    }
    *kv_p = &k->base;
    return FERRY_OK;
}
