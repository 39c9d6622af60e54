/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The thread-safety contract of ferry.h: eight application threads prepare,
 * post, test and wait on different requests of one agent at once, while
 * another thread registers and deregisters memory and packs metadata. Each
 * worker checks every byte its requests moved (random lengths at random
 * offsets, fresh data each time) and that the bytes around each destination
 * range kept theirs. Run over UCX's default path and over TCP,
 * where requests stay in flight long enough for threads to overlap, each
 * with and without the agent's progress thread (arguments "tcp" and
 * "thread"); `make tsan` runs all four under ThreadSanitizer.
 */
#include "xfer_util.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 8
#define SLICE (256u << 10)
#define ITERS 150 /* FERRY_TEST_ITERS lowers it for sanitizers */
#define GUARD 256 /* bytes checked on either side of each destination range */

static ferry_agent_t *agent;
static ferry_peer_t *peer;
static uint8_t *src, *dst;
static atomic_int stop;
static int iters = ITERS;

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    test_rng_t rng = {(uint64_t)t * 7919 + 1};

    for (int iter = 0; iter < iters; iter++) {
        /* A fresh request every few iterations: prepare runs concurrently too. */
        uint64_t off = test_rand_range(&rng, 0, SLICE / 2);
        uint64_t len = test_rand_range(&rng, 1, SLICE / 2);
        uint8_t *s = src + (size_t)t * SLICE, *d = dst + (size_t)t * SLICE;
        ferry_desc_t l = {(uintptr_t)(s + off), len, FERRY_MEM_HOST, 0};
        ferry_desc_t r = {(uintptr_t)(d + off), len, FERRY_MEM_HOST, 0};
        ferry_xfer_op_t op = (iter & 1) ? FERRY_OP_READ : FERRY_OP_WRITE;
        ferry_xfer_t *x;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1, NULL, &x));
        for (int rep = 0; rep < 3; rep++) {
            uint64_t tag = (uint64_t)iter * 3 + (uint64_t)rep;
            uint8_t *from = op == FERRY_OP_WRITE ? s : d, *to = op == FERRY_OP_WRITE ? d : s;
            /* GUARD bytes on either side of the destination range, within
             * the thread's slice, must keep their own pattern. */
            uint64_t lo = off > GUARD ? off - GUARD : 0;
            uint64_t hi = off + len + GUARD < SLICE ? off + len + GUARD : SLICE;
            uint64_t bad;

            test_fill(to + lo, hi - lo, (uint64_t)t, XU_GUARD_ITER, lo);
            test_fill(from + off, len, (uint64_t)t, tag, 0);
            ASSERT_ST(FERRY_OK, xu_post_wait(x, 20 * 1000000000ll));
            if ((bad = test_verify(to + off, len, (uint64_t)t, tag, 0)) != UINT64_MAX ||
                (bad = test_verify(to + lo, off - lo, (uint64_t)t, XU_GUARD_ITER, lo)) != UINT64_MAX ||
                (bad = test_verify(to + off + len, hi - off - len, (uint64_t)t, XU_GUARD_ITER,
                                   off + len)) != UINT64_MAX) {
                TEST_FAIL_AT_("thread %d iteration %d: %s of %" PRIu64 " B at +%" PRIu64
                              ": bytes differ (byte %" PRIu64 " of a checked part)",
                              t, iter, op == FERRY_OP_WRITE ? "WRITE" : "READ", len, off, bad);
                return NULL;
            }
        }
        ferry_xfer_release(x);
    }
    return NULL;
}

/* Registers, packs and deregisters unrelated memory while workers transfer. */
static void *churner(void *arg)
{
    static uint8_t scratch[64][4096];
    unsigned n = 0;

    (void)arg;
    while (!atomic_load(&stop)) {
        ferry_desc_t d = {(uintptr_t)scratch[n % 64], 4096, FERRY_MEM_HOST, 0};
        ferry_mem_t *mem;
        void *blob;
        size_t len;

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
        ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &len));
        ferry_md_free(blob);
        ASSERT_ST(FERRY_OK, ferry_mem_deregister(mem));
        n++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_PROGRESS_THREAD};
    ferry_desc_t d[2];
    ferry_mem_t *mem;
    pthread_t th[THREADS], ch;
    char name[64] = "test_threads";
    long it = xu_env_long("FERRY_TEST_ITERS", ITERS);

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "tcp") == 0)
            setenv("FERRY_UCX_TLS", "tcp", 1);
        else if (strcmp(argv[i], "thread") == 0)
            ap.progress_thread = 1;
        else
            return fprintf(stderr, "usage: test_threads [tcp] [thread]\n"), 2;
        snprintf(name + strlen(name), sizeof(name) - strlen(name), " %s", argv[i]);
    }
    if (it > 0 && it < ITERS)
        iters = (int)it;
    src = malloc((size_t)THREADS * SLICE);
    dst = malloc((size_t)THREADS * SLICE);
    ASSERT_TRUE(src != NULL && dst != NULL);
    memset(src, 0, (size_t)THREADS * SLICE);
    memset(dst, 0, (size_t)THREADS * SLICE);
    d[0] = (ferry_desc_t){(uintptr_t)src, (uint64_t)THREADS * SLICE, FERRY_MEM_HOST, 0};
    d[1] = (ferry_desc_t){(uintptr_t)dst, (uint64_t)THREADS * SLICE, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 2, &mem));
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));

    ASSERT_TRUE(pthread_create(&ch, NULL, churner, NULL) == 0);
    for (intptr_t t = 0; t < THREADS; t++)
        ASSERT_TRUE(pthread_create(&th[t], NULL, worker, (void *)t) == 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    atomic_store(&stop, 1);
    pthread_join(ch, NULL);

    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    free(src);
    free(dst);
    return test_finish(name);
}
