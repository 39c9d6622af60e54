/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A target served over UCX's TCP transport survives stalls: 20 rounds of a
 * 64 MiB WRITE to the serving target (test_target, progress thread), with
 * UCX_TLS=tcp in the environment of both processes as a user would set it.
 * In each round the target is stopped (SIGSTOP) while the WRITE is under
 * way, for long enough that the initiator's stall timeout ends the WRITE
 * and closes the connection, then resumed (SIGCONT), so that it finds the
 * rest of the aborted WRITE in its sockets. The next post reopens the
 * connection, and the WRITE must then arrive whole: the target checks the
 * 64 MiB range byte for byte. Every round also reads a random range back
 * into this process. No process may die: before the aborted connection's
 * worker was kept (src/backends/ucx/conn.c), UCX 1.13 aborted the target
 * in the first round ("unexpected error: Endpoint timeout" in
 * ucp_put_handler). The rounds outnumber the workers a connection keeps,
 * so the oldest are destroyed on the way.
 *
 * With the argument "ferry" the transports come from FERRY_UCX_TLS=tcp
 * instead. FERRY_TEST_ITERS sets the number of rounds.
 *
 * With the argument "keepalive", one round with a stall timeout of 21 s,
 * longer than UCP's keepalive interval (20 s by default in UCX 1.13): the
 * stall timeout must end the stopped WRITE within a few seconds of its
 * 21 s, and after the resume the WRITE must land whole. UCP's keepalive
 * counted as headway, one check per interval, so this WRITE waited as
 * long as the target was stopped; ferry now turns keepalive off
 * (src/backends/ucx/ucx.c).
 */
#include "target.h"

#define BIG (64ull << 20)
#define TCAP (2 * BIG)
#define SEC 1000000000ll
#define STALL_NS (SEC / 4)

#define KA_STALL_NS (21 * SEC)

static int retries;

/* Posts x until it is not ended by the stall timeout: the resumed target
 * may first be busy with what it found in its sockets, for longer than the
 * short stall timeout on a loaded machine. */
static ferry_status_t post_wait(ferry_xfer_t *x)
{
    ferry_status_t st;

    for (int tries = 0; (st = xu_post_wait(x, 60 * SEC)) == FERRY_ERR_TIMEOUT && tries < 10;
         tries++)
        retries++;
    return st;
}

/* "keepalive": a WRITE to the stopped target (at off) ends by the stall
 * timeout, not before it and not much after it; resumed, the target gets
 * it whole. */
static void keepalive_case(ferry_agent_t *agent, ferry_peer_t *peer, xt_target_t *target,
                           uint8_t *src, uint64_t seed, uint64_t off)
{
    ferry_desc_t l = {(uintptr_t)src, BIG, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {target->buf[0].addr + off, BIG, FERRY_MEM_HOST, 0};
    ferry_xfer_t *w;
    ferry_status_t st;
    uint64_t t0;
    double took;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &w));
    test_fill_fast(src, BIG, seed, 1, 0);
    /* Stopped before the post: nothing of the WRITE can finish. */
    xu_stop_child(target->pid);
    t0 = xu_now_ns();
    st = ferry_xfer_post(w);
    EXPECT_TRUE(st == FERRY_IN_PROGRESS);
    st = ferry_xfer_wait(w, KA_STALL_NS + 20 * SEC);
    took = (double)(xu_now_ns() - t0) / 1e9;
    printf("test_tcp_stall keepalive: the WRITE to the stopped target ended with %s "
           "after %.1f s (stall timeout %.0f s)\n", ferry_status_str(st), took,
           (double)KA_STALL_NS / 1e9);
    EXPECT_ST(FERRY_ERR_TIMEOUT, st);
    EXPECT_ERR_HAS("stall timeout");
    EXPECT_TRUE(took >= (double)KA_STALL_NS / 1e9 - 0.5);
    EXPECT_TRUE(took < (double)KA_STALL_NS / 1e9 + 10);
    xu_cont_child(target->pid);
    usleep(50000);
    ASSERT_TRUE(kill(target->pid, 0) == 0);
    EXPECT_ST(FERRY_OK, post_wait(w));
    ASSERT_TRUE(xt_range(target, 0, off, BIG, 0) == 0);
    EXPECT_EQ(0, xt_check(target, 0, off, off + BIG, 1, XU_GUARD_ITER, "WRITE"));
    ferry_xfer_release(w);
}

int main(int argc, char **argv)
{
    int ferry_tls = argc > 1 && strcmp(argv[1], "ferry") == 0;
    int keepalive = argc > 1 && strcmp(argv[1], "keepalive") == 0;
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_STALL_TIMEOUT,
                               .name = "tcp-initiator",
                               .stall_timeout_ns = keepalive ? KA_STALL_NS : STALL_NS};
    xt_opts_t to = {.name = "tcp-target", .progress_thread = 1, .nbuf = 1,
                    .buf = {{XM_HOST, TCAP, 0, 0}}};
    long rounds = xu_env_long("FERRY_TEST_ITERS", 20);
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    xt_target_t target;
    test_rng_t rng;
    uint8_t *src, *back;
    uint64_t seed, rbase;
    int stalls = 0, early = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0x7c957a11ull);
    rng.s = seed;
    printf("test_tcp_stall: seed %" PRIu64 " (set FERRY_TEST_SEED to replay), "
           "%ld rounds, %s=tcp\n", seed, rounds, ferry_tls ? "FERRY_UCX_TLS" : "UCX_TLS");
    setenv(ferry_tls ? "FERRY_UCX_TLS" : "UCX_TLS", "tcp", 1);
    to.seed = seed;
    ASSERT_TRUE(xt_start(&target, &to) == 0);
    alarm(280); /* a hang fails the test; the target dies with us */

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_TRUE(xt_connect(&target, agent, &peer) == 0);
    rbase = target.buf[0].addr;
    src = xu_alloc_buf(2 * BIG);
    back = src + BIG;
    {
        ferry_desc_t d = {(uintptr_t)src, 2 * BIG, FERRY_MEM_HOST, 0};

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    }

    /* The connection's first contact completes before any stop: a peer
     * stopped before it answered that still aborts later (UCX 1.13; see
     * the top of src/backends/ucx/conn.c). */
    {
        ferry_desc_t l = {(uintptr_t)src, 4096, FERRY_MEM_HOST, 0};
        ferry_desc_t r = {rbase, 4096, FERRY_MEM_HOST, 0};
        ferry_xfer_t *w;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                               NULL, &w));
        EXPECT_ST(FERRY_OK, xu_post_wait(w, 60 * SEC));
        ferry_xfer_release(w);
    }
    if (keepalive) {
        keepalive_case(agent, peer, &target, src, seed,
                       test_rand_range(&rng, 0, TCAP - BIG));
        rounds = 0;
    }
    for (long round = 0; round < rounds; round++) {
        uint64_t iter = (uint64_t)round + 1;
        uint64_t off = test_rand_range(&rng, 0, TCAP - BIG);
        uint64_t delay_us = test_rand_range(&rng, 0, 20000);
        ferry_desc_t l = {(uintptr_t)src, BIG, FERRY_MEM_HOST, 0};
        ferry_desc_t r = {rbase + off, BIG, FERRY_MEM_HOST, 0};
        ferry_xfer_t *w;
        ferry_status_t st;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                               NULL, &w));
        test_fill_fast(src, BIG, seed, iter, 0);
        st = ferry_xfer_post(w);
        EXPECT_TRUE(st == FERRY_IN_PROGRESS || st == FERRY_OK);
        usleep((useconds_t)delay_us);
        xu_stop_child(target.pid);
        st = ferry_xfer_wait(w, 60 * SEC);
        if (st == FERRY_OK) {
            early++; /* it finished before the stop */
        } else {
            EXPECT_ST(FERRY_ERR_TIMEOUT, st);
            EXPECT_ERR_HAS("stall timeout");
            stalls++;
        }
        /* Let the target find the rest of the aborted WRITE. */
        xu_cont_child(target.pid);
        usleep(50000);
        ASSERT_TRUE(kill(target.pid, 0) == 0);

        /* The same request, posted again, reconnects and lands whole. */
        EXPECT_ST(FERRY_OK, post_wait(w));
        ASSERT_TRUE(xt_range(&target, 0, off, BIG, 0) == 0);
        EXPECT_EQ(0, xt_check(&target, 0, off, off + BIG, iter, XU_GUARD_ITER, "WRITE"));
        ferry_xfer_release(w);

        /* And a random range of it comes back. */
        {
            uint64_t len = test_rand_range(&rng, 1, BIG);
            uint64_t roff = test_rand_range(&rng, 0, BIG - len);
            uint64_t boff = test_rand_range(&rng, 0, BIG - len);
            ferry_desc_t bl = {(uintptr_t)(back + boff), len, FERRY_MEM_HOST, 0};
            ferry_desc_t br = {rbase + off + roff, len, FERRY_MEM_HOST, 0};
            ferry_xfer_t *rx;
            uint64_t bad;

            ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &bl, 1, peer,
                                                   &br, 1, NULL, &rx));
            EXPECT_ST(FERRY_OK, post_wait(rx));
            bad = test_verify_fast(back + boff, len, seed, iter, roff);
            if (bad != UINT64_MAX)
                TEST_FAIL_AT_("round %ld: READ of %" PRIu64 " bytes at %" PRIu64
                              ": byte %" PRIu64 " differs", round, len, off + roff, bad);
            ferry_xfer_release(rx);
        }
        if (test_failures)
            break;
    }
    printf("%d rounds ended by the stall timeout, %d finished before the stop; %d "
           "posts after a resume stalled and were tried again\n", stalls, early, retries);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    free(src);
    ferry_peer_forget(peer);
    ferry_agent_destroy(agent);
    EXPECT_TRUE(xt_quit(&target) == 0);
    return test_finish("test_tcp_stall");
}
