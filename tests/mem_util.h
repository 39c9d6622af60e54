/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test buffers of every memory kind ferry moves: pageable host memory,
 * pinned host memory (cuMemHostAlloc), GPU memory from cuMemAlloc, and GPU
 * memory from cuMemCreate + cuMemMap (virtual memory management, exported as
 * POSIX file descriptors, as PyTorch's expandable segments make it), the
 * latter built from several physical allocations mapped back to back.
 *
 * Tests fill and check bytes on the host: a GPU buffer has a host shadow,
 * copied to the device after filling (xm_to_dev) and back before checking
 * (xm_from_dev); for host kinds both are no-ops. CUDA comes from ferry's own
 * lazy loader, so these helpers run unchanged where there is no GPU, and
 * xm_alloc() then says so (77, the skip code). Compiled once into the test
 * library (tests/lib/mem.c).
 *
 * Devices. A process's GPU buffers live on device FERRY_TEST_DEVICE (default
 * 0); a target process that xu_spawn() starts gets FERRY_TEST_TARGET_DEVICE
 * as its FERRY_TEST_DEVICE when that is set, so that
 * FERRY_TEST_TARGET_DEVICE=1 puts the two processes of a test on different
 * GPUs (xm_target_device() tells the initiator which).
 */
#ifndef FERRY_TEST_MEM_UTIL_H
#define FERRY_TEST_MEM_UTIL_H

#include "cuda/cuda.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum xm_kind { XM_HOST, XM_PINNED, XM_CUDA, XM_VMM } xm_kind_t;

/* Physical allocations behind one VMM buffer. */
#define XM_VMM_CHUNKS 4

typedef struct xm_buf {
    xm_kind_t kind;
    size_t cap;
    uint8_t *host;  /* filled and checked by the test */
    uint64_t addr;  /* what descriptors name */
    CUdeviceptr va; /* VMM: the reserved range */
    size_t va_size;
    CUmemGenericAllocationHandle h[XM_VMM_CHUNKS];
    int dev; /* GPU kinds: the device */
} xm_buf_t;

/* Ends the process (exit 1), naming the call, when a driver call fails. */
#define XM_CU(call)                                                           \
    do {                                                                      \
        CUresult xm_res_ = (call);                                            \
        if (xm_res_ != CUDA_SUCCESS) {                                        \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__,     \
                    #call, (int)xm_res_);                                     \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* This process's device (FERRY_TEST_DEVICE, default 0), and the device of
 * the targets it spawns (FERRY_TEST_TARGET_DEVICE, default the same). */
int xm_device(void);
int xm_target_device(void);

/* A kind's name (host, pinned, cuda, vmm), and the kind a name gives
 * (0, or -1 for an unknown name). */
const char *xm_name(xm_kind_t k);
int xm_parse(const char *s, xm_kind_t *k_p);

/* Whether the kind is GPU memory (cuda or vmm). */
int xm_is_gpu(xm_kind_t k);

/* The kind a descriptor of such memory names; VMM memory is registered as
 * AUTO: detection is part of what it tests. */
ferry_mem_kind_t xm_ferry_kind(xm_kind_t k);

/* A descriptor of this process's memory of kind k at addr (device: this
 * process's), and one of a spawned target's (its device). */
ferry_desc_t xm_desc(xm_kind_t k, uint64_t addr, uint64_t len);
ferry_desc_t xm_target_desc(xm_kind_t k, uint64_t addr, uint64_t len);

/* The driver table with this process's device's context current on this
 * thread, or NULL where there is no usable GPU or not that device. The
 * reason is then printed as one "skip: ..." line, which `make test` lists
 * after the run (tests/ctest-summary), since every caller skips. */
const ferry__cuda_t *xm_cuda(void);

/* Makes device dev's context current for a moment when it is not this
 * process's device (xm_pop() undoes it). */
void xm_push(int dev);
void xm_pop(int dev);

/* A zeroed buffer of cap bytes of the kind, GPU kinds on device dev
 * (xm_alloc: this process's device). 0 on success, 77 if the kind needs a
 * GPU that is not there; other failures end the process. */
int xm_alloc_on(xm_buf_t *b, xm_kind_t kind, size_t cap, int dev);
int xm_alloc(xm_buf_t *b, xm_kind_t kind, size_t cap);

/* After the host shadow's [lo, hi) changed: the device gets it, completely
 * (a copy from pageable memory may return before its DMA ends, and another
 * process is about to read the bytes). No-op for host kinds. */
void xm_to_dev(xm_buf_t *b, uint64_t lo, uint64_t hi);

/* Before checking [lo, hi): the host shadow gets the device's bytes. */
void xm_from_dev(xm_buf_t *b, uint64_t lo, uint64_t hi);

/* Waits for the work queued on stream s so far, polling an event, up to
 * timeout_ms: 0 when done, -1 when the stream is still busy (a
 * stream-ordered transfer must never hang the GPU: the caller fails). */
int xm_stream_sync(CUstream s, int timeout_ms);

/* Frees the buffer and zeroes *b. */
void xm_free(xm_buf_t *b);

#endif
