/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX posts: a batch as one ucp_put_nbx/ucp_get_nbx per segment and one
 * endpoint flush, whose completion reports the batch from progress(); and
 * the fast path for peer memory mapped into this process, which post()
 * hands to run() to copy outside the agent's lock.
 *
 * Posting allocates nothing: the per-operation requests are released at once
 * (their errors surface through the flush), and the flush's own completion
 * state lives in the space UCX reserves in each request for its user
 * (request_size).
 *
 * Mapped regions. A key to shared memory that UCX allocated (sysv, posix)
 * maps the peer's segment into this process when it is unpacked, and
 * ucp_rkey_ptr() tells where. A segment into such a region is then moved
 * with memcpy on the posting thread, which is what UCX's put and get do
 * for it too, without the per-operation request handling and the flush
 * of every lane of the endpoint (0.1 us a post; a 64 KiB copy takes 1.3).
 * The segment is attached whole, so the offset from remote to local
 * address found once holds for the key's whole region. A post of at least
 * FERRY_COPY_NT_MIN bytes (by default half the last-level cache, at most
 * 16 MiB) copies with non-temporal stores (util/copy.h): 1.4 to 1.9 times
 * glibc's memcpy, which UCX uses, from 16 MiB up on the 2-core machine of
 * docs/PERFORMANCE.md.
 */
#include "backends/ucx/ucx.h"
#include "util/copy.h"
#include "util/log.h"

#include <stdint.h>

static void ucx_flush_done(void *request, ucs_status_t status,
                           void *user_data)
{
    ucx_req_t *r = request;
    ferry__bk_done_cb cb = r->cb;
    void *arg = r->arg;
    ferry_status_t st = FERRY_OK;

    (void)user_data;
    if (r->conn == NULL) { /* already reported by an abort */
        ucp_request_free(request);
        return;
    }
    ferry__list_del(&r->link);
    if (r->deferred != UCS_OK)
        status = r->deferred;
    if (status != UCS_OK && r->conn->failed != UCS_OK)
        status = r->conn->failed; /* "canceled" by a failure: peer gone */
    if (status != UCS_OK)
        st = ferry__ucx_error(status, "flush", r->conn->peer_name);
    ucp_request_free(request);
    cb(arg, st);
}

/* Where remote address raddr of rk's region lies in this process, if it is
 * mapped here (the first use asks UCX, later ones reuse the offset); also
 * for a reconnect (conn.c), which maps a key again at its probe. */
void *ferry__ucx_mapped(ucx_rkey_t *rk, uint64_t raddr)
{
    void *p;

    if (rk->ptr == UCX_PTR_MAPPED)
        return (void *)(uintptr_t)(raddr + rk->delta);
    if (rk->ptr == UCX_PTR_NONE || rk->rkey == NULL)
        return NULL;
    if (ucp_rkey_ptr(rk->rkey, raddr, &p) != UCS_OK) {
        rk->ptr = UCX_PTR_NONE;
        return NULL;
    }
    rk->ptr = UCX_PTR_MAPPED;
    rk->delta = (uintptr_t)p - (uintptr_t)raddr;
    rk->probe = raddr;
    return p;
}

/*
 * Mapped regions: a batch whose every segment lies in a region mapped here
 * is moved with memcpy. One of UCX_UNLOCKED_MIN bytes or more is copied by
 * run(), outside the agent's lock (plan UCX_DIRECT); a smaller one is
 * copied by post() under the lock (UCX_INLINE), because leaving and taking
 * the lock and counting the run cost about 0.1 us, as much as a 4 KiB copy:
 * on the 2-core machine a 4 KiB WRITE ran at half its speed that way, while
 * 64 KiB ran as before and scaled with threads. A batch with any other
 * segment has no plan and goes to UCX whole.
 */
#define UCX_UNLOCKED_MIN (64u << 10)
static const char ucx_direct = 'd', ucx_inline = 'i';
#define UCX_DIRECT ((void *)(uintptr_t)&ucx_direct)
#define UCX_INLINE ((void *)(uintptr_t)&ucx_inline)

ferry_status_t ferry__ucx_prepare(void *vctx, void *vconn,
                                  const ferry__bk_seg_t *segs, size_t n,
                                  void **plan_p)
{
    ucx_conn_t *conn = vconn;
    uint64_t total = 0;
    size_t i;

    FERRY_CHECK(ferry__ucx_check_alive(vctx, conn));
    if (conn->worker == NULL)
        FERRY_CHECK(ferry__ucx_reconnect(vctx, conn));
    for (i = 0; i < n; i++) {
        if (ferry__ucx_mapped(segs[i].rkey, segs[i].raddr) == NULL)
            break;
        total += segs[i].len;
    }
    *plan_p = i < n ? NULL : total >= UCX_UNLOCKED_MIN ? UCX_DIRECT : UCX_INLINE;
    return FERRY_OK;
}

/*
 * Copies a batch into or out of mapped memory. A batch that moves FERRY_COPY_NT_MIN bytes or
 * more, in one segment or many, bypasses the cache for its segments of a
 * page or more (smaller ones would leave partial lines). The fences order
 * the copy with whatever tells the peer (after a WRITE) or told us (before
 * a READ) that the data is ready, as UCX's flush of a shared-memory lane
 * does; the last one also orders the non-temporal stores.
 */
static void ucx_copy(const ucx_ctx_t *ctx, ferry_xfer_op_t op,
                     const ferry__bk_seg_t *segs, size_t n)
{
    size_t i, total = 0, nt_min = SIZE_MAX;

    for (i = 0; i < n && total < ctx->nt_min; i++)
        total += segs[i].len;
    if (total >= ctx->nt_min)
        nt_min = ctx->nt_min < 4096 ? ctx->nt_min : 4096;
    atomic_thread_fence(memory_order_acquire);
    for (i = 0; i < n; i++) {
        const ucx_rkey_t *rk = segs[i].rkey;
        uint8_t *remote = (uint8_t *)(uintptr_t)(segs[i].raddr + rk->delta);
        uint8_t *local = (uint8_t *)(uintptr_t)segs[i].laddr;

        if (op == FERRY_OP_WRITE)
            ferry__copy(remote, local, segs[i].len, nt_min);
        else
            ferry__copy(local, remote, segs[i].len, nt_min);
    }
    ferry__copy_fence();
    atomic_thread_fence(memory_order_seq_cst);
}

ferry_status_t ferry__ucx_run(void *vctx, void *vconn, void *plan,
                              ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                              size_t n)
{
    ucx_conn_t *conn = vconn;

    (void)plan;
    ucx_copy(vctx, op, segs, n);
    atomic_fetch_sub_explicit(&conn->runs, 1, memory_order_release);
    return FERRY_OK;
}

ferry_status_t ferry__ucx_post(void *vctx, void *vconn, void *plan,
                               ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                               size_t n, ferry__bk_done_cb cb, void *arg)
{
    ucx_conn_t *conn = vconn;
    ucp_request_param_t p = {0};
    ucs_status_ptr_t sp;
    ucs_status_t deferred = UCS_OK;
    const char *call = op == FERRY_OP_WRITE ? "ucp_put_nbx" : "ucp_get_nbx";
    ucx_req_t *r;

    if (conn->failed != UCS_OK)
        return ferry__ucx_error(conn->failed, "endpoint", conn->peer_name);
    if (conn->worker == NULL)
        FERRY_CHECK(ferry__ucx_reconnect(vctx, conn));
    if (plan == UCX_DIRECT) {
        /* The keys stay mapped until every run has ended (runs_wait). */
        atomic_fetch_add_explicit(&conn->runs, 1, memory_order_relaxed);
        return FERRY__BK_RUN;
    }
    if (plan == UCX_INLINE) {
        ucx_copy(vctx, op, segs, n);
        return FERRY_OK;
    }

    p.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
    for (size_t i = 0; i < n; i++) {
        const ferry__bk_seg_t *s = &segs[i];
        ucp_rkey_h rkey = ((ucx_rkey_t *)s->rkey)->rkey;

        p.memh = ((ucx_reg_t *)s->lreg)->memh;
        if (op == FERRY_OP_WRITE)
            sp = ucp_put_nbx(conn->ep, (const void *)(uintptr_t)s->laddr, s->len,
                             s->raddr, rkey, &p);
        else
            sp = ucp_get_nbx(conn->ep, (void *)(uintptr_t)s->laddr, s->len,
                             s->raddr, rkey, &p);
        if (UCS_PTR_IS_ERR(sp)) {
            /* Segments already posted are in flight: flush them, then
             * report this error when the flush ends. */
            deferred = UCS_PTR_STATUS(sp);
            ferry__debug("ucx: %s failed at segment %zu: %s", call, i,
                         ucs_status_string(deferred));
            break;
        }
        if (sp != NULL)
            ucp_request_free(sp); /* completes on its own; errors reach the flush */
    }

    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
    p.cb.send = ucx_flush_done;
    sp = ucp_ep_flush_nbx(conn->ep, &p);
    if (sp == NULL) {
        if (deferred != UCS_OK)
            return ferry__ucx_error(deferred, call, conn->peer_name);
        return FERRY_OK;
    }
    if (UCS_PTR_IS_ERR(sp))
        return ferry__ucx_error(deferred != UCS_OK ? deferred : UCS_PTR_STATUS(sp),
                                "ucp_ep_flush_nbx", conn->peer_name);
    /* The callback cannot run before the next progress, which needs the
     * agent's lock that our caller holds. */
    r = sp;
    r->cb = cb;
    r->arg = arg;
    r->conn = conn;
    r->deferred = deferred;
    ferry__list_add(&conn->flushes, &r->link);
    return FERRY_IN_PROGRESS;
}
