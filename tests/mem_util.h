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
 * xm_alloc() then says so (77, the skip code).
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

static inline int xm_env_device(const char *name, int dflt)
{
    const char *s = getenv(name);

    return (s != NULL && *s != '\0') ? atoi(s) : dflt;
}

/* This process's device, and the device of the targets it spawns. */
static inline int xm_device(void)
{
    return xm_env_device("FERRY_TEST_DEVICE", 0);
}

static inline int xm_target_device(void)
{
    return xm_env_device("FERRY_TEST_TARGET_DEVICE", xm_device());
}

static inline const char *xm_name(xm_kind_t k)
{
    static const char *const names[] = {"host", "pinned", "cuda", "vmm"};

    return names[k];
}

static inline int xm_parse(const char *s, xm_kind_t *k_p)
{
    for (int k = XM_HOST; k <= XM_VMM; k++) {
        if (strcmp(s, xm_name((xm_kind_t)k)) == 0) {
            *k_p = (xm_kind_t)k;
            return 0;
        }
    }
    return -1;
}

static inline int xm_is_gpu(xm_kind_t k)
{
    return k == XM_CUDA || k == XM_VMM;
}

static inline ferry_mem_kind_t xm_ferry_kind(xm_kind_t k)
{
    /* VMM memory is registered as AUTO: detection is part of what it tests. */
    return k == XM_CUDA ? FERRY_MEM_CUDA : k == XM_VMM ? FERRY_MEM_AUTO : FERRY_MEM_HOST;
}

/* A descriptor of this process's memory of kind k at addr (device: this
 * process's), and one of a spawned target's (its device). */
static inline ferry_desc_t xm_desc(xm_kind_t k, uint64_t addr, uint64_t len)
{
    return (ferry_desc_t){addr, len, xm_ferry_kind(k), xm_device()};
}

static inline ferry_desc_t xm_target_desc(xm_kind_t k, uint64_t addr, uint64_t len)
{
    return (ferry_desc_t){addr, len, xm_ferry_kind(k), xm_target_device()};
}

/* The driver table with this process's device's context current on this
 * thread, or NULL (and the reason printed) where there is no usable GPU or
 * not that device. */
static inline const ferry__cuda_t *xm_cuda(void)
{
    static const ferry__cuda_t *cu;

    if (cu == NULL) {
        if (ferry__cuda_get(&cu) != FERRY_OK) {
            printf("no usable CUDA: %s\n", ferry_last_error());
            cu = NULL;
            return NULL;
        }
        int n = 0;

        if (cu->cuDeviceGetCount(&n) != CUDA_SUCCESS || xm_device() >= n) {
            printf("no CUDA device %d here (%d device(s))\n", xm_device(), n);
            cu = NULL;
        } else if (ferry__cuda_push(xm_device()) != FERRY_OK) {
            printf("no CUDA context: %s\n", ferry_last_error());
            cu = NULL;
        }
    }
    return cu;
}

#define XM_CU(call)                                                           \
    do {                                                                      \
        CUresult xm_res_ = (call);                                            \
        if (xm_res_ != CUDA_SUCCESS) {                                        \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__,     \
                    #call, (int)xm_res_);                                     \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static inline void xm_alloc_vmm(const ferry__cuda_t *cu, xm_buf_t *b)
{
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, b->dev},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    size_t gran, chunk;

    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = access.location;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    XM_CU(cu->cuMemGetAllocationGranularity(&gran, &prop,
                                            CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    chunk = (b->cap / XM_VMM_CHUNKS + gran - 1) / gran * gran;
    b->va_size = chunk * XM_VMM_CHUNKS;
    XM_CU(cu->cuMemAddressReserve(&b->va, b->va_size, gran, 0, 0));
    for (int i = 0; i < XM_VMM_CHUNKS; i++) {
        XM_CU(cu->cuMemCreate(&b->h[i], chunk, &prop, 0));
        XM_CU(cu->cuMemMap(b->va + (CUdeviceptr)i * chunk, chunk, 0, b->h[i], 0));
    }
    XM_CU(cu->cuMemSetAccess(b->va, b->va_size, &access, 1));
    b->addr = b->va;
}

/* Makes device dev's context current for a moment when it is not this
 * process's device (xm_pop() undoes it). */
static inline void xm_push(int dev)
{
    if (dev != xm_device() && ferry__cuda_push(dev) != FERRY_OK) {
        fprintf(stderr, "no context for CUDA device %d: %s\n", dev, ferry_last_error());
        exit(1);
    }
}

static inline void xm_pop(int dev)
{
    if (dev != xm_device())
        ferry__cuda_pop();
}

/* 0 on success, 77 if the kind needs a GPU that is not there; GPU kinds on
 * device dev. */
static inline int xm_alloc_on(xm_buf_t *b, xm_kind_t kind, size_t cap, int dev)
{
    const ferry__cuda_t *cu = NULL;

    memset(b, 0, sizeof(*b));
    b->kind = kind;
    b->cap = cap;
    b->dev = dev;
    if (kind != XM_HOST && (cu = xm_cuda()) == NULL)
        return 77;
    xm_push(dev);
    switch (kind) {
    case XM_HOST:
        if (posix_memalign((void **)&b->host, 4096, cap) != 0)
            b->host = NULL;
        b->addr = (uint64_t)(uintptr_t)b->host;
        break;
    case XM_PINNED:
        XM_CU(cu->cuMemHostAlloc((void **)&b->host, cap, CU_MEMHOSTALLOC_PORTABLE));
        b->addr = (uint64_t)(uintptr_t)b->host;
        break;
    case XM_CUDA:
        XM_CU(cu->cuMemAlloc(&b->va, cap));
        b->addr = b->va;
        b->host = malloc(cap);
        break;
    case XM_VMM:
        xm_alloc_vmm(cu, b);
        b->host = malloc(cap);
        break;
    }
    if (b->host == NULL) {
        fprintf(stderr, "cannot allocate %zu bytes of host memory\n", cap);
        exit(1);
    }
    memset(b->host, 0, cap);
    if (xm_is_gpu(kind))
        XM_CU(cu->cuMemcpy((CUdeviceptr)b->addr, (CUdeviceptr)(uintptr_t)b->host, cap));
    if (kind != XM_HOST)
        xm_pop(dev);
    return 0;
}

/* The same on this process's device. */
static inline int xm_alloc(xm_buf_t *b, xm_kind_t kind, size_t cap)
{
    return xm_alloc_on(b, kind, cap, xm_device());
}

/* After the host shadow's [lo, hi) changed: the device gets it, completely
 * (a copy from pageable memory may return before its DMA ends, and another
 * process is about to read the bytes). */
static inline void xm_to_dev(xm_buf_t *b, uint64_t lo, uint64_t hi)
{
    if (xm_is_gpu(b->kind) && hi > lo) {
        XM_CU(xm_cuda()->cuMemcpy((CUdeviceptr)(b->addr + lo),
                                  (CUdeviceptr)(uintptr_t)(b->host + lo), hi - lo));
        XM_CU(xm_cuda()->cuCtxSynchronize());
    }
}

/* Before checking [lo, hi): the host shadow gets the device's bytes. */
static inline void xm_from_dev(xm_buf_t *b, uint64_t lo, uint64_t hi)
{
    if (xm_is_gpu(b->kind) && hi > lo)
        XM_CU(xm_cuda()->cuMemcpy((CUdeviceptr)(uintptr_t)(b->host + lo),
                                  (CUdeviceptr)(b->addr + lo), hi - lo));
}

static inline void xm_free(xm_buf_t *b)
{
    const ferry__cuda_t *cu = b->kind == XM_HOST ? NULL : xm_cuda();

    if (cu != NULL)
        xm_push(b->dev);
    switch (b->kind) {
    case XM_HOST:
        free(b->host);
        break;
    case XM_PINNED:
        cu->cuMemFreeHost(b->host);
        break;
    case XM_CUDA:
        cu->cuMemFree(b->va);
        free(b->host);
        break;
    case XM_VMM:
        cu->cuMemUnmap(b->va, b->va_size);
        for (int i = 0; i < XM_VMM_CHUNKS; i++)
            cu->cuMemRelease(b->h[i]);
        cu->cuMemAddressFree(b->va, b->va_size);
        free(b->host);
        break;
    }
    if (cu != NULL)
        xm_pop(b->dev);
    memset(b, 0, sizeof(*b));
}

#endif
