/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX memory: registrations (ucp_mem_map, their keys packed once for the
 * metadata) and the shared-memory segments that mem_alloc() hands out,
 * whose registrations reuse the segment's handle.
 *
 * Allocation. UCX 1.13 moves bytes between processes of one host with a
 * direct copy only into memory it allocated itself (ucp_mem_map with
 * UCP_MEM_MAP_ALLOCATE: a sysv or posix shared-memory segment, which a peer
 * maps when it unpacks the key); for any other memory its put and get are
 * emulated with active messages, one copy on each side, and need the
 * target's CPU. mem_alloc hands out such segments, as ucx_perftest uses, and
 * a registration inside one reuses the segment's memory handle.
 */
#include "backends/ucx/ucx.h"
#include "util/log.h"

#include <stdint.h>
#include <stdlib.h>

ferry_status_t ferry__ucx_mem_register(void *vctx, const ferry_desc_t *desc,
                                       void **lreg_p)
{
    ucx_ctx_t *ctx = vctx;
    ucx_reg_t *reg;
    ucp_mem_map_params_t mp = {0};
    ferry__list_t *l, *tmp;
    ucs_status_t s;
    ferry_status_t st;

    reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for a registration");
    ferry__list_each(l, tmp, &ctx->allocs) {
        ucx_alloc_t *a = ferry__container_of(l, ucx_alloc_t, link);
        uintptr_t start = (uintptr_t)a->addr;

        if (desc->addr >= start && desc->addr - start <= a->len &&
            desc->len <= a->len - (desc->addr - start)) {
            reg->alloc = a;
            reg->memh = a->memh;
            goto pack;
        }
    }
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                    UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    mp.address = (void *)(uintptr_t)desc->addr;
    mp.length = desc->len;
    mp.memory_type = desc->kind == FERRY_MEM_CUDA ? UCS_MEMORY_TYPE_CUDA
                                                  : UCS_MEMORY_TYPE_HOST;
    s = ucp_mem_map(ctx->context, &mp, &reg->memh);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_mem_map", NULL);
        goto err_free;
    }
pack:
    /* Packed once here, so that packing metadata is a copy. */
    s = ucp_rkey_pack(ctx->context, reg->memh, &reg->rkey_buf, &reg->rkey_len);
    if (s != UCS_OK) {
        st = ferry__ucx_error(s, "ucp_rkey_pack", NULL);
        goto err_unmap;
    }
    if (reg->alloc != NULL)
        reg->alloc->regs++;
    *lreg_p = reg;
    return FERRY_OK;

err_unmap:
    if (reg->alloc == NULL)
        ucp_mem_unmap(ctx->context, reg->memh);
err_free:
    free(reg);
    return st;
}

ferry_status_t ferry__ucx_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out)
{
    ucx_reg_t *reg = lreg;

    (void)vctx;
    ferry__wbuf_bytes(out, reg->rkey_buf, reg->rkey_len);
    return FERRY_OK;
}

void ferry__ucx_mem_deregister(void *vctx, void *lreg)
{
    ucx_ctx_t *ctx = vctx;
    ucx_reg_t *reg = lreg;
    ucs_status_t s;

    ucp_rkey_buffer_release(reg->rkey_buf);
    if (reg->alloc != NULL) {
        reg->alloc->regs--;
    } else {
        s = ucp_mem_unmap(ctx->context, reg->memh);
        if (s != UCS_OK)
            ferry__warn("ucx: ucp_mem_unmap: %s", ucs_status_string(s));
    }
    free(reg);
}

ferry_status_t ferry__ucx_mem_alloc(void *vctx, size_t len,
                                    ferry_mem_kind_t kind, void **addr_p)
{
    ucx_ctx_t *ctx = vctx;
    ucx_alloc_t *a;
    ucp_mem_map_params_t mp = {0};
    ucp_mem_attr_t attr = {0};
    ucs_status_t s;

    if (kind != FERRY_MEM_HOST)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "ucx: allocates host memory "
                            "only");
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory for an allocation");
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                    UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = NULL;
    mp.length = len;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    s = ucp_mem_map(ctx->context, &mp, &a->memh);
    if (s != UCS_OK) {
        free(a);
        return ferry__ucx_error(s, "ucp_mem_map(ALLOCATE)", NULL);
    }
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    s = ucp_mem_query(a->memh, &attr);
    if (s != UCS_OK) {
        (void)ucp_mem_unmap(ctx->context, a->memh);
        free(a);
        return ferry__ucx_error(s, "ucp_mem_query", NULL);
    }
    a->addr = attr.address;
    a->len = attr.length;
    ferry__list_add(&ctx->allocs, &a->link);
    *addr_p = a->addr;
    return FERRY_OK;
}

ferry_status_t ferry__ucx_mem_free(void *vctx, void *addr)
{
    ucx_ctx_t *ctx = vctx;
    ucx_alloc_t *a = NULL;
    ferry__list_t *l, *tmp;
    ucs_status_t s;

    ferry__list_each(l, tmp, &ctx->allocs) {
        a = ferry__container_of(l, ucx_alloc_t, link);
        if (a->addr == addr)
            break;
        a = NULL;
    }
    if (a == NULL)
        return ferry__error(FERRY_ERR_NOT_FOUND, "ucx: %p starts no allocation", addr);
    if (a->regs > 0)
        return ferry__error(FERRY_ERR_BUSY, "ucx: %u registration(s) still use "
                            "the allocation at %p", a->regs, addr);
    ferry__list_del(&a->link);
    s = ucp_mem_unmap(ctx->context, a->memh);
    free(a);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "ucp_mem_unmap", NULL);
    return FERRY_OK;
}

void ferry__ucx_allocs_free(ucx_ctx_t *ctx)
{
    ferry__list_t *l, *tmp;

    ferry__list_each(l, tmp, &ctx->allocs) {
        ucx_alloc_t *a = ferry__container_of(l, ucx_alloc_t, link);

        ferry__debug("ucx: freeing an allocation of %zu B the user left", a->len);
        ferry__list_del(&a->link);
        (void)ucp_mem_unmap(ctx->context, a->memh);
        free(a);
    }
}
