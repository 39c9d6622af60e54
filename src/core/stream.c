/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Stream-ordered transfers: a request posted on a CUDA stream, and its
 * completion waited for on a stream, so that a captured CUDA graph moves the
 * data on every replay without a host thread blocking.
 *
 * Parts served by CUDA IPC are copies: they are enqueued on the caller's
 * stream directly, and an event recorded after them orders other streams.
 *
 * Parts served by a network backend are started by the agent's progress
 * thread through two flags in page-locked host memory that the GPU reaches:
 *   post_on_stream:  the stream writes trigger = 1;
 *   progress:        sees trigger == 1, writes trigger = 0, posts the parts;
 *                    when they finish (well or not) writes done = 1;
 *   wait_on_stream:  the stream waits for done == 1, then writes done = 0.
 * Every value is a constant and every flag is reset inside the protocol, so
 * a graph that captured post and wait replays them any number of times. A
 * transfer that fails still sets done (the stream never hangs on it) and
 * its status is what ferry_xfer_test()/wait() and the next post_on_stream()
 * report.
 */
#include "core/core.h"
#include "cuda/cuda.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FERRY__TRIGGER = 0, FERRY__DONE = 1 };

struct ferry__xstream {
    ferry__list_t link;       /* agent->armed, when net */
    ferry_xfer_t *xfer;
    _Atomic uint32_t *flags;  /* page-locked: trigger, done */
    CUdeviceptr dflags;       /* the same, as the GPU addresses it */
    CUevent event;            /* recorded after the CUDA IPC copies */
    bool net;                 /* some parts go through a network backend */
    bool triggered;           /* the run in flight was started by a stream */
    bool reported;            /* the last run's failure was returned once */
};

/* Whether a part's backend enqueues its copies on the stream itself; the
 * others are started by the progress thread when the stream triggers. */
static bool part_is_copy(const ferry__xfer_part_t *part)
{
    return (part->ops->flags & FERRY__BK_STREAM_COPIES) != 0;
}

/* Under the lock: the stream state of x, created on its first stream post. */
static ferry_status_t xstream_get(ferry_xfer_t *x, const ferry__cuda_t *cu,
                                         ferry__xstream_t **xs_p)
{
    ferry__xstream_t *xs = x->stream;
    ferry_status_t st;
    void *host = NULL;

    if (xs != NULL) {
        *xs_p = xs;
        return FERRY_OK;
    }
    xs = calloc(1, sizeof(*xs));
    if (xs == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "xfer_post_on_stream: no memory");
    xs->xfer = x;
    for (unsigned p = 0; p < x->nparts; p++)
        xs->net |= !part_is_copy(&x->parts[p]);
    /* A message leaves when the stream's copies are done, which only the
     * progress thread can see: the stream then signals it as it triggers a
     * network transfer (the copies go first on the stream), and the
     * triggered start, with no part left to start, sends the message. */
    xs->net |= x->has_msg;
    if (xs->net && !x->agent->has_thread) {
        free(xs);
        return ferry__error(FERRY_ERR_INVALID, "xfer_post_on_stream: the request "
                            "goes through a network backend or carries a "
                            "notification, which a stream can "
                            "trigger only through the agent's progress thread "
                            "(FERRY_AGENT_PARAM_PROGRESS_THREAD)");
    }
    FERRY_CHECK_GOTO(ferry__cuda_push(0), st, err);
    if (xs->net) {
        st = FERRY__CU(cu, cuMemHostAlloc, (&host, 2 * sizeof(uint32_t),
                                            CU_MEMHOSTALLOC_PORTABLE |
                                                CU_MEMHOSTALLOC_DEVICEMAP));
        if (st == FERRY_OK) {
            memset(host, 0, 2 * sizeof(uint32_t));
            xs->flags = host;
            st = FERRY__CU(cu, cuMemHostGetDevicePointer, (&xs->dflags, host, 0));
        }
    } else {
        st = FERRY__CU(cu, cuEventCreate, (&xs->event, CU_EVENT_DISABLE_TIMING));
    }
    ferry__cuda_pop();
    if (st < 0)
        goto err;
    if (xs->net)
        ferry__list_add(&x->agent->armed, &xs->link);
    /* An armed request keeps its registrations busy, as one in flight. */
    for (size_t i = 0; i < x->nmems; i++)
        x->mems[i]->active++;
    x->stream = xs;
    *xs_p = xs;
    return FERRY_OK;

err:
    if (host != NULL)
        cu->cuMemFreeHost(host);
    free(xs);
    return st;
}

void ferry__stream_release_locked(ferry_xfer_t *x)
{
    ferry__xstream_t *xs = x->stream;
    const ferry__cuda_t *cu = ferry__cuda_loaded();

    if (xs == NULL)
        return;
    if (xs->net)
        ferry__list_del(&xs->link);
    for (size_t i = 0; i < x->nmems; i++)
        x->mems[i]->active--;
    if (cu != NULL) {
        if (xs->flags != NULL)
            cu->cuMemFreeHost((void *)xs->flags);
        if (xs->event != NULL)
            cu->cuEventDestroy(xs->event);
    }
    free(xs);
    x->stream = NULL;
}

void ferry__stream_done_locked(ferry_xfer_t *x)
{
    ferry__xstream_t *xs = x->stream;

    if (xs == NULL || !xs->triggered)
        return;
    xs->triggered = false;
    xs->reported = false;
    /* The result is stored before the stream may go on. */
    atomic_store_explicit(&xs->flags[FERRY__DONE], 1, memory_order_release);
}

unsigned ferry__stream_poll_locked(ferry_agent_t *agent)
{
    unsigned n = 0;

    for (ferry__list_t *l = agent->armed.next; l != &agent->armed; l = l->next) {
        ferry__xstream_t *xs = ferry__container_of(l, ferry__xstream_t, link);
        ferry_status_t st;
        ferry_xfer_t *x;

        if (atomic_load_explicit(&xs->flags[FERRY__TRIGGER], memory_order_acquire) != 1)
            continue;
        x = xs->xfer;
        if (ferry__in_flight(x))
            continue; /* the run before is still going: it comes next */
        atomic_store_explicit(&xs->flags[FERRY__TRIGGER], 0, memory_order_relaxed);
        xs->triggered = true;
        /* The copies already went onto the stream: start the rest. A request
         * that cannot start any more still releases the stream. */
        st = ferry__xfer_postable_locked(x, "a post triggered by a stream");
        if (st < 0) {
            snprintf(x->errmsg, sizeof(x->errmsg), "%s", ferry_last_error());
            atomic_store_explicit(&x->result, st, memory_order_relaxed);
        } else {
            st = ferry__xfer_start_locked(x, true);
        }
        if (st != FERRY_IN_PROGRESS)
            ferry__stream_done_locked(x);
        n++;
    }
    return n;
}

ferry_status_t ferry_xfer_post_on_stream(ferry_xfer_t *x, void *stream)
{
    const ferry__cuda_t *cu;
    ferry__xstream_t *xs = NULL;
    ferry_status_t st;

    if (x == NULL || stream == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_post_on_stream: NULL %s",
                            x == NULL ? "request" : "stream");
    FERRY_CHECK(ferry__cuda_get(&cu));
    ferry__agent_lock(x->agent);
    st = ferry__xfer_postable_locked(x, "xfer_post_on_stream");
    if (st == FERRY_OK)
        st = xstream_get(x, cu, &xs);
    if (st == FERRY_OK && !xs->reported &&
        atomic_load_explicit(&x->result, memory_order_relaxed) < 0) {
        /* The last run the stream triggered failed: say so once. */
        xs->reported = true;
        st = ferry__xfer_result(x);
    }
    for (unsigned p = 0; p < x->nparts && st == FERRY_OK; p++) {
        const ferry__xfer_part_t *part = &x->parts[p];

        if (part_is_copy(part))
            st = part->ops->post_stream(part->ctx, part->conn, part->plan, x->op,
                                        x->segs + part->first, part->count,
                                        stream);
    }
    if (st == FERRY_OK && (st = ferry__cuda_push(0)) == FERRY_OK) {
        st = xs->net ? FERRY__CU(cu, cuStreamWriteValue32,
                                 ((CUstream)stream, xs->dflags, 1,
                                  CU_STREAM_WRITE_VALUE_DEFAULT))
                     : FERRY__CU(cu, cuEventRecord, (xs->event, (CUstream)stream));
        ferry__cuda_pop();
    }
    ferry__agent_unlock(x->agent);
    if (st < 0)
        ferry__error_prefix("xfer_post_on_stream");
    return st;
}

ferry_status_t ferry_xfer_wait_on_stream(ferry_xfer_t *x, void *stream)
{
    const ferry__cuda_t *cu;
    ferry__xstream_t *xs;
    ferry_status_t st;

    if (x == NULL || stream == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_wait_on_stream: NULL %s",
                            x == NULL ? "request" : "stream");
    FERRY_CHECK(ferry__cuda_get(&cu));
    ferry__agent_lock(x->agent);
    xs = x->stream;
    if (xs == NULL) {
        ferry__agent_unlock(x->agent);
        return ferry__error(FERRY_ERR_INVALID, "xfer_wait_on_stream: the request "
                            "was never posted on a stream");
    }
    st = ferry__cuda_push(0);
    if (st == FERRY_OK) {
        CUdeviceptr done = xs->dflags + FERRY__DONE * sizeof(uint32_t);

        if (xs->net) {
            st = FERRY__CU(cu, cuStreamWaitValue32, ((CUstream)stream, done, 1,
                                                     CU_STREAM_WAIT_VALUE_EQ));
            if (st == FERRY_OK)
                st = FERRY__CU(cu, cuStreamWriteValue32,
                               ((CUstream)stream, done, 0, CU_STREAM_WRITE_VALUE_DEFAULT));
        } else {
            st = FERRY__CU(cu, cuStreamWaitEvent, ((CUstream)stream, xs->event, 0));
        }
        ferry__cuda_pop();
    }
    ferry__agent_unlock(x->agent);
    if (st < 0)
        ferry__error_prefix("xfer_wait_on_stream");
    return st;
}
