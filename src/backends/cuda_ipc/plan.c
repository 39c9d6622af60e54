/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A CUDA IPC request's plan, made once at prepare: which device's stream
 * copies its batches, which of its segments the copy kernel moves (the
 * kernel's table, built and uploaded here, kept in device memory until the
 * request is released) and which the copy engines move, one cuMemcpyAsync
 * each. Posting a prepared request then allocates and uploads nothing, and
 * a CUDA graph that captured a post replays the same launch.
 *
 * The split (FERRY_CUDA_COPY): in auto mode, a batch of more than one
 * segment sends the segments of at most FERRY_CUDA_COPY_MAX bytes to the
 * kernel and the longer ones to the copy engines, which use no SMs and for
 * which one call's fixed cost (about 5 us) is small against the copy; a
 * lone segment keeps the engines. A segment goes to the kernel only if the
 * kernel, running on the copying device, reaches both ends: local GPU
 * memory of that device, host memory mapped at its own address
 * (ci_reg_t.mapped), and a peer's memory opened or mapped for that device.
 * Everything else, and everything when the driver cannot load the kernel,
 * keeps the engines.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/log.h"

#include <stdlib.h>

/* Whether a kernel on device reaches the local end of s. */
static bool ci_kernel_local(const ferry__bk_seg_t *s, int device)
{
    const ci_reg_t *reg = s->lreg;

    if (reg == NULL)
        return false;
    return reg->type == CI_HOST ? reg->mapped : reg->device == device;
}

/* Whether a kernel on device reaches the remote end of s. */
static bool ci_kernel_remote(const ferry__cuda_t *cu, const ferry__bk_seg_t *s, int device)
{
    const ci_map_t *m = ((const ci_rkey_t *)s->rkey)->map;

    switch (m->type) {
    case CI_LEGACY: /* opened in device's context, peer access enabled */
        return m->opens[device].ptr != 0 && m->opens[device].in == device;
    case CI_VMM: /* mapped for every device that reaches the owner's */
        return ferry__ci_reaches(cu, device, m->device);
    default: /* the agent's own memory, where it was allocated */
        return m->device == device;
    }
}

/* Which segments go to the kernel: kernel[i] for each, and how many
 * entries they make. */
static size_t ci_plan_split(const ferry__cuda_t *cu, ferry__cuda_copy_mode_t mode,
                            const ferry__bk_seg_t *segs, size_t n, int device,
                            bool *kernel)
{
    uint64_t max = mode == FERRY__COPY_KERNEL ? UINT64_MAX : ferry__cuda_copy_max();
    size_t entries = 0;

    for (size_t i = 0; i < n; i++) {
        kernel[i] = segs[i].len <= max && ci_kernel_local(&segs[i], device) &&
                    ci_kernel_remote(cu, &segs[i], device);
        if (kernel[i])
            entries += (segs[i].len + FERRY__CUDA_COPY_PIECE - 1) / FERRY__CUDA_COPY_PIECE;
    }
    return entries;
}

/* Builds the table of the segments marked in kernel, each cut into pieces,
 * and the list of the others, into plan. */
static ferry_status_t ci_plan_fill(ci_plan_t *plan, const ferry__bk_seg_t *segs,
                                   size_t n, const bool *kernel, size_t entries)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    ferry__cuda_copy_entry_t *t = malloc(entries * sizeof(*t));
    size_t k = 0;
    ferry_status_t st;

    if (t == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory for a copy "
                            "table of %zu entries", entries);
    for (size_t i = 0; i < n; i++) {
        uint64_t remote;

        if (!kernel[i]) {
            plan->engine[plan->nengine++] = i;
            continue;
        }
        remote = ferry__ci_remote_ptr(&segs[i], plan->device);
        for (uint64_t off = 0; off < segs[i].len; off += FERRY__CUDA_COPY_PIECE) {
            uint64_t left = segs[i].len - off;

            t[k++] = (ferry__cuda_copy_entry_t){
                segs[i].laddr + off, remote + off,
                left < FERRY__CUDA_COPY_PIECE ? left : FERRY__CUDA_COPY_PIECE};
        }
    }
    st = FERRY__CU(cu, cuMemAlloc, (&plan->table, entries * sizeof(*t)));
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuMemcpy, (plan->table, (CUdeviceptr)(uintptr_t)t,
                                      entries * sizeof(*t)));
        if (st < 0) {
            cu->cuMemFree(plan->table);
            plan->table = 0;
        }
    }
    free(t);
    plan->nentries = (unsigned)entries;
    return st;
}

ferry_status_t ferry__ci_plan(ci_ctx_t *ctx, const ferry__bk_seg_t *segs, size_t n,
                              int device, ci_plan_t **plan_p)
{
    ferry__cuda_copy_mode_t mode;
    ci_plan_t *plan = NULL;
    CUfunction fn;
    size_t entries;
    bool *kernel;
    ferry_status_t st;

    *plan_p = NULL;
    FERRY_CHECK(ferry__cuda_copy_mode(&mode));
    if (mode == FERRY__COPY_ENGINE || (mode == FERRY__COPY_AUTO && n < 2))
        return FERRY_OK;
    if (ferry__cuda_copy_kernel(device, &fn) != FERRY_OK)
        return FERRY_OK; /* logged once: the engines copy everything */
    kernel = malloc(n * sizeof(*kernel));
    if (kernel == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    entries = ci_plan_split(ctx->cu, mode, segs, n, device, kernel);
    st = FERRY_OK;
    if (entries == 0 || entries > UINT32_MAX)
        goto out; /* nothing for the kernel (or more than one launch takes) */
    plan = calloc(1, sizeof(*plan) + n * sizeof(plan->engine[0]));
    if (plan == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        goto out;
    }
    plan->device = device;
    plan->fn = fn;
    plan->blocks = ferry__cuda_copy_blocks(device);
    FERRY_CHECK_GOTO(ferry__cuda_push(device), st, out);
    st = ci_plan_fill(plan, segs, n, kernel, entries);
    ferry__cuda_pop();
    if (st < 0)
        goto out;
    ferry__debug("cuda_ipc: a batch of %zu segments: %zu to the copy kernel (%zu "
                 "entries, %u blocks), %zu to the copy engines", n, n - plan->nengine,
                 entries, plan->blocks, plan->nengine);
    *plan_p = plan;
    plan = NULL;
out:
    free(plan);
    free(kernel);
    return st;
}

/* The table may still be read by work enqueued on an application's stream
 * (post_stream): the device finishes its work before the table goes. */
void ferry__ci_unprepare(void *vctx, void *vplan)
{
    ci_ctx_t *ctx = vctx;
    ci_plan_t *plan = vplan;

    if (plan == NULL)
        return;
    if (ferry__cuda_push(plan->device) == FERRY_OK) {
        ctx->cu->cuCtxSynchronize();
        ctx->cu->cuMemFree(plan->table);
        ferry__cuda_pop();
    } else {
        ferry__warn("cuda_ipc: a copy table of device %d is not freed: %s",
                    plan->device, ferry_last_error());
    }
    free(plan);
}
