/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A GPU peer that dies must show as FERRY_ERR_PEER_LOST, never as success.
 * CUDA IPC maps the peer's memory into this process, and the mapping keeps
 * that memory alive after its owner exits, so a copy into it still runs: a
 * WRITE to a dead peer would report OK while its bytes went nowhere, and a
 * READ would return whatever the memory held when the process died.
 *
 * With the target's GPU memory shared the way --mem names (cuda: a
 * cuMemAlloc buffer, a legacy IPC handle; vmm: cuMemCreate memory, file
 * descriptors):
 *  1. a target process (the shared serving target, target.h, driving its
 *     agent) registers GPU memory and sends its blob; a WRITE of random
 *     bytes to a random offset is checked byte for byte in the target, with
 *     every other byte of its buffer, and a READ of them back to another
 *     offset here, with the bytes around it;
 *  2. a second WRITE and READ are prepared (the peer's memory opened for
 *     them), then the target is killed (SIGKILL) and reaped;
 *  3. posting the first WRITE and READ again, posting the second WRITE,
 *     preparing a new request and posting the second READ onto a CUDA
 *     stream must each fail with FERRY_ERR_PEER_LOST, at once (1 ms after
 *     the reap);
 *  4. forgetting the peer, deregistering and destroying the agent return.
 * Skipped (77) without a GPU.
 */
#include "target.h"

#define CAP (8ull << 20)
#define MAX_LEN (1ull << 20)
#define GUARD 256
#define WAIT_NS (30ll * 1000 * 1000 * 1000)

static xm_kind_t kind = XM_CUDA;

/* A range of len bytes at a random offset inside [lo, hi), GUARD bytes
 * clear of both ends. */
static uint64_t rand_off(test_rng_t *rng, uint64_t lo, uint64_t hi, uint64_t len)
{
    return lo + GUARD + test_rand(rng) % (hi - lo - len - 2 * GUARD);
}

static ferry_xfer_t *prepare(ferry_agent_t *agent, ferry_peer_t *peer,
                             ferry_xfer_op_t op, const xm_buf_t *lb, uint64_t loff,
                             uint64_t raddr, uint64_t roff, uint64_t len,
                             ferry_status_t *st_p)
{
    ferry_desc_t l = xm_desc(kind, lb->addr + loff, len);
    ferry_desc_t r = xm_target_desc(kind, raddr + roff, len);
    ferry_xfer_t *x = NULL;

    *st_p = ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1, NULL, &x);
    return x;
}

/* Step 3: st must be PEER_LOST; prints what came and how fast. */
static void expect_lost(const char *what, ferry_status_t st, uint64_t t0)
{
    printf("  %s: %s in %.3f ms (%s)\n", what, ferry_status_str(st), xu_ms_since(t0),
           st < 0 ? ferry_last_error() : "-");
    ASSERT_ST(FERRY_ERR_PEER_LOST, st);
}

int main(int argc, char **argv)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "gpu-death-initiator"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    ferry_xfer_t *w, *rd, *w2, *r2, *x;
    ferry_desc_t d;
    ferry_status_t st;
    test_rng_t rng;
    xm_buf_t lb;
    xt_target_t tgt;
    uint8_t *orig;
    uint64_t seed = xu_seed(0x9d0de47full), len, loff, loff2, roff, raddr, t0;
    CUstream stream;

    if (argc != 3 || strcmp(argv[1], "--mem") != 0 || xm_parse(argv[2], &kind) != 0 ||
        !xm_is_gpu(kind)) {
        fprintf(stderr, "usage: %s --mem cuda|vmm\n", argv[0]);
        return 2;
    }
    if (xm_alloc(&lb, kind, CAP) != 0)
        return 77;
    {
        xt_opts_t to = {.name = "gpu-death-target", .drive = 1, .seed = seed, .nbuf = 1,
                        .buf = {{kind, CAP, 0, 0}}};

        ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    }
    alarm(120);
    rng.s = seed;
    test_fill(lb.host, CAP, seed, 1, 0);
    xm_to_dev(&lb, 0, CAP);
    orig = xu_xcalloc(1, CAP);
    memcpy(orig, lb.host, CAP);

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    d = xm_desc(kind, lb.addr, CAP);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    ASSERT_TRUE(xt_connect(&tgt, agent, &peer) == 0);
    raddr = tgt.buf[0].addr;

    /* 1. The peer works: WRITE the first half's range there, READ it back
     * into the second half, and compare, guard bytes included. */
    len = 1 + test_rand(&rng) % MAX_LEN;
    loff = rand_off(&rng, 0, CAP / 2, len);
    loff2 = rand_off(&rng, CAP / 2, CAP, len);
    roff = rand_off(&rng, 0, CAP, len);
    printf("seed %llu (FERRY_TEST_SEED replays it), %s memory, %llu bytes, local %llu -> remote %llu -> local %llu\n",
           (unsigned long long)seed, xm_name(kind), (unsigned long long)len,
           (unsigned long long)loff, (unsigned long long)roff, (unsigned long long)loff2);
    w = prepare(agent, peer, FERRY_OP_WRITE, &lb, loff, raddr, roff, len, &st);
    ASSERT_ST(FERRY_OK, st);
    rd = prepare(agent, peer, FERRY_OP_READ, &lb, loff2, raddr, roff, len, &st);
    ASSERT_ST(FERRY_OK, st);
    ASSERT_TRUE(xt_pattern(&tgt, 0, 0, CAP, XU_GUARD_ITER) == 0);
    ASSERT_ST(FERRY_OK, xu_post_wait(w, WAIT_NS));
    /* The target holds the bytes at roff, and nothing else changed there. */
    ASSERT_TRUE(xt_range(&tgt, 0, roff, len, loff) == 0);
    ASSERT_TRUE(xt_check(&tgt, 0, 0, CAP, 1, XU_GUARD_ITER, "target after the WRITE") == 0);
    ASSERT_ST(FERRY_OK, xu_post_wait(rd, WAIT_NS));
    xm_from_dev(&lb, loff2 - GUARD, loff2 + len + GUARD);
    ASSERT_TRUE(memcmp(lb.host + loff2, orig + loff, len) == 0);
    ASSERT_TRUE(memcmp(lb.host + loff2 - GUARD, orig + loff2 - GUARD, GUARD) == 0);
    ASSERT_TRUE(memcmp(lb.host + loff2 + len, orig + loff2 + len, GUARD) == 0);

    /* 2. Requests prepared while the peer lives, then its death. */
    w2 = prepare(agent, peer, FERRY_OP_WRITE, &lb, loff, raddr, 0, len, &st);
    ASSERT_ST(FERRY_OK, st);
    r2 = prepare(agent, peer, FERRY_OP_READ, &lb, loff2, raddr, 0, len, &st);
    ASSERT_ST(FERRY_OK, st);
    ASSERT_TRUE(xt_kill(&tgt) != -1);
    /* The backend looks at the peer's process at most every 100 us
     * (CI_LIVENESS_NS): a post sooner after the death may still be taken. */
    usleep(1000);

    /* 3. Nothing may pretend to reach it. */
    t0 = xu_now_ns();
    expect_lost("WRITE posted again", xu_post_wait(w, WAIT_NS), t0);
    t0 = xu_now_ns();
    expect_lost("READ posted again", xu_post_wait(rd, WAIT_NS), t0);
    t0 = xu_now_ns();
    expect_lost("WRITE prepared before the death, posted", xu_post_wait(w2, WAIT_NS), t0);
    t0 = xu_now_ns();
    x = prepare(agent, peer, FERRY_OP_WRITE, &lb, loff, raddr, roff, len, &st);
    expect_lost("a new prepare", st, t0);
    ASSERT_TRUE(x == NULL);
    XM_CU(xm_cuda()->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    t0 = xu_now_ns();
    expect_lost("READ prepared before the death, posted on a stream",
                ferry_xfer_post_on_stream(r2, stream), t0);
    XM_CU(xm_cuda()->cuStreamSynchronize(stream));
    XM_CU(xm_cuda()->cuStreamDestroy(stream));

    /* 4. Everything comes down. */
    ferry_xfer_release(w);
    ferry_xfer_release(rd);
    ferry_xfer_release(w2);
    ferry_xfer_release(r2);
    ferry_peer_forget(peer);
    ASSERT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    xm_free(&lb);
    free(orig);
    return test_finish("test_gpu_peer_death");
}
