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
 * lost store (FERRY_ERR_PEER_LOST, or what the last try got).
 *
 * A request whose answer got lost may have been carried out, and is tried
 * again (on another member), so every operation must be safe to repeat. A
 * put, a delete and a compare_set are (a repeated compare_set finds its own
 * value). An ADD is made so: a counter's value is the list of the ADDs
 * that made it, one line "<token> <delta>" each, the token unique to that
 * ADD; one tried again finds its token there and answers the sum up to it
 * instead of adding twice. (A counter that an ADD of a member that then
 * died counted twice made a round hold 5 of 4 ranks.)
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
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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
    _Atomic uint64_t cap_ns; /* set by any thread (et_set_cap) */
    uint64_t retry_ns;
    int64_t lease, ttl_s;
    uint64_t renewed_ns;
    uint64_t token_base, adds; /* an ADD's token: "<base>-<adds>" */
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

    uint64_t cap = atomic_load(&k->cap_ns);

    return end < cap ? end : cap;
}

/* Renews the job's lease once a third of its TTL has passed; not while
 * it is being found (lease 0), which may take longer when the cluster
 * comes up after the job. */
static ferry_status_t renew(kv_etcd_t *k)
{
    int64_t ttl = 0;
    ferry_status_t st;

    if (k->lease == 0 ||
        ferry__now_ns() - k->renewed_ns < (uint64_t)k->ttl_s * 1000000000ull / 3)
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
 * retry_ns from the first try that none answered (a wait may have gone on
 * for longer than that before the cluster went away).
 */
static ferry_status_t run(kv_etcd_t *k, op_fn op, void *args)
{
    ferry_status_t st;
    uint64_t end = 0, cap;

    pthread_mutex_lock(&k->lock);
    /* Again if et_set_cap() moved the cap meanwhile: its deadline must
     * not be overwritten with the cap before it. */
    do {
        cap = atomic_load(&k->cap_ns);
        atomic_store(&k->etcd.deadline_ns, cap == UINT64_MAX ? 0 : cap);
    } while (cap != atomic_load(&k->cap_ns));
    for (;;) {
        st = renew(k);
        if (st == FERRY_OK)
            st = op(k, args);
        if (st == FERRY_OK || !atomic_load(&k->etcd.unanswered))
            break;
        if (end == 0)
            end = end_of(k, k->retry_ns);
        if (ferry__now_ns() + RETRY_PAUSE_NS >= end ||
            ferry__now_ns() + RETRY_PAUSE_NS >= atomic_load(&k->cap_ns))
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
    const char *token;
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

    return run(of(kv), do_set, &a);
}

/*
 * Reads a counter: the lines "<token> <delta>" of the ADDs that made it.
 * *sum_p the sum of all; *mine_p the sum up to and including the line with
 * token, or INT64_MIN when token is not there.
 */
static ferry_status_t parse_count(const char *key, const ferry__etcd_kv_t *kv,
                                  const char *token, int64_t *sum_p,
                                  int64_t *mine_p)
{
    const char *p = kv->value, *end = p + kv->len;
    size_t tlen = strlen(token);
    int64_t sum = 0;

    *mine_p = INT64_MIN;
    while (p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p)), *nl;
        char *e;
        long long d;

        nl = sp ? memchr(sp, '\n', (size_t)(end - sp)) : NULL;
        errno = 0;
        d = sp && nl ? strtoll(sp + 1, &e, 10) : 0;
        if (sp == NULL || nl == NULL || e != nl || errno != 0)
            return ferry__error(FERRY_ERR_PROTOCOL, "etcd: add: '%s' holds "
                                "'%.40s', not a counter of ADDs", key,
                                (char *)kv->value);
        if (__builtin_add_overflow(sum, (int64_t)d, &sum))
            return ferry__error(FERRY_ERR_PROTOCOL, "etcd: add: '%s' holds "
                                "ADDs whose sum is past a 64-bit counter's "
                                "range", key);
        if ((size_t)(sp - p) == tlen && memcmp(p, token, tlen) == 0)
            *mine_p = sum;
        p = nl + 1;
    }
    *sum_p = sum;
    return FERRY_OK;
}

static ferry_status_t do_add(kv_etcd_t *k, void *a_)
{
    args_t *a = a_;
    char key[KEY_MAX], line[64];
    ferry__etcd_cond_t cond = {.kind = FERRY__ETCD_IF_ABSENT};
    ferry__etcd_kv_t *cur = NULL;
    size_t n = 0;
    int64_t sum = 0;

    full_key(k, a->key, key);
    snprintf(line, sizeof(line), "%s %" PRId64 "\n", a->token, a->delta);
    /* Each failed comparison means another rank's ADD went first, so the
     * loop ends after at most one turn per rank. */
    for (;;) {
        size_t old = n > 0 ? cur[0].len : 0, len = old + strlen(line);
        char *v;
        bool done = false;
        int64_t after;
        ferry_status_t st;

        if (__builtin_add_overflow(sum, a->delta, &after)) {
            ferry__etcd_kvs_free(cur, n);
            return ferry__error(FERRY_ERR_INVALID, "etcd: add: '%s' is %" PRId64
                                ": adding %" PRId64 " would pass a 64-bit "
                                "counter's range", a->key, sum, a->delta);
        }
        v = malloc(len + 1);
        if (v == NULL) {
            ferry__etcd_kvs_free(cur, n);
            return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
        }
        if (old > 0)
            memcpy(v, cur[0].value, old);
        strcpy(v + old, line);
        ferry__etcd_kvs_free(cur, n);
        cur = NULL;
        n = 0;
        st = ferry__etcd_put_if(&k->etcd, k->conn, key, &cond, v, len, k->lease,
                                &done, &cur, &n);
        free(v);
        FERRY_CHECK(lease_status(k, st));
        if (done) {
            *a->sum_p = after;
            return FERRY_OK;
        }
        sum = 0;
        cond.kind = FERRY__ETCD_IF_ABSENT;
        if (n > 0) {
            int64_t mine;

            st = parse_count(a->key, &cur[0], a->token, &sum, &mine);
            if (st == FERRY_OK && mine != INT64_MIN) {
                /* This ADD, tried again: it was done the first time. */
                *a->sum_p = mine;
                ferry__etcd_kvs_free(cur, n);
                return FERRY_OK;
            }
            cond.kind = FERRY__ETCD_IF_MOD_REV;
            cond.mod_rev = cur[0].mod_rev;
            if (st != FERRY_OK) {
                ferry__etcd_kvs_free(cur, n);
                return st;
            }
        }
    }
}

static ferry_status_t et_add(ferry__kv_t *kv, const char *key, int64_t delta,
                             int64_t *value_p)
{
    kv_etcd_t *k = of(kv);
    char token[48];
    args_t a = {.key = key, .delta = delta, .sum_p = value_p, .token = token};

    pthread_mutex_lock(&k->lock);
    snprintf(token, sizeof(token), "%016" PRIx64 "-%" PRIu64, k->token_base,
             ++k->adds);
    pthread_mutex_unlock(&k->lock);
    return run(k, do_add, &a);
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

    return run(of(kv), do_check, &a);
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
    return run(k, do_wait, &a);
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
    return run(of(kv), do_compare_set, &a);
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

    return run(of(kv), do_delete, &a);
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

    return run(of(kv), do_multi_get, &a);
}

static void et_set_cap(ferry__kv_t *kv, uint64_t deadline_ns)
{
    kv_etcd_t *k = of(kv);

    /* Not under the lock, which a call under way holds: it sees the new
     * deadline within a second (etcd.c). */
    atomic_store(&k->cap_ns, deadline_ns);
    atomic_store(&k->etcd.deadline_ns, deadline_ns == UINT64_MAX ? 0 : deadline_ns);
}

/* Each call tries the members again: no failure closes the handle. */
static bool et_lost(ferry__kv_t *kv)
{
    (void)kv;
    return false;
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
    .lost = et_lost,
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
        if (n > 0) {
            errno = 0;
            id = strtoll(cur[0].value, &end, 10);
            if (end == (char *)cur[0].value || *end != '\0' || errno != 0 || id <= 0) {
                st = ferry__error(FERRY_ERR_PROTOCOL, "etcd: '%s' holds '%.40s', not "
                                  "a lease ID", key, (char *)cur[0].value);
                ferry__etcd_kvs_free(cur, n);
                return st;
            }
        }
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
    k->retry_ns = connect_ns;
    if (getrandom(&k->token_base, sizeof(k->token_base), 0) != sizeof(k->token_base))
        k->token_base = ferry__now_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)k; /* the cluster need not be up yet */
    k->ttl_s = (int64_t)((ttl_ns + 999999999u) / 1000000000u);
    st = ferry__etcd_conn_open(&k->conn);
    if (st == FERRY_OK) {
        /* Not renewed while it is being found. */
        k->renewed_ns = ferry__now_ns();
        st = run(k, join_lease, (void *)lease_key);
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
