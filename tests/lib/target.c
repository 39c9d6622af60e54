/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The initiator's side of the serving target (target.h): starting it with
 * its options on the command line, its greeting, and one function per
 * command, each waiting for the answer with the target's deadline. The
 * target program's path comes from the build (FERRY_TEST_TARGET_PATH).
 */
#include "target.h"

#include "proto.h"

#include <pthread.h>

#ifndef FERRY_TEST_TARGET_PATH
#error "FERRY_TEST_TARGET_PATH must name the test_target program"
#endif

int xt_start(xt_target_t *t, const xt_opts_t *o)
{
    /* name, thread, drive, seed, and one per buffer. */
    char opt[4 + XT_MAX_BUF][96];
    char *args[4 + XT_MAX_BUF + 1];
    unsigned n = 0;

    memset(t, 0, sizeof(*t));
    t->fd = -1;
    t->timeout_ms = 60000;
    if (o->nbuf == 0 || o->nbuf > XT_MAX_BUF) {
        fprintf(stderr, "xt_start: %u buffers (1..%d)\n", o->nbuf, XT_MAX_BUF);
        return -1;
    }
    snprintf(opt[n++], sizeof(opt[0]), "name=%s", o->name ? o->name : "target");
    snprintf(opt[n++], sizeof(opt[0]), "thread=%d", o->progress_thread);
    snprintf(opt[n++], sizeof(opt[0]), "drive=%d", o->drive);
    snprintf(opt[n++], sizeof(opt[0]), "seed=%" PRIu64, o->seed);
    for (unsigned i = 0; i < o->nbuf; i++)
        snprintf(opt[n++], sizeof(opt[0]), "buf=%s:%" PRIu64 ":%" PRIu64 ":%s",
                 xm_name(o->buf[i].kind), o->buf[i].cap,
                 o->buf[i].reg ? o->buf[i].reg : o->buf[i].cap,
                 o->buf[i].ferry_alloc ? "ferry" : "own");
    for (unsigned i = 0; i < n; i++)
        args[i] = opt[i];
    args[n] = NULL;
    t->fd = xu_spawn_argv(FERRY_TEST_TARGET_PATH, "test_target", "serve", args, &t->pid);
    return t->fd < 0 ? -1 : 0;
}

int xt_connect(xt_target_t *t, ferry_agent_t *agent, ferry_peer_t **peer_p)
{
    xu_msg_t m;

    free(t->blob);
    t->blob = xu_recv_blob(t->fd, &m, XT_HELLO, t->timeout_ms);
    if (t->blob == NULL)
        return -1;
    t->blob_len = (size_t)m.iter;
    if (m.arg == 0 || m.arg > XT_MAX_BUF) {
        fprintf(stderr, "xt_connect: the target reports %u buffers\n", m.arg);
        return -1;
    }
    t->nbuf = m.arg;
    for (unsigned i = 0; i < t->nbuf; i++) {
        if (xu_recv_msg(t->fd, &m, XT_BUF, t->timeout_ms, NULL) != 0)
            return -1;
        t->buf[i] = (xt_buf_t){(xm_kind_t)m.arg, m.a, m.iter, m.b};
    }
    return xt_load(t, agent, peer_p);
}

int xt_load(xt_target_t *t, ferry_agent_t *agent, ferry_peer_t **peer_p)
{
    ferry_status_t st;

    if (t->blob == NULL)
        return -1;
    st = ferry_peer_load(agent, t->blob, t->blob_len, peer_p);
    EXPECT_ST(FERRY_OK, st);
    return st == FERRY_OK ? 0 : -1;
}

/* Sends a command (and its payload) and waits for the answer; returns the
 * answer's a (the bad count of a check), or -1. */
static long xt_call(xt_target_t *t, xt_cmd_t *c, const void *payload, size_t len)
{
    xu_msg_t m;

    if (xu_send(t->fd, c, sizeof(*c)) != 0 || (len && xu_send(t->fd, payload, len) != 0) ||
        xu_recv_msg(t->fd, &m, c->op, t->timeout_ms, NULL) != 0)
        return -1;
    if (m.arg != 1 || m.iter != c->iter) {
        fprintf(stderr, "target refused command %u on buffer %u (details above)\n", c->op,
                c->buf);
        return -1;
    }
    return (long)m.a;
}

int xt_pattern(xt_target_t *t, unsigned buf, uint64_t lo, uint64_t hi, uint64_t iter)
{
    xt_cmd_t c = {.op = XT_PATTERN, .buf = buf, .iter = iter, .lo = lo, .hi = hi};

    return xt_call(t, &c, NULL, 0) < 0 ? -1 : 0;
}

int xt_layout(xt_target_t *t, unsigned buf, const xu_layout_t *l, const xu_side_t *s)
{
    xt_cmd_t c = {.op = XT_LAYOUT, .buf = buf, .lo = s->lo, .hi = s->hi, .n = l->n};
    uint64_t *r = xu_xcalloc(3 * l->n, sizeof(*r));
    long rc;

    for (size_t i = 0; i < l->n; i++) {
        r[3 * i] = s->off[i];
        r[3 * i + 1] = l->len[i];
        r[3 * i + 2] = l->stream[i];
    }
    rc = xt_call(t, &c, r, 3 * l->n * sizeof(*r));
    free(r);
    return rc < 0 ? -1 : 0;
}

int xt_range(xt_target_t *t, unsigned buf, uint64_t off, uint64_t len, uint64_t base)
{
    xt_cmd_t c = {.op = XT_LAYOUT, .buf = buf, .lo = off, .hi = off + len, .n = 1};
    uint64_t r[3] = {off, len, base};

    return xt_call(t, &c, r, sizeof(r)) < 0 ? -1 : 0;
}

int xt_fill(xt_target_t *t, unsigned buf, uint64_t iter)
{
    xt_cmd_t c = {.op = XT_FILL, .buf = buf, .iter = iter};

    return xt_call(t, &c, NULL, 0) < 0 ? -1 : 0;
}

long xt_check(xt_target_t *t, unsigned buf, uint64_t lo, uint64_t hi, uint64_t iter,
              uint64_t guard, const char *what)
{
    xt_cmd_t c = {.op = XT_CHECK, .buf = buf, .iter = iter, .guard = guard,
                  .lo = lo, .hi = hi};

    snprintf(c.what, sizeof(c.what), "%s", what ? what : "target");
    return xt_call(t, &c, NULL, 0);
}

int xt_drive(xt_target_t *t, int on)
{
    xt_cmd_t c = {.op = XT_DRIVE, .iter = (uint64_t)(on != 0)};

    return xt_call(t, &c, NULL, 0) < 0 ? -1 : 0;
}

long xt_settle(xt_target_t *t, int limit_ms, int fd)
{
    xt_cmd_t c = {.op = XT_SETTLE, .iter = (uint64_t)limit_ms, .guard = fd != 0};

    return xt_call(t, &c, NULL, 0);
}

int xt_notif_begin(xt_target_t *t, unsigned buf, uint64_t count, unsigned flags,
                   const void *blob, size_t len)
{
    xt_cmd_t c = {.op = XT_NOTIF, .buf = buf, .iter = count, .guard = flags,
                  .n = blob != NULL ? len : 0};

    xu_msg_t m;

    if (xu_send(t->fd, &c, sizeof(c)) != 0 || (c.n && xu_send(t->fd, blob, len) != 0))
        return -1;
    /* Messages sent before the target loaded the blob would name no peer. */
    if (c.n && (xu_recv_msg(t->fd, &m, XT_NOTIF, t->timeout_ms, NULL) != 0 || m.arg != 2)) {
        fprintf(stderr, "xt_notif_begin: the target did not load the blob\n");
        return -1;
    }
    return 0;
}

int xt_notif_ack(ferry_agent_t *agent, uint64_t seq)
{
    ferry_notif_t *n = NULL;
    size_t got = 0;
    uint64_t v = UINT64_MAX;

    EXPECT_ST(FERRY_OK, ferry_notif_wait(agent, 20000000000ll));
    EXPECT_ST(FERRY_OK, ferry_notif_drain(agent, &n, 1, &got));
    if (got != 1) {
        TEST_FAIL_AT_("no acknowledgement of message %" PRIu64, seq);
        return -1;
    }
    if (n->len == sizeof(v))
        memcpy(&v, n->msg, sizeof(v));
    EXPECT_EQ(seq, v);
    ferry_notif_free(n);
    return v == seq ? 0 : -1;
}

long xt_notif_end(xt_target_t *t, ferry_agent_t *agent)
{
    xu_msg_t m;

    if (xu_recv_msg(t->fd, &m, XT_NOTIF, t->timeout_ms, agent) != 0)
        return -1;
    if (m.arg != 1) {
        fprintf(stderr, "target refused to serve notifications (details above)\n");
        return -1;
    }
    return (long)m.a;
}

/* Forgets a target that has been reaped (or never started). */
static void xt_close(xt_target_t *t)
{
    t->pid = 0;
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    free(t->blob);
    t->blob = NULL;
}

int xt_live_attach(xt_live_t *l, ferry_agent_t *agent)
{
    uint64_t cap;
    ferry_desc_t d;

    l->agent = agent;
    if (xt_connect(&l->t, agent, &l->peer) != 0)
        return -1;
    cap = l->t.buf[0].cap; /* known once connected */
    l->lb = xu_alloc_buf(cap);
    l->shadow = xu_alloc_buf(cap);
    memset(l->shadow, 0, cap);
    d = (ferry_desc_t){(uintptr_t)l->lb, cap, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &l->mem));
    return 0;
}

double xt_live_window(xt_live_t *l, uint64_t window_ns, int *count)
{
    uint64_t cap = l->t.buf[0].cap, end = xu_now_ns() + window_ns;
    double worst = 0;

    *count = 0;
    while (xu_now_ns() < end) {
        uint64_t len = test_rand_range(&l->rng, 1, 16384);
        uint64_t loff = test_rand_range(&l->rng, 0, cap - len);
        uint64_t roff = test_rand_range(&l->rng, 0, cap - len);
        ferry_desc_t ld = {(uintptr_t)l->lb + loff, len, FERRY_MEM_HOST, 0};
        ferry_desc_t rd = {l->t.buf[0].addr + roff, len, FERRY_MEM_HOST, 0};
        ferry_xfer_t *x;
        uint64_t t0 = xu_now_ns();
        double ms;

        test_rand_bytes(&l->rng, l->lb + loff, len);
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(l->agent, FERRY_OP_WRITE, &ld, 1, l->peer,
                                               &rd, 1, NULL, &x));
        ASSERT_ST(FERRY_OK, xu_post_wait(x, 60000000000ll));
        ferry_xfer_release(x);
        memcpy(l->shadow + roff, l->lb + loff, len);
        ms = xu_ms_since(t0);
        worst = ms > worst ? ms : worst;
        (*count)++;
    }
    return worst;
}

void xt_live_beside(xt_live_t *l, pid_t stopped, void *(*fn)(void *), void *arg,
                    uint64_t window_ns, xt_live_windows_t *w)
{
    pthread_t t;

    w->ref = xt_live_window(l, window_ns, &w->nref);
    xu_stop_child(stopped);
    ASSERT_TRUE(pthread_create(&t, NULL, fn, arg) == 0);
    w->during = xt_live_window(l, window_ns, &w->nduring);
    pthread_join(t, NULL);
}

int xt_live_end(xt_live_t *l)
{
    uint64_t cap = l->t.buf[0].cap, bad = UINT64_MAX;
    uint8_t *back = xu_alloc_buf(cap);
    ferry_desc_t bd = {(uintptr_t)back, cap, FERRY_MEM_HOST, 0};
    ferry_desc_t rd = {l->t.buf[0].addr, cap, FERRY_MEM_HOST, 0};
    ferry_mem_t *m;
    ferry_xfer_t *x;
    int rc = 0;

    memset(back, 0xA5, cap);
    ASSERT_ST(FERRY_OK, ferry_mem_register(l->agent, &bd, 1, &m));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(l->agent, FERRY_OP_READ, &bd, 1, l->peer, &rd, 1,
                                           NULL, &x));
    ASSERT_ST(FERRY_OK, xu_post_wait(x, 60000000000ll));
    ferry_xfer_release(x);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(m));
    for (uint64_t i = 0; i < cap && bad == UINT64_MAX; i++)
        if (back[i] != l->shadow[i])
            bad = i;
    free(back);
    if (bad != UINT64_MAX) {
        TEST_FAIL_AT_("byte %" PRIu64 " of the live target's buffer is wrong", bad);
        rc = -1;
    }
    if (xt_quit(&l->t) != 0)
        rc = -1;
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(l->mem));
    free(l->lb);
    free(l->shadow);
    return rc;
}

int xt_quit(xt_target_t *t)
{
    xt_cmd_t c = {.op = XT_QUIT};
    int status = -1;

    if (t->pid > 0 && xu_send(t->fd, &c, sizeof(c)) == 0)
        status = xu_reap(t->pid, t->timeout_ms);
    else if (t->pid > 0)
        status = xt_kill(t);
    xt_close(t);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the target exited badly (wait status %d)\n", status);
        return -1;
    }
    return 0;
}

/* The target the watchdog kills (a signal handler reads it). */
static xt_target_t *xt_watched;

static void xt_on_watchdog(int sig)
{
    (void)sig;
    if (xt_watched != NULL && xt_watched->pid > 0)
        kill(xt_watched->pid, SIGKILL);
    _exit(1);
}

void xt_watchdog(xt_target_t *t, unsigned seconds)
{
    xt_watched = t;
    signal(SIGALRM, xt_on_watchdog);
    alarm(seconds);
}

int xt_kill(xt_target_t *t)
{
    int status = -1;

    if (t->pid > 0) {
        kill(t->pid, SIGKILL);
        while (waitpid(t->pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    xt_close(t);
    return status;
}
