/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Copies outside the agent lock. A WRITE or READ into a same-host peer's
 * memory that is mapped here (ferry_mem_alloc on the peer) is copied by the
 * posting thread after the agent's lock is let go. Four threads do that at
 * once on one agent, each in its own slice of the peer's memory (random
 * lengths at random offsets, fresh data each time, and a READ back of the
 * range with GUARD bytes around it checked against what the thread knows is
 * there), while a fifth thread keeps aborting the same connection: it posts
 * a WRITE into memory of the peer's that UCX must emulate (so that it stays
 * in flight) and cancels it, which destroys the connection's worker and its
 * mappings. Every direct copy must succeed with the right bytes: an abort
 * waits for copies already running, and the reconnect that follows maps
 * the peer's memory again (elsewhere) before the next copy uses it.
 */
#include "target.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4
#define SLICE (1u << 20)
#define SLOW_LEN (4u << 20)
#define ITERS 200 /* FERRY_TEST_ITERS lowers it for sanitizers */
#define GUARD 256
#define MAX_ABORTS 40
#define WAIT_NS (20ll * 1000000000ll)

static ferry_agent_t *agent;
static ferry_peer_t *peer;
static uint8_t *src, *back;
static uint64_t rdirect, rslow; /* the peer's regions */
static atomic_int writers_left = THREADS, aborts;
static int iters = ITERS;

static ferry_xfer_t *prep(ferry_xfer_op_t op, uint8_t *local, uint64_t raddr, uint64_t len)
{
    ferry_desc_t l = {(uintptr_t)local, len, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {raddr, len, FERRY_MEM_HOST, 0};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1, NULL, &x));
    return x;
}

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    test_rng_t rng = {(uint64_t)t * 7919 + 3};
    uint8_t *s = src + (size_t)t * SLICE, *b = back + (size_t)t * SLICE;
    uint8_t *shadow = xu_xcalloc(1, SLICE); /* the peer's slice, as it must be */
    uint64_t base = rdirect + (uint64_t)t * SLICE;

    for (int iter = 0; iter < iters; iter++) {
        uint64_t len = test_rand_range(&rng, 1, SLICE);
        uint64_t off = test_rand_range(&rng, 0, SLICE - len);
        uint64_t lo = off > GUARD ? off - GUARD : 0;
        uint64_t hi = off + len + GUARD < SLICE ? off + len + GUARD : SLICE;
        ferry_xfer_t *w = prep(FERRY_OP_WRITE, s + off, base + off, len);
        ferry_xfer_t *r = prep(FERRY_OP_READ, b + lo, base + lo, hi - lo);
        uint64_t bad;

        test_fill(s + off, len, (uint64_t)t, (uint64_t)iter, 0);
        memcpy(shadow + off, s + off, len);
        memset(b + lo, 0xa5, hi - lo);
        ASSERT_ST(FERRY_OK, xu_post_wait(w, WAIT_NS));
        ASSERT_ST(FERRY_OK, xu_post_wait(r, WAIT_NS));
        for (bad = lo; bad < hi && b[bad] == shadow[bad]; bad++)
            ;
        if (bad < hi)
            TEST_FAIL_AT_("thread %d iteration %d: WRITE of %" PRIu64 " B at +%" PRIu64
                          ", READ back of [%" PRIu64 ", %" PRIu64 "): byte %" PRIu64
                          " is 0x%02x, wanted 0x%02x", t, iter, len, off, lo, hi, bad,
                          b[bad], shadow[bad]);
        ferry_xfer_release(w);
        ferry_xfer_release(r);
    }
    free(shadow);
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

/* Aborts the connection again and again while the writers copy. */
static void *aborter(void *arg)
{
    uint8_t *junk = xu_alloc_buf(SLOW_LEN);
    ferry_desc_t d = {(uintptr_t)junk, SLOW_LEN, FERRY_MEM_HOST, 0};
    ferry_mem_t *mem;
    ferry_xfer_t *x;

    (void)arg;
    memset(junk, 0x5a, SLOW_LEN);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    x = prep(FERRY_OP_WRITE, junk, rslow, SLOW_LEN);
    while (atomic_load(&writers_left) > 0 && atomic_load(&aborts) < MAX_ABORTS) {
        ferry_status_t st = ferry_xfer_post(x);

        if (st == FERRY_IN_PROGRESS) {
            st = ferry_xfer_cancel(x);
            EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
            st = ferry_xfer_wait(x, WAIT_NS);
            EXPECT_TRUE(st == FERRY_OK || st == FERRY_ERR_CANCELED);
            if (st == FERRY_ERR_CANCELED)
                atomic_fetch_add(&aborts, 1);
        } else {
            EXPECT_ST(FERRY_OK, st);
        }
        usleep(20000); /* let the writers post in between */
    }
    ferry_xfer_release(x);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    free(junk);
    return NULL;
}

int main(void)
{
    /* The peer: its direct buffer from ferry_mem_alloc (mapped here), its
     * slow one ordinary memory, whose WRITEs its progress thread serves. */
    xt_opts_t o = {.name = "direct-target", .progress_thread = 1, .seed = 1, .nbuf = 2,
                   .buf = {{XM_HOST, (uint64_t)THREADS * SLICE, 0, 1},
                           {XM_HOST, SLOW_LEN, 0, 0}}};
    xt_target_t tg;
    ferry_desc_t d[2];
    ferry_mem_t *mem;
    pthread_t th[THREADS], ab;
    long it = xu_env_long("FERRY_TEST_ITERS", ITERS);

    if (it > 0 && it < ITERS)
        iters = (int)it;
    ASSERT_TRUE(xt_start(&tg, &o) == 0);
    src = xu_alloc_buf((size_t)THREADS * SLICE);
    back = xu_alloc_buf((size_t)THREADS * SLICE);
    d[0] = (ferry_desc_t){(uintptr_t)src, (uint64_t)THREADS * SLICE, FERRY_MEM_HOST, 0};
    d[1] = (ferry_desc_t){(uintptr_t)back, (uint64_t)THREADS * SLICE, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 2, &mem));
    ASSERT_TRUE(xt_connect(&tg, agent, &peer) == 0);
    rdirect = tg.buf[0].addr;
    rslow = tg.buf[1].addr;

    ASSERT_TRUE(pthread_create(&ab, NULL, aborter, NULL) == 0);
    for (intptr_t t = 0; t < THREADS; t++)
        ASSERT_TRUE(pthread_create(&th[t], NULL, writer, (void *)t) == 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_join(ab, NULL);
    printf("test_direct: %d x %d direct WRITE+READ pairs checked, %d aborts of "
           "their connection meanwhile\n", THREADS, iters, atomic_load(&aborts));
    /* The test means nothing if no abort overlapped the copies. */
    EXPECT_TRUE(atomic_load(&aborts) > 0);

    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    EXPECT_EQ(0, xt_quit(&tg));
    free(src);
    free(back);
    return test_finish("test_direct");
}
