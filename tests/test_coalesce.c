/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Merging at prepare: descriptors that continue each other in both address
 * spaces through the same registrations become one segment, and nothing
 * else does (out of order, a gap on either side, a registration boundary).
 * The merged request still moves exactly its bytes. In one process, with a
 * loopback peer; reads the request's private segment count.
 */
#include "core/core.h"
#include "xfer_util.h"

#define BLK 4096u
#define N 64u
#define WAIT_NS (10ll * 1000 * 1000 * 1000)

static ferry_agent_t *agent;
static ferry_peer_t *peer;

/* Prepares a WRITE of n pairs and returns its segment count. */
static size_t segs_of(const ferry_desc_t *l, const ferry_desc_t *r, size_t n,
                      ferry_xfer_t **keep)
{
    ferry_xfer_t *x;
    size_t nsegs;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, n, peer, r, n,
                                           NULL, &x));
    nsegs = x->nsegs;
    if (keep != NULL)
        *keep = x;
    else
        ferry_xfer_release(x);
    return nsegs;
}

int main(void)
{
    /* One buffer, registered as two regions that touch: [0, 4N) and
     * [4N, 8N) blocks; sources in the first, destinations in the second. */
    uint8_t *buf = xu_alloc_buf(8 * N * BLK);
    ferry_desc_t regs[2] = {
        {(uintptr_t)buf, 4 * N * BLK, FERRY_MEM_HOST, 0},
        {(uintptr_t)buf + 4 * N * BLK, 4 * N * BLK, FERRY_MEM_HOST, 0}};
    ferry_desc_t l[N], r[N];
    ferry_mem_t *mem;
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, regs, 2, &mem));
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));

#define PAIR(i, loff, roff)                                                   \
    do {                                                                      \
        l[i] = (ferry_desc_t){(uintptr_t)buf + (loff), BLK, FERRY_MEM_HOST, 0}; \
        r[i] = (ferry_desc_t){(uintptr_t)buf + 4 * N * BLK + (roff), BLK,     \
                              FERRY_MEM_HOST, 0};                             \
    } while (0)

    /* In order on both sides: one segment. */
    for (size_t i = 0; i < N; i++)
        PAIR(i, i * BLK, i * BLK);
    EXPECT_EQ(1, segs_of(l, r, N, NULL));
    /* Reversed: neighbours in memory, but each continues none before it. */
    for (size_t i = 0; i < N; i++)
        PAIR(i, (N - 1 - i) * BLK, (N - 1 - i) * BLK);
    EXPECT_EQ(N, segs_of(l, r, N, NULL));
    /* A one-byte gap remotely, then locally: nothing merges. */
    for (size_t i = 0; i < N; i++)
        PAIR(i, i * BLK, i * (BLK + 1));
    EXPECT_EQ(N, segs_of(l, r, N, NULL));
    for (size_t i = 0; i < N; i++)
        PAIR(i, i * (BLK + 1), i * BLK);
    EXPECT_EQ(N, segs_of(l, r, N, NULL));
    /* Two runs of N/2, the second starting elsewhere: two segments. */
    for (size_t i = 0; i < N; i++)
        PAIR(i, i * BLK, i * BLK + (i >= N / 2 ? 2 * N * BLK : 0));
    EXPECT_EQ(2, segs_of(l, r, N, NULL));
    /* Across the boundary of the two registrations (source side runs from
     * the end of the first region into the second): split there. */
    ferry_desc_t lb[2] = {{(uintptr_t)buf + 4 * N * BLK - BLK, BLK, FERRY_MEM_HOST, 0},
                          {(uintptr_t)buf + 4 * N * BLK, BLK, FERRY_MEM_HOST, 0}};
    ferry_desc_t rb[2] = {{(uintptr_t)buf, BLK, FERRY_MEM_HOST, 0},
                          {(uintptr_t)buf + BLK, BLK, FERRY_MEM_HOST, 0}};
    EXPECT_EQ(2, segs_of(lb, rb, 2, NULL));

    /* The merged request moves exactly the N blocks. */
    for (size_t i = 0; i < N; i++)
        PAIR(i, i * BLK, i * BLK);
    test_fill_fast(buf, 8 * N * BLK, 0xc0a1e5ull, 0, 0);
    test_fill_fast(buf, N * BLK, 0xc0a1e5ull, 1, 0);
    EXPECT_EQ(1, segs_of(l, r, N, &x));
    EXPECT_ST(FERRY_OK, xu_post_wait(x, WAIT_NS));
    EXPECT_EQ(UINT64_MAX, test_verify_fast(buf + 4 * N * BLK, N * BLK, 0xc0a1e5ull, 1, 0));
    EXPECT_EQ(UINT64_MAX, test_verify_fast(buf + 5 * N * BLK, 3 * N * BLK, 0xc0a1e5ull,
                                           0, 5 * N * BLK));
    ferry_xfer_release(x);

    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    free(buf);
    return test_finish("test_coalesce");
}
