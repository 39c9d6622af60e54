/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Peers: loading a peer's blob into a metadata version (ferry__remote_t),
 * replacing it when the same agent sends a new blob, and the lazily opened
 * connections and remote keys that requests use.
 */
#include "core/core.h"
#include "util/config.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

static void inst_unref(ferry_agent_t *agent, ferry__inst_t *inst)
{
    if (--inst->refs > 0)
        return;
    for (unsigned k = 0; k < FERRY__NBK; k++)
        if (inst->conn[k] != NULL)
            ferry__backends[k]->conn_close(agent->bk_ctx[k], inst->conn[k]);
    free(inst);
}

void ferry__remote_unref(ferry_agent_t *agent, ferry__remote_t *remote)
{
    if (--remote->refs > 0)
        return;
    /* Keys before connections: a key is unpacked on its endpoint. */
    for (uint32_t i = 0; i < remote->md.nregions; i++)
        for (unsigned k = 0; k < FERRY__NBK; k++)
            if (remote->regions[i].rkey[k] != NULL)
                ferry__backends[k]->rkey_close(agent->bk_ctx[k],
                                               remote->regions[i].rkey[k]);
    if (remote->inst != NULL)
        inst_unref(agent, remote->inst);
    ferry__imap_free(&remote->map);
    free(remote->regions);
    ferry__md_clear(&remote->md);
    free(remote->blob);
    free(remote);
}

ferry_status_t ferry__remote_conn(ferry_agent_t *agent, ferry__remote_t *remote,
                                  unsigned slot, void **conn_p)
{
    const ferry__backend_ops_t *ops = ferry__backends[slot];
    const ferry__md_bytes_t *addr = &remote->md.bk_addr[slot];
    ferry__inst_t *inst = remote->inst;
    ferry__bk_peer_t who;

    if (inst->conn[slot] == NULL) {
        if (addr->data == NULL)
            return ferry__error(FERRY_ERR_UNSUPPORTED, "peer '%s' advertises no "
                                "%s address", remote->md.name, ops->name);
        who.name = remote->md.name;
        who.same_host = strcmp(remote->md.host_id, agent->host_id) == 0;
        who.pid = (int32_t)remote->md.pid;
        who.sealed = remote->md.seal_off != 0;
        FERRY_CHECK(ops->conn_open(agent->bk_ctx[slot], addr->data, addr->len,
                                   &who, &inst->conn[slot]));
    }
    *conn_p = inst->conn[slot];
    return FERRY_OK;
}

void ferry__remote_prefetch_end(ferry_agent_t *agent, ferry__remote_t *remote)
{
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];
        const ferry__md_bytes_t *addr = &remote->md.bk_addr[k];

        if (ops->rkey_prefetch_end != NULL && addr->data != NULL &&
            agent->bk_ctx[k] != NULL)
            ops->rkey_prefetch_end(agent->bk_ctx[k], addr->data, addr->len);
    }
}

ferry_status_t ferry__remote_rkey(ferry_agent_t *agent, ferry__remote_t *remote,
                                  ferry__rregion_t *rr, unsigned slot,
                                  void **rkey_p)
{
    const ferry__backend_ops_t *ops = ferry__backends[slot];
    const ferry__md_bytes_t *key = &rr->md.bk[slot];
    ferry__bk_rregion_t region = {rr->md.id, rr->md.kind, rr->md.addr, rr->md.len};
    void *conn;

    if (rr->rkey[slot] == NULL) {
        if (key->data == NULL)
            return ferry__error(FERRY_ERR_UNSUPPORTED, "peer '%s' region %u "
                                "carries no %s key", remote->md.name, rr->md.id,
                                ops->name);
        FERRY_CHECK(ferry__remote_conn(agent, remote, slot, &conn));
        FERRY_CHECK(ops->rkey_open(agent->bk_ctx[slot], conn, &region, key->data,
                                   key->len, &rr->rkey[slot]));
        atomic_store_explicit(&rr->opened[slot], true, memory_order_release);
    }
    *rkey_p = rr->rkey[slot];
    return FERRY_OK;
}

void ferry__remote_prefetch(ferry_agent_t *agent, ferry__remote_t *remote,
                            const ferry_desc_t *descs, size_t n, uint16_t only)
{
    const ferry__rregion_t *last = NULL;

    if (!remote->prefetch || strcmp(remote->md.host_id, agent->host_id) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        ferry__rregion_t *rr;

        if (last != NULL && descs[i].addr >= last->md.addr &&
            descs[i].addr - last->md.addr < last->md.len)
            continue; /* the region just seen (a batch's usual shape) */
        if (ferry__imap_find(&remote->map, descs[i].addr, descs[i].len,
                             (void **)&rr) != FERRY__IMAP_FOUND)
            continue;
        last = rr;
        if (rr->md.kind != FERRY_MEM_CUDA)
            continue;
        for (unsigned k = 0; k < FERRY__NBK; k++) {
            const ferry__backend_ops_t *ops = ferry__backends[k];
            const ferry__md_bytes_t *key = &rr->md.bk[k], *addr = &remote->md.bk_addr[k];

            if (ops->rkey_prefetch != NULL && key->data != NULL && addr->data != NULL &&
                (only == 0 || ops->id == only) && agent->bk_ctx[k] != NULL &&
                !atomic_load_explicit(&rr->opened[k], memory_order_acquire))
                ops->rkey_prefetch(agent->bk_ctx[k], addr->data, addr->len, key->data,
                                   key->len);
        }
    }
}

/* Parses a copy of the blob into a new metadata version with one reference. */
static ferry_status_t remote_new(const ferry__secret_t *secret, const void *blob,
                                 size_t len, ferry__remote_t **remote_p)
{
    ferry__remote_t *remote;
    ferry_status_t st;

    remote = calloc(1, sizeof(*remote));
    if (remote == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "peer_load: no memory");
    remote->blob = malloc(len ? len : 1);
    if (remote->blob == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "peer_load: no memory for a "
                          "%zu-byte blob", len);
        goto err_free;
    }
    memcpy(remote->blob, blob, len);
    FERRY_CHECK_GOTO(ferry__md_parse(remote->blob, len,
                                     ferry__config_get_size("FERRY_MD_MAX"),
                                     &remote->md),
                     st, err_blob);
    /* Sealed blobs only, when the job has a secret: nothing of an unsealed
     * one is used. */
    FERRY_CHECK_GOTO(ferry__md_verify(secret, remote->blob, len, &remote->md), st,
                     err_md);
    remote->regions = calloc(remote->md.nregions ? remote->md.nregions : 1,
                             sizeof(*remote->regions));
    if (remote->regions == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "peer_load: no memory for %u "
                          "regions", remote->md.nregions);
        goto err_md;
    }
    ferry__imap_init(&remote->map);
    for (uint32_t i = 0; i < remote->md.nregions; i++) {
        ferry__rregion_t *rr = &remote->regions[i];

        rr->md = remote->md.regions[i];
        for (unsigned k = 0; k < FERRY__NBK; k++) {
            atomic_init(&rr->opened[k], false);
            if (ferry__backends[k]->rkey_prefetch != NULL && rr->md.bk[k].data != NULL &&
                rr->md.kind == FERRY_MEM_CUDA)
                remote->prefetch = true;
        }
        FERRY_CHECK_GOTO(ferry__imap_append(&remote->map, rr->md.addr,
                                            rr->md.len, rr), st, err_map);
    }
    ferry__imap_sort(&remote->map);
    remote->inst = calloc(1, sizeof(*remote->inst));
    if (remote->inst == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "peer_load: no memory");
        goto err_map;
    }
    remote->inst->refs = 1;
    remote->refs = 1;
    *remote_p = remote;
    return FERRY_OK;

err_map:
    ferry__imap_free(&remote->map);
    free(remote->regions);
err_md:
    ferry__md_clear(&remote->md);
err_blob:
    free(remote->blob);
err_free:
    free(remote);
    return st;
}

static ferry_peer_t *peer_find(ferry_agent_t *agent, const char *name)
{
    for (ferry__list_t *l = agent->peers.next; l != &agent->peers; l = l->next) {
        ferry_peer_t *p = ferry__container_of(l, ferry_peer_t, link);

        if (strcmp(p->name, name) == 0)
            return p;
    }
    return NULL;
}

ferry_status_t ferry_peer_load(ferry_agent_t *agent, const void *blob,
                               size_t len, ferry_peer_t **peer_p)
{
    ferry__remote_t *remote = NULL, *old;
    ferry_peer_t *peer;

    if (agent == NULL || blob == NULL || peer_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "peer_load: NULL argument");
    FERRY_CHECK(remote_new(&agent->secret, blob, len, &remote));

    ferry__agent_lock(agent);
    peer = peer_find(agent, remote->md.name);
    if (peer == NULL) {
        peer = calloc(1, sizeof(*peer));
        if (peer == NULL) {
            ferry__remote_unref(agent, remote);
            ferry__agent_unlock(agent);
            return ferry__error(FERRY_ERR_NO_MEMORY, "peer_load: no memory");
        }
        peer->agent = agent;
        memcpy(peer->name, remote->md.name, sizeof(peer->name));
        ferry__list_add(&agent->peers, &peer->link);
    } else {
        old = peer->remote;
        /* A retired instance (its peer left the directory) that comes
         * back is taken as new too: its old requests stay refused. */
        if (old->md.incarnation == remote->md.incarnation && !old->inst->retired) {
            /* The same running agent with new registrations: its endpoints
             * and its earlier requests stay good. */
            free(remote->inst);
            remote->inst = old->inst;
            remote->inst->refs++;
        } else {
            ferry__info("peer '%s' restarted; requests prepared against its "
                        "old instance are retired", peer->name);
            old->inst->retired = true;
        }
        ferry__remote_unref(agent, old);
    }
    peer->remote = remote;
    ferry__agent_unlock(agent);
    *peer_p = peer;
    return FERRY_OK;
}

void ferry__peer_forget_locked(ferry_peer_t *peer)
{
    ferry__list_del(&peer->link);
    peer->remote->inst->retired = true;
    ferry__remote_unref(peer->agent, peer->remote);
    free(peer);
}

void ferry_peer_forget(ferry_peer_t *peer)
{
    ferry_agent_t *agent;

    if (peer == NULL)
        return;
    agent = peer->agent;
    ferry__agent_lock(agent);
    ferry__peer_forget_locked(peer);
    ferry__agent_unlock(agent);
}

const char *ferry_peer_name(const ferry_peer_t *peer)
{
    return peer != NULL ? peer->name : "";
}
