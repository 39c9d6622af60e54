/*
 * The communicator: N ranks that find each other through a c10d-compatible
 * store (src/store/), with a barrier, an allgather, and a job-wide abort
 * that every waiting rank notices, so that no collective hangs when one
 * rank fails. exchange.c builds the metadata exchange on the round below.
 *
 * Keys, all under the prefix P (docs/COMM.md):
 *   P join/<r>    "<size> <host> <pid> <nonce> <hosted>", created once
 *                 (compare_set):
 *                 a second process claiming the same rank is refused
 *   P hb/<r>      the heartbeat counter, or "done" once the rank has left
 *   P abort       "<rank> <reason>": the first abort of the job
 *   P c/<s>/<r>   rank r's contribution to collective round s
 *   P left        ranks that left (external store only): the last one
 *                 deletes the job's keys
 *
 * Waiting never blocks on the store for long: a round waits for its keys in
 * slices of WAIT_SLICE_NS and checks the abort key between slices, so an
 * abort is seen within a slice. A rank whose own deadline passes publishes
 * the abort itself (naming the ranks it still waited for); the first abort
 * published wins (compare_set on a missing key), so every rank reports the
 * same one. A rank that dies publishes nothing: each rank's heartbeat
 * thread writes its counter every beat on a connection of its own and reads
 * everyone else's; a counter that has not moved for the liveness time gets
 * its rank declared dead, which is an abort naming that rank.
 */
#include "comm/comm.h"
#include "store/store.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WAIT_SLICE_NS 100000000ull   /* abort checks while waiting */
#define PROBE_NS 300000000ull        /* rank 0: is a store already there? */
#define MAX_RANKS 1000000

/* ------------------------------------------------------------------------ */
/* Parameters and environment                                               */
/* ------------------------------------------------------------------------ */

/* The launchers whose variables give rank and size, first match wins. */
static const struct {
    const char *launcher, *rank, *size;
} env_sources[] = {
    {"FERRY", "FERRY_RANK", "FERRY_WORLD_SIZE"},
    {"torchrun", "RANK", "WORLD_SIZE"},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS"},
};

static const char *env(const char *name)
{
    const char *v = getenv(name);

    return (v != NULL && v[0] != '\0') ? v : NULL;
}

/* A decimal integer in [lo, hi], digits only. */
static ferry_status_t parse_num(const char *name, const char *v,
                                unsigned long long lo, unsigned long long hi,
                                unsigned long long *out)
{
    char *end;
    unsigned long long n;

    errno = 0;
    n = strtoull(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || n < lo ||
        n > hi)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: %s='%s' is not a number from %llu to %llu",
                            name, v, lo, hi);
    *out = n;
    return FERRY_OK;
}

static ferry_status_t resolve_ranks(const ferry_comm_params_t *p,
                                    ferry__comm_cfg_t *cfg)
{
    bool have_rank = p && (p->field_mask & FERRY_COMM_PARAM_RANK);
    bool have_size = p && (p->field_mask & FERRY_COMM_PARAM_SIZE);
    unsigned long long v;

    cfg->source = "parameters";
    if (have_rank)
        cfg->rank = p->rank;
    if (have_size)
        cfg->size = p->size;
    for (size_t i = 0; i < sizeof(env_sources) / sizeof(env_sources[0]) &&
                       !(have_rank && have_size); i++) {
        const char *r = env(env_sources[i].rank), *s = env(env_sources[i].size);

        if (r == NULL && s == NULL)
            continue;
        if (r == NULL || s == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s is set but %s is not (%s launcher "
                                "variables come in pairs)",
                                r ? env_sources[i].rank : env_sources[i].size,
                                r ? env_sources[i].size : env_sources[i].rank,
                                env_sources[i].launcher);
        if (!have_size) {
            FERRY_CHECK(parse_num(env_sources[i].size, s, 1, MAX_RANKS, &v));
            cfg->size = (int)v;
        }
        if (!have_rank) {
            FERRY_CHECK(parse_num(env_sources[i].rank, r, 0, MAX_RANKS - 1, &v));
            cfg->rank = (int)v;
            if (cfg->rank >= cfg->size)
                return ferry__error(FERRY_ERR_INVALID,
                                    "comm: %s=%s is not below the world size "
                                    "%d", env_sources[i].rank, r, cfg->size);
        }
        cfg->source = env_sources[i].launcher;
        have_rank = have_size = true;
    }
    if (!have_rank || !have_size)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: no rank and world size: set FERRY_RANK and "
                            "FERRY_WORLD_SIZE, or start the job with ferry-run, "
                            "torchrun, mpirun or srun");
    if (cfg->size < 1 || cfg->size > MAX_RANKS || cfg->rank < 0 ||
        cfg->rank >= cfg->size)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: rank %d and size %d: need 0 <= rank < size "
                            "<= %d", cfg->rank, cfg->size, MAX_RANKS);
    return FERRY_OK;
}

static ferry_status_t resolve_url(const ferry_comm_params_t *p,
                                  ferry__comm_cfg_t *cfg)
{
    const char *url = NULL, *what = "store_url";
    unsigned long long port;
    int n;

    if (p && (p->field_mask & FERRY_COMM_PARAM_STORE_URL)) {
        url = p->store_url;
    } else if ((url = env("FERRY_STORE")) != NULL) {
        what = "FERRY_STORE";
    } else {
        const char *addr = env("MASTER_ADDR"), *ps = env("MASTER_PORT");

        if (addr == NULL && ps == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: no store: set FERRY_STORE=tcp://host:port "
                                "or MASTER_ADDR and MASTER_PORT");
        if (addr == NULL || ps == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s is set but %s is not",
                                addr ? "MASTER_ADDR" : "MASTER_PORT",
                                addr ? "MASTER_PORT" : "MASTER_ADDR");
        FERRY_CHECK(parse_num("MASTER_PORT", ps, 1, 65535, &port));
        n = snprintf(cfg->url, sizeof(cfg->url),
                     strchr(addr, ':') ? "tcp://[%s]:%llu" : "tcp://%s:%llu",
                     addr, port);
        if (n < 0 || (size_t)n >= sizeof(cfg->url))
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: MASTER_ADDR is too long");
        return FERRY_OK;
    }
    {
        char uhost[FERRY__COMM_URL_MAX], uport[8];

        if (url == NULL || strlen(url) >= sizeof(cfg->url) ||
            ferry__store_parse_url(url, uhost, sizeof(uhost), uport, sizeof(uport)) < 0)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s='%s' is not tcp://host:port (port 1 to "
                                "65535)", what, url ? url : "(null)");
    }
    strcpy(cfg->url, url);
    return FERRY_OK;
}

/* A duration in ms from the configuration table, strictly parsed. */
static ferry_status_t resolve_ms(const char *name, uint64_t *ns)
{
    unsigned long long v;

    FERRY_CHECK(parse_num(name, ferry__config_get(name), 1, 1000000000ull, &v));
    *ns = v * 1000000ull;
    return FERRY_OK;
}

ferry_status_t ferry__comm_resolve(const ferry_comm_params_t *p,
                                   ferry__comm_cfg_t *cfg)
{
    const char *prefix;

    memset(cfg, 0, sizeof(*cfg));
    FERRY_CHECK(resolve_ranks(p, cfg));
    FERRY_CHECK(resolve_url(p, cfg));
    if (p && (p->field_mask & FERRY_COMM_PARAM_TIMEOUT))
        cfg->timeout_ns = p->timeout_ns;
    else
        FERRY_CHECK(resolve_ms("FERRY_COMM_TIMEOUT_MS", &cfg->timeout_ns));
    if (p && (p->field_mask & FERRY_COMM_PARAM_LIVENESS))
        cfg->liveness_ns = p->liveness_ns;
    else
        FERRY_CHECK(resolve_ms("FERRY_COMM_LIVENESS_MS", &cfg->liveness_ns));
    if (cfg->liveness_ns < 10000000ull)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: a liveness time under 10 ms would declare "
                            "live ranks dead");
    prefix = (p && (p->field_mask & FERRY_COMM_PARAM_PREFIX))
                 ? p->prefix
                 : ferry__config_get("FERRY_COMM_PREFIX");
    if (prefix == NULL || strlen(prefix) > FERRY__COMM_PREFIX_MAX)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: the key prefix must be a string of at most "
                            "%d bytes", FERRY__COMM_PREFIX_MAX);
    strcpy(cfg->prefix, prefix);
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* Keys, abort                                                              */
/* ------------------------------------------------------------------------ */

void ferry__comm_key(const ferry_comm_t *comm, char *key, const char *fmt, ...)
{
    va_list ap;
    size_t n = strlen(comm->cfg.prefix);

    memcpy(key, comm->cfg.prefix, n);
    va_start(ap, fmt);
    vsnprintf(key + n, FERRY__COMM_KEY_MAX - n, fmt, ap);
    va_end(ap);
}

/* The keys "<stem>0" to "<stem><size - 1>", one per rank, in a single
 * allocation that free() releases; NULL when out of memory. */
static const char **rank_keys(const ferry_comm_t *c, const char *stem)
{
    typedef char name_t[FERRY__COMM_KEY_MAX + 16];
    size_t n = (size_t)c->size;
    const char **keys = malloc(n * (sizeof(*keys) + sizeof(name_t)));
    name_t *names;

    if (keys == NULL)
        return NULL;
    names = (name_t *)(void *)(keys + n);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "%s%zu", stem, i);
        keys[i] = names[i];
    }
    return keys;
}

uint64_t ferry__comm_deadline(int64_t timeout_ns)
{
    uint64_t now = ferry__now_ns();

    if (timeout_ns < 0 || (uint64_t)timeout_ns >= UINT64_MAX - now)
        return UINT64_MAX;
    return now + (uint64_t)timeout_ns;
}

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

/*
 * Publishes "<rank> <reason>" as the job's abort unless one is there
 * already, and takes whichever is there afterwards as the local abort.
 * Returns 1 if this call's abort won, 0 if an earlier one stands, or a
 * store error.
 */
static int publish_abort(ferry_comm_t *c, ferry_store_t *s, int rank,
                         const char *reason)
{
    char key[FERRY__COMM_KEY_MAX], val[FERRY__COMM_TEXT_MAX];
    void *got = NULL;
    size_t glen = 0;
    ferry_status_t st;
    int won;

    ferry__comm_key(c, key, "abort");
    snprintf(val, sizeof(val), "%d %s", rank, reason);
    st = ferry_store_compare_set(s, key, "", 0, val, strlen(val), &got, &glen);
    if (st != FERRY_OK)
        return st;
    won = glen == strlen(val) && memcmp(got, val, glen) == 0;
    take_abort_value(c, got, glen);
    ferry_store_free(got);
    return won;
}

/* Checks the abort key once; FERRY_ERR_ABORTED if it is set. */
static ferry_status_t check_abort(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX];
    const char *k = key;
    int ready = 0;
    void *v;
    size_t len;

    FERRY_CHECK(ferry__comm_aborted(c));
    ferry__comm_key(c, key, "abort");
    FERRY_CHECK(ferry_store_check(c->store, &k, 1, &ready));
    if (!ready)
        return FERRY_OK;
    FERRY_CHECK(ferry_store_get(c->store, key, &v, &len));
    take_abort_value(c, v, len);
    ferry_store_free(v);
    return ferry__comm_aborted(c);
}

ferry_status_t ferry_comm_abort(ferry_comm_t *comm, const char *reason)
{
    char why[201];
    int r;

    if (comm == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_abort: NULL comm");
    snprintf(why, sizeof(why), "%s", reason ? reason : "aborted");
    r = publish_abort(comm, comm->store, comm->rank, why);
    if (r < 0) {
        char text[FERRY__COMM_TEXT_MAX];

        snprintf(text, sizeof(text), "comm: aborted by rank %d (this rank): "
                 "%s", comm->rank, why);
        set_aborted(comm, text);
        return r;
    }
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* Waiting for keys                                                         */
/* ------------------------------------------------------------------------ */

/*
 * Gives up on keys[i] (rank i's): names the ranks whose keys are still
 * missing in an abort of the job, and returns TIMEOUT if this rank's abort
 * is the one that stands, else that other abort.
 */
static ferry_status_t give_up(ferry_comm_t *c, const char *const *keys,
                              size_t n, uint64_t started, const char *what)
{
    char missing[160] = "", reason[FERRY__COMM_TEXT_MAX];
    size_t used = 0, nmissing = 0;
    ferry_status_t st;
    int won;

    for (size_t i = 0; i < n; i++) {
        int ready = 1;

        FERRY_CHECK(ferry_store_check(c->store, &keys[i], 1, &ready));
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
    won = publish_abort(c, c->store, c->rank, reason);
    if (won < 0)
        return won;
    st = ferry__comm_aborted(c);
    if (won)
        return ferry__error(FERRY_ERR_TIMEOUT, "comm: rank %d: %s", c->rank,
                            reason);
    return st;
}

/*
 * Waits until every key exists, in slices, checking the abort key between
 * them. Returns OK, the abort, a store error, or FERRY_ERR_TIMEOUT (with
 * no detail: the caller decides what a timeout means) at the deadline.
 */
static ferry_status_t wait_keys(ferry_comm_t *c, const char *const *keys,
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
        st = ferry_store_wait(c->store, keys, n, (int64_t)slice);
        if (st != FERRY_ERR_TIMEOUT)
            return st;
        FERRY_CHECK(check_abort(c));
    }
}

/* ------------------------------------------------------------------------ */
/* Rounds and deferred deletion                                             */
/* ------------------------------------------------------------------------ */

void ferry__comm_defer(ferry_comm_t *c, const char *key, bool per_rank)
{
    if (c->npending == c->pending_cap) {
        size_t cap = c->pending_cap ? 2 * c->pending_cap : 8;
        ferry__comm_pending_t *p = realloc(c->pending, cap * sizeof(*p));

        if (p == NULL) {
            ferry__warn("comm: no memory to remember key '%s'; it stays in "
                        "the store", key);
            return;
        }
        c->pending = p;
        c->pending_cap = cap;
    }
    snprintf(c->pending[c->npending].key, FERRY__COMM_KEY_MAX, "%s", key);
    c->pending[c->npending].per_rank = per_rank;
    c->pending[c->npending].before = c->seq + 1;
    c->npending++;
}

static void delete_key(ferry_store_t *s, const char *key)
{
    ferry_status_t st = ferry_store_delete_key(s, key, NULL);

    if (st != FERRY_OK)
        ferry__debug("comm: delete '%s': %s", key, ferry_last_error());
}

/* Deletes the pending keys that every rank is past: those of rounds before
 * the one just completed. Each rank deletes its own keys, rank 0 the
 * shared ones. */
static void flush_pending(ferry_comm_t *c)
{
    size_t keep = 0;
    char key[FERRY__COMM_KEY_MAX + 16];

    for (size_t i = 0; i < c->npending; i++) {
        ferry__comm_pending_t *p = &c->pending[i];

        if (p->before > c->seq) {
            c->pending[keep++] = *p;
            continue;
        }
        if (!p->per_rank && c->rank != 0)
            continue;
        snprintf(key, sizeof(key), p->per_rank ? "%s%d" : "%s", p->key,
                 c->rank);
        delete_key(c->store, key);
    }
    c->npending = keep;
}

/* A rank that gives up on a round adds this to its counter, so that the
 * counter can never reach the size afterwards: either the round completed
 * before (every rank sees it complete) or it never will (every rank sees
 * it abandoned). One ADD decides, atomically, on the server. */
#define ROUND_POISON (1ll << 40)

/*
 * Round s of collective `what`: this rank's part goes to "c/<s>/<rank>",
 * then ADD 1 to the counter "c/<s>/n"; the rank whose ADD makes it the
 * size sets "c/<s>/done", which the others wait for. A rank whose deadline
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
    keys = rank_keys(c, stem);
    if (keys == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm: %s: no memory", what);
    c->seq = s;
    snprintf(cnt, sizeof(cnt), "%sn", stem);
    snprintf(done, sizeof(done), "%sdone", stem);
    snprintf(label, sizeof(label), "%s (round %llu)", what,
             (unsigned long long)s);

    st = ferry_store_set(c->store, keys[c->rank], data, len);
    if (st == FERRY_OK)
        st = ferry_store_add(c->store, cnt, 1, &v);
    if (st == FERRY_OK && v == c->size)
        st = ferry_store_set(c->store, done, "", 0);
    else if (st == FERRY_OK && v > 0 && v < c->size)
        st = wait_keys(c, &dk, 1, deadline);
    else if (st == FERRY_OK) {
        /* Abandoned by a rank that gave up: "done" never comes, and the
         * wait ends with that rank's abort (or this one's deadline). */
        st = wait_keys(c, &dk, 1, deadline);
        if (st == FERRY_OK)
            st = ferry__error(FERRY_ERR_PROTOCOL, "comm: %s: the round's "
                              "counter holds %lld of %d", label, (long long)v,
                              c->size);
    }
    if (st == FERRY_ERR_TIMEOUT) {
        st = ferry_store_add(c->store, cnt, -ROUND_POISON, &v);
        if (st == FERRY_OK && v + ROUND_POISON == c->size)
            st = FERRY_OK; /* it completed just in time */
        else if (st == FERRY_OK)
            st = give_up(c, keys, (size_t)c->size, started, label);
    }
    if (st == FERRY_OK && values_p != NULL)
        st = ferry_store_multi_get(c->store, keys, (size_t)c->size, values_p,
                                   lens_p);
    if (st == FERRY_OK) {
        /* Every rank has reached round s, so every rank is past the
         * rounds before it, and their keys may go. */
        flush_pending(c);
        ferry__comm_defer(c, stem, true);
        ferry__comm_defer(c, cnt, false);
        ferry__comm_defer(c, done, false);
    }
    free(keys);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Heartbeat and watch                                                      */
/* ------------------------------------------------------------------------ */

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

    st = ferry_store_multi_get(c->hb_store, keys, n, vals, lens);
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
                int r = publish_abort(c, c->hb_store, (int)i, reason);

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
    keys = rank_keys(c, key);
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
        st = ferry_store_set(c->hb_store, key, val, strlen(val));
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

static void hb_stop(ferry_comm_t *c)
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

/* ------------------------------------------------------------------------ */
/* Create and destroy                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Rank 0: use the store at the URL if one answers, else start one bound to
 * the URL's address. If that fails too (the address is another host's, or
 * someone else just bound the port), connect and wait for a store there.
 */
static ferry_status_t comm_connect(ferry_comm_t *c)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = c->cfg.timeout_ns};
    ferry_store_params_t probe = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                                  .timeout_ns = PROBE_NS};
    ferry_store_server_params_t srvp = {
        .field_mask = FERRY_STORE_SERVER_PARAM_PORT};
    char host[FERRY__COMM_URL_MAX], port[8], addr[INET6_ADDRSTRLEN] = "";
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;

    if (c->rank != 0)
        return ferry_store_connect(c->cfg.url, &sp, &c->store);
    if (ferry_store_connect(c->cfg.url, &probe, &c->store) == FERRY_OK)
        return FERRY_OK; /* a store is running there */
    /* The URL was checked when the configuration was resolved. */
    FERRY_CHECK(ferry__store_parse_url(c->cfg.url, host, sizeof(host), port,
                                       sizeof(port)));
    srvp.port = (uint16_t)strtoul(port, NULL, 10);
    if (getaddrinfo(host, NULL, &hints, &ai) == 0) {
        void *a = ai->ai_family == AF_INET6
                      ? (void *)&((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr
                      : (void *)&((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr;

        inet_ntop(ai->ai_family, a, addr, sizeof(addr));
        freeaddrinfo(ai);
    }
    if (addr[0] && ferry_store_server_start(addr, &srvp, &c->server) ==
                       FERRY_OK) {
        c->hosted = true;
        ferry__info("comm: rank 0 hosts the store on %s port %u", addr,
                    srvp.port);
    } else {
        ferry__debug("comm: rank 0 could not host the store at %s (%s); "
                     "waiting for one", c->cfg.url, ferry_last_error());
    }
    return ferry_store_connect(c->cfg.url, &sp, &c->store);
}

/* Claims this rank, starts the heartbeat, waits for every rank, and checks
 * that they agree on the size. */
static ferry_status_t comm_join(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX], mine[FERRY__COMM_TEXT_MAX], host[128] = "?";
    const char **keys = NULL;
    void **vals = NULL, *got = NULL;
    size_t *lens = NULL, glen = 0, n = (size_t)c->size;
    uint64_t started = ferry__now_ns();
    ferry_status_t st;

    gethostname(host, sizeof(host) - 1);
    ferry__comm_key(c, key, "hb/%d", c->rank);
    FERRY_CHECK(ferry_store_set(c->store, key, "0", 1));
    ferry__comm_key(c, key, "join/%d", c->rank);
    /* The nonce tells two communicators of one process apart. */
    snprintf(mine, sizeof(mine), "%d %s %d %llx %d", c->size, host,
             (int)getpid(),
             (unsigned long long)(ferry__now_ns() ^ (uintptr_t)c), c->hosted);
    FERRY_CHECK(ferry_store_compare_set(c->store, key, "", 0, mine,
                                        strlen(mine), &got, &glen));
    if (glen != strlen(mine) || memcmp(got, mine, glen) != 0) {
        st = ferry__error(FERRY_ERR_INVALID,
                          "comm: rank %d was already joined by another process "
                          "('%.*s': size, host, pid, ...); two processes with one "
                          "rank, or a store that still holds an earlier job "
                          "under prefix '%s'", c->rank,
                          (int)(glen > 200 ? 200 : glen), (char *)got,
                          c->cfg.prefix);
        ferry_store_free(got);
        return st;
    }
    ferry_store_free(got);

    if (pthread_create(&c->hb_thread, NULL, hb_main, c) != 0)
        return ferry__error(FERRY_ERR_SYSTEM, "comm: cannot start the "
                            "heartbeat thread");
    c->hb_started = true;

    ferry__comm_key(c, key, "join/");
    keys = rank_keys(c, key);
    vals = calloc(n, sizeof(*vals));
    lens = calloc(n, sizeof(*lens));
    if (keys == NULL || vals == NULL || lens == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "comm: no memory");
        goto out;
    }
    st = wait_keys(c, keys, n, ferry__comm_deadline((int64_t)c->cfg.timeout_ns));
    if (st == FERRY_ERR_TIMEOUT)
        st = give_up(c, keys, n, started, "joining");
    if (st == FERRY_OK)
        st = check_abort(c); /* a job that aborted before this rank came */
    if (st != FERRY_OK)
        goto out;
    FERRY_CHECK_GOTO(ferry_store_multi_get(c->store, keys, n, vals, lens), st,
                     out);
    for (size_t i = 0; i < n; i++) {
        char *end;
        long sz = strtol(vals[i], &end, 10);

        if (i == 0)
            c->hosted = strlen(vals[i]) > 2 &&
                        strcmp((char *)vals[i] + strlen(vals[i]) - 2, " 1") == 0;
        if (end != vals[i] && sz == c->size)
            continue;
        char reason[FERRY__COMM_TEXT_MAX];

        snprintf(reason, sizeof(reason), "rank %zu joined as '%.100s' (size, "
                 "host, pid, ...), but rank %d's world size is %d", i,
                 (char *)vals[i], c->rank, c->size);
        (void)publish_abort(c, c->store, c->rank, reason);
        st = ferry__error(FERRY_ERR_INVALID, "comm: %s", reason);
        goto out;
    }
    pthread_mutex_lock(&c->hb_lock);
    c->hb_watch = true;
    pthread_mutex_unlock(&c->hb_lock);
    st = FERRY_OK;
out:
    for (size_t i = 0; vals && i < n; i++)
        ferry_store_free(vals[i]);
    free(keys);
    free(vals);
    free(lens);
    return st;
}

/* Stops the heartbeat, closes the connections (and rank 0's server) and
 * frees everything; for a communicator at any stage of its creation. */
static void comm_free(ferry_comm_t *c)
{
    hb_stop(c);
    ferry_store_close(c->hb_store);
    ferry_store_close(c->store);
    ferry_store_server_stop(c->server);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->abort_lock);
    pthread_mutex_destroy(&c->hb_lock);
    pthread_cond_destroy(&c->hb_cv);
    free(c->hb_last);
    free(c->hb_changed);
    free(c->peers);
    free(c->digests);
    free(c->pending);
    free(c);
}

ferry_status_t ferry_comm_create(const ferry_comm_params_t *params,
                                 ferry_comm_t **comm_p)
{
    ferry_store_params_t hp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT};
    ferry_comm_t *c;
    ferry_status_t st;

    if (comm_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_create: NULL comm_p");
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "comm_create: no memory");
    FERRY_CHECK_GOTO(ferry__comm_resolve(params, &c->cfg), st, err_free);
    c->rank = c->cfg.rank;
    c->size = c->cfg.size;
    c->beat_ns = c->cfg.liveness_ns / 10;
    if (c->beat_ns > 1000000000ull)
        c->beat_ns = 1000000000ull;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->abort_lock, NULL);
    pthread_mutex_init(&c->hb_lock, NULL);
    pthread_cond_init(&c->hb_cv, NULL);
    c->hb_last = calloc((size_t)c->size, sizeof(*c->hb_last));
    c->hb_changed = calloc((size_t)c->size, sizeof(*c->hb_changed));
    c->peers = calloc((size_t)c->size, sizeof(*c->peers));
    c->digests = calloc((size_t)c->size, sizeof(*c->digests));
    if (!c->hb_last || !c->hb_changed || !c->peers || !c->digests) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "comm_create: no memory for "
                          "%d ranks", c->size);
        goto err_destroy;
    }
    FERRY_CHECK_GOTO(comm_connect(c), st, err_destroy);
    /* The heartbeat's own connection: a collective's long wait on the
     * other one must not delay it. Its calls are bounded by the liveness
     * time, so a stuck store does not stall it longer than that. */
    hp.timeout_ns = c->cfg.liveness_ns;
    FERRY_CHECK_GOTO(ferry_store_connect(c->cfg.url, &hp, &c->hb_store), st,
                     err_destroy);
    FERRY_CHECK_GOTO(comm_join(c), st, err_destroy);
    ferry__debug("comm: rank %d of %d joined through %s (%s)", c->rank,
                 c->size, c->cfg.url, c->cfg.source);
    *comm_p = c;
    return FERRY_OK;

err_destroy:
    ferry__error_prefix("comm_create (rank %d of %d)", c->rank, c->size);
    {
        char text[512];

        /* Teardown talks to the store and may overwrite the detail. */
        snprintf(text, sizeof(text), "%s", ferry_last_error());
        comm_free(c);
        return ferry__error(st, "%s", text);
    }
err_free:
    free(c);
    return st;
}

/* The last rank to leave an external store deletes the job's keys (an
 * in-process store goes away with rank 0 anyway). Each rank says "done"
 * before it counts itself out, so nobody writes a key after this. */
static void comm_leave(ferry_comm_t *c)
{
    char key[FERRY__COMM_KEY_MAX], k2[FERRY__COMM_KEY_MAX + 16];
    int64_t left = 0;

    ferry__comm_key(c, key, "hb/%d", c->rank);
    if (ferry_store_set(c->store, key, "done", 4) != FERRY_OK || c->hosted)
        return;
    ferry__comm_key(c, key, "left");
    if (ferry_store_add(c->store, key, 1, &left) != FERRY_OK ||
        left != c->size || atomic_load(&c->aborted))
        return;
    delete_key(c->store, key);
    for (int i = 0; i < c->size; i++) {
        ferry__comm_key(c, key, "hb/%d", i);
        delete_key(c->store, key);
        ferry__comm_key(c, key, "join/%d", i);
        delete_key(c->store, key);
        /* Every rank ran the same rounds, so its pending keys are this
         * rank's with its own number. */
        for (size_t j = 0; j < c->npending; j++) {
            if (!c->pending[j].per_rank && i > 0)
                continue;
            snprintf(k2, sizeof(k2), c->pending[j].per_rank ? "%s%d" : "%s",
                     c->pending[j].key, i);
            delete_key(c->store, k2);
        }
    }
}

void ferry_comm_destroy(ferry_comm_t *comm)
{
    if (comm == NULL)
        return;
    if (comm->server != NULL) {
        /* The others use the store this process serves: wait until each
         * has left or is dead (the heartbeat thread decides). */
        struct timespec ts;
        uint64_t deadline = ferry__comm_deadline((int64_t)comm->cfg.timeout_ns);

        pthread_mutex_lock(&comm->hb_lock);
        while (!comm->others_gone && !comm->hb_failed && comm->hb_started &&
               ferry__now_ns() < deadline) {
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&comm->hb_cv, &comm->hb_lock, &ts);
        }
        if (!comm->others_gone)
            ferry__warn("comm: rank 0 stops the store while some ranks may "
                        "still use it");
        pthread_mutex_unlock(&comm->hb_lock);
    }
    hb_stop(comm);
    comm_leave(comm);
    comm_free(comm);
}

int ferry_comm_rank(const ferry_comm_t *comm)
{
    return comm ? comm->rank : -1;
}

int ferry_comm_size(const ferry_comm_t *comm)
{
    return comm ? comm->size : 0;
}

/* ------------------------------------------------------------------------ */
/* Collectives                                                              */
/* ------------------------------------------------------------------------ */

ferry_status_t ferry_comm_barrier(ferry_comm_t *comm, int64_t timeout_ns)
{
    ferry_status_t st;

    if (comm == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_barrier: NULL comm");
    pthread_mutex_lock(&comm->lock);
    st = ferry__comm_round(comm, "", 0, NULL, NULL,
                           ferry__comm_deadline(timeout_ns), "barrier");
    pthread_mutex_unlock(&comm->lock);
    return st;
}

ferry_status_t ferry_comm_allgather(ferry_comm_t *comm, const void *data,
                                    size_t len, void **values_p,
                                    size_t *lens_p, int64_t timeout_ns)
{
    ferry_status_t st;

    if (comm == NULL || (data == NULL && len > 0) || values_p == NULL ||
        lens_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "comm_allgather: NULL argument");
    pthread_mutex_lock(&comm->lock);
    st = ferry__comm_round(comm, data ? data : "", len, values_p, lens_p,
                           ferry__comm_deadline(timeout_ns), "allgather");
    pthread_mutex_unlock(&comm->lock);
    return st;
}

unsigned ferry__comm_loads(const ferry_comm_t *comm)
{
    return comm->loads;
}

void ferry__comm_set_hooks(ferry_comm_t *comm, const ferry__comm_hooks_t *h)
{
    comm->hooks = *h;
}
