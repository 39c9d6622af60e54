/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Waiting without spinning, with a passive target: the shared serving
 * target (target.h) with a progress thread, whose main thread only sleeps
 * on its control socket, so every transfer into its memory is served by
 * that thread. The initiator stops the target (SIGSTOP) so that a WRITE
 * cannot finish, and checks:
 *  - a short wait returns TIMEOUT and leaves the request valid;
 *  - a wait that lasts a second or more costs the waiting thread under 5%
 *    of a core when it has its core to itself, and under 30% of the CPU
 *    that a thread which only spins beside it, on the same core, gets over
 *    the same time; a loop of ferry_xfer_test over the same stall gets more
 *    than 30% of what that spinning thread gets (about as much), which
 *    shows the measure can fail;
 *  - after SIGCONT the same request completes and the target holds every
 *    byte, at the random offset the request names, and nothing outside it
 *    changed.
 * Why a reference thread: on a loaded machine a spinning loop gets only
 * its share of a core (7.5% at a load average of 9 on two cores), so the
 * 5% bound against wall time alone cannot tell a spinning wait from a
 * sleeping one there, while the ratio between the waiting thread and a
 * spinning thread that competes with the same load at the same moment
 * can (both run on one core, so that they meet the same competition): a
 * spinning wait gets about what the reference gets, a sleeping one
 * a fixed cost per second (about 0.5% of a core here: it wakes every
 * millisecond), far below the reference's share unless the machine is
 * loaded a hundred times over. Neither bound can be failed by load: load
 * only takes CPU away from the waiting thread, and from the reference as
 * much as from a spinning wait. (A wait that spins but yields the core at
 * every turn costs as little as a sleeping one on a saturated machine;
 * the 5% bound of the wait alone catches it wherever a core is free.) A
 * stall beside the reference lasts until the reference has had enough CPU
 * time to judge by, or a time limit.
 */
#include "target.h"

#include <pthread.h>
#include <sched.h>

#define LEN (8u << 20)
/* The bound is 5% of a core; a sanitizer's instrumentation makes
 * every wake-up several times dearer, so sanitized builds get looser ones
 * that are still far from a spinning wait's ~100%. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MAX_WAIT_CPU 0.25
#define SPIN_SHARE 0.5
#define REF_FLOOR 0.08
#else
#define MAX_WAIT_CPU 0.05
#define SPIN_SHARE 0.3
#define REF_FLOOR 0.02
#endif
/* The sleeping wait must get less than SPIN_SHARE of the reference's CPU,
 * a loop of ferry_xfer_test more (it competes for the cores exactly as the
 * reference does). Judged where the reference got at least REF_FLOOR of a
 * core: below that (a load of a hundred on two cores) a sleeping wait's
 * fixed cost of wake-ups is as large as a spinning thread's share, and
 * only MAX_WAIT_CPU applies. */
#define MIN_WALL_S 1.0     /* the stall lasts at least this long */
#define MIN_REF_CPU_S 0.2 /* and until the reference has had this much CPU */
/* or this long at most: well inside the agent's default stall timeout
 * (10 s without headway ends a request). */
#define MAX_WALL_S 6.0
#define SEC 1000000000ll

static uint64_t seed;
static xt_target_t tgt;

/* The reference: spins beside the measured thread for the stall, then
 * resumes the target. */
typedef struct reference {
    pid_t pid;
    int spin;         /* 0: only sleeps for MIN_WALL_S */
    double cpu, wall; /* what it got, and over how long */
} reference_t;

static void *reference_spin(void *arg)
{
    reference_t *r = arg;
    double t0 = xu_now_s(), c0 = xu_thread_cpu_s();
    volatile uint64_t spins = 0;

    while (!r->spin) {
        struct timespec ts = {(time_t)MIN_WALL_S, 0};

        if (nanosleep(&ts, NULL) == 0) {
            r->wall = xu_now_s() - t0;
            kill(r->pid, SIGCONT);
            return NULL;
        }
    }
    for (;;) {
        for (int i = 0; i < 100000; i++)
            spins++;
        r->wall = xu_now_s() - t0;
        r->cpu = xu_thread_cpu_s() - c0;
        if ((r->wall >= MIN_WALL_S && r->cpu >= MIN_REF_CPU_S) || r->wall >= MAX_WALL_S)
            break;
    }
    kill(r->pid, SIGCONT);
    return NULL;
}

/* Stops the target, posts, and measures a wait (or a test loop) that lasts
 * until the reference resumes the target; with alone, the reference only
 * sleeps for a second and the wait has its core to itself. Returns the
 * waiting thread's CPU time over the reference's, and in *core_p over the
 * wall time. */
static double stalled_wait(ferry_xfer_t *x, uint8_t *src, uint64_t len, uint64_t iter,
                           int spin, int alone, double *core_p, double *ref_share_p)
{
    reference_t ref = {tgt.pid, !alone, 0, 0};
    cpu_set_t saved, one;
    pthread_t th;
    double t0, c0, wall, cpu;
    ferry_status_t st;
    long bad;

    test_fill_fast(src, len, seed, iter, 0);
    xu_stop_child(tgt.pid);
    st = ferry_xfer_post(x);
    ASSERT_TRUE(st == FERRY_IN_PROGRESS);
    if (!spin) {
        /* A stopped peer: a short wait times out, the request stays valid. */
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(x, SEC / 5));
        EXPECT_ST(FERRY_ERR_BUSY, ferry_xfer_post(x));
    }
    /* Both threads on one core, the one this thread runs on: they then
     * compete with the same load, whatever the other cores carry (two
     * spinning threads on differently loaded cores can get shares 4x
     * apart). The reference inherits the affinity. */
    ASSERT_TRUE(pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0);
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (!alone)
        ASSERT_TRUE(pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0);
    /* The clocks start before the reference does: on a loaded machine this
     * thread may lose its core for a long while right after creating it,
     * and the stall, which the reference ends, must not look shorter than
     * it was. */
    t0 = xu_now_s();
    c0 = xu_thread_cpu_s();
    ASSERT_TRUE(pthread_create(&th, NULL, reference_spin, &ref) == 0);
    if (spin) {
        while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS)
            ;
    } else {
        st = ferry_xfer_wait(x, 60 * SEC);
    }
    cpu = xu_thread_cpu_s() - c0;
    wall = xu_now_s() - t0;
    pthread_join(th, NULL);
    ASSERT_TRUE(pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved) == 0);
    /* SIGCONT was sent; the target runs again (or the wait above failed). */
    EXPECT_ST(FERRY_OK, st);
    bad = xt_check(&tgt, 0, 0, LEN, iter, XU_GUARD_ITER, spin ? "after the test loop"
                                                              : "after the wait");
    EXPECT_EQ(0, bad);
    if (alone)
        printf("ferry_xfer_wait alone: %.3f s of wall time, %.3f s of the waiting "
               "thread's CPU (%.1f%% of a core)\n", wall, cpu, 100.0 * cpu / wall);
    else
        printf("%s: %.3f s of wall time, %.3f s of the waiting thread's CPU (%.1f%% of "
               "a core); the spinning reference beside it: %.3f s in %.3f s (%.1f%% of "
               "a core); waiting/reference %.3f\n",
               spin ? "test loop" : "ferry_xfer_wait", wall, cpu, 100.0 * cpu / wall,
               ref.cpu, ref.wall, 100.0 * ref.cpu / ref.wall, cpu / ref.cpu);
    EXPECT_TRUE(wall >= MIN_WALL_S * 0.9);
    *core_p = cpu / wall;
    if (alone)
        return 0;
    EXPECT_TRUE(ref.cpu > 0);
    *ref_share_p = ref.cpu / ref.wall;
    return ref.cpu > 0 ? cpu / ref.cpu : 1.0;
}

int main(void)
{
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    ferry_xfer_t *x;
    uint8_t *src, *from;
    uint64_t len, roff;
    test_rng_t rng;
    xt_opts_t to = {.name = "wait-target", .progress_thread = 1, .nbuf = 1,
                    .buf = {{XM_HOST, LEN, 0, 0}}};
    ferry_desc_t l, r;
    double sleeping, spinning, core, loop_core, ref_share, loop_ref_share;

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0x5a17);
    rng.s = seed;
    to.seed = seed;
    printf("test_wait: seed %" PRIu64 " (FERRY_TEST_SEED replays it)\n", seed);
    ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    alarm(120); /* a hang fails the test instead of stalling the suite */

    src = xu_alloc_buf(LEN);
    l = (ferry_desc_t){(uintptr_t)src, LEN, FERRY_MEM_HOST, 0};
    /* One request, between random unaligned places of the two buffers. */
    len = test_rand_range(&rng, LEN / 2, LEN - 4096);
    roff = test_rand_range(&rng, 0, LEN - len);
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &l, 1, &mem));
    l.addr += test_rand_range(&rng, 0, LEN - len);
    l.len = len;
    from = (uint8_t *)(uintptr_t)l.addr;
    ASSERT_TRUE(xt_connect(&tgt, agent, &peer) == 0);
    ASSERT_TRUE(tgt.buf[0].reg == LEN);
    /* The target's buffer: the guard pattern around the request's range. */
    ASSERT_TRUE(xt_pattern(&tgt, 0, 0, LEN, XU_GUARD_ITER) == 0);
    ASSERT_TRUE(xt_range(&tgt, 0, roff, len, 0) == 0);
    r = (ferry_desc_t){tgt.buf[0].addr + roff, len, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));

    /* A warm-up transfer connects and checks the passive target serves it. */
    test_fill_fast(from, len, seed, 0, 0);
    EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
    EXPECT_EQ(0, xt_check(&tgt, 0, 0, LEN, 0, XU_GUARD_ITER, "after the warm-up"));

    (void)stalled_wait(x, from, len, 1, 0, 1, &core, &ref_share);
    sleeping = stalled_wait(x, from, len, 2, 0, 0, &loop_core, &ref_share);
    spinning = stalled_wait(x, from, len, 3, 1, 0, &loop_core, &loop_ref_share);
    if (loop_ref_share < ref_share)
        ref_share = loop_ref_share;
    if (core >= MAX_WAIT_CPU)
        TEST_FAIL_AT_("the sleeping wait used %.3f of a core alone (at most %.2f "
                      "allowed)", core, MAX_WAIT_CPU);
    if (ref_share < REF_FLOOR) {
        printf("the reference got %.1f%% of a core, under %.0f%%: too busy a machine to "
               "compare with it; only the %.0f%% bound applied\n", 100.0 * ref_share,
               100.0 * REF_FLOOR, 100.0 * MAX_WAIT_CPU);
    } else {
        if (sleeping >= SPIN_SHARE)
            TEST_FAIL_AT_("the sleeping wait used %.3f of the CPU a spinning thread got "
                          "beside it (at most %.2f allowed)", sleeping, SPIN_SHARE);
        if (spinning <= SPIN_SHARE)
            TEST_FAIL_AT_("a loop of ferry_xfer_test got only %.3f of the reference's "
                          "CPU (%.3f of a core; more than %.2f of the reference's "
                          "expected): the measure is broken", spinning, loop_core,
                          SPIN_SHARE);
    }
    ferry_xfer_release(x);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(src);
    EXPECT_TRUE(xt_quit(&tgt) == 0);
    return test_finish("test_wait");
}
