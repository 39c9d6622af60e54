/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test buffers of every memory kind (see mem_util.h): pageable and pinned
 * host memory, cuMemAlloc memory, and VMM memory built from several
 * physical allocations, each with a host shadow that tests fill and check.
 */
#include "mem_util.h"
#include "xfer_util.h"

static int xm_env_device(const char *name, int dflt)
{
    const char *s = getenv(name);

    return (s != NULL && *s != '\0') ? atoi(s) : dflt;
}

int xm_device(void)
{
    return xm_env_device("FERRY_TEST_DEVICE", 0);
}

int xm_target_device(void)
{
    return xm_env_device("FERRY_TEST_TARGET_DEVICE", xm_device());
}

const char *xm_name(xm_kind_t k)
{
    static const char *const names[] = {"host", "pinned", "cuda", "vmm"};

    return names[k];
}

int xm_parse(const char *s, xm_kind_t *k_p)
{
    for (int k = XM_HOST; k <= XM_VMM; k++) {
        if (strcmp(s, xm_name((xm_kind_t)k)) == 0) {
            *k_p = (xm_kind_t)k;
            return 0;
        }
    }
    return -1;
}

int xm_is_gpu(xm_kind_t k)
{
    return k == XM_CUDA || k == XM_VMM;
}

ferry_mem_kind_t xm_ferry_kind(xm_kind_t k)
{
    /* VMM memory is registered as AUTO: detection is part of what it tests. */
    return k == XM_CUDA ? FERRY_MEM_CUDA : k == XM_VMM ? FERRY_MEM_AUTO : FERRY_MEM_HOST;
}

ferry_desc_t xm_desc(xm_kind_t k, uint64_t addr, uint64_t len)
{
    return (ferry_desc_t){addr, len, xm_ferry_kind(k), xm_device()};
}

ferry_desc_t xm_target_desc(xm_kind_t k, uint64_t addr, uint64_t len)
{
    return (ferry_desc_t){addr, len, xm_ferry_kind(k), xm_target_device()};
}

const ferry__cuda_t *xm_cuda(void)
{
    static const ferry__cuda_t *cu;

    if (cu == NULL) {
        if (ferry__cuda_get(&cu) != FERRY_OK) {
            printf("skip: no usable CUDA: %s\n", ferry_last_error());
            cu = NULL;
            return NULL;
        }
        int n = 0;

        if (cu->cuDeviceGetCount(&n) != CUDA_SUCCESS || xm_device() >= n) {
            printf("skip: no CUDA device %d here (%d device(s))\n", xm_device(), n);
            cu = NULL;
        } else if (ferry__cuda_push(xm_device()) != FERRY_OK) {
            printf("skip: no CUDA context: %s\n", ferry_last_error());
            cu = NULL;
        }
    }
    return cu;
}

static void xm_alloc_vmm(const ferry__cuda_t *cu, xm_buf_t *b)
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

void xm_push(int dev)
{
    if (dev != xm_device() && ferry__cuda_push(dev) != FERRY_OK) {
        fprintf(stderr, "no context for CUDA device %d: %s\n", dev, ferry_last_error());
        exit(1);
    }
}

void xm_pop(int dev)
{
    if (dev != xm_device())
        ferry__cuda_pop();
}

int xm_alloc_on(xm_buf_t *b, xm_kind_t kind, size_t cap, int dev)
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

int xm_alloc(xm_buf_t *b, xm_kind_t kind, size_t cap)
{
    return xm_alloc_on(b, kind, cap, xm_device());
}

void xm_to_dev(xm_buf_t *b, uint64_t lo, uint64_t hi)
{
    if (xm_is_gpu(b->kind) && hi > lo) {
        XM_CU(xm_cuda()->cuMemcpy((CUdeviceptr)(b->addr + lo),
                                  (CUdeviceptr)(uintptr_t)(b->host + lo), hi - lo));
        XM_CU(xm_cuda()->cuCtxSynchronize());
    }
}

void xm_from_dev(xm_buf_t *b, uint64_t lo, uint64_t hi)
{
    if (xm_is_gpu(b->kind) && hi > lo)
        XM_CU(xm_cuda()->cuMemcpy((CUdeviceptr)(uintptr_t)(b->host + lo),
                                  (CUdeviceptr)(b->addr + lo), hi - lo));
}

int xm_stream_sync(CUstream s, int timeout_ms)
{
    const ferry__cuda_t *cu = xm_cuda();
    uint64_t t0 = xu_now_ns();
    CUevent ev;
    CUresult res;

    XM_CU(cu->cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    XM_CU(cu->cuEventRecord(ev, s));
    while ((res = cu->cuEventQuery(ev)) == CUDA_ERROR_NOT_READY) {
        if (xu_ms_since(t0) > timeout_ms) {
            XM_CU(cu->cuEventDestroy(ev));
            return -1;
        }
        usleep(20);
    }
    XM_CU(res);
    XM_CU(cu->cuEventDestroy(ev));
    return 0;
}

void xm_free(xm_buf_t *b)
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
