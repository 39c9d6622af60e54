/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The staged backend's bounce buffers, its table of operations in flight,
 * and the copies between memory and a bounce buffer: memcpy for host
 * memory, cuMemcpyAsync on a stream per device for GPU memory, whose end an
 * event records and progress() polls (no host callbacks, which would need
 * the agent's lock on a CUDA thread).
 */
#include "backends/staged/staged.h"
#include "cuda/copy.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

/* Allocates a pool's buffers on first use: page-locked and mapped for the
 * GPU where CUDA is loaded (host <-> GPU copies at full speed, and
 * asynchronous), else ordinary pages. */
static ferry_status_t pool_alloc(stg_ctx_t *ctx, stg_pool_t *p)
{
    const ferry__cuda_t *cu = ctx->pin ? ferry__cuda_loaded() : NULL;
    size_t size;
    void *base = NULL;

    /* The kernel's entries: each piece cut at FERRY__CUDA_COPY_PIECE. */
    p->ktab = ((size_t)STG_MAX_PIECES + (size_t)(ctx->chunk / FERRY__CUDA_COPY_PIECE) + 1) *
              sizeof(ferry__cuda_copy_entry_t);
    p->ktab = (p->ktab + 4095) & ~(size_t)4095;
    p->slot_size = p->ktab + STG_TABLE_MAX + (size_t)ctx->chunk;
    p->slot_size = (p->slot_size + 4095) & ~(size_t)4095;
    p->nslots = ctx->credits;
    size = p->slot_size * p->nslots;
    p->free = malloc(p->nslots * sizeof(*p->free));
    if (p->free == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
    /* The allocation needs a current context; PORTABLE makes it pinned for
     * every device's. */
    if (cu != NULL && ferry__cuda_push(0) == FERRY_OK) {
        p->pinned = cu->cuMemHostAlloc(&base, size, CU_MEMHOSTALLOC_PORTABLE |
                                                        CU_MEMHOSTALLOC_DEVICEMAP) ==
                    CUDA_SUCCESS;
        if (p->pinned && cu->cuMemHostGetDevicePointer(&p->dbase, base, 0) != CUDA_SUCCESS)
            p->dbase = 0; /* the copy engines only */
        ferry__cuda_pop();
        if (!p->pinned)
            ferry__warn("staged: cannot page-lock %zu bytes of bounce buffers; "
                        "GPU copies from ordinary pages are slower", size);
    }
    if (p->pinned) {
        /* allocated above */
    } else if (posix_memalign(&base, 4096, size) != 0) {
        free(p->free);
        p->free = NULL;
        return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory for %u bounce "
                            "buffers of %zu bytes", p->nslots, p->slot_size);
    }
    p->base = base;
    for (unsigned i = 0; i < p->nslots; i++)
        p->free[i] = p->nslots - 1 - i;
    p->nfree = p->nslots;
    ferry__debug("staged: %u bounce buffers of %zu bytes%s", p->nslots, p->slot_size,
                 p->pinned ? ", page-locked" : "");
    return FERRY_OK;
}

ferry_status_t ferry__stg_pool_take(stg_ctx_t *ctx, stg_pool_t *p, unsigned *slot_p)
{
    if (p->base == NULL)
        FERRY_CHECK(pool_alloc(ctx, p));
    if (p->nfree == 0)
        return FERRY_ERR_BUSY; /* no text: the caller waits */
    *slot_p = p->free[--p->nfree];
    return FERRY_OK;
}

void ferry__stg_pool_put(stg_pool_t *p, unsigned slot)
{
    p->free[p->nfree++] = slot;
}

void ferry__stg_pool_free(stg_pool_t *p)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();

    if (p->base != NULL) {
        if (p->pinned && cu != NULL && ferry__cuda_push(0) == FERRY_OK) {
            cu->cuMemFreeHost(p->base);
            ferry__cuda_pop();
        } else if (!p->pinned) {
            free(p->base);
        }
    }
    free(p->free);
    memset(p, 0, sizeof(*p));
}

#define STG_OPS_BLOCK 64u

static stg_op_t *op_at(const stg_ctx_t *ctx, size_t i)
{
    return &ctx->opblocks[i / STG_OPS_BLOCK][i % STG_OPS_BLOCK];
}

ferry_status_t ferry__stg_op_new(stg_ctx_t *ctx, stg_op_t **op_p)
{
    stg_op_t *op;
    uint32_t gen;

    if (ctx->nfreeops == 0) {
        uint32_t gens[STG_OPS_BLOCK];

        /* Operations live in blocks that never move: lists link them and
         * callers hold them across the allocation of others. */
        size_t nb = ctx->capops / STG_OPS_BLOCK;
        stg_op_t **blocks = realloc(ctx->opblocks, (nb + 1) * sizeof(*blocks));
        uint32_t *fr;

        if (blocks == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
        ctx->opblocks = blocks;
        fr = realloc(ctx->freeops, (ctx->capops + STG_OPS_BLOCK) * sizeof(*fr));
        if (fr == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
        ctx->freeops = fr;
        /* Each slot's generation starts anywhere: a cookie (index and
         * generation) that a peer could guess would let it end an
         * operation with a reply of its own. */
        FERRY_CHECK(ferry__random(gens, sizeof(gens)));
        blocks[nb] = calloc(STG_OPS_BLOCK, sizeof(stg_op_t));
        if (blocks[nb] == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory");
        for (size_t i = STG_OPS_BLOCK; i-- > 0;) {
            blocks[nb][i].gen = gens[i];
            blocks[nb][i].index = (uint32_t)(ctx->capops + i);
            ctx->freeops[ctx->nfreeops++] = (uint32_t)(ctx->capops + i);
        }
        ctx->capops += STG_OPS_BLOCK;
    }
    op = op_at(ctx, ctx->freeops[--ctx->nfreeops]);
    gen = op->gen;
    {
        uint32_t index = op->index;

        memset(op, 0, sizeof(*op));
        op->index = index;
    }
    op->gen = gen;
    op->ctx = ctx;
    ferry__list_init(&op->link);
    ctx->nops++;
    *op_p = op;
    return FERRY_OK;
}

void ferry__stg_events_drop(stg_ctx_t *ctx, stg_op_t *op)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();

    for (unsigned i = 0; i < op->nev && cu != NULL; i++) {
        if (ferry__cuda_push(op->evdev[i]) == FERRY_OK) {
            cu->cuEventDestroy(op->ev[i]);
            ferry__cuda_pop();
        }
    }
    if (op->state == STG_COPYING && op->nev > 0)
        ctx->ncopying--;
    op->nev = 0;
}

void ferry__stg_op_put_slot(stg_op_t *op)
{
    if (op->pool == NULL)
        return;
    if (!op->target)
        op->pool->init_held--;
    ferry__stg_pool_put(op->pool, op->slot);
    op->pool = NULL;
}

void ferry__stg_op_free(stg_ctx_t *ctx, stg_op_t *op)
{
    ferry__stg_op_put_slot(op);
    if (op->data != NULL) {
        if (op->held)
            ucp_am_data_release(ctx->ucx->worker, op->data);
        else
            free(op->data);
        op->data = NULL;
    }
    ferry__stg_events_drop(ctx, op);
    if (op->state == STG_DELAYED)
        ctx->ndelayed--;
    ferry__stg_rep_put(ctx, op);
    ferry__list_del(&op->link);
    ferry__list_init(&op->link);
    op->state = STG_FREE;
    op->req = NULL;
    op->gen++;
    ctx->freeops[ctx->nfreeops++] = op->index;
    ctx->nops--;
}

uint64_t ferry__stg_cookie(const stg_ctx_t *ctx, const stg_op_t *op)
{
    (void)ctx;
    return (uint64_t)op->gen << 32 | op->index;
}

stg_op_t *ferry__stg_op_find(stg_ctx_t *ctx, uint64_t cookie)
{
    size_t i = (size_t)(cookie & 0xffffffffu);
    stg_op_t *op;

    if (i >= ctx->capops)
        return NULL;
    op = op_at(ctx, i);
    if (op->gen != (uint32_t)(cookie >> 32) || op->state == STG_FREE)
        return NULL;
    return op;
}

/* Every operation in use, for walks (aborts, progress): calls fn on each. */
void ferry__stg_ops_each(stg_ctx_t *ctx, void (*fn)(stg_ctx_t *, stg_op_t *, void *),
                         void *arg)
{
    for (size_t i = 0; i < ctx->capops; i++) {
        stg_op_t *op = op_at(ctx, i);

        if (op->state != STG_FREE)
            fn(ctx, op, arg);
    }
}

void ferry__stg_ops_free_all(stg_ctx_t *ctx)
{
    for (size_t b = 0; b < ctx->capops / STG_OPS_BLOCK; b++)
        free(ctx->opblocks[b]);
    free(ctx->opblocks);
    free(ctx->freeops);
    ctx->opblocks = NULL;
    ctx->freeops = NULL;
    ctx->capops = ctx->nfreeops = 0;
}

/* The device's stream, created on first use; the caller has pushed the
 * device's context. A blocking stream, as CUDA IPC's: a gather starts only
 * after the work queued before it on the legacy default stream, where an
 * application has just produced the bytes. */
static ferry_status_t stg_stream(stg_ctx_t *ctx, const ferry__cuda_t *cu, int dev,
                                 CUstream *s_p)
{
    if (ctx->streams[dev] == NULL)
        FERRY_CHECK(FERRY__CU(cu, cuStreamCreate, (&ctx->streams[dev], 0)));
    *s_p = ctx->streams[dev];
    return FERRY_OK;
}

/* The copy kernel for the pieces of a chunk on dev (m of them), if it is to
 * copy them: FERRY_CUDA_COPY's choice, as for CUDA IPC batches (auto: two
 * pieces or more, each at most FERRY_CUDA_COPY_MAX; kernel: all), where the
 * kernel loads and reaches the bounce buffer (mapped, page-locked). *max_p:
 * the longest piece it takes. */
static bool stg_kernel(const stg_op_t *op, int dev, size_t m, CUfunction *fn_p,
                       uint64_t *max_p)
{
    ferry__cuda_copy_mode_t mode;

    if (op->pool == NULL || op->pool->dbase == 0 || m < 2 ||
        ferry__cuda_copy_mode(&mode) != FERRY_OK || mode == FERRY__COPY_ENGINE ||
        ferry__cuda_copy_kernel(dev, fn_p) != FERRY_OK)
        return false;
    *max_p = mode == FERRY__COPY_KERNEL ? UINT64_MAX : ferry__cuda_copy_max();
    return true;
}

/* Enqueues the CUDA pieces of device dev (the copy kernel over a table in
 * the slot for those it takes, cuMemcpyAsync for the others) and records
 * their end in a new event of op. */
static ferry_status_t stg_copy_dev(stg_ctx_t *ctx, stg_op_t *op, int dev, uint8_t *buf,
                                   bool to_buf, const uint64_t *mem, const uint64_t *len,
                                   const int *devs, size_t n)
{
    const ferry__cuda_t *cu;
    CUstream s = NULL;
    CUevent ev;
    CUfunction fn = NULL;
    uint64_t off = 0, max = 0;
    size_t m = 0;
    unsigned ne = 0;
    bool kern;
    ferry__cuda_copy_entry_t *kt = NULL;
    ferry_status_t st;

    FERRY_CHECK(ferry__cuda_get(&cu));
    if (op->nev == STG_MAX_DEVS || dev >= STG_MAX_DEVS)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "staged: a chunk on more than "
                            "%d devices, or device %d", STG_MAX_DEVS, dev);
    for (size_t i = 0; i < n; i++)
        m += devs[i] == dev;
    kern = stg_kernel(op, dev, m, &fn, &max);
    if (kern)
        kt = (ferry__cuda_copy_entry_t *)(void *)stg_slot_ktab(op->pool, op->slot) +
             op->kt_used;
    FERRY_CHECK(ferry__cuda_push(dev));
    st = stg_stream(ctx, cu, dev, &s);
    for (size_t i = 0; i < n && st == FERRY_OK; off += len[i], i++) {
        CUdeviceptr b = (CUdeviceptr)(uintptr_t)(buf + off), m_ = (CUdeviceptr)mem[i];

        if (devs[i] != dev)
            continue;
        if (kern && len[i] <= max) {
            /* The kernel addresses the buffer through its mapping. */
            CUdeviceptr db = op->pool->dbase + (CUdeviceptr)(buf + off - op->pool->base);

            for (uint64_t o = 0; o < len[i]; o += FERRY__CUDA_COPY_PIECE) {
                uint64_t left = len[i] - o;

                kt[ne++] = (ferry__cuda_copy_entry_t){
                    m_ + o, db + o,
                    left < FERRY__CUDA_COPY_PIECE ? left : FERRY__CUDA_COPY_PIECE};
            }
            continue;
        }
        st = to_buf ? FERRY__CU(cu, cuMemcpyAsync, (b, m_, len[i], s))
                    : FERRY__CU(cu, cuMemcpyAsync, (m_, b, len[i], s));
    }
    if (st == FERRY_OK && ne > 0) {
        /* Entry "local" is the GPU's side: a gather writes local -> remote. */
        CUdeviceptr table = op->pool->dbase +
                            (CUdeviceptr)((uint8_t *)kt - op->pool->base);

        st = ferry__cuda_copy_launch(fn, table, ne, to_buf, ferry__cuda_copy_blocks(dev), s);
        op->kt_used += ne;
    }
    if (st == FERRY_OK)
        st = FERRY__CU(cu, cuEventCreate, (&ev, CU_EVENT_DISABLE_TIMING));
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuEventRecord, (ev, s));
        if (st == FERRY_OK) {
            op->ev[op->nev] = ev;
            op->evdev[op->nev++] = dev;
        } else {
            cu->cuEventDestroy(ev);
        }
    }
    if (st < 0 && s != NULL)
        cu->cuStreamSynchronize(s); /* nothing may run on after a failure */
    ferry__cuda_pop();
    return st;
}

ferry_status_t ferry__stg_copy(stg_ctx_t *ctx, stg_op_t *op, uint8_t *buf, bool to_buf,
                               const uint64_t *mem, const uint64_t *len, const int *dev,
                               size_t n)
{
    uint64_t off = 0;
    unsigned done = 0; /* devices already enqueued, as a bit mask */

    op->nev = 0;
    op->kt_used = 0;
    for (size_t i = 0; i < n; off += len[i], i++) {
        uint8_t *m = (uint8_t *)(uintptr_t)mem[i];

        if (dev[i] < 0) {
            if (to_buf)
                memcpy(buf + off, m, len[i]);
            else
                memcpy(m, buf + off, len[i]);
            continue;
        }
        if (dev[i] < 32 && (done >> dev[i] & 1))
            continue;
        ferry_status_t st = stg_copy_dev(ctx, op, dev[i], buf, to_buf, mem, len, dev, n);

        if (st < 0) {
            /* The devices enqueued before may still copy: let them end. */
            ferry__stg_copies_sync(ctx);
            return st;
        }
        if (dev[i] < 32)
            done |= 1u << dev[i];
    }
    if (op->nev > 0) {
        op->state = STG_COPYING;
        ctx->ncopying++;
    }
    return FERRY_OK;
}

ferry_status_t ferry__stg_copies_done(stg_ctx_t *ctx, stg_op_t *op)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    ferry_status_t st = FERRY_OK;

    (void)ctx;
    for (unsigned i = 0; i < op->nev; i++) {
        CUresult res;

        if (ferry__cuda_push(op->evdev[i]) != FERRY_OK)
            return FERRY_IN_PROGRESS;
        res = cu->cuEventQuery(op->ev[i]);
        ferry__cuda_pop();
        if (res == CUDA_ERROR_NOT_READY)
            return FERRY_IN_PROGRESS;
        if (res != CUDA_SUCCESS && st == FERRY_OK)
            st = ferry__cuda_check(res, "cuEventQuery (a staging copy failed)");
    }
    return st;
}

void ferry__stg_copies_sync(stg_ctx_t *ctx)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();

    for (int d = 0; d < STG_MAX_DEVS && cu != NULL; d++) {
        if (ctx->streams[d] != NULL && ferry__cuda_push(d) == FERRY_OK) {
            cu->cuStreamSynchronize(ctx->streams[d]);
            ferry__cuda_pop();
        }
    }
}
