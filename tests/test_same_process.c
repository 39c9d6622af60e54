/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The same-process peer: two agents of one process, the target never
 * driven (no progress thread, nobody calls into it). A 64 MiB WRITE to its
 * ordinary memory goes through UCX's emulated put over shared memory, which
 * waits for the target's progress, so it stays in flight; cancel, the stall
 * timeout and release must each still end it within their bound, as they
 * do for a stopped peer process (test_cancel), and must not wait for the
 * target. Then the target is driven (a thread of this test, sleeping on its
 * fd) and the same connections must move fresh random data at random
 * offsets, both ways, byte for byte, in ranges away from the ones whose
 * canceled bytes may still land late. Also: a WRITE into the target's
 * ferry_mem_alloc() memory, which this process maps, completes without the
 * target's help, and one to a target that has a progress thread completes,
 * both checked byte for byte; and cancel leaves ferry_last_error() as it
 * was. With the argument "tcp" the same runs over UCX's TCP transport
 * (FERRY_UCX_TLS=tcp), where nothing is mapped and the allocation's round
 * is left out.
 *
 * When the target is first driven, its UCX may log errors about the
 * aborted connections' shared-memory FIFOs, which are gone ("mm ep failed
 * to connect to remote FIFO"): it answers their connection requests late.
 * They change nothing.
 */
#include "xfer_util.h"

#include <poll.h>
#include <pthread.h>

#define BIG (64ull << 20)  /* each stuck WRITE */
#define TCAP (2 * BIG)     /* the target's buffer: stuck half, checked half */
#define MCAP (16ull << 20) /* the target's mapped allocation */
#define SEC 1000000000ll
/* Bounds, generous for a loaded 2-core machine: what failed before ran
 * forever. The stall agent's timeout is long enough that the driven rounds
 * do not stall (see post_wait()). */
#define CANCEL_NS (5 * SEC)
#define STALL_NS (2 * SEC)
#define STALL_LATE_NS (5 * STALL_NS)
/* The whole test's hang guard (alarm), in seconds: HANG_SETUPS times what
 * the setup took on this run, which gauges the machine at that moment
 * (the run took 3.4 to 4 times the setup, idle and beside other
 * ThreadSanitizer tests and busy loops); never below HANG_MIN_S, and below
 * CTest's timeout (tests/CMakeLists.txt, 600 s) so that the alarm, which
 * names the hang, comes first. */
#define HANG_SETUPS 20
#define HANG_MIN_S 240
#define HANG_MAX_S 570

static uint64_t seed;
static test_rng_t rng;
static uint64_t next_iter = 1;
static uint64_t start_ns;

/* Names the next part of the test, with the seconds since the start: under
 * a sanitizer on a busy machine, where the time goes. */
static void phase(const char *what, const char *more)
{
    printf("[%6.1f s] %s%s\n", (double)(xu_now_ns() - start_ns) / 1e9, what, more);
}

/* A registered, page-aligned buffer of agent a, zeroed. Every check reads
 * only bytes a round has just written with fresh random data, so no guard
 * pattern is needed; under ThreadSanitizer writing one through 384 MiB
 * took half of the test's time. */
typedef struct buf {
    uint8_t *p;
    uint64_t len;
    ferry_mem_t *mem;
} buf_t;

static buf_t buf_new(ferry_agent_t *a, uint64_t len)
{
    buf_t b = {xu_alloc_buf(len), len, NULL};
    ferry_desc_t d = {(uintptr_t)b.p, len, FERRY_MEM_HOST, 0};

    memset(b.p, 0, len);
    ASSERT_ST(FERRY_OK, ferry_mem_register(a, &d, 1, &b.mem));
    return b;
}

static void buf_free(buf_t *b)
{
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(b->mem));
    free(b->p);
}

static ferry_xfer_t *prepare(ferry_agent_t *a, ferry_xfer_op_t op, ferry_peer_t *peer,
                             uint8_t *local, uint8_t *remote, uint64_t len)
{
    ferry_desc_t l = {(uintptr_t)local, len, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {(uintptr_t)remote, len, FERRY_MEM_HOST, 0};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(a, op, &l, 1, peer, &r, 1, NULL, &x));
    return x;
}

/* The thread that drives the target while `driving` is set: it sleeps on
 * the agent's fd, as an event loop would. */
static ferry_agent_t *target;
static atomic_int driving, quit;
static long busy; /* the driver's progress calls that answered IN_PROGRESS */

static void *drive_main(void *arg)
{
    int fd = -1;

    (void)arg;
    if (ferry_agent_fd(target, &fd) != FERRY_OK)
        return NULL;
    while (!atomic_load(&quit)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};

        if (!atomic_load(&driving)) {
            usleep(1000);
            continue;
        }
        /* Not until FERRY_OK alone: after an abort, UCX may keep replies
         * queued for the aborted worker, busy for good. */
        for (int i = 0; i < 1000 && ferry_agent_progress(target) == FERRY_IN_PROGRESS; i++)
            busy++;
        (void)poll(&p, 1, 10);
    }
    return NULL;
}

/*
 * Posts x until it is not ended by the stall timeout (the stall agent's is
 * short, and a loaded machine may starve the driver thread for longer).
 * A stall should stay rare: over TCP, one that aborts a connection whose
 * new endpoint has not finished its wire-up leaves the target's wire-up
 * reply pending toward a retired worker that never answers, and UCX 1.13
 * asserts on it when the target's agent is destroyed (src/backends/ucx/
 * conn.c). With a stall timeout of 250 ms, 5 posts stalled in one run beside
 * other ThreadSanitizer tests and busy loops (the longest gap 570 ms), and
 * the process died so at its end.
 */
static ferry_status_t post_wait(ferry_xfer_t *x)
{
    ferry_status_t st;

    for (int tries = 0; (st = xu_post_wait(x, 60 * SEC)) == FERRY_ERR_TIMEOUT && tries < 10;
         tries++)
        printf("  a post stalled (%s); again\n", ferry_last_error());
    return st;
}

/*
 * A WRITE of fresh random data from src to a random range of the target's
 * memory in [lo, hi), read back into another random place of back, both
 * checked byte for byte (the WRITE's range directly, in this process).
 * owner is the agent that owns tmem when another thread serves it (the
 * driver thread, a progress thread), else NULL.
 */
static void check_round(ferry_agent_t *a, ferry_peer_t *peer, buf_t *src, buf_t *back,
                        ferry_agent_t *owner, uint8_t *tmem, uint64_t lo, uint64_t hi,
                        uint64_t maxlen, const char *what)
{
    uint64_t len = test_rand_range(&rng, 1, maxlen);
    uint64_t toff = lo + test_rand_range(&rng, 0, hi - lo - len);
    uint64_t soff = test_rand_range(&rng, 0, src->len - len);
    uint64_t boff = test_rand_range(&rng, 0, back->len - len);
    uint64_t iter = next_iter++, bad;
    ferry_xfer_t *w = prepare(a, FERRY_OP_WRITE, peer, src->p + soff, tmem + toff, len);
    ferry_xfer_t *r = prepare(a, FERRY_OP_READ, peer, back->p + boff, tmem + toff, len);

    test_fill_fast(src->p + soff, len, seed, iter, 0);
    EXPECT_ST(FERRY_OK, post_wait(w));
    /* The owner's lock orders the copies of the thread that serves it
     * before this read, and this read before that thread's copies of the
     * next WRITEs (ferry.h, FERRY_AGENT_PARAM_PROGRESS_THREAD: a call on
     * the agent before reading memory that peers wrote, and again before
     * letting them write it). The second call is what ThreadSanitizer
     * needs: the next WRITE reaches the serving thread through UCX's
     * shared-memory FIFO, which it cannot see. */
    if (owner != NULL)
        (void)ferry_agent_progress(owner);
    if ((bad = test_verify_fast(tmem + toff, len, seed, iter, 0)) != UINT64_MAX)
        TEST_FAIL_AT_("%s: WRITE of %" PRIu64 " bytes to target offset %" PRIu64
                      ": byte %" PRIu64 " differs", what, len, toff, bad);
    if (owner != NULL)
        (void)ferry_agent_progress(owner);
    EXPECT_ST(FERRY_OK, post_wait(r));
    if ((bad = test_verify_fast(back->p + boff, len, seed, iter, 0)) != UINT64_MAX)
        TEST_FAIL_AT_("%s: READ of %" PRIu64 " bytes from target offset %" PRIu64
                      ": byte %" PRIu64 " differs", what, len, toff, bad);
    ferry_xfer_release(w);
    ferry_xfer_release(r);
}

int main(int argc, char **argv)
{
    int tcp = argc > 1 && strcmp(argv[1], "tcp") == 0;
    ferry_agent_params_t tp = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "sp-target"};
    ferry_agent_params_t ip = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "sp-initiator"};
    ferry_agent_params_t sp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_STALL_TIMEOUT,
                               .name = "sp-stall", .stall_timeout_ns = STALL_NS};
    ferry_agent_params_t pp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "sp-served", .progress_thread = 1};
    ferry_agent_t *ini, *sti, *served;
    ferry_peer_t *ipeer, *speer, *served_peer;
    buf_t tbuf, src, back, ssrc, sback, served_buf;
    uint8_t *mem_alloc;
    ferry_mem_t *mreg;
    pthread_t driver;
    ferry_status_t st;
    uint64_t t0, ns;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tcp)
        setenv("FERRY_UCX_TLS", "tcp", 1);
    seed = xu_seed(0x5a3e9cull);
    rng.s = seed;
    printf("test_same_process: seed %" PRIu64 " (set FERRY_TEST_SEED to replay)\n", seed);
    alarm(HANG_MIN_S); /* what this test is about is a hang */
    start_ns = xu_now_ns();

    ASSERT_ST(FERRY_OK, ferry_agent_create(&tp, &target));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ip, &ini));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&sp, &sti));
    tbuf = buf_new(target, TCAP);
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(target, MCAP, FERRY_MEM_HOST, (void **)&mem_alloc));
    {
        ferry_desc_t d = {(uintptr_t)mem_alloc, MCAP, FERRY_MEM_HOST, 0};

        ASSERT_ST(FERRY_OK, ferry_mem_register(target, &d, 1, &mreg));
    }
    ASSERT_ST(FERRY_OK, test_exchange(ini, target, &ipeer));
    ASSERT_ST(FERRY_OK, test_exchange(sti, target, &speer));
    src = buf_new(ini, BIG);
    back = buf_new(ini, BIG);
    ssrc = buf_new(sti, BIG);
    sback = buf_new(sti, BIG);
    {
        double setup_s = (double)(xu_now_ns() - start_ns) / 1e9;
        double hang_s = HANG_SETUPS * setup_s;

        hang_s = hang_s < HANG_MIN_S ? HANG_MIN_S : hang_s > HANG_MAX_S ? HANG_MAX_S : hang_s;
        printf("setup took %.1f s: a hang is a run past %.0f s\n", setup_s, hang_s);
        alarm((unsigned)hang_s);
    }
    ASSERT_TRUE(pthread_create(&driver, NULL, drive_main, NULL) == 0);

    /* Memory this process maps needs nobody's help, driven or not. */
    phase("WRITE and READ into the undriven target's mapped allocation",
          tcp ? ": not mapped over TCP, left out" : "");
    for (int i = 0; i < (tcp ? 0 : 4); i++)
        check_round(ini, ipeer, &src, &back, NULL, mem_alloc, 0, MCAP, MCAP, "mapped");

    phase("cancel of a 64 MiB WRITE to the undriven target", "");
    {
        ferry_xfer_t *w = prepare(ini, FERRY_OP_WRITE, ipeer, src.p, tbuf.p, BIG);
        ferry_xfer_t *r = prepare(ini, FERRY_OP_READ, ipeer, back.p, tbuf.p + BIG / 2,
                                  BIG / 2);

        test_fill_fast(src.p, BIG, seed, next_iter++, 0);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(r));
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(w, SEC / 5));
        /* A detail text of the caller's that cancel must leave alone. */
        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_test(NULL));
        t0 = xu_now_ns();
        st = ferry_xfer_cancel(w);
        ns = xu_now_ns() - t0;
        printf("  cancel returned %s after %.1f ms\n", ferry_status_str(st), ns / 1e6);
        EXPECT_ST(FERRY_OK, st);
        EXPECT_TRUE(ns < (uint64_t)CANCEL_NS);
        EXPECT_ERR_HAS("xfer_test: NULL request");
        EXPECT_ST(FERRY_ERR_CANCELED, ferry_xfer_test(w));
        EXPECT_ERR_HAS("xfer_cancel: the request was canceled");
        /* The READ beside it ended too, saying why. */
        EXPECT_ST(FERRY_ERR_CANCELED, ferry_xfer_test(r));
        EXPECT_ERR_HAS("xfer_cancel of another request");
        ferry_xfer_release(w);
        ferry_xfer_release(r);
    }

    phase("stall timeout of a 64 MiB WRITE to the undriven target", "");
    {
        ferry_xfer_t *w = prepare(sti, FERRY_OP_WRITE, speer, ssrc.p, tbuf.p, BIG);

        test_fill_fast(ssrc.p, BIG, seed, next_iter++, 0);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        t0 = xu_now_ns();
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(w, 60 * SEC));
        ns = xu_now_ns() - t0;
        EXPECT_ERR_HAS("stall timeout");
        printf("  stall reported after %.0f ms (stall timeout %lld ms)\n", ns / 1e6,
               STALL_NS / 1000000);
        EXPECT_TRUE(ns < (uint64_t)STALL_LATE_NS);
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_test(w));
        t0 = xu_now_ns();
        ferry_xfer_release(w);
        EXPECT_TRUE(xu_now_ns() - t0 < (uint64_t)CANCEL_NS);
    }

    phase("release of a 64 MiB WRITE and a READ in flight to the undriven target", "");
    {
        ferry_xfer_t *w = prepare(ini, FERRY_OP_WRITE, ipeer, src.p, tbuf.p, BIG);
        ferry_xfer_t *r = prepare(ini, FERRY_OP_READ, ipeer, back.p, tbuf.p, BIG);

        test_fill_fast(src.p, BIG, seed, next_iter++, 0);
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(w));
        ASSERT_ST(FERRY_IN_PROGRESS, ferry_xfer_post(r));
        t0 = xu_now_ns();
        ferry_xfer_release(w);
        ferry_xfer_release(r);
        ns = xu_now_ns() - t0;
        printf("  release took %.1f ms\n", ns / 1e6);
        EXPECT_TRUE(ns < (uint64_t)CANCEL_NS);
    }

    /*
     * The target is driven from now on. The canceled WRITEs' bytes may
     * still land in the first half of its buffer (ferry.h allows it); the
     * checks use the second half, through the connections that were
     * aborted, which the next post reopens.
     */
    phase("the same connections once the target is driven", "");
    atomic_store(&driving, 1);
    for (int i = 0; i < 3; i++) {
        check_round(ini, ipeer, &src, &back, target, tbuf.p, BIG, TCAP, BIG,
                    "initiator, driven");
        check_round(sti, speer, &ssrc, &sback, target, tbuf.p, BIG, TCAP, BIG,
                    "stall agent, driven");
    }
    /* A full 64 MiB WRITE through the emulated put, now served. */
    check_round(ini, ipeer, &src, &back, target, tbuf.p, BIG, TCAP, BIG, "64 MiB, driven");
    /* Cancel while the target serves: its worker is mid-way through the
     * WRITE when the connection's worker goes. Bytes may land late in the
     * first half; the second half is checked. */
    phase("cancel of 64 MiB WRITEs while the target is driven", "");
    for (int i = 0; i < 10; i++) {
        ferry_xfer_t *w = prepare(ini, FERRY_OP_WRITE, ipeer, src.p, tbuf.p, BIG);

        st = ferry_xfer_post(w);
        usleep((useconds_t)test_rand_range(&rng, 0, 20000));
        EXPECT_ST(FERRY_OK, ferry_xfer_cancel(w));
        st = ferry_xfer_test(w);
        EXPECT_TRUE(st == FERRY_OK || st == FERRY_ERR_CANCELED);
        ferry_xfer_release(w);
        check_round(ini, ipeer, &src, &back, target, tbuf.p, BIG, TCAP, BIG / 8,
                    "after a cancel");
    }
    atomic_store(&driving, 0);

    /* A same-process target with a progress thread serves on its own. */
    phase("a 64 MiB WRITE to a same-process target with a progress thread", "");
    ASSERT_ST(FERRY_OK, ferry_agent_create(&pp, &served));
    served_buf = buf_new(served, BIG);
    ASSERT_ST(FERRY_OK, test_exchange(ini, served, &served_peer));
    {
        uint64_t iter = next_iter++;
        ferry_xfer_t *w = prepare(ini, FERRY_OP_WRITE, served_peer, src.p, served_buf.p,
                                  BIG);

        test_fill_fast(src.p, BIG, seed, iter, 0);
        EXPECT_ST(FERRY_OK, xu_post_wait(w, 60 * SEC));
        EXPECT_ST(FERRY_OK, ferry_agent_progress(served)); /* orders our reads */
        EXPECT_EQ(UINT64_MAX, test_verify_fast(served_buf.p, BIG, seed, iter, 0));
        EXPECT_ST(FERRY_OK, ferry_agent_progress(served)); /* before it writes again */
        ferry_xfer_release(w);
    }
    for (int i = 0; i < 3; i++)
        check_round(ini, served_peer, &src, &back, served, served_buf.p, 0, BIG, BIG,
                    "served");
    phase("done", "");

    atomic_store(&quit, 1);
    pthread_join(driver, NULL);
    ferry_peer_forget(served_peer);
    ferry_peer_forget(ipeer);
    ferry_peer_forget(speer);
    buf_free(&src);
    buf_free(&back);
    buf_free(&ssrc);
    buf_free(&sback);
    buf_free(&served_buf);
    ferry_agent_destroy(ini);
    ferry_agent_destroy(sti);
    ferry_agent_destroy(served);
    buf_free(&tbuf);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mreg));
    EXPECT_ST(FERRY_OK, ferry_mem_free(target, mem_alloc));
    ferry_agent_destroy(target);
    return test_finish("test_same_process");
}
