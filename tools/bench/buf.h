/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Benchmark buffers of every memory kind, the one place that knows how to
 * allocate each: host memory from ferry_mem_alloc() (UCX's shared memory)
 * or an anonymous mapping, pinned host memory, and GPU memory from
 * ferry_mem_alloc() (one cuMemCreate allocation, shared as a file
 * descriptor) or cuMemAlloc (shared as a legacy IPC handle). GPU memory
 * lives on the device that bench_gpu_use() chose, and its bytes are filled
 * and read through host copies (bench_copy).
 *
 * CUDA comes from the library's own lazy loader (src/cuda), so these
 * buffers work unchanged where there is no GPU: allocating GPU memory then
 * fails with ferry's reason.
 */
#ifndef FERRY_BENCH_BUF_H
#define FERRY_BENCH_BUF_H

#include "bench.h"

#include "cuda/cuda.h"

/* Where a buffer's memory comes from. */
typedef enum bench_src {
    SRC_FERRY,  /* ferry_mem_alloc() of the buffer's kind */
    SRC_MMAP,   /* host: an anonymous mapping */
    SRC_PINNED, /* host: cuMemHostAlloc (portable) */
    SRC_CUMEM   /* GPU: cuMemAlloc */
} bench_src_t;

typedef struct bench_buf {
    ferry_mem_kind_t kind;
    int device; /* GPU memory's */
    bench_src_t src;
    ferry_agent_t *agent; /* SRC_FERRY: the allocating agent */
    uint8_t *p;
    size_t len;
} bench_buf_t;

/*
 * Allocates len bytes of kind from src (SRC_FERRY on agent), GPU memory on
 * the device bench_gpu_use() made current, and dies with the reason when it
 * cannot. Host memory is touched, so page faults stay out of timed loops.
 */
void bench_alloc(ferry_agent_t *agent, ferry_mem_kind_t kind, bench_src_t src,
                 size_t len, bench_buf_t *b);
void bench_free(bench_buf_t *b);

/* A descriptor of [at, at + len) of the buffer. */
ferry_desc_t bench_desc(const bench_buf_t *b, size_t at, size_t len);

/*
 * Makes a device's primary context current on the calling thread (from now
 * on, until bench_gpu_pop()) and returns the device: want, or rank modulo
 * the device count for want < 0. Without a usable driver it returns 0 and
 * leaves allocating to say why.
 */
int bench_gpu_use(int want, int rank);
void bench_gpu_pop(void);

/* Copies n bytes between the host memory at host and the buffer at at
 * (to_buf: host -> buffer), complete when it returns: a copy from
 * pageable memory may return before its DMA ends, and a peer process
 * reads the bytes next. Host buffers are copied with memcpy. */
void bench_copy(const bench_buf_t *b, size_t at, void *host, size_t n, bool to_buf);

/* The loaded driver's table (dies without one): for the GPU benchmarks'
 * own reference copies. */
const ferry__cuda_t *bench_cuda(void);

#endif
