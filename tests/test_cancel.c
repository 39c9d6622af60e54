/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Stopping requests safely: ferry_xfer_cancel, the stall timeout and
 * ferry_xfer_release of a request in flight, each against a peer process
 * that is stopped (SIGSTOP) while the request is under way, so that the
 * transport really still holds the request's memory. Once a request has
 * ended, its local memory is deregistered and overwritten with a sentinel
 * pattern, the peer is resumed, and the same connection must move fresh
 * random data to random offsets, both ways, byte for byte. Then the
 * sentinel proves that the transport let go: a stopped WRITE's remote range
 * may hold any of the data sent before the stop, but never a word of the
 * sentinel (which the transport could only have read after the request
 * ended), and a stopped READ's buffer must still hold the sentinel intact
 * (a late reply would have overwritten it). The memory is freed afterwards,
 * which AddressSanitizer watches too, but UCX copies with its own code,
 * which ASan does not see: the sentinel is the check that counts.
 *
 * Also: cancel of a finished and of a never-posted request leaves them as
 * they were; a second request in flight on the same connection ends with
 * CANCELED too, as ferry.h says, and may be posted again; completion queue
 * entries report CANCELED and TIMEOUT. The target is the shared serving
 * target (target.h), whose progress thread serves every transfer.
 */
#include "target.h"

#define TCAP (64ull << 20) /* the target's buffer */
#define BIG (16ull << 20)  /* large enough to stall on a stopped target */
#define SEC 1000000000ll

static xt_target_t target;
static uint64_t seed;
static test_rng_t rng;

static void resume_target(void)
{
    xu_cont_child(target.pid);
}

/* A registered, page-aligned local buffer filled with pattern iter. */
typedef struct lbuf {
    uint8_t *p;
    uint64_t len;
    ferry_mem_t *mem;
} lbuf_t;

static lbuf_t lbuf_new(ferry_agent_t *agent, uint64_t len, uint64_t iter)
{
    lbuf_t b = {xu_alloc_buf(len), len, NULL};
    ferry_desc_t d = {(uintptr_t)b.p, len, FERRY_MEM_HOST, 0};

    test_fill_fast(b.p, len, seed, iter, 0);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &b.mem));
    return b;
}

static void lbuf_free(lbuf_t *b)
{
    if (b->mem != NULL)
        EXPECT_ST(FERRY_OK, ferry_mem_deregister(b->mem));
    free(b->p);
    b->p = NULL;
}

static ferry_xfer_t *prepare(ferry_agent_t *agent, ferry_xfer_op_t op, ferry_peer_t *peer,
                             const lbuf_t *b, uint64_t loff, uint64_t raddr, uint64_t len,
                             void *user_data)
{
    ferry_desc_t l = {(uintptr_t)(b->p + loff), len, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {raddr, len, FERRY_MEM_HOST, 0};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_USER_DATA,
                              .user_data = user_data};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1,
                                           user_data ? &xp : NULL, &x));
    return x;
}

/*
 * The connection works: a WRITE of fresh random data to a random offset of
 * the target's buffer, read back into a second buffer at another random
 * offset, both checked byte for byte.
 */
static void check_connection(ferry_agent_t *agent, ferry_peer_t *peer, uint64_t rbase,
                             uint64_t iter, const char *when)
{
    uint64_t len = test_rand_range(&rng, 1, 1u << 20);
    uint64_t roff = test_rand_range(&rng, 0, TCAP - len);
    uint64_t boff = test_rand_range(&rng, 0, 4096);
    lbuf_t src = lbuf_new(agent, len, iter);
    lbuf_t back = lbuf_new(agent, len + 4096, iter + 1);
    ferry_xfer_t *w = prepare(agent, FERRY_OP_WRITE, peer, &src, 0, rbase + roff, len, NULL);
    ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &back, boff, rbase + roff, len,
                              NULL);
    uint64_t bad;

    EXPECT_ST(FERRY_OK, xu_post_wait(w, 60 * SEC));
    EXPECT_ST(FERRY_OK, xu_post_wait(r, 60 * SEC));
    bad = test_verify_fast(back.p + boff, len, seed, iter, 0);
    if (bad != UINT64_MAX)
        TEST_FAIL_AT_("%s: byte %" PRIu64 " of %" PRIu64 " read back from remote offset "
                      "%" PRIu64 " differs", when, bad, len, roff);
    ferry_xfer_release(w);
    ferry_xfer_release(r);
    lbuf_free(&src);
    lbuf_free(&back);
}

/*
 * The memory of a request that was stopped in flight: deregistered and
 * overwritten with a sentinel as soon as the request has ended, checked
 * once the peer has resumed and had time to act on whatever was in transit.
 */
typedef struct quarantine {
    lbuf_t b;
    ferry_xfer_op_t op;
    uint64_t raddr; /* the remote range of a WRITE */
    uint64_t sentinel;
} quarantine_t;

static uint64_t next_sentinel = XU_GUARD_ITER;

static quarantine_t quarantine(lbuf_t *b, ferry_xfer_op_t op, uint64_t raddr)
{
    quarantine_t q = {*b, op, raddr, next_sentinel++};

    EXPECT_ST(FERRY_OK, ferry_mem_deregister(q.b.mem));
    q.b.mem = NULL;
    test_fill_fast(q.b.p, q.b.len, seed, q.sentinel, 0);
    b->p = NULL;
    return q;
}

static void quarantine_check(quarantine_t *q, ferry_agent_t *agent, ferry_peer_t *peer,
                             const char *what)
{
    uint64_t t0 = xu_now_ns();

    /* Whatever was queued for the resumed peer, and every reply it sends
     * to the torn-down connection, has long arrived after this. */
    while (xu_now_ns() - t0 < 300000000ull)
        ferry_agent_progress(agent);
    if (q->op == FERRY_OP_READ) {
        uint64_t bad = test_verify_fast(q->b.p, q->b.len, seed, q->sentinel, 0);

        if (bad != UINT64_MAX)
            TEST_FAIL_AT_("%s: the READ's buffer changed at byte %" PRIu64 " after "
                          "the request had ended", what, bad);
    } else {
        lbuf_t back = lbuf_new(agent, q->b.len, 0);
        ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &back, 0, q->raddr,
                                  q->b.len, NULL);
        uint64_t hits = 0;

        EXPECT_ST(FERRY_OK, xu_post_wait(r, 60 * SEC));
        for (uint64_t i = 0; i + 8 <= q->b.len; i += 8) {
            uint64_t got;

            memcpy(&got, back.p + i, 8);
            hits += got == test_pattern_word(seed, q->sentinel, i >> 3);
        }
        if (hits > 0)
            TEST_FAIL_AT_("%s: %" PRIu64 " words of the WRITE's buffer, written after "
                          "the request had ended, reached the peer", what, hits);
        ferry_xfer_release(r);
        lbuf_free(&back);
    }
    lbuf_free(&q->b);
}

/* Resumes the target, proves that the connection works, then that the
 * transport let go of a stopped WRITE's and READ's memory. */
static void resume_and_check(ferry_agent_t *agent, ferry_peer_t *peer, uint64_t rbase,
                             uint64_t iter, const char *how, quarantine_t *qw,
                             quarantine_t *qr)
{
    char what[64];

    resume_target();
    snprintf(what, sizeof(what), "after %s", how);
    check_connection(agent, peer, rbase, iter, what);
    snprintf(what, sizeof(what), "%s WRITE", how);
    quarantine_check(qw, agent, peer, what);
    snprintf(what, sizeof(what), "%s READ", how);
    quarantine_check(qr, agent, peer, what);
}

/* Waits for the request's end and checks its status and detail text. */
static void expect_end(ferry_xfer_t *x, ferry_status_t want, const char *text,
                       ferry_status_t cancel_said)
{
    ferry_status_t st;

    /* OK means already done: a test must say so without waiting. */
    st = cancel_said == FERRY_OK ? ferry_xfer_test(x) : ferry_xfer_wait(x, 60 * SEC);
    EXPECT_ST(want, st);
    if (st == want)
        EXPECT_ERR_HAS(text);
}

/* Drains the completion queue and expects exactly these entries. */
static void expect_completions(ferry_agent_t *agent, size_t n, void *const *user_data,
                               const ferry_status_t *status)
{
    ferry_completion_t c[8];
    size_t got = 0;

    ASSERT_ST(FERRY_OK, ferry_agent_completions(agent, c, 8, &got));
    EXPECT_EQ(n, got);
    for (size_t i = 0; i < n && i < got; i++) {
        int found = 0;

        for (size_t j = 0; j < got; j++)
            if (c[j].user_data == user_data[i]) {
                found = 1;
                EXPECT_ST(status[i], c[j].status);
            }
        EXPECT_TRUE(found);
    }
}

int main(void)
{
    ferry_agent_params_t sp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_STALL_TIMEOUT,
                               .name = "cancel-stall", .stall_timeout_ns = SEC / 4};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "cancel-initiator"};
    ferry_agent_t *agent, *stall_agent;
    ferry_peer_t *peer, *stall_peer;
    xt_opts_t to = {.name = "cancel-target", .progress_thread = 1, .nbuf = 1,
                    .buf = {{XM_HOST, TCAP, 0, 0}}};
    ferry_status_t st;
    uint64_t rbase;

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0xca9ce1ull);
    rng.s = seed;
    printf("test_cancel: seed %" PRIu64 " (set FERRY_TEST_SEED to replay)\n", seed);
    to.seed = seed;
    ASSERT_TRUE(xt_start(&target, &to) == 0);
    alarm(240); /* a hang fails the test; the target dies with us */

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_TRUE(xt_connect(&target, agent, &peer) == 0);
    ASSERT_TRUE(target.buf[0].reg == TCAP);
    rbase = target.buf[0].addr;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&sp, &stall_agent));
    ASSERT_TRUE(xt_load(&target, stall_agent, &stall_peer) == 0);
    check_connection(agent, peer, rbase, 1, "before anything");
    check_connection(stall_agent, stall_peer, rbase, 2, "before anything (stall agent)");

    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_cancel(NULL));

    /* Cancel of requests not in flight changes nothing. */
    printf("cancel of a finished and of a never-posted request\n");
    {
        uint64_t roff = test_rand_range(&rng, 0, TCAP - 8192);
        lbuf_t b = lbuf_new(agent, 8192, 3);
        ferry_xfer_t *x = prepare(agent, FERRY_OP_WRITE, peer, &b, 0, rbase + roff, 8192,
                                  NULL);

        EXPECT_ST(FERRY_OK, ferry_xfer_cancel(x));
        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_test(x));
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 60 * SEC));
        EXPECT_ST(FERRY_OK, ferry_xfer_cancel(x));
        EXPECT_ST(FERRY_OK, ferry_xfer_test(x));
        EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, SEC));
        ferry_xfer_release(x);
        {
            /* The WRITE landed: read it back into other bytes. */
            lbuf_t back = lbuf_new(agent, 8192, 99);
            ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &back, 0, rbase + roff,
                                      8192, NULL);

            EXPECT_ST(FERRY_OK, xu_post_wait(r, 60 * SEC));
            EXPECT_EQ(UINT64_MAX, test_verify_fast(back.p, 8192, seed, 3, 0));
            ferry_xfer_release(r);
            lbuf_free(&back);
        }
        lbuf_free(&b);
    }

    /*
     * Cancel in flight: a big WRITE and a READ to a stopped target, on one
     * connection. Cancel ends both; their memory goes away at once.
     */
    printf("cancel of a WRITE in flight to a stopped peer, with a READ beside it\n");
    {
        uint64_t woff = test_rand_range(&rng, 0, TCAP / 2 - BIG);
        uint64_t roff = test_rand_range(&rng, TCAP / 2, TCAP - BIG);
        lbuf_t wb = lbuf_new(agent, BIG, 4), rb = lbuf_new(agent, BIG, 5);
        ferry_xfer_t *w = prepare(agent, FERRY_OP_WRITE, peer, &wb, 0, rbase + woff, BIG,
                                  (void *)&wb);
        ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &rb, 0, rbase + roff, BIG,
                                  (void *)&rb);
        void *ud[2] = {&wb, &rb};
        ferry_status_t canceled[2] = {FERRY_ERR_CANCELED, FERRY_ERR_CANCELED};
        ferry_status_t cst;
        quarantine_t qw, qr;

        xu_stop_child(target.pid);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(r));
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(w, SEC / 5));
        EXPECT_ST(FERRY_ERR_BUSY, ferry_xfer_post(w));
        cst = ferry_xfer_cancel(w);
        EXPECT_TRUE(cst == FERRY_OK || cst == FERRY_IN_PROGRESS);
        printf("  cancel returned %s\n", ferry_status_str(cst));
        expect_end(w, FERRY_ERR_CANCELED, "xfer_cancel: the request was canceled", cst);
        /* The READ beside it ended too, saying why. */
        expect_end(r, FERRY_ERR_CANCELED, "was closed", cst);
        EXPECT_ST(FERRY_OK, ferry_xfer_cancel(w)); /* no longer in flight */
        expect_completions(agent, 2, ud, canceled);
        qw = quarantine(&wb, FERRY_OP_WRITE, rbase + woff);
        qr = quarantine(&rb, FERRY_OP_READ, 0);
        ferry_xfer_release(w);
        /* A request outlives its memory's registration: posting it is
         * refused without touching anything. */
        EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_post(r));
        ferry_xfer_release(r);
        resume_and_check(agent, peer, rbase, 6, "cancel", &qw, &qr);
    }

    /* A canceled request whose memory lives on may simply be posted again. */
    printf("re-posting a canceled request\n");
    {
        uint64_t roff = test_rand_range(&rng, 0, TCAP - BIG);
        lbuf_t wb = lbuf_new(agent, BIG, 7), back = lbuf_new(agent, BIG, 8);
        ferry_xfer_t *w = prepare(agent, FERRY_OP_WRITE, peer, &wb, 0, rbase + roff, BIG,
                                  NULL);
        ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &back, 0, rbase + roff, BIG,
                                  NULL);

        xu_stop_child(target.pid);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        st = ferry_xfer_cancel(w);
        expect_end(w, FERRY_ERR_CANCELED, "canceled", st);
        /* Reconnects to the stopped peer: in flight until it resumes. */
        st = ferry_xfer_post(w);
        EXPECT_TRUE(st == FERRY_IN_PROGRESS);
        resume_target();
        EXPECT_ST(FERRY_OK, ferry_xfer_wait(w, 60 * SEC));
        EXPECT_ST(FERRY_OK, xu_post_wait(r, 60 * SEC));
        EXPECT_EQ(UINT64_MAX, test_verify_fast(back.p, BIG, seed, 7, 0));
        ferry_xfer_release(w);
        ferry_xfer_release(r);
        lbuf_free(&wb);
        lbuf_free(&back);
    }

    /* Stall timeout: an agent whose requests time out after 250 ms without
     * headway; the wait's own limit is far longer. */
    printf("stall timeout of a WRITE and a READ to a stopped peer\n");
    {
        uint64_t off = test_rand_range(&rng, 0, TCAP - 2 * BIG);
        lbuf_t wb = lbuf_new(stall_agent, BIG, 9), rb = lbuf_new(stall_agent, BIG, 10);
        ferry_xfer_t *w = prepare(stall_agent, FERRY_OP_WRITE, stall_peer, &wb, 0,
                                  rbase + off, BIG, (void *)&wb);
        ferry_xfer_t *r = prepare(stall_agent, FERRY_OP_READ, stall_peer, &rb, 0,
                                  rbase + off + BIG, BIG, (void *)&rb);
        void *ud[2] = {&wb, &rb};
        ferry_status_t timedout[2] = {FERRY_ERR_TIMEOUT, FERRY_ERR_TIMEOUT};
        quarantine_t qw, qr;
        uint64_t t0;

        xu_stop_child(target.pid);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(r));
        t0 = xu_now_ns();
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(w, 60 * SEC));
        EXPECT_ERR_HAS("stall timeout");
        printf("  stall reported after %.0f ms\n", xu_ms_since(t0));
        /* Finished, not merely out of time: test reports the same. */
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_test(w));
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(r, 60 * SEC));
        EXPECT_ERR_HAS("stall timeout");
        expect_completions(stall_agent, 2, ud, timedout);
        qw = quarantine(&wb, FERRY_OP_WRITE, rbase + off);
        qr = quarantine(&rb, FERRY_OP_READ, 0);
        ferry_xfer_release(w);
        ferry_xfer_release(r);
        resume_and_check(stall_agent, stall_peer, rbase, 11, "stall timeout", &qw, &qr);
    }

    /* Release in flight: cancels, and hands the memory back at once. */
    printf("release of a request in flight to a stopped peer\n");
    {
        uint64_t woff = test_rand_range(&rng, 0, TCAP - BIG);
        lbuf_t wb = lbuf_new(agent, BIG, 12), rb = lbuf_new(agent, BIG, 13);
        ferry_xfer_t *w = prepare(agent, FERRY_OP_WRITE, peer, &wb, 0, rbase + woff, BIG,
                                  (void *)&wb);
        ferry_xfer_t *r = prepare(agent, FERRY_OP_READ, peer, &rb, 0,
                                  rbase + test_rand_range(&rng, 0, TCAP - BIG), BIG,
                                  NULL);
        size_t n = 1;
        ferry_completion_t c;
        quarantine_t qw, qr;

        xu_stop_child(target.pid);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(r));
        ferry_xfer_release(w);
        /* Its completion entry left with it. */
        ASSERT_ST(FERRY_OK, ferry_agent_completions(agent, &c, 1, &n));
        EXPECT_EQ(0, n);
        qw = quarantine(&wb, FERRY_OP_WRITE, rbase + woff);
        ferry_xfer_release(r);
        qr = quarantine(&rb, FERRY_OP_READ, 0);
        resume_and_check(agent, peer, rbase, 14, "release in flight", &qw, &qr);
    }

    ferry_peer_forget(peer);
    ferry_peer_forget(stall_peer);
    ferry_agent_destroy(agent);
    ferry_agent_destroy(stall_agent);
    EXPECT_TRUE(xt_quit(&target) == 0);
    return test_finish("test_cancel");
}
