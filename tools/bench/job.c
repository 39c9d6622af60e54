/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Joining the job and the store's keys (job.h).
 */
#include "job.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX 384

struct wait_note {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool over;
    void (*fn)(const void *arg);
    const void *arg;
};

static void *wait_thread(void *arg)
{
    wait_note_t *w = arg;
    struct timespec at;
    int rc = 0;

    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_sec += (time_t)(WAIT_NOTE_NS / 1000000000ull);
    at.tv_nsec += (long)(WAIT_NOTE_NS % 1000000000ull);
    if (at.tv_nsec >= 1000000000L) {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->over && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &at);
    }
    pthread_mutex_unlock(&w->mu);
    if (rc == ETIMEDOUT) {
        w->fn(w->arg);
    }
    return NULL;
}

wait_note_t *wait_begin(void (*fn)(const void *arg), const void *arg)
{
    wait_note_t *w = xcalloc(1, sizeof(*w));
    pthread_condattr_t ca;

    w->fn = fn;
    w->arg = arg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->tid, NULL, wait_thread, w) != 0) {
        die("pthread_create failed");
    }
    return w;
}

void wait_end(wait_note_t *w)
{
    pthread_mutex_lock(&w->mu);
    w->over = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->tid, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void wait_say(const void *text)
{
    note("%s", (const char *)text);
}

/* Port 0 asks the system for any free port when listening, so no store a
 * client could reach has it: the user copied a server's request, not the
 * port it printed. */
static void check_port(const char *url, const char *from)
{
    const char *colon = strrchr(url, ':');

    if (colon != NULL && strcmp(colon + 1, "0") == 0) {
        die("the store URL %s (%s) has port 0, where no store listens: give "
            "the port the store printed (ferry-store says \"listening on ... "
            "port N\")", url, from);
    }
}

static void say_store(const void *arg)
{
    const job_t *j = arg;

    note("waiting for the store at %s: it does not answer yet (giving up "
         "after %.0f s, --timeout)", j->url, (double)j->timeout_ns / 1e9);
}

static void connect_store(job_t *j, const char *url, const char *from)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = (uint64_t)j->timeout_ns};
    wait_note_t *w;
    ferry_status_t st;

    if (snprintf(j->url, sizeof(j->url), "%s", url) >= (int)sizeof(j->url)) {
        die("the store URL '%s' is too long", url);
    }
    check_port(url, from);
    w = wait_begin(say_store, j);
    st = ferry_store_connect(url, &sp, &j->store);
    wait_end(w);
    CHECK(st, "cannot reach the store %s (%s)", url, from);
}

/* The store a launcher's environment names, as the communicator finds it,
 * and where it came from. */
static const char *env_url(char *buf, size_t cap, const char **from_p)
{
    const char *url = getenv("FERRY_STORE");
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");

    if (url != NULL && *url != '\0') {
        *from_p = "FERRY_STORE";
        return url;
    }
    if (addr == NULL || port == NULL) {
        die("this rank's launcher set neither FERRY_STORE nor MASTER_ADDR and "
            "MASTER_PORT: nothing says where the job's store is");
    }
    snprintf(buf, cap, "tcp://%s:%s", addr, port);
    *from_p = "MASTER_ADDR and MASTER_PORT";
    return buf;
}

typedef struct join_wait {
    const job_t *j;
    int rank, world;
} join_wait_t;

/* Names the ranks that have not joined yet, from the communicator's join
 * keys (docs/COMM.md), read through a connection of its own; or, when the
 * store does not answer either, says so. */
static void say_join(const void *arg)
{
    const join_wait_t *jw = arg;
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = 500000000ull};
    ferry_store_t *s;
    char missing[256] = "", key[KEY_MAX];
    size_t n = 0;
    int nmissing = 0;

    if (ferry_store_connect(jw->j->url, &sp, &s) != FERRY_OK) {
        say_store(jw->j);
        return;
    }
    for (int r = 0; r < jw->world; r++) {
        const char *keys[1] = {key};
        int ready = 1;

        snprintf(key, sizeof(key), "%sjoin/%d", jw->j->prefix, r);
        if (r != jw->rank && ferry_store_check(s, keys, 1, &ready) == FERRY_OK &&
            !ready && n + 16 < sizeof(missing)) {
            n += (size_t)snprintf(missing + n, sizeof(missing) - n, "%s%d",
                                  nmissing ? ", " : "", r);
            nmissing++;
        }
    }
    ferry_store_close(s);
    if (nmissing == 0) {
        note("waiting for the other ranks of %d to join at %s", jw->world,
             jw->j->url);
        return;
    }
    note("waiting for rank%s %s of %d to join at %s (giving up after %.0f s, "
         "--timeout)", nmissing > 1 ? "s" : "", missing, jw->world, jw->j->url,
         (double)jw->j->timeout_ns / 1e9);
}

/* The rank and size the launcher's environment gives, as the communicator
 * reads them, for the waiting line; -1 where unknown. */
static int env_int(const char *a, const char *b)
{
    const char *v = getenv(a);

    if (v == NULL) {
        v = getenv(b);
    }
    return v != NULL ? atoi(v) : -1;
}

void job_join(job_t *j, options_t *o)
{
    ferry_comm_params_t cp = {.field_mask = FERRY_COMM_PARAM_TIMEOUT |
                                            FERRY_COMM_PARAM_PREFIX};
    join_wait_t jw = {.j = j, .rank = o->rank, .world = o->world};
    char urlbuf[300];
    const char *url, *from;
    wait_note_t *w;
    ferry_status_t st;

    memset(j, 0, sizeof(*j));
    j->timeout_ns = (int64_t)o->timeout_ns;
    cp.timeout_ns = o->timeout_ns;
    if (o->store_url != NULL) {
        int64_t arrived;

        /* A run's keys live under a generation number, so that a store used
         * before (a long-lived ferry-store) holds nothing this run misreads. */
        connect_store(j, o->store_url, "--store");
        CHECK(ferry_store_add(j->store, "ferry-bench/arrivals", 1, &arrived),
              "cannot count this run's ranks in the store %s", j->url);
        snprintf(j->prefix, sizeof(j->prefix), "ferry-bench/%" PRId64 "/",
                 (arrived - 1) / o->world);
        cp.field_mask |= FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                         FERRY_COMM_PARAM_STORE_URL;
        cp.rank = o->rank;
        cp.size = o->world;
        cp.store_url = o->store_url;
        url = o->store_url;
        from = "--store";
    } else {
        const char *p = getenv("FERRY_COMM_PREFIX");

        snprintf(j->prefix, sizeof(j->prefix), "%s",
                 p != NULL && *p != '\0' ? p : "ferry/");
        url = env_url(urlbuf, sizeof(urlbuf), &from);
        check_port(url, from);
        snprintf(j->url, sizeof(j->url), "%s", url);
        jw.rank = env_int("FERRY_RANK", "RANK");
        jw.world = env_int("FERRY_WORLD_SIZE", "WORLD_SIZE");
    }
    cp.prefix = j->prefix;
    w = wait_begin(say_join, &jw);
    st = ferry_comm_create(&cp, &j->comm);
    wait_end(w);
    CHECK(st, "cannot join the job at the store %s (%s)", url, from);
    if (o->store_url == NULL) {
        int world = ferry_comm_size(j->comm);

        if (o->world_set && o->world != world) {
            die("-n %d, but the job has %d ranks", o->world, world);
        }
        o->world = world;
        o->rank = ferry_comm_rank(j->comm);
        options_check_world(o);
        /* After the communicator: rank 0 may have started the store. */
        connect_store(j, url, from);
    }
}

void job_join_initiators(job_t *j, int index, int n)
{
    char prefix[sizeof(j->prefix) + 8];
    ferry_comm_params_t cp = {
        .field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                      FERRY_COMM_PARAM_STORE_URL | FERRY_COMM_PARAM_TIMEOUT |
                      FERRY_COMM_PARAM_PREFIX,
        .rank = index, .size = n, .timeout_ns = (uint64_t)j->timeout_ns,
        .prefix = prefix};

    cp.store_url = j->url;
    snprintf(prefix, sizeof(prefix), "%si/", j->prefix);
    CHECK(ferry_comm_create(&cp, &j->initiators),
          "the initiating ranks cannot meet at the store %s", j->url);
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
    CHECK(ferry_store_set(j->store, key, v, len),
          "cannot set %s in the store %s", key, j->url);
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
    CHECK(ferry_store_get(j->store, key, &v, &got),
          "no answer under %s in the store %s", key, j->url);
    if (got != len) {
        die("the store key %s holds %zu bytes, not %zu", key, got, len);
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
    CHECK(ferry_store_add(j->store, key, delta, &v),
          "cannot add to %s in the store %s", key, j->url);
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
    CHECK(ferry_store_check(j->store, keys, 1, &ready),
          "cannot look up %s in the store %s", key, j->url);
    return ready != 0;
}
