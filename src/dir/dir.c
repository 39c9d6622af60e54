/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The directory of agents (include/ferry/dir.h) on the etcd client of
 * etcd.c. A handle owns one lease, shared by every agent it publishes, and
 * one thread that renews the lease every third of its TTL. A watch has a
 * thread of its own (watch_main): it reads the prefix, then follows etcd's
 * watch stream (/v3/watch) from the revision after that read, so no change
 * falls between the two, and turns the differences from its last view into
 * events; when the stream breaks it reads and streams again, through the
 * next endpoint.
 *
 * Locks, in the order they are taken: call_lock (the callers' connection),
 * lease_lock (the lease and the published blobs: publish, keepalive and
 * re-grant one at a time), lock (the thread's schedule, the watch view,
 * the event queue and the attached agents; never held across a call to
 * etcd), then an attached agent's own lock (a departure ends its requests,
 * a new blob is loaded into it).
 */
#include "core/core.h"
#include "dir/etcd.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define KEY_MAX (FERRY__ETCD_PREFIX_MAX + 1 + 256)

/* An agent this handle published: its name and the blob last put. */
typedef struct pub {
    char *name;
    void *blob;
    size_t len;
} pub_t;

/* One entry of the watch's view of the prefix. */
typedef struct seen {
    char *name;
    int64_t create_rev, mod_rev;
} seen_t;

struct ferry_dir {
    ferry__etcd_t etcd;
    char prefix[FERRY__ETCD_PREFIX_MAX + 1];
    int64_t ttl_s;
    uint64_t poll_ns;

    pthread_mutex_t call_lock;
    ferry__etcd_conn_t *conn; /* the callers' connection */

    pthread_mutex_t lease_lock;
    int64_t lease; /* 0: none granted yet */
    pub_t *pubs;
    size_t npubs;

    pthread_mutex_t lock;
    pthread_cond_t cv;       /* the thread's schedule; stop */
    pthread_cond_t event_cv; /* events queued */
    pthread_t thread;
    bool stop;
    bool has_lease; /* mirror of lease != 0, read under lock */
    uint64_t next_keepalive_ns;
    bool watching;
    pthread_t watch_thread; /* started by the first ferry_dir_watch() */
    int stop_fd;            /* readable once the handle is being destroyed */
    ferry__etcd_conn_t *watch_conn;
    seen_t *seen; /* sorted by name, as etcd returns keys */
    size_t nseen;
    ferry_dir_event_t *events; /* ring buffer */
    size_t ev_head, ev_count, ev_cap;
    int efd; /* readable while ev_count > 0 */
    ferry_agent_t **attached; /* told of departures (ferry_dir_attach) */
    size_t nattached;
    char **reload; /* names published again, to load into attached agents */
    size_t nreload;
    ferry__etcd_conn_t *thread_conn;
};

static uint64_t param_or_config(const ferry_dir_params_t *p, uint64_t bit,
                                uint64_t value, const char *knob)
{
    if (p != NULL && (p->field_mask & bit))
        return value;
    return ferry__config_get_size(knob) * 1000000u;
}

static void key_of(const ferry_dir_t *dir, const char *name, char *key)
{
    snprintf(key, KEY_MAX, "%s/%s", dir->prefix, name);
}

/* ------------------------------------------------------------------------ */
/* Events                                                                   */
/* ------------------------------------------------------------------------ */

/* Queues an event (detail may be NULL); call with lock held. */
static void push_event_detail(ferry_dir_t *dir, ferry_dir_event_kind_t kind,
                              const char *name, int64_t rev, const char *detail)
{
    ferry_dir_event_t *ev;

    if (dir->ev_count == dir->ev_cap) {
        size_t cap = dir->ev_cap ? dir->ev_cap * 2 : 64;
        ferry_dir_event_t *n = malloc(cap * sizeof(*n));
        if (n == NULL) {
            ferry__warn("dir: out of memory; event for '%s' dropped", name);
            return;
        }
        for (size_t i = 0; i < dir->ev_count; i++)
            n[i] = dir->events[(dir->ev_head + i) % dir->ev_cap];
        free(dir->events);
        dir->events = n;
        dir->ev_head = 0;
        dir->ev_cap = cap;
    }
    ev = &dir->events[(dir->ev_head + dir->ev_count) % dir->ev_cap];
    ev->kind = kind;
    ev->revision = rev;
    snprintf(ev->name, sizeof(ev->name), "%s", name);
    snprintf(ev->detail, sizeof(ev->detail), "%s", detail ? detail : "");
    if (dir->ev_count++ == 0) {
        uint64_t one = 1;
        if (write(dir->efd, &one, sizeof(one)) < 0)
            ferry__warn("dir: eventfd write: %s", strerror(errno));
    }
    pthread_cond_broadcast(&dir->event_cv);
}

static void push_event(ferry_dir_t *dir, ferry_dir_event_kind_t kind,
                       const char *name, int64_t rev)
{
    push_event_detail(dir, kind, name, rev, NULL);
}

/* A name published again: JOIN or UPDATE, and, when agents are attached,
 * a reload for the thread (reload_attached). Call with lock held. */
static void published(ferry_dir_t *dir, ferry_dir_event_kind_t kind,
                      const char *name, int64_t rev)
{
    char **r, *copy;

    push_event(dir, kind, name, rev);
    if (dir->nattached == 0)
        return;
    r = realloc(dir->reload, (dir->nreload + 1) * sizeof(*r));
    copy = strdup(name);
    if (r != NULL)
        dir->reload = r;
    if (r == NULL || copy == NULL) {
        free(copy);
        ferry__warn("dir: out of memory; '%s' is not reloaded", name);
        return;
    }
    dir->reload[dir->nreload++] = copy;
}

/* A departure: the event, and the attached agents' peers of that name are
 * gone. Call with lock held (which ferry_dir_detach takes, so that no
 * agent is touched after it returns). */
static void left(ferry_dir_t *dir, const char *name)
{
    char why[FERRY__ETCD_PREFIX_MAX + 96];

    push_event(dir, FERRY_DIR_LEAVE, name, 0);
    snprintf(why, sizeof(why), "it left the directory '%s': lease expired or "
             "revoked, or unpublished", dir->prefix);
    for (size_t i = 0; i < dir->nattached; i++)
        ferry__peer_lost(dir->attached[i], name, why);
}

/*
 * Compares a new read of the prefix (kvs, sorted by key) with the view and
 * queues the differences; the read becomes the view. Call with lock held.
 */
static void diff_view(ferry_dir_t *dir, ferry__etcd_kv_t *kvs, size_t n)
{
    size_t plen = strlen(dir->prefix) + 1, i = 0, j = 0;
    seen_t *now = n ? calloc(n, sizeof(*now)) : NULL;
    size_t nnow = 0;

    if (n && now == NULL) {
        ferry__warn("dir: out of memory; watch view kept");
        return;
    }
    for (size_t k = 0; k < n; k++) {
        char *name = strdup(kvs[k].key + plen);
        if (name == NULL)
            continue;
        now[nnow].name = name;
        now[nnow].create_rev = kvs[k].create_rev;
        now[nnow].mod_rev = kvs[k].mod_rev;
        nnow++;
    }
    while (i < dir->nseen || j < nnow) {
        int c = i == dir->nseen ? 1 : j == nnow ? -1
              : strcmp(dir->seen[i].name, now[j].name);
        if (c < 0) {
            left(dir, dir->seen[i].name);
            i++;
        } else if (c > 0) {
            published(dir, FERRY_DIR_JOIN, now[j].name, now[j].mod_rev);
            j++;
        } else {
            if (dir->seen[i].create_rev != now[j].create_rev) {
                left(dir, now[j].name);
                published(dir, FERRY_DIR_JOIN, now[j].name, now[j].mod_rev);
            } else if (dir->seen[i].mod_rev != now[j].mod_rev) {
                published(dir, FERRY_DIR_UPDATE, now[j].name, now[j].mod_rev);
            }
            i++;
            j++;
        }
    }
    for (size_t k = 0; k < dir->nseen; k++)
        free(dir->seen[k].name);
    free(dir->seen);
    dir->seen = now;
    dir->nseen = nnow;
}

/* ------------------------------------------------------------------------ */
/* Lease                                                                    */
/* ------------------------------------------------------------------------ */

/* Grants a new lease and puts every published blob under it. Call with
 * lease_lock held. */
static ferry_status_t regrant(ferry_dir_t *dir, ferry__etcd_conn_t *c)
{
    int64_t id;
    char key[KEY_MAX];

    FERRY_CHECK(ferry__etcd_lease_grant(&dir->etcd, c, dir->ttl_s, &id));
    dir->lease = id;
    pthread_mutex_lock(&dir->lock);
    dir->has_lease = true;
    dir->next_keepalive_ns = ferry__now_ns() + (uint64_t)dir->ttl_s * 1000000000u / 3;
    pthread_cond_broadcast(&dir->cv);
    pthread_mutex_unlock(&dir->lock);
    for (size_t i = 0; i < dir->npubs; i++) {
        key_of(dir, dir->pubs[i].name, key);
        FERRY_CHECK(ferry__etcd_put(&dir->etcd, c, key, dir->pubs[i].blob,
                                    dir->pubs[i].len, id, NULL));
    }
    return FERRY_OK;
}

/* Renews the lease, granting a new one (and putting every blob again) if
 * etcd no longer knows it. Call with lease_lock held. */
static ferry_status_t keepalive(ferry_dir_t *dir, ferry__etcd_conn_t *c)
{
    int64_t ttl = 0;
    ferry_status_t st;

    if (dir->lease == 0)
        return FERRY_OK;
    st = ferry__etcd_lease_keepalive(&dir->etcd, c, dir->lease, &ttl);
    if (st == FERRY_ERR_NOT_FOUND)
        ttl = 0, st = FERRY_OK;
    FERRY_CHECK(st);
    if (ttl > 0)
        return FERRY_OK;
    ferry__warn("dir: lease %llx expired (etcd unreachable for longer than "
                "its TTL?); publishing %zu agent(s) again under a new one",
                (unsigned long long)dir->lease, dir->npubs);
    return regrant(dir, c);
}

/* ------------------------------------------------------------------------ */
/* The thread                                                               */
/* ------------------------------------------------------------------------ */

/*
 * Loads the blobs of the names published again into the attached agents
 * that have a peer of that name; a blob that does not load is a
 * LOAD_FAILED event. On the thread, after the watch's read. The lock is
 * held while an agent is touched, so that ferry_dir_detach() returning
 * means the thread is done with that agent.
 */
static void reload_attached(ferry_dir_t *dir)
{
    char **names, key[KEY_MAX];
    size_t n;

    pthread_mutex_lock(&dir->lock);
    names = dir->reload;
    n = dir->nreload;
    dir->reload = NULL;
    dir->nreload = 0;
    pthread_mutex_unlock(&dir->lock);
    for (size_t i = 0; i < n; i++) {
        ferry__etcd_kv_t *kvs = NULL;
        size_t nk = 0;

        key_of(dir, names[i], key);
        if (ferry__etcd_range(&dir->etcd, dir->watch_conn, key, false, false,
                              &kvs, &nk, NULL) != FERRY_OK)
            ferry__debug("dir: reloading '%s': %s", names[i], ferry_last_error());
        pthread_mutex_lock(&dir->lock);
        for (size_t a = 0; nk > 0 && a < dir->nattached; a++) {
            ferry_peer_t *peer;

            if (!ferry__peer_known(dir->attached[a], names[i]) ||
                ferry_peer_load(dir->attached[a], kvs[0].value, kvs[0].len,
                                &peer) == FERRY_OK)
                continue;
            ferry__error_prefix("dir: reloading '%s'", names[i]);
            ferry__warn("%s", ferry_last_error());
            push_event_detail(dir, FERRY_DIR_LOAD_FAILED, names[i],
                              kvs[0].mod_rev, ferry_last_error());
        }
        pthread_mutex_unlock(&dir->lock);
        ferry__etcd_kvs_free(kvs, nk);
        free(names[i]);
    }
    free(names);
}

/* Reads the prefix (keys only) and makes the view match it; *rev_p the
 * revision read. Unreachable is not empty: on failure the view stays. */
static ferry_status_t sync_prefix(ferry_dir_t *dir, int64_t *rev_p)
{
    char key[KEY_MAX];
    ferry__etcd_kv_t *kvs;
    size_t n;
    ferry_status_t st;

    snprintf(key, sizeof(key), "%s/", dir->prefix);
    st = ferry__etcd_range(&dir->etcd, dir->watch_conn, key, true, true, &kvs,
                           &n, rev_p);
    if (st != FERRY_OK)
        return st;
    pthread_mutex_lock(&dir->lock);
    diff_view(dir, kvs, n);
    pthread_mutex_unlock(&dir->lock);
    ferry__etcd_kvs_free(kvs, n);
    reload_attached(dir);
    return FERRY_OK;
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const ferry__etcd_kv_t *)a)->key,
                  ((const ferry__etcd_kv_t *)b)->key);
}

/* A message of the watch stream: its events applied to the view, as one
 * new read of the prefix would show them (diff_view). */
static bool on_watch(void *arg, const ferry__etcd_wevent_t *ev, size_t n,
                     int64_t rev)
{
    ferry_dir_t *dir = arg;
    ferry__etcd_kv_t *kvs;
    size_t m = 0, cap;
    bool ok = true;

    (void)rev;
    if (n == 0)
        return true;
    pthread_mutex_lock(&dir->lock);
    cap = dir->nseen + n;
    kvs = calloc(cap, sizeof(*kvs));
    for (size_t i = 0; kvs != NULL && i < dir->nseen; i++, m++) {
        ok &= asprintf(&kvs[m].key, "%s/%s", dir->prefix, dir->seen[i].name) >= 0;
        kvs[m].create_rev = dir->seen[i].create_rev;
        kvs[m].mod_rev = dir->seen[i].mod_rev;
    }
    for (size_t i = 0; kvs != NULL && ok && i < n; i++) {
        size_t j = 0;

        while (j < m && strcmp(kvs[j].key, ev[i].kv.key) != 0)
            j++;
        if (ev[i].deleted) {
            if (j < m) {
                free(kvs[j].key);
                kvs[j] = kvs[--m];
                memset(&kvs[m], 0, sizeof(kvs[m]));
            }
            continue;
        }
        if (j == m && (kvs[m++].key = strdup(ev[i].kv.key)) == NULL)
            ok = false;
        kvs[j].create_rev = ev[i].kv.create_rev;
        kvs[j].mod_rev = ev[i].kv.mod_rev;
    }
    if (kvs != NULL && ok) {
        qsort(kvs, m, sizeof(*kvs), key_cmp);
        diff_view(dir, kvs, m);
    }
    pthread_mutex_unlock(&dir->lock);
    ferry__etcd_kvs_free(kvs, cap);
    if (kvs == NULL || !ok) {
        /* Ends the stream: the next one starts with a full read. */
        ferry__warn("dir: watch: out of memory; reading the prefix again");
        return false;
    }
    reload_attached(dir);
    return true;
}

/* Waits up to ns for the handle's destruction; true if it came. */
static bool stop_within(ferry_dir_t *dir, uint64_t ns)
{
    struct pollfd p = {.fd = dir->stop_fd, .events = POLLIN};

    return poll(&p, 1, (int)(ns / 1000000u)) > 0;
}

/*
 * The watch's thread: reads the prefix (JOINs for what is there, and,
 * after an interruption, whatever changed meanwhile), then follows etcd's
 * watch stream from the next revision, so that each change arrives as
 * etcd makes it and none is lost between the read and the stream. When
 * the stream breaks (its member died), it reads and streams again at
 * once, on the next endpoint; while no endpoint answers, it tries every
 * poll interval, reading the prefix each time.
 */
static void *watch_main(void *arg)
{
    ferry_dir_t *dir = arg;
    char key[KEY_MAX];

    snprintf(key, sizeof(key), "%s/", dir->prefix);
    for (;;) {
        uint64_t t0 = ferry__now_ns();
        int64_t rev = 0;
        ferry_status_t st = sync_prefix(dir, &rev);

        if (st == FERRY_OK)
            st = ferry__etcd_watch(&dir->etcd, key, rev + 1, dir->stop_fd,
                                   on_watch, dir);
        if (st == FERRY_ERR_CANCELED)
            break;
        ferry__debug("dir: watch: %s", ferry_last_error());
        /* A stream that ran a while is resumed at once; one that could
         * not start is tried again after the poll interval. */
        if (ferry__now_ns() - t0 < dir->poll_ns &&
            stop_within(dir, dir->poll_ns))
            break;
        if (stop_within(dir, 0))
            break;
    }
    return NULL;
}

/* The handle's thread: renews the lease every third of its TTL. */
static void *dir_thread(void *arg)
{
    ferry_dir_t *dir = arg;
    uint64_t period = (uint64_t)dir->ttl_s * 1000000000u / 3;

    pthread_mutex_lock(&dir->lock);
    while (!dir->stop) {
        uint64_t now = ferry__now_ns(), next = now + 1000000000u;

        if (dir->has_lease && now >= dir->next_keepalive_ns) {
            dir->next_keepalive_ns = now + period;
            pthread_mutex_unlock(&dir->lock);
            pthread_mutex_lock(&dir->lease_lock);
            if (keepalive(dir, dir->thread_conn) != FERRY_OK)
                ferry__warn("dir: lease keepalive: %s", ferry_last_error());
            pthread_mutex_unlock(&dir->lease_lock);
            pthread_mutex_lock(&dir->lock);
            continue;
        }
        if (dir->has_lease && dir->next_keepalive_ns < next)
            next = dir->next_keepalive_ns;
        struct timespec ts = { .tv_sec = (time_t)(next / 1000000000u),
                               .tv_nsec = (long)(next % 1000000000u) };
        pthread_cond_timedwait(&dir->cv, &dir->lock, &ts);
    }
    pthread_mutex_unlock(&dir->lock);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Create, destroy                                                          */
/* ------------------------------------------------------------------------ */

ferry_status_t ferry_dir_create(const char *url, const ferry_dir_params_t *params,
                                ferry_dir_t **dir_p)
{
    pthread_condattr_t ca;
    ferry_dir_t *dir;
    ferry_status_t st;
    uint64_t ttl_ns;
    char key[KEY_MAX];
    ferry__etcd_kv_t *kvs;
    size_t n;

    if (dir_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: NULL dir_p");
    dir = calloc(1, sizeof(*dir));
    if (dir == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "dir: out of memory");
    st = ferry__etcd_parse_url(url, &dir->etcd, dir->prefix);
    if (st != FERRY_OK) {
        ferry__error_prefix("dir");
        goto err_free;
    }
    ttl_ns = param_or_config(params, FERRY_DIR_PARAM_TTL,
                             params ? params->ttl_ns : 0, "FERRY_DIR_TTL_MS");
    dir->etcd.timeout_ns = param_or_config(params, FERRY_DIR_PARAM_TIMEOUT,
                                           params ? params->timeout_ns : 0,
                                           "FERRY_DIR_TIMEOUT_MS");
    dir->poll_ns = param_or_config(params, FERRY_DIR_PARAM_POLL,
                                   params ? params->poll_ns : 0, "FERRY_DIR_POLL_MS");
    if (ttl_ns < 1000000000u || ttl_ns > (uint64_t)INT32_MAX * 1000000000u ||
        dir->etcd.timeout_ns < 1000000u || dir->poll_ns < 10000000u) {
        st = ferry__error(FERRY_ERR_INVALID,
                          "dir: TTL must be at least 1 s, timeout at least 1 ms, "
                          "poll interval at least 10 ms");
        goto err_etcd;
    }
    dir->ttl_s = (int64_t)((ttl_ns + 999999999u) / 1000000000u);
    FERRY_CHECK_GOTO(ferry__etcd_conn_open(&dir->conn), st, err_etcd);
    FERRY_CHECK_GOTO(ferry__etcd_conn_open(&dir->thread_conn), st, err_conn);
    st = ferry__etcd_conn_open(&dir->watch_conn);
    if (st != FERRY_OK)
        goto err_thread_conn;

    /* One read proves that an etcd answers at one of the endpoints. */
    snprintf(key, sizeof(key), "%s/", dir->prefix);
    st = ferry__etcd_range(&dir->etcd, dir->conn, key, true, true, &kvs, &n, NULL);
    if (st != FERRY_OK) {
        ferry__error_prefix("dir: opening '%s'", url);
        goto err_thread_conn;
    }
    ferry__etcd_kvs_free(kvs, n);

    dir->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dir->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (dir->efd < 0 || dir->stop_fd < 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "dir: eventfd: %s", strerror(errno));
        if (dir->efd >= 0)
            close(dir->efd);
        if (dir->stop_fd >= 0)
            close(dir->stop_fd);
        goto err_thread_conn;
    }
    pthread_mutex_init(&dir->call_lock, NULL);
    pthread_mutex_init(&dir->lease_lock, NULL);
    pthread_mutex_init(&dir->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&dir->cv, &ca);
    pthread_cond_init(&dir->event_cv, &ca);
    pthread_condattr_destroy(&ca);
    if ((errno = pthread_create(&dir->thread, NULL, dir_thread, dir)) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "dir: pthread_create: %s", strerror(errno));
        goto err_sync;
    }
    *dir_p = dir;
    return FERRY_OK;

err_sync:
    pthread_cond_destroy(&dir->event_cv);
    pthread_cond_destroy(&dir->cv);
    pthread_mutex_destroy(&dir->lock);
    pthread_mutex_destroy(&dir->lease_lock);
    pthread_mutex_destroy(&dir->call_lock);
    close(dir->efd);
    close(dir->stop_fd);
err_thread_conn:
    ferry__etcd_conn_close(dir->watch_conn);
    ferry__etcd_conn_close(dir->thread_conn);
err_conn:
    ferry__etcd_conn_close(dir->conn);
err_etcd:
    ferry__etcd_fini(&dir->etcd);
err_free:
    free(dir);
    return st;
}

void ferry_dir_destroy(ferry_dir_t *dir)
{
    if (dir == NULL)
        return;
    uint64_t one = 1;
    bool watching;

    pthread_mutex_lock(&dir->lock);
    dir->stop = true;
    watching = dir->watching;
    pthread_cond_broadcast(&dir->cv);
    pthread_mutex_unlock(&dir->lock);
    if (write(dir->stop_fd, &one, sizeof(one)) < 0)
        ferry__warn("dir: eventfd write: %s", strerror(errno));
    if (watching)
        pthread_join(dir->watch_thread, NULL);
    pthread_join(dir->thread, NULL);
    if (dir->lease != 0 &&
        ferry__etcd_lease_revoke(&dir->etcd, dir->conn, dir->lease) != FERRY_OK)
        ferry__warn("dir: revoking lease %llx: %s (its %zu entries expire after "
                    "%lld s)", (unsigned long long)dir->lease, ferry_last_error(),
                    dir->npubs, (long long)dir->ttl_s);
    for (size_t i = 0; i < dir->npubs; i++) {
        free(dir->pubs[i].name);
        free(dir->pubs[i].blob);
    }
    free(dir->pubs);
    for (size_t i = 0; i < dir->nseen; i++)
        free(dir->seen[i].name);
    free(dir->seen);
    free(dir->events);
    free(dir->attached);
    for (size_t i = 0; i < dir->nreload; i++)
        free(dir->reload[i]);
    free(dir->reload);
    close(dir->efd);
    close(dir->stop_fd);
    pthread_cond_destroy(&dir->event_cv);
    pthread_cond_destroy(&dir->cv);
    pthread_mutex_destroy(&dir->lock);
    pthread_mutex_destroy(&dir->lease_lock);
    pthread_mutex_destroy(&dir->call_lock);
    ferry__etcd_conn_close(dir->watch_conn);
    ferry__etcd_conn_close(dir->thread_conn);
    ferry__etcd_conn_close(dir->conn);
    ferry__etcd_fini(&dir->etcd);
    free(dir);
}

/* ------------------------------------------------------------------------ */
/* Publish                                                                  */
/* ------------------------------------------------------------------------ */

static pub_t *find_pub(ferry_dir_t *dir, const char *name)
{
    for (size_t i = 0; i < dir->npubs; i++)
        if (strcmp(dir->pubs[i].name, name) == 0)
            return &dir->pubs[i];
    return NULL;
}

ferry_status_t ferry_dir_publish(ferry_dir_t *dir, ferry_agent_t *agent)
{
    char key[KEY_MAX];
    const char *name;
    void *md, *blob;
    size_t len;
    ferry_status_t st;
    pub_t *p;

    if (dir == NULL || agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: publish: NULL argument");
    name = ferry_agent_name(agent);
    FERRY_CHECK(ferry_md_pack(agent, &md, &len));
    /* A private copy, so that a lost lease can be re-published without the
     * agent (and the blob freed with free()). */
    blob = malloc(len ? len : 1);
    if (blob == NULL) {
        ferry_md_free(md);
        return ferry__error(FERRY_ERR_NO_MEMORY, "dir: out of memory");
    }
    memcpy(blob, md, len);
    ferry_md_free(md);
    key_of(dir, name, key);

    pthread_mutex_lock(&dir->call_lock);
    pthread_mutex_lock(&dir->lease_lock);
    st = dir->lease == 0 ? regrant(dir, dir->conn) : FERRY_OK;
    if (st == FERRY_OK) {
        st = ferry__etcd_put(&dir->etcd, dir->conn, key, blob, len, dir->lease, NULL);
        if (st == FERRY_ERR_NOT_FOUND) {
            /* The lease expired while etcd was out of reach. */
            st = regrant(dir, dir->conn);
            if (st == FERRY_OK)
                st = ferry__etcd_put(&dir->etcd, dir->conn, key, blob, len,
                                     dir->lease, NULL);
        }
    }
    if (st == FERRY_OK) {
        p = find_pub(dir, name);
        if (p == NULL) {
            pub_t *n = realloc(dir->pubs, (dir->npubs + 1) * sizeof(*n));
            char *nm = strdup(name);
            if (n != NULL)
                dir->pubs = n;
            if (n == NULL || nm == NULL) {
                free(nm);
                st = ferry__error(FERRY_ERR_NO_MEMORY, "dir: out of memory");
            } else {
                p = &dir->pubs[dir->npubs++];
                p->name = nm;
                p->blob = NULL;
            }
        }
        if (p != NULL) {
            free(p->blob);
            p->blob = blob;
            p->len = len;
            blob = NULL;
        }
    }
    pthread_mutex_unlock(&dir->lease_lock);
    pthread_mutex_unlock(&dir->call_lock);
    free(blob);
    if (st != FERRY_OK)
        ferry__error_prefix("dir: publishing '%s'", name);
    return st;
}

ferry_status_t ferry_dir_unpublish(ferry_dir_t *dir, ferry_agent_t *agent)
{
    char key[KEY_MAX];
    ferry_status_t st;
    pub_t *p;

    if (dir == NULL || agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: unpublish: NULL argument");
    pthread_mutex_lock(&dir->call_lock);
    pthread_mutex_lock(&dir->lease_lock);
    p = find_pub(dir, ferry_agent_name(agent));
    if (p == NULL) {
        st = ferry__error(FERRY_ERR_NOT_FOUND, "dir: unpublish: '%s' was not "
                          "published by this directory handle", ferry_agent_name(agent));
    } else {
        key_of(dir, p->name, key);
        st = ferry__etcd_delete(&dir->etcd, dir->conn, key, NULL);
        if (st == FERRY_OK) {
            free(p->name);
            free(p->blob);
            *p = dir->pubs[--dir->npubs];
        }
    }
    pthread_mutex_unlock(&dir->lease_lock);
    pthread_mutex_unlock(&dir->call_lock);
    return st;
}

ferry_status_t ferry_dir_keepalive(ferry_dir_t *dir)
{
    ferry_status_t st;

    if (dir == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: keepalive: NULL dir");
    pthread_mutex_lock(&dir->call_lock);
    pthread_mutex_lock(&dir->lease_lock);
    st = keepalive(dir, dir->conn);
    pthread_mutex_unlock(&dir->lease_lock);
    pthread_mutex_unlock(&dir->call_lock);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Discover                                                                 */
/* ------------------------------------------------------------------------ */

ferry_status_t ferry_dir_get(ferry_dir_t *dir, const char *name, void **blob_p,
                             size_t *len_p, int64_t *revision_p)
{
    char key[KEY_MAX];
    ferry__etcd_kv_t *kvs;
    size_t n;
    ferry_status_t st;

    if (dir == NULL || name == NULL || blob_p == NULL || len_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: get: NULL argument");
    if (name[0] == '\0' || strlen(name) > 255)
        return ferry__error(FERRY_ERR_INVALID, "dir: get: a name is 1 to 255 bytes");
    key_of(dir, name, key);
    pthread_mutex_lock(&dir->call_lock);
    st = ferry__etcd_range(&dir->etcd, dir->conn, key, false, false, &kvs, &n, NULL);
    pthread_mutex_unlock(&dir->call_lock);
    FERRY_CHECK(st);
    if (n == 0)
        return ferry__error(FERRY_ERR_NOT_FOUND, "dir: no agent '%s' is published "
                            "under '%s'", name, dir->prefix);
    *blob_p = kvs[0].value;
    *len_p = kvs[0].len;
    if (revision_p)
        *revision_p = kvs[0].mod_rev;
    kvs[0].value = NULL;
    ferry__etcd_kvs_free(kvs, n);
    return FERRY_OK;
}

ferry_status_t ferry_dir_load(ferry_dir_t *dir, ferry_agent_t *agent,
                              const char *name, ferry_peer_t **peer_p)
{
    void *blob;
    size_t len;
    ferry_status_t st;

    if (agent == NULL || peer_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: load: NULL argument");
    FERRY_CHECK(ferry_dir_get(dir, name, &blob, &len, NULL));
    st = ferry_peer_load(agent, blob, len, peer_p);
    free(blob);
    if (st != FERRY_OK)
        ferry__error_prefix("dir: loading '%s'", name);
    return st;
}

ferry_status_t ferry_dir_list(ferry_dir_t *dir, char ***names_p, size_t *n_p)
{
    char key[KEY_MAX];
    ferry__etcd_kv_t *kvs;
    size_t n, plen, total = 0;
    ferry_status_t st;
    char **names = NULL, *s;

    if (dir == NULL || names_p == NULL || n_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: list: NULL argument");
    snprintf(key, sizeof(key), "%s/", dir->prefix);
    plen = strlen(key);
    pthread_mutex_lock(&dir->call_lock);
    st = ferry__etcd_range(&dir->etcd, dir->conn, key, true, true, &kvs, &n, NULL);
    pthread_mutex_unlock(&dir->call_lock);
    FERRY_CHECK(st);
    for (size_t i = 0; i < n; i++)
        total += strlen(kvs[i].key + plen) + 1;
    if (n > 0) {
        /* The pointers, then the strings, in one block. */
        names = malloc(n * sizeof(char *) + total);
        if (names == NULL) {
            ferry__etcd_kvs_free(kvs, n);
            return ferry__error(FERRY_ERR_NO_MEMORY, "dir: out of memory");
        }
        s = (char *)(names + n);
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(kvs[i].key + plen) + 1;
            memcpy(s, kvs[i].key + plen, l);
            names[i] = s;
            s += l;
        }
    }
    ferry__etcd_kvs_free(kvs, n);
    *names_p = names;
    *n_p = n;
    return FERRY_OK;
}

void ferry_dir_free(void *p)
{
    free(p);
}

/* ------------------------------------------------------------------------ */
/* Watch                                                                    */
/* ------------------------------------------------------------------------ */

ferry_status_t ferry_dir_watch(ferry_dir_t *dir)
{
    if (dir == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: watch: NULL dir");
    ferry_status_t st = FERRY_OK;

    pthread_mutex_lock(&dir->lock);
    if (!dir->watching) {
        if ((errno = pthread_create(&dir->watch_thread, NULL, watch_main, dir)) == 0)
            dir->watching = true;
        else
            st = ferry__error(FERRY_ERR_SYSTEM, "dir: watch: pthread_create: %s",
                              strerror(errno));
    }
    pthread_mutex_unlock(&dir->lock);
    return st;
}

ferry_status_t ferry_dir_events(ferry_dir_t *dir, ferry_dir_event_t *out,
                                size_t max, size_t *n_p)
{
    size_t n = 0;

    if (dir == NULL || n_p == NULL || (out == NULL && max > 0))
        return ferry__error(FERRY_ERR_INVALID, "dir: events: NULL argument");
    pthread_mutex_lock(&dir->lock);
    if (!dir->watching) {
        pthread_mutex_unlock(&dir->lock);
        return ferry__error(FERRY_ERR_INVALID, "dir: events: no watch (call "
                            "ferry_dir_watch first)");
    }
    while (n < max && dir->ev_count > 0) {
        out[n++] = dir->events[dir->ev_head];
        dir->ev_head = (dir->ev_head + 1) % dir->ev_cap;
        dir->ev_count--;
    }
    if (n > 0 && dir->ev_count == 0) {
        uint64_t v;
        if (read(dir->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
            ferry__warn("dir: eventfd read: %s", strerror(errno));
    }
    pthread_mutex_unlock(&dir->lock);
    *n_p = n;
    return FERRY_OK;
}

ferry_status_t ferry_dir_wait(ferry_dir_t *dir, int64_t timeout_ns)
{
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : ferry__now_ns() + (uint64_t)timeout_ns;
    ferry_status_t st = FERRY_OK;

    if (dir == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: wait: NULL dir");
    pthread_mutex_lock(&dir->lock);
    if (!dir->watching) {
        pthread_mutex_unlock(&dir->lock);
        return ferry__error(FERRY_ERR_INVALID, "dir: wait: no watch (call "
                            "ferry_dir_watch first)");
    }
    while (dir->ev_count == 0) {
        uint64_t now = ferry__now_ns();
        if (now >= deadline) {
            st = ferry__error(FERRY_ERR_TIMEOUT, "dir: wait: no event within %.3f s",
                              (double)timeout_ns / 1e9);
            break;
        }
        if (deadline == UINT64_MAX) {
            pthread_cond_wait(&dir->event_cv, &dir->lock);
        } else {
            struct timespec ts = { .tv_sec = (time_t)(deadline / 1000000000u),
                                   .tv_nsec = (long)(deadline % 1000000000u) };
            pthread_cond_timedwait(&dir->event_cv, &dir->lock, &ts);
        }
    }
    pthread_mutex_unlock(&dir->lock);
    return st;
}

ferry_status_t ferry_dir_fd(ferry_dir_t *dir, int *fd_p)
{
    if (dir == NULL || fd_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: fd: NULL argument");
    *fd_p = dir->efd;
    return FERRY_OK;
}

ferry_status_t ferry_dir_attach(ferry_dir_t *dir, ferry_agent_t *agent)
{
    ferry_agent_t **a;

    if (dir == NULL || agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: attach: NULL argument");
    FERRY_CHECK(ferry_dir_watch(dir));
    pthread_mutex_lock(&dir->lock);
    for (size_t i = 0; i < dir->nattached; i++)
        if (dir->attached[i] == agent) {
            pthread_mutex_unlock(&dir->lock);
            return FERRY_OK;
        }
    a = realloc(dir->attached, (dir->nattached + 1) * sizeof(*a));
    if (a == NULL) {
        pthread_mutex_unlock(&dir->lock);
        return ferry__error(FERRY_ERR_NO_MEMORY, "dir: out of memory");
    }
    a[dir->nattached++] = agent;
    dir->attached = a;
    pthread_mutex_unlock(&dir->lock);
    return FERRY_OK;
}

ferry_status_t ferry_dir_detach(ferry_dir_t *dir, ferry_agent_t *agent)
{
    if (dir == NULL || agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "dir: detach: NULL argument");
    pthread_mutex_lock(&dir->lock);
    for (size_t i = 0; i < dir->nattached; i++)
        if (dir->attached[i] == agent) {
            dir->attached[i] = dir->attached[--dir->nattached];
            pthread_mutex_unlock(&dir->lock);
            return FERRY_OK;
        }
    pthread_mutex_unlock(&dir->lock);
    return ferry__error(FERRY_ERR_NOT_FOUND, "dir: detach: the agent is not attached");
}
