/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Staging through bounce buffers (backends/staged), on host memory, which
 * a request that asks for FERRY_BACKEND_STAGED moves through the same
 * pipeline as GPU memory (memcpy where a GPU would copy): chunking,
 * credits, the target's part served from its progress, READ and WRITE,
 * every byte checked at random offsets. The data cases of every size and
 * batch are test_xfer_2proc --backend staged; this file holds what that
 * one cannot show, each case its own CTest entry:
 *
 *   pool    a target with one bounce buffer per pool and 64 KiB chunks,
 *           and 16 requests of scattered blocks in flight at once from an
 *           initiator with 8 credits: the target delays chunks, never drops
 *           or mixes them up
 *   kill    the target killed (SIGKILL) in the middle of 64 MiB WRITEs and
 *           READs: FERRY_ERR_PEER_LOST, no hang
 *   stop    a stopped target (SIGSTOP): FERRY_ERR_TIMEOUT by the stall
 *           timeout, then, resumed, a clean retry of the same request
 *   cancel  ferry_xfer_cancel of a WRITE and a READ in flight, then the
 *           same requests posted again
 *   abort   a target with one bounce buffer per pool that holds each
 *           chunk's reply back 100 ms (FERRY_STAGE_TEST_REPLY_DELAY_MS, as a
 *           GPU copy would), so that chunks wait at the target, and an
 *           initiator that aborts meanwhile: a cancel, then a stall timeout
 *           with the target stopped (SIGSTOP) and resumed; the target
 *           drops the replies nobody waits for, survives, and serves fresh
 *           WRITEs and READs after each abort
 *   errors  an unknown backend in params is INVALID; one byte both ways; the
 *           last bytes of a registration; a loopback peer (the agent's own)
 *   chunk   a target whose FERRY_STAGE_CHUNK (64 KiB) is smaller than the
 *           initiator's: a larger chunk is refused with UNSUPPORTED, WRITE
 *           and READ, posted twice; chunks that fit still move
 *   share   a stopped target whose WRITE holds every outgoing bounce buffer
 *           (two 16 MiB chunks that cannot leave), and a WRITE to a second,
 *           running target posted right after it, which waits for a
 *           buffer: the stall timeout ends the stopped target's WRITE
 *           alone, the other then completes; the first, retried after
 *           SIGCONT, completes too
 *   secret  a target with a job secret, this agent without: a staged
 *           prepare is refused (PROTOCOL, naming the secret), a UCX one
 *           still moves its bytes
 *
 * The target is the shared serving target (target.h) with a progress
 * thread (stop: driven by its control loop instead), and a second process.
 * With --mem cuda (the gpu entries) both sides' buffers are GPU memory, and
 * the target is another host to ferry (FERRY_TEST_TARGET_HOST_ID).
 */
#include "target.h"

#define TCAP (96ull << 20) /* each side's buffer */
#define BIG (64ull << 20)  /* a transfer long enough to be caught midway */
#define SEC 1000000000ll

static xt_target_t tgt;
static uint64_t seed;
static uint8_t *lbuf; /* the local buffer's bytes (a GPU buffer's host shadow) */
static xm_buf_t lxb;
static xm_kind_t kind = XM_HOST; /* both sides' memory (--mem) */
static ferry_mem_t *lmem;
static uint64_t rbase;

/* The target's FERRY_STAGE_CHUNK, if not this process's. */
static const char *target_chunk;
/* The target's FERRY_JOB_SECRET (this process has none), or NULL. */
static const char *target_secret;

static const ferry_xfer_params_t staged = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                           .backend = FERRY_BACKEND_STAGED};

/* Starts the target (thread: with a progress thread; target_chunks: its
 * FERRY_STAGE_CHUNKS, or NULL) and an agent that knows it, with a
 * registered local buffer. */
static ferry_agent_t *start(int thread, uint64_t stall_ns, const char *target_chunks,
                            ferry_peer_t **peer_p)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_STALL_TIMEOUT,
                               .name = "staged-initiator", .stall_timeout_ns = stall_ns};
    xt_opts_t to = {.name = "staged-target", .progress_thread = thread, .drive = 1,
                    .nbuf = 1};
    ferry_agent_t *agent;
    ferry_desc_t d;

    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){kind, TCAP, 0, 0};
    if (target_chunks != NULL)
        setenv("FERRY_STAGE_CHUNKS", target_chunks, 1);
    if (target_chunk != NULL)
        setenv("FERRY_STAGE_CHUNK", target_chunk, 1);
    if (target_secret != NULL)
        setenv("FERRY_JOB_SECRET", target_secret, 1);
    ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    if (target_chunks != NULL)
        unsetenv("FERRY_STAGE_CHUNKS");
    if (target_chunk != NULL)
        unsetenv("FERRY_STAGE_CHUNK");
    unsetenv("FERRY_JOB_SECRET");
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    if (xm_alloc(&lxb, kind, TCAP) != 0) {
        xt_kill(&tgt);
        exit(1);
    }
    lbuf = lxb.host;
    d = xm_desc(kind, lxb.addr, TCAP);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &lmem));
    tgt.timeout_ms = 60000;
    ASSERT_TRUE(xt_connect(&tgt, agent, peer_p) == 0);
    rbase = tgt.buf[0].addr;
    return agent;
}

static void finish(ferry_agent_t *agent, ferry_peer_t *peer, int quit)
{
    if (quit)
        EXPECT_TRUE(xt_quit(&tgt) == 0);
    else
        xt_kill(&tgt);
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(lmem));
    ferry_agent_destroy(agent);
    xm_free(&lxb);
}

/* One range [off, off + len) on both sides (the target's 3 bytes on), as
 * a request of one descriptor with params: ferry_xfer_prepare's status. */
static ferry_status_t prepare_with(ferry_agent_t *agent, ferry_peer_t *peer,
                                   ferry_xfer_op_t op, uint64_t off, uint64_t len,
                                   const ferry_xfer_params_t *params, ferry_xfer_t **x_p)
{
    ferry_desc_t l = xm_desc(kind, lxb.addr + off, len);
    ferry_desc_t r = xm_target_desc(kind, rbase + off + 3, len);

    return ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1, params, x_p);
}

/* The same, staged, which must prepare. */
static ferry_xfer_t *prepare_range(ferry_agent_t *agent, ferry_peer_t *peer,
                                   ferry_xfer_op_t op, uint64_t off, uint64_t len)
{
    ferry_xfer_t *x = NULL;

    ASSERT_ST(FERRY_OK, prepare_with(agent, peer, op, off, len, &staged, &x));
    return x;
}

/*
 * Moves [off, off + len) with x (prepared by prepare_range) and checks
 * every byte that arrived: a WRITE's at the target, a READ's here.
 */
static void move_and_check(ferry_xfer_t *x, ferry_xfer_op_t op, uint64_t off, uint64_t len,
                           uint64_t iter, const char *what)
{
    uint64_t bad;

    if (op == FERRY_OP_WRITE) {
        test_fill_fast(lbuf + off, len, seed, iter, 0);
        xm_to_dev(&lxb, off, off + len);
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 60 * SEC));
        ASSERT_TRUE(xt_range(&tgt, 0, off + 3, len, 0) == 0);
        EXPECT_EQ(0, xt_check(&tgt, 0, off + 3, off + 3 + len, iter, XU_GUARD_ITER, what));
    } else {
        ASSERT_TRUE(xt_range(&tgt, 0, off + 3, len, 0) == 0);
        ASSERT_TRUE(xt_fill(&tgt, 0, iter) == 0);
        memset(lbuf + off, 0, len);
        xm_to_dev(&lxb, off, off + len);
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 60 * SEC));
        xm_from_dev(&lxb, off, off + len);
        bad = test_verify_fast(lbuf + off, len, seed, iter, 0);
        if (bad != UINT64_MAX)
            TEST_FAIL_AT_("%s: READ byte %" PRIu64 " of %" PRIu64 " is wrong", what, bad,
                          len);
    }
}

/* 16 requests of 16 scattered blocks each in flight at once, through a
 * target with one bounce buffer per pool. */
static void case_pool(void)
{
    enum { NREQ = 16, PER = 16 };
    ferry_peer_t *peer;
    ferry_agent_t *agent;
    test_rng_t rng = {seed};
    xu_layout_t l;
    ferry_xfer_t *x[NREQ];

    /* The target's pools hold one buffer each; both sides cut 64 KiB
     * chunks; this process keeps its 8 credits per peer. */
    setenv("FERRY_STAGE_CHUNK", "64k", 1);
    agent = start(1, 0, "1", &peer);
    ASSERT_TRUE(xu_layout_make(&l, &rng, NREQ * PER, 256u << 10, TCAP, TCAP) == 0);
    for (int op = 0; op < 2; op++) {
        ferry_xfer_op_t xop = op == 0 ? FERRY_OP_WRITE : FERRY_OP_READ;
        uint64_t iter = 100 + (uint64_t)op;
        uint64_t t0 = xu_now_ns();

        for (int r = 0; r < NREQ; r++) {
            ferry_desc_t ld[PER], rd[PER];

            for (int i = 0; i < PER; i++) {
                size_t k = (size_t)r * PER + (size_t)i;

                ld[i] = xm_desc(kind, lxb.addr + l.local.off[k], l.len[k]);
                rd[i] = xm_target_desc(kind, rbase + l.remote.off[k], l.len[k]);
            }
            ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, xop, ld, PER, peer, rd, PER,
                                                   &staged, &x[r]));
        }
        ASSERT_TRUE(xt_layout(&tgt, 0, &l, &l.remote) == 0);
        if (xop == FERRY_OP_WRITE) {
            ASSERT_TRUE(xt_pattern(&tgt, 0, 0, TCAP, XU_GUARD_ITER) == 0);
            xu_fill_ranges(lbuf, &l, &l.local, seed, iter);
            xm_to_dev(&lxb, 0, TCAP);
        } else {
            xu_fill_guard(lbuf, 0, TCAP, seed, XU_GUARD_ITER);
            xm_to_dev(&lxb, 0, TCAP);
            ASSERT_TRUE(xt_fill(&tgt, 0, iter) == 0);
        }
        for (int r = 0; r < NREQ; r++) {
            ferry_status_t st = ferry_xfer_post(x[r]);

            EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
        }
        for (int r = 0; r < NREQ; r++) {
            EXPECT_ST(FERRY_OK, ferry_xfer_wait(x[r], 60 * SEC));
            ferry_xfer_release(x[r]);
        }
        printf("pool: %d %s requests of %d blocks (%" PRIu64 " bytes) through one "
               "bounce buffer: %.1f ms\n", NREQ, op == 0 ? "WRITE" : "READ", PER,
               l.total, xu_ms_since(t0));
        xm_from_dev(&lxb, 0, TCAP);
        if (xop == FERRY_OP_WRITE)
            EXPECT_EQ(0, xt_check(&tgt, 0, 0, TCAP, iter, XU_GUARD_ITER, "pool WRITE"));
        else
            EXPECT_EQ(0, xu_check_dest(lbuf, &l, &l.local, 0, TCAP, seed, iter,
                                       XU_GUARD_ITER, "pool READ"));
    }
    xu_layout_free(&l);
    unsetenv("FERRY_STAGE_CHUNK");
    finish(agent, peer, 1);
}

/* The target killed while 64 MiB move: PEER_LOST, within the wait. */
static void case_kill(void)
{
    ferry_peer_t *peer;
    ferry_agent_t *agent = start(1, 0, NULL, &peer);
    ferry_xfer_t *w = prepare_range(agent, peer, FERRY_OP_WRITE, 0, BIG);
    ferry_xfer_t *r = prepare_range(agent, peer, FERRY_OP_READ, 0, BIG);
    ferry_status_t sw, sr;
    uint64_t t0;

    move_and_check(w, FERRY_OP_WRITE, 0, BIG, 1, "before the kill");
    sw = ferry_xfer_post(w);
    sr = ferry_xfer_post(r);
    xt_kill(&tgt);
    t0 = xu_now_ns();
    if (sw == FERRY_IN_PROGRESS)
        sw = ferry_xfer_wait(w, 30 * SEC);
    if (sr == FERRY_IN_PROGRESS)
        sr = ferry_xfer_wait(r, 30 * SEC);
    printf("kill: WRITE %s, READ %s, %.0f ms after the kill: %s\n", ferry_status_str(sw),
           ferry_status_str(sr), xu_ms_since(t0), ferry_last_error());
    EXPECT_TRUE(sw == FERRY_ERR_PEER_LOST || sw == FERRY_OK);
    EXPECT_ST(FERRY_ERR_PEER_LOST, sr);
    /* And any later post. */
    sw = ferry_xfer_post(w);
    if (sw == FERRY_IN_PROGRESS)
        sw = ferry_xfer_wait(w, 30 * SEC);
    EXPECT_ST(FERRY_ERR_PEER_LOST, sw);
    ferry_xfer_release(w);
    ferry_xfer_release(r);
    finish(agent, peer, 0);
}

/* A stopped target: the stall timeout, then a clean retry once resumed. */
static void case_stop(void)
{
    ferry_peer_t *peer;
    ferry_agent_t *agent = start(0, 2 * SEC, NULL, &peer);

    for (int op = 0; op < 2; op++) {
        ferry_xfer_op_t xop = op == 0 ? FERRY_OP_WRITE : FERRY_OP_READ;
        uint64_t off = op == 0 ? 0 : BIG / 2;
        ferry_xfer_t *x = prepare_range(agent, peer, xop, off, BIG / 4);
        ferry_status_t st;
        uint64_t t0;

        move_and_check(x, xop, off, BIG / 4, 10 + (uint64_t)op, "before the stop");
        xu_stop_child(tgt.pid);
        t0 = xu_now_ns();
        st = ferry_xfer_post(x);
        if (st == FERRY_IN_PROGRESS)
            st = ferry_xfer_wait(x, 30 * SEC);
        printf("stop: %s %s after %.0f ms: %s\n", op == 0 ? "WRITE" : "READ",
               ferry_status_str(st), xu_ms_since(t0), ferry_last_error());
        EXPECT_ST(FERRY_ERR_TIMEOUT, st);
        EXPECT_ERR_HAS("stall timeout");
        xu_cont_child(tgt.pid);
        move_and_check(x, xop, off, BIG / 4, 20 + (uint64_t)op, "the retry after a stop");
        move_and_check(x, xop, off, BIG / 4, 30 + (uint64_t)op, "the retry after a stop");
        ferry_xfer_release(x);
    }
    finish(agent, peer, 1);
}

/* Cancel of a request in flight, then the same request again. */
static void case_cancel(void)
{
    ferry_peer_t *peer;
    ferry_agent_t *agent = start(1, 0, NULL, &peer);

    for (int op = 0; op < 2; op++) {
        ferry_xfer_op_t xop = op == 0 ? FERRY_OP_WRITE : FERRY_OP_READ;
        ferry_xfer_t *x = prepare_range(agent, peer, xop, 0, BIG);
        ferry_status_t st = ferry_xfer_post(x);

        if (st == FERRY_IN_PROGRESS) {
            st = ferry_xfer_cancel(x);
            EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
            st = ferry_xfer_wait(x, 30 * SEC);
            EXPECT_ST(FERRY_ERR_CANCELED, st);
        }
        printf("cancel: %s ended %s\n", op == 0 ? "WRITE" : "READ", ferry_status_str(st));
        move_and_check(x, xop, 0, BIG, 40 + (uint64_t)op, "after a cancel");
        ferry_xfer_release(x);
    }
    finish(agent, peer, 1);
}

/*
 * Chunks waiting at the target (one bounce buffer, each reply held 100 ms)
 * when their initiator aborts: the target's replies must not go out on
 * an endpoint UCX freed with the initiator's worker.
 */
static void case_abort(void)
{
    enum { LEN = 2u << 20, CHECK = 256u << 10 };
    ferry_peer_t *peer;
    ferry_agent_t *agent;

    setenv("FERRY_STAGE_CHUNK", "64k", 1);
    setenv("FERRY_STAGE_TEST_REPLY_DELAY_MS", "100", 1);
    /* A stall timeout well above a chunk's 100 ms at the target, so that
     * only a stopped target reaches it on a busy machine. */
    agent = start(1, 2 * SEC, "1", &peer);
    unsetenv("FERRY_STAGE_TEST_REPLY_DELAY_MS");
    for (int round = 0; round < 4; round++) {
        int stop = round >= 2;
        ferry_xfer_op_t xop = round % 2 == 0 ? FERRY_OP_WRITE : FERRY_OP_READ;
        const char *name = xop == FERRY_OP_WRITE ? "WRITE" : "READ";
        ferry_xfer_t *x = prepare_range(agent, peer, xop, 0, LEN);
        ferry_xfer_t *c = prepare_range(agent, peer, xop, LEN, CHECK);
        ferry_status_t st = ferry_xfer_post(x);
        uint64_t t0 = xu_now_ns();

        /* Chunks reach the target and wait there for its one buffer. */
        while (st == FERRY_IN_PROGRESS && xu_now_ns() - t0 < 150000000ull) {
            usleep(2000);
            st = ferry_xfer_test(x);
        }
        EXPECT_ST(FERRY_IN_PROGRESS, st);
        if (stop) {
            xu_stop_child(tgt.pid);
            st = ferry_xfer_wait(x, 30 * SEC);
            EXPECT_ST(FERRY_ERR_TIMEOUT, st);
            EXPECT_ERR_HAS("stall timeout");
            /* The target resumes with replies due to a worker now gone. */
            xu_cont_child(tgt.pid);
        } else {
            st = ferry_xfer_cancel(x);
            EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
            st = ferry_xfer_wait(x, 30 * SEC);
            EXPECT_ST(FERRY_ERR_CANCELED, st);
        }
        printf("abort: %s ended %s after %.0f ms (%s)\n", name, ferry_status_str(st),
               xu_ms_since(t0), stop ? "stall timeout, target stopped" : "cancel");
        /* A fresh request and the aborted one again, bytes checked. */
        move_and_check(c, xop, LEN, CHECK, 60 + (uint64_t)round,
                       "a fresh request after an abort");
        move_and_check(x, xop, 0, LEN, 70 + (uint64_t)round, "the aborted request again");
        ferry_xfer_release(x);
        ferry_xfer_release(c);
    }
    unsetenv("FERRY_STAGE_CHUNK");
    finish(agent, peer, 1);
}

static void case_errors(void)
{
    ferry_peer_t *peer;
    ferry_agent_t *agent = start(1, 0, NULL, &peer);
    ferry_xfer_params_t bad = {.field_mask = FERRY_XFER_PARAM_BACKEND, .backend = 9};
    ferry_desc_t l = xm_desc(kind, lxb.addr, 100);
    ferry_desc_t r = xm_target_desc(kind, rbase, 100);
    ferry_xfer_t *x = NULL;

    EXPECT_ST(FERRY_ERR_INVALID,
              ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1, &bad, &x));
    /* One byte both ways, and a range that ends at the registration's end. */
    x = prepare_range(agent, peer, FERRY_OP_WRITE, 5, 1);
    move_and_check(x, FERRY_OP_WRITE, 5, 1, 50, "one byte");
    ferry_xfer_release(x);
    x = prepare_range(agent, peer, FERRY_OP_READ, 5, 1);
    move_and_check(x, FERRY_OP_READ, 5, 1, 51, "one byte");
    ferry_xfer_release(x);
    x = prepare_range(agent, peer, FERRY_OP_WRITE, TCAP - 3 - 4097, 4097);
    move_and_check(x, FERRY_OP_WRITE, TCAP - 3 - 4097, 4097, 52, "the last bytes");
    ferry_xfer_release(x);
    /* A loopback peer (the agent's own blob): its target side is served by
     * the same waits. 5 MiB from the buffer's start to its middle. */
    {
        ferry_peer_t *self;
        ferry_desc_t a = xm_desc(kind, lxb.addr + 1, 5u << 20);
        ferry_desc_t b = xm_desc(kind, lxb.addr + TCAP / 2 + 7, 5u << 20);
        uint64_t wrong;

        ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &self));
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &a, 1, self, &b, 1,
                                               &staged, &x));
        test_fill_fast(lbuf + 1, 5u << 20, seed, 53, 0);
        xm_to_dev(&lxb, 1, 1 + (5u << 20));
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 60 * SEC));
        xm_from_dev(&lxb, TCAP / 2 + 7, TCAP / 2 + 7 + (5u << 20));
        wrong = test_verify_fast(lbuf + TCAP / 2 + 7, 5u << 20, seed, 53, 0);
        if (wrong != UINT64_MAX)
            TEST_FAIL_AT_("loopback WRITE: byte %" PRIu64 " is wrong", wrong);
        ferry_xfer_release(x);
        ferry_peer_forget(self);
    }
    finish(agent, peer, 1);
}

/*
 * A target whose chunks are smaller (64 KiB) than the initiator's (4 MiB):
 * a chunk larger than its buffers is refused with UNSUPPORTED, WRITE and
 * READ; chunks that fit still move, on the same connection.
 */
static void case_chunk(void)
{
    ferry_peer_t *peer;
    ferry_agent_t *agent;
    ferry_xfer_t *x;

    target_chunk = "64k";
    agent = start(1, 0, NULL, &peer);
    for (int op = 0; op < 2; op++) {
        ferry_xfer_op_t o = op == 0 ? FERRY_OP_WRITE : FERRY_OP_READ;
        uint64_t off = 100, len = 1u << 20;

        x = prepare_range(agent, peer, o, off, len);
        /* The two sides hold different bytes: a refused chunk moves none. */
        ASSERT_TRUE(xt_range(&tgt, 0, off + 3, len, 0) == 0);
        ASSERT_TRUE(xt_fill(&tgt, 0, 80) == 0);
        test_fill_fast(lbuf + off, len, seed, 81, 0);
        xm_to_dev(&lxb, off, off + len);
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, xu_post_wait(x, 60 * SEC));
        EXPECT_ERR_HAS("could not serve a chunk");
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, xu_post_wait(x, 60 * SEC));
        ferry_xfer_release(x);
        EXPECT_EQ(0, xt_check(&tgt, 0, off + 3, off + 3 + len, 80, XU_GUARD_ITER,
                              "the target after refused chunks"));
        xm_from_dev(&lxb, off, off + len);
        if (test_verify_fast(lbuf + off, len, seed, 81, 0) != UINT64_MAX)
            TEST_FAIL_AT_("refused chunks changed this side's bytes");
        x = prepare_range(agent, peer, o, 200, 60000);
        move_and_check(x, o, 200, 60000, 60 + (uint64_t)op, "a chunk that fits");
        ferry_xfer_release(x);
    }
    finish(agent, peer, 1);
}

/*
 * A target with a job secret and this agent without one (it loads the
 * sealed blob, which an agent without a secret cannot check): a staged
 * prepare is refused at once with PROTOCOL naming the secret, where the
 * target would drop every chunk unread and the request would end only by
 * the stall timeout. The same range through UCX, which the secret does
 * not seal, still moves.
 */
static void case_secret(void)
{
    test_rng_t rng = {seed};
    uint64_t off = test_rand_range(&rng, 0, TCAP / 2);
    ferry_peer_t *peer;
    ferry_agent_t *agent;
    ferry_xfer_t *x = NULL;

    target_secret = "staged-test-secret-0123456789abcdef";
    agent = start(1, 0, NULL, &peer);
    target_secret = NULL;
    EXPECT_ST(FERRY_ERR_PROTOCOL,
              prepare_with(agent, peer, FERRY_OP_WRITE, off, 1u << 20, &staged, &x));
    EXPECT_ERR_HAS("has a job secret");
    ASSERT_ST(FERRY_OK, prepare_with(agent, peer, FERRY_OP_WRITE, off, 1u << 20, NULL, &x));
    move_and_check(x, FERRY_OP_WRITE, off, 1u << 20, 70, "a WRITE through UCX");
    ferry_xfer_release(x);
    finish(agent, peer, 1);
}

/*
 * One stopped peer and the shared pool. This process's pools hold two
 * buffers of 16 MiB, more than the loopback socket to a stopped target
 * takes: a 64 MiB WRITE to it keeps both buffers in sends that never end.
 * A 1 MiB WRITE to a running target, posted right after, waits for a
 * buffer; waiting for buffers that another connection's chunks hold is not
 * a stall, so only the stopped target's WRITE meets the stall timeout,
 * and its end frees the buffers for the other.
 */
static void case_share(void)
{
    enum { LEN = 1 << 20, OFF = 5 };
    xt_target_t t2 = {0};
    xt_opts_t to = {.name = "staged-target2", .progress_thread = 1, .drive = 1,
                    .nbuf = 1};
    ferry_peer_t *peer, *peer2;
    ferry_agent_t *agent;
    ferry_xfer_t *x1, *x2;
    ferry_desc_t l, r;
    ferry_status_t s1 = FERRY_OK, s2;
    uint64_t t0 = 0;

    setenv("FERRY_STAGE_CHUNK", "16m", 1); /* both targets inherit them */
    setenv("FERRY_STAGE_CHUNKS", "2", 1);
    agent = start(1, 5 * SEC, NULL, &peer);
    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){kind, TCAP, 0, 0};
    ASSERT_TRUE(xt_start(&t2, &to) == 0);
    t2.timeout_ms = 60000;
    ASSERT_TRUE(xt_connect(&t2, agent, &peer2) == 0);
    x1 = prepare_range(agent, peer, FERRY_OP_WRITE, 0, BIG);
    l = xm_desc(kind, lxb.addr + BIG, LEN);
    r = xm_target_desc(kind, t2.buf[0].addr + OFF, LEN);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer2, &r, 1,
                                           &staged, &x2));
    move_and_check(x1, FERRY_OP_WRITE, 0, BIG, 1, "before the stop");
    ASSERT_TRUE(xt_range(&t2, 0, OFF, LEN, 0) == 0);
    for (uint64_t iter = 2; iter < 4; iter++) {
        test_fill_fast(lbuf + BIG, LEN, seed, iter, 0);
        xm_to_dev(&lxb, BIG, BIG + LEN);
        if (iter == 3) {
            /* Both at once, the first to the stopped target. */
            xu_stop_child(tgt.pid);
            test_fill_fast(lbuf, BIG, seed, iter, 0);
            xm_to_dev(&lxb, 0, BIG);
            s1 = ferry_xfer_post(x1);
        }
        t0 = xu_now_ns();
        s2 = ferry_xfer_post(x2);
        if (s2 == FERRY_IN_PROGRESS)
            s2 = ferry_xfer_wait(x2, 30 * SEC);
        printf("share: the WRITE to the running target: %s after %.0f ms%s\n",
               ferry_status_str(s2), xu_ms_since(t0),
               iter == 3 ? ", the other target stopped" : "");
        EXPECT_ST(FERRY_OK, s2);
        EXPECT_EQ(0, xt_check(&t2, 0, OFF, OFF + LEN, iter, XU_GUARD_ITER,
                              "the WRITE to the running target"));
    }
    if (s1 == FERRY_IN_PROGRESS)
        s1 = ferry_xfer_wait(x1, 30 * SEC);
    printf("share: the WRITE to the stopped target: %s after %.0f ms: %s\n",
           ferry_status_str(s1), xu_ms_since(t0), ferry_last_error());
    EXPECT_ST(FERRY_ERR_TIMEOUT, s1);
    xu_cont_child(tgt.pid);
    move_and_check(x1, FERRY_OP_WRITE, 0, BIG, 4, "the retry after a stop");
    ferry_xfer_release(x1);
    ferry_xfer_release(x2);
    EXPECT_TRUE(xt_quit(&t2) == 0);
    ferry_peer_forget(peer2);
    unsetenv("FERRY_STAGE_CHUNK");
    unsetenv("FERRY_STAGE_CHUNKS");
    finish(agent, peer, 1);
}

static const struct {
    const char *name;
    void (*run)(void);
} cases[] = {{"pool", case_pool},   {"kill", case_kill},     {"stop", case_stop},
             {"cancel", case_cancel}, {"abort", case_abort}, {"errors", case_errors},
             {"chunk", case_chunk},   {"share", case_share},   {"secret", case_secret}};

int main(int argc, char **argv)
{
    const char *c = argc >= 2 ? argv[1] : "";

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0x57a6edull);
    if (argc == 4 && strcmp(argv[2], "--mem") == 0 && xm_parse(argv[3], &kind) == 0) {
        /* GPU memory on both sides: skipped without a GPU (the check loads
         * CUDA here, which the target, started with exec, does not inherit). */
        if ((xm_is_gpu(kind) || kind == XM_PINNED) && xm_cuda() == NULL)
            return 77;
    } else if (argc != 2) {
        fprintf(stderr, "usage: %s CASE [--mem host|pinned|cuda|vmm]\n", argv[0]);
        return 2;
    }
    printf("test_staged %s: seed %" PRIu64 ", %s memory\n", c, seed, xm_name(kind));
    xt_watchdog(&tgt, 170);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (strcmp(c, cases[i].name) == 0) {
            cases[i].run();
            return test_finish("test_staged");
        }
    }
    fprintf(stderr, "usage: %s pool|kill|stop|cancel|abort|errors|chunk|share|secret\n",
            argv[0]);
    return 2;
}
