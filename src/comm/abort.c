/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The job-wide abort: the one way a failure on one rank reaches every
 * other, so that no collective waits for a rank that will never come. An
 * abort is "<rank> <reason>" under the key P abort; the first one published
 * wins (compare_set on a missing key), so every rank reports the same one.
 * Ranks publish it when asked (ferry_comm_abort()), when their own
 * deadline passes (round.c), and for a rank whose heartbeat stopped
 * (heartbeat.c); they see it between the slices of their waits. Once seen,
 * it is kept locally, and every later collective returns it at once.
 */
#include "comm/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Records the job's abort locally (the first one seen wins). */
static void set_aborted(ferry_comm_t *c, const char *text)
{
    pthread_mutex_lock(&c->abort_lock);
    if (!atomic_load(&c->aborted)) {
        snprintf(c->abort_text, sizeof(c->abort_text), "%s", text);
        atomic_store(&c->aborted, true);
    }
    pthread_mutex_unlock(&c->abort_lock);
}

ferry_status_t ferry__comm_aborted(ferry_comm_t *c)
{
    char text[FERRY__COMM_TEXT_MAX];

    if (!atomic_load(&c->aborted))
        return FERRY_OK;
    pthread_mutex_lock(&c->abort_lock);
    memcpy(text, c->abort_text, sizeof(text));
    pthread_mutex_unlock(&c->abort_lock);
    return ferry__error(FERRY_ERR_ABORTED, "%s", text);
}

/* Turns an abort key's value, "<rank> <reason>", into the local abort. The
 * value comes from another process: anything else is quoted as it is. */
static void take_abort_value(ferry_comm_t *c, const char *v, size_t len)
{
    char text[FERRY__COMM_TEXT_MAX];
    char *end;
    long r = strtol(v, &end, 10);

    if (end != v && *end == ' ' && r >= 0 && r < c->size && strlen(v) == len)
        snprintf(text, sizeof(text), "comm: aborted by rank %ld%s: %s", r,
                 r == c->rank ? " (this rank)" : "", end + 1);
    else
        snprintf(text, sizeof(text), "comm: aborted (abort key holds '%.*s')",
                 (int)(len > 100 ? 100 : len), v);
    set_aborted(c, text);
}

int ferry__comm_publish_abort(ferry_comm_t *c, ferry__kv_t *kv, int rank,
                              const char *reason)
{
    char key[FERRY__COMM_KEY_MAX], val[FERRY__COMM_TEXT_MAX];
    void *got = NULL;
    size_t glen = 0;
    ferry_status_t st;
    int won;

    ferry__comm_key(c, key, "abort");
    snprintf(val, sizeof(val), "%d %s", rank, reason);
    st = ferry__kv_compare_set(kv, key, "", 0, val, strlen(val), &got, &glen);
    if (st != FERRY_OK)
        return st;
    won = glen == strlen(val) && memcmp(got, val, glen) == 0;
    take_abort_value(c, got, glen);
    ferry_store_free(got);
    return won;
}

/* Checks the abort key once; FERRY_ERR_ABORTED if it is set. */
ferry_status_t ferry__comm_check_abort(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX];
    const char *k = key;
    int ready = 0;
    void *v;
    size_t len;

    FERRY_CHECK(ferry__comm_aborted(c));
    ferry__comm_key(c, key, "abort");
    FERRY_CHECK(ferry__kv_check(c->kv, &k, 1, &ready));
    if (!ready)
        return FERRY_OK;
    FERRY_CHECK(ferry__kv_get(c->kv, key, &v, &len));
    take_abort_value(c, v, len);
    ferry_store_free(v);
    return ferry__comm_aborted(c);
}

ferry_status_t ferry_comm_abort(ferry_comm_t *comm, const char *reason)
{
    char why[201];
    int r;

    char text[FERRY__COMM_TEXT_MAX];

    if (comm == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_abort: NULL comm");
    snprintf(why, sizeof(why), "%s", reason ? reason : "aborted");
    /* This rank first: a collective another thread waits in sees the flag
     * between two slices of its wait, without waiting for the store. */
    snprintf(text, sizeof(text), "comm: aborted by rank %d (this rank): %s",
             comm->rank, why);
    set_aborted(comm, text);
    /* Then the job, on the heartbeat's connection: the collective's own
     * is busy with that wait for up to a slice at a time. */
    r = ferry__comm_publish_abort(comm, comm->hb_kv, comm->rank, why);
    return r < 0 ? r : FERRY_OK;
}
