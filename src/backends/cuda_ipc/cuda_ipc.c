/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CUDA IPC backend: GPU memory of processes on the same host, moved by the
 * copy engines with cuMemcpyAsync into and out of the peer's allocation,
 * which this process maps once.
 *
 * This file holds the context (its hand-off identity, CUDA loaded on first
 * need, the devices' state) and the ops table. The descriptor hand-off
 * socket is in handoff.c, registrations and allocations in export.c,
 * connections and the mapping of peers' exports in import.c, the copies
 * and their completion in xfer.c; cuda_ipc.h holds what they share.
 *
 * Everything CUDA is loaded lazily (src/cuda): without a driver the backend
 * still initialises, takes no GPU memory, and says why when asked.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

/* Makes room for one more element in a growing array of *cap elements;
 * arr_p points to the array's pointer (of any object type). Used for the
 * exported descriptors (handoff.c) and the devices' free events (xfer.c). */
bool ferry__ci_grow(void *arr_p, size_t *cap, size_t used, size_t elem)
{
    size_t n = *cap ? *cap * 2 : 16;
    void *arr, *grown;

    if (used < *cap)
        return true;
    memcpy(&arr, arr_p, sizeof(arr));
    grown = realloc(arr, n * elem);
    if (grown == NULL)
        return false;
    memcpy(arr_p, &grown, sizeof(grown));
    *cap = n;
    return true;
}

static ferry_status_t ci_init(const char *agent_name, const ferry__secret_t *secret,
                              void **ctx_p)
{
    ci_ctx_t *ctx = calloc(1, sizeof(*ctx));

    (void)agent_name;
    (void)secret;
    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    ctx->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->evfd < 0) {
        free(ctx);
        return ferry__error(FERRY_ERR_SYSTEM, "cuda_ipc: eventfd: %s", strerror(errno));
    }
    if (getrandom(&ctx->id, sizeof(ctx->id), 0) != (ssize_t)sizeof(ctx->id))
        ctx->id = (uint64_t)(uintptr_t)ctx ^ (uint64_t)getpid() << 40;
    ctx->pid = (int32_t)getpid();
    ctx->srv_fd = ctx->stop_fd = -1;
    ferry__list_init(&ctx->allocs);
    pthread_mutex_init(&ctx->export_lock, NULL);
    pthread_mutex_init(&ctx->pf_lock, NULL);
    atomic_init(&ctx->notify_pending, false);
    atomic_init(&ctx->notified, false);
    *ctx_p = ctx;
    return FERRY_OK;
}

/* Loads CUDA and the per-device state on first use. */
ferry_status_t ferry__ci_cuda(ci_ctx_t *ctx)
{
    const ferry__cuda_t *cu;
    ferry_status_t st = FERRY_OK;

    if (ctx->cu != NULL)
        return FERRY_OK;
    FERRY_CHECK(ferry__cuda_get(&cu));
    ctx->devs = calloc((size_t)cu->ndevices, sizeof(*ctx->devs));
    ctx->uuids = calloc((size_t)cu->ndevices, sizeof(*ctx->uuids));
    if (ctx->devs == NULL || ctx->uuids == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        goto err_free;
    }
    for (int d = 0; d < cu->ndevices && st == FERRY_OK; d++) {
        CUdevice dev;

        st = FERRY__CU(cu, cuDeviceGet, (&dev, d));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuDeviceGetUuid, (&ctx->uuids[d], dev));
    }
    if (st < 0)
        goto err_free;
    ctx->ndevs = cu->ndevices;
    ctx->cu = cu;
    return FERRY_OK;

err_free:
    free(ctx->devs);
    free(ctx->uuids);
    ctx->devs = NULL;
    ctx->uuids = NULL;
    return st;
}

static void ci_fini(void *vctx)
{
    ci_ctx_t *ctx = vctx;

    ferry__ci_server_stop(ctx);
    ferry__ci_allocs_free(ctx);
    if (ctx->cu != NULL) {
        for (int d = 0; d < ctx->ndevs; d++) {
            ci_dev_t *dev = &ctx->devs[d];

            if (dev->stream == NULL)
                continue;
            /* Host functions still queued refer to ctx: let them run. */
            if (ferry__cuda_push(d) == FERRY_OK) {
                ctx->cu->cuStreamSynchronize(dev->stream);
                for (size_t i = 0; i < dev->nevents; i++)
                    ctx->cu->cuEventDestroy(dev->events[i]);
                ctx->cu->cuStreamDestroy(dev->stream);
                ferry__cuda_pop();
            }
            free(dev->events);
        }
        for (size_t i = 0; i < ctx->count; i++)
            ctx->cu->cuEventDestroy(ctx->ring[(ctx->head + i) % ctx->cap].event);
    }
    free(ctx->ring);
    free(ctx->devs);
    free(ctx->uuids);
    free(ctx->exported);
    ferry__ci_pf_drop(ctx, -1, 0);
    pthread_mutex_destroy(&ctx->export_lock);
    pthread_mutex_destroy(&ctx->pf_lock);
    close(ctx->evfd);
    free(ctx);
}

static bool ci_supports_kind(void *vctx, ferry_mem_kind_t kind)
{
    (void)vctx;
    /* Host memory is the local end of host <-> GPU copies; whether CUDA is
     * usable at all is answered when memory is registered or a key opened. */
    return kind == FERRY_MEM_HOST || kind == FERRY_MEM_CUDA;
}

static ferry_status_t ci_pack_address(void *vctx, ferry__wbuf_t *out)
{
    ci_ctx_t *ctx = vctx;

    ferry__wbuf_u32(out, (uint32_t)ctx->pid);
    ferry__wbuf_u64(out, ctx->id);
    return FERRY_OK;
}

const ferry__backend_ops_t ferry__cuda_ipc_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "cuda_ipc",
    .id = FERRY__BK_CUDA_IPC,
    .flags = FERRY__BK_SAME_HOST_ONLY | FERRY__BK_STREAM_COPIES,
    .init = ci_init,
    .fini = ci_fini,
    .supports_kind = ci_supports_kind,
    .pack_address = ci_pack_address,
    .mem_register = ferry__ci_mem_register,
    .mem_pack = ferry__ci_mem_pack,
    .mem_deregister = ferry__ci_mem_deregister,
    .conn_open = ferry__ci_conn_open,
    .conn_close = ferry__ci_conn_close,
    .rkey_open = ferry__ci_rkey_open,
    .rkey_close = ferry__ci_rkey_close,
    .rkey_prefetch = ferry__ci_rkey_prefetch,
    .rkey_prefetch_end = ferry__ci_rkey_prefetch_end,
    .prepare = ferry__ci_prepare,
    .unprepare = ferry__ci_unprepare,
    .post = ferry__ci_post,
    .run = ferry__bk_run_unsupported,
    .progress = ferry__ci_progress,
    .event_fd = ferry__ci_event_fd,
    .arm = ferry__ci_arm,
    .conn_abort = ferry__ci_conn_abort,
    .conn_events = ferry__ci_conn_events,
    .post_stream = ferry__ci_post_stream,
    .mem_alloc = ferry__ci_mem_alloc,
    .mem_free = ferry__ci_mem_free,
    .msg_send = ferry__bk_msg_send_unsupported,
    .msg_listen = ferry__bk_msg_listen_nothing,
};
