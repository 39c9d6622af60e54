/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A staged request's plan, made once at prepare: its segments cut into
 * pieces of at most one chunk, the pieces grouped in order into chunks of
 * at most FERRY_STAGE_CHUNK bytes and STG_MAX_PIECES pieces (a batch of a
 * thousand small scattered blocks is a few chunks, gathered into one bounce
 * buffer each, not a message per block), and the wire table of the
 * target's side of every piece, which each post sends as it is.
 */
#include "backends/staged/staged.h"
#include "util/status.h"

#include <stdlib.h>

void ferry__stg_plan_free(stg_plan_t *plan)
{
    if (plan == NULL)
        return;
    free(plan->laddr);
    free(plan->llen);
    free(plan->ldev);
    free(plan->table);
    free(plan->chunks);
    free(plan);
}

ferry_status_t ferry__stg_plan(const ferry__bk_seg_t *segs, size_t n, uint64_t chunk,
                               stg_plan_t **plan_p)
{
    stg_plan_t *plan = calloc(1, sizeof(*plan));
    size_t np = 0, k = 0, nc = 0;
    uint64_t fill = 0;

    if (plan == NULL || chunk == 0)
        goto err;
    for (size_t i = 0; i < n; i++)
        np += (size_t)((segs[i].len + chunk - 1) / chunk);
    plan->laddr = malloc(np * sizeof(*plan->laddr));
    plan->llen = malloc(np * sizeof(*plan->llen));
    plan->ldev = malloc(np * sizeof(*plan->ldev));
    plan->table = malloc(np * sizeof(*plan->table));
    /* At most one chunk per piece. */
    plan->chunks = malloc(np * sizeof(*plan->chunks));
    if (plan->laddr == NULL || plan->llen == NULL || plan->ldev == NULL || plan->table == NULL ||
        plan->chunks == NULL)
        goto err;
    for (size_t i = 0; i < n; i++) {
        const stg_reg_t *lreg = segs[i].lreg;
        const stg_rkey_t *rk = segs[i].rkey;
        int dev = lreg->kind == FERRY_MEM_CUDA ? lreg->device : -1;

        for (uint64_t off = 0; off < segs[i].len; off += chunk) {
            uint64_t len = segs[i].len - off < chunk ? segs[i].len - off : chunk;
            stg_chunk_t *c = nc > 0 ? &plan->chunks[nc - 1] : NULL;

            /* A new chunk when this piece does not fit the last one. */
            if (c == NULL || fill + len > chunk || c->n == STG_MAX_PIECES) {
                c = &plan->chunks[nc++];
                *c = (stg_chunk_t){(uint32_t)k, 0, 0};
                fill = 0;
            }
            plan->laddr[k] = segs[i].laddr + off;
            plan->llen[k] = len;
            plan->ldev[k] = dev;
            plan->table[k] = (stg_piece_t){rk->token, rk->gen, segs[i].raddr + off, len};
            c->n++;
            c->bytes += len;
            fill += len;
            plan->total += len;
            k++;
        }
    }
    plan->npieces = np;
    plan->nchunks = nc;
    ferry__list_init(&plan->run.link);
    *plan_p = plan;
    return FERRY_OK;

err:
    ferry__stg_plan_free(plan);
    return ferry__error(FERRY_ERR_NO_MEMORY, "staged: no memory to plan %zu "
                        "segments", n);
}
