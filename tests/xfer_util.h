/*
 * Helpers shared by the transfer tests (test_xfer_*.c): random descriptor
 * layouts that both processes of a multi-process test can recompute from a
 * seed, the check that a destination buffer holds exactly the data the
 * descriptors put there and the guard pattern everywhere else, and the
 * plumbing for a second process (fork + exec of this same binary, a
 * socketpair for control messages, reaping with a deadline), written so that
 * a hung or dead peer fails the test instead of hanging it.
 */
#ifndef FERRY_TEST_XFER_UTIL_H
#define FERRY_TEST_XFER_UTIL_H

#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Iteration numbers at or above this one mark guard bytes; data iterations
 * stay below it, so a guard byte never equals the data pattern by design
 * (only by a 1-in-256 chance per byte, which a run of bytes defeats). */
#define XU_GUARD_ITER 0xF000000000000000ull

static inline uint64_t xu_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double xu_now_s(void)
{
    return (double)xu_now_ns() * 1e-9;
}

/* The calling thread's CPU time (user + system), in seconds. */
static inline double xu_thread_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static inline double xu_ms_since(uint64_t t0)
{
    return (double)(xu_now_ns() - t0) / 1e6;
}

/* The test's seed: FERRY_TEST_SEED (decimal or 0x hex) or the default, so
 * that a failure seen once can be replayed exactly. */
static inline uint64_t xu_seed(uint64_t dflt)
{
    const char *s = getenv("FERRY_TEST_SEED");

    return (s && *s) ? strtoull(s, NULL, 0) : dflt;
}

static inline long xu_env_long(const char *name, long dflt)
{
    const char *s = getenv(name);

    return (s && *s) ? strtol(s, NULL, 0) : dflt;
}

static inline void *xu_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu x %zu)\n", n, size);
        exit(1);
    }
    return p;
}

/* Page-aligned so that the buffer's own alignment is not what the random
 * offsets test; the offsets themselves are byte-granular. */
static inline uint8_t *xu_alloc_buf(size_t len)
{
    void *p = NULL;

    if (posix_memalign(&p, 4096, len ? len : 1) != 0) {
        fprintf(stderr, "posix_memalign(%zu) failed\n", len);
        exit(1);
    }
    return p;
}

/* ------------------------------------------------------------------------ */
/* Layouts                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Places n ranges (lengths len[idx[k]] for k < m) at random, non-overlapping
 * offsets inside one buffer of cap bytes, writing off[idx[k]]. The ranges
 * fill a window of the buffer (their total plus slack spread over the gaps)
 * at a random position; the gaps are random, mostly at least one byte so a
 * guard byte separates neighbours, sometimes zero so adjacent descriptors
 * are covered too. The address order is a random permutation of the
 * descriptor order (written to order[0..m) when order is not NULL), because
 * a library that silently relied on sorted descriptors would otherwise pass.
 * *lo_p and *hi_p get the window. Returns 0, or -1 if the ranges cannot fit.
 */
static inline int xu_place(test_rng_t *rng, const uint64_t *len,
                           const size_t *idx, size_t m, uint64_t cap,
                           uint64_t *off, size_t *order, uint64_t *lo_p,
                           uint64_t *hi_p)
{
    uint64_t total = 0, slack, extra, wsum = 0, base, cur;
    size_t *perm = xu_xcalloc(m, sizeof(*perm));
    uint32_t *w = xu_xcalloc(m + 1, sizeof(*w));

    for (size_t k = 0; k < m; k++)
        total += len[idx[k]];
    if (total + m + 1 > cap) {
        free(perm);
        free(w);
        return -1;
    }
    /* Slack of a quarter of the data (at least two bytes per gap), capped by
     * what the buffer has left. */
    slack = total / 4;
    if (slack < 2 * (uint64_t)(m + 1))
        slack = 2 * (uint64_t)(m + 1);
    if (slack > cap - total)
        slack = cap - total;
    for (size_t k = 0; k < m; k++)
        perm[k] = idx[k];
    for (size_t k = m; k > 1; k--) { /* Fisher-Yates */
        size_t j = (size_t)test_rand_range(rng, 0, k - 1), t = perm[k - 1];

        perm[k - 1] = perm[j];
        perm[j] = t;
    }
    /* Gap k precedes the k-th range in address order (gap m follows the
     * last). One gap in eight is zero; the others get one byte plus a
     * random share of the slack left over. */
    for (size_t k = 0; k <= m; k++) {
        w[k] = (test_rand(rng) % 8 == 0) ? 0 : (uint32_t)(1 + test_rand(rng) % 65535);
        wsum += w[k];
    }
    extra = slack;
    for (size_t k = 0; k <= m; k++)
        if (w[k])
            extra--;
    base = test_rand_range(rng, 0, cap - total - slack);
    *lo_p = base;
    cur = base;
    for (size_t k = 0; k <= m; k++) {
        uint64_t gap = 0;

        if (w[k] && wsum)
            gap = 1 + (uint64_t)((unsigned __int128)extra * w[k] / wsum);
        cur += gap;
        if (k == m)
            break;
        off[perm[k]] = cur;
        cur += len[perm[k]];
    }
    /* The shares round down, so the window ends at or before its budget. */
    *hi_p = cur;
    if (order)
        memcpy(order, perm, m * sizeof(*perm));
    free(perm);
    free(w);
    return 0;
}

/*
 * One side's view of where a request's data lives: for descriptor i,
 * off[i] within the buffer; order lists descriptors by address, for walking
 * the gaps between them.
 */
typedef struct xu_side {
    uint64_t *off;
    size_t *order;
    uint64_t lo, hi; /* the window the ranges occupy */
} xu_side_t;

/*
 * A request's layout: lengths, and each descriptor's pattern base (stream
 * offset: the sum of the lengths before it), so that data that lands in the
 * wrong descriptor, or at the wrong place inside one, mismatches.
 */
typedef struct xu_layout {
    size_t n;
    uint64_t *len;
    uint64_t *stream;
    uint64_t total;
    xu_side_t local, remote;
} xu_layout_t;

static inline void xu_side_alloc(xu_side_t *s, size_t n)
{
    s->off = xu_xcalloc(n, sizeof(*s->off));
    s->order = xu_xcalloc(n, sizeof(*s->order));
    s->lo = s->hi = 0;
}

static inline void xu_layout_free(xu_layout_t *l)
{
    free(l->len);
    free(l->stream);
    free(l->local.off);
    free(l->local.order);
    free(l->remote.off);
    free(l->remote.order);
    memset(l, 0, sizeof(*l));
}

/*
 * Builds a layout of n descriptors with lengths uniform in [1, max_len]
 * (and, for n >= 3, one of exactly 1 byte and one of exactly max_len, so the
 * edges are always covered), placed in a local buffer of local_cap bytes
 * and a remote one of remote_cap bytes. Deterministic in (rng state), so a
 * peer that seeds the same generator computes the same layout.
 */
static inline int xu_layout_make(xu_layout_t *l, test_rng_t *rng, size_t n,
                                 uint64_t max_len, uint64_t local_cap,
                                 uint64_t remote_cap)
{
    size_t *idx = xu_xcalloc(n, sizeof(*idx));
    int rc;

    memset(l, 0, sizeof(*l));
    l->n = n;
    l->len = xu_xcalloc(n, sizeof(*l->len));
    l->stream = xu_xcalloc(n, sizeof(*l->stream));
    xu_side_alloc(&l->local, n);
    xu_side_alloc(&l->remote, n);
    for (size_t i = 0; i < n; i++) {
        l->len[i] = test_rand_range(rng, 1, max_len);
        idx[i] = i;
    }
    if (n >= 3) {
        size_t one = (size_t)test_rand_range(rng, 0, n - 1);
        size_t big = (one + 1 + (size_t)test_rand_range(rng, 0, n - 2)) % n;

        l->len[one] = 1;
        l->len[big] = max_len;
    }
    for (size_t i = 0; i < n; i++) {
        l->stream[i] = l->total;
        l->total += l->len[i];
    }
    rc = xu_place(rng, l->len, idx, n, local_cap, l->local.off, l->local.order,
                  &l->local.lo, &l->local.hi);
    if (rc == 0)
        rc = xu_place(rng, l->len, idx, n, remote_cap, l->remote.off,
                      l->remote.order, &l->remote.lo, &l->remote.hi);
    free(idx);
    if (rc != 0)
        xu_layout_free(l);
    return rc;
}

/* A digest of a layout, so two processes can confirm they computed the
 * same one before a mismatch in it is blamed on the library. */
static inline uint64_t xu_layout_hash(const xu_layout_t *l)
{
    test_rng_t h = {l->n};

    for (size_t i = 0; i < l->n; i++) {
        h.s ^= l->len[i] * 31 + l->local.off[i];
        (void)test_rand(&h);
        h.s ^= l->remote.off[i];
        (void)test_rand(&h);
    }
    return test_rand(&h);
}

/* Fills the ranges of one side with the data pattern of iteration iter. */
static inline void xu_fill_ranges(uint8_t *buf, const xu_layout_t *l,
                                  const xu_side_t *s, uint64_t seed,
                                  uint64_t iter)
{
    for (size_t i = 0; i < l->n; i++)
        test_fill_fast(buf + s->off[i], l->len[i], seed, iter, l->stream[i]);
}

/* Guard bytes depend on the buffer offset only (and on which case set
 * them), so any stray write anywhere shows. */
static inline void xu_fill_guard(uint8_t *buf, uint64_t lo, uint64_t hi,
                                 uint64_t seed, uint64_t guard_iter)
{
    test_fill_fast(buf + lo, hi - lo, seed, guard_iter, lo);
}

/*
 * Checks the part [lo, hi) of a destination buffer: each descriptor's range
 * must hold the pattern of iteration iter, every byte between and around
 * the ranges the guard pattern. The ranges must lie inside [lo, hi).
 * Mismatches are printed after what (which names the case and the
 * iteration) with the descriptor index and the byte offset (at most a few,
 * then a count). Returns the
 * number of bad ranges or gaps (0 when all is well).
 */
static inline size_t xu_check_dest(const uint8_t *buf, const xu_layout_t *l,
                                   const xu_side_t *s, uint64_t lo,
                                   uint64_t hi, uint64_t seed, uint64_t iter,
                                   uint64_t guard_iter, const char *what)
{
    size_t bad = 0;
    uint64_t cur = lo;

    for (size_t k = 0; k <= l->n; k++) {
        uint64_t gap_end = (k < l->n) ? s->off[s->order[k]] : hi;
        uint64_t r;

        /* The gap before the k-th range in address order. */
        if (gap_end > cur) {
            r = test_verify_fast(buf + cur, gap_end - cur, seed, guard_iter, cur);
            if (r != UINT64_MAX) {
                if (bad++ < 8)
                    fprintf(stderr,
                            "%s: guard byte changed at buffer offset %" PRIu64
                            " (gap after descriptor %lld, before descriptor %lld; -1 = "
                            "none): got 0x%02x, guard 0x%02x\n",
                            what, cur + r,
                            k ? (long long)s->order[k - 1] : -1LL,
                            k < l->n ? (long long)s->order[k] : -1LL,
                            buf[cur + r], test_pattern(seed, guard_iter, cur + r));
            }
        }
        if (k == l->n)
            break;
        {
            size_t i = s->order[k];

            r = test_verify_fast(buf + s->off[i], l->len[i], seed, iter, l->stream[i]);
            if (r != UINT64_MAX) {
                uint8_t got = buf[s->off[i] + r];

                if (bad++ < 8)
                    fprintf(stderr,
                            "%s: descriptor %zu (len %" PRIu64 ", buffer offset %"
                            PRIu64 "): byte %" PRIu64 " (buffer offset %" PRIu64
                            ") is 0x%02x, expected 0x%02x of pattern %" PRIu64 "%s\n",
                            what, i, l->len[i], s->off[i], r, s->off[i] + r,
                            got, test_pattern(seed, iter, l->stream[i] + r), iter,
                            got == test_pattern(seed, iter - 1, l->stream[i] + r)
                                ? " (the previous iteration's byte: stale data?)"
                                : "");
            }
            cur = s->off[i] + l->len[i];
        }
    }
    if (bad > 8)
        fprintf(stderr, "%s: %zu bad ranges/gaps in all\n", what, bad);
    return bad;
}

/* ------------------------------------------------------------------------ */
/* A second process and its control socket                                  */
/* ------------------------------------------------------------------------ */

/* Every control message has this fixed form; blobs follow a message that
 * gives their length. */
typedef struct xu_msg {
    uint32_t type;
    uint32_t arg; /* case index, verdict, ... */
    uint64_t iter;
    uint64_t a, b;
} xu_msg_t;

/*
 * Starts this same binary again as a separate process, with argv
 * {argv0, role, "<fd>", extra...}: fork, then exec of /proc/self/exe, so the
 * child starts UCX in a fresh image instead of inheriting the parent's. The
 * child dies with its parent (PR_SET_PDEATHSIG), so a killed test leaves no
 * orphan behind. Returns the parent's end of the socketpair, or -1.
 */
extern char **environ;

/* The environment of a spawned target, built before fork (the child may not
 * allocate): this one, with FERRY_TEST_DEVICE set to FERRY_TEST_TARGET_DEVICE
 * (tests/mem_util.h); NULL, to inherit it unchanged, when that is unset. */
static inline char **xu_target_env(void)
{
    const char *t = getenv("FERRY_TEST_TARGET_DEVICE");
    size_t n = 0, k = 0;
    char **e;

    if (t == NULL)
        return NULL;
    while (environ[n] != NULL)
        n++;
    e = calloc(n + 2, sizeof(*e));
    if (e == NULL || asprintf(&e[0], "FERRY_TEST_DEVICE=%s", t) < 0) {
        free(e);
        return NULL;
    }
    k = 1;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "FERRY_TEST_DEVICE=", 18) != 0)
            e[k++] = environ[i];
    e[k] = NULL;
    return e;
}

static inline void xu_env_free(char **env)
{
    if (env != NULL) {
        free(env[0]);
        free(env);
    }
}

static inline int xu_spawn(const char *argv0, const char *role,
                           const char *extra1, const char *extra2,
                           pid_t *pid_p)
{
    int sv[2];
    pid_t parent = getpid(), pid;
    char **env = xu_target_env();

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        perror("socketpair");
        xu_env_free(env);
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        xu_env_free(env);
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        char fdstr[16];

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1); /* the parent died before the line above */
        close(sv[0]);
        /* The child keeps its end across exec; every other ferry fd has
         * CLOEXEC or does not exist yet. */
        fcntl(sv[1], F_SETFD, 0);
        snprintf(fdstr, sizeof(fdstr), "%d", sv[1]);
        {
            char *args[] = {(char *)argv0, (char *)role, fdstr, (char *)extra1,
                            (char *)extra2, NULL};

            execve("/proc/self/exe", args, env ? env : environ);
        }
        perror("execve /proc/self/exe");
        _exit(127);
    }
    xu_env_free(env);
    close(sv[1]);
    *pid_p = pid;
    return sv[0];
}

static inline int xu_send(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;

    while (len) {
        ssize_t k = send(fd, b, len, MSG_NOSIGNAL);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            fprintf(stderr, "[%d] control socket send: %s\n", (int)getpid(),
                    strerror(errno));
            return -1;
        }
        b += k;
        len -= (size_t)k;
    }
    return 0;
}

static inline int xu_send_msg(int fd, uint32_t type, uint32_t arg,
                              uint64_t iter, uint64_t a, uint64_t b)
{
    xu_msg_t m = {type, arg, iter, a, b};

    return xu_send(fd, &m, sizeof(m));
}

/*
 * Receives exactly len bytes within timeout_ms. While it waits it keeps
 * driving agent (when not NULL), because a target that only waited on its
 * socket would starve a transport that needs the target's help for the
 * peer's one-sided operations (UCX 1.13 emulates RMA over active messages
 * on shared memory and TCP). Returns 0, or -1 on timeout, EOF or
 * error (printed).
 */
static inline int xu_recv(int fd, void *p, size_t len, int timeout_ms,
                          ferry_agent_t *agent)
{
    uint8_t *b = p;
    uint64_t deadline = xu_now_ns() + (uint64_t)timeout_ms * 1000000ull;

    while (len) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int r;
        ssize_t k;

        if (agent)
            ferry_agent_progress(agent);
        if (xu_now_ns() > deadline) {
            fprintf(stderr, "[%d] control socket: no message within %d ms\n",
                    (int)getpid(), timeout_ms);
            return -1;
        }
        /* A target that drives its agent polls without sleeping (its
         * transport may need it for every operation of the peer's) but
         * yields, so that on a small machine the initiator still runs. */
        r = poll(&pfd, 1, agent ? 0 : 100);
        if (agent && r == 0)
            sched_yield();
        if (r < 0 && errno != EINTR) {
            perror("poll");
            return -1;
        }
        if (r <= 0)
            continue;
        k = recv(fd, b, len, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0) {
            fprintf(stderr, "[%d] control socket: %s\n", (int)getpid(),
                    k == 0 ? "peer closed it" : strerror(errno));
            return -1;
        }
        b += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Posts x and, if it is under way, waits for it up to timeout_ns; returns
 * the outcome (FERRY_ERR_TIMEOUT if it is still in flight). */
static inline ferry_status_t xu_post_wait(ferry_xfer_t *x, int64_t timeout_ns)
{
    ferry_status_t st = ferry_xfer_post(x);

    if (st == FERRY_IN_PROGRESS)
        st = ferry_xfer_wait(x, timeout_ns);
    return st;
}

/* Sends (out) or receives exactly n bytes, ending the process (exit 2) on
 * failure or after timeout_ms without them: for control messages whose loss
 * leaves nothing sensible to do. */
static inline void xu_io(int fd, void *p, size_t n, int out, int timeout_ms)
{
    if ((out ? xu_send(fd, p, n) : xu_recv(fd, p, n, timeout_ms, NULL)) != 0)
        exit(2);
}

/* Receives one message and checks its type; prints what came instead. */
static inline int xu_recv_msg(int fd, xu_msg_t *m, uint32_t want_type,
                              int timeout_ms, ferry_agent_t *agent)
{
    if (xu_recv(fd, m, sizeof(*m), timeout_ms, agent) != 0)
        return -1;
    if (want_type != 0 && m->type != want_type) {
        fprintf(stderr, "[%d] control socket: message type %u, wanted %u\n",
                (int)getpid(), m->type, want_type);
        return -1;
    }
    return 0;
}

/* Blobs larger than this are taken for a corrupt length, not received. */
#define XU_MAX_BLOB (64u << 20)

/*
 * A target's greeting: a message of the given type whose iter is the length
 * of agent's metadata blob (arg, a and b are the caller's: typically its
 * buffer's address and size), then the blob. Returns 0, or -1 if the socket
 * failed (printed).
 */
static inline int xu_send_blob(int fd, ferry_agent_t *agent, uint32_t type,
                               uint32_t arg, uint64_t a, uint64_t b)
{
    void *blob;
    size_t len;
    int rc;

    ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &len));
    rc = xu_send_msg(fd, type, arg, len, a, b) != 0 || xu_send(fd, blob, len) != 0 ? -1 : 0;
    ferry_md_free(blob);
    return rc;
}

/*
 * The other side of xu_send_blob(): the message goes to *m and the blob
 * (m->iter bytes) is returned, for the caller to load and free(). NULL (and
 * the reason printed) if either does not come within timeout_ms each, the
 * type is wrong, or the length is 0 or over XU_MAX_BLOB.
 */
static inline void *xu_recv_blob(int fd, xu_msg_t *m, uint32_t type, int timeout_ms)
{
    void *blob;

    if (xu_recv_msg(fd, m, type, timeout_ms, NULL) != 0)
        return NULL;
    if (m->iter == 0 || m->iter > XU_MAX_BLOB) {
        fprintf(stderr, "[%d] control socket: blob length %" PRIu64 "\n", (int)getpid(),
                m->iter);
        return NULL;
    }
    blob = xu_xcalloc(1, (size_t)m->iter);
    if (xu_recv(fd, blob, (size_t)m->iter, timeout_ms, NULL) != 0) {
        free(blob);
        return NULL;
    }
    return blob;
}

/* Stops a child (SIGSTOP) and returns once it has stopped: signals arrive
 * asynchronously, and a test that goes on before would race the child. */
static inline void xu_stop_child(pid_t pid)
{
    int ws;

    kill(pid, SIGSTOP);
    ASSERT_TRUE(waitpid(pid, &ws, WUNTRACED) == pid && WIFSTOPPED(ws));
}

/*
 * Waits up to timeout_ms for a child to exit; kills it (SIGKILL) if it does
 * not, so no test leaves a process behind. Returns the wait status, or -1.
 */
static inline int xu_reap(pid_t pid, int timeout_ms)
{
    uint64_t deadline = xu_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int status = 0;

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if (xu_now_ns() > deadline) {
            fprintf(stderr, "child %d did not exit within %d ms; killing it\n",
                    (int)pid, timeout_ms);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(1000);
    }
}

#endif
