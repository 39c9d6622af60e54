/*
 * Joining the job and the store's keys (job.h).
 */
#include "job.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 384

static void connect_store(job_t *j, const char *url)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = STORE_TIMEOUT_NS};

    if (snprintf(j->url, sizeof(j->url), "%s", url) >= (int)sizeof(j->url)) {
        die("store URL '%s' is too long", url);
    }
    CHECK(ferry_store_connect(url, &sp, &j->store));
}

/* The store a launcher's environment names, as the communicator finds it. */
static const char *env_url(char *buf, size_t cap)
{
    const char *url = getenv("FERRY_STORE");
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");

    if (url != NULL && *url != '\0') {
        return url;
    }
    if (addr == NULL || port == NULL) {
        die("FERRY_RANK is set but neither FERRY_STORE nor MASTER_ADDR and "
            "MASTER_PORT say where the job's store is");
    }
    snprintf(buf, cap, "tcp://%s:%s", addr, port);
    return buf;
}

void job_join(job_t *j, options_t *o)
{
    ferry_comm_params_t cp = {.field_mask = FERRY_COMM_PARAM_TIMEOUT |
                                            FERRY_COMM_PARAM_PREFIX,
                              .timeout_ns = STORE_TIMEOUT_NS};
    char urlbuf[300];

    memset(j, 0, sizeof(*j));
    if (o->store_url != NULL) {
        int64_t arrived;

        /* A run's keys live under a generation number, so that a store used
         * before (a long-lived ferry-store) holds nothing this run misreads. */
        connect_store(j, o->store_url);
        CHECK(ferry_store_add(j->store, "ferry-bench/arrivals", 1, &arrived));
        snprintf(j->prefix, sizeof(j->prefix), "ferry-bench/%" PRId64 "/",
                 (arrived - 1) / o->world);
        cp.field_mask |= FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                         FERRY_COMM_PARAM_STORE_URL;
        cp.rank = o->rank;
        cp.size = o->world;
        cp.store_url = o->store_url;
    } else {
        const char *p = getenv("FERRY_COMM_PREFIX");

        snprintf(j->prefix, sizeof(j->prefix), "%s",
                 p != NULL && *p != '\0' ? p : "ferry/");
    }
    cp.prefix = j->prefix;
    CHECK(ferry_comm_create(&cp, &j->comm));
    if (o->store_url == NULL) {
        int world = ferry_comm_size(j->comm);

        if (o->world_set && o->world != world) {
            die("-n %d, but the job has %d ranks", o->world, world);
        }
        o->world = world;
        o->rank = ferry_comm_rank(j->comm);
        options_check_world(o);
        /* After the communicator: rank 0 may have started the store. */
        connect_store(j, env_url(urlbuf, sizeof(urlbuf)));
    }
}

void job_join_initiators(job_t *j, int index, int n)
{
    char prefix[sizeof(j->prefix) + 8];
    ferry_comm_params_t cp = {
        .field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                      FERRY_COMM_PARAM_STORE_URL | FERRY_COMM_PARAM_TIMEOUT |
                      FERRY_COMM_PARAM_PREFIX,
        .rank = index, .size = n, .timeout_ns = STORE_TIMEOUT_NS,
        .prefix = prefix};

    cp.store_url = j->url;
    snprintf(prefix, sizeof(prefix), "%si/", j->prefix);
    CHECK(ferry_comm_create(&cp, &j->initiators));
}

void job_leave(job_t *j)
{
    ferry_comm_destroy(j->initiators);
    ferry_comm_destroy(j->comm);
    ferry_store_close(j->store);
}

static void key_fmt(const job_t *j, char *key, size_t cap, const char *fmt,
                    va_list ap)
{
    int n = snprintf(key, cap, "%sb/", j->prefix);

    vsnprintf(key + n, cap - (size_t)n, fmt, ap);
}

void kv_set(const job_t *j, const void *v, size_t len, const char *fmt, ...)
{
    char key[KEY_MAX];
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_set(j->store, key, v, len));
}

void kv_get_exact(const job_t *j, void *out, size_t len, const char *fmt, ...)
{
    char key[KEY_MAX];
    void *v;
    size_t got;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_get(j->store, key, &v, &got));
    if (got != len) {
        die("store key %s holds %zu bytes, expected %zu", key, got, len);
    }
    memcpy(out, v, len);
    ferry_store_free(v);
}

int64_t kv_add(const job_t *j, int64_t delta, const char *fmt, ...)
{
    char key[KEY_MAX];
    int64_t v;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_add(j->store, key, delta, &v));
    return v;
}

bool kv_has(const job_t *j, const char *fmt, ...)
{
    char key[KEY_MAX];
    const char *keys[1] = {key};
    int ready;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_check(j->store, keys, 1, &ready));
    return ready != 0;
}
