/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry_mem_alloc / ferry_mem_free: memory from UCX's own allocator, moved
 * with one direct copy. A second process (the shared serving target,
 * target.h) allocates, registers part of its allocation and then blocks on
 * its control socket without ever driving its agent, while this process WRITEs into that memory and READs it back. On
 * memory ferry did not allocate, UCX 1.13 emulates one-sided operations
 * between processes with messages that only the target's progress answers,
 * so the transfers completing at all shows the direct path. The bytes that
 * arrive are checked on both sides, and so is every bad input (typed status,
 * detail text).
 */
#include "target.h"

#define LEN (1u << 20)
#define WAIT_NS (5ll * 1000 * 1000 * 1000)
#define ITERS 8
#define SEED 0xa110cull

static void check_bad_inputs(ferry_agent_t *a, ferry_agent_t *b)
{
    void *p = NULL, *q;
    int on_stack;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_alloc(NULL, 4096, FERRY_MEM_HOST, &p));
    EXPECT_ERR_HAS("NULL");
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_alloc(a, 4096, FERRY_MEM_HOST, NULL));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_alloc(a, 0, FERRY_MEM_HOST, &p));
    EXPECT_ERR_HAS("zero length");
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_alloc(a, 4096, FERRY_MEM_AUTO, &p));
    EXPECT_ERR_HAS("kind");
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_alloc(a, 4096, (ferry_mem_kind_t)77, &p));
    EXPECT_ERR_HAS("kind 77");
    EXPECT_TRUE(p == NULL); /* outputs are written only on success */

    /* Without a CUDA driver, CUDA memory is refused with a reason; where
     * there is one, it must also be freed. */
    ferry_status_t st = ferry_mem_alloc(a, 4096, FERRY_MEM_CUDA, &q);
    if (st == FERRY_OK) {
        EXPECT_ST(FERRY_OK, ferry_mem_free(a, q));
    } else {
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, st);
        EXPECT_ERR_HAS("CUDA");
    }

    EXPECT_ST(FERRY_OK, ferry_mem_free(a, NULL));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_free(NULL, &on_stack));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_mem_free(a, &on_stack));
    EXPECT_ERR_HAS("not returned by ferry_mem_alloc");

    /* Another agent's allocation, an inner pointer, a double free. */
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(a, 4096, FERRY_MEM_HOST, &q));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_mem_free(b, q));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_mem_free(a, (uint8_t *)q + 64));
    EXPECT_ST(FERRY_OK, ferry_mem_free(a, q));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_mem_free(a, q));
}

/* Posts x and waits, failing the test (not hanging) on a timeout. */
static void post_wait(ferry_xfer_t *x, const char *what)
{
    ferry_status_t st = xu_post_wait(x, WAIT_NS);

    if (st == FERRY_ERR_TIMEOUT)
        TEST_FAIL_AT_("%s on allocated memory did not complete without the "
                      "target's progress: not a direct copy", what);
    else
        EXPECT_ST(FERRY_OK, st);
}

/* The target allocates LEN bytes with ferry_mem_alloc and registers the
 * first half; it never drives its agent. It must be started before this
 * process touches UCX. */
static void start_target(xt_target_t *t)
{
    xt_opts_t to = {.name = "alloc-target", .seed = SEED, .nbuf = 1,
                    .buf = {{XM_HOST, LEN, LEN / 2, 1}}};

    ASSERT_TRUE(xt_start(t, &to) == 0);
}

static void run_initiator(xt_target_t *t, ferry_agent_t *b)
{
    ferry_mem_t *mb;
    ferry_peer_t *peer;
    ferry_xfer_t *w, *r;
    uint8_t *ib;
    long bad;
    /* One random length, at random places of the target's registered half
     * and of the initiator's two halves (WRITE from the first, READ back
     * into the second). */
    test_rng_t rng = {xu_seed(SEED)};
    uint64_t n = test_rand_range(&rng, LEN / 8, LEN / 2);
    uint64_t roff = test_rand_range(&rng, 0, LEN / 2 - n);
    uint64_t woff = test_rand_range(&rng, 0, LEN / 2 - n);
    uint64_t boff = test_rand_range(&rng, LEN / 2, LEN - n);

    ASSERT_TRUE(xt_connect(t, b, &peer) == 0);
    ASSERT_TRUE(t->buf[0].reg == LEN / 2 && t->buf[0].cap == LEN);
    /* All of the target's allocation, registered or not, starts with the
     * guard pattern: any byte outside the range that changes shows. */
    ASSERT_TRUE(xt_pattern(t, 0, 0, LEN, XU_GUARD_ITER) == 0);
    printf("test_mem_alloc: %" PRIu64 " B from +%" PRIu64 " to the target's +%" PRIu64
           ", back to +%" PRIu64 "\n", n, woff, roff, boff);
    ferry_desc_t rd = {.addr = t->buf[0].addr + roff, .len = n, .kind = FERRY_MEM_HOST};

    /* The initiator's memory is allocated too. */
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(b, LEN, FERRY_MEM_HOST, (void **)&ib));
    ferry_desc_t db = {.addr = (uintptr_t)ib, .len = LEN, .kind = FERRY_MEM_HOST};
    ferry_desc_t lw = {.addr = (uintptr_t)ib + woff, .len = n, .kind = FERRY_MEM_HOST};
    ferry_desc_t lr = {.addr = (uintptr_t)ib + boff, .len = n, .kind = FERRY_MEM_HOST};
    ASSERT_ST(FERRY_OK, ferry_mem_register(b, &db, 1, &mb));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_WRITE, &lw, 1, peer, &rd, 1,
                                           NULL, &w));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_READ, &lr, 1, peer, &rd, 1,
                                           NULL, &r));
    uint64_t it = 0;
    for (; it < ITERS && test_failures == 0; it++) {
        test_fill_fast(ib + woff, n, SEED, it, 0);
        post_wait(w, "WRITE");
        memset(ib + LEN / 2, 0, LEN / 2);
        post_wait(r, "READ");
        EXPECT_EQ(UINT64_MAX, test_verify_fast(ib + boff, n, SEED, it, 0));
        for (uint64_t i = LEN / 2; i < LEN; i++)
            if ((i < boff || i >= boff + n) && ib[i] != 0) {
                TEST_FAIL_AT_("iteration %" PRIu64 ": the READ wrote byte %" PRIu64
                              ", outside its range", it, i);
                break;
            }
    }
    /* The last WRITE's bytes in the range, the guard everywhere else. */
    ASSERT_TRUE(xt_range(t, 0, roff, n, 0) == 0);
    bad = xt_check(t, 0, 0, LEN, it - 1, XU_GUARD_ITER, "test_mem_alloc target");
    if (bad != 0)
        TEST_FAIL_AT_("the target's memory is wrong in %ld ranges or gaps (above)", bad);

    ferry_xfer_release(w);
    ferry_xfer_release(r);
    ferry_peer_forget(peer);
    EXPECT_TRUE(xt_quit(t) == 0);
    EXPECT_ST(FERRY_ERR_BUSY, ferry_mem_free(b, ib));
    EXPECT_ERR_HAS("registration");
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mb));
    EXPECT_ST(FERRY_OK, ferry_mem_free(b, ib));
}

int main(void)
{
    ferry_agent_t *a, *b;
    xt_target_t t;
    void *left;

    start_target(&t);
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &a));
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &b));
    check_bad_inputs(a, b);
    run_initiator(&t, b);
    /* An allocation left to the agent is freed with it (LeakSanitizer in
     * `make sanitize` would report it otherwise). */
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(a, 4096, FERRY_MEM_HOST, &left));
    ferry_agent_destroy(b);
    ferry_agent_destroy(a);
    return test_finish("test_mem_alloc");
}
