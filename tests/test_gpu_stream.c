/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Stream-ordered transfers between two processes (skipped without a GPU):
 * a kernel-free pipeline on one CUDA stream (copy in, WRITE to the peer,
 * READ back, copy out), checked on the host, first enqueued directly and
 * then captured into a CUDA graph and replayed 1 000 times with new data
 * each time, every replay's bytes checked. Once through CUDA IPC (the peer's
 * GPU memory: copies on the stream) and once through UCX (host memory: the
 * flag protocol serviced by the progress thread). Each pipeline moves a
 * random length between random unaligned places of its buffers (seed:
 * FERRY_TEST_SEED). A third pipeline moves the same kind of range through
 * CUDA IPC as hundreds of small descriptors whose places at the peer are
 * shuffled, so that a batch runs as the copy kernel (src/cuda/copy.h):
 * enqueued, captured and replayed like the others, the table built at
 * prepare serving every replay. The peer is the shared serving target (target.h) with
 * a progress thread and two buffers, GPU and host. Last, the peer is killed
 * and the host-path pipeline enqueued again: the stream must still finish,
 * and the request must report the failure on the host.
 */
#include "target.h"

#define GPU_N (1u << 20)
#define HOST_N (256u << 10)
#define REPLAYS 1000
#define DIRECT 10
#define WAIT_MS 20000

static xt_target_t tgt;

/* Waits for the stream with a deadline: a stream-ordered transfer must never
 * hang the GPU. */
static void stream_sync(const ferry__cuda_t *cu, CUstream s, const char *what)
{
    (void)cu;
    if (xm_stream_sync(s, WAIT_MS) != 0) {
        fprintf(stderr, "test_gpu_stream: %s: the stream is still busy after %d "
                        "ms\n", what, WAIT_MS);
        xt_kill(&tgt);
        _exit(1);
    }
}

typedef struct pipe {
    const char *name;
    size_t n;
    uint64_t in, out;      /* pinned staging, outside ferry */
    uint64_t src, dst;     /* registered, local */
    ferry_xfer_t *w, *r;   /* WRITE src -> peer, READ dst <- peer */
} pipe_t;

/*
 * Cuts n bytes into pieces of 1 to 2 * n / pieces bytes (the last takes the
 * rest) and gives each its place twice: in order from local (*l_p) and in a
 * shuffled order from remote (*r_p), so that no two neighbours stay
 * neighbours at the peer and nothing coalesces. Returns the count.
 */
static size_t scatter(test_rng_t *rng, uint64_t local, uint64_t remote, size_t n,
                      size_t pieces, ferry_desc_t **l_p, ferry_desc_t **r_p)
{
    ferry_desc_t *l = xu_xcalloc(n, sizeof(*l)), *r = xu_xcalloc(n, sizeof(*r));
    size_t *perm, k = 0;
    uint64_t off = 0, roff = 0;

    while (off < n) {
        uint64_t len = test_rand_range(rng, 1, 2 * n / pieces);

        len = len < n - off ? len : n - off;
        l[k] = xm_desc(XM_CUDA, local + off, len);
        off += len;
        k++;
    }
    perm = xu_xcalloc(k, sizeof(*perm));
    for (size_t i = 0; i < k; i++)
        perm[i] = i;
    for (size_t i = k - 1; i > 0; i--) {
        size_t j = (size_t)test_rand_range(rng, 0, i), t = perm[i];

        perm[i] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < k; i++) {
        r[perm[i]] = xm_target_desc(XM_CUDA, remote + roff, l[perm[i]].len);
        roff += l[perm[i]].len;
    }
    free(perm);
    *l_p = l;
    *r_p = r;
    return k;
}

/* copy in, WRITE, READ back, copy out: all on stream s. */
static void enqueue(const ferry__cuda_t *cu, pipe_t *p, CUstream s)
{
    XM_CU(cu->cuMemcpyAsync(p->src, p->in, p->n, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_post_on_stream(p->w, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_wait_on_stream(p->w, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_post_on_stream(p->r, s));
    ASSERT_ST(FERRY_OK, ferry_xfer_wait_on_stream(p->r, s));
    XM_CU(cu->cuMemcpyAsync(p->out, p->dst, p->n, s));
}

/* New data in, the pipeline run (by run()), the bytes checked. */
static int round_trip(const ferry__cuda_t *cu, pipe_t *p, CUstream s, uint64_t iter,
                      CUgraphExec exec)
{
    uint8_t *in = (uint8_t *)(uintptr_t)p->in, *out = (uint8_t *)(uintptr_t)p->out;

    test_fill(in, p->n, 0x57, iter, 0);
    memset(out, 0, p->n);
    if (exec != NULL)
        XM_CU(cu->cuGraphLaunch(exec, s));
    else
        enqueue(cu, p, s);
    stream_sync(cu, s, p->name);
    if (memcmp(in, out, p->n) != 0) {
        TEST_FAIL_AT_("%s: %s iteration %llu: the bytes that came back differ", p->name,
                      exec ? "graph" : "direct", (unsigned long long)iter);
        return 1;
    }
    return 0;
}

static void run_pipe(const ferry__cuda_t *cu, pipe_t *p, CUstream s)
{
    CUgraph graph;
    CUgraphExec exec;
    uint64_t t0;
    int bad = 0;

    for (uint64_t i = 1; i <= DIRECT && !bad; i++)
        bad = round_trip(cu, p, s, i, NULL);
    XM_CU(cu->cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED));
    enqueue(cu, p, s);
    XM_CU(cu->cuStreamEndCapture(s, &graph));
    XM_CU(cu->cuGraphInstantiateWithFlags(&exec, graph, 0));
    t0 = xu_now_ns();
    for (uint64_t i = 1; i <= REPLAYS && !bad; i++)
        bad = round_trip(cu, p, s, 1000 + i, exec);
    printf("%s: %d direct runs and %d graph replays, every byte checked (%.1f us "
           "per replay with the checks)\n", p->name, DIRECT, REPLAYS,
           (double)(xu_now_ns() - t0) / 1e3 / REPLAYS);
    XM_CU(cu->cuGraphExecDestroy(exec));
    XM_CU(cu->cuGraphDestroy(graph));
}

int main(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "stream-initiator", .progress_thread = 1};
    const ferry__cuda_t *cu;
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    xm_buf_t in, out, g_src, g_dst, h_src, h_dst;
    pipe_t gp, sp, hp;
    CUstream s;
    xt_opts_t to = {.name = "stream-target", .progress_thread = 1, .nbuf = 2,
                    .buf = {{XM_CUDA, GPU_N, 0, 0}, {XM_HOST, HOST_N, 0, 0}}};
    test_rng_t rng = {xu_seed(0x57)};
    uint64_t goff[3], hoff[3]; /* offsets into src, dst and the peer's buffer */
    ferry_desc_t *sl, *sr;
    size_t sn;
    size_t gn = (size_t)test_rand_range(&rng, GPU_N / 2, GPU_N - 4096);
    size_t hn = (size_t)test_rand_range(&rng, HOST_N / 2, HOST_N - 4096);

    setvbuf(stdout, NULL, _IOLBF, 0);
    if ((cu = xm_cuda()) == NULL)
        return 77;
    ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    alarm(280);
    if (xm_alloc(&in, XM_PINNED, GPU_N) || xm_alloc(&out, XM_PINNED, GPU_N) ||
        xm_alloc(&g_src, XM_CUDA, GPU_N) || xm_alloc(&g_dst, XM_CUDA, GPU_N) ||
        xm_alloc(&h_src, XM_PINNED, HOST_N) || xm_alloc(&h_dst, XM_PINNED, HOST_N))
        return 1;
    XM_CU(cu->cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    {
        ferry_desc_t d[4] = {xm_desc(XM_CUDA, g_src.addr, GPU_N),
                             xm_desc(XM_CUDA, g_dst.addr, GPU_N),
                             {h_src.addr, HOST_N, FERRY_MEM_HOST, 0},
                             {h_dst.addr, HOST_N, FERRY_MEM_HOST, 0}};

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 4, &mem));
    }
    ASSERT_TRUE(xt_connect(&tgt, agent, &peer) == 0);

    for (int i = 0; i < 3; i++) {
        goff[i] = test_rand_range(&rng, 0, GPU_N - gn);
        hoff[i] = test_rand_range(&rng, 0, HOST_N - hn);
    }
    printf("GPU pipeline: %zu B at +%" PRIu64 ", +%" PRIu64 ", peer +%" PRIu64 "; host "
           "pipeline: %zu B at +%" PRIu64 ", +%" PRIu64 ", peer +%" PRIu64 "\n",
           gn, goff[0], goff[1], goff[2], hn, hoff[0], hoff[1], hoff[2]);
    gp = (pipe_t){"CUDA IPC (GPU memory)", gn, in.addr, out.addr, g_src.addr + goff[0],
                  g_dst.addr + goff[1], NULL, NULL};
    hp = (pipe_t){"UCX (host memory, flags)", hn, in.addr, out.addr, h_src.addr + hoff[0],
                  h_dst.addr + hoff[1], NULL, NULL};
    {
        ferry_desc_t l, r;

        l = xm_desc(XM_CUDA, gp.src, gn);
        r = xm_target_desc(XM_CUDA, tgt.buf[0].addr + goff[2], gn);
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                               NULL, &gp.w));
        l.addr = gp.dst;
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &l, 1, peer, &r, 1,
                                               NULL, &gp.r));
        l = (ferry_desc_t){hp.src, hn, FERRY_MEM_HOST, 0};
        r = (ferry_desc_t){tgt.buf[1].addr + hoff[2], hn, FERRY_MEM_HOST, 0};
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                               NULL, &hp.w));
        l.addr = hp.dst;
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &l, 1, peer, &r, 1,
                                               NULL, &hp.r));
    }
    /* The scattered pipeline: the same range, in hundreds of pieces. */
    sp = gp;
    sp.name = "CUDA IPC (GPU memory, scattered)";
    sn = scatter(&rng, sp.src, tgt.buf[0].addr + goff[2], gn,
                 (size_t)test_rand_range(&rng, 200, 2000), &sl, &sr);
    printf("scattered pipeline: the same %zu B as %zu descriptors\n", gn, sn);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, sl, sn, peer, sr, sn,
                                           NULL, &sp.w));
    for (size_t i = 0; i < sn; i++)
        sl[i].addr += sp.dst - sp.src;
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, sl, sn, peer, sr, sn,
                                           NULL, &sp.r));
    free(sl);
    free(sr);
    /* Waiting on a stream for a request never posted on one is an error. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_wait_on_stream(gp.w, s));
    /* Armed requests keep their registrations busy. */
    run_pipe(cu, &gp, s);
    run_pipe(cu, &sp, s);
    run_pipe(cu, &hp, s);
    EXPECT_ST(FERRY_ERR_BUSY, ferry_mem_deregister(mem));

    /* The peer dies: the host-path pipeline must still let the stream go on,
     * and the request must say what happened. */
    xt_kill(&tgt);
    {
        uint8_t *o = (uint8_t *)(uintptr_t)hp.out;

        memset(o, 0, hp.n);
        enqueue(cu, &hp, s);
        stream_sync(cu, s, "after the peer died");
        EXPECT_TRUE(ferry_xfer_test(hp.w) < 0);
        printf("after the peer died, the stream went on; the WRITE reports: %s (%s)\n",
               ferry_status_str(ferry_xfer_test(hp.w)), ferry_last_error());
    }
    ferry_xfer_release(gp.w);
    ferry_xfer_release(gp.r);
    ferry_xfer_release(sp.w);
    ferry_xfer_release(sp.r);
    ferry_xfer_release(hp.w);
    ferry_xfer_release(hp.r);
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    return test_finish("test_gpu_stream");
}
