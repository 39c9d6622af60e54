/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Memory that the library allocates: each backend may hand out memory its
 * transport moves fastest (UCX on one host: shared memory that peers copy
 * into directly, where for memory it did not allocate it can only emulate
 * one-sided transfers). The allocation is not yet registered; registering a
 * range inside it, as with any memory, makes it usable and advertised. The
 * backend that allocated a block is found again at free by asking each one.
 */
#include "core/core.h"
#include "cuda/cuda.h"

ferry_status_t ferry_mem_alloc(ferry_agent_t *agent, size_t len,
                               ferry_mem_kind_t kind, void **addr_p)
{
    ferry_status_t st = FERRY_ERR_UNSUPPORTED;

    if (agent == NULL || addr_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "mem_alloc: NULL argument");
    if (len == 0)
        return ferry__error(FERRY_ERR_INVALID, "mem_alloc: zero length");
    if (kind != FERRY_MEM_HOST && kind != FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_INVALID, "mem_alloc: memory kind %d (HOST "
                            "or CUDA allowed)", (int)kind);

    ferry__agent_lock(agent);
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        void *ctx = agent->bk_ctx[k];

        if (!ferry__backends[k]->supports_kind(ctx, kind))
            continue;
        st = ferry__backends[k]->mem_alloc(ctx, len, kind, addr_p);
        if (st != FERRY_ERR_UNSUPPORTED)
            break;
    }
    ferry__agent_unlock(agent);
    /* GPU memory: the CUDA backend's reason (no driver, no device) stands. */
    if (st == FERRY_ERR_UNSUPPORTED && kind == FERRY_MEM_HOST)
        return ferry__error(st, "mem_alloc: no backend of this build can "
                            "allocate host memory");
    if (st < 0)
        ferry__error_prefix("mem_alloc: %zu B", len);
    return st;
}

ferry_status_t ferry_mem_free(ferry_agent_t *agent, void *addr)
{
    ferry_status_t st = FERRY_ERR_NOT_FOUND;

    if (addr == NULL)
        return FERRY_OK;
    if (agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "mem_free: NULL agent");
    /*
     * GPU memory: its device's work ends first, as cudaFree() waits for it
     * (a kernel still running on it would fault once it is unmapped, which
     * does not wait). Before the lock: a stream that waits on ferry's flags
     * goes on only when the progress thread, which takes it, sets them.
     */
    ferry__cuda_quiesce((uint64_t)(uintptr_t)addr);
    ferry__agent_lock(agent);
    for (unsigned k = 0; k < FERRY__NBK && st == FERRY_ERR_NOT_FOUND; k++)
        st = ferry__backends[k]->mem_free(agent->bk_ctx[k], addr);
    ferry__agent_unlock(agent);
    if (st == FERRY_ERR_NOT_FOUND)
        return ferry__error(st, "mem_free: %p was not returned by ferry_mem_alloc "
                            "on agent '%s' (or was freed already)", addr,
                            agent->name);
    if (st < 0)
        ferry__error_prefix("mem_free");
    return st;
}
