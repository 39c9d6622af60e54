/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The store operations the communicator makes, behind one ops table, so
 * that the rounds, the abort, the heartbeat and the exchange are written
 * once and run over either kind of store its URL names:
 *   tcp://host:port             a c10d TCPStore (src/store/), kv.c
 *   etcd://host:port[,...]/pfx  an etcd cluster (src/dir/etcd.c), kv_etcd.c
 * Each operation has the meaning of the ferry_store_* function of the same
 * name (include/ferry/store.h): values come back in new buffers with a zero
 * byte after them, to be freed with ferry_store_free(). A handle may be
 * used from any thread; calls are serialised.
 */
#ifndef FERRY_COMM_KV_H
#define FERRY_COMM_KV_H

#include "ferry.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ferry__kv ferry__kv_t;

typedef struct ferry__kv_ops {
    size_t size; /* sizeof(ferry__kv_ops_t) */
    ferry_status_t (*set)(ferry__kv_t *kv, const char *key, const void *value,
                          size_t len);
    ferry_status_t (*add)(ferry__kv_t *kv, const char *key, int64_t delta,
                          int64_t *value_p);
    ferry_status_t (*check)(ferry__kv_t *kv, const char *const *keys, size_t n,
                            int *ready_p);
    ferry_status_t (*wait)(ferry__kv_t *kv, const char *const *keys, size_t n,
                           int64_t timeout_ns);
    ferry_status_t (*compare_set)(ferry__kv_t *kv, const char *key,
                                  const void *expected, size_t expected_len,
                                  const void *desired, size_t desired_len,
                                  void **value_p, size_t *len_p);
    ferry_status_t (*delete_key)(ferry__kv_t *kv, const char *key);
    ferry_status_t (*multi_get)(ferry__kv_t *kv, const char *const *keys,
                                size_t n, void **values_p, size_t *lens_p);
    /* No later call goes past deadline_ns (ferry__now_ns() time;
     * UINT64_MAX: no cap): a collective's deadline (round.c). */
    void (*set_cap)(ferry__kv_t *kv, uint64_t deadline_ns);
    /* Whether a failure has closed the handle for good, so that every
     * later call fails at once (a TCPStore connection whose reply did not
     * come in time); etcd's calls each try again, so never there. */
    bool (*lost)(ferry__kv_t *kv);
    void (*close)(ferry__kv_t *kv);
} ferry__kv_ops_t;

struct ferry__kv {
    const ferry__kv_ops_t *ops;
};

/* Whether url names an etcd cluster ("etcd://..."). */
bool ferry__kv_is_etcd(const char *url);

/* A handle over store s, which it owns from now on (closed with it, or
 * here if the handle cannot be made). */
ferry_status_t ferry__kv_from_store(ferry_store_t *s, ferry__kv_t **kv_p);

/*
 * A handle on the etcd cluster of url, whose prefix is put before every key
 * ("<prefix>/<key>"). Every key it sets is bound to the job's lease, whose
 * ID is kept under the key lease_key: the first handle of the job grants
 * it (ttl_ns), the others find it, and every call renews it once a third
 * of its TTL has passed, so the job's keys vanish a TTL after its last
 * process stopped. A call that finds no member answering retries until
 * retry_ns have passed since that first unanswered try (or its cap), then
 * fails with what the last try got; opening retries for connect_ns (the
 * cluster need not be up yet).
 * FERRY_ERR_INVALID for a malformed URL; FERRY_ERR_UNSUPPORTED in a build
 * without the directory (kv_none.c).
 */
ferry_status_t ferry__kv_etcd_open(const char *url, const char *lease_key,
                                   uint64_t ttl_ns, uint64_t connect_ns,
                                   uint64_t retry_ns, ferry__kv_t **kv_p);

/* Checks an etcd URL without contacting it: FERRY_ERR_INVALID naming what
 * is wrong, FERRY_ERR_UNSUPPORTED in a build without the directory. */
ferry_status_t ferry__kv_etcd_check_url(const char *url);

static inline ferry_status_t ferry__kv_set(ferry__kv_t *kv, const char *key,
                                           const void *value, size_t len)
{
    return kv->ops->set(kv, key, value, len);
}

static inline ferry_status_t ferry__kv_add(ferry__kv_t *kv, const char *key,
                                           int64_t delta, int64_t *value_p)
{
    return kv->ops->add(kv, key, delta, value_p);
}

static inline ferry_status_t ferry__kv_check(ferry__kv_t *kv,
                                             const char *const *keys, size_t n,
                                             int *ready_p)
{
    return kv->ops->check(kv, keys, n, ready_p);
}

static inline ferry_status_t ferry__kv_wait(ferry__kv_t *kv,
                                            const char *const *keys, size_t n,
                                            int64_t timeout_ns)
{
    return kv->ops->wait(kv, keys, n, timeout_ns);
}

static inline ferry_status_t
ferry__kv_compare_set(ferry__kv_t *kv, const char *key, const void *expected,
                      size_t expected_len, const void *desired,
                      size_t desired_len, void **value_p, size_t *len_p)
{
    return kv->ops->compare_set(kv, key, expected, expected_len, desired,
                                desired_len, value_p, len_p);
}

static inline ferry_status_t ferry__kv_multi_get(ferry__kv_t *kv,
                                                 const char *const *keys,
                                                 size_t n, void **values_p,
                                                 size_t *lens_p)
{
    return kv->ops->multi_get(kv, keys, n, values_p, lens_p);
}

/* One key's value: multi_get of one. */
static inline ferry_status_t ferry__kv_get(ferry__kv_t *kv, const char *key,
                                           void **value_p, size_t *len_p)
{
    return kv->ops->multi_get(kv, &key, 1, value_p, len_p);
}

static inline ferry_status_t ferry__kv_delete(ferry__kv_t *kv, const char *key)
{
    return kv->ops->delete_key(kv, key);
}

static inline void ferry__kv_set_cap(ferry__kv_t *kv, uint64_t deadline_ns)
{
    kv->ops->set_cap(kv, deadline_ns);
}

static inline bool ferry__kv_lost(ferry__kv_t *kv)
{
    return kv->ops->lost(kv);
}

/* Closes the handle; accepts NULL. */
static inline void ferry__kv_close(ferry__kv_t *kv)
{
    if (kv != NULL)
        kv->ops->close(kv);
}

#endif
