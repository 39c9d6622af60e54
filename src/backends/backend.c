/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The stubs that ops tables point to for the operations a backend does not
 * need (a prepare that keeps nothing) or cannot perform (a refusal with a
 * text naming the operation): the core never tests an operation for NULL.
 */
#include "backends/backend.h"
#include "util/status.h"

ferry_status_t ferry__bk_prepare_nothing(void *ctx, void *conn,
                                         const ferry__bk_seg_t *segs, size_t n,
                                         void **plan_p)
{
    (void)ctx;
    (void)conn;
    (void)segs;
    (void)n;
    *plan_p = NULL;
    return FERRY_OK;
}

void ferry__bk_unprepare_nothing(void *ctx, void *plan)
{
    (void)ctx;
    (void)plan;
}

ferry_status_t ferry__bk_run_unsupported(void *ctx, void *conn, void *plan,
                                         ferry_xfer_op_t op,
                                         const ferry__bk_seg_t *segs, size_t n)
{
    (void)ctx;
    (void)conn;
    (void)plan;
    (void)op;
    (void)segs;
    (void)n;
    return ferry__error(FERRY_ERR_UNSUPPORTED, "backend: this backend moves no "
                        "batch outside the agent's lock");
}

ferry_status_t ferry__bk_post_stream_unsupported(void *ctx, void *conn, void *plan,
                                                 ferry_xfer_op_t op,
                                                 const ferry__bk_seg_t *segs,
                                                 size_t n, void *stream)
{
    (void)ctx;
    (void)conn;
    (void)plan;
    (void)op;
    (void)segs;
    (void)n;
    (void)stream;
    return ferry__error(FERRY_ERR_UNSUPPORTED, "backend: this backend cannot "
                        "enqueue its transfers on a CUDA stream");
}

ferry_status_t ferry__bk_msg_send_unsupported(void *ctx, void *conn, const void *data,
                                             size_t len)
{
    (void)ctx;
    (void)conn;
    (void)data;
    (void)len;
    return ferry__error(FERRY_ERR_UNSUPPORTED, "backend: this backend carries no "
                        "notifications");
}

ferry_status_t ferry__bk_msg_listen_nothing(void *ctx, ferry__bk_msg_cb cb, void *arg)
{
    (void)ctx;
    (void)cb;
    (void)arg;
    return FERRY_OK;
}
