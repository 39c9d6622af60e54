/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Requests: prepared once (every descriptor validated, every region and key
 * resolved, segments grouped by backend), then posted any number of times
 * with no lookups and no allocation, and completed through the backends'
 * callbacks during progress.
 */
#include "core/core.h"
#include "util/log.h"
#include "util/time.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_name(ferry_mem_kind_t kind)
{
    switch (kind) {
    case FERRY_MEM_HOST: return "host";
    case FERRY_MEM_CUDA: return "CUDA";
    default: return "auto";
    }
}

/* Finds the region covering d, or records which index failed and why. */
static ferry_status_t lookup(const ferry__imap_t *map, const ferry_desc_t *d,
                                    const char *side, size_t i, const char *peer,
                                    void **val_p)
{
    switch (ferry__imap_find(map, d->addr, d->len, val_p)) {
    case FERRY__IMAP_FOUND:
        return FERRY_OK;
    case FERRY__IMAP_PARTIAL:
        return ferry__error(FERRY_ERR_OUT_OF_RANGE,
                            "prepare: %s descriptor %zu (addr 0x%llx, len %llu) "
                            "runs past the end of its registration%s%s%s", side,
                            i, (unsigned long long)d->addr,
                            (unsigned long long)d->len, peer ? " on peer '" : "",
                            peer ? peer : "", peer ? "'" : "");
    default:
        return ferry__error(FERRY_ERR_NOT_REGISTERED,
                            "prepare: %s descriptor %zu (addr 0x%llx, len %llu) "
                            "lies in no registration%s%s%s", side, i,
                            (unsigned long long)d->addr, (unsigned long long)d->len,
                            peer ? " of peer '" : "", peer ? peer : "",
                            peer ? "'" : "");
    }
}

static ferry_status_t kind_check(const ferry_desc_t *d, ferry_mem_kind_t kind,
                                        const char *side, size_t i)
{
    if (d->kind == FERRY_MEM_AUTO || d->kind == kind)
        return FERRY_OK;
    return ferry__error(FERRY_ERR_MISMATCH, "prepare: %s descriptor %zu says %s "
                        "memory but lies in a %s registration", side, i,
                        kind_name(d->kind), kind_name(kind));
}

static int ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;

    return (x > y) - (x < y);
}

/* What prepare needs to know about the request beyond its descriptors. */
typedef struct ferry__route {
    bool same_host; /* the peer shares this host (CUDA IPC can reach it) */
    uint16_t only;  /* the backend id the caller insists on, or 0 */
} ferry__route_t;

/* Why no backend can move pair i: each candidate's missing capability. */
static ferry_status_t no_path(ferry_agent_t *agent, ferry__remote_t *remote,
                                     const ferry__region_t *g,
                                     const ferry__rregion_t *rr,
                                     const ferry__route_t *route, size_t i)
{
    char why[384] = "";
    size_t at = 0;

    for (unsigned k = 0; k < FERRY__NBK && at < sizeof(why); k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];

        if (route->only != 0 && ops->id != route->only)
            continue;
        if (!ops->supports_kind(agent->bk_ctx[k], g->desc.kind))
            at += (size_t)snprintf(why + at, sizeof(why) - at, "; %s cannot take "
                                   "%s memory (this build of it has no support "
                                   "for it)", ops->name,
                                   kind_name(g->desc.kind));
        else if (g->lreg[k] == NULL)
            at += (size_t)snprintf(why + at, sizeof(why) - at, "; %s did not "
                                   "register the local memory", ops->name);
        else if (rr->md.bk[k].data == NULL)
            at += (size_t)snprintf(why + at, sizeof(why) - at, "; %s cannot reach "
                                   "the peer's %s memory (the peer offers no %s "
                                   "access to it)", ops->name,
                                   kind_name(rr->md.kind), ops->name);
        else
            at += (size_t)snprintf(why + at, sizeof(why) - at, "; %s works only "
                                   "between processes of one host", ops->name);
    }
    return ferry__error(FERRY_ERR_UNSUPPORTED, "prepare: descriptor %zu: no "
                        "backend can move local %s memory to and from %s memory "
                        "on peer '%s'%s", i, kind_name(g->desc.kind),
                        kind_name(rr->md.kind), remote->md.name, why);
}

/* Under the lock: validates pair i and resolves it into a segment, its
 * backend slot and its local registration. */
static ferry_status_t resolve_one(ferry_agent_t *agent, ferry__remote_t *remote,
                                         const ferry__route_t *route,
                                         const ferry_desc_t *l, const ferry_desc_t *r,
                                         size_t i, ferry__bk_seg_t *seg,
                                         unsigned *slot_p, ferry_mem_t **mem_p)
{
    ferry__region_t *g;
    ferry__rregion_t *rr;
    ferry_status_t st;
    unsigned k;

    if (l->len == 0)
        return ferry__error(FERRY_ERR_INVALID, "prepare: descriptor %zu has zero "
                            "length", i);
    if (l->len != r->len)
        return ferry__error(FERRY_ERR_MISMATCH, "prepare: descriptor %zu: local "
                            "length %llu differs from remote length %llu", i,
                            (unsigned long long)l->len, (unsigned long long)r->len);
    FERRY_CHECK(lookup(&agent->registry, l, "local", i, NULL, (void **)&g));
    FERRY_CHECK(lookup(&remote->map, r, "remote", i, remote->md.name,
                              (void **)&rr));
    FERRY_CHECK(kind_check(l, g->desc.kind, "local", i));
    FERRY_CHECK(kind_check(r, rr->md.kind, "remote", i));

    for (k = 0; k < FERRY__NBK; k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];

        if ((route->only == 0 || ops->id == route->only) && g->lreg[k] != NULL &&
            rr->md.bk[k].data != NULL &&
            (route->same_host || !(ops->flags & FERRY__BK_SAME_HOST_ONLY)))
            break;
    }
    if (k == FERRY__NBK)
        return no_path(agent, remote, g, rr, route, i);
    st = ferry__remote_rkey(agent, remote, rr, k, &seg->rkey);
    if (st < 0) {
        ferry__error_prefix("prepare: descriptor %zu", i);
        return st;
    }
    seg->laddr = l->addr;
    seg->raddr = r->addr;
    seg->len = l->len;
    seg->lreg = g->lreg[k];
    *slot_p = k;
    *mem_p = g->mem;
    return FERRY_OK;
}

/* Under the lock: resolves every pair into segs and slots (each segment's
 * backend) and collects the distinct local registrations into x->mems. */
static ferry_status_t resolve(ferry_agent_t *agent, ferry__remote_t *remote,
                                     const ferry__route_t *route,
                                     const ferry_desc_t *local,
                                     const ferry_desc_t *rdesc, size_t n,
                                     ferry__bk_seg_t *segs, uint8_t *slots,
                                     ferry_xfer_t *x)
{
    ferry_mem_t **mems = NULL, *mem = NULL;
    size_t nmems = 0, cap = 0;
    ferry_status_t st;
    unsigned k = 0;

    for (size_t i = 0; i < n; i++) {
        FERRY_CHECK_GOTO(resolve_one(agent, remote, route, &local[i], &rdesc[i], i,
                                            &segs[i], &k, &mem),
                         st, err);
        slots[i] = (uint8_t)k;
        /* Requests mostly use one registration: keep distinct neighbours,
         * then sort out the rest below. */
        if (nmems > 0 && mems[nmems - 1] == mem)
            continue;
        if (nmems == cap) {
            ferry_mem_t **grown = realloc(mems, (cap ? cap * 2 : 4) * sizeof(*mems));

            if (grown == NULL) {
                st = ferry__error(FERRY_ERR_NO_MEMORY, "prepare: no memory");
                goto err;
            }
            mems = grown;
            cap = cap ? cap * 2 : 4;
        }
        mems[nmems++] = mem;
    }
    if (nmems > 1) {
        size_t out = 1;

        qsort(mems, nmems, sizeof(*mems), ptr_cmp);
        for (size_t i = 1; i < nmems; i++)
            if (mems[i] != mems[out - 1])
                mems[out++] = mems[i];
        nmems = out;
    }
    x->mems = mems;
    x->nmems = nmems;
    return FERRY_OK;

err:
    free(mems);
    return st;
}

/* Orders x->segs by backend slot (slots[i]: segment i's) and describes
 * each slot's range, with its backend, context and connection. A request
 * that uses one backend, the common case, is left in place without a copy. */
static ferry_status_t group(ferry_xfer_t *x, const uint8_t *slots)
{
    ferry_agent_t *agent = x->agent;
    size_t count[FERRY__NBK] = {0}, at[FERRY__NBK];
    size_t pos = 0;
    ferry__bk_seg_t *copy;

    for (size_t i = 0; i < x->nsegs; i++)
        count[slots[i]]++;
    x->nparts = 0;
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        at[k] = pos;
        if (count[k] > 0)
            x->parts[x->nparts++] = (ferry__xfer_part_t){
                ferry__backends[k], agent->bk_ctx[k], x->remote->inst->conn[k],
                NULL, (uint32_t)pos, (uint32_t)count[k]};
        pos += count[k];
    }
    if (x->nparts == 1)
        return FERRY_OK;
    copy = malloc(x->nsegs * sizeof(*copy));
    if (copy == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "prepare: no memory for %zu "
                            "descriptors", x->nsegs);
    memcpy(copy, x->segs, x->nsegs * sizeof(*copy));
    for (size_t i = 0; i < x->nsegs; i++)
        x->segs[at[slots[i]]++] = copy[i];
    free(copy);
    return FERRY_OK;
}

/*
 * Merges, within each part, every segment that continues the previous one
 * in both address spaces through the same registration and key (a batch of
 * neighbouring blocks, as KV-cache pages often are): the same bytes move,
 * in one operation instead of many. The descriptors stay as given for
 * errors, which prepare reports before this runs.
 */
static void coalesce(ferry_xfer_t *x)
{
    size_t out = 0;

    for (unsigned p = 0; p < x->nparts; p++) {
        ferry__xfer_part_t *part = &x->parts[p];
        size_t first = out;

        for (size_t i = part->first; i < (size_t)part->first + part->count; i++) {
            ferry__bk_seg_t *prev = out > first ? &x->segs[out - 1] : NULL;
            const ferry__bk_seg_t *s = &x->segs[i];

            if (prev != NULL && prev->laddr + prev->len == s->laddr &&
                prev->raddr + prev->len == s->raddr && prev->lreg == s->lreg &&
                prev->rkey == s->rkey) {
                prev->len += s->len;
                continue;
            }
            x->segs[out++] = *s;
        }
        part->first = (uint32_t)first;
        part->count = (uint32_t)(out - first);
    }
    x->nsegs = out;
}

/* Under the lock: frees what the backends kept for x's parts. */
static void xfer_unprepare(ferry_xfer_t *x)
{
    for (unsigned p = 0; p < x->nparts; p++) {
        ferry__xfer_part_t *part = &x->parts[p];

        if (part->plan != NULL)
            part->ops->unprepare(part->ctx, part->plan);
        part->plan = NULL;
    }
}

ferry_status_t ferry_xfer_prepare(ferry_agent_t *agent, ferry_xfer_op_t op,
                                  const ferry_desc_t *local, size_t nlocal,
                                  ferry_peer_t *peer, const ferry_desc_t *remote,
                                  size_t nremote, const ferry_xfer_params_t *params,
                                  ferry_xfer_t **xfer_p)
{
    ferry_xfer_t *x;
    uint8_t *slots = NULL;
    ferry__remote_t *rm;
    bool prefetched = false;
    ferry__route_t route = {false, 0};
    ferry_status_t st;

    if (agent == NULL || peer == NULL || local == NULL || remote == NULL ||
        xfer_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "prepare: NULL argument");
    if (op != FERRY_OP_WRITE && op != FERRY_OP_READ)
        return ferry__error(FERRY_ERR_INVALID, "prepare: unknown op %d", (int)op);
    if (peer->agent != agent)
        return ferry__error(FERRY_ERR_INVALID, "prepare: the peer belongs to "
                            "another agent");
    if (nlocal != nremote)
        return ferry__error(FERRY_ERR_MISMATCH, "prepare: %zu local descriptors "
                            "but %zu remote ones", nlocal, nremote);
    if (nlocal == 0 || nlocal > UINT32_MAX)
        return ferry__error(FERRY_ERR_INVALID, "prepare: %zu descriptors (1 to "
                            "2^32-1 allowed)", nlocal);
    if (params != NULL && (params->field_mask & FERRY_XFER_PARAM_BACKEND)) {
        if (params->backend != FERRY_BACKEND_ANY && params->backend != FERRY_BACKEND_UCX &&
            params->backend != FERRY_BACKEND_CUDA_IPC &&
            params->backend != FERRY_BACKEND_STAGED)
            return ferry__error(FERRY_ERR_INVALID, "prepare: unknown backend %d",
                                (int)params->backend);
        route.only = (uint16_t)params->backend;
    }
    if (params != NULL && (params->field_mask & FERRY_XFER_PARAM_NOTIF)) {
        if (params->notif == NULL && params->notif_len > 0)
            return ferry__error(FERRY_ERR_INVALID, "prepare: NULL notification of "
                                "%zu bytes", params->notif_len);
        if (params->notif_len > FERRY_NOTIF_MAX)
            return ferry__error(FERRY_ERR_INVALID, "prepare: a notification of %zu "
                                "bytes (at most %d)", params->notif_len,
                                FERRY_NOTIF_MAX);
    }

    x = calloc(1, sizeof(*x));
    if (x != NULL) {
        x->segs = malloc(nlocal * sizeof(*x->segs));
        slots = malloc(nlocal);
    }
    if (x == NULL || x->segs == NULL || slots == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "prepare: no memory for %zu "
                          "descriptors", nlocal);
        goto err_free;
    }
    x->agent = agent;
    x->op = op;
    x->nsegs = nlocal;
    atomic_init(&x->state, FERRY__XFER_NEW);
    atomic_init(&x->solo, FERRY__SOLO_NONE);
    atomic_init(&x->result, FERRY_OK);
    ferry__list_init(&x->alink);
    ferry__list_init(&x->cqlink);
    if (params != NULL && (params->field_mask & FERRY_XFER_PARAM_USER_DATA)) {
        x->notify = true;
        x->user_data = params->user_data;
    }
    if (params != NULL && (params->field_mask & FERRY_XFER_PARAM_NOTIF)) {
        x->has_msg = true;
        x->msg_len = params->notif_len;
        x->msg = malloc(x->msg_len ? x->msg_len : 1);
        if (x->msg == NULL) {
            st = ferry__error(FERRY_ERR_NO_MEMORY, "prepare: no memory for the "
                              "notification");
            goto err_free;
        }
        if (x->msg_len > 0)
            memcpy(x->msg, params->notif, x->msg_len);
    }

    ferry__agent_lock(agent);
    rm = peer->remote;
    prefetched = rm->prefetch;
    if (prefetched) {
        /* What opening the peer's keys would wait for from the peer is
         * fetched first, without the lock, the remote held meanwhile;
         * what no key took is dropped at the end (both ways out). */
        rm->refs++;
        ferry__agent_unlock(agent);
        ferry__remote_prefetch(agent, rm, remote, nremote, route.only);
        ferry__agent_lock(agent);
        ferry__remote_unref(agent, rm);
        rm = peer->remote;
    }
    if (rm->inst->retired) {
        /* A peer that left (ferry__peer_lost) until a new blob is loaded. */
        st = ferry__error(FERRY_ERR_PEER_LOST, "prepare: peer '%s' is gone; "
                          "load its new metadata first", rm->md.name);
        goto err_unlock;
    }
    route.same_host = strcmp(rm->md.host_id, agent->host_id) == 0;
    x->remote = rm; /* referenced below, once nothing can fail */
    FERRY_CHECK_GOTO(resolve(agent, rm, &route, local, remote, nlocal,
                                    x->segs, slots, x),
                     st, err_unlock);
    FERRY_CHECK_GOTO(group(x, slots), st, err_unlock);
    coalesce(x);
    if (x->has_msg) {
        /* The messages' connection, opened now so that a peer that cannot
         * receive them fails the prepare, not a post. */
        void *conn;

        if (agent->msg_slot < 0)
            st = ferry__error(FERRY_ERR_UNSUPPORTED, "prepare: no backend of this "
                              "build carries notifications");
        else
            st = ferry__remote_conn(agent, rm, (unsigned)agent->msg_slot, &conn);
        if (st < 0) {
            ferry__error_prefix("prepare: notification");
            goto err_unlock;
        }
    }
    for (unsigned p = 0; p < x->nparts; p++) {
        ferry__xfer_part_t *part = &x->parts[p];

        FERRY_CHECK_GOTO(part->ops->prepare(part->ctx, part->conn,
                                            x->segs + part->first, part->count,
                                            &part->plan),
                         st, err_unprepare);
    }
    for (size_t i = 0; i < x->nmems; i++)
        x->mems[i]->refs++;
    rm->refs++;
    ferry__list_add(&agent->xfers, &x->link);
    if (prefetched)
        ferry__remote_prefetch_end(agent, rm);
    ferry__agent_unlock(agent);
    free(slots);
    *xfer_p = x;
    return FERRY_OK;

err_unprepare:
    xfer_unprepare(x);
err_unlock:
    if (prefetched)
        ferry__remote_prefetch_end(agent, rm);
    ferry__agent_unlock(agent);
err_free:
    free(slots);
    if (x != NULL) {
        free(x->msg);
        free(x->segs);
        free(x->mems);
        free(x);
    }
    return st;
}

/* Records a part's failure on the request (under the lock). */
static void xfer_fail(ferry_xfer_t *x, ferry_status_t st)
{
    if (x->first_err == FERRY_OK) {
        x->first_err = st;
        snprintf(x->errmsg, sizeof(x->errmsg), "%s", ferry_last_error());
    }
}

/* Under the lock: drops a request's entry from the completion queue. */
static void cq_drop(ferry_xfer_t *x)
{
    if (x->cqlink.next == &x->cqlink) /* not queued */
        return;
    ferry__list_del(&x->cqlink);
    if (x->agent->cq.next == &x->agent->cq)
        ferry__cq_signal(x->agent, false);
}

/*
 * Under the lock: a successful post's end sends the request's message, now
 * that every byte of the post is in place (see ferry/notif.h); a message
 * that cannot leave fails the post, so that the initiator learns that the
 * target was not told.
 */
static void xfer_send_msg(ferry_xfer_t *x)
{
    ferry_status_t st;

    if (!x->has_msg || x->first_err != FERRY_OK)
        return;
    st = ferry__notif_send_locked(x->agent, x->remote, x->msg, x->msg_len);
    if (st < 0) {
        ferry__error_prefix("the transfer completed, but its notification was "
                            "not sent");
        xfer_fail(x, st);
    }
}

/* Under the lock: ends a request in flight. The completion queue takes it
 * (queue, and the request asked for it) unless the post that started it
 * returns its result itself, as an inline completion does. */
static void xfer_finish(ferry_xfer_t *x, bool queue)
{
    ferry_agent_t *agent = x->agent;

    xfer_send_msg(x);
    for (size_t i = 0; i < x->nmems; i++)
        x->mems[i]->active--;
    ferry__list_del(&x->alink);
    if (x->notify && queue) {
        bool was_empty = agent->cq.next == &agent->cq;

        ferry__list_add(agent->cq.prev, &x->cqlink); /* at the tail */
        if (was_empty)
            ferry__cq_signal(agent, true);
    }
    atomic_store_explicit(&x->result, x->first_err, memory_order_relaxed);
    atomic_store_explicit(&x->state, FERRY__XFER_DONE, memory_order_release);
    ferry__stream_done_locked(x);
    pthread_cond_broadcast(&agent->done_cv);
}

/* Backend completion of one part; runs in progress, under the lock. */
static void xfer_part_done(void *arg, ferry_status_t st)
{
    ferry_xfer_t *x = arg;

    if (st < 0)
        xfer_fail(x, st);
    if (--x->pending == 0)
        xfer_finish(x, true);
}

/* Under the lock: the sum of the headway marks of x's connections. */
static uint64_t xfer_mark(ferry_xfer_t *x)
{
    uint64_t mark = 0;

    for (unsigned p = 0; p < x->nparts; p++)
        mark += x->parts[p].ops->conn_events(x->parts[p].ctx, x->parts[p].conn);
    return mark;
}

/*
 * Under the lock: ends the request in flight x with status why by aborting
 * the connections its parts use. Its own detail text is own; every other
 * request in flight on those connections ends with why too, and the text
 * others. Returns FERRY_OK when x is done, FERRY_IN_PROGRESS when a
 * transport will hand it back later.
 */
static ferry_status_t xfer_abort_locked(ferry_xfer_t *x, ferry_status_t why,
                                               const char *own, const char *others)
{
    ferry__errsave_t save;

    /* The text for the others is for them alone: the caller's own detail
     * text stays as it was (cancel and release succeed). */
    ferry__error_save(&save);
    ferry__xfer_claim_locked(x);
    if (!ferry__in_flight(x))
        return FERRY_OK;
    x->aborting = true;
    if (x->first_err == FERRY_OK) {
        x->first_err = why;
        snprintf(x->errmsg, sizeof(x->errmsg), "%s", own);
    }
    for (unsigned p = 0; p < x->nparts && ferry__in_flight(x); p++) {
        /* The backend passes this text to every batch it ends. */
        ferry__error(why, "%s", others);
        (void)x->parts[p].ops->conn_abort(x->parts[p].ctx, x->parts[p].conn, why);
    }
    return ferry__error_keep(&save, ferry__in_flight(x) ? FERRY_IN_PROGRESS : FERRY_OK);
}

void ferry__stall_check_locked(ferry_agent_t *agent)
{
    uint64_t now, every;
    char own[384], others[448];

    if (agent->stall_ns == 0 || agent->active.next == &agent->active)
        return;
    now = ferry__now_ns();
    if (now < agent->next_stall_ns)
        return;
    every = agent->stall_ns / 8 < 10000000 ? agent->stall_ns / 8 : 10000000;
    agent->next_stall_ns = now + every;
restart:
    for (ferry__list_t *l = agent->active.next; l != &agent->active; l = l->next) {
        ferry_xfer_t *x = ferry__container_of(l, ferry_xfer_t, alink);
        uint64_t mark = xfer_mark(x);

        if (mark != x->mark) {
            x->mark = mark;
            x->mark_ns = now;
            continue;
        }
        if (x->aborting || now - x->mark_ns < agent->stall_ns)
            continue;
        snprintf(own, sizeof(own), "xfer: no headway for %llu ms on the "
                 "connection to peer '%s' (stall timeout)",
                 (unsigned long long)((now - x->mark_ns) / 1000000),
                 x->remote->md.name);
        snprintf(others, sizeof(others), "%s; every request in flight to it "
                 "ended", own);
        ferry__info("%s", own);
        (void)xfer_abort_locked(x, FERRY_ERR_TIMEOUT, own, others);
        goto restart; /* the abort took requests off the list */
    }
}

void ferry__peer_lost(ferry_agent_t *agent, const char *name, const char *why)
{
    char own[384], others[448];
    ferry__inst_t *inst = NULL;

    ferry__agent_lock(agent);
    for (ferry__list_t *l = agent->peers.next; l != &agent->peers; l = l->next) {
        ferry_peer_t *peer = ferry__container_of(l, ferry_peer_t, link);
        if (strcmp(peer->name, name) == 0)
            inst = peer->remote->inst;
    }
    if (inst == NULL || inst->retired) {
        ferry__agent_unlock(agent);
        return;
    }
    inst->retired = true;
    snprintf(own, sizeof(own), "xfer: peer '%s' is gone (%s)", name, why);
    snprintf(others, sizeof(others), "%s; every request in flight to it ended", own);
    ferry__info("%s", own);
restart:
    for (ferry__list_t *l = agent->active.next; l != &agent->active; l = l->next) {
        ferry_xfer_t *x = ferry__container_of(l, ferry_xfer_t, alink);

        if (x->remote->inst != inst || x->aborting)
            continue;
        (void)xfer_abort_locked(x, FERRY_ERR_PEER_LOST, own, others);
        goto restart; /* the abort took requests off the list */
    }
    ferry__agent_unlock(agent);
}

bool ferry__peer_known(ferry_agent_t *agent, const char *name)
{
    bool known = false;

    ferry__agent_lock(agent);
    for (ferry__list_t *l = agent->peers.next; l != &agent->peers && !known;
         l = l->next)
        known = strcmp(ferry__container_of(l, ferry_peer_t, link)->name, name) == 0;
    ferry__agent_unlock(agent);
    return known;
}

/* Under the lock: the abort that cancel and release perform. */
static ferry_status_t xfer_cancel_locked(ferry_xfer_t *x, const char *call)
{
    char own[96], others[448];

    snprintf(own, sizeof(own), "%s: the request was canceled", call);
    snprintf(others, sizeof(others), "the connection to peer '%s' was closed "
             "(%s of another request: a transport cannot recall one "
             "operation); post again", x->remote->md.name, call);
    return xfer_abort_locked(x, FERRY_ERR_CANCELED, own, others);
}

ferry_status_t ferry__xfer_postable_locked(ferry_xfer_t *x, const char *call)
{
    if (atomic_load_explicit(&x->state, memory_order_relaxed) == FERRY__XFER_ACTIVE)
        return ferry__error(FERRY_ERR_BUSY, "%s: the request is still in flight",
                            call);
    if (x->remote->inst->retired)
        return ferry__error(FERRY_ERR_PEER_LOST, "%s: peer '%s' was forgotten or "
                            "replaced by a new instance; prepare the request again",
                            call, x->remote->md.name);
    for (size_t i = 0; i < x->nmems; i++)
        if (x->mems[i]->dead)
            return ferry__error(FERRY_ERR_NOT_REGISTERED, "%s: a local "
                                "registration this request uses was deregistered",
                                call);
    return FERRY_OK;
}

static ferry_status_t xfer_begin_locked(ferry_xfer_t *x, bool skip_stream,
                                               unsigned *runs_p);

/* Runs the parts of x whose post handed them to run(), in order, and
 * records their statuses in st[] (by part). */
static void xfer_run(ferry_xfer_t *x, unsigned runs, ferry_status_t *st)
{
    for (unsigned p = 0; p < x->nparts; p++) {
        const ferry__xfer_part_t *part = &x->parts[p];

        if (runs & (1u << p))
            st[p] = part->ops->run(part->ctx, part->conn, part->plan, x->op,
                                   x->segs + part->first, part->count);
    }
}

/* Under the lock: the ends of the runs; x finishes when they were its last
 * parts in flight, and then the caller returns its result (no queueing). */
static ferry_status_t xfer_ran(ferry_xfer_t *x, unsigned runs,
                                      const ferry_status_t *st)
{
    for (unsigned p = 0; p < x->nparts; p++) {
        if (!(runs & (1u << p)))
            continue;
        if (st[p] < 0)
            xfer_fail(x, st[p]);
        if (--x->pending == 0)
            xfer_finish(x, false);
    }
    return ferry__in_flight(x) ? FERRY_IN_PROGRESS : ferry__xfer_result(x);
}

void ferry__xfer_claim_locked(ferry_xfer_t *x)
{
    int s = FERRY__SOLO_RUNNING;

    if (atomic_compare_exchange_strong(&x->solo, &s, FERRY__SOLO_CLAIMED))
        return;
    /* Ending without the lock takes a few stores: wait them out. The state
     * stays ENDING after that, until the next post sets it. */
    while (atomic_load_explicit(&x->solo, memory_order_acquire) == FERRY__SOLO_ENDING &&
           ferry__in_flight(x))
        sched_yield();
}

/* Without the lock: ends a lone post whose runs all succeeded, unless
 * another thread claimed it; returns whether it did. Nothing else writes
 * x's in-flight state meanwhile: every such writer claims first. */
static bool xfer_end_lone(ferry_xfer_t *x)
{
    int s = FERRY__SOLO_RUNNING;

    if (!atomic_compare_exchange_strong(&x->solo, &s, FERRY__SOLO_ENDING))
        return false;
    for (size_t i = 0; i < x->nmems; i++)
        atomic_fetch_sub_explicit(&x->mems[i]->active, 1, memory_order_release);
    atomic_store_explicit(&x->result, FERRY_OK, memory_order_relaxed);
    /* Last: once DONE shows, another thread may post x again, and its post
     * sets solo anew. */
    atomic_store_explicit(&x->state, FERRY__XFER_DONE, memory_order_release);
    return true;
}

/*
 * A post in which a backend moves a part itself (a copy into a peer's memory
 * mapped here) takes the lock to start every part and count it in flight,
 * then lets go of it while the bytes move, so that other threads post, test
 * and progress meanwhile. If every part was such a copy and all went well,
 * and no other thread took an interest in the request, that is all; else
 * the lock is taken again to record the end.
 */
ferry_status_t ferry_xfer_post(ferry_xfer_t *x)
{
    ferry_status_t st, ran[FERRY__NBK];
    unsigned runs = 0;
    bool ok = true;

    if (x == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_post: NULL request");
    ferry__agent_lock(x->agent);
    st = ferry__xfer_postable_locked(x, "xfer_post");
    if (st == FERRY_OK)
        st = xfer_begin_locked(x, false, &runs);
    ferry__agent_unlock(x->agent);
    if (runs == 0)
        return st;
    xfer_run(x, runs, ran);
    for (unsigned p = 0; p < x->nparts; p++)
        if ((runs & (1u << p)) && ran[p] != FERRY_OK)
            ok = false;
    if (ok && xfer_end_lone(x))
        return FERRY_OK;
    ferry__agent_lock(x->agent);
    atomic_store_explicit(&x->solo, FERRY__SOLO_NONE, memory_order_relaxed);
    st = xfer_ran(x, runs, ran);
    ferry__agent_unlock(x->agent);
    return st;
}

ferry_status_t ferry__xfer_start_locked(ferry_xfer_t *x, bool skip_stream)
{
    ferry_status_t st, ran[FERRY__NBK];
    unsigned runs = 0;

    st = xfer_begin_locked(x, skip_stream, &runs);
    if (runs == 0)
        return st;
    xfer_run(x, runs, ran);
    return xfer_ran(x, runs, ran);
}

/*
 * Under the lock: starts x's parts (but, with skip_stream, those that a
 * stream already carries). A part its backend hands back to be run goes
 * into *runs_p, counted in flight: x is then in flight until the caller
 * has run it (xfer_run) and recorded its end (xfer_ran).
 */
static ferry_status_t xfer_begin_locked(ferry_xfer_t *x, bool skip_stream,
                                               unsigned *runs_p)
{
    ferry_agent_t *agent = x->agent;
    unsigned runs = 0;
    ferry_status_t st;

    cq_drop(x);
    x->first_err = FERRY_OK;
    x->aborting = false;
    x->pending = x->nparts;
    for (unsigned p = 0; p < x->nparts; p++) {
        const ferry__xfer_part_t *part = &x->parts[p];

        if (skip_stream && (part->ops->flags & FERRY__BK_STREAM_COPIES)) {
            x->pending--;
            continue;
        }
        st = part->ops->post(part->ctx, part->conn, part->plan, x->op,
                             x->segs + part->first, part->count,
                             xfer_part_done, x);
        if (st == FERRY__BK_RUN)
            runs |= 1u << p;
        if (st == FERRY_IN_PROGRESS || st == FERRY__BK_RUN)
            continue;
        if (st < 0)
            xfer_fail(x, st);
        x->pending--;
    }
    *runs_p = runs;
    if (x->pending > 0) {
        for (size_t i = 0; i < x->nmems; i++)
            x->mems[i]->active++;
        if (x->pending == (unsigned)__builtin_popcount(runs) && x->first_err == FERRY_OK &&
            x->stream == NULL && !x->has_msg) {
            /* Lone: copies that cannot stall, ended by the posting thread
             * (not with a message, which is sent under the lock). */
            atomic_store_explicit(&x->solo, FERRY__SOLO_RUNNING, memory_order_relaxed);
        } else {
            ferry__list_add(&agent->active, &x->alink);
            if (agent->stall_ns != 0) { /* the stall check's starting point */
                x->mark = xfer_mark(x);
                x->mark_ns = ferry__now_ns();
            }
        }
        atomic_store_explicit(&x->state, FERRY__XFER_ACTIVE, memory_order_relaxed);
        st = FERRY_IN_PROGRESS;
    } else {
        xfer_send_msg(x);
        atomic_store_explicit(&x->result, x->first_err, memory_order_relaxed);
        atomic_store_explicit(&x->state, FERRY__XFER_DONE, memory_order_release);
        st = ferry__xfer_result(x);
    }
    return st;
}

ferry_status_t ferry__xfer_result(ferry_xfer_t *x)
{
    ferry_status_t st = atomic_load_explicit(&x->result, memory_order_relaxed);

    if (st < 0)
        ferry__error(st, "%s", x->errmsg);
    return st;
}

ferry_status_t ferry_xfer_test(ferry_xfer_t *x)
{
    ferry_agent_t *agent;
    int state;

    if (x == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_test: NULL request");
    state = atomic_load_explicit(&x->state, memory_order_acquire);
    if (state == FERRY__XFER_DONE)
        return ferry__xfer_result(x);
    if (state == FERRY__XFER_NEW)
        return ferry__error(FERRY_ERR_INVALID, "xfer_test: the request was never "
                            "posted");
    agent = x->agent;
    ferry__agent_lock(agent);
    (void)ferry__progress_locked(agent);
    ferry__agent_unlock(agent);
    if (atomic_load_explicit(&x->state, memory_order_acquire) == FERRY__XFER_DONE)
        return ferry__xfer_result(x);
    return FERRY_IN_PROGRESS;
}

ferry_status_t ferry_xfer_wait(ferry_xfer_t *x, int64_t timeout_ns)
{
    ferry_status_t st;

    if (timeout_ns == 0) {
        st = ferry_xfer_test(x);
    } else {
        if (x == NULL)
            return ferry__error(FERRY_ERR_INVALID, "xfer_wait: NULL request");
        st = ferry__wait(x, timeout_ns < 0 ? UINT64_MAX
                                           : ferry__now_ns() + (uint64_t)timeout_ns);
    }
    if (st == FERRY_IN_PROGRESS)
        return ferry__error(FERRY_ERR_TIMEOUT, "xfer_wait: not finished after "
                            "%lld ns", (long long)timeout_ns);
    return st;
}

ferry_status_t ferry_xfer_cancel(ferry_xfer_t *x)
{
    ferry_status_t st = FERRY_OK;

    if (x == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_cancel: NULL request");
    ferry__agent_lock(x->agent);
    if (ferry__in_flight(x))
        st = x->aborting ? FERRY_IN_PROGRESS : xfer_cancel_locked(x, "xfer_cancel");
    ferry__agent_unlock(x->agent);
    return st;
}

void ferry_xfer_release(ferry_xfer_t *x)
{
    ferry_agent_t *agent;

    if (x == NULL)
        return;
    agent = x->agent;
    /* The transport may still write into local memory: cancel, and never
     * free while the request is in flight. */
    ferry__agent_lock(agent);
    if (ferry__in_flight(x) && !x->aborting)
        (void)xfer_cancel_locked(x, "xfer_release");
    ferry__agent_unlock(agent);
    while (ferry__in_flight(x)) {
        if (ferry_xfer_wait(x, 10 * 1000000000ll) == FERRY_ERR_TIMEOUT)
            ferry__warn("xfer_release: a transport has not handed back a "
                        "canceled request to peer '%s' after 10 s; waiting",
                        x->remote->md.name);
    }
    ferry__agent_lock(agent);
    cq_drop(x);
    ferry__stream_release_locked(x);
    xfer_unprepare(x);
    ferry__list_del(&x->link);
    for (size_t i = 0; i < x->nmems; i++)
        ferry__mem_unref(x->mems[i]);
    ferry__remote_unref(agent, x->remote);
    ferry__agent_unlock(agent);
    free(x->msg);
    free(x->segs);
    free(x->mems);
    free(x);
}

ferry_status_t ferry_agent_completions(ferry_agent_t *agent, ferry_completion_t *out,
                                       size_t max, size_t *n_p)
{
    size_t n = 0;

    if (agent == NULL || n_p == NULL || (out == NULL && max > 0))
        return ferry__error(FERRY_ERR_INVALID, "agent_completions: NULL argument");
    ferry__agent_lock(agent);
    while (n < max && agent->cq.next != &agent->cq) {
        ferry_xfer_t *x = ferry__container_of(agent->cq.next, ferry_xfer_t, cqlink);

        out[n++] = (ferry_completion_t){x, x->user_data, x->first_err};
        cq_drop(x);
    }
    ferry__agent_unlock(agent);
    *n_p = n;
    return FERRY_OK;
}
