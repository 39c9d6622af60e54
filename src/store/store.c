/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The store client: one TCP connection to a c10d-TCPStore-compatible
 * server (ferry's own, store_server.c, or a torchrun job's), speaking the
 * frames drawn in proto.h. Every call is a request and, for most, one reply
 * read with a deadline: the socket is non-blocking and every wait is a
 * poll() bounded by the call's timeout, so no call can hang on a silent
 * server, and a closed or reset connection is FERRY_ERR_PEER_LOST.
 *
 * A reply that does not arrive in time leaves the stream in an unknown
 * place (the late reply would be read as the answer to the next request),
 * so such a timeout closes the connection. WAIT is the exception the
 * protocol provides for: on timeout the client sends CANCEL_WAIT and reads
 * until WAIT_CANCELED, after which the connection is in step again.
 */
#include "ferry.h"
#include "store/proto.h"
#include "store/store.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/status.h"
#include "util/time.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STORE_DEFAULT_TIMEOUT_NS (300ull * 1000000000ull)
/* The largest value a reply may announce: more is taken as a corrupt
 * stream rather than an allocation to attempt. */
#define STORE_MAX_REPLY_VALUE (1ull << 32)
#define NO_DEADLINE UINT64_MAX

struct ferry_store {
    pthread_mutex_t lock;
    int fd; /* -1 once the connection is closed */
    uint64_t timeout_ns;
    /* No call's deadline goes past it (NO_DEADLINE: none). Atomic: a
     * lowered cap ends a wait already under way, within WAIT_SLICE_NS. */
    _Atomic uint64_t cap_ns;
    ferry__secret_t secret; /* set: ferry's authenticated handshake */
    char url[256];
    char why[256]; /* the failure that closed the connection, once it has */
};

/* ------------------------------------------------------------------------ */
/* Socket I/O with deadlines                                                */
/* ------------------------------------------------------------------------ */

static uint64_t deadline_after(uint64_t ns)
{
    uint64_t now = ferry__now_ns();

    return ns >= NO_DEADLINE - now ? NO_DEADLINE : now + ns;
}

/* How often a wait looks at its connection's cap again. */
#define WAIT_SLICE_NS 100000000ull

/* Polls fd (of connection s) for events until the deadline, or the cap
 * that another thread may lower meanwhile: 1 ready, 0 timed out, -1
 * error. */
static int wait_fd(const ferry_store_t *s, int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        uint64_t cap = atomic_load(&s->cap_ns), now = ferry__now_ns();
        uint64_t end = cap < deadline ? cap : deadline;
        int n;

        bool last = end != NO_DEADLINE && now >= end;

        /* A slice at most, then the cap again; past the end, one look
         * without waiting. */
        if (last)
            end = now;
        else if (end == NO_DEADLINE || end - now > WAIT_SLICE_NS)
            end = now + WAIT_SLICE_NS;
        n = poll(&pfd, 1, (int)((end - now + 999999) / 1000000));
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -1;
        if (last)
            return 0;
    }
}

/* Closes a connection that can no longer be trusted to be in step. */
/* The deadline of a call that takes no timeout of its own: the
 * connection's timeout from now, but never past the cap a caller set. */
static uint64_t call_deadline(const ferry_store_t *s)
{
    uint64_t d = deadline_after(s->timeout_ns);

    uint64_t cap = atomic_load(&s->cap_ns);

    return d < cap ? d : cap;
}

static void store_break(ferry_store_t *s)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

/*
 * Moves n bytes to (sending) or from the server before the deadline. A send
 * that times out breaks the connection (a partial request would put it out
 * of step); a receive that times out leaves it to the caller, which may
 * still cancel a wait. Losing the connection is PEER_LOST.
 */
static ferry_status_t store_io(ferry_store_t *s, uint8_t *b, size_t n,
                               uint64_t deadline, const char *op, bool sending)
{
    while (n > 0) {
        ssize_t k = sending ? send(s->fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                            : recv(s->fd, b, n, MSG_DONTWAIT);
        int e = errno;

        if (k > 0) {
            b += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && e == EINTR)
            continue;
        if (k < 0 && (e == EAGAIN || e == EWOULDBLOCK)) {
            int w = wait_fd(s, s->fd, sending ? POLLOUT : POLLIN, deadline);

            if (w > 0)
                continue;
            e = errno;
            if (w < 0 || sending)
                store_break(s);
            if (w == 0)
                return ferry__error(FERRY_ERR_TIMEOUT, "store %s: %s: %s", s->url,
                                    op, sending ? "timed out sending the request"
                                                : "no reply in time");
            return ferry__error(FERRY_ERR_SYSTEM, "store %s: %s: poll: %s", s->url,
                                op, strerror(e));
        }
        store_break(s);
        if (k == 0)
            return ferry__error(FERRY_ERR_PEER_LOST, "store %s: %s: the server "
                                "closed the connection", s->url, op);
        return ferry__error(FERRY_ERR_PEER_LOST, "store %s: %s: connection lost: %s",
                            s->url, op, strerror(e));
    }
    return FERRY_OK;
}

static ferry_status_t store_send(ferry_store_t *s, const void *p, size_t n,
                                 uint64_t deadline, const char *op)
{
    return store_io(s, (uint8_t *)(uintptr_t)p, n, deadline, op, true);
}

static ferry_status_t store_recv(ferry_store_t *s, void *p, size_t n,
                                 uint64_t deadline, const char *op)
{
    return store_io(s, p, n, deadline, op, false);
}

/* Receives a reply; a timeout here leaves the stream out of step, so it
 * closes the connection. */
static ferry_status_t store_reply(ferry_store_t *s, void *p, size_t n,
                                  uint64_t deadline, const char *op)
{
    ferry_status_t st = store_recv(s, p, n, deadline, op);

    if (st == FERRY_ERR_TIMEOUT)
        store_break(s);
    return st;
}

static ferry_status_t store_reply_u64(ferry_store_t *s, uint64_t *v,
                                      uint64_t deadline, const char *op)
{
    uint8_t b[8];

    FERRY_CHECK(store_reply(s, b, 8, deadline, op));
    *v = ferry__load_le64(b);
    return FERRY_OK;
}

/* Receives a length-prefixed value into a new zero-terminated buffer. */
static ferry_status_t store_reply_vec(ferry_store_t *s, void **val_p,
                                      size_t *len_p, uint64_t deadline,
                                      const char *op)
{
    uint64_t n;
    uint8_t *p;
    ferry_status_t st;

    FERRY_CHECK(store_reply_u64(s, &n, deadline, op));
    if (n > STORE_MAX_REPLY_VALUE) {
        store_break(s);
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "store %s: %s: reply announces %llu bytes",
                            s->url, op, (unsigned long long)n);
    }
    p = malloc((size_t)n + 1);
    if (p == NULL) {
        store_break(s);
        return ferry__error(FERRY_ERR_NO_MEMORY,
                            "store %s: %s: no memory for %llu bytes", s->url,
                            op, (unsigned long long)n);
    }
    st = store_reply(s, p, (size_t)n, deadline, op);
    if (st < 0) {
        free(p);
        return st;
    }
    p[n] = 0;
    *val_p = p;
    *len_p = (size_t)n;
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void put_str(ferry__wbuf_t *w, const void *p, size_t n)
{
    ferry__wbuf_u64(w, n);
    ferry__wbuf_bytes(w, p, n);
}

static void put_keys(ferry__wbuf_t *w, const char *const *keys, size_t n)
{
    ferry__wbuf_u64(w, n);
    for (size_t i = 0; i < n; i++)
        put_str(w, keys[i], strlen(keys[i]));
}

/* Starts a request in w: the query byte, then the key unless it is NULL. */
static void req_init(ferry__wbuf_t *w, uint8_t q, const char *key)
{
    ferry__wbuf_init(w);
    ferry__wbuf_u8(w, q);
    if (key != NULL)
        put_str(w, key, strlen(key));
}

static ferry_status_t store_begin(ferry_store_t *s, const char *op)
{
    if (s == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: %s: NULL store", op);
    pthread_mutex_lock(&s->lock);
    if (s->fd < 0) {
        pthread_mutex_unlock(&s->lock);
        return ferry__error(FERRY_ERR_PEER_LOST,
                            "store %s: %s: the connection was closed by an "
                            "earlier failure (%s)", s->url, op, s->why);
    }
    return FERRY_OK;
}

/* Ends a call that store_begin() let in. A connection open at the start
 * and closed now was closed by this call's failure, whose text every later
 * call repeats: "closed" alone would hide a timeout behind PEER_LOST. */
static void store_end(ferry_store_t *s)
{
    if (s->fd < 0 && s->why[0] == 0)
        snprintf(s->why, sizeof(s->why), "%s", ferry_last_error());
    pthread_mutex_unlock(&s->lock);
}

bool ferry__store_lost(ferry_store_t *store)
{
    bool lost;

    pthread_mutex_lock(&store->lock);
    lost = store->fd < 0;
    pthread_mutex_unlock(&store->lock);
    return lost;
}

/* Sends the request built in w, and frees it. */
static ferry_status_t store_send_req(ferry_store_t *s, ferry__wbuf_t *w,
                                     uint64_t deadline, const char *op)
{
    ferry_status_t st;

    if (w->oom)
        st = ferry__error(FERRY_ERR_NO_MEMORY, "store %s: %s: no memory",
                          s->url, op);
    else
        st = store_send(s, w->data, w->len, deadline, op);
    ferry__wbuf_free(w);
    return st;
}

static bool keys_valid(const char *const *keys, size_t n)
{
    if (keys == NULL && n > 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (keys[i] == NULL)
            return false;
    return true;
}

/* WAIT for keys with the lock held; on timeout, CANCEL_WAIT puts the
 * stream back in step (see the file comment). */
static ferry_status_t store_wait_locked(ferry_store_t *s,
                                        const char *const *keys, size_t n,
                                        int64_t timeout_ns, const char *op)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    uint8_t r;
    uint64_t deadline = timeout_ns < 0 ? NO_DEADLINE
                                       : deadline_after((uint64_t)timeout_ns);

    if (deadline > atomic_load(&s->cap_ns))
        deadline = atomic_load(&s->cap_ns);
    req_init(&w, FERRY__Q_WAIT, NULL);
    put_keys(&w, keys, n);
    FERRY_CHECK(store_send_req(s, &w, call_deadline(s), op));

    st = store_recv(s, &r, 1, deadline, op);
    if (st == FERRY_OK) {
        if (r != FERRY__WAIT_STOP_WAITING) {
            store_break(s);
            return ferry__error(FERRY_ERR_PROTOCOL,
                                "store %s: %s: unexpected wait reply %u",
                                s->url, op, r);
        }
        return FERRY_OK;
    }
    if (st != FERRY_ERR_TIMEOUT)
        return st;

    /* Timed out: cancel, then read the server's answer, which may be a
     * STOP_WAITING that crossed our cancel (the keys arrived after all). */
    uint8_t cancel = FERRY__Q_CANCEL_WAIT;
    uint64_t grace = call_deadline(s);
    bool stopped = false;

    FERRY_CHECK(store_send(s, &cancel, 1, grace, op));
    for (;;) {
        FERRY_CHECK(store_reply(s, &r, 1, grace, op));
        if (r == FERRY__WAIT_CANCELED)
            break;
        if (r != FERRY__WAIT_STOP_WAITING || stopped) {
            store_break(s);
            return ferry__error(FERRY_ERR_PROTOCOL,
                                "store %s: %s: unexpected wait reply %u",
                                s->url, op, r);
        }
        stopped = true;
    }
    if (stopped)
        return FERRY_OK;
    if (n == 1)
        return ferry__error(FERRY_ERR_TIMEOUT,
                            "store %s: %s: key '%s' did not appear within "
                            "%lld ms", s->url, op, keys[0],
                            (long long)(timeout_ns / 1000000));
    return ferry__error(FERRY_ERR_TIMEOUT,
                        "store %s: %s: %zu keys (first '%s') did not all "
                        "appear within %lld ms", s->url, op, n,
                        n ? keys[0] : "", (long long)(timeout_ns / 1000000));
}

/* WAIT with the store's call timeout, as GET and MULTI_GET do first. */
static ferry_status_t store_await_locked(ferry_store_t *s,
                                         const char *const *keys, size_t n,
                                         const char *op)
{
    int64_t timeout_ns = s->timeout_ns > INT64_MAX ? INT64_MAX
                                                   : (int64_t)s->timeout_ns;

    return store_wait_locked(s, keys, n, timeout_ns, op);
}

/*
 * PING, after VALIDATE when validate is true (the handshake torch's client
 * performs: VALIDATE has no reply, and the echoed nonce proves a live store
 * is answering). A wrong nonce breaks the connection.
 */
static ferry_status_t store_ping_roundtrip(ferry_store_t *s, bool validate,
                                           uint64_t deadline, const char *op)
{
    uint8_t msg[10], rep[4], *m = msg;
    uint32_t nonce = (uint32_t)getpid() ^ (uint32_t)ferry__now_ns();

    if (validate) {
        *m++ = FERRY__Q_VALIDATE;
        ferry__store_le32(m, FERRY__STORE_MAGIC);
        m += 4;
    }
    *m++ = FERRY__Q_PING;
    ferry__store_le32(m, nonce);
    m += 4;
    FERRY_CHECK(store_send(s, msg, (size_t)(m - msg), deadline, op));
    FERRY_CHECK(store_reply(s, rep, 4, deadline, op));
    if (ferry__load_le32(rep) != nonce) {
        store_break(s);
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "store %s: %s returned %u, not %u", s->url,
                            validate ? "handshake: ping" : "ping",
                            ferry__load_le32(rep), nonce);
    }
    return FERRY_OK;
}

/*
 * ferry's authenticated handshake (proto.h), instead of VALIDATE: the
 * server proves the secret first, then this client does. Any refusal is
 * PROTOCOL, which ends the connection attempts: retrying cannot help.
 */
static ferry_status_t store_auth(ferry_store_t *s, uint64_t deadline)
{
    uint8_t msg[1 + 4 + FERRY__STORE_NONCE], cn[FERRY__STORE_NONCE];
    uint8_t rep[FERRY__STORE_NONCE + FERRY__MAC_LEN], proof[FERRY__MAC_LEN];
    uint8_t auth[1 + FERRY__MAC_LEN], verdict = 0;
    ferry_status_t st;

    FERRY_CHECK(ferry__random(cn, sizeof(cn)));
    msg[0] = FERRY__Q_VALIDATE;
    ferry__store_le32(msg + 1, FERRY__STORE_AUTH_MAGIC);
    memcpy(msg + 5, cn, sizeof(cn));
    FERRY_CHECK(store_send(s, msg, sizeof(msg), deadline, "authentication"));
    st = store_reply(s, &verdict, 1, deadline, "authentication");
    if (st == FERRY_ERR_PEER_LOST) {
        return ferry__error(FERRY_ERR_PROTOCOL, "store %s: the server closed the "
                            "connection at authentication: it does not speak "
                            "ferry's handshake (a torch store?), and this client "
                            "has a job secret (FERRY_JOB_SECRET)", s->url);
    }
    FERRY_CHECK(st);
    if (verdict != 1) {
        store_break(s);
        return ferry__error(FERRY_ERR_PROTOCOL, "store %s: the server has no job "
                            "secret, so anyone who reaches it could read and write "
                            "the job's keys; this client has one (FERRY_JOB_SECRET) "
                            "and refuses it", s->url);
    }
    FERRY_CHECK(store_reply(s, rep, sizeof(rep), deadline, "authentication"));
    FERRY_CHECK(ferry__store_proof(&s->secret, "server", cn, rep, proof));
    if (!ferry__ct_equal(proof, rep + FERRY__STORE_NONCE, FERRY__MAC_LEN)) {
        store_break(s);
        return ferry__error(FERRY_ERR_PROTOCOL, "store %s: the server's proof does "
                            "not verify: it has another job secret than this "
                            "client", s->url);
    }
    auth[0] = FERRY__Q_AUTH;
    FERRY_CHECK(ferry__store_proof(&s->secret, "client", cn, rep, auth + 1));
    FERRY_CHECK(store_send(s, auth, sizeof(auth), deadline, "authentication"));
    st = store_reply(s, &verdict, 1, deadline, "authentication");
    if (st == FERRY_ERR_PEER_LOST || (st == FERRY_OK && verdict != 1)) {
        store_break(s);
        return ferry__error(FERRY_ERR_PROTOCOL, "store %s: the server refused this "
                            "client's proof", s->url);
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Connecting                                                               */
/* ------------------------------------------------------------------------ */

/* Splits "tcp://host:port" (host may be "[v6]") into its parts. */
ferry_status_t ferry__store_parse_url(const char *url, char *host, size_t hostcap,
                                      char *port, size_t portcap)
{
    const char *p, *colon, *hend;

    if (url == NULL || strncmp(url, "tcp://", 6) != 0)
        return ferry__error(FERRY_ERR_INVALID,
                            "store: URL '%s' does not start with tcp://",
                            url ? url : "(null)");
    p = url + 6;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (hend == NULL || hend[1] != ':')
            goto bad;
        p++;
        colon = hend + 1;
    } else {
        colon = strrchr(p, ':');
        if (colon == NULL)
            goto bad;
        hend = colon;
    }
    if (hend == p || (size_t)(hend - p) >= hostcap || colon[1] == 0)
        goto bad;
    if (strlen(colon + 1) >= portcap ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
        atol(colon + 1) > 65535)
        return ferry__error(FERRY_ERR_INVALID,
                            "store: URL '%s': port '%s' is not a number from "
                            "1 to 65535", url, colon + 1);
    /* Port 0 asks a server for any free port; a client needs the one the
     * server then chose (ferry-store prints it). */
    if (atol(colon + 1) == 0)
        return ferry__error(FERRY_ERR_INVALID,
                            "store: URL '%s': port 0 is not a port a store "
                            "listens on (a server started with port 0 picks "
                            "a free port and reports which)", url);
    memcpy(host, p, (size_t)(hend - p));
    host[hend - p] = 0;
    strcpy(port, colon + 1);
    return FERRY_OK;
bad:
    return ferry__error(FERRY_ERR_INVALID,
                        "store: URL '%s' is not tcp://host:port", url);
}

/* One attempt: connect to one address, then VALIDATE and PING. */
static ferry_status_t try_connect(ferry_store_t *s, const struct addrinfo *ai,
                                  uint64_t deadline)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    int one = 1, err = 0;
    socklen_t elen = sizeof(err);

    if (fd < 0)
        return ferry__error(FERRY_ERR_SYSTEM, "store %s: socket: %s", s->url,
                            strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            err = errno;
            close(fd);
            return ferry__error(FERRY_ERR_PEER_LOST,
                                "store %s: connect: %s", s->url,
                                strerror(err));
        }
        int w = wait_fd(s, fd, POLLOUT, deadline);

        if (w <= 0) {
            close(fd);
            return ferry__error(FERRY_ERR_TIMEOUT, "store %s: connect: %s",
                                s->url, w == 0 ? "timed out" : strerror(errno));
        }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
            close(fd);
            return ferry__error(FERRY_ERR_PEER_LOST,
                                "store %s: connect: %s", s->url,
                                strerror(err));
        }
    }
    s->fd = fd;
    if (s->secret.set) {
        FERRY_CHECK(store_auth(s, deadline));
        return store_ping_roundtrip(s, false, deadline, "handshake");
    }
    return store_ping_roundtrip(s, true, deadline, "handshake");
}

ferry_status_t ferry_store_connect(const char *url,
                                   const ferry_store_params_t *params,
                                   ferry_store_t **store_p)
{
    char host[200], port[8];
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ais = NULL;
    ferry_store_t *s;
    ferry_status_t st;
    uint64_t deadline, backoff_ns = 10000000ull;
    unsigned tries = 0;
    int rc;

    if (store_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: NULL store_p");
    FERRY_CHECK(ferry__store_parse_url(url, host, sizeof(host), port, sizeof(port)));
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "store: no memory");
    s->fd = -1;
    s->cap_ns = NO_DEADLINE;
    s->timeout_ns = params && (params->field_mask & FERRY_STORE_PARAM_TIMEOUT)
                        ? params->timeout_ns
                        : STORE_DEFAULT_TIMEOUT_NS;
    snprintf(s->url, sizeof(s->url), "%s", url);
    st = ferry__secret_init(&s->secret, params && (params->field_mask &
                                                   FERRY_STORE_PARAM_SECRET)
                                            ? (params->secret ? params->secret : "")
                                            : NULL);
    if (st < 0) {
        free(s);
        return st;
    }
    pthread_mutex_init(&s->lock, NULL);
    deadline = deadline_after(s->timeout_ns);

    rc = getaddrinfo(host, port, &hints, &ais);
    if (rc != 0) {
        st = ferry__error(FERRY_ERR_INVALID, "store %s: cannot resolve '%s': %s",
                          url, host, gai_strerror(rc));
        goto err_free;
    }
    /* The server may not be listening yet (it is often another rank that
     * starts at the same time), so refused or dropped attempts are retried
     * with a growing pause until the deadline. */
    for (;;) {
        for (struct addrinfo *ai = ais; ai; ai = ai->ai_next) {
            tries++;
            st = try_connect(s, ai, deadline);
            if (st == FERRY_OK || st == FERRY_ERR_PROTOCOL)
                goto done;
            store_break(s);
        }
        uint64_t now = ferry__now_ns();

        if (now >= deadline) {
            char last[256];

            snprintf(last, sizeof(last), "%s", ferry_last_error());
            st = ferry__error(FERRY_ERR_TIMEOUT, "%s (after %u attempts)",
                              last, tries);
            break;
        }
        uint64_t pause = backoff_ns < deadline - now ? backoff_ns
                                                     : deadline - now;
        struct timespec ts = {.tv_sec = (time_t)(pause / 1000000000ull),
                              .tv_nsec = (long)(pause % 1000000000ull)};

        nanosleep(&ts, NULL);
        backoff_ns = backoff_ns * 2 > 1000000000ull ? 1000000000ull
                                                    : backoff_ns * 2;
    }
done:
    freeaddrinfo(ais);
    if (st < 0)
        goto err_free;
    *store_p = s;
    return FERRY_OK;

err_free:
    pthread_mutex_destroy(&s->lock);
    ferry__secret_clear(&s->secret);
    free(s);
    return st;
}

void ferry__store_set_cap(ferry_store_t *store, uint64_t deadline_ns)
{
    /* Not under the lock: a call under way holds it. */
    atomic_store(&store->cap_ns, deadline_ns);
}

void ferry__store_set_timeout(ferry_store_t *store, uint64_t timeout_ns)
{
    pthread_mutex_lock(&store->lock);
    store->timeout_ns = timeout_ns;
    pthread_mutex_unlock(&store->lock);
}

void ferry_store_close(ferry_store_t *store)
{
    if (store == NULL)
        return;
    store_break(store);
    pthread_mutex_destroy(&store->lock);
    ferry__secret_clear(&store->secret);
    free(store);
}

void ferry_store_free(void *value)
{
    free(value);
}

/* ------------------------------------------------------------------------ */
/* Operations                                                               */
/* ------------------------------------------------------------------------ */

/* SET and APPEND: one message, no reply. */
static ferry_status_t store_put(ferry_store_t *store, uint8_t q,
                                const char *key, const void *value,
                                size_t len, const char *op)
{
    ferry__wbuf_t w;
    ferry_status_t st;

    if (key == NULL || (value == NULL && len > 0))
        return ferry__error(FERRY_ERR_INVALID, "store: %s: NULL key or value",
                            op);
    FERRY_CHECK(store_begin(store, op));
    req_init(&w, q, key);
    put_str(&w, value, len);
    st = store_send_req(store, &w, call_deadline(store), op);
    store_end(store);
    return st;
}

ferry_status_t ferry_store_set(ferry_store_t *store, const char *key,
                               const void *value, size_t len)
{
    return store_put(store, FERRY__Q_SET, key, value, len, "set");
}

ferry_status_t ferry_store_append(ferry_store_t *store, const char *key,
                                  const void *value, size_t len)
{
    return store_put(store, FERRY__Q_APPEND, key, value, len, "append");
}

ferry_status_t ferry_store_get(ferry_store_t *store, const char *key,
                               void **value_p, size_t *len_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;

    if (key == NULL || value_p == NULL || len_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: get: NULL argument");
    FERRY_CHECK(store_begin(store, "get"));
    /* As torch's client does: wait for the key, then fetch it. */
    st = store_await_locked(store, &key, 1, "get");
    if (st == FERRY_OK) {
        uint64_t deadline = call_deadline(store);

        req_init(&w, FERRY__Q_GET, key);
        st = store_send_req(store, &w, deadline, "get");
        if (st == FERRY_OK)
            st = store_reply_vec(store, value_p, len_p, deadline, "get");
    }
    store_end(store);
    return st;
}

ferry_status_t ferry_store_add(ferry_store_t *store, const char *key,
                               int64_t delta, int64_t *value_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    uint64_t v = 0, deadline;

    if (key == NULL || value_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: add: NULL argument");
    FERRY_CHECK(store_begin(store, "add"));
    deadline = call_deadline(store);
    req_init(&w, FERRY__Q_ADD, key);
    ferry__wbuf_u64(&w, (uint64_t)delta);
    st = store_send_req(store, &w, deadline, "add");
    if (st == FERRY_OK)
        st = store_reply_u64(store, &v, deadline, "add");
    store_end(store);
    if (st == FERRY_OK)
        *value_p = (int64_t)v;
    return st;
}

ferry_status_t ferry_store_check(ferry_store_t *store, const char *const *keys,
                                 size_t n, int *ready_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    uint64_t deadline;
    uint8_t r = 0;

    if (!keys_valid(keys, n) || ready_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: check: NULL argument");
    FERRY_CHECK(store_begin(store, "check"));
    deadline = call_deadline(store);
    req_init(&w, FERRY__Q_CHECK, NULL);
    put_keys(&w, keys, n);
    st = store_send_req(store, &w, deadline, "check");
    if (st == FERRY_OK)
        st = store_reply(store, &r, 1, deadline, "check");
    if (st == FERRY_OK && r != FERRY__CHECK_READY &&
        r != FERRY__CHECK_NOT_READY) {
        store_break(store);
        st = ferry__error(FERRY_ERR_PROTOCOL,
                          "store %s: check: unexpected reply %u", store->url,
                          r);
    }
    store_end(store);
    if (st == FERRY_OK)
        *ready_p = r == FERRY__CHECK_READY;
    return st;
}

ferry_status_t ferry_store_wait(ferry_store_t *store, const char *const *keys,
                                size_t n, int64_t timeout_ns)
{
    ferry_status_t st;

    if (!keys_valid(keys, n))
        return ferry__error(FERRY_ERR_INVALID, "store: wait: NULL key");
    FERRY_CHECK(store_begin(store, "wait"));
    st = store_wait_locked(store, keys, n, timeout_ns, "wait");
    store_end(store);
    return st;
}

ferry_status_t ferry_store_compare_set(ferry_store_t *store, const char *key,
                                       const void *expected,
                                       size_t expected_len,
                                       const void *desired,
                                       size_t desired_len, void **value_p,
                                       size_t *len_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    uint64_t deadline;

    if (key == NULL || (expected == NULL && expected_len > 0) ||
        (desired == NULL && desired_len > 0) || value_p == NULL ||
        len_p == NULL)
        return ferry__error(FERRY_ERR_INVALID,
                            "store: compare_set: NULL argument");
    FERRY_CHECK(store_begin(store, "compare_set"));
    deadline = call_deadline(store);
    req_init(&w, FERRY__Q_COMPARE_SET, key);
    put_str(&w, expected, expected_len);
    put_str(&w, desired, desired_len);
    st = store_send_req(store, &w, deadline, "compare_set");
    if (st == FERRY_OK)
        st = store_reply_vec(store, value_p, len_p, deadline, "compare_set");
    store_end(store);
    return st;
}

ferry_status_t ferry_store_delete_key(ferry_store_t *store, const char *key,
                                      int *deleted_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    uint64_t v = 0, deadline;

    if (key == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: delete_key: NULL key");
    FERRY_CHECK(store_begin(store, "delete_key"));
    deadline = call_deadline(store);
    req_init(&w, FERRY__Q_DELETE_KEY, key);
    st = store_send_req(store, &w, deadline, "delete_key");
    if (st == FERRY_OK)
        st = store_reply_u64(store, &v, deadline, "delete_key");
    store_end(store);
    if (st == FERRY_OK && deleted_p != NULL)
        *deleted_p = v != 0;
    return st;
}

ferry_status_t ferry_store_num_keys(ferry_store_t *store, int64_t *num_p)
{
    ferry_status_t st;
    uint64_t v = 0, deadline;
    uint8_t q = FERRY__Q_GETNUMKEYS;

    if (num_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "store: num_keys: NULL num_p");
    FERRY_CHECK(store_begin(store, "num_keys"));
    deadline = call_deadline(store);
    st = store_send(store, &q, 1, deadline, "num_keys");
    if (st == FERRY_OK)
        st = store_reply_u64(store, &v, deadline, "num_keys");
    store_end(store);
    if (st == FERRY_OK)
        *num_p = (int64_t)v;
    return st;
}

ferry_status_t ferry_store_multi_get(ferry_store_t *store,
                                     const char *const *keys, size_t n,
                                     void **values_p, size_t *lens_p)
{
    ferry__wbuf_t w;
    ferry_status_t st;
    void **vals;
    size_t *lens, got = 0;

    if (!keys_valid(keys, n) || (n > 0 && (values_p == NULL || lens_p == NULL)))
        return ferry__error(FERRY_ERR_INVALID,
                            "store: multi_get: NULL argument");
    if (n == 0)
        return FERRY_OK;
    vals = calloc(n, sizeof(*vals));
    lens = calloc(n, sizeof(*lens));
    if (vals == NULL || lens == NULL) {
        free(vals);
        free(lens);
        return ferry__error(FERRY_ERR_NO_MEMORY, "store: multi_get: no memory");
    }
    st = store_begin(store, "multi_get");
    if (st < 0)
        goto out_free;
    st = store_await_locked(store, keys, n, "multi_get");
    if (st == FERRY_OK) {
        uint64_t deadline = call_deadline(store);

        req_init(&w, FERRY__Q_MULTI_GET, NULL);
        put_keys(&w, keys, n);
        st = store_send_req(store, &w, deadline, "multi_get");
        for (; st == FERRY_OK && got < n; got++)
            st = store_reply_vec(store, &vals[got], &lens[got], deadline,
                                 "multi_get");
    }
    store_end(store);
    if (st == FERRY_OK) {
        memcpy(values_p, vals, n * sizeof(*vals));
        memcpy(lens_p, lens, n * sizeof(*lens));
    } else {
        for (size_t i = 0; i < n; i++)
            free(vals[i]);
    }
out_free:
    free(vals);
    free(lens);
    return st;
}

ferry_status_t ferry_store_multi_set(ferry_store_t *store,
                                     const char *const *keys,
                                     const void *const *values,
                                     const size_t *lens, size_t n)
{
    ferry__wbuf_t w;
    ferry_status_t st;

    if (!keys_valid(keys, n) || (n > 0 && (values == NULL || lens == NULL)))
        return ferry__error(FERRY_ERR_INVALID,
                            "store: multi_set: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (values[i] == NULL && lens[i] > 0)
            return ferry__error(FERRY_ERR_INVALID,
                                "store: multi_set: value %zu is NULL", i);
    FERRY_CHECK(store_begin(store, "multi_set"));
    req_init(&w, FERRY__Q_MULTI_SET, NULL);
    ferry__wbuf_u64(&w, n);
    for (size_t i = 0; i < n; i++) {
        put_str(&w, keys[i], strlen(keys[i]));
        put_str(&w, values[i], lens[i]);
    }
    st = store_send_req(store, &w, call_deadline(store),
                        "multi_set");
    store_end(store);
    return st;
}

ferry_status_t ferry_store_ping(ferry_store_t *store)
{
    ferry_status_t st;

    FERRY_CHECK(store_begin(store, "ping"));
    st = store_ping_roundtrip(store, false,
                              call_deadline(store), "ping");
    store_end(store);
    return st;
}
