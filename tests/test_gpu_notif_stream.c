/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A stream-ordered CUDA IPC WRITE with a notification, captured into a CUDA
 * graph and replayed (skipped without a GPU). Each replay copies new bytes
 * into the source on the stream and WRITEs them into the peer's GPU memory;
 * before it, ferry_xfer_set_notif() gives the request a message naming the
 * range and the sum of the new bytes. The peer is the shared serving target
 * (target.h) with a progress thread: it sums its GPU range as each message
 * arrives (a message that came before the copy had landed fails the test)
 * and acknowledges it; the initiator waits for the acknowledgement before
 * the next replay. A few direct (not captured) posts run first.
 */
#include "target.h"

#define GPU_N (1u << 20)
#define REPLAYS 200
#define DIRECT 10
#define SEC 1000000000ll

static xt_target_t tgt;

/* Waits for the stream with a deadline: a stream must never hang. */
static void stream_sync(CUstream s)
{
    if (xm_stream_sync(s, 20000) != 0) {
        fprintf(stderr, "test_gpu_notif_stream: the stream is still busy\n");
        xt_kill(&tgt);
        _exit(1);
    }
}

static void enqueue(const ferry__cuda_t *cu, ferry_xfer_t *w, uint64_t src, uint64_t in,
                    size_t n, CUstream s)
{
    XM_CU(cu->cuMemcpyAsync(src, in, n, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_post_on_stream(w, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_wait_on_stream(w, s));
}

int main(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "notif-init", .progress_thread = 1};
    xt_opts_t to = {.name = "notif-target", .progress_thread = 1, .drive = 1, .nbuf = 1,
                    .buf = {{XM_CUDA, GPU_N, 0, 0}}};
    const ferry__cuda_t *cu;
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    ferry_xfer_t *w;
    xm_buf_t in, src;
    CUstream s;
    CUgraph graph;
    CUgraphExec exec = NULL;
    test_rng_t rng = {xu_seed(0x5a7e)};
    size_t n = (size_t)test_rand_range(&rng, 1, GPU_N / 2);
    uint64_t soff = test_rand_range(&rng, 0, GPU_N - n);
    uint64_t roff = test_rand_range(&rng, 0, GPU_N - n);
    xt_note_t note = {XT_NOTE_WRITE, 0, 0, roff, n, 0};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF, .notif = &note,
                              .notif_len = sizeof(note)};
    ferry_desc_t l, r;
    void *blob;
    size_t blen;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if ((cu = xm_cuda()) == NULL) {
        printf("skip: no GPU\n");
        return 77;
    }
    to.seed = xu_seed(0x5a7e);
    ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    alarm(280);
    if (xm_alloc(&in, XM_PINNED, GPU_N) || xm_alloc(&src, XM_CUDA, GPU_N))
        return 1;
    XM_CU(cu->cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    l = xm_desc(XM_CUDA, src.addr, GPU_N);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &l, 1, &mem));
    ASSERT_TRUE(xt_connect(&tgt, agent, &peer) == 0);
    l = xm_desc(XM_CUDA, src.addr + soff, n);
    r = xm_target_desc(XM_CUDA, tgt.buf[0].addr + roff, n);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1, &xp,
                                           &w));
    ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &blen));
    ASSERT_TRUE(xt_notif_begin(&tgt, 0, DIRECT + REPLAYS, XT_NOTIF_ACK, blob, blen) == 0);
    ferry_md_free(blob);

    for (uint64_t i = 0; i < DIRECT + REPLAYS; i++) {
        uint8_t *p = (uint8_t *)(uintptr_t)in.addr;

        if (i == DIRECT) {
            XM_CU(cu->cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED));
            enqueue(cu, w, src.addr + soff, in.addr, n, s);
            XM_CU(cu->cuStreamEndCapture(s, &graph));
            XM_CU(cu->cuGraphInstantiateWithFlags(&exec, graph, 0));
        }
        test_rand_bytes(&rng, p, n);
        note.seq = i;
        note.sum = xt_sum(p, n);
        EXPECT_ST(FERRY_OK, ferry_xfer_set_notif(w, &note, sizeof(note)));
        if (exec != NULL)
            XM_CU(cu->cuGraphLaunch(exec, s));
        else
            enqueue(cu, w, src.addr + soff, in.addr, n, s);
        /* The target checks its bytes when the message arrives. */
        EXPECT_EQ(0, xt_notif_ack(agent, i));
        stream_sync(s);
        EXPECT_ST(FERRY_OK, ferry_xfer_test(w));
    }
    EXPECT_EQ(0, xt_notif_end(&tgt, agent));
    printf("test_gpu_notif_stream: %d direct posts and %d graph replays of %zu B, each "
           "message checked against the target's GPU bytes\n", DIRECT, REPLAYS, n);
    XM_CU(cu->cuGraphExecDestroy(exec));
    XM_CU(cu->cuGraphDestroy(graph));
    if (xt_quit(&tgt) != 0)
        TEST_FAIL_AT_("the target exited badly");
    ferry_xfer_release(w);
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    xm_free(&src);
    xm_free(&in);
    return test_finish("test_gpu_notif_stream");
}
