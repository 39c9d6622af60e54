/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The collective metadata exchange: every rank publishes its agent's blob,
 * loads every rank's, and meets the others in a barrier that it reaches
 * whatever happened on the way, so that a failure on one rank (a blob that
 * does not load, a blob that cannot be packed) becomes the same error on
 * every rank instead of a rank that returns early and ranks that wait for
 * it forever.
 *
 * Exchange e, with the rounds of round.c (keys under the prefix):
 *   x/<e>/b/<r>   rank r's blob, set before its round-1 contribution
 *   round 1       each rank's "<digest> <length>" of its blob (16 hex
 *                 digits, FNV-1a 64), or "!<status> <text>" if it has none
 *   (loads)       each rank fetches and loads the blobs whose digest
 *                 differs from the one it loaded from that rank last time
 *   x/<e>/err     "<status> <text>": the first failure any rank saw
 *                 (compare_set, so one wins), set before round 2
 *   round 2       the barrier; then every rank reads x/<e>/err
 * The blob keys go once round 2 is complete (every rank has loaded); the
 * error key after the next round.
 */
#include "comm/comm.h"
#include "util/log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a64(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h ? h : 1; /* 0 means "nothing loaded" in comm->digests */
}

/* Records the exchange's first failure (this rank's view of it) in err as
 * "<status> <text>". */
static void note_failure(char *err, size_t cap, ferry_status_t st,
                         const char *fmt, ...) FERRY__PRINTF(4, 5);

static void note_failure(char *err, size_t cap, ferry_status_t st,
                         const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err[0] != '\0')
        return;
    n = snprintf(err, cap, "%d ", (int)st);
    if (n <= 0 || (size_t)n >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(err + n, cap - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Parses a round-1 contribution: 1 and the digest for a blob, 0 for a rank
 * that has none ("!..."), -1 for anything else. */
static int parse_digest(const char *v, size_t len, uint64_t *digest)
{
    char *end;

    if (len > 0 && v[0] == '!')
        return 0;
    if (len < 18 || v[16] != ' ')
        return -1;
    *digest = strtoull(v, &end, 16);
    return end == v + 16 && *digest != 0 ? 1 : -1;
}

/* Turns the published "<status> <text>" into this rank's return value. */
static ferry_status_t exchange_result(uint64_t epoch, const char *v, size_t len)
{
    char *end;
    long code = strtol(v, &end, 10);

    /* The record comes from another process: only a known failure code
     * is taken as it is. */
    if (end == v || *end != ' ' || code >= 0 || code < INT32_MIN ||
        strcmp(ferry_status_str((ferry_status_t)code), "unknown status") == 0 ||
        strlen(v) != len)
        return ferry__error(FERRY_ERR_PROTOCOL, "comm: exchange %" PRIu64
                            ": malformed failure record '%.*s'", epoch,
                            (int)(len > 100 ? 100 : len), v);
    return ferry__error((ferry_status_t)code, "comm: exchange %" PRIu64 ": %s",
                        epoch, end + 1);
}

/* Loads rank i's blob, whose digest is d; a failure is noted and forgets
 * the digest, so that the next exchange tries again. */
static void load_one(ferry_comm_t *c, ferry_agent_t *agent, int i, const void *blob,
                     size_t len, uint64_t d, char *err, size_t errcap)
{
    ferry_status_t st = ferry_peer_load(agent, blob, len, &c->peers[i]);

    if (st != FERRY_OK) {
        c->digests[i] = 0;
        note_failure(err, errcap, st, "rank %d could not load the blob of rank %d: "
                     "%s", c->rank, i, ferry_last_error());
        return;
    }
    c->digests[i] = d;
    c->loads++;
}

/* Fetches and loads the blobs that changed; fills err on failure. */
static void load_changed(ferry_comm_t *c, ferry_agent_t *agent,
                         void **contrib, size_t *clens, const void *own_blob,
                         size_t own_len, uint64_t own_digest, char *err,
                         size_t errcap)
{
    size_t n = (size_t)c->size, nfetch = 0;
    char (*names)[FERRY__COMM_KEY_MAX] = calloc(n, sizeof(*names));
    const char **keys = calloc(n, sizeof(*keys));
    int *who = calloc(n, sizeof(*who));
    uint64_t *dig = calloc(n, sizeof(*dig));
    void **blobs = calloc(n, sizeof(*blobs));
    size_t *lens = calloc(n, sizeof(*lens));
    ferry_status_t st;

    if (!names || !keys || !who || !dig || !blobs || !lens) {
        note_failure(err, errcap, FERRY_ERR_NO_MEMORY, "rank %d: no memory to "
                     "load %d blobs", c->rank, c->size);
        goto out;
    }
    for (int i = 0; i < c->size; i++) {
        uint64_t d = 0;
        int kind = parse_digest(contrib[i], clens[i], &d);

        if (kind == 0)
            continue; /* that rank failed and has published why */
        if (kind < 0) {
            note_failure(err, errcap, FERRY_ERR_PROTOCOL, "rank %d got a "
                         "malformed digest from rank %d", c->rank, i);
            continue;
        }
        if (d == c->digests[i] && c->peers[i] != NULL)
            continue; /* the blob this rank loaded last time */
        if (i == c->rank && d == own_digest) {
            /* Its own blob is at hand. */
            load_one(c, agent, i, own_blob, own_len, d, err, errcap);
            continue;
        }
        ferry__comm_key(c, names[nfetch], "x/%llu/b/%d",
                        (unsigned long long)c->epoch, i);
        keys[nfetch] = names[nfetch];
        who[nfetch] = i;
        dig[nfetch] = d;
        nfetch++;
    }
    if (nfetch == 0)
        goto out;
    /* Every blob was set before its rank's round-1 contribution, on the
     * same connection, so all of them are there. */
    st = ferry__kv_multi_get(c->kv, keys, nfetch, blobs, lens);
    if (st != FERRY_OK) {
        note_failure(err, errcap, st, "rank %d could not fetch %d blobs: %s",
                     c->rank, (int)nfetch, ferry_last_error());
        goto out;
    }
    for (size_t k = 0; k < nfetch; k++) {
        int i = who[k];

        if (fnv1a64(blobs[k], lens[k]) != dig[k]) {
            c->digests[i] = 0;
            note_failure(err, errcap, FERRY_ERR_PROTOCOL, "rank %d fetched a "
                         "blob of rank %d that does not match its digest",
                         c->rank, i);
            continue;
        }
        load_one(c, agent, i, blobs[k], lens[k], dig[k], err, errcap);
    }
out:
    for (size_t k = 0; blobs && k < nfetch; k++)
        ferry_store_free(blobs[k]);
    free(names);
    free(keys);
    free(who);
    free(dig);
    free(blobs);
    free(lens);
}

static ferry_status_t exchange_locked(ferry_comm_t *c, ferry_agent_t *agent,
                                      uint64_t deadline)
{
    char key[FERRY__COMM_KEY_MAX], stem[FERRY__COMM_KEY_MAX];
    char digest[40], err[FERRY__COMM_TEXT_MAX] = "";
    void *blob = NULL, **contrib = NULL, *got = NULL;
    size_t len = 0, *clens = NULL, glen = 0;
    uint64_t d = 0;
    ferry_status_t st;
    int ready = 0;
    const char *k = key;

    FERRY_CHECK(ferry__comm_aborted(c));
    if (agent != c->agent) {
        /* Peers belong to an agent: a new one starts from nothing. */
        memset(c->peers, 0, (size_t)c->size * sizeof(*c->peers));
        memset(c->digests, 0, (size_t)c->size * sizeof(*c->digests));
        c->agent = agent;
    }
    c->epoch++;
    c->loads = 0;
    contrib = calloc((size_t)c->size, sizeof(*contrib));
    clens = calloc((size_t)c->size, sizeof(*clens));
    if (contrib == NULL || clens == NULL) {
        free(contrib);
        free(clens);
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm: exchange: no memory");
    }

    /* Publish the blob, then its digest as this rank's round-1 part. A
     * rank that cannot pack still takes part, with its reason. */
    st = ferry_md_pack(agent, &blob, &len);
    if (st == FERRY_OK) {
        if (c->hooks.blob != NULL)
            c->hooks.blob(blob, len, c->hooks.arg);
        d = fnv1a64(blob, len);
        ferry__comm_key(c, stem, "x/%llu/b/", (unsigned long long)c->epoch);
        ferry__comm_key(c, key, "x/%llu/b/%d", (unsigned long long)c->epoch,
                        c->rank);
        FERRY_CHECK_GOTO(ferry__kv_set(c->kv, key, blob, len), st, out);
        snprintf(digest, sizeof(digest), "%016" PRIx64 " %zu", d, len);
    } else {
        note_failure(err, sizeof(err), st, "rank %d could not pack its blob: "
                     "%s", c->rank, ferry_last_error());
        snprintf(digest, sizeof(digest), "!");
    }
    FERRY_CHECK_GOTO(ferry__comm_round(c, digest, strlen(digest), contrib,
                                       clens, deadline, "exchange"), st, out);
    if (d != 0)
        ferry__comm_defer(c, stem, true);

    load_changed(c, agent, contrib, clens, blob, len, d, err, sizeof(err));

    ferry__comm_key(c, key, "x/%llu/err", (unsigned long long)c->epoch);
    if (err[0] != '\0') {
        ferry__debug("comm: exchange %llu: %s", (unsigned long long)c->epoch,
                     err);
        FERRY_CHECK_GOTO(ferry__kv_compare_set(c->kv, key, "", 0, err,
                                                 strlen(err), &got, &glen),
                         st, out);
        ferry_store_free(got);
        got = NULL;
    }
    if (c->hooks.before_barrier != NULL)
        c->hooks.before_barrier(c, c->hooks.arg);
    FERRY_CHECK_GOTO(ferry__comm_round(c, "", 0, NULL, NULL, deadline,
                                       "exchange barrier"), st, out);
    ferry__comm_defer(c, key, false);
    FERRY_CHECK_GOTO(ferry__kv_check(c->kv, &k, 1, &ready), st, out);
    if (ready) {
        FERRY_CHECK_GOTO(ferry__kv_get(c->kv, key, &got, &glen), st, out);
        st = exchange_result(c->epoch, got, glen);
    }
out:
    for (int i = 0; i < c->size; i++)
        ferry_store_free(contrib[i]);
    free(contrib);
    free(clens);
    ferry_store_free(got);
    ferry_md_free(blob);
    return st;
}

ferry_status_t ferry_comm_exchange(ferry_comm_t *comm, ferry_agent_t *agent,
                                   int64_t timeout_ns)
{
    ferry__errsave_t save;
    ferry_status_t st;
    uint64_t deadline;

    if (comm == NULL || agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_exchange: NULL argument");
    ferry__error_save(&save);
    pthread_mutex_lock(&comm->lock);
    deadline = ferry__comm_deadline(timeout_ns);
    st = ferry__comm_begin(comm, deadline, "exchange");
    if (st == FERRY_OK)
        st = exchange_locked(comm, agent, deadline);
    ferry__comm_end(comm, st);
    pthread_mutex_unlock(&comm->lock);
    return ferry__error_keep(&save, st);
}

ferry_peer_t *ferry_comm_peer(const ferry_comm_t *comm, int rank)
{
    if (comm == NULL || rank < 0 || rank >= comm->size)
        return NULL;
    return comm->peers[rank];
}
