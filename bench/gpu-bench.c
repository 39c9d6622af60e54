/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-gpu-bench: GPU transfers between two processes on one host through
 * ferry (CUDA IPC), each figure a ratio to the CUDA copy that is its
 * ceiling, measured in the same run:
 *   - GPU -> GPU WRITE and READ into the peer's GPU buffer, against
 *     a device-to-device copy within one process between the same two
 *     devices (cuMemcpyPeerAsync when they differ);
 *   - host -> GPU (WRITE from local pinned memory into the peer's GPU
 *     buffer) and GPU -> host (READ), against pinned cuMemcpyHtoD/DtoH
 *   (each reference copy, like each transfer, complete before the next);
 *   - the time to open the peer's allocation the first time (the first
 *     prepare against it), and the time of one small transfer after that;
 *   - scattered blocks (a paged KV cache's shape: 1024 x 4 KiB up to 8 x 16
 *     MiB at random block slots on both sides), against one contiguous
 *     copy of the same bytes, in the default copy mode (the copy kernel)
 *     and with one copy per block (FERRY_CUDA_COPY=engine); with --grids,
 *     the kernel again at each FERRY_CUDA_COPY_BLOCKS value.
 * Rounds alternate reference and ferry (A B A B ...) and the table gives
 * medians. Every buffer holds random bytes, and after the timed rounds the
 * bytes that arrived are checked once per size.
 *
 *   ferry-gpu-bench [--sizes 1m,16m,256m] [--rounds 5] [--min-bytes 4g]
 *                   [--mem cuda|vmm] [--grids 132,264] [--only scatter|staged]
 *
 * --only scatter: the scattered rows alone. --only staged: GPU -> GPU
 * through the staged backend instead (bounce buffers over UCX, forced: the
 * path to a peer on another host), at --sizes and as 1024 x 32 KiB
 * scattered blocks, beside pinned DtoH, pinned HtoD and a host -> host
 * UCX WRITE measured in the same run (see staged_section).
 *
 * --mem: how both processes allocate their GPU memory, cuMemAlloc (shared
 * as a legacy IPC handle, the default) or cuMemCreate (VMM, shared as file
 * descriptors).
 *
 * The initiator's GPU memory is on device FERRY_TEST_DEVICE (default 0), the
 * target's on FERRY_TEST_TARGET_DEVICE (default: the same), the names the
 * tests use. The two processes are the two ranks of a job
 * (tools/bench/pair.h) that the program starts itself; buffers come from
 * tools/bench/buf.h, CUDA from the library's loader.
 */
#include "buf.h"
#include "clock.h"
#include "pair.h"
#include "pattern.h"

#include "launch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZE (256ull << 20)
#define WAIT_NS (30ll * 1000 * 1000 * 1000)

/* Exits 77 (skipped) where there is no usable GPU. */
#define NO_GPU 77

#define XM_CU(call) cu_check((call), #call)

static void cu_check(CUresult res, const char *call)
{
    if (ferry__cuda_check(res, call) != FERRY_OK)
        die("%s", ferry_last_error());
}

static int env_device(const char *name, int dflt)
{
    const char *s = getenv(name);

    return (s != NULL && *s != '\0') ? atoi(s) : dflt;
}

/* This process's device, and the target's. */
static int my_device(void)
{
    return env_device("FERRY_TEST_DEVICE", 0);
}

static int target_device(void)
{
    return env_device("FERRY_TEST_TARGET_DEVICE", my_device());
}

static void die_st(ferry_status_t st, const char *what)
{
    if (st < 0) {
        fprintf(stderr, "ferry-gpu-bench: %s: %s: %s\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Both processes' GPU memory (--mem): cuMemAlloc, or ferry_mem_alloc's
 * cuMemCreate (VMM). */
static bench_src_t gpu_src = SRC_CUMEM;

/* A GPU buffer of --mem's kind on device dev. */
static void gpu_alloc(ferry_agent_t *agent, int dev, size_t len, bench_buf_t *b)
{
    bench_gpu_use(dev, 0);
    bench_alloc(agent, FERRY_MEM_CUDA, gpu_src, len, b);
    bench_gpu_pop();
}

/* The target: one GPU buffer and one host buffer (the stream flags' and
 * the staged rows' UCX reference), registered and advertised, until the end
 * (its progress thread serves UCX and staged peers; the initiator reads the
 * bytes back itself). */
static int target_main(ferry_comm_t *comm)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "gpu-target", .progress_thread = 1};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    bench_buf_t b, h;

    die_st(ferry_agent_create(&ap, &agent), "agent_create");
    gpu_alloc(agent, target_device(), MAX_SIZE, &b);
    bench_alloc(agent, FERRY_MEM_HOST, SRC_MMAP, MAX_SIZE, &h);
    {
        ferry_desc_t d[2] = {bench_desc(&b, 0, MAX_SIZE), bench_desc(&h, 0, MAX_SIZE)};

        die_st(ferry_mem_register(agent, d, 2, &mem), "mem_register");
    }
    free(pair_greet(comm, agent, (uintptr_t)b.p, (uintptr_t)h.p).blob);
    pair_leave(comm);
    ferry_mem_deregister(mem);
    bench_free(&b);
    bench_free(&h);
    ferry_agent_destroy(agent);
    return 0;
}

typedef struct run {
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    uint64_t raddr;
    int rdev;                      /* the target's device */
    bench_buf_t gpu, gpu2, pinned; /* gpu2 on the target's device */
    CUcontext ctx, ctx2;        /* gpu's and gpu2's devices' */
    CUstream stream, stream2;   /* on gpu's and gpu2's devices */
    uint64_t min_bytes;
} run_t;

static unsigned iters_for(const run_t *r, uint64_t size)
{
    uint64_t n = r->min_bytes / size;

    return n < 20 ? 20 : n > 100000 ? 100000 : (unsigned)n;
}

/* GB/s of copies dst <- src (device to device, host to device or device to
 * host by the pointers; between two devices' contexts when dctx != sctx),
 * size bytes, iters times, each complete before the next starts, as each
 * ferry transfer is (cuMemcpy alone does not wait for a device-to-device
 * copy). */
static double ref_gbps(CUstream stream, uint64_t dst, CUcontext dctx, uint64_t src,
                       CUcontext sctx, uint64_t size, unsigned iters)
{
    const ferry__cuda_t *cu = bench_cuda();
    uint64_t t0 = 0;

    for (unsigned i = 0; i <= iters; i++) {
        if (i == 1)
            t0 = now_ns(); /* the first copy warms up */
        if (dctx != sctx)
            XM_CU(cu->cuMemcpyPeerAsync(dst, dctx, src, sctx, size, stream));
        else
            XM_CU(cu->cuMemcpyAsync(dst, src, size, stream));
        XM_CU(cu->cuStreamSynchronize(stream));
    }
    return (double)size * iters / (double)(now_ns() - t0);
}

/* Nanoseconds to post a prepared request and wait for it, n times. */
static uint64_t post_wait_ns(ferry_xfer_t *x, unsigned n)
{
    uint64_t t0 = now_ns();

    for (unsigned i = 0; i < n; i++) {
        die_st(ferry_xfer_post(x), "post");
        die_st(ferry_xfer_wait(x, WAIT_NS), "wait");
    }
    return now_ns() - t0;
}

/* GB/s of a prepared request posted and waited for iters times, after one
 * untimed round. */
static double ferry_gbps(ferry_xfer_t *x, uint64_t size, unsigned iters)
{
    (void)post_wait_ns(x, 1);
    return (double)size * iters / (double)post_wait_ns(x, iters);
}

static ferry_xfer_t *prepare(const run_t *r, ferry_xfer_op_t op, const bench_buf_t *local,
                             uint64_t size, double *us_p)
{
    ferry_desc_t ld = bench_desc(local, 0, size);
    ferry_desc_t rd = {r->raddr, size, FERRY_MEM_CUDA, r->rdev};
    ferry_xfer_t *x;
    uint64_t t0 = now_ns();

    die_st(ferry_xfer_prepare(r->agent, op, &ld, 1, r->peer, &rd, 1, NULL, &x), "prepare");
    if (us_p)
        *us_p = (double)(now_ns() - t0) / 1e3;
    return x;
}

/* After the timed rounds: the peer's bytes, read once more into gpu2, must
 * equal local's (a WRITE copied local there; a READ copied them into local). */
static int verify(run_t *r, bench_buf_t *local, uint64_t size)
{
    ferry_xfer_t *x = prepare(r, FERRY_OP_READ, &r->gpu2, size, NULL);
    uint8_t *got = xcalloc(size, 1), *want = xcalloc(size, 1);
    int bad;

    (void)post_wait_ns(x, 1);
    ferry_xfer_release(x);
    bench_copy(&r->gpu2, 0, got, size, false);
    bench_copy(local, 0, want, size, false);
    bad = memcmp(got, want, size) != 0;
    free(got);
    free(want);
    return bad;
}

/* Fresh bytes in the whole buffer (the check pattern of seed). */
static void fill_random(bench_buf_t *b, uint64_t seed)
{
    pattern(b, 0, b->len, seed, 0, true);
}

/* ------------------------------------------------------------------------ */
/* Scattered blocks: a paged KV cache's shape                                */
/* ------------------------------------------------------------------------ */

/* A batch of n blocks of size bytes at distinct random block slots of the
 * local and the peer's buffer, in a random order on each side (no two
 * neighbours stay neighbours, so nothing coalesces). */
typedef struct scatter {
    const char *name;
    size_t n;
    uint64_t size;
    ferry_desc_t *l, *r;
} scatter_t;

static void shuffle(uint64_t *v, size_t n, uint64_t *state)
{
    for (size_t i = n - 1; i > 0; i--) {
        size_t j;
        uint64_t t;

        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        j = (size_t)((*state >> 33) % (i + 1));
        t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static void scatter_make(const run_t *r, scatter_t *sc, uint64_t seed)
{
    size_t slots = MAX_SIZE / sc->size;
    uint64_t *a = xcalloc(slots, sizeof(*a)), *b = xcalloc(slots, sizeof(*b));

    for (size_t i = 0; i < slots; i++)
        a[i] = b[i] = i;
    shuffle(a, slots, &seed);
    shuffle(b, slots, &seed);
    sc->l = xcalloc(sc->n, sizeof(*sc->l));
    sc->r = xcalloc(sc->n, sizeof(*sc->r));
    for (size_t i = 0; i < sc->n; i++) {
        sc->l[i] = bench_desc(&r->gpu, a[i] * sc->size, sc->size);
        sc->r[i] = (ferry_desc_t){r->raddr + b[i] * sc->size, sc->size, FERRY_MEM_CUDA,
                                  r->rdev};
    }
    free(a);
    free(b);
}

/* The peer's whole buffer, read into gpu2 with one descriptor. */
static void read_peer(run_t *r)
{
    ferry_xfer_t *x = prepare(r, FERRY_OP_READ, &r->gpu2, MAX_SIZE, NULL);

    (void)post_wait_ns(x, 1);
    ferry_xfer_release(x);
}

/* After a batch: each block at the peer equals the local one. */
static int scatter_verify(run_t *r, const scatter_t *sc)
{
    uint8_t *got = xcalloc(sc->size, 1), *want = xcalloc(sc->size, 1);
    int bad = 0;

    read_peer(r);
    for (size_t i = 0; i < sc->n && !bad; i++) {
        bench_copy(&r->gpu2, sc->r[i].addr - r->raddr, got, sc->size, false);
        bench_copy(&r->gpu, sc->l[i].addr - (uintptr_t)r->gpu.p, want, sc->size, false);
        bad = memcmp(got, want, sc->size) != 0;
    }
    free(got);
    free(want);
    return bad;
}

/* GB/s of the batch prepared in the copy mode the environment sets now
 * (FERRY_CUDA_COPY, FERRY_CUDA_COPY_BLOCKS are read at prepare), posted
 * and waited for as often as fills about 50 ms, median of rounds. */
static double scatter_gbps(run_t *r, const scatter_t *sc, ferry_xfer_op_t op, int rounds)
{
    ferry_xfer_t *x;
    uint64_t bytes = sc->n * sc->size, once;
    unsigned iters;
    double v[101];

    die_st(ferry_xfer_prepare(r->agent, op, sc->l, sc->n, r->peer, sc->r, sc->n, NULL, &x),
           "prepare");
    once = post_wait_ns(x, 2) / 2;
    iters = once == 0 ? 1000 : (unsigned)(50000000 / once);
    iters = iters < 3 ? 3 : iters > 2000 ? 2000 : iters;
    for (int i = 0; i < rounds; i++)
        v[i] = (double)bytes * iters / (double)post_wait_ns(x, iters);
    ferry_xfer_release(x);
    return median(v, rounds);
}

/*
 * The scattered rows: for each batch, one contiguous cuMemcpyAsync of the
 * same bytes (its ceiling), ferry in auto mode, and ferry with one copy per
 * block (FERRY_CUDA_COPY=engine, what it did before the copy kernel), as
 * ratios to the contiguous copy; WRITE then READ, each checked block by
 * block. With grids, the kernel (FERRY_CUDA_COPY=kernel) again at each
 * grid size.
 */
static int scatter_section(run_t *r, int rounds, const char *grids)
{
    static const struct {
        const char *name;
        size_t n;
        uint64_t size;
    } rows[] = {{"1024 x 4 KiB", 1024, 4 << 10},    {"8192 x 4 KiB", 8192, 4 << 10},
                {"1024 x 32 KiB", 1024, 32 << 10},  {"vLLM 32x2x64 x 32 KiB", 4096, 32 << 10},
                {"64 x 256 KiB", 64, 256 << 10},    {"512 x 256 KiB", 512, 256 << 10},
                {"64 x 1 MiB", 64, 1 << 20},        {"16 x 4 MiB", 16, 4 << 20},
                {"8 x 16 MiB", 8, 16 << 20}};
    int failures = 0;

    printf("\nscattered blocks, GPU -> GPU (random block slots on both sides), against one "
           "contiguous copy of the same bytes (GB/s, medians of %d rounds):\n", rounds);
    printf("%-24s %-6s %10s %10s %6s %10s %6s %6s\n", "batch", "op", "contig", "auto",
           "ratio", "engine", "ratio", "bytes");
    for (size_t k = 0; k < sizeof(rows) / sizeof(rows[0]); k++) {
        scatter_t sc = {rows[k].name, rows[k].n, rows[k].size, NULL, NULL};
        uint64_t bytes = sc.n * sc.size;

        scatter_make(r, &sc, 77 + k);
        for (int o = 0; o < 2; o++) {
            ferry_xfer_op_t op = o ? FERRY_OP_READ : FERRY_OP_WRITE;
            unsigned iters = iters_for(r, bytes);
            double rv[101], ref, a, e;
            int bad;

            for (int i = 0; i < rounds; i++)
                rv[i] = ref_gbps(r->stream, (uintptr_t)r->gpu2.p, r->ctx, (uintptr_t)r->gpu.p,
                                 r->ctx, bytes, iters);
            ref = median(rv, rounds);
            fill_random(&r->gpu, 1000 + k * 2 + (uint64_t)o);
            setenv("FERRY_CUDA_COPY", "engine", 1);
            e = scatter_gbps(r, &sc, op, rounds);
            setenv("FERRY_CUDA_COPY", "auto", 1);
            a = scatter_gbps(r, &sc, op, rounds);
            bad = scatter_verify(r, &sc);
            failures += bad;
            printf("%-24s %-6s %10.1f %10.1f %6.3f %10.1f %6.3f %6s\n", sc.name,
                   o ? "READ" : "WRITE", ref, a, a / ref, e, e / ref, bad ? "WRONG" : "ok");
            fflush(stdout);
        }
        if (grids != NULL && *grids) {
            char *list = strdup(grids), *save = NULL;
            double ref = ref_gbps(r->stream, (uintptr_t)r->gpu2.p, r->ctx, (uintptr_t)r->gpu.p,
                                  r->ctx, bytes, iters_for(r, bytes));

            printf("  %s WRITE, FERRY_CUDA_COPY=kernel, ratio by grid:", sc.name);
            setenv("FERRY_CUDA_COPY", "kernel", 1);
            for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                setenv("FERRY_CUDA_COPY_BLOCKS", t, 1);
                printf(" %s: %.3f", t, scatter_gbps(r, &sc, FERRY_OP_WRITE, rounds) / ref);
                fflush(stdout);
            }
            printf("\n");
            unsetenv("FERRY_CUDA_COPY_BLOCKS");
            setenv("FERRY_CUDA_COPY", "auto", 1);
            free(list);
        }
        free(sc.l);
        free(sc.r);
    }
    unsetenv("FERRY_CUDA_COPY");
    return failures;
}

/* ------------------------------------------------------------------------ */
/* Stream-ordered transfers: the cost of post + wait per graph replay        */
/* ------------------------------------------------------------------------ */

/* The raw flag round trip, for comparison: the graph writes a trigger flag
 * in page-locked memory, a host thread that spins on it answers through a
 * second flag, the graph waits for that one and resets it. */
typedef struct flags {
    _Atomic uint32_t *f; /* [0] trigger, [1] done */
    atomic_bool stop;
} flags_t;

static void *flag_server(void *arg)
{
    flags_t *fl = arg;

    while (!atomic_load(&fl->stop)) {
        if (atomic_load(&fl->f[0]) == 1) {
            atomic_store(&fl->f[0], 0);
            atomic_store(&fl->f[1], 1);
        }
    }
    return NULL;
}

/* Microseconds per replay of a graph launched n times back to back. */
static double replay_us(CUstream s, CUgraphExec exec, unsigned n)
{
    const ferry__cuda_t *cu = bench_cuda();
    uint64_t t0;

    XM_CU(cu->cuGraphLaunch(exec, s));
    XM_CU(cu->cuStreamSynchronize(s));
    t0 = now_ns();
    for (unsigned i = 0; i < n; i++)
        XM_CU(cu->cuGraphLaunch(exec, s));
    XM_CU(cu->cuStreamSynchronize(s));
    return (double)(now_ns() - t0) / 1e3 / n;
}

static CUgraphExec capture_xfer(CUstream s, ferry_xfer_t *x)
{
    const ferry__cuda_t *cu = bench_cuda();
    CUgraph g;
    CUgraphExec e;

    XM_CU(cu->cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED));
    die_st(ferry_xfer_post_on_stream(x, s), "post_on_stream");
    die_st(ferry_xfer_wait_on_stream(x, s), "wait_on_stream");
    XM_CU(cu->cuStreamEndCapture(s, &g));
    XM_CU(cu->cuGraphInstantiateWithFlags(&e, g, 0));
    XM_CU(cu->cuGraphDestroy(g));
    return e;
}

static void stream_section(run_t *r, const uint8_t *blob, size_t len, uint64_t rhost,
                           int rounds)
{
    const ferry__cuda_t *cu = bench_cuda();
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "gpu-initiator-stream", .progress_thread = 1};
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    ferry_xfer_t *xh, *xg;
    bench_buf_t h;
    flags_t fl;
    pthread_t thr;
    CUdeviceptr df;
    CUgraph g;
    CUgraphExec eraw, eh, eg, ecopy;
    unsigned n = 2000;
    double raw[101], fh[101], host[101], fg[101], copy[101];
    void *fp;

    bench_alloc(NULL, FERRY_MEM_HOST, SRC_MMAP, 4096, &h);
    pattern(&h, 0, 4096, 9, 0, true);
    die_st(ferry_agent_create(&ap, &agent), "agent_create");
    {
        ferry_desc_t d[2] = {bench_desc(&h, 0, 4096), bench_desc(&r->gpu, 0, MAX_SIZE)};

        die_st(ferry_mem_register(agent, d, 2, &mem), "mem_register");
    }
    die_st(ferry_peer_load(agent, blob, len, &peer), "peer_load");
    {
        ferry_desc_t l = bench_desc(&h, 0, 8), rd = {rhost, 8, FERRY_MEM_HOST, 0};
        ferry_desc_t lg = bench_desc(&r->gpu, 0, 8);
        ferry_desc_t rg = {r->raddr, 8, FERRY_MEM_CUDA, r->rdev};

        die_st(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &rd, 1, NULL, &xh),
               "prepare");
        die_st(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &lg, 1, peer, &rg, 1, NULL, &xg),
               "prepare");
    }
    /* The raw flag round trip and a plain 8-byte copy, as graphs. */
    XM_CU(cu->cuMemHostAlloc(&fp, 8, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP));
    memset(fp, 0, 8);
    fl.f = fp;
    atomic_init(&fl.stop, false);
    XM_CU(cu->cuMemHostGetDevicePointer(&df, fp, 0));
    pthread_create(&thr, NULL, flag_server, &fl);
    XM_CU(cu->cuStreamBeginCapture(r->stream, CU_STREAM_CAPTURE_MODE_RELAXED));
    XM_CU(cu->cuStreamWriteValue32(r->stream, df, 1, CU_STREAM_WRITE_VALUE_DEFAULT));
    XM_CU(cu->cuStreamWaitValue32(r->stream, df + 4, 1, CU_STREAM_WAIT_VALUE_EQ));
    XM_CU(cu->cuStreamWriteValue32(r->stream, df + 4, 0, CU_STREAM_WRITE_VALUE_DEFAULT));
    XM_CU(cu->cuStreamEndCapture(r->stream, &g));
    XM_CU(cu->cuGraphInstantiateWithFlags(&eraw, g, 0));
    XM_CU(cu->cuGraphDestroy(g));
    XM_CU(cu->cuStreamBeginCapture(r->stream, CU_STREAM_CAPTURE_MODE_RELAXED));
    XM_CU(cu->cuMemcpyAsync((uintptr_t)r->gpu2.p, (uintptr_t)r->gpu.p, 8, r->stream));
    XM_CU(cu->cuStreamEndCapture(r->stream, &g));
    XM_CU(cu->cuGraphInstantiateWithFlags(&ecopy, g, 0));
    XM_CU(cu->cuGraphDestroy(g));
    eh = capture_xfer(r->stream, xh);
    eg = capture_xfer(r->stream, xg);

    for (int i = 0; i < rounds; i++) {
        raw[i] = replay_us(r->stream, eraw, n);
        fh[i] = replay_us(r->stream, eh, n);
        host[i] = (double)post_wait_ns(xh, n) / 1e3 / n;
        copy[i] = replay_us(r->stream, ecopy, n);
        fg[i] = replay_us(r->stream, eg, n);
    }
    atomic_store(&fl.stop, true);
    pthread_join(thr, NULL);
    {
        double mr = median(raw, rounds), mf = median(fh, rounds), mh = median(host, rounds);
        double mc = median(copy, rounds), mg = median(fg, rounds);

        printf("\nstream-ordered post + wait per graph replay (us, %u replays back to "
               "back, medians of %d rounds):\n", n, rounds);
        printf("  raw flag round trip (graph flag -> spinning host thread -> graph): %.1f\n",
               mr);
        printf("  8-byte UCX WRITE, host memory: graph replay %.1f; the same posted and "
               "waited for on the host %.1f; overhead of the stream ordering %.1f\n",
               mf, mh, mf - mh);
        printf("  8-byte CUDA IPC WRITE: graph replay %.1f; a plain 8-byte copy as a graph "
               "%.1f; overhead %.1f\n", mg, mc, mg - mc);
    }
    XM_CU(cu->cuStreamSynchronize(r->stream));
    XM_CU(cu->cuGraphExecDestroy(eraw));
    XM_CU(cu->cuGraphExecDestroy(ecopy));
    XM_CU(cu->cuGraphExecDestroy(eh));
    XM_CU(cu->cuGraphExecDestroy(eg));
    ferry_xfer_release(xh);
    ferry_xfer_release(xg);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    cu->cuMemFreeHost(fp);
    bench_free(&h);
}

/* ------------------------------------------------------------------------ */
/* Staging through bounce buffers (--staged)                                */
/* ------------------------------------------------------------------------ */

static const ferry_xfer_params_t staged_params = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                                  .backend = FERRY_BACKEND_STAGED};

/* GB/s of a batch (n descriptors each side) posted and waited for: one
 * untimed round, then iters timed ones; median of rounds. */
static double batch_gbps(run_t *r, ferry_xfer_op_t op, const ferry_desc_t *l,
                         const ferry_desc_t *rd, size_t n, uint64_t bytes,
                         const ferry_xfer_params_t *xp, unsigned iters, int rounds)
{
    ferry_xfer_t *x;
    double v[101];

    die_st(ferry_xfer_prepare(r->agent, op, l, n, r->peer, rd, n, xp, &x), "prepare");
    (void)post_wait_ns(x, 1);
    for (int i = 0; i < rounds; i++)
        v[i] = (double)bytes * iters / (double)post_wait_ns(x, iters);
    ferry_xfer_release(x);
    return median(v, rounds);
}

/* The three links staging chains, for bytes bytes, medians of rounds:
 * pinned DtoH, pinned HtoD and a host -> host WRITE through the UCX
 * backend into the target's host buffer at rhost; returns the slowest. */
typedef struct links {
    double d2h, h2d, ucx;
} links_t;

static double links_gbps(run_t *r, uint64_t bytes, uint64_t rhost, unsigned iters,
                         int rounds, links_t *k)
{
    uint64_t g = (uintptr_t)r->gpu.p, p = (uintptr_t)r->pinned.p;
    ferry_desc_t ul = bench_desc(&r->pinned, 0, bytes);
    ferry_desc_t ur = {rhost, bytes, FERRY_MEM_HOST, 0};
    ferry_xfer_params_t up = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                              .backend = FERRY_BACKEND_UCX};
    double d2h[101], h2d[101], slow;

    for (int i = 0; i < rounds; i++) {
        d2h[i] = ref_gbps(r->stream, p, r->ctx, g, r->ctx, bytes, iters);
        h2d[i] = ref_gbps(r->stream, g, r->ctx, p, r->ctx, bytes, iters);
    }
    k->d2h = median(d2h, rounds);
    k->h2d = median(h2d, rounds);
    k->ucx = batch_gbps(r, FERRY_OP_WRITE, &ul, &ur, 1, bytes, &up, iters, rounds);
    slow = k->d2h < k->h2d ? k->d2h : k->h2d;
    return k->ucx < slow ? k->ucx : slow;
}

/*
 * GPU -> GPU WRITE and READ through the staged backend (forced: the two
 * processes share a host, and the path is the one a peer on another host
 * takes), at each size and as 1024 scattered 32 KiB blocks, beside the
 * three links it chains, measured in the same run (links_gbps). Run with
 * FERRY_UCX_TLS=tcp, both UCX contexts use the transport staging uses
 * between two hosts without RDMA. The ratio is to the slowest of the
 * three; every transfer's bytes are checked afterwards through CUDA IPC.
 */
static int staged_section(run_t *r, const char *sizes, uint64_t rhost, int rounds)
{
    char *list = strdup(sizes), *save = NULL;
    scatter_t sc = {"1024 x 32 KiB", 1024, 32u << 10, NULL, NULL};
    int failures = 0;

    if (list == NULL)
        return 1;
    printf("\n# staged GPU->GPU (FERRY_BACKEND_STAGED): FERRY_STAGE_CHUNK=%s "
           "FERRY_STAGE_CHUNKS=%s FERRY_UCX_TLS=%s\n",
           getenv("FERRY_STAGE_CHUNK") ? getenv("FERRY_STAGE_CHUNK") : "(4m)",
           getenv("FERRY_STAGE_CHUNKS") ? getenv("FERRY_STAGE_CHUNKS") : "(8)",
           getenv("FERRY_UCX_TLS") ? getenv("FERRY_UCX_TLS") : "(UCX's choice)");
    printf("%-14s %-14s %10s %9s %9s %9s %8s %6s\n", "size", "transfer", "staged",
           "DtoH", "HtoD", "UCX host", "ratio", "bytes");
    scatter_make(r, &sc, 99);
    /* The sizes, then the scattered batch (the empty token). */
    for (char *t = strtok_r(list, ",", &save);; t = strtok_r(NULL, ",", &save)) {
        int scattered = t == NULL;
        uint64_t size = scattered ? sc.n * sc.size : parse_count(t, "--sizes", false);
        unsigned iters = iters_for(r, size) / 4 + 3;
        char name[32];
        links_t k;
        double slow;

        if (size == 0 || size > MAX_SIZE) {
            fprintf(stderr, "sizes must be 1..256m\n");
            return 2;
        }
        snprintf(name, sizeof(name), "%s", scattered ? sc.name : t);
        slow = links_gbps(r, size, rhost, iters, rounds, &k);
        for (int op = 0; op < 2; op++) {
            ferry_xfer_op_t xop = op ? FERRY_OP_READ : FERRY_OP_WRITE;
            ferry_desc_t ld = bench_desc(&r->gpu, 0, size);
            ferry_desc_t rd = {r->raddr, size, FERRY_MEM_CUDA, r->rdev};
            double f = scattered ? batch_gbps(r, xop, sc.l, sc.r, sc.n, size,
                                              &staged_params, iters, rounds)
                                 : batch_gbps(r, xop, &ld, &rd, 1, size, &staged_params,
                                              iters, rounds);
            int bad = scattered ? scatter_verify(r, &sc) : verify(r, &r->gpu, size);

            failures += bad;
            printf("%-14s %-14s %10.2f %9.2f %9.2f %9.2f %8.3f %6s\n", name,
                   op ? "GPU->GPU READ" : "GPU->GPU WRITE", f, k.d2h, k.h2d, k.ucx,
                   f / slow, bad ? "WRONG" : "ok");
            fflush(stdout);
            /* Fresh local bytes: the READ must bring the peer's back. */
            fill_random(&r->gpu, size + (uint64_t)op + 7);
        }
        if (scattered)
            break;
    }
    free(list);
    free(sc.l);
    free(sc.r);
    return failures;
}

int main(int argc, char **argv)
{
    const char *sizes = "1m,16m,256m", *grids = NULL;
    int scatter_only = 0, staged_only = 0;
    char *list, *save = NULL;
    int rounds = 5, failures = 0;
    run_t r = {.min_bytes = 4ull << 30};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "gpu-initiator"};
    ferry_comm_t *comm;
    ferry_mem_t *mem;
    pair_hello_t hello;
    const ferry__cuda_t *cu;
    double open_us, again_us, small_us;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            sizes = argv[i + 1];
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--min-bytes") == 0)
            r.min_bytes = parse_count(argv[i + 1], "--min-bytes", false);
        else if (strcmp(argv[i], "--grids") == 0)
            grids = argv[i + 1];
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "scatter") == 0)
            scatter_only = 1;
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "staged") == 0)
            staged_only = 1;
        else if (strcmp(argv[i], "--mem") == 0 && (strcmp(argv[i + 1], "cuda") == 0 ||
                                                   strcmp(argv[i + 1], "vmm") == 0))
            gpu_src = strcmp(argv[i + 1], "cuda") == 0 ? SRC_CUMEM : SRC_FERRY;
        else {
            fprintf(stderr, "usage: %s [--sizes 1m,16m,256m] [--rounds N] "
                            "[--min-bytes 4g] [--mem cuda|vmm] [--grids 16,32,...] "
                            "[--only scatter|staged]\n", argv[0]);
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "%s: an option lacks its value\n", argv[0]);
        return 2;
    }
    if (rounds < 1 || rounds > 101) {
        fprintf(stderr, "--rounds must be 1..101\n");
        return 2;
    }
    /* Both ranks skip together where there is no GPU: neither starts. */
    if (!launch_in_job() && ferry__cuda_get(&cu) != FERRY_OK) {
        printf("ferry-gpu-bench: no GPU here (%s)\n", ferry_last_error());
        return NO_GPU;
    }
    comm = pair_join("ferry-gpu-bench", argv);
    if (ferry_comm_rank(comm) == 1)
        return target_main(comm);
    cu = bench_cuda();
    r.rdev = target_device();
    die_st(ferry_agent_create(&ap, &r.agent), "agent_create");
    /* This device's context stays current on this thread from here on. */
    bench_gpu_use(my_device(), 0);
    bench_alloc(r.agent, FERRY_MEM_CUDA, gpu_src, MAX_SIZE, &r.gpu);
    gpu_alloc(r.agent, r.rdev, MAX_SIZE, &r.gpu2);
    die_st(ferry__cuda_ctx(my_device(), &r.ctx), "cuda context");
    die_st(ferry__cuda_ctx(r.rdev, &r.ctx2), "cuda context");
    if (r.ctx != r.ctx2) {
        /* The reference copies over NVLink (or PCIe peer to peer), as
         * ferry does, rather than staged through host memory. */
        CUresult res = cu->cuCtxEnablePeerAccess(r.ctx2, 0);

        if (res != CUDA_SUCCESS && res != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)
            printf("# no peer access between the devices (error %d): both copies "
                   "are staged\n", (int)res);
    }
    bench_alloc(NULL, FERRY_MEM_HOST, SRC_PINNED, MAX_SIZE, &r.pinned);
    fill_random(&r.gpu, 1);
    fill_random(&r.pinned, 2);
    XM_CU(cu->cuStreamCreate(&r.stream, CU_STREAM_NON_BLOCKING));
    bench_gpu_use(r.rdev, 0);
    XM_CU(cu->cuStreamCreate(&r.stream2, CU_STREAM_NON_BLOCKING));
    bench_gpu_pop();
    {
        ferry_desc_t d[3] = {bench_desc(&r.gpu, 0, MAX_SIZE), bench_desc(&r.gpu2, 0, MAX_SIZE),
                             bench_desc(&r.pinned, 0, MAX_SIZE)};

        die_st(ferry_mem_register(r.agent, d, 3, &mem), "mem_register");
    }
    hello = pair_greet(comm, NULL, 0, 0);
    die_st(ferry_peer_load(r.agent, hello.blob, hello.blob_len, &r.peer), "peer_load");
    r.raddr = hello.a;

    /* Opening the peer's allocation is part of the first prepare only. */
    {
        ferry_xfer_t *x = prepare(&r, FERRY_OP_WRITE, &r.gpu, 4096, &open_us);
        ferry_xfer_t *y = prepare(&r, FERRY_OP_WRITE, &r.gpu, 4096, &again_us);
        unsigned n = 2000;

        (void)ferry_gbps(y, 4096, 10);
        small_us = (double)post_wait_ns(x, n) / 1e3 / n;
        ferry_xfer_release(x);
        ferry_xfer_release(y);
    }
    printf("# ferry-gpu-bench: %d rounds (reference and ferry alternating), medians; "
           "GB/s are 10^9 bytes of payload per second\n", rounds);
    for (int d = 0; d < 2; d++) {
        int dev = d ? r.rdev : my_device();
        char name[128] = "?";
        CUdevice h;

        if (cu->cuDeviceGet(&h, dev) == CUDA_SUCCESS)
            (void)cu->cuDeviceGetName(name, (int)sizeof(name), h);
        printf("# %s: device %d, %s; GPU memory from %s\n", d ? "target" : "initiator",
               dev, name, gpu_src == SRC_FERRY ? "cuMemCreate (VMM)" : "cuMemAlloc");
    }
    printf("first prepare against the peer (opens its allocation): %.1f us; "
           "a second prepare: %.1f us; one 4 KiB WRITE after that: %.1f us\n\n",
           open_us, again_us, small_us);
    if (staged_only) {
        failures += staged_section(&r, sizes, hello.b, rounds);
        sizes = "";
        scatter_only = 1;
    } else {
        failures += scatter_section(&r, rounds, grids);
    }
    if (scatter_only)
        sizes = "";
    else
        printf("\n%-10s %-14s %12s %14s %8s %6s\n", "size", "transfer", "ferry GB/s",
               "reference GB/s", "ratio", "bytes");

    list = strdup(sizes);
    if (list == NULL)
        return 1;
    for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        uint64_t size = parse_count(t, "--sizes", false);
        static const struct {
            const char *name, *ref;
            ferry_xfer_op_t op;
            int host;
        } kinds[] = {{"GPU->GPU WRITE", "DtoD", FERRY_OP_WRITE, 0},
                     {"GPU->GPU READ", "DtoD", FERRY_OP_READ, 0},
                     {"host->GPU WRITE", "HtoD", FERRY_OP_WRITE, 1},
                     {"GPU->host READ", "DtoH", FERRY_OP_READ, 1}};

        if (size == 0 || size > MAX_SIZE) {
            fprintf(stderr, "sizes must be 1..256m\n");
            return 2;
        }
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            bench_buf_t *local = kinds[k].host ? &r.pinned : &r.gpu;
            ferry_xfer_t *x = prepare(&r, kinds[k].op, local, size, NULL);
            unsigned iters = iters_for(&r, size);
            double fv[101], rv[101];
            /* The reference copies the same bytes the same way in one
             * process: between the two GPU buffers on a stream of gpu's
             * device, as ferry does, or pinned <-> gpu2 on one of gpu2's. */
            CUcontext lctx = kinds[k].host ? r.ctx2 : r.ctx;
            CUstream rs = kinds[k].host ? r.stream2 : r.stream;
            int write = kinds[k].op == FERRY_OP_WRITE, bad;
            uint64_t dst = (uintptr_t)(write ? r.gpu2.p : local->p);
            uint64_t src = (uintptr_t)(write ? local->p : r.gpu2.p);
            CUcontext dctx = write ? r.ctx2 : lctx, sctx = write ? lctx : r.ctx2;

            for (int i = 0; i < rounds; i++) {
                rv[i] = ref_gbps(rs, dst, dctx, src, sctx, size, iters);
                fv[i] = ferry_gbps(x, size, iters);
            }
            ferry_xfer_release(x);
            bad = verify(&r, local, size);
            failures += bad;
            {
                double f = median(fv, rounds), ref = median(rv, rounds);

                printf("%-10llu %-14s %12.1f %9.1f %-4s %8.3f %6s\n",
                       (unsigned long long)size, kinds[k].name, f, ref,
                       !kinds[k].host && r.ctx != r.ctx2 ? "Peer" : kinds[k].ref,
                       f / ref, bad ? "WRONG" : "ok");
            }
            fflush(stdout);
            /* Fresh bytes for the next kind, so no check passes on stale data. */
            fill_random(local, size + k + 3);
        }
    }
    free(list);
    if (!scatter_only)
        stream_section(&r, hello.blob, hello.blob_len, hello.b, rounds);
    free(hello.blob);
    pair_leave(comm);
    ferry_peer_forget(r.peer);
    ferry_mem_deregister(mem);
    bench_free(&r.pinned);
    bench_free(&r.gpu2);
    bench_free(&r.gpu);
    ferry_agent_destroy(r.agent);
    return failures ? 1 : 0;
}
