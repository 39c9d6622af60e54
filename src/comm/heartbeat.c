/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The heartbeat and watch thread, which tells a dead rank from a slow one.
 * Each rank's thread writes its counter P hb/<r> every beat on a
 * connection of its own (so that a collective's long wait on the other one
 * never delays it) and, once the rank has joined, reads everyone else's; a
 * counter that has not moved for the liveness time gets its rank declared
 * dead, which is an abort naming that rank (abort.c). It also tells rank 0,
 * when it hosts the store, whether every other rank has left.
 */
#include "comm/comm.h"
#include "util/log.h"
#include "util/time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void hb_sleep(ferry_comm_t *c, uint64_t ns)
{
    struct timespec ts;
    uint64_t t;

    clock_gettime(CLOCK_REALTIME, &ts);
    t = (uint64_t)ts.tv_nsec + ns;
    ts.tv_sec += (time_t)(t / 1000000000ull);
    ts.tv_nsec = (long)(t % 1000000000ull);
    pthread_mutex_lock(&c->hb_lock);
    if (!c->hb_stop)
        pthread_cond_timedwait(&c->hb_cv, &c->hb_lock, &ts);
    pthread_mutex_unlock(&c->hb_lock);
}

/* Reads every rank's heartbeat (into vals and lens, n entries each, kept
 * by the caller across beats); declares dead (aborts the job for) the
 * first whose counter has not moved for the liveness time. */
static ferry_status_t hb_watch(ferry_comm_t *c, const char *const *keys, void **vals,
                               size_t *lens)
{
    size_t n = (size_t)c->size;
    uint64_t now;
    bool gone = true;
    ferry_status_t st;

    st = ferry__kv_multi_get(c->hb_kv, keys, n, vals, lens);
    now = ferry__now_ns();
    for (size_t i = 0; st == FERRY_OK && i < n; i++) {
        const char *v = vals[i];
        bool done = strcmp(v, "done") == 0;

        if (strncmp(v, c->hb_last[i], sizeof(c->hb_last[i]) - 1) != 0) {
            snprintf(c->hb_last[i], sizeof(c->hb_last[i]), "%s", v);
            c->hb_changed[i] = now;
        } else if (!done && (int)i != c->rank &&
                   now - c->hb_changed[i] > c->cfg.liveness_ns) {
            char reason[160];

            if (!atomic_load(&c->aborted)) {
                snprintf(reason, sizeof(reason),
                         "no heartbeat for %llu ms: the process died or "
                         "stalled (noticed by rank %d)",
                         (unsigned long long)((now - c->hb_changed[i]) /
                                              1000000), c->rank);
                ferry__warn("comm: rank %zu: %s", i, reason);
                int r = ferry__comm_publish_abort(c, c->hb_kv, (int)i, reason);

                if (r < 0)
                    st = r;
            }
            continue; /* dead counts as gone */
        }
        if ((int)i != c->rank && !done)
            gone = false;
    }
    for (size_t i = 0; i < n; i++) {
        ferry_store_free(vals[i]);
        vals[i] = NULL;
    }
    if (st == FERRY_OK) {
        pthread_mutex_lock(&c->hb_lock);
        c->others_gone = gone;
        pthread_cond_broadcast(&c->hb_cv);
        pthread_mutex_unlock(&c->hb_lock);
    }
    return st;
}

static void *hb_main(void *arg)
{
    ferry_comm_t *c = arg;
    char key[FERRY__COMM_KEY_MAX], val[32];
    const char **keys;
    void **vals = calloc((size_t)c->size, sizeof(*vals));
    size_t *lens = calloc((size_t)c->size, sizeof(*lens));
    ferry_status_t st = FERRY_OK;
    uint64_t beat = 0;

    ferry__comm_key(c, key, "hb/");
    keys = ferry__comm_rank_keys(c, key);
    ferry__comm_key(c, key, "hb/%d", c->rank);
    for (;;) {
        bool watch;

        pthread_mutex_lock(&c->hb_lock);
        watch = c->hb_watch;
        if (c->hb_stop) {
            pthread_mutex_unlock(&c->hb_lock);
            break;
        }
        pthread_mutex_unlock(&c->hb_lock);
        snprintf(val, sizeof(val), "%llu", (unsigned long long)++beat);
        st = ferry__kv_set(c->hb_kv, key, val, strlen(val));
        if (st == FERRY_OK && watch && keys && vals && lens)
            st = hb_watch(c, keys, vals, lens);
        if (st != FERRY_OK)
            break;
        hb_sleep(c, c->beat_ns);
    }
    if (st != FERRY_OK)
        ferry__debug("comm: heartbeat stops: %s", ferry_last_error());
    pthread_mutex_lock(&c->hb_lock);
    c->hb_failed = st != FERRY_OK;
    pthread_cond_broadcast(&c->hb_cv);
    pthread_mutex_unlock(&c->hb_lock);
    free(keys);
    free(vals);
    free(lens);
    return NULL;
}

ferry_status_t ferry__comm_hb_start(ferry_comm_t *c)
{
    if (pthread_create(&c->hb_thread, NULL, hb_main, c) != 0)
        return ferry__error(FERRY_ERR_SYSTEM, "comm: cannot start the "
                            "heartbeat thread");
    c->hb_started = true;
    return FERRY_OK;
}

void ferry__comm_hb_stop(ferry_comm_t *c)
{
    if (!c->hb_started)
        return;
    pthread_mutex_lock(&c->hb_lock);
    c->hb_stop = true;
    pthread_cond_broadcast(&c->hb_cv);
    pthread_mutex_unlock(&c->hb_lock);
    pthread_join(c->hb_thread, NULL);
    c->hb_started = false;
}
