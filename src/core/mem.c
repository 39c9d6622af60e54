/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Memory registration: each descriptor becomes a region registered with
 * every backend that can take its kind, and entered in the agent's interval
 * map so that prepare finds the region covering a range in O(log n).
 */
#include "core/core.h"
#include "cuda/copy.h"
#include "cuda/cuda.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

static ferry_status_t desc_check(const ferry_desc_t *d, size_t i)
{
    if (d->addr == 0)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu has a "
                            "NULL address", i);
    if (d->len == 0)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu has "
                            "zero length", i);
    if (d->addr + d->len < d->addr)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu: "
                            "addr 0x%llx + len %llu overflows", i,
                            (unsigned long long)d->addr, (unsigned long long)d->len);
    if (d->kind != FERRY_MEM_AUTO && d->kind != FERRY_MEM_HOST &&
        d->kind != FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu has "
                            "unknown memory kind %d", i, (int)d->kind);
    return FERRY_OK;
}

/* Under the lock: undoes the registration of one region. */
static void region_undo(ferry_agent_t *agent, ferry__region_t *g)
{
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        if (g->lreg[k] != NULL)
            ferry__backends[k]->mem_deregister(agent->bk_ctx[k], g->lreg[k]);
        g->lreg[k] = NULL;
    }
}

/* Under the lock: registers one region with every backend that takes it. */
static ferry_status_t region_do(ferry_agent_t *agent, ferry__region_t *g,
                                       size_t i)
{
    unsigned taken = 0;

    for (unsigned k = 0; k < FERRY__NBK; k++) {
        void *ctx = agent->bk_ctx[k];
        ferry_status_t st;

        if (!ferry__backends[k]->supports_kind(ctx, g->desc.kind))
            continue;
        st = ferry__backends[k]->mem_register(ctx, &g->desc, &g->lreg[k]);
        if (st < 0) {
            ferry__error_prefix("mem_register: descriptor %zu", i);
            region_undo(agent, g);
            return st;
        }
        taken++;
    }
    if (taken == 0)
        return ferry__error(FERRY_ERR_UNSUPPORTED,
                            "mem_register: descriptor %zu: no backend of this "
                            "build can register %s memory", i,
                            g->desc.kind == FERRY_MEM_CUDA ? "CUDA" : "this");
    return FERRY_OK;
}

/* Settles a descriptor's kind and device: AUTO is detected, CUDA needs the
 * driver and device memory of that device, and host memory must not be
 * device memory (a transport handed a device pointer as host memory fails
 * much later, far from the cause). */
static ferry_status_t desc_kind(ferry_desc_t *d, size_t i)
{
    const ferry__cuda_t *cu;
    ferry_mem_kind_t kind;
    int32_t device;

    if (d->kind == FERRY_MEM_CUDA && ferry__cuda_get(&cu) < 0) {
        ferry__error_prefix("mem_register: descriptor %zu", i);
        return FERRY_ERR_UNSUPPORTED;
    }
    ferry__cuda_classify(d->addr, &kind, &device);
    if (d->kind == FERRY_MEM_CUDA && kind != FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu says "
                            "CUDA memory, but 0x%llx is not device memory", i,
                            (unsigned long long)d->addr);
    if (d->kind == FERRY_MEM_CUDA && d->device != device)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu says "
                            "device %d, but 0x%llx is memory of device %d", i,
                            (int)d->device, (unsigned long long)d->addr, (int)device);
    if (d->kind == FERRY_MEM_HOST && kind == FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: descriptor %zu says "
                            "host memory, but 0x%llx is memory of CUDA device %d", i,
                            (unsigned long long)d->addr, (int)device);
    d->kind = kind;
    d->device = kind == FERRY_MEM_CUDA ? device : -1;
    if (kind == FERRY_MEM_CUDA)
        ferry__cuda_copy_preload(device);
    return FERRY_OK;
}

ferry_status_t ferry_mem_register(ferry_agent_t *agent, const ferry_desc_t *descs,
                                  size_t n, ferry_mem_t **mem_p)
{
    ferry_mem_t *mem;
    ferry_status_t st = FERRY_OK;
    size_t i;

    if (agent == NULL || descs == NULL || mem_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: NULL argument");
    if (n == 0 || n > UINT32_MAX)
        return ferry__error(FERRY_ERR_INVALID, "mem_register: %zu descriptors "
                            "(1 to 2^32-1 allowed)", n);
    for (i = 0; i < n; i++)
        FERRY_CHECK(desc_check(&descs[i], i));

    mem = calloc(1, sizeof(*mem) + n * sizeof(mem->regions[0]));
    if (mem == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "mem_register: no memory for "
                            "%zu regions", n);
    mem->agent = agent;
    mem->n = n;
    mem->refs = 1;
    for (i = 0; i < n; i++) {
        mem->regions[i].desc = descs[i];
        st = desc_kind(&mem->regions[i].desc, i);
        if (st < 0) {
            free(mem);
            return st;
        }
    }

    ferry__agent_lock(agent);
    for (i = 0; i < n; i++) {
        ferry__region_t *g = &mem->regions[i];

        g->mem = mem;
        FERRY_CHECK_GOTO(region_do(agent, g, i), st, err_undo);
        st = ferry__imap_insert(&agent->registry, g->desc.addr, g->desc.len, g);
        if (st < 0) {
            region_undo(agent, g);
            goto err_undo;
        }
        g->id = agent->next_region_id++;
    }
    ferry__list_add(&agent->mems, &mem->link);
    ferry__agent_unlock(agent);
    *mem_p = mem;
    return FERRY_OK;

err_undo:
    while (i-- > 0) {
        (void)ferry__imap_remove(&agent->registry, mem->regions[i].desc.addr,
                                 &mem->regions[i]);
        region_undo(agent, &mem->regions[i]);
    }
    ferry__agent_unlock(agent);
    free(mem);
    return st;
}

void ferry__mem_unref(ferry_mem_t *mem)
{
    if (--mem->refs == 0)
        free(mem);
}

void ferry__mem_drop(ferry_mem_t *mem)
{
    ferry_agent_t *agent = mem->agent;

    for (size_t i = 0; i < mem->n; i++) {
        (void)ferry__imap_remove(&agent->registry, mem->regions[i].desc.addr,
                                 &mem->regions[i]);
        region_undo(agent, &mem->regions[i]);
    }
    mem->dead = true;
    ferry__list_del(&mem->link);
    ferry__mem_unref(mem);
}

ferry_status_t ferry_mem_deregister(ferry_mem_t *mem)
{
    ferry_agent_t *agent;

    if (mem == NULL)
        return FERRY_OK;
    agent = mem->agent;
    ferry__agent_lock(agent);
    if (mem->dead) {
        ferry__agent_unlock(agent);
        return ferry__error(FERRY_ERR_INVALID, "mem_deregister: memory already "
                            "deregistered");
    }
    if (mem->active > 0) {
        unsigned active = mem->active;

        ferry__agent_unlock(agent);
        return ferry__error(FERRY_ERR_BUSY, "mem_deregister: %u request(s) in "
                            "flight use this memory", active);
    }
    ferry__mem_drop(mem);
    ferry__agent_unlock(agent);
    return FERRY_OK;
}
