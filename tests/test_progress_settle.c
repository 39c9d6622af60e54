/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry_agent_progress() settles on a target whose initiator gave up a
 * transfer: an event loop calls it until it returns FERRY_OK and then
 * sleeps on ferry_agent_fd(), so a progress that keeps returning
 * FERRY_IN_PROGRESS while ferry has nothing left that more progress would
 * advance makes that loop spin.
 *
 * The target is the serving target (test_target) without a progress
 * thread, driven only by its own calls. Each round this process creates an
 * agent, WRITEs random bytes to a random range of the target (checked by
 * the target byte for byte), then posts a 64 MiB WRITE and cancels it
 * mid-way, so that the rest of it is still in the transport on either side
 * (over UCX's TCP transport the target replies to every emulated put, to a
 * worker that the cancel retired and no one progresses; over shared
 * memory to a FIFO that nobody reads once the worker is gone). The target
 * then calls ferry_agent_progress() until it returns FERRY_OK: it must
 * end within 10 s, and the number of calls is printed. Then either the
 * initiator keeps its agent ("keep": the same connection must move fresh
 * random bytes again) or destroys it
 * ("destroy": its side is gone, as when it exits), after which the target
 * must settle again. Before ferry_agent_progress() answered FERRY_OK for
 * transports that stay busy without moving, the target's third "keep"
 * round over shared memory returned FERRY_IN_PROGRESS 5.3 million times in
 * 10 s. The initiator destroys its agent only once the target has settled:
 * over TCP, a target still reading the canceled WRITE when the initiator's
 * sockets close dies in UCX 1.13 ("Endpoint timeout" in ucp_put_handler),
 * a limit ferry/xfer.h names. All of it runs twice, each time against a
 * target of its own: first plainly, then with the target's
 * ferry_agent_fd() taken (each call that finds nothing then arms the
 * transports; taking it cannot be undone, so the plain settles come from
 * a target that never took it).
 *
 * Argument: "tcp" sets UCX_TLS=tcp for both processes; otherwise UCX's
 * defaults (shared memory on one host). FERRY_TEST_ITERS sets the rounds
 * of each kind (4). Exit 77 where no UCX transport serves.
 */
#include "target.h"

#define BIG (64ull << 20)
#define TCAP (2 * BIG)
#define SEC 1000000000ll
#define SETTLE_MS 10000

static xt_target_t target;
static uint64_t seed;
static test_rng_t rng;
static long most_calls;

/* WRITEs random bytes (pattern iter) to a random range of the target's
 * buffer through peer, and has the target check the range and the guard
 * bytes around it. */
static void checked_write(ferry_agent_t *agent, ferry_peer_t *peer, uint8_t *src,
                          uint64_t iter)
{
    uint64_t len = test_rand_range(&rng, 1, 1u << 20);
    uint64_t off = test_rand_range(&rng, 0, TCAP - len);
    ferry_desc_t l = {(uintptr_t)src, len, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {target.buf[0].addr + off, len, FERRY_MEM_HOST, 0};
    ferry_xfer_t *x;

    uint64_t lo = off > 4096 ? off - 4096 : 0;
    uint64_t hi = TCAP - (off + len) > 4096 ? off + len + 4096 : TCAP;

    /* A window around the range holds the guard pattern but for it. */
    ASSERT_TRUE(xt_pattern(&target, 0, lo, hi, XU_GUARD_ITER) == 0);
    test_fill_fast(src, len, seed, iter, 0);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));
    EXPECT_ST(FERRY_OK, xu_post_wait(x, 60 * SEC));
    ferry_xfer_release(x);
    ASSERT_TRUE(xt_range(&target, 0, off, len, 0) == 0);
    EXPECT_EQ(0, xt_check(&target, 0, lo, hi, iter, XU_GUARD_ITER, "WRITE"));
}

/* Posts a 64 MiB WRITE and cancels it after a random moment. */
static void canceled_write(ferry_agent_t *agent, ferry_peer_t *peer, uint8_t *src)
{
    ferry_desc_t l = {(uintptr_t)src, BIG, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {target.buf[0].addr + test_rand_range(&rng, 0, BIG), BIG,
                      FERRY_MEM_HOST, 0};
    uint64_t end = xu_now_ns() + test_rand_range(&rng, 0, 5000000);
    ferry_xfer_t *x;
    ferry_status_t st;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));
    st = ferry_xfer_post(x);
    EXPECT_TRUE(st == FERRY_IN_PROGRESS || st == FERRY_OK);
    while (xu_now_ns() < end && ferry_xfer_test(x) == FERRY_IN_PROGRESS)
        ;
    st = ferry_xfer_cancel(x);
    EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
    st = ferry_xfer_wait(x, 30 * SEC);
    EXPECT_TRUE(st == FERRY_ERR_CANCELED || st == FERRY_OK);
    ferry_xfer_release(x);
}

/* The target settles (fd: with its fd taken). */
static void settle(int fd, const char *kind, long round, const char *when)
{
    uint64_t t0 = xu_now_ns();
    long calls = xt_settle(&target, SETTLE_MS, fd);

    printf("test_progress_settle: %s, round %ld%s%s: the target's progress "
           "returned FERRY_OK after %ld calls, %.1f ms\n", kind, round, when,
           fd ? ", fd taken" : "", calls, (double)(xu_now_ns() - t0) / 1e6);
    if (calls < 0)
        TEST_FAIL_AT_("%s, round %ld%s: ferry_agent_progress on the target still "
                      "returned FERRY_IN_PROGRESS after %d ms%s", kind, round, when,
                      SETTLE_MS, fd ? " (fd taken)" : "");
    most_calls = calls > most_calls ? calls : most_calls;
}

/*
 * Every round of both kinds against a target of its own (fd: the target
 * takes its fd first): 0, or 77 where no UCX transport serves.
 */
static int run(int fd, const xt_opts_t *to, uint8_t *src, long rounds, uint64_t *iter)
{
    ASSERT_TRUE(xt_start(&target, to) == 0);
    for (int destroy = 0; destroy < 2; destroy++) {
        const char *kind = destroy ? "destroy" : "keep";

        for (long round = 0; round < rounds && !test_failures; round++) {
            ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                                       .name = "settle-initiator"};
            ferry_agent_t *agent;
            ferry_peer_t *peer;
            ferry_mem_t *mem;
            ferry_status_t st = ferry_agent_create(&ap, &agent);

            if (st == FERRY_ERR_BACKEND || st == FERRY_ERR_UNSUPPORTED) {
                printf("test_progress_settle: no UCX (%s): skipped\n", ferry_last_error());
                xt_kill(&target);
                return 77;
            }
            ASSERT_ST(FERRY_OK, st);
            if (round == 0 && destroy == 0)
                ASSERT_TRUE(xt_connect(&target, agent, &peer) == 0);
            else
                ASSERT_TRUE(xt_load(&target, agent, &peer) == 0);
            ferry_desc_t d = {(uintptr_t)src, BIG, FERRY_MEM_HOST, 0};
            ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));

            checked_write(agent, peer, src, (*iter)++);
            canceled_write(agent, peer, src);
            settle(fd, kind, round, "");
            if (destroy) {
                EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
                ferry_peer_forget(peer);
                ferry_agent_destroy(agent);
                settle(fd, kind, round, ", the initiator's agent destroyed");
                continue;
            }
            /* The connection the cancel ended reopens and moves bytes. */
            checked_write(agent, peer, src, (*iter)++);
            EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
            ferry_peer_forget(peer);
            ferry_agent_destroy(agent);
        }
    }
    EXPECT_TRUE(xt_quit(&target) == 0);
    return 0;
}

int main(int argc, char **argv)
{
    int tcp = argc > 1 && strcmp(argv[1], "tcp") == 0;
    xt_opts_t to = {.name = "settle-target", .progress_thread = 0, .drive = 1,
                    .nbuf = 1, .buf = {{XM_HOST, TCAP, 0, 0}}};
    long rounds = xu_env_long("FERRY_TEST_ITERS", 4);
    uint8_t *src;
    uint64_t iter = 1;

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0x5e771eull);
    rng.s = seed;
    printf("test_progress_settle: seed %" PRIu64 " (set FERRY_TEST_SEED to replay), "
           "%s\n", seed, tcp ? "UCX_TLS=tcp" : "UCX's default transports");
    if (tcp)
        setenv("UCX_TLS", "tcp", 1);
    to.seed = seed;
    alarm(240);
    src = xu_alloc_buf(BIG);
    for (int fd = 0; fd < 2 && !test_failures; fd++) {
        if (run(fd, &to, src, rounds, &iter) == 77) {
            free(src);
            return 77;
        }
    }
    printf("test_progress_settle: at most %ld calls of ferry_agent_progress before "
           "FERRY_OK\n", most_calls);
    free(src);
    return test_finish(tcp ? "test_progress_settle tcp" : "test_progress_settle");
}
