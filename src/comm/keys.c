/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator's keys in the store: their names under the job's prefix,
 * and their deletion once no rank can still read them. A round's keys are
 * deferred until every rank has completed a later round (then every rank is
 * past the earlier one): each rank deletes its own, rank 0 the shared ones.
 *
 * Keys, all under the prefix P (docs/COMM.md):
 *   P join/<r>    "<size> <host> <pid> <nonce> <hosted>", created once
 *                 (compare_set):
 *                 a second process claiming the same rank is refused
 *   P hb/<r>      the heartbeat counter, or "done" once the rank has left
 *   P abort       "<rank> <reason>": the first abort of the job
 *   P c/<s>/<r>   rank r's contribution to collective round s
 *   P left        ranks that left (external store only): the last one
 *                 deletes the job's keys
 * and the exchange's, drawn in exchange.c.
 */
#include "comm/comm.h"
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ferry__comm_key(const ferry_comm_t *comm, char *key, const char *fmt, ...)
{
    va_list ap;
    size_t n = strlen(comm->cfg.prefix);

    memcpy(key, comm->cfg.prefix, n);
    va_start(ap, fmt);
    vsnprintf(key + n, FERRY__COMM_KEY_MAX - n, fmt, ap);
    va_end(ap);
}

const char **ferry__comm_rank_keys(const ferry_comm_t *c, const char *stem)
{
    typedef char name_t[FERRY__COMM_KEY_MAX + 16];
    size_t n = (size_t)c->size;
    const char **keys = malloc(n * (sizeof(*keys) + sizeof(name_t)));
    name_t *names;

    if (keys == NULL)
        return NULL;
    names = (name_t *)(void *)(keys + n);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "%s%zu", stem, i);
        keys[i] = names[i];
    }
    return keys;
}

void ferry__comm_defer(ferry_comm_t *c, const char *key, bool per_rank)
{
    if (c->npending == c->pending_cap) {
        size_t cap = c->pending_cap ? 2 * c->pending_cap : 8;
        ferry__comm_pending_t *p = realloc(c->pending, cap * sizeof(*p));

        if (p == NULL) {
            ferry__warn("comm: no memory to remember key '%s'; it stays in "
                        "the store", key);
            return;
        }
        c->pending = p;
        c->pending_cap = cap;
    }
    snprintf(c->pending[c->npending].key, FERRY__COMM_KEY_MAX, "%s", key);
    c->pending[c->npending].per_rank = per_rank;
    c->pending[c->npending].before = c->seq + 1;
    c->npending++;
}

void ferry__comm_delete_key(ferry__kv_t *kv, const char *key)
{
    ferry_status_t st = ferry__kv_delete(kv, key);

    if (st != FERRY_OK)
        ferry__debug("comm: delete '%s': %s", key, ferry_last_error());
}

/* Deletes the pending keys that every rank is past: those of rounds before
 * the one just completed. Each rank deletes its own keys, rank 0 the
 * shared ones. */
void ferry__comm_flush_pending(ferry_comm_t *c)
{
    size_t keep = 0;
    char key[FERRY__COMM_KEY_MAX + 16];

    for (size_t i = 0; i < c->npending; i++) {
        ferry__comm_pending_t *p = &c->pending[i];

        if (p->before > c->seq) {
            c->pending[keep++] = *p;
            continue;
        }
        if (!p->per_rank && c->rank != 0)
            continue;
        snprintf(key, sizeof(key), p->per_rank ? "%s%d" : "%s", p->key,
                 c->rank);
        ferry__comm_delete_key(c->kv, key);
    }
    c->npending = keep;
}
