/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CUDA IPC copies: a batch's segments enqueued with cuMemcpyAsync on the
 * copying device's stream, either the backend's own (post, completed
 * through a ring of batches in flight) or the caller's (post_stream,
 * tracked by nobody); their completion; sleeping on it; and aborting.
 *
 * Transfers are cuMemcpyAsync calls on an internal stream per device (the
 * local GPU memory's device, else the peer memory's: ci_copy_device) and
 * complete through an event per batch, queried in progress(). To sleep,
 * arm() enqueues a host function behind the oldest unfinished batch that
 * writes an eventfd, so waiting costs no CPU.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/time.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How old a post may find the answer to "does the peer still run". */
#define CI_LIVENESS_NS 100000ull

/*
 * The device's stream, created on first use; the caller has pushed the
 * device's context. A blocking stream: its copies start only after the work
 * queued before them on the legacy default stream, where an application
 * (PyTorch's default stream, cuMemcpy from pageable memory, whose DMA may
 * still be running when it returns) has just produced the bytes to send.
 */
static ferry_status_t ci_stream(ci_ctx_t *ctx, int device, CUstream *stream_p)
{
    ci_dev_t *d = &ctx->devs[device];

    if (d->stream == NULL)
        FERRY_CHECK(FERRY__CU(ctx->cu, cuStreamCreate, (&d->stream, 0)));
    *stream_p = d->stream;
    return FERRY_OK;
}

/*
 * PEER_LOST once the peer's process has ended. Its memory stays mapped here,
 * so a copy would still run: a WRITE into memory that nobody reads any more,
 * a READ of whatever it held when the process died. Asked before each post,
 * but the system is asked (one poll(), 0.3-0.5 us, a few percent of a 1 MiB
 * copy) at most once per CI_LIVENESS_NS: a peer that died less than that
 * before a post may still take it, as if it had died just after. A batch
 * already enqueued when the peer dies finishes the same way.
 */
static ferry_status_t ci_peer_check(ci_conn_t *conn)
{
    uint64_t now;

    if (!conn->dead) {
        now = ferry__now_ns();
        if (now - conn->alive_ns < CI_LIVENESS_NS)
            return FERRY_OK;
        if (ferry__pid_alive(conn->pidfd, (pid_t)conn->pid)) {
            conn->alive_ns = now;
            return FERRY_OK;
        }
        conn->dead = true;
    }
    return ferry__error(FERRY_ERR_PEER_LOST, "cuda_ipc: peer '%s' (pid %d) has "
                        "exited", conn->name, (int)conn->pid);
}

static ferry_status_t ci_event_get(ci_ctx_t *ctx, int device, CUevent *ev_p)
{
    ci_dev_t *d = &ctx->devs[device];

    if (d->nevents > 0) {
        *ev_p = d->events[--d->nevents];
        return FERRY_OK;
    }
    return FERRY__CU(ctx->cu, cuEventCreate, (ev_p, CU_EVENT_DISABLE_TIMING));
}

static void ci_event_put(ci_ctx_t *ctx, int device, CUevent ev)
{
    ci_dev_t *d = &ctx->devs[device];

    if (ferry__ci_grow(&d->events, &d->capevents, d->nevents, sizeof(CUevent)))
        d->events[d->nevents++] = ev;
    else
        ctx->cu->cuEventDestroy(ev);
}

static ferry_status_t ci_ring_reserve(ci_ctx_t *ctx)
{
    ci_batch_t *grown;
    size_t cap;

    if (ctx->count < ctx->cap)
        return FERRY_OK;
    cap = ctx->cap ? ctx->cap * 2 : 64;
    grown = malloc(cap * sizeof(*grown));
    if (grown == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    for (size_t i = 0; i < ctx->count; i++)
        grown[i] = ctx->ring[(ctx->head + i) % ctx->cap];
    free(ctx->ring);
    ctx->ring = grown;
    ctx->head = 0;
    ctx->cap = cap;
    return FERRY_OK;
}

/*
 * The device whose stream copies a batch: its first local region's, when
 * that is GPU memory (the application produced or will consume it in
 * that device's stream order, and that device's engine always reaches it,
 * VMM memory included), else the peer region's device. The peer's memory is
 * opened for that device (ferry__ci_prepare) or mapped for every device that can
 * reach it (ci_map_vmm); with one GPU both devices are the same.
 */
static int ci_copy_device(const ferry__bk_seg_t *s)
{
    const ci_reg_t *reg = s->lreg;

    if (reg != NULL && reg->type != CI_HOST)
        return reg->device;
    return ((const ci_rkey_t *)s->rkey)->map->device;
}

/*
 * Opens a legacy export for the copies of device d's stream. In d's own
 * context, with peer access enabled on the way, the copy engines reach the
 * owner's device directly (NVLink or PCIe peer to peer); opened in the
 * owner device's context instead, a copy from d would be staged through
 * host memory. That remains the way for a device that cannot reach the
 * owner's.
 */
static ferry_status_t ci_open_legacy(ci_ctx_t *ctx, ci_map_t *m, int d)
{
    ci_open_t *o = &m->opens[d];
    ferry_status_t st;

    if (o->ptr != 0)
        return FERRY_OK;
    o->in = ferry__ci_reaches(ctx->cu, d, m->device) ? d : m->device;
    FERRY_CHECK(ferry__cuda_push(o->in));
    st = FERRY__CU(ctx->cu, cuIpcOpenMemHandle,
                   (&o->ptr, m->ipc, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    ferry__cuda_pop();
    if (st < 0)
        o->ptr = 0;
    return st;
}

/* Opens the legacy exports of one request's segments where its posts will
 * copy them (ci_copy_device), then plans which of them the copy kernel
 * moves (plan.c). */
ferry_status_t ferry__ci_prepare(void *vctx, void *vconn, const ferry__bk_seg_t *segs,
                                 size_t n, void **plan_p)
{
    ci_ctx_t *ctx = vctx;
    int device = ci_copy_device(&segs[0]);
    ci_plan_t *plan;

    (void)vconn;
    FERRY_CHECK(ci_peer_check(((ci_rkey_t *)segs[0].rkey)->conn));
    for (size_t i = 0; i < n; i++) {
        ci_map_t *m = ((ci_rkey_t *)segs[i].rkey)->map;

        if (m->type == CI_LEGACY)
            FERRY_CHECK(ci_open_legacy(ctx, m, device));
    }
    FERRY_CHECK(ferry__ci_plan(ctx, segs, n, device, &plan));
    *plan_p = plan;
    return FERRY_OK;
}

/* Enqueues segment i's copy on stream, device's. */
static ferry_status_t ci_engine_copy(const ferry__cuda_t *cu, ferry_xfer_op_t op,
                                     const ferry__bk_seg_t *segs, size_t i,
                                     int device, CUstream stream)
{
    CUdeviceptr l = (CUdeviceptr)segs[i].laddr, r = ferry__ci_remote_ptr(&segs[i], device);
    ferry_status_t st = op == FERRY_OP_WRITE
                            ? FERRY__CU(cu, cuMemcpyAsync, (r, l, segs[i].len, stream))
                            : FERRY__CU(cu, cuMemcpyAsync, (l, r, segs[i].len, stream));

    if (st < 0)
        ferry__error_prefix("cuda_ipc: segment %zu", i);
    return st;
}

/* Enqueues a batch's copies on stream, device's: the plan's kernel launch
 * and its engine copies, or one engine copy per segment without a plan;
 * stops at the first that fails. The caller has pushed the device's
 * context. */
static ferry_status_t ci_enqueue(const ferry__cuda_t *cu, const ci_plan_t *plan,
                                 ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                 size_t n, int device, CUstream stream)
{
    if (plan == NULL) {
        for (size_t i = 0; i < n; i++)
            FERRY_CHECK(ci_engine_copy(cu, op, segs, i, device, stream));
        return FERRY_OK;
    }
    FERRY_CHECK(ferry__cuda_copy_launch(plan->fn, plan->table, plan->nentries,
                                        op == FERRY_OP_WRITE, plan->blocks, stream));
    for (size_t k = 0; k < plan->nengine; k++)
        FERRY_CHECK(ci_engine_copy(cu, op, segs, plan->engine[k], device, stream));
    return FERRY_OK;
}

ferry_status_t ferry__ci_post(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                              const ferry__bk_seg_t *segs, size_t n,
                              ferry__bk_done_cb cb, void *arg)
{
    ci_ctx_t *ctx = vctx;
    const ferry__cuda_t *cu = ctx->cu;
    int device = ci_copy_device(&segs[0]);
    ci_batch_t *b;
    CUstream stream;
    CUevent ev = NULL;
    ferry_status_t st;

    FERRY_CHECK(ci_peer_check(vconn));
    FERRY_CHECK(ci_ring_reserve(ctx));
    FERRY_CHECK(ferry__cuda_push(device));
    FERRY_CHECK_GOTO(ci_stream(ctx, device, &stream), st, out);
    FERRY_CHECK_GOTO(ci_event_get(ctx, device, &ev), st, out);
    /* Nothing may stay in flight after an error: out_sync waits for the
     * copies enqueued before the one that failed. */
    FERRY_CHECK_GOTO(ci_enqueue(cu, plan, op, segs, n, device, stream), st, out_sync);
    FERRY_CHECK_GOTO(FERRY__CU(cu, cuEventRecord, (ev, stream)), st, out_sync);
    b = &ctx->ring[(ctx->head + ctx->count++) % ctx->cap];
    *b = (ci_batch_t){ev, device, vconn, cb, arg};
    ferry__cuda_pop();
    return FERRY_IN_PROGRESS;

out_sync:
    cu->cuStreamSynchronize(stream);
    ci_event_put(ctx, device, ev);
out:
    ferry__cuda_pop();
    return st;
}

ferry_status_t ferry__ci_post_stream(void *vctx, void *vconn, void *plan,
                                     ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                     size_t n, void *stream)
{
    ci_ctx_t *ctx = vctx;
    int device = ci_copy_device(&segs[0]);
    ferry_status_t st;

    FERRY_CHECK(ci_peer_check(vconn));
    FERRY_CHECK(ferry__cuda_push(device));
    st = ci_enqueue(ctx->cu, plan, op, segs, n, device, (CUstream)stream);
    ferry__cuda_pop();
    return st;
}

unsigned ferry__ci_progress(void *vctx)
{
    ci_ctx_t *ctx = vctx;
    unsigned done = 0;
    uint64_t v;

    /* The fd is drained only after a host function wrote it, so polling
     * costs no system call. */
    if (atomic_exchange(&ctx->notified, false) &&
        read(ctx->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        ferry__debug("cuda_ipc: eventfd: %s", strerror(errno));
    while (ctx->count > 0) {
        ci_batch_t b = ctx->ring[ctx->head];
        CUresult res;

        if (ferry__cuda_push(b.device) != FERRY_OK)
            break;
        res = ctx->cu->cuEventQuery(b.event);
        ferry__cuda_pop();
        if (res == CUDA_ERROR_NOT_READY)
            break;
        ctx->head = (ctx->head + 1) % ctx->cap;
        ctx->count--;
        ci_event_put(ctx, b.device, b.event);
        b.conn->events++;
        b.cb(b.arg, ferry__cuda_check(res, "cuEventQuery (a copy failed)"));
        done++;
    }
    return done;
}

int ferry__ci_event_fd(void *vctx)
{
    return ((ci_ctx_t *)vctx)->evfd;
}

/* Runs on a CUDA thread once the stream reaches it: no CUDA calls here. */
static void ci_notify(void *arg)
{
    ci_ctx_t *ctx = arg;
    uint64_t one = 1;

    atomic_store(&ctx->notified, true);
    atomic_store(&ctx->notify_pending, false);
    if (write(ctx->evfd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: the fd is readable anyway. */
    }
}

ferry_status_t ferry__ci_arm(void *vctx)
{
    ci_ctx_t *ctx = vctx;
    ci_batch_t *b;
    CUresult res;
    ferry_status_t st;

    if (ctx->count == 0)
        return FERRY_OK;
    b = &ctx->ring[ctx->head];
    FERRY_CHECK(ferry__cuda_push(b->device));
    res = ctx->cu->cuEventQuery(b->event);
    if (res != CUDA_ERROR_NOT_READY) {
        ferry__cuda_pop();
        return ferry__error(FERRY_ERR_BUSY, "cuda_ipc: a batch has finished");
    }
    st = FERRY_OK;
    if (!atomic_exchange(&ctx->notify_pending, true)) {
        st = FERRY__CU(ctx->cu, cuLaunchHostFunc,
                       (ctx->devs[b->device].stream, ci_notify, ctx));
        if (st < 0)
            atomic_store(&ctx->notify_pending, false);
    }
    ferry__cuda_pop();
    return st;
}

/*
 * A copy engine cannot be told to stop a copy, but every copy finishes on
 * its own, quickly: wait for the streams, then end the connection's
 * batches with why. Nothing touches their memory afterwards.
 */
ferry_status_t ferry__ci_conn_abort(void *vctx, void *vconn, ferry_status_t why)
{
    ci_ctx_t *ctx = vctx;
    size_t kept = 0, n = ctx->count;

    if (n == 0)
        return FERRY_OK;
    for (int d = 0; d < ctx->ndevs; d++) {
        if (ctx->devs[d].stream != NULL && ferry__cuda_push(d) == FERRY_OK) {
            ctx->cu->cuStreamSynchronize(ctx->devs[d].stream);
            ferry__cuda_pop();
        }
    }
    /* Keep the other connections' batches in order; end this one's. */
    for (size_t i = 0; i < n; i++) {
        ci_batch_t b = ctx->ring[(ctx->head + i) % ctx->cap];

        if (b.conn != vconn) {
            ctx->ring[(ctx->head + kept++) % ctx->cap] = b;
            continue;
        }
        ctx->count--;
        ci_event_put(ctx, b.device, b.event);
        b.cb(b.arg, why);
    }
    return FERRY_OK;
}

uint64_t ferry__ci_conn_events(void *vctx, void *vconn)
{
    (void)vctx;
    return ((ci_conn_t *)vconn)->events;
}
