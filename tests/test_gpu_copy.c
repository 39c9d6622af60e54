/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The copy kernel (src/cuda/copy.h) through the public API, in one
 * process: an agent loads its own metadata as a peer (CUDA IPC then copies
 * between two of its GPU buffers, as between two processes' buffers on one
 * device) and moves batches of every shape: 1 to 20 000 segments, lengths
 * from 1 byte to 1 MiB and up to 16 MiB, random unaligned offsets on both
 * sides whose address order is shuffled, READ and WRITE, each request
 * posted several times with new bytes; after every post every destination
 * range is checked, and the guard bytes around and between them. Each
 * shape runs in the three modes (FERRY_CUDA_COPY auto, kernel, engine) and
 * with small grids (FERRY_CUDA_COPY_BLOCKS 1 and 7), read at prepare.
 * Also: the embedded PTX loads on this driver, an unknown mode is refused
 * at prepare, and ferry-info's report names the kernel and its grid.
 *
 * With --bad-ptx (the test sets FERRY_CUDA_COPY_PTX to a file that is not
 * PTX): the kernel does not load, the reason says so, ferry-info says
 * "copy engines only", and batches still move the right bytes.
 *
 * Skipped (77) without a GPU. FERRY_TEST_SEED replays a run.
 */
#include "mem_util.h"
#include "xfer_util.h"

#include "cuda/copy.h"

#define CAP (256ull << 20)
#define POSTS 4
#define WAIT_NS (30ll * 1000 * 1000 * 1000)

typedef struct shape {
    size_t n;
    uint64_t max_len;
} shape_t;

static const shape_t shapes[] = {
    {1, 1}, {1, 3ull << 20}, {2, 1ull << 20}, {3, 16ull << 20}, {17, 4096},
    {300, 1ull << 20}, {1024, 64ull << 10}, {5000, 4096}, {20000, 1024},
};

static ferry_agent_t *agent;
static ferry_peer_t *peer;
static xm_buf_t lbuf, rbuf;
static uint64_t seed;

/* One shape, one op, in the mode and grid the environment sets now:
 * prepared once, posted POSTS times with new bytes, each checked. */
static void run_shape(unsigned si, ferry_xfer_op_t op, const char *mode)
{
    const shape_t *sh = &shapes[si];
    test_rng_t rng = {seed ^ (si * 0x9E3779B97F4A7C15ull) ^ op};
    xu_layout_t l;
    ferry_desc_t *ld, *rd;
    ferry_xfer_t *x;
    xm_buf_t *src = op == FERRY_OP_WRITE ? &lbuf : &rbuf;
    xm_buf_t *dst = op == FERRY_OP_WRITE ? &rbuf : &lbuf;
    const xu_side_t *ss, *ds;
    char what[160];

    ASSERT_TRUE(xu_layout_make(&l, &rng, sh->n, sh->max_len, CAP, CAP) == 0);
    ss = op == FERRY_OP_WRITE ? &l.local : &l.remote;
    ds = op == FERRY_OP_WRITE ? &l.remote : &l.local;
    ld = xu_xcalloc(sh->n, sizeof(*ld));
    rd = xu_xcalloc(sh->n, sizeof(*rd));
    for (size_t i = 0; i < sh->n; i++) {
        ld[i] = xm_desc(XM_CUDA, lbuf.addr + l.local.off[i], l.len[i]);
        rd[i] = xm_desc(XM_CUDA, rbuf.addr + l.remote.off[i], l.len[i]);
    }
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, ld, sh->n, peer, rd, sh->n, NULL, &x));
    for (uint64_t it = 1; it <= POSTS; it++) {
        uint64_t iter = (uint64_t)si * 1000 + it, lo = ds->lo, hi = ds->hi;
        size_t bad;

        snprintf(what, sizeof(what), "%s, %s, %zu x 1..%llu B, post %llu", mode,
                 op == FERRY_OP_WRITE ? "WRITE" : "READ", sh->n,
                 (unsigned long long)sh->max_len, (unsigned long long)it);
        lo = lo > 4096 ? lo - 4096 : 0;
        hi = hi + 4096 < CAP ? hi + 4096 : CAP;
        xu_fill_ranges(src->host, &l, ss, seed, iter);
        xm_to_dev(src, ss->lo, ss->hi);
        xu_fill_guard(dst->host, lo, hi, seed, XU_GUARD_ITER + iter);
        xm_to_dev(dst, lo, hi);
        EXPECT_ST(FERRY_OK, xu_post_wait(x, WAIT_NS));
        xm_from_dev(dst, lo, hi);
        bad = xu_check_dest(dst->host, &l, ds, lo, hi, seed, iter, XU_GUARD_ITER + iter,
                            what);
        EXPECT_EQ(0, (long long)bad);
        if (bad)
            break;
    }
    ferry_xfer_release(x);
    free(ld);
    free(rd);
    xu_layout_free(&l);
}

static void run_all(const char *mode)
{
    for (unsigned si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        run_shape(si, FERRY_OP_WRITE, mode);
        run_shape(si, FERRY_OP_READ, mode);
    }
    printf("%s: %zu shapes, READ and WRITE, %d posts each, every byte checked\n", mode,
           sizeof(shapes) / sizeof(shapes[0]), POSTS);
}

/* ferry_info_print()'s CUDA part contains want. */
static void expect_info(const char *want)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    ASSERT_TRUE(f != NULL);
    EXPECT_ST(FERRY_OK, ferry_info_print(f, FERRY_INFO_CUDA));
    fclose(f);
    if (strstr(text, want) == NULL)
        TEST_FAIL_AT_("ferry-info's CUDA part lacks '%s':\n%s", want, text);
    free(text);
}

int main(int argc, char **argv)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "gpu-copy"};
    int bad_ptx = argc > 1 && strcmp(argv[1], "--bad-ptx") == 0;
    const ferry__cuda_t *cu;
    ferry_mem_t *mem;
    CUfunction fn;
    void *blob;
    size_t blob_len;

    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0xC0B1);
    if ((cu = xm_cuda()) == NULL)
        return 77;
    if (xm_alloc(&lbuf, XM_CUDA, CAP) || xm_alloc(&rbuf, XM_CUDA, CAP))
        return 1;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    {
        ferry_desc_t d[2] = {xm_desc(XM_CUDA, lbuf.addr, CAP), xm_desc(XM_CUDA, rbuf.addr, CAP)};

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 2, &mem));
    }
    ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &blob_len));
    ASSERT_ST(FERRY_OK, ferry_peer_load(agent, blob, blob_len, &peer));
    ferry_md_free(blob);

    if (bad_ptx) {
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry__cuda_copy_kernel(xm_device(), &fn));
        EXPECT_ERR_HAS("cannot load the copy kernel");
        expect_info("copy engines only");
        run_all("a kernel that does not load");
        goto out;
    }
    EXPECT_ST(FERRY_OK, ferry__cuda_copy_kernel(xm_device(), &fn));
    expect_info("copy kernel loaded, grid of");

    /* An unknown mode is the caller's mistake, named at prepare. */
    setenv("FERRY_CUDA_COPY", "fast", 1);
    {
        ferry_desc_t l[2] = {xm_desc(XM_CUDA, lbuf.addr, 64), xm_desc(XM_CUDA, lbuf.addr + 128, 64)};
        ferry_desc_t r[2] = {xm_desc(XM_CUDA, rbuf.addr, 64), xm_desc(XM_CUDA, rbuf.addr + 128, 64)};
        ferry_xfer_t *x;

        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 2, peer,
                                                        r, 2, NULL, &x));
        EXPECT_ERR_HAS("FERRY_CUDA_COPY");
    }
    setenv("FERRY_CUDA_COPY", "auto", 1);
    run_all("auto");
    setenv("FERRY_CUDA_COPY", "kernel", 1);
    run_all("kernel");
    setenv("FERRY_CUDA_COPY_BLOCKS", "1", 1);
    run_all("kernel, 1 block");
    setenv("FERRY_CUDA_COPY_BLOCKS", "7", 1);
    run_all("kernel, 7 blocks");
    unsetenv("FERRY_CUDA_COPY_BLOCKS");
    setenv("FERRY_CUDA_COPY", "engine", 1);
    run_all("engine");
out:
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    xm_free(&lbuf);
    xm_free(&rbuf);
    return test_finish("test_gpu_copy");
}
