/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CUDA IPC exports (the owner's side): registrations, which export the
 * allocations holding a region, and GPU allocations that any peer on this
 * host can map.
 *
 * Registration. A CUDA region is exported as the allocation(s) that hold
 * it, because CUDA shares whole allocations: memory from cuMemAlloc as a
 * legacy IPC handle of its allocation (base and offset recorded, and a range
 * that runs into a second allocation refused), memory from cuMemCreate /
 * cuMemMap (virtual memory management, PyTorch's expandable segments) as one
 * POSIX file descriptor per physical allocation that backs the range, in
 * address order. A host region is registered for the local side of
 * host <-> GPU copies only (pinned with cuMemHostRegister when this process
 * already uses CUDA, so that copies run at full speed); it advertises
 * nothing to peers.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/config.h"
#include "util/log.h"

#include <stdlib.h>
#include <unistd.h>

/* Undoes ferry__ci_mem_alloc(): the mapping, the reserved range, the allocation. */
static void ci_alloc_unmap(const ferry__cuda_t *cu, const ci_alloc_t *a)
{
    cu->cuMemUnmap(a->va, a->size);
    cu->cuMemAddressFree(a->va, a->size);
    cu->cuMemRelease(a->h);
}

static void ci_reg_free(ci_ctx_t *ctx, ci_reg_t *reg)
{
    if (reg->alloc != NULL)
        reg->alloc->regs--;
    for (uint32_t i = 0; i < reg->nchunks; i++) {
        if (reg->chunks[i].fd >= 0) {
            ferry__ci_export_del(ctx, reg->chunks[i].fd);
            close(reg->chunks[i].fd);
        }
        if (reg->chunks[i].h != 0)
            ctx->cu->cuMemRelease(reg->chunks[i].h);
    }
    if (reg->pinned != NULL && ferry__cuda_push(0) == FERRY_OK) {
        ctx->cu->cuMemHostUnregister(reg->pinned);
        ferry__cuda_pop();
    }
    free(reg);
}

/* The physical allocations behind [addr, addr + len) of VMM memory, in
 * address order; FERRY_ERR_NOT_FOUND if addr is not VMM memory at all. */
static ferry_status_t ci_reg_vmm(ci_ctx_t *ctx, const ferry_desc_t *d,
                                 ci_reg_t **reg_p)
{
    const ferry__cuda_t *cu = ctx->cu;
    uint64_t p = d->addr, end = d->addr + d->len;
    ci_reg_t *reg = NULL;
    uint32_t cap = 0;
    ferry_status_t st;

    while (p < end) {
        CUmemGenericAllocationHandle h;
        CUmemAllocationProp prop;
        CUdeviceptr base;
        size_t size;
        ci_chunk_t *c;
        int fd = -1;

        if (cu->cuMemRetainAllocationHandle(&h, (void *)(uintptr_t)p) != CUDA_SUCCESS) {
            if (reg == NULL)
                return FERRY_ERR_NOT_FOUND; /* not VMM memory */
            st = ferry__error(FERRY_ERR_INVALID, "cuda_ipc: the range runs past "
                              "mapped memory at 0x%llx", (unsigned long long)p);
            goto err;
        }
        st = FERRY__CU(cu, cuMemGetAddressRange, (&base, &size, (CUdeviceptr)p));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemGetAllocationPropertiesFromHandle, (&prop, h));
        if (st == FERRY_OK && !(prop.requestedHandleTypes &
                                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
            st = ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: the allocation at "
                              "0x%llx was created without "
                              "CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR and cannot "
                              "be shared with another process",
                              (unsigned long long)base);
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemExportToShareableHandle,
                           (&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
        if (st == FERRY_OK && (reg == NULL ? base > p : base != p))
            st = ferry__error(FERRY_ERR_INVALID, "cuda_ipc: unexpected allocation "
                              "layout at 0x%llx", (unsigned long long)p);
        if (st == FERRY_OK && reg != NULL && reg->nchunks == cap) {
            ci_reg_t *grown;

            cap = cap * 2;
            grown = cap > CI_MAX_CHUNKS ? NULL
                                        : realloc(reg, sizeof(*reg) + cap * sizeof(ci_chunk_t));
            if (grown == NULL)
                st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: the range spans "
                                  "too many allocations");
            else
                reg = grown;
        }
        if (st == FERRY_OK && reg == NULL) {
            cap = 4;
            reg = calloc(1, sizeof(*reg) + cap * sizeof(ci_chunk_t));
            if (reg == NULL)
                st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
            else {
                reg->type = CI_VMM;
                reg->base = base;
            }
        }
        if (st == FERRY_OK)
            st = ferry__ci_export_add(ctx, fd);
        if (st < 0) {
            if (fd >= 0)
                close(fd);
            cu->cuMemRelease(h);
            goto err;
        }
        c = &reg->chunks[reg->nchunks++];
        *c = (ci_chunk_t){base - reg->base, size, fd, h};
        reg->size = base + size - reg->base;
        p = base + size;
    }
    *reg_p = reg;
    return FERRY_OK;

err:
    if (reg != NULL)
        ci_reg_free(ctx, reg);
    return st;
}

static ferry_status_t ci_reg_cuda(ci_ctx_t *ctx, const ferry_desc_t *d,
                                  ci_reg_t **reg_p)
{
    const ferry__cuda_t *cu = ctx->cu;
    ci_reg_t *reg = NULL;
    CUdeviceptr base;
    size_t size;
    ferry_status_t st;

    st = ci_reg_vmm(ctx, d, &reg);
    if (st == FERRY_ERR_NOT_FOUND) {
        FERRY_CHECK(FERRY__CU(cu, cuMemGetAddressRange, (&base, &size,
                                                         (CUdeviceptr)d->addr)));
        if (d->addr + d->len > base + size)
            return ferry__error(FERRY_ERR_INVALID, "cuda_ipc: the range [0x%llx, "
                                "+%llu) runs past the end of its CUDA allocation "
                                "[0x%llx, +%zu): a registration must lie in one "
                                "allocation", (unsigned long long)d->addr,
                                (unsigned long long)d->len,
                                (unsigned long long)base, size);
        reg = calloc(1, sizeof(*reg));
        if (reg == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        reg->type = CI_LEGACY;
        reg->base = base;
        reg->size = size;
        st = FERRY__CU(cu, cuIpcGetMemHandle, (&reg->ipc, base));
    } else if (st == FERRY_OK) {
        st = ferry__ci_server_start(ctx);
    }
    if (st < 0) {
        if (reg != NULL)
            ci_reg_free(ctx, reg);
        return st;
    }
    *reg_p = reg;
    return FERRY_OK;
}

/*
 * Whether kernels reach every byte of the host range [addr, addr + len) at
 * its own address: page-locked memory (ferry's cuMemHostRegister, or the
 * application's cuMemHostAlloc) mapped into the device address space, as
 * it is on every system with unified addressing. Only then may the copy
 * kernel read or write it; otherwise its copies stay with the copy engines.
 * A context is current.
 */
static bool ci_host_mapped(const ferry__cuda_t *cu, uint64_t addr, uint64_t len)
{
    CUdeviceptr start = 0, first = 0, last = 0;
    size_t size = 0;

    return cu->cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                     addr) == CUDA_SUCCESS &&
           cu->cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                     addr) == CUDA_SUCCESS &&
           start <= addr && addr + len <= start + size &&
           cu->cuPointerGetAttribute(&first, CU_POINTER_ATTRIBUTE_DEVICE_POINTER,
                                     addr) == CUDA_SUCCESS && first == addr &&
           cu->cuPointerGetAttribute(&last, CU_POINTER_ATTRIBUTE_DEVICE_POINTER,
                                     addr + len - 1) == CUDA_SUCCESS &&
           last == addr + len - 1;
}

ferry_status_t ferry__ci_mem_register(void *vctx, const ferry_desc_t *d,
                                      void **lreg_p)
{
    ci_ctx_t *ctx = vctx;
    ci_reg_t *reg = NULL;
    ferry__list_t *l, *tmp;
    ferry_status_t st;

    if (d->kind == FERRY_MEM_HOST) {
        reg = calloc(1, sizeof(*reg));
        if (reg == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        reg->type = CI_HOST;
        /* Pinned memory copies at the link's speed, pageable memory at a
         * fraction of it; pin only in processes that already use CUDA. */
        if (ferry__config_get_size("FERRY_CUDA_PIN_HOST") != 0 &&
            ferry__cuda_loaded() != NULL && ferry__ci_cuda(ctx) == FERRY_OK &&
            ferry__cuda_push(0) == FERRY_OK) {
            CUresult res = ctx->cu->cuMemHostRegister((void *)(uintptr_t)d->addr,
                                                      d->len,
                                                      CU_MEMHOSTREGISTER_PORTABLE |
                                                      CU_MEMHOSTREGISTER_DEVICEMAP);

            if (res == CUDA_SUCCESS)
                reg->pinned = (void *)(uintptr_t)d->addr;
            else
                ferry__debug("cuda_ipc: host range at 0x%llx stays unpinned "
                             "(cuMemHostRegister: %d)", (unsigned long long)d->addr,
                             res);
            reg->mapped = ci_host_mapped(ctx->cu, d->addr, d->len);
            ferry__cuda_pop();
        }
        *lreg_p = reg;
        return FERRY_OK;
    }
    FERRY_CHECK(ferry__ci_cuda(ctx));
    if (d->device < 0 || d->device >= ctx->ndevs)
        return ferry__error(FERRY_ERR_INVALID, "cuda_ipc: device %d does not exist",
                            (int)d->device);
    FERRY_CHECK(ferry__cuda_push(d->device));
    st = ci_reg_cuda(ctx, d, &reg);
    ferry__cuda_pop();
    FERRY_CHECK(st);
    ferry__list_each(l, tmp, &ctx->allocs) {
        ci_alloc_t *a = ferry__container_of(l, ci_alloc_t, link);

        if (d->addr >= a->va && d->addr - a->va < a->size) {
            reg->alloc = a;
            a->regs++;
            break;
        }
    }
    reg->device = d->device;
    reg->uuid = ctx->uuids[d->device];
    *lreg_p = reg;
    return FERRY_OK;
}

/*
 * The export, as peers see it:
 *   u8 type (1 legacy, 2 VMM), u8 0, u16 0, 16 bytes device UUID,
 *   u64 allocation base, u64 allocation size, then
 *   legacy: 64 bytes IPC handle;
 *   VMM: u32 owner's descriptor count, then per allocation u64 offset,
 *        u64 size, u32 the owner's descriptor number.
 * Host regions export nothing.
 */
ferry_status_t ferry__ci_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out)
{
    ci_reg_t *reg = lreg;

    (void)vctx;
    if (reg->type == CI_HOST)
        return FERRY_OK;
    ferry__wbuf_u8(out, (uint8_t)reg->type);
    ferry__wbuf_u8(out, 0);
    ferry__wbuf_u16(out, 0);
    ferry__wbuf_bytes(out, reg->uuid.bytes, sizeof(reg->uuid.bytes));
    ferry__wbuf_u64(out, reg->base);
    ferry__wbuf_u64(out, reg->size);
    if (reg->type == CI_LEGACY) {
        ferry__wbuf_bytes(out, reg->ipc.reserved, sizeof(reg->ipc.reserved));
        return FERRY_OK;
    }
    ferry__wbuf_u32(out, reg->nchunks);
    for (uint32_t i = 0; i < reg->nchunks; i++) {
        ferry__wbuf_u64(out, reg->chunks[i].off);
        ferry__wbuf_u64(out, reg->chunks[i].size);
        ferry__wbuf_u32(out, (uint32_t)reg->chunks[i].fd);
    }
    return FERRY_OK;
}

void ferry__ci_mem_deregister(void *vctx, void *lreg)
{
    ci_reg_free(vctx, lreg);
}

/* ------------------------------------------------------------------------ */
/* Allocations                                                              */
/* ------------------------------------------------------------------------ */

/*
 * GPU memory that any peer on this host can map: one physical allocation
 * (cuMemCreate, with the POSIX file descriptor handle type) mapped into a
 * reserved range, on the device of the caller's current context (device 0
 * when there is none).
 */
ferry_status_t ferry__ci_mem_alloc(void *vctx, size_t len, ferry_mem_kind_t kind,
                                   void **addr_p)
{
    ci_ctx_t *ctx = vctx;
    const ferry__cuda_t *cu;
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, 0},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUdevice dev = 0;
    size_t gran = 0;
    ci_alloc_t *a;
    ferry_status_t st;

    if (kind != FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: allocates GPU memory "
                            "only");
    FERRY_CHECK(ferry__ci_cuda(ctx));
    cu = ctx->cu;
    if (cu->cuCtxGetDevice(&dev) != CUDA_SUCCESS)
        dev = 0;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    access.location.id = dev;
    FERRY_CHECK_GOTO(ferry__cuda_push(dev), st, err_free);
    st = FERRY__CU(cu, cuMemGetAllocationGranularity,
                   (&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    if (st == FERRY_OK) {
        a->size = (len + gran - 1) / gran * gran;
        st = FERRY__CU(cu, cuMemCreate, (&a->h, a->size, &prop, 0));
    }
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuMemAddressReserve, (&a->va, a->size, gran, 0, 0));
        if (st < 0)
            cu->cuMemRelease(a->h);
    }
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuMemMap, (a->va, a->size, 0, a->h, 0));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemSetAccess, (a->va, a->size, &access, 1));
        if (st < 0)
            ci_alloc_unmap(cu, a);
    }
    ferry__cuda_pop();
    if (st < 0)
        goto err_free;
    ferry__list_add(&ctx->allocs, &a->link);
    *addr_p = (void *)(uintptr_t)a->va;
    return FERRY_OK;

err_free:
    free(a);
    return st;
}

ferry_status_t ferry__ci_mem_free(void *vctx, void *addr)
{
    ci_ctx_t *ctx = vctx;
    ci_alloc_t *a = NULL;
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->allocs) {
        a = ferry__container_of(l, ci_alloc_t, link);
        if (a->va == (CUdeviceptr)(uintptr_t)addr)
            break;
        a = NULL;
    }
    if (a == NULL)
        return ferry__error(FERRY_ERR_NOT_FOUND, "cuda_ipc: %p starts no allocation",
                            addr);
    if (a->regs > 0)
        return ferry__error(FERRY_ERR_BUSY, "cuda_ipc: %u registration(s) still use "
                            "the allocation at %p", a->regs, addr);
    /* The device's work on it has ended (ferry_mem_free waits for it
     * before it takes the lock: cuMemUnmap, unlike cudaFree, does not). */
    ferry__list_del(&a->link);
    ci_alloc_unmap(ctx->cu, a);
    free(a);
    return FERRY_OK;
}

void ferry__ci_allocs_free(ci_ctx_t *ctx)
{
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->allocs) {
        ci_alloc_t *a = ferry__container_of(l, ci_alloc_t, link);

        ferry__debug("cuda_ipc: freeing a GPU allocation of %zu B the user left",
                     a->size);
        ferry__list_del(&a->link);
        ci_alloc_unmap(ctx->cu, a);
        free(a);
    }
}
