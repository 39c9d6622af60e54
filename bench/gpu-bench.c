/*
 * ferry-gpu-bench: GPU transfers between two processes on one host through
 * ferry (CUDA IPC), each figure a ratio to the CUDA copy that is its
 * ceiling, measured in the same run:
 *   - GPU -> GPU WRITE and READ into the peer's cuMemAlloc buffer, against
 *     cuMemcpyDtoD within one process;
 *   - host -> GPU (WRITE from local pinned memory into the peer's GPU
 *     buffer) and GPU -> host (READ), against pinned cuMemcpyHtoD/DtoH
 *   (each reference copy, like each transfer, complete before the next);
 *   - the time to open the peer's allocation the first time (the first
 *     prepare against it), and the time of one small transfer after that.
 * Rounds alternate reference and ferry (A B A B ...) and the table gives
 * medians. Every buffer holds random bytes, and after the timed rounds the
 * bytes that arrived are checked once per size.
 *
 *   ferry-gpu-bench [--sizes 1m,16m,256m] [--rounds 5] [--min-bytes 4g]
 */
#include "mem_util.h"
#include "xfer_util.h"

#define MAX_SIZE (256ull << 20)
#define WAIT_NS (30ll * 1000 * 1000 * 1000)

enum { M_HELLO = 1, M_QUIT, M_BYE };

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 0);

    switch (*end) {
    case 'k': case 'K': return v << 10;
    case 'm': case 'M': return v << 20;
    case 'g': case 'G': return v << 30;
    default: return v;
    }
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

/* The target: one GPU buffer, registered and advertised, until told. */
static int target_main(int fd)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "gpu-target"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    xm_buf_t b;
    void *blob;
    size_t len;
    xu_msg_t m;

    if (xm_alloc(&b, XM_CUDA, MAX_SIZE) != 0)
        return 77;
    die_st(ferry_agent_create(&ap, &agent), "agent_create");
    {
        ferry_desc_t d = {b.addr, MAX_SIZE, FERRY_MEM_CUDA, 0};

        die_st(ferry_mem_register(agent, &d, 1, &mem), "mem_register");
    }
    die_st(ferry_md_pack(agent, &blob, &len), "md_pack");
    if (xu_send_msg(fd, M_HELLO, 0, len, b.addr, 0) != 0 || xu_send(fd, blob, len) != 0)
        return 1;
    ferry_md_free(blob);
    /* Serves the checks: sends its buffer's bytes when asked. */
    for (;;) {
        if (xu_recv_msg(fd, &m, 0, 600000, agent) != 0 || m.type == M_QUIT)
            break;
    }
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    xm_free(&b);
    return 0;
}

typedef struct run {
    ferry_agent_t *agent;
    ferry_peer_t *peer;
    uint64_t raddr;
    xm_buf_t gpu, gpu2, pinned;
    CUstream stream;
    uint64_t min_bytes;
} run_t;

static unsigned iters_for(const run_t *r, uint64_t size)
{
    uint64_t n = r->min_bytes / size;

    return n < 20 ? 20 : n > 100000 ? 100000 : (unsigned)n;
}

/* GB/s of copies dst <- src (device to device, host to device or device to
 * host by the pointers), size bytes, iters times, each complete before the
 * next starts, as each ferry transfer is (cuMemcpy alone does not wait for a
 * device-to-device copy). */
static double ref_gbps(CUstream stream, uint64_t dst, uint64_t src, uint64_t size,
                       unsigned iters)
{
    const ferry__cuda_t *cu = xm_cuda();
    uint64_t t0 = 0;

    for (unsigned i = 0; i <= iters; i++) {
        if (i == 1)
            t0 = xu_now_ns(); /* the first copy warms up */
        XM_CU(cu->cuMemcpyAsync(dst, src, size, stream));
        XM_CU(cu->cuStreamSynchronize(stream));
    }
    return (double)size * iters / (double)(xu_now_ns() - t0);
}

/* GB/s of a prepared request posted and waited for iters times. */
static double ferry_gbps(ferry_xfer_t *x, uint64_t size, unsigned iters)
{
    uint64_t t0;

    die_st(ferry_xfer_post(x), "post");
    die_st(ferry_xfer_wait(x, WAIT_NS), "wait");
    t0 = xu_now_ns();
    for (unsigned i = 0; i < iters; i++) {
        die_st(ferry_xfer_post(x), "post");
        die_st(ferry_xfer_wait(x, WAIT_NS), "wait");
    }
    return (double)size * iters / (double)(xu_now_ns() - t0);
}

static ferry_xfer_t *prepare(const run_t *r, ferry_xfer_op_t op, const xm_buf_t *local,
                             uint64_t size, double *us_p)
{
    ferry_desc_t ld = {local->addr, size, xm_ferry_kind(local->kind), 0};
    ferry_desc_t rd = {r->raddr, size, FERRY_MEM_CUDA, 0};
    ferry_xfer_t *x;
    uint64_t t0 = xu_now_ns();

    die_st(ferry_xfer_prepare(r->agent, op, &ld, 1, r->peer, &rd, 1, NULL, &x), "prepare");
    if (us_p)
        *us_p = (double)(xu_now_ns() - t0) / 1e3;
    return x;
}

/* After the timed rounds: the peer's bytes, read once more into gpu2, must
 * equal local's (a WRITE copied local there; a READ copied them into local). */
static int verify(run_t *r, xm_buf_t *local, uint64_t size)
{
    ferry_xfer_t *x = prepare(r, FERRY_OP_READ, &r->gpu2, size, NULL);

    die_st(ferry_xfer_post(x), "post");
    die_st(ferry_xfer_wait(x, WAIT_NS), "wait");
    ferry_xfer_release(x);
    xm_from_dev(&r->gpu2, 0, size);
    xm_from_dev(local, 0, size);
    return memcmp(r->gpu2.host, local->host, size) != 0;
}

static void fill_random(xm_buf_t *b, uint64_t seed)
{
    test_fill(b->host, b->cap, seed, 1, 0);
    xm_to_dev(b, 0, b->cap);
}

int main(int argc, char **argv)
{
    const char *sizes = "1m,16m,256m";
    int rounds = 5, fd, status, failures = 0;
    pid_t pid;
    run_t r = {.min_bytes = 4ull << 30};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "gpu-initiator"};
    ferry_mem_t *mem;
    uint8_t *blob;
    xu_msg_t m;
    double open_us, again_us, small_us;

    if (argc >= 3 && strcmp(argv[1], "--target") == 0)
        return target_main(atoi(argv[2]));
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sizes") == 0)
            sizes = argv[i + 1];
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--min-bytes") == 0)
            r.min_bytes = parse_size(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--sizes 1m,16m,256m] [--rounds N] "
                            "[--min-bytes 4g]\n", argv[0]);
            return 2;
        }
    }
    if (rounds < 1 || rounds > 101) {
        fprintf(stderr, "--rounds must be 1..101\n");
        return 2;
    }
    fd = xu_spawn(argv[0], "--target", NULL, NULL, &pid);
    if (fd < 0)
        return 1;
    if (xm_alloc(&r.gpu, XM_CUDA, MAX_SIZE) != 0) {
        kill(pid, SIGKILL);
        xu_reap(pid, 5000);
        printf("ferry-gpu-bench: no GPU here\n");
        return 77;
    }
    xm_alloc(&r.gpu2, XM_CUDA, MAX_SIZE);
    xm_alloc(&r.pinned, XM_PINNED, MAX_SIZE);
    fill_random(&r.gpu, 1);
    fill_random(&r.pinned, 2);
    XM_CU(xm_cuda()->cuStreamCreate(&r.stream, CU_STREAM_NON_BLOCKING));
    die_st(ferry_agent_create(&ap, &r.agent), "agent_create");
    {
        ferry_desc_t d[3] = {{r.gpu.addr, MAX_SIZE, FERRY_MEM_CUDA, 0},
                             {r.gpu2.addr, MAX_SIZE, FERRY_MEM_CUDA, 0},
                             {r.pinned.addr, MAX_SIZE, FERRY_MEM_HOST, 0}};

        die_st(ferry_mem_register(r.agent, d, 3, &mem), "mem_register");
    }
    if (xu_recv_msg(fd, &m, M_HELLO, 60000, NULL) != 0)
        return 1;
    blob = xu_xcalloc(1, m.iter);
    if (xu_recv(fd, blob, m.iter, 60000, NULL) != 0)
        return 1;
    die_st(ferry_peer_load(r.agent, blob, m.iter, &r.peer), "peer_load");
    free(blob);
    r.raddr = m.a;

    /* Opening the peer's allocation is part of the first prepare only. */
    {
        ferry_xfer_t *x = prepare(&r, FERRY_OP_WRITE, &r.gpu, 4096, &open_us);
        ferry_xfer_t *y = prepare(&r, FERRY_OP_WRITE, &r.gpu, 4096, &again_us);
        unsigned n = 2000;
        uint64_t t0;

        (void)ferry_gbps(y, 4096, 10);
        t0 = xu_now_ns();
        for (unsigned i = 0; i < n; i++) {
            die_st(ferry_xfer_post(x), "post");
            die_st(ferry_xfer_wait(x, WAIT_NS), "wait");
        }
        small_us = (double)(xu_now_ns() - t0) / 1e3 / n;
        ferry_xfer_release(x);
        ferry_xfer_release(y);
    }
    printf("# ferry-gpu-bench: %d rounds (reference and ferry alternating), medians; "
           "GB/s are 10^9 bytes of payload per second\n", rounds);
    printf("first prepare against the peer (opens its allocation): %.1f us; "
           "a second prepare: %.1f us; one 4 KiB WRITE after that: %.1f us\n\n",
           open_us, again_us, small_us);
    printf("%-10s %-14s %12s %14s %8s %6s\n", "size", "transfer", "ferry GB/s",
           "reference GB/s", "ratio", "bytes");

    for (const char *p = sizes; *p;) {
        uint64_t size = parse_size(p);
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
            xm_buf_t *local = kinds[k].host ? &r.pinned : &r.gpu;
            ferry_xfer_t *x = prepare(&r, kinds[k].op, local, size, NULL);
            unsigned iters = iters_for(&r, size);
            double fv[101], rv[101];
            uint64_t dst, src;
            int bad;

            /* The reference copies the same bytes the same way in one
             * process: between the two GPU buffers, or pinned <-> GPU. */
            dst = kinds[k].op == FERRY_OP_WRITE ? r.gpu2.addr : local->addr;
            src = kinds[k].op == FERRY_OP_WRITE ? local->addr : r.gpu2.addr;
            if (!kinds[k].host) {
                dst = r.gpu2.addr;
                src = r.gpu.addr;
            }
            for (int i = 0; i < rounds; i++) {
                rv[i] = ref_gbps(r.stream, dst, src, size, iters);
                fv[i] = ferry_gbps(x, size, iters);
            }
            ferry_xfer_release(x);
            bad = verify(&r, local, size);
            failures += bad;
            {
                double f = median(fv, rounds), ref = median(rv, rounds);

                printf("%-10llu %-14s %12.1f %9.1f %-4s %8.3f %6s\n",
                       (unsigned long long)size, kinds[k].name, f, ref, kinds[k].ref,
                       f / ref, bad ? "WRONG" : "ok");
            }
            fflush(stdout);
            /* Fresh bytes for the next kind, so no check passes on stale data. */
            fill_random(local, size + k + 3);
        }
        p = strchr(p, ',');
        if (p == NULL)
            break;
        p++;
    }
    xu_send_msg(fd, M_QUIT, 0, 0, 0, 0);
    status = xu_reap(pid, 30000);
    ferry_peer_forget(r.peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(r.agent);
    xm_free(&r.pinned);
    xm_free(&r.gpu2);
    xm_free(&r.gpu);
    if (status != 0) {
        fprintf(stderr, "ferry-gpu-bench: the target exited with status %d\n", status);
        failures++;
    }
    return failures ? 1 : 0;
}
