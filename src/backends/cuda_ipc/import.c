/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CUDA IPC imports (the importer's side): connections to peers, and the
 * peers' exports mapped into this process, one mapping per export shared
 * by the keys that name it.
 *
 * Import. A peer's legacy handle is opened with cuIpcOpenMemHandle at the
 * first prepare that uses it, in the context of the device whose stream
 * will copy (so the copy goes peer to peer, not through host memory); a VMM
 * allocation's descriptors are fetched with pidfd_getfd and, where the
 * kernel refuses that (Yama's ptrace scope stops it between siblings), from
 * the owner's hand-off socket (an abstract Unix socket served by a small
 * thread, started with the first VMM registration, that gives only the
 * descriptors it exported and only to processes of the same user), then
 * imported and mapped into one reserved range with the owner's layout.
 * Mappings are shared by every key that names the same export and released
 * with the last of them, that is when the peer is forgotten or replaced.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/log.h"
#include "util/proc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ferry_status_t ferry__ci_conn_open(void *vctx, const uint8_t *addr, size_t len,
                                   const ferry__bk_peer_t *peer, void **conn_p)
{
    ci_ctx_t *ctx = vctx;
    ferry__rbuf_t r;
    ci_conn_t *conn;

    if (!peer->same_host)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: peer '%s' runs on "
                            "another host (or in another PID/IPC namespace); "
                            "CUDA IPC works only within one host", peer->name);
    conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    ferry__rbuf_init(&r, addr, len);
    conn->pid = (int32_t)ferry__rbuf_u32(&r);
    conn->id = ferry__rbuf_u64(&r);
    if (r.err || r.left != 0) {
        free(conn);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed address (%zu bytes)", peer->name, len);
    }
    conn->pidfd = ferry__pidfd_open((pid_t)conn->pid);
    if (conn->pidfd < 0 && errno == ESRCH) {
        ferry_status_t st = ferry__error(FERRY_ERR_PEER_LOST, "cuda_ipc: peer '%s' "
                                         "(pid %d) is not running", peer->name,
                                         (int)conn->pid);

        free(conn);
        return st;
    }
    conn->ctx = ctx;
    ferry__list_init(&conn->maps);
    snprintf(conn->name, sizeof(conn->name), "%s", peer->name);
    *conn_p = conn;
    return FERRY_OK;
}

static void ci_map_close(ci_ctx_t *ctx, ci_map_t *m)
{
    const ferry__cuda_t *cu = ctx->cu;

    if (m->type == CI_LEGACY) {
        for (int d = 0; d < ctx->ndevs; d++) {
            const ci_open_t *o = &m->opens[d];

            if (o->ptr != 0 && ferry__cuda_push(o->in) == FERRY_OK) {
                cu->cuIpcCloseMemHandle(o->ptr);
                ferry__cuda_pop();
            }
        }
        free(m->opens);
    } else if (m->type == CI_VMM && ferry__cuda_push(m->device) == FERRY_OK) {
        cu->cuMemUnmap(m->lbase, m->reserved);
        cu->cuMemAddressFree(m->lbase, m->reserved);
        ferry__cuda_pop();
    }
}

void ferry__ci_conn_close(void *vctx, void *vconn)
{
    const ci_ctx_t *ctx = vctx;
    ci_conn_t *conn = vconn;

    /* Copies still queued for it finish first (they are never left to run
     * against a closed connection). Every key was closed before the
     * connection; maps hold no refs here. */
    for (size_t i = 0; i < ctx->count; i++) {
        if (ctx->ring[(ctx->head + i) % ctx->cap].conn == conn) {
            ferry__error(FERRY_ERR_CANCELED, "cuda_ipc: the connection to peer "
                         "'%s' was closed", conn->name);
            (void)ferry__ci_conn_abort(vctx, vconn, FERRY_ERR_CANCELED);
            break;
        }
    }
    ferry__ci_pf_drop(conn->ctx, conn->pid, conn->id);
    if (conn->pidfd >= 0)
        close(conn->pidfd);
    free(conn);
}

/* Whether device d's copy engines reach the memory of device owner directly
 * (the same device, or peer to peer over NVLink or PCIe). */
bool ferry__ci_reaches(const ferry__cuda_t *cu, int d, int owner)
{
    int can = d == owner;

    if (!can && cu->cuDeviceCanAccessPeer(&can, d, owner) != CUDA_SUCCESS)
        can = 0;
    return can != 0;
}

/* Maps the owner's VMM allocations into one reserved range, same layout,
 * open to its device and to every device here that can reach that one
 * (a batch is copied on the stream of its local GPU memory's device). */
static ferry_status_t ci_map_vmm(ci_conn_t *conn, ci_map_t *m, ferry__rbuf_t *r)
{
    const ferry__cuda_t *cu = conn->ctx->cu;
    uint32_t n = ferry__rbuf_u32(r);
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, m->device},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemAccessDesc *all;
    size_t gran = 0, mapped = 0, nall = 0;
    ferry_status_t st;

    if (r->err || n == 0 || n > CI_MAX_CHUNKS || r->left != (size_t)n * 20)
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed VMM export", conn->name);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = access.location;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    FERRY_CHECK(FERRY__CU(cu, cuMemGetAllocationGranularity,
                          (&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)));
    m->reserved = (m->size + gran - 1) / gran * gran;
    FERRY_CHECK(FERRY__CU(cu, cuMemAddressReserve, (&m->lbase, m->reserved, gran, 0, 0)));
    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = ferry__rbuf_u64(r), size = ferry__rbuf_u64(r);
        int rfd = (int)ferry__rbuf_u32(r), fd = -1;
        CUmemGenericAllocationHandle h;

        if (off != mapped || size == 0 || size > m->size - off) {
            st = ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent an "
                              "inconsistent VMM layout", conn->name);
            goto err;
        }
        FERRY_CHECK_GOTO(ferry__ci_fetch_fd(conn, rfd, &fd), st, err);
        st = FERRY__CU(cu, cuMemImportFromShareableHandle,
                       (&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
        close(fd);
        if (st < 0)
            goto err;
        /* The mapping keeps the allocation alive; the handle can go. */
        st = FERRY__CU(cu, cuMemMap, (m->lbase + off, size, 0, h, 0));
        cu->cuMemRelease(h);
        if (st < 0)
            goto err;
        mapped += size;
    }
    if (mapped != m->size) {
        st = ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a VMM "
                          "layout that does not cover its allocation", conn->name);
        goto err;
    }
    all = calloc((size_t)conn->ctx->ndevs, sizeof(*all));
    if (all == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        goto err;
    }
    for (int d = 0; d < conn->ctx->ndevs; d++) {
        if (ferry__ci_reaches(cu, d, m->device)) {
            all[nall] = access;
            all[nall++].location.id = d;
        }
    }
    st = FERRY__CU(cu, cuMemSetAccess, (m->lbase, m->size, all, nall));
    free(all);
    if (st < 0)
        goto err;
    return FERRY_OK;

err:
    if (mapped > 0)
        cu->cuMemUnmap(m->lbase, mapped);
    cu->cuMemAddressFree(m->lbase, m->reserved);
    return st;
}

static ferry_status_t ci_map_open(ci_conn_t *conn, const uint8_t *data, size_t len,
                                  ci_map_t **map_p)
{
    ci_ctx_t *ctx = conn->ctx;
    ferry__rbuf_t r;
    const uint8_t *uuid;
    ci_map_t *m;
    ferry__list_t *l, *tmp;
    ferry_status_t st;
    int type, device = -1;

    ferry__list_each(l, tmp, &conn->maps) {
        m = ferry__container_of(l, ci_map_t, link);
        if (m->keylen == len && memcmp(m->key, data, len) == 0) {
            m->refs++;
            *map_p = m;
            return FERRY_OK;
        }
    }
    ferry__rbuf_init(&r, data, len);
    type = ferry__rbuf_u8(&r);
    ferry__rbuf_u8(&r);
    ferry__rbuf_u16(&r);
    uuid = ferry__rbuf_bytes(&r, 16);
    m = calloc(1, sizeof(*m) + len);
    if (m == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    m->rbase = ferry__rbuf_u64(&r);
    m->size = ferry__rbuf_u64(&r);
    if (r.err || (type != CI_LEGACY && type != CI_VMM) || m->size == 0 ||
        m->rbase + m->size < m->rbase ||
        (type == CI_LEGACY && r.left != sizeof(CUipcMemHandle))) {
        free(m);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed export", conn->name);
    }
    for (int d = 0; d < ctx->ndevs && device < 0; d++)
        if (memcmp(ctx->uuids[d].bytes, uuid, 16) == 0)
            device = d;
    if (device < 0) {
        free(m);
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: peer '%s' has its "
                            "memory on a GPU this process cannot see "
                            "(CUDA_VISIBLE_DEVICES?)", conn->name);
    }
    m->type = type;
    m->device = device;
    if (conn->pid == ctx->pid && conn->id == ctx->id) {
        /* The agent's own memory (a loopback peer): it is mapped already,
         * and CUDA refuses to open a process's own IPC handle. */
        m->type = CI_SELF;
        m->lbase = m->rbase;
        st = FERRY_OK;
        goto done;
    }
    if (type == CI_LEGACY) {
        /* Opened at prepare, in the context of the device that copies
         * (ferry__ci_prepare). */
        memcpy(m->ipc.reserved, ferry__rbuf_bytes(&r, sizeof(m->ipc.reserved)),
               sizeof(m->ipc.reserved));
        m->opens = calloc((size_t)ctx->ndevs, sizeof(*m->opens));
        st = m->opens != NULL ? FERRY_OK
                              : ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    } else {
        FERRY_CHECK_GOTO(ferry__cuda_push(device), st, err);
        st = ci_map_vmm(conn, m, &r);
        ferry__cuda_pop();
    }
    if (st < 0)
        goto err;
done:
    m->refs = 1;
    m->keylen = len;
    memcpy(m->key, data, len);
    ferry__list_add(&conn->maps, &m->link);
    *map_p = m;
    return FERRY_OK;

err:
    free(m);
    return st;
}

ferry_status_t ferry__ci_rkey_open(void *vctx, void *vconn,
                                   const ferry__bk_rregion_t *region, const uint8_t *data,
                                   size_t len, void **rkey_p)
{
    ci_ctx_t *ctx = vctx;
    ci_rkey_t *rk;
    ferry_status_t st;

    (void)region; /* ci_map_open() checks the handle's bytes itself */
    FERRY_CHECK(ferry__ci_cuda(ctx));
    rk = calloc(1, sizeof(*rk));
    if (rk == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    rk->conn = vconn;
    st = ci_map_open(vconn, data, len, &rk->map);
    if (st < 0) {
        free(rk);
        return st;
    }
    *rkey_p = rk;
    return FERRY_OK;
}

void ferry__ci_rkey_close(void *vctx, void *vrkey)
{
    ci_rkey_t *rk = vrkey;

    if (--rk->map->refs == 0) {
        ferry__list_del(&rk->map->link);
        ci_map_close(vctx, rk->map);
        free(rk->map);
    }
    free(rk);
}
