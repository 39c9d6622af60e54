/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Collective rounds, and the collectives made of one (barrier, allgather;
 * exchange.c builds the metadata exchange on two). A round publishes each
 * rank's contribution, counts the ranks in, and waits for the last one.
 *
 * Waiting never blocks on the store for long: a round waits for its keys in
 * slices of WAIT_SLICE_NS and checks the abort key between slices, so an
 * abort is seen within a slice. A rank whose own deadline passes publishes
 * the abort itself (naming the ranks it still waited for); a rank that dies
 * publishes nothing, and its heartbeat (heartbeat.c) gives it away.
 */
#include "comm/comm.h"
#include "util/time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_SLICE_NS 100000000ull /* abort checks while waiting */

uint64_t ferry__comm_deadline(int64_t timeout_ns)
{
    uint64_t now = ferry__now_ns();

    if (timeout_ns < 0 || (uint64_t)timeout_ns >= UINT64_MAX - now)
        return UINT64_MAX;
    return now + (uint64_t)timeout_ns;
}

/* The time a rank whose deadline passed has to publish its abort. */
#define GIVE_UP_GRACE_NS 1000000000ull

ferry_status_t ferry__comm_begin(ferry_comm_t *c, uint64_t deadline,
                                 const char *what)
{
    const char *t = c->lost_text;

    FERRY_CHECK(ferry__comm_aborted(c));
    if (t[0] != '\0') {
        if (strncmp(t, "comm: ", 6) == 0)
            t += 6;
        return ferry__error(FERRY_ERR_PEER_LOST, "comm: %s: the communicator "
                            "failed earlier: %s", what, t);
    }
    ferry__kv_set_cap(c->kv, deadline >= UINT64_MAX - GIVE_UP_GRACE_NS
                                 ? UINT64_MAX
                                 : deadline + GIVE_UP_GRACE_NS);
    return FERRY_OK;
}

void ferry__comm_end(ferry_comm_t *c, ferry_status_t st)
{
    ferry__kv_set_cap(c->kv, UINT64_MAX);
    if (st < 0 && c->lost_text[0] == '\0' && ferry__kv_lost(c->kv))
        snprintf(c->lost_text, sizeof(c->lost_text), "%s", ferry_last_error());
}

ferry_status_t ferry__comm_give_up(ferry_comm_t *c, const char *const *keys,
                                   size_t n, uint64_t started, const char *what)
{
    char missing[160] = "", reason[FERRY__COMM_TEXT_MAX];
    size_t used = 0, nmissing = 0;
    ferry_status_t st;
    int won;

    for (size_t i = 0; i < n; i++) {
        int ready = 1;

        FERRY_CHECK(ferry__kv_check(c->kv, &keys[i], 1, &ready));
        if (ready)
            continue;
        if (nmissing++ < 8 && used < sizeof(missing))
            used += (size_t)snprintf(missing + used, sizeof(missing) - used,
                                     "%s%zu", nmissing > 1 ? ", " : "", i);
    }
    if (nmissing > 8 && used < sizeof(missing))
        snprintf(missing + used, sizeof(missing) - used, " and %zu more",
                 nmissing - 8);
    snprintf(reason, sizeof(reason),
             "%s timed out after %llu ms waiting for %s %s", what,
             (unsigned long long)((ferry__now_ns() - started) / 1000000),
             nmissing == 1 ? "rank" : "ranks",
             nmissing ? missing : "(none missing any more)");
    won = ferry__comm_publish_abort(c, c->kv, c->rank, reason);
    if (won < 0)
        return won;
    st = ferry__comm_aborted(c);
    if (won)
        return ferry__error(FERRY_ERR_TIMEOUT, "comm: rank %d: %s", c->rank,
                            reason);
    return st;
}

ferry_status_t ferry__comm_wait_keys(ferry_comm_t *c, const char *const *keys,
                                     size_t n, uint64_t deadline)
{
    for (;;) {
        uint64_t now = ferry__now_ns(), slice = WAIT_SLICE_NS;
        ferry_status_t st;

        FERRY_CHECK(ferry__comm_aborted(c));
        if (now >= deadline)
            return FERRY_ERR_TIMEOUT;
        if (deadline - now < slice)
            slice = deadline - now;
        st = ferry__kv_wait(c->kv, keys, n, (int64_t)slice);
        if (st != FERRY_ERR_TIMEOUT)
            return st;
        FERRY_CHECK(ferry__comm_check_abort(c));
    }
}

/* A rank that gives up on a round adds this to its counter, so that the
 * counter can never reach the size afterwards: either the round completed
 * before (every rank sees it complete) or it never will (every rank sees
 * it abandoned). One ADD decides, atomically, on the server. */
#define ROUND_POISON (1ll << 40)

/*
 * Round s of collective `what`: this rank's part goes to "c/<s>/<rank>",
 * then ADD 1 to the counter "c/<s>/n"; the rank whose ADD makes it the
 * size sets "c/<s>/done", which the others wait for, unless the job was
 * aborted meanwhile (it checks the abort key first). A rank whose deadline
 * passes first poisons the counter and aborts the job, naming the ranks
 * whose parts are missing; a rank that finds the counter poisoned returns
 * that abort.
 */
ferry_status_t ferry__comm_round(ferry_comm_t *c, const void *data, size_t len,
                                 void **values_p, size_t *lens_p,
                                 uint64_t deadline, const char *what)
{
    char stem[FERRY__COMM_KEY_MAX], cnt[FERRY__COMM_KEY_MAX + 8];
    char done[FERRY__COMM_KEY_MAX + 8], label[64];
    const char **keys, *dk = done;
    uint64_t s = c->seq + 1, started = ferry__now_ns();
    int64_t v = 0;
    ferry_status_t st;

    FERRY_CHECK(ferry__comm_aborted(c));
    ferry__comm_key(c, stem, "c/%llu/", (unsigned long long)s);
    keys = ferry__comm_rank_keys(c, stem);
    if (keys == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm: %s: no memory", what);
    c->seq = s;
    snprintf(cnt, sizeof(cnt), "%sn", stem);
    snprintf(done, sizeof(done), "%sdone", stem);
    snprintf(label, sizeof(label), "%s (round %llu)", what,
             (unsigned long long)s);

    st = ferry__kv_set(c->kv, keys[c->rank], data, len);
    if (st == FERRY_OK)
        st = ferry__kv_add(c->kv, cnt, 1, &v);
    if (st == FERRY_OK && v == c->size) {
        /* The last to arrive: ranks that aborted while they waited counted
         * themselves in and left, so the count alone would complete a
         * round of an aborted job. */
        st = ferry__comm_check_abort(c);
        if (st == FERRY_OK)
            st = ferry__kv_set(c->kv, done, "", 0);
    } else if (st == FERRY_OK && v > 0 && v < c->size)
        st = ferry__comm_wait_keys(c, &dk, 1, deadline);
    else if (st == FERRY_OK) {
        /* Abandoned by a rank that gave up: "done" never comes, and the
         * wait ends with that rank's abort (or this one's deadline). */
        st = ferry__comm_wait_keys(c, &dk, 1, deadline);
        if (st == FERRY_OK)
            st = ferry__error(FERRY_ERR_PROTOCOL, "comm: %s: the round's "
                              "counter holds %lld of %d", label, (long long)v,
                              c->size);
    }
    if (st == FERRY_ERR_TIMEOUT) {
        char first[256];

        /* A store that did not answer in time has closed the connection,
         * and the ADD below fails for that: say what came first. */
        snprintf(first, sizeof(first), "%s", ferry_last_error());
        st = ferry__kv_add(c->kv, cnt, -ROUND_POISON, &v);
        if (st == FERRY_OK && v + ROUND_POISON == c->size)
            st = FERRY_OK; /* it completed just in time */
        else if (st == FERRY_OK)
            st = ferry__comm_give_up(c, keys, (size_t)c->size, started, label);
        else
            st = ferry__error(FERRY_ERR_TIMEOUT, "comm: %s: the store did not "
                              "answer by the deadline (%s)", label, first);
    }
    if (st == FERRY_OK && values_p != NULL)
        st = ferry__kv_multi_get(c->kv, keys, (size_t)c->size, values_p,
                                   lens_p);
    if (st == FERRY_OK) {
        /* Every rank has reached round s, so every rank is past the
         * rounds before it, and their keys may go. */
        ferry__comm_flush_pending(c);
        ferry__comm_defer(c, stem, true);
        ferry__comm_defer(c, cnt, false);
        ferry__comm_defer(c, done, false);
    }
    free(keys);
    return st;
}

ferry_status_t ferry_comm_barrier(ferry_comm_t *comm, int64_t timeout_ns)
{
    ferry__errsave_t save;
    ferry_status_t st;
    uint64_t deadline;

    if (comm == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_barrier: NULL comm");
    ferry__error_save(&save);
    pthread_mutex_lock(&comm->lock);
    deadline = ferry__comm_deadline(timeout_ns);
    st = ferry__comm_begin(comm, deadline, "barrier");
    if (st == FERRY_OK)
        st = ferry__comm_round(comm, "", 0, NULL, NULL, deadline, "barrier");
    ferry__comm_end(comm, st);
    pthread_mutex_unlock(&comm->lock);
    return ferry__error_keep(&save, st);
}

ferry_status_t ferry_comm_allgather(ferry_comm_t *comm, const void *data,
                                    size_t len, void **values_p,
                                    size_t *lens_p, int64_t timeout_ns)
{
    ferry__errsave_t save;
    ferry_status_t st;
    uint64_t deadline;

    if (comm == NULL || (data == NULL && len > 0) || values_p == NULL ||
        lens_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_allgather: NULL argument");
    ferry__error_save(&save);
    pthread_mutex_lock(&comm->lock);
    deadline = ferry__comm_deadline(timeout_ns);
    st = ferry__comm_begin(comm, deadline, "allgather");
    if (st == FERRY_OK)
        st = ferry__comm_round(comm, data ? data : "", len, values_p, lens_p,
                               deadline, "allgather");
    ferry__comm_end(comm, st);
    pthread_mutex_unlock(&comm->lock);
    return ferry__error_keep(&save, st);
}
