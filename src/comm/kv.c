/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator's store operations (kv.h) on a c10d TCPStore: each is
 * the ferry_store_* call of the same name on the connection the handle
 * owns, which serialises its calls itself. kv_etcd.c has the same
 * operations on etcd.
 */
#include "comm/kv.h"
#include "store/store.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

typedef struct kv_store {
    ferry__kv_t base;
    ferry_store_t *s;
} kv_store_t;

static ferry_store_t *store_of(ferry__kv_t *kv)
{
    return ((kv_store_t *)(void *)kv)->s;
}

static ferry_status_t st_set(ferry__kv_t *kv, const char *key,
                             const void *value, size_t len)
{
    return ferry_store_set(store_of(kv), key, value, len);
}

static ferry_status_t st_add(ferry__kv_t *kv, const char *key, int64_t delta,
                             int64_t *value_p)
{
    return ferry_store_add(store_of(kv), key, delta, value_p);
}

static ferry_status_t st_check(ferry__kv_t *kv, const char *const *keys,
                               size_t n, int *ready_p)
{
    return ferry_store_check(store_of(kv), keys, n, ready_p);
}

static ferry_status_t st_wait(ferry__kv_t *kv, const char *const *keys,
                              size_t n, int64_t timeout_ns)
{
    return ferry_store_wait(store_of(kv), keys, n, timeout_ns);
}

static ferry_status_t st_compare_set(ferry__kv_t *kv, const char *key,
                                     const void *expected, size_t expected_len,
                                     const void *desired, size_t desired_len,
                                     void **value_p, size_t *len_p)
{
    return ferry_store_compare_set(store_of(kv), key, expected, expected_len,
                                   desired, desired_len, value_p, len_p);
}

static ferry_status_t st_delete(ferry__kv_t *kv, const char *key)
{
    return ferry_store_delete_key(store_of(kv), key, NULL);
}

static ferry_status_t st_multi_get(ferry__kv_t *kv, const char *const *keys,
                                   size_t n, void **values_p, size_t *lens_p)
{
    return ferry_store_multi_get(store_of(kv), keys, n, values_p, lens_p);
}

static void st_set_cap(ferry__kv_t *kv, uint64_t deadline_ns)
{
    ferry__store_set_cap(store_of(kv), deadline_ns);
}

static bool st_lost(ferry__kv_t *kv)
{
    return ferry__store_lost(store_of(kv));
}

static void st_close(ferry__kv_t *kv)
{
    ferry_store_close(store_of(kv));
    free(kv);
}

static const ferry__kv_ops_t store_ops = {
    .size = sizeof(ferry__kv_ops_t),
    .set = st_set,
    .add = st_add,
    .check = st_check,
    .wait = st_wait,
    .compare_set = st_compare_set,
    .delete_key = st_delete,
    .multi_get = st_multi_get,
    .set_cap = st_set_cap,
    .lost = st_lost,
    .close = st_close,
};

bool ferry__kv_is_etcd(const char *url)
{
    return url != NULL && strncmp(url, "etcd://", 7) == 0;
}

ferry_status_t ferry__kv_from_store(ferry_store_t *s, ferry__kv_t **kv_p)
{
    kv_store_t *k = calloc(1, sizeof(*k));

    if (k == NULL) {
        ferry_store_close(s);
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm: no memory");
    }
    k->base.ops = &store_ops;
    k->s = s;
    *kv_p = &k->base;
    return FERRY_OK;
}
