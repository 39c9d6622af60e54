/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_target: the serving target every multi-process test starts (see
 * target.h for what it does and lib/proto.h for the wire format). Started
 * by xt_start() as
 *
 *   test_target serve FD name=NAME thread=0|1 drive=0|1 seed=N
 *               buf=KIND:CAP:REG:own|ferry ...
 *
 * it exits 0 after XT_QUIT if every call it made succeeded, 1 on any
 * failure (a refused command is answered, printed, and counted), 2 on bad
 * arguments, and 77 when a buffer's memory kind needs a GPU that is absent.
 */
#include "target.h"

#include "proto.h"

#include <stdlib.h>

/* How long the target waits for the next command: it dies with the test
 * (PR_SET_PDEATHSIG), so this only ends a target whose test is stuck. */
#define IDLE_MS 600000

typedef struct sbuf {
    xm_buf_t xb;
    uint64_t reg;
    int ferry_alloc;
    xu_layout_t l; /* the ranges last given, in l.local */
} sbuf_t;

static ferry_agent_t *agent;
static ferry_peer_t *initiator; /* loaded by XT_NOTIF */
static int has_thread, drive = 1;
static uint64_t seed;
static sbuf_t bufs[XT_MAX_BUF];
static unsigned nbuf;

static int parse_buf(const char *spec, sbuf_t *b)
{
    char kind[16], alloc[16];
    unsigned long long cap, reg;
    xm_kind_t k;

    if (sscanf(spec, "%15[a-z]:%llu:%llu:%15[a-z]", kind, &cap, &reg, alloc) != 4 ||
        xm_parse(kind, &k) != 0 || cap == 0 || reg == 0 || reg > cap) {
        fprintf(stderr, "test_target: bad buffer '%s'\n", spec);
        return -1;
    }
    b->xb.kind = k;
    b->xb.cap = (size_t)cap;
    b->reg = reg;
    b->ferry_alloc = strcmp(alloc, "ferry") == 0;
    if (b->ferry_alloc && k != XM_HOST) {
        fprintf(stderr, "test_target: ferry_mem_alloc buffers are host memory\n");
        return -1;
    }
    return 0;
}

/* 0, 77 (no GPU for a GPU kind), or 1. */
static int alloc_buf(sbuf_t *b)
{
    if (b->ferry_alloc) {
        void *p;
        size_t cap = b->xb.cap;

        ASSERT_ST(FERRY_OK, ferry_mem_alloc(agent, cap, FERRY_MEM_HOST, &p));
        memset(p, 0, cap);
        memset(&b->xb, 0, sizeof(b->xb));
        b->xb.kind = XM_HOST;
        b->xb.cap = cap;
        b->xb.host = p;
        b->xb.addr = (uint64_t)(uintptr_t)p;
        return 0;
    }
    return xm_alloc(&b->xb, b->xb.kind, b->xb.cap);
}

static void free_buf(sbuf_t *b)
{
    xu_layout_free(&b->l);
    if (b->ferry_alloc)
        EXPECT_ST(FERRY_OK, ferry_mem_free(agent, b->xb.host));
    else
        xm_free(&b->xb);
}

/* With a progress thread, the bytes of a transfer may have been written by
 * that thread: a call on the agent orders this thread after it (as ferry.h
 * asks, and as ThreadSanitizer sees), and the next transfers after what
 * this thread wrote. A target without one never drives its agent here: a
 * passive target stays passive. */
static void order_with_progress_thread(void)
{
    if (has_thread)
        ferry_agent_progress(agent);
}

static int cmp_off(const void *a, const void *b, void *arg)
{
    const uint64_t *off = arg;
    uint64_t x = off[*(const size_t *)a], y = off[*(const size_t *)b];

    return x < y ? -1 : x > y;
}

/* XT_LAYOUT: n ranges follow the command; 0 if they lie inside the window,
 * and the window inside the buffer. */
static int take_layout(int fd, const xt_cmd_t *c, sbuf_t *b)
{
    xu_layout_t *l = &b->l;
    uint64_t *r;
    int ok = 1;

    if (c->n > (XU_MAX_BLOB / 24)) {
        fprintf(stderr, "test_target: %" PRIu64 " ranges\n", c->n);
        return -1;
    }
    r = xu_xcalloc((size_t)c->n * 3, sizeof(*r));
    if (xu_recv(fd, r, (size_t)c->n * 3 * sizeof(*r), IDLE_MS, NULL) != 0)
        exit(1);
    xu_layout_free(l);
    l->n = (size_t)c->n;
    l->len = xu_xcalloc(l->n, sizeof(*l->len));
    l->stream = xu_xcalloc(l->n, sizeof(*l->stream));
    xu_side_alloc(&l->local, l->n);
    l->local.lo = c->lo;
    l->local.hi = c->hi;
    for (size_t i = 0; i < l->n; i++) {
        l->local.off[i] = r[3 * i];
        l->len[i] = r[3 * i + 1];
        l->stream[i] = r[3 * i + 2];
        l->local.order[i] = i;
        l->total += l->len[i];
        if (l->local.off[i] < c->lo || l->len[i] > c->hi - l->local.off[i])
            ok = 0;
    }
    free(r);
    if (c->hi > b->xb.cap || c->lo > c->hi)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "test_target: ranges outside the window [%" PRIu64 ", %" PRIu64
                        ") or the window outside the buffer (%zu bytes)\n",
                c->lo, c->hi, b->xb.cap);
        xu_layout_free(l);
        return -1;
    }
    qsort_r(l->local.order, l->n, sizeof(size_t), cmp_off, l->local.off);
    return 0;
}

/* One notification of XT_NOTIF; returns whether it was good. */
static int serve_note(sbuf_t *b, const ferry_notif_t *n, unsigned flags, uint64_t *next)
{
    xt_note_t note;
    int ok = 1;

    if (n->len != sizeof(note)) {
        fprintf(stderr, "test_target: a notification of %zu bytes\n", n->len);
        return 0;
    }
    memcpy(&note, n->msg, sizeof(note));
    if ((flags & XT_NOTIF_UNKNOWN) ? n->peer != NULL
                                   : (initiator != NULL && n->peer != initiator)) {
        fprintf(stderr, "test_target: notification %" PRIu64 " from '%s' (%s)\n",
                note.seq, n->peer_name, n->peer ? "loaded" : "not loaded");
        ok = 0;
    }
    if (*next != UINT64_MAX && note.seq != *next) {
        fprintf(stderr, "test_target: notification %" PRIu64 " where %" PRIu64
                        " was due\n", note.seq, *next);
        ok = 0;
    }
    *next = note.seq + 1;
    if (note.op != XT_NOTE_PLAIN && (note.off > b->xb.cap || note.len > b->xb.cap - note.off)) {
        fprintf(stderr, "test_target: notification %" PRIu64 ": range outside the "
                        "buffer\n", note.seq);
        return 0;
    }
    order_with_progress_thread();
    if (note.op == XT_NOTE_WRITE) {
        /* The bytes must be there as the message arrives. */
        xm_from_dev(&b->xb, note.off, note.off + note.len);
        if (xt_sum(b->xb.host + note.off, note.len) != note.sum) {
            fprintf(stderr, "test_target: notification %" PRIu64 " came before its "
                            "bytes ([%" PRIu64 ", +%" PRIu64 ") does not match)\n",
                    note.seq, note.off, note.len);
            ok = 0;
        }
    } else if (note.op == XT_NOTE_READ) {
        /* Read already: the range may change now. */
        xu_fill_guard(b->xb.host, note.off, note.off + note.len, seed,
                      XT_NOTE_REFILL_ITER(note.seq));
        xm_to_dev(&b->xb, note.off, note.off + note.len);
    } else if (note.op == XT_NOTE_PLAIN) {
        if (note.len == 1 && note.sum != xt_note_plain_sum(note.seq, note.off)) {
            fprintf(stderr, "test_target: stand-alone notification %" PRIu64 " arrived "
                            "altered\n", note.seq);
            ok = 0;
        }
    } else {
        fprintf(stderr, "test_target: notification of kind %u\n", note.op);
        ok = 0;
    }
    order_with_progress_thread();
    if ((flags & XT_NOTIF_ACK) && initiator != NULL)
        EXPECT_ST(FERRY_OK, ferry_notif_send(agent, initiator, &note.seq,
                                             sizeof(note.seq)));
    return ok;
}

/* XT_NOTIF: loads the initiator's blob (if one follows), then serves
 * c->iter notifications as they come; returns the bad ones' count. */
static long serve_notif(int fd, const xt_cmd_t *c, sbuf_t *b)
{
    uint64_t done = 0, next = UINT64_MAX;
    long bad = 0;

    if (c->n > XU_MAX_BLOB)
        return -1;
    if (c->n > 0) {
        void *blob = xu_xcalloc(1, (size_t)c->n);

        if (xu_recv(fd, blob, (size_t)c->n, IDLE_MS, NULL) != 0)
            exit(1);
        if (initiator == NULL)
            EXPECT_ST(FERRY_OK, ferry_peer_load(agent, blob, (size_t)c->n, &initiator));
        free(blob);
        /* Loaded: messages sent from now on name their sender's peer. */
        if (xu_send_msg(fd, XT_NOTIF, 2, c->iter, 0, 0) != 0)
            exit(1);
    }
    while (done < c->iter) {
        ferry_notif_t *n[16];
        size_t got = 0;
        ferry_status_t st = ferry_notif_wait(agent, 20000000000ll);

        if (st != FERRY_OK) {
            EXPECT_ST(FERRY_OK, st);
            return -1;
        }
        EXPECT_ST(FERRY_OK, ferry_notif_drain(agent, n, 16, &got));
        for (size_t i = 0; i < got; i++) {
            bad += !serve_note(b, n[i], (unsigned)c->guard, &next);
            ferry_notif_free(n[i]);
        }
        done += got;
    }
    if (done > c->iter) {
        fprintf(stderr, "test_target: %" PRIu64 " notifications where %" PRIu64
                        " were due\n", done, c->iter);
        bad++;
    }
    return bad;
}

/* XT_SETTLE: ferry_agent_progress() until FERRY_OK, for c->iter ms at
 * most; the number of calls, or -1 (printed) if it still had work. */
static long settle(const xt_cmd_t *c)
{
    uint64_t t0 = xu_now_ns(), end = t0 + c->iter * 1000000ull;
    ferry_status_t st;
    long calls = 0;
    int efd;

    if (c->guard)
        EXPECT_ST(FERRY_OK, ferry_agent_fd(agent, &efd));
    do {
        st = ferry_agent_progress(agent);
        calls++;
    } while (st == FERRY_IN_PROGRESS && xu_now_ns() < end);
    if (st == FERRY_OK)
        return calls;
    fprintf(stderr, "test_target: ferry_agent_progress returned %s after %ld calls "
                    "in %.0f ms\n", ferry_status_str(st), calls,
            (double)(xu_now_ns() - t0) / 1e6);
    return -1;
}

/* Serves one command; returns the reply's a, or -1 to refuse it. */
static long serve(int fd, const xt_cmd_t *c)
{
    sbuf_t *b = c->buf < nbuf ? &bufs[c->buf] : NULL;

    if (c->op == XT_DRIVE) {
        drive = c->iter != 0;
        return 0;
    }
    if (c->op == XT_SETTLE)
        return settle(c);
    if (b == NULL) {
        fprintf(stderr, "test_target: command %u for buffer %u of %u\n", c->op, c->buf,
                nbuf);
        return -1;
    }
    switch (c->op) {
    case XT_PATTERN:
        if (c->lo > c->hi || c->hi > b->xb.cap)
            break;
        order_with_progress_thread();
        xu_fill_guard(b->xb.host, c->lo, c->hi, seed, c->iter);
        xm_to_dev(&b->xb, c->lo, c->hi);
        order_with_progress_thread();
        return 0;
    case XT_LAYOUT:
        return take_layout(fd, c, b);
    case XT_NOTIF:
        return serve_notif(fd, c, b);
    case XT_FILL:
        order_with_progress_thread();
        xu_fill_ranges(b->xb.host, &b->l, &b->l.local, seed, c->iter);
        xm_to_dev(&b->xb, b->l.local.lo, b->l.local.hi);
        order_with_progress_thread();
        return 0;
    case XT_CHECK: {
        long bad;

        if (c->lo > c->hi || c->hi > b->xb.cap ||
            (b->l.n > 0 && (c->lo > b->l.local.lo || c->hi < b->l.local.hi)))
            break;
        order_with_progress_thread();
        xm_from_dev(&b->xb, c->lo, c->hi);
        bad = (long)xu_check_dest(b->xb.host, &b->l, &b->l.local, c->lo, c->hi, seed,
                                  c->iter, c->guard, c->what);
        order_with_progress_thread();
        return bad;
    }
    default:
        fprintf(stderr, "test_target: unknown command %u\n", c->op);
        return -1;
    }
    fprintf(stderr, "test_target: command %u: span [%" PRIu64 ", %" PRIu64
                    ") outside buffer %u (%zu bytes) or its ranges\n",
            c->op, c->lo, c->hi, c->buf, b->xb.cap);
    return -1;
}

int main(int argc, char **argv)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "target"};
    ferry_desc_t d[XT_MAX_BUF];
    ferry_mem_t *mem;
    int fd, rc;

    if (argc < 3 || strcmp(argv[1], "serve") != 0) {
        fprintf(stderr, "usage: test_target serve FD [name=..] [thread=0|1] [drive=0|1] "
                        "[seed=N] buf=KIND:CAP:REG:own|ferry...\n"
                        "(started by the tests through xt_start())\n");
        return 2;
    }
    alarm(900); /* a last resort: it dies with the test anyway */
    setvbuf(stdout, NULL, _IOLBF, 0);
    fd = atoi(argv[2]);
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];

        if (strncmp(a, "name=", 5) == 0)
            ap.name = a + 5;
        else if (strncmp(a, "thread=", 7) == 0)
            has_thread = atoi(a + 7);
        else if (strncmp(a, "drive=", 6) == 0)
            drive = atoi(a + 6);
        else if (strncmp(a, "seed=", 5) == 0)
            seed = strtoull(a + 5, NULL, 0);
        else if (strncmp(a, "buf=", 4) == 0 && nbuf < XT_MAX_BUF &&
                 parse_buf(a + 4, &bufs[nbuf]) == 0)
            nbuf++;
        else
            return fprintf(stderr, "test_target: bad argument '%s'\n", a), 2;
    }
    if (nbuf == 0)
        return fprintf(stderr, "test_target: no buffer\n"), 2;
    ap.progress_thread = has_thread;
    /* Memory first, as the tests did before this program existed: a GPU
     * buffer's CUDA context exists before the agent looks for CUDA. Memory
     * from ferry_mem_alloc needs the agent. */
    for (unsigned i = 0; i < nbuf; i++)
        if (!bufs[i].ferry_alloc && (rc = alloc_buf(&bufs[i])) != 0)
            return rc;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    for (unsigned i = 0; i < nbuf; i++) {
        if (bufs[i].ferry_alloc && (rc = alloc_buf(&bufs[i])) != 0)
            return rc;
        d[i] = xm_desc(bufs[i].xb.kind, bufs[i].xb.addr, bufs[i].reg);
    }
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, nbuf, &mem));
    if (xu_send_blob(fd, agent, XT_HELLO, nbuf, bufs[0].xb.addr, bufs[0].reg) != 0)
        return 1;
    for (unsigned i = 0; i < nbuf; i++)
        if (xu_send_msg(fd, XT_BUF, bufs[i].xb.kind, bufs[i].xb.cap, bufs[i].xb.addr,
                        bufs[i].reg) != 0)
            return 1;

    for (;;) {
        xt_cmd_t c;
        long a;

        if (xu_recv(fd, &c, sizeof(c), IDLE_MS, drive ? agent : NULL) != 0)
            return 1;
        if (c.op == XT_QUIT)
            break;
        c.what[sizeof(c.what) - 1] = '\0';
        a = serve(fd, &c);
        if (a < 0)
            test_failures++;
        if (xu_send_msg(fd, c.op, a >= 0, c.iter, a >= 0 ? (uint64_t)a : 0, 0) != 0)
            return 1;
    }
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    for (unsigned i = 0; i < nbuf; i++)
        if (bufs[i].ferry_alloc)
            free_buf(&bufs[i]);
    ferry_agent_destroy(agent);
    for (unsigned i = 0; i < nbuf; i++)
        if (!bufs[i].ferry_alloc)
            free_buf(&bufs[i]);
    return test_failures ? 1 : 0;
}
