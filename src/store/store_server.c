/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The embedded store server: a c10d-TCPStore-compatible key-value store run
 * by one thread around one epoll loop, so that a rank (or ferry-store) can
 * host the rendezvous for its peers and for torch clients alike.
 *
 * All store state belongs to the server thread; the only things other
 * threads touch are the listening port (fixed before the thread starts) and
 * the eventfd that asks the thread to stop. A client's bytes are buffered
 * until a whole message is there, then parsed twice: once to check it
 * against the limits without acting, then to execute it, so a message is
 * applied completely or not at all. Anything a client sends that breaks
 * the protocol or the limits closes that client only, with a warning.
 *
 * Keys live in a chained hash table. A key that some client waits for but
 * that has no value yet keeps an entry with has_value 0, holding the list of
 * waiters; each waiter is also on its client's list so that a cancelled wait
 * or a closed connection can unhook it without scanning the table.
 */
#include "ferry.h"
#include "store/proto.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/status.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define SRV_READ_CHUNK (64u * 1024)
/* Bytes read from one client per wakeup, so one fast sender cannot starve
 * the others. */
#define SRV_READ_BUDGET (1u << 20)

typedef struct srv_waiter srv_waiter_t;
typedef struct srv_client srv_client_t;

typedef struct srv_entry {
    struct srv_entry *next; /* hash chain */
    uint64_t hash;
    uint8_t *key;
    size_t key_len;
    uint8_t *val;
    size_t val_len;
    size_t val_cap;
    bool has_value;
    srv_waiter_t *waiters; /* clients waiting for this key to appear */
} srv_entry_t;

struct srv_waiter {
    srv_waiter_t *prev, *next; /* on entry->waiters */
    srv_waiter_t *cnext;       /* on client->waiters */
    srv_entry_t *entry;        /* NULL once the key has appeared */
    srv_client_t *client;
};

struct srv_client {
    int fd;
    uint64_t id;
    bool validated;
    bool challenged;    /* sent its nonce and got ours: AUTH may follow */
    uint8_t cnonce[FERRY__STORE_NONCE], snonce[FERRY__STORE_NONCE];
    bool dead;          /* closing at the end of this loop turn */
    bool out_armed;     /* EPOLLOUT registered */
    bool in_paused;     /* EPOLLIN dropped: too much unread output */
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    srv_waiter_t *waiters; /* nodes of the pending WAIT */
    uint64_t keys_awaited; /* keys of the pending WAIT still missing */
    bool wait_pending;
    srv_client_t *prev, *next;    /* all clients */
    srv_client_t *dead_next;      /* clients to close */
    char addr[64];
};

struct ferry_store_server {
    int listen_fd;
    int epoll_fd;
    int stop_fd;
    uint16_t port;
    pthread_t thread;
    bool thread_started;
    /* limits */
    uint64_t max_key_len;
    uint64_t max_value_len;
    uint64_t max_wait_keys;
    uint64_t max_clients;
    uint64_t max_message_len;
    uint64_t max_out_pending;
    ferry__secret_t secret; /* set: clients must authenticate (proto.h) */
    /* state, server thread only */
    srv_entry_t **buckets;
    size_t nbuckets;
    size_t nentries;
    int64_t nkeys; /* entries with a value */
    srv_client_t *clients;
    srv_client_t *dead;
    uint64_t nclients;
    uint64_t next_id;
    uint64_t accept_paused_until; /* ns; 0 when accepting */
};

/* Tags that tell the listening socket and the stop eventfd from clients in
 * epoll's user data. */
static char srv_tag_listen, srv_tag_stop;

/* ------------------------------------------------------------------------ */
/* Hash table                                                               */
/* ------------------------------------------------------------------------ */

static uint64_t srv_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static srv_entry_t *srv_find(ferry_store_server_t *s, const uint8_t *key,
                             size_t len)
{
    uint64_t h = srv_hash(key, len);

    for (srv_entry_t *e = s->buckets[h & (s->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void srv_grow(ferry_store_server_t *s)
{
    size_t n = s->nbuckets * 2;
    srv_entry_t **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (srv_entry_t *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

/* Creates the entry for a key that has none; NULL when out of memory. */
static srv_entry_t *srv_create(ferry_store_server_t *s, const uint8_t *key,
                               size_t len)
{
    srv_entry_t *e = calloc(1, sizeof(*e));

    if (e == NULL)
        return NULL;
    e->key = malloc(len ? len : 1);
    if (e->key == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, len);
    e->key_len = len;
    e->hash = srv_hash(key, len);
    e->next = s->buckets[e->hash & (s->nbuckets - 1)];
    s->buckets[e->hash & (s->nbuckets - 1)] = e;
    if (++s->nentries > s->nbuckets)
        srv_grow(s);
    return e;
}

/* Finds or creates the entry for key; NULL when out of memory. */
static srv_entry_t *srv_lookup_create(ferry_store_server_t *s,
                                      const uint8_t *key, size_t len)
{
    srv_entry_t *e = srv_find(s, key, len);

    return e != NULL ? e : srv_create(s, key, len);
}

/* Removes an entry that holds neither a value nor waiters. */
static void srv_gc(ferry_store_server_t *s, srv_entry_t *e)
{
    if (e->has_value || e->waiters != NULL)
        return;
    srv_entry_t **pp = &s->buckets[e->hash & (s->nbuckets - 1)];

    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    s->nentries--;
    free(e->key);
    free(e->val);
    free(e);
}

/* Replaces (or, with append, extends) the entry's value. */
static bool srv_store(ferry_store_server_t *s, srv_entry_t *e,
                      const uint8_t *v, size_t n, bool append)
{
    size_t base = append && e->has_value ? e->val_len : 0;

    if (base + n > e->val_cap || (!append && e->val_cap > 2 * n + 4096)) {
        size_t cap = append ? (base + n) * 3 / 2 + 16 : n;
        uint8_t *p = malloc(cap ? cap : 1);

        if (p == NULL)
            return false;
        if (base)
            memcpy(p, e->val, base);
        free(e->val);
        e->val = p;
        e->val_cap = cap;
    }
    if (n)
        memcpy(e->val + base, v, n);
    e->val_len = base + n;
    if (!e->has_value)
        s->nkeys++;
    e->has_value = true;
    return true;
}

/* Stores (or, with append, appends) a value in e, the key's entry, created
 * here when e is NULL. Returns the entry, or NULL when memory runs out (an
 * entry this call created is dropped again). */
static srv_entry_t *srv_put(ferry_store_server_t *s, srv_entry_t *e,
                            const uint8_t *key, size_t klen, const uint8_t *v,
                            size_t n, bool append)
{
    if (e == NULL && (e = srv_create(s, key, klen)) == NULL)
        return NULL;
    if (!srv_store(s, e, v, n, append)) {
        srv_gc(s, e);
        return NULL;
    }
    return e;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

static void srv_kill(ferry_store_server_t *s, srv_client_t *c,
                     const char *why)
{
    if (c->dead)
        return;
    if (why != NULL)
        ferry__warn("store server: closing client %s (#%llu): %s", c->addr,
                    (unsigned long long)c->id, why);
    else
        ferry__debug("store server: client %s (#%llu) disconnected", c->addr,
                     (unsigned long long)c->id);
    c->dead = true;
    c->dead_next = s->dead;
    s->dead = c;
}

static void srv_update_events(ferry_store_server_t *s, srv_client_t *c)
{
    bool want_out = c->out_len > c->out_off;
    bool pause_in = c->out_len - c->out_off > s->max_out_pending;

    if (want_out == c->out_armed && pause_in == c->in_paused)
        return;
    struct epoll_event ev = {
        .events = (pause_in ? 0 : EPOLLIN) | (want_out ? EPOLLOUT : 0),
        .data.ptr = c};

    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        srv_kill(s, c, "epoll_ctl failed");
        return;
    }
    c->out_armed = want_out;
    c->in_paused = pause_in;
}

/* Writes what the socket takes now; the rest waits for EPOLLOUT. */
static void srv_flush(ferry_store_server_t *s, srv_client_t *c)
{
    while (!c->dead && c->out_len > c->out_off) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            srv_kill(s, c, NULL); /* the peer went away */
            return;
        }
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    srv_update_events(s, c);
}

static bool srv_out(srv_client_t *c, const void *p, size_t n)
{
    if (n == 0)
        return true; /* an empty value may come with a NULL pointer */
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = (c->out_len + n) * 2;
            uint8_t *q = realloc(c->out, cap);

            if (q == NULL)
                return false;
            c->out = q;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return true;
}

static bool srv_out_u8(srv_client_t *c, uint8_t v)
{
    return srv_out(c, &v, 1);
}

static bool srv_out_u64(srv_client_t *c, uint64_t v)
{
    uint8_t b[8];

    ferry__store_le64(b, v);
    return srv_out(c, b, 8);
}

static bool srv_out_vec(srv_client_t *c, const uint8_t *p, size_t n)
{
    return srv_out_u64(c, n) && srv_out(c, p, n);
}

/* The reply for a key to GET: its value, or an empty one if it has none. */
static bool srv_out_value(srv_client_t *c, const srv_entry_t *e)
{
    if (e != NULL && e->has_value)
        return srv_out_vec(c, e->val, e->val_len);
    return srv_out_u64(c, 0);
}

/* ------------------------------------------------------------------------ */
/* Waits                                                                    */
/* ------------------------------------------------------------------------ */

/* Drops every node of the client's pending wait. */
static void srv_clear_wait(ferry_store_server_t *s, srv_client_t *c)
{
    for (srv_waiter_t *w = c->waiters, *next; w; w = next) {
        next = w->cnext;
        if (w->entry != NULL) {
            srv_entry_t *e = w->entry;

            if (w->prev)
                w->prev->next = w->next;
            else
                e->waiters = w->next;
            if (w->next)
                w->next->prev = w->prev;
            srv_gc(s, e);
        }
        free(w);
    }
    c->waiters = NULL;
    c->keys_awaited = 0;
    c->wait_pending = false;
}

/* The key now has a value: every waiter for it has one key fewer to wait
 * for, and a client with none left is told STOP_WAITING. */
static void srv_wake(ferry_store_server_t *s, srv_entry_t *e)
{
    srv_waiter_t *list = e->waiters;

    e->waiters = NULL;
    for (srv_waiter_t *w = list, *next; w; w = next) {
        srv_client_t *c = w->client;

        next = w->next;
        w->entry = NULL;
        w->prev = w->next = NULL;
        if (--c->keys_awaited == 0) {
            srv_clear_wait(s, c);
            if (!c->dead) {
                if (!srv_out_u8(c, FERRY__WAIT_STOP_WAITING))
                    srv_kill(s, c, "out of memory for a reply");
                else
                    srv_flush(s, c);
            }
        }
    }
}

/* Puts the client on the waiters of a key that has no value yet, whose
 * entry is e (created here when e is NULL); false when memory runs out. */
static bool srv_hook_wait(ferry_store_server_t *s, srv_client_t *c,
                          srv_entry_t *e, const uint8_t *key, size_t klen)
{
    srv_waiter_t *w;

    if (e == NULL)
        e = srv_create(s, key, klen);
    w = e != NULL ? calloc(1, sizeof(*w)) : NULL;

    if (w == NULL) {
        if (e != NULL)
            srv_gc(s, e);
        return false;
    }
    w->entry = e;
    w->client = c;
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
    w->cnext = c->waiters;
    c->waiters = w;
    c->keys_awaited++;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum { P_DONE, P_MORE, P_BAD } srv_parse_t;

/* Reads a length-prefixed field no longer than max; *bad names the field
 * when it is longer. */
static const uint8_t *rd_field(ferry__rbuf_t *r, uint64_t max, size_t *len,
                               const char *what, char *why, size_t why_len,
                               bool *bad)
{
    uint64_t n = ferry__rbuf_u64(r);
    const uint8_t *p;

    if (r->err)
        return NULL;
    if (n > max) {
        snprintf(why, why_len, "%s of %llu bytes exceeds the limit of %llu",
                 what, (unsigned long long)n, (unsigned long long)max);
        *bad = true;
        return NULL;
    }
    if ((p = ferry__rbuf_bytes(r, (size_t)n)) != NULL)
        *len = (size_t)n;
    return p;
}

/* Parses a decimal integer the way torch's std::stoll does: leading
 * blanks, a sign, digits, anything after them ignored. */
static bool srv_parse_i64(const uint8_t *p, size_t n, int64_t *v)
{
    size_t i = 0;
    bool neg = false;
    uint64_t acc = 0, lim;

    while (i < n && (p[i] == ' ' || (p[i] >= '\t' && p[i] <= '\r')))
        i++;
    if (i < n && (p[i] == '+' || p[i] == '-'))
        neg = p[i++] == '-';
    if (i == n || p[i] < '0' || p[i] > '9')
        return false;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (acc > (lim - (uint64_t)(p[i] - '0')) / 10)
            return false;
        acc = acc * 10 + (uint64_t)(p[i] - '0');
    }
    *v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return true;
}

static const char *srv_qname(unsigned q)
{
    static const char *const names[] = {
        "VALIDATE", "SET",       "COMPARE_SET", "GET",        "ADD",
        "CHECK",    "WAIT",      "GETNUMKEYS",  "DELETE_KEY", "APPEND",
        "MULTI_GET", "MULTI_SET", "CANCEL_WAIT", "PING",       "QUEUE_PUSH",
        "QUEUE_POP", "QUEUE_LEN"};

    if (q == FERRY__Q_AUTH)
        return "AUTH";
    return q < sizeof(names) / sizeof(names[0]) ? names[q] : "unknown";
}

#define BAD(...)                                                              \
    do {                                                                      \
        snprintf(why, why_len, __VA_ARGS__);                                  \
        return P_BAD;                                                         \
    } while (0)
#define FIELD(var, len, max, what)                                            \
    do {                                                                      \
        bool bad_ = false;                                                    \
        (var) = rd_field(&r, (max), &(len), (what), why, why_len, &bad_);     \
        if (bad_)                                                             \
            return P_BAD;                                                     \
        if (r.err)                                                            \
            return P_MORE;                                                    \
    } while (0)
#define NEED()                                                                \
    do {                                                                      \
        if (r.err)                                                            \
            return P_MORE;                                                    \
    } while (0)
#define OUT(expr)                                                             \
    do {                                                                      \
        if (!(expr))                                                          \
            BAD("out of memory for a reply");                                 \
    } while (0)

/*
 * Parses the message at the start of in (len bytes, at least one of the
 * client's buffered input). With exec false it only checks that the whole
 * message is there and within the limits; with exec true (called only after
 * a P_DONE check) it also acts on it. *used gets the message's length on
 * P_DONE.
 */
static srv_parse_t srv_message(ferry_store_server_t *s, srv_client_t *c,
                               const uint8_t *in, size_t len, bool exec,
                               size_t *used, char *why, size_t why_len)
{
    ferry__rbuf_t r;
    unsigned q = in[0];
    const uint8_t *key, *val, *val2;
    size_t klen = 0, vlen = 0, v2len = 0;

    ferry__rbuf_init(&r, in + 1, len - 1);
    if (!c->validated && q != FERRY__Q_VALIDATE && !(q == FERRY__Q_AUTH && c->challenged))
        BAD("first message is %s (%u), not VALIDATE", srv_qname(q), q);

    switch (q) {
    case FERRY__Q_VALIDATE: {
        uint32_t magic = ferry__rbuf_u32(&r);
        const uint8_t *cn;

        NEED();
        if (magic == FERRY__STORE_MAGIC) {
            /* torch's handshake, or a ferry client without a secret. */
            if (s->secret.set)
                BAD("client sent no credentials: this store has a job secret "
                    "(FERRY_JOB_SECRET) and serves only clients that prove it");
            if (exec)
                c->validated = true;
            break;
        }
        if (magic != FERRY__STORE_AUTH_MAGIC)
            BAD("VALIDATE with magic 0x%08x, not 0x%08x", magic,
                FERRY__STORE_MAGIC);
        cn = ferry__rbuf_bytes(&r, FERRY__STORE_NONCE);
        NEED();
        if (!exec)
            break;
        if (!s->secret.set) {
            /* The client learns that this store admits anyone. */
            OUT(srv_out_u8(c, 0));
            break;
        }
        uint8_t proof[FERRY__MAC_LEN];

        memcpy(c->cnonce, cn, FERRY__STORE_NONCE);
        if (ferry__random(c->snonce, FERRY__STORE_NONCE) < 0 ||
            ferry__store_proof(&s->secret, "server", c->cnonce, c->snonce, proof) < 0)
            BAD("cannot answer the challenge: %s", ferry_last_error());
        OUT(srv_out_u8(c, 1));
        OUT(srv_out(c, c->snonce, FERRY__STORE_NONCE));
        OUT(srv_out(c, proof, FERRY__MAC_LEN));
        c->challenged = true;
        break;
    }
    case FERRY__Q_AUTH: {
        const uint8_t *proof = ferry__rbuf_bytes(&r, FERRY__MAC_LEN);
        uint8_t want[FERRY__MAC_LEN];

        NEED();
        if (!exec)
            break;
        if (!c->challenged)
            BAD("AUTH without a challenge");
        if (ferry__store_proof(&s->secret, "client", c->cnonce, c->snonce, want) < 0)
            BAD("cannot check the proof: %s", ferry_last_error());
        c->challenged = false;
        if (!ferry__ct_equal(want, proof, FERRY__MAC_LEN))
            BAD("the client's proof does not verify: it has another job secret");
        c->validated = true;
        OUT(srv_out_u8(c, 1));
        break;
    }
    case FERRY__Q_PING: {
        uint32_t nonce = ferry__rbuf_u32(&r);

        NEED();
        if (exec) {
            uint8_t b[4];

            ferry__store_le32(b, nonce);
            OUT(srv_out(c, b, 4));
        }
        break;
    }
    case FERRY__Q_SET:
    case FERRY__Q_APPEND:
        FIELD(key, klen, s->max_key_len, "key");
        FIELD(val, vlen, s->max_value_len, "value");
        if (exec) {
            srv_entry_t *e = srv_lookup_create(s, key, klen);
            bool app = q == FERRY__Q_APPEND;

            if (e == NULL)
                BAD("out of memory for a key");
            if (app && e->has_value && e->val_len + vlen > s->max_value_len)
                BAD("APPEND would grow a value to %zu bytes, over the limit "
                    "of %llu", e->val_len + vlen,
                    (unsigned long long)s->max_value_len);
            if (srv_put(s, e, key, klen, val, vlen, app) == NULL)
                BAD("out of memory for a value");
            srv_wake(s, e);
        }
        break;
    case FERRY__Q_COMPARE_SET:
        FIELD(key, klen, s->max_key_len, "key");
        FIELD(val, vlen, s->max_value_len, "expected value");
        FIELD(val2, v2len, s->max_value_len, "desired value");
        if (exec) {
            srv_entry_t *e = srv_find(s, key, klen);

            if (e == NULL || !e->has_value) {
                if (vlen == 0) {
                    e = srv_put(s, e, key, klen, val2, v2len, false);
                    if (e == NULL)
                        BAD("out of memory for a value");
                    OUT(srv_out_vec(c, val2, v2len));
                    srv_wake(s, e);
                } else {
                    /* The protocol answers a missing key with the expected
                     * value (torch's own comment calls this a lie). */
                    OUT(srv_out_vec(c, val, vlen));
                }
            } else {
                if (e->val_len == vlen && memcmp(e->val, val, vlen) == 0 &&
                    !srv_store(s, e, val2, v2len, false))
                    BAD("out of memory for a value");
                OUT(srv_out_vec(c, e->val, e->val_len));
            }
        }
        break;
    case FERRY__Q_GET:
        FIELD(key, klen, s->max_key_len, "key");
        if (exec)
            OUT(srv_out_value(c, srv_find(s, key, klen)));
        break;
    case FERRY__Q_ADD: {
        FIELD(key, klen, s->max_key_len, "key");
        int64_t delta = (int64_t)ferry__rbuf_u64(&r);

        NEED();
        if (exec) {
            srv_entry_t *e = srv_find(s, key, klen);
            int64_t cur = 0, sum;
            char text[24];

            if (e != NULL && e->has_value &&
                !srv_parse_i64(e->val, e->val_len, &cur))
                BAD("ADD to a key whose value is not an integer");
            if (__builtin_add_overflow(cur, delta, &sum))
                BAD("ADD overflows a 64-bit integer");
            int tn = snprintf(text, sizeof(text), "%lld", (long long)sum);

            e = srv_put(s, e, key, klen, (const uint8_t *)text, (size_t)tn,
                        false);
            if (e == NULL)
                BAD("out of memory for a value");
            OUT(srv_out_u64(c, (uint64_t)sum));
            srv_wake(s, e);
        }
        break;
    }
    case FERRY__Q_CHECK:
    case FERRY__Q_WAIT:
    case FERRY__Q_MULTI_GET:
    case FERRY__Q_MULTI_SET: {
        uint64_t n = ferry__rbuf_u64(&r);
        bool ready = true;

        NEED();
        if (n > s->max_wait_keys)
            BAD("%s names %llu keys, over the limit of %llu", srv_qname(q),
                (unsigned long long)n, (unsigned long long)s->max_wait_keys);
        if (q == FERRY__Q_WAIT && c->wait_pending)
            BAD("WAIT while another WAIT is pending");
        for (uint64_t i = 0; i < n; i++) {
            FIELD(key, klen, s->max_key_len, "key");
            if (q == FERRY__Q_MULTI_SET)
                FIELD(val, vlen, s->max_value_len, "value");
            if (!exec)
                continue;
            srv_entry_t *e = srv_find(s, key, klen);

            if (q == FERRY__Q_MULTI_GET) {
                OUT(srv_out_value(c, e));
            } else if (q == FERRY__Q_MULTI_SET) {
                e = srv_put(s, e, key, klen, val, vlen, false);
                if (e == NULL)
                    BAD("out of memory for a value");
                srv_wake(s, e);
            } else if (q == FERRY__Q_WAIT) {
                /* Hooked on each missing key (twice for a key named twice,
                 * as torch counts); none missing, the reply comes now. */
                if ((e == NULL || !e->has_value) &&
                    !srv_hook_wait(s, c, e, key, klen)) {
                    srv_clear_wait(s, c);
                    BAD("out of memory for a wait");
                }
            } else if (e == NULL || !e->has_value) {
                ready = false;
            }
        }
        if (!exec)
            break;
        if (q == FERRY__Q_CHECK)
            OUT(srv_out_u8(c, ready ? FERRY__CHECK_READY : FERRY__CHECK_NOT_READY));
        else if (q == FERRY__Q_WAIT && c->keys_awaited == 0)
            OUT(srv_out_u8(c, FERRY__WAIT_STOP_WAITING));
        else if (q == FERRY__Q_WAIT)
            c->wait_pending = true;
        break;
    }
    case FERRY__Q_GETNUMKEYS:
        if (exec)
            OUT(srv_out_u64(c, (uint64_t)s->nkeys));
        break;
    case FERRY__Q_DELETE_KEY:
        FIELD(key, klen, s->max_key_len, "key");
        if (exec) {
            srv_entry_t *e = srv_find(s, key, klen);
            bool had = e != NULL && e->has_value;

            if (had) {
                e->has_value = false;
                e->val_len = 0;
                s->nkeys--;
                srv_gc(s, e);
            }
            OUT(srv_out_u64(c, had ? 1 : 0));
        }
        break;
    case FERRY__Q_CANCEL_WAIT:
        if (exec) {
            srv_clear_wait(s, c);
            OUT(srv_out_u8(c, FERRY__WAIT_CANCELED));
        }
        break;
    default:
        BAD("unsupported query type %u (%s)", q, srv_qname(q));
    }
    *used = len - r.left;
    return P_DONE;
}

#undef BAD
#undef FIELD
#undef NEED
#undef OUT

/* Acts on every whole message buffered, as far as the output limit allows. */
static void srv_process(ferry_store_server_t *s, srv_client_t *c)
{
    size_t done = 0;
    char why[160];

    while (!c->dead && c->in_len > done &&
           c->out_len - c->out_off <= s->max_out_pending) {
        const uint8_t *msg = c->in + done;
        size_t len = c->in_len - done, used = 0;
        srv_parse_t p = srv_message(s, c, msg, len, false, &used, why,
                                    sizeof(why));

        if (p == P_DONE)
            p = srv_message(s, c, msg, len, true, &used, why, sizeof(why));
        if (p == P_BAD) {
            srv_kill(s, c, why);
            return;
        }
        if (p == P_MORE) {
            if (c->in_len - done > s->max_message_len) {
                snprintf(why, sizeof(why),
                         "incomplete message over %llu bytes",
                         (unsigned long long)s->max_message_len);
                srv_kill(s, c, why);
                return;
            }
            break;
        }
        done += used;
    }
    if (done > 0) {
        memmove(c->in, c->in + done, c->in_len - done);
        c->in_len -= done;
    }
    srv_flush(s, c);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static void srv_read(ferry_store_server_t *s, srv_client_t *c)
{
    size_t budget = SRV_READ_BUDGET;

    while (!c->dead && budget > 0) {
        if (c->in_cap - c->in_len < SRV_READ_CHUNK) {
            size_t cap = c->in_cap ? c->in_cap * 2 : SRV_READ_CHUNK * 2;
            uint8_t *p = realloc(c->in, cap);

            if (p == NULL) {
                srv_kill(s, c, "out of memory for input");
                return;
            }
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len,
                         MSG_DONTWAIT);

        if (n > 0) {
            c->in_len += (size_t)n;
            budget = budget > (size_t)n ? budget - (size_t)n : 0;
            srv_process(s, c);
            if (c->in_paused)
                return;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* End of stream or a reset. A message cut short is worth saying. */
        if (c->in_len > 0)
            srv_kill(s, c, "connection closed in the middle of a message");
        else
            srv_kill(s, c, NULL);
        return;
    }
}

static void srv_free_client(ferry_store_server_t *s, srv_client_t *c)
{
    srv_clear_wait(s, c);
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    free(c->in);
    free(c->out);
    free(c);
}

static void srv_reap(ferry_store_server_t *s)
{
    while (s->dead != NULL) {
        srv_client_t *c = s->dead;

        s->dead = c->dead_next;
        srv_free_client(s, c);
    }
}

static void srv_accept(ferry_store_server_t *s)
{
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        int fd = accept4(s->listen_fd, (struct sockaddr *)&sa, &salen,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* Out of descriptors: stop listening for a moment rather
                 * than spin on a listening socket that stays readable. */
                ferry__warn("store server: accept: %s; pausing accepts",
                            strerror(errno));
                epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, s->listen_fd, NULL);
                s->accept_paused_until = ferry__now_ns() + 100000000ull;
            }
            return;
        }
        if (s->nclients >= s->max_clients) {
            ferry__warn("store server: %llu clients connected, the limit; "
                        "refusing another", (unsigned long long)s->nclients);
            close(fd);
            continue;
        }
        srv_client_t *c = calloc(1, sizeof(*c));

        if (c == NULL) {
            close(fd);
            continue;
        }
        int one = 1;

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->id = ++s->next_id;
        if (sa.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&sa;
            char a[INET_ADDRSTRLEN];

            inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a));
            snprintf(c->addr, sizeof(c->addr), "%s:%u", a,
                     ntohs(in->sin_port));
        } else if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
            char a[INET6_ADDRSTRLEN];

            inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
            snprintf(c->addr, sizeof(c->addr), "[%s]:%u", a,
                     ntohs(in6->sin6_port));
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

        if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = s->clients;
        if (s->clients)
            s->clients->prev = c;
        s->clients = c;
        s->nclients++;
    }
}

static void *srv_thread(void *arg)
{
    ferry_store_server_t *s = arg;
    struct epoll_event evs[256];

    for (;;) {
        int timeout = s->accept_paused_until ? 100 : -1;
        int n = epoll_wait(s->epoll_fd, evs, 256, timeout);

        if (n < 0 && errno != EINTR) {
            ferry__warn("store server: epoll_wait: %s", strerror(errno));
            break;
        }
        if (s->accept_paused_until &&
            ferry__now_ns() >= s->accept_paused_until) {
            struct epoll_event ev = {.events = EPOLLIN,
                                     .data.ptr = &srv_tag_listen};

            s->accept_paused_until = 0;
            epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->listen_fd, &ev);
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;

            if (tag == &srv_tag_stop)
                return NULL;
            if (tag == &srv_tag_listen) {
                srv_accept(s);
                continue;
            }
            srv_client_t *c = tag;

            if (c->dead)
                continue;
            if (evs[i].events & EPOLLOUT) {
                bool was_paused = c->in_paused;

                srv_flush(s, c);
                /* Output drained: act on input held back meanwhile. */
                if (was_paused && !c->in_paused && !c->dead)
                    srv_process(s, c);
            }
            if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                srv_read(s, c);
        }
        srv_reap(s);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

static void srv_destroy(ferry_store_server_t *s)
{
    while (s->clients)
        srv_free_client(s, s->clients);
    if (s->buckets) {
        for (size_t i = 0; i < s->nbuckets; i++) {
            for (srv_entry_t *e = s->buckets[i], *next; e; e = next) {
                next = e->next;
                free(e->key);
                free(e->val);
                free(e);
            }
        }
        free(s->buckets);
    }
    ferry__secret_clear(&s->secret);
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    if (s->epoll_fd >= 0)
        close(s->epoll_fd);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    free(s);
}

ferry_status_t ferry_store_server_start(const char *bind_addr,
                                        const ferry_store_server_params_t *params,
                                        ferry_store_server_t **server_p)
{
    ferry_store_server_t *s;
    struct sockaddr_storage sa;
    socklen_t salen;
    uint16_t port = 0;
    uint64_t mask = params ? params->field_mask : 0;
    ferry_status_t st;
    int one = 1;

    if (server_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store server: NULL server_p");
    if (bind_addr == NULL)
        bind_addr = "127.0.0.1";
    memset(&sa, 0, sizeof(sa));
    if (mask & FERRY_STORE_SERVER_PARAM_PORT)
        port = params->port;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;

    if (inet_pton(AF_INET, bind_addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        salen = sizeof(*in4);
    } else if (inet_pton(AF_INET6, bind_addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        salen = sizeof(*in6);
    } else {
        return ferry__error(FERRY_ERR_INVALID,
                            "store server: '%s' is not a numeric IPv4 or "
                            "IPv6 address", bind_addr);
    }

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "store server: no memory");
    s->listen_fd = s->epoll_fd = s->stop_fd = -1;
    s->max_key_len = mask & FERRY_STORE_SERVER_PARAM_MAX_KEY_LEN
                         ? params->max_key_len : 8192;
    s->max_value_len = mask & FERRY_STORE_SERVER_PARAM_MAX_VALUE_LEN
                           ? params->max_value_len : 64ull << 20;
    s->max_wait_keys = mask & FERRY_STORE_SERVER_PARAM_MAX_WAIT_KEYS
                           ? params->max_wait_keys : 128 * 1024;
    s->max_clients = mask & FERRY_STORE_SERVER_PARAM_MAX_CLIENTS
                         ? params->max_clients : 65536;
    st = ferry__secret_init(&s->secret, mask & FERRY_STORE_SERVER_PARAM_SECRET
                                            ? (params->secret ? params->secret : "")
                                            : NULL);
    if (st < 0)
        goto err_free;
    /* A message may carry two values (COMPARE_SET) or many small ones
     * (MULTI_SET); this bounds what one client can make the server hold. */
    s->max_message_len = 2 * s->max_value_len + s->max_key_len + (1u << 20);
    s->max_out_pending = s->max_value_len + (1u << 20);
    s->nbuckets = 1024;
    s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
    if (s->buckets == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "store server: no memory");
        goto err_free;
    }

    s->listen_fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
                                            SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: socket: %s",
                          strerror(errno));
        goto err_free;
    }
    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s->listen_fd, (struct sockaddr *)&sa, salen) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: bind %s port %u: %s",
                          bind_addr, port, strerror(errno));
        goto err_free;
    }
    if (listen(s->listen_fd, SOMAXCONN) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: listen: %s",
                          strerror(errno));
        goto err_free;
    }
    salen = sizeof(sa);
    getsockname(s->listen_fd, (struct sockaddr *)&sa, &salen);
    s->port = ntohs(sa.ss_family == AF_INET ? in4->sin_port : in6->sin6_port);

    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->epoll_fd < 0 || s->stop_fd < 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: epoll/eventfd: %s",
                          strerror(errno));
        goto err_free;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &srv_tag_listen};
    struct epoll_event evs = {.events = EPOLLIN, .data.ptr = &srv_tag_stop};

    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->listen_fd, &ev) != 0 ||
        epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->stop_fd, &evs) != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: epoll_ctl: %s",
                          strerror(errno));
        goto err_free;
    }
    int rc = pthread_create(&s->thread, NULL, srv_thread, s);

    if (rc != 0) {
        st = ferry__error(FERRY_ERR_SYSTEM, "store server: pthread_create: %s",
                          strerror(rc));
        goto err_free;
    }
    s->thread_started = true;
    ferry__info("store server: listening on %s port %u", bind_addr, s->port);
    *server_p = s;
    return FERRY_OK;

err_free:
    srv_destroy(s);
    return st;
}

uint16_t ferry_store_server_port(const ferry_store_server_t *server)
{
    return server ? server->port : 0;
}

void ferry_store_server_stop(ferry_store_server_t *server)
{
    uint64_t one = 1;

    if (server == NULL)
        return;
    if (server->thread_started) {
        if (write(server->stop_fd, &one, sizeof(one)) != sizeof(one))
            ferry__warn("store server: cannot signal the server thread: %s",
                        strerror(errno));
        pthread_join(server->thread, NULL);
    }
    srv_destroy(server);
}
