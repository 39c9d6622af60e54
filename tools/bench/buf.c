/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Benchmark buffers (buf.h).
 */
#include "buf.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

const ferry__cuda_t *bench_cuda(void)
{
    const ferry__cuda_t *cu;

    CHECK(ferry__cuda_get(&cu), "cannot load the CUDA driver for GPU memory");
    return cu;
}

/* The driver's failure ends the run, naming the call. */
static void cu_check(CUresult res, const char *call)
{
    if (ferry__cuda_check(res, call) != FERRY_OK) {
        die("%s", ferry_last_error());
    }
}

int bench_gpu_use(int want, int rank)
{
    const ferry__cuda_t *cu;
    int dev;

    if (ferry__cuda_get(&cu) != FERRY_OK) {
        return 0;
    }
    dev = want >= 0 ? want : rank % cu->ndevices;
    if (dev >= cu->ndevices) {
        die("--gpu %d: this host has %d CUDA device(s)", dev, cu->ndevices);
    }
    if (ferry__cuda_push(dev) != FERRY_OK) {
        die("GPU memory: no context for device %d: %s", dev, ferry_last_error());
    }
    return dev;
}

void bench_gpu_pop(void)
{
    ferry__cuda_pop();
}

/* The device of the current context, where GPU memory is allocated. */
static int current_device(void)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    CUdevice dev = 0;

    if (cu == NULL || cu->cuCtxGetDevice(&dev) != CUDA_SUCCESS) {
        return 0;
    }
    return dev;
}

void bench_alloc(ferry_agent_t *agent, ferry_mem_kind_t kind, bench_src_t src,
                 size_t len, bench_buf_t *b)
{
    void *p = NULL;
    CUdeviceptr dp;

    *b = (bench_buf_t){.kind = kind, .src = src, .agent = agent, .len = len};
    switch (src) {
    case SRC_MMAP:
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
        if (p == MAP_FAILED) {
            die("mmap of %zu bytes: %s", len, strerror(errno));
        }
        break;
    case SRC_FERRY:
        CHECK(ferry_mem_alloc(agent, len, kind, &p),
              "cannot allocate %zu B of %s memory", len,
              kind == FERRY_MEM_CUDA ? "cuda" : "host");
        break;
    case SRC_PINNED:
        cu_check(bench_cuda()->cuMemHostAlloc(&p, len, CU_MEMHOSTALLOC_PORTABLE),
                 "cuMemHostAlloc");
        break;
    case SRC_CUMEM:
        cu_check(bench_cuda()->cuMemAlloc(&dp, len), "cuMemAlloc");
        p = (void *)(uintptr_t)dp;
        break;
    }
    b->p = p;
    if (kind == FERRY_MEM_CUDA) {
        b->device = current_device();
    } else {
        /* Touching it now keeps page faults out of the timed loops. */
        memset(b->p, 0xa5, len);
    }
}

void bench_free(bench_buf_t *b)
{
    switch (b->src) {
    case SRC_FERRY: CHECK(ferry_mem_free(b->agent, b->p), "cannot free the buffer"); break;
    case SRC_MMAP: munmap(b->p, b->len); break;
    case SRC_PINNED: bench_cuda()->cuMemFreeHost(b->p); break;
    case SRC_CUMEM: bench_cuda()->cuMemFree((CUdeviceptr)(uintptr_t)b->p); break;
    }
    b->p = NULL;
}

ferry_desc_t bench_desc(const bench_buf_t *b, size_t at, size_t len)
{
    return (ferry_desc_t){.addr = (uintptr_t)b->p + at, .len = len,
                          .kind = b->kind, .device = b->device};
}

void bench_copy(const bench_buf_t *b, size_t at, void *host, size_t n, bool to_buf)
{
    const ferry__cuda_t *cu;
    CUdeviceptr gpu = (CUdeviceptr)(uintptr_t)(b->p + at);

    if (b->kind != FERRY_MEM_CUDA) {
        memmove(to_buf ? b->p + at : host, to_buf ? host : b->p + at, n);
        return;
    }
    if (ferry__cuda_get(&cu) != FERRY_OK) {
        die("a copy of GPU memory: %s", ferry_last_error());
    }
    if (ferry__cuda_push(b->device) != FERRY_OK) {
        die("a copy of GPU memory: %s", ferry_last_error());
    }
    cu_check(to_buf ? cu->cuMemcpy(gpu, (CUdeviceptr)(uintptr_t)host, n)
                    : cu->cuMemcpy((CUdeviceptr)(uintptr_t)host, gpu, n),
             "cuMemcpy");
    cu_check(cu->cuCtxSynchronize(), "cuCtxSynchronize");
    ferry__cuda_pop();
}
