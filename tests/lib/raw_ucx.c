/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The raw UCX sender (raw_ucx.h): UCX's own calls, with the default
 * configuration (UCX_* from the environment), as another program that
 * found a ferry worker's address would make them.
 */
#include "raw_ucx.h"
#include "xfer_util.h"

#include <stdio.h>

static void xr_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)arg;
    (void)ep;
    (void)status; /* the receiver went: nothing more is sent */
}

int xr_open(xr_sender_t *s, const void *addr)
{
    ucp_params_t cp = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    /* Peer error handling, as ferry's staging endpoints have: UCX refuses
     * an endpoint back to this worker (a staging target's reply
     * endpoint) whose mode differs. */
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .address = addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {xr_ep_error, NULL}};
    ucp_config_t *config;

    *s = (xr_sender_t){0};
    if (ucp_config_read(NULL, NULL, &config) != UCS_OK) {
        fprintf(stderr, "raw_ucx: ucp_config_read failed\n");
        return -1;
    }
    if (ucp_init(&cp, config, &s->ctx) != UCS_OK) {
        ucp_config_release(config);
        fprintf(stderr, "raw_ucx: ucp_init failed\n");
        return -1;
    }
    ucp_config_release(config);
    if (ucp_worker_create(s->ctx, &wp, &s->worker) != UCS_OK ||
        ucp_ep_create(s->worker, &ep, &s->ep) != UCS_OK) {
        fprintf(stderr, "raw_ucx: cannot open a worker and an endpoint\n");
        xr_close(s);
        return -1;
    }
    return 0;
}

int xr_send(xr_sender_t *s, unsigned id, const void *hdr, size_t hlen, const void *data,
            size_t len, void (*pump)(void *), void *arg)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = UCP_AM_SEND_FLAG_EAGER};
    ucs_status_ptr_t sp = ucp_am_send_nbx(s->ep, id, hdr, hlen, data, len, &p);
    uint64_t t0 = xu_now_ns();
    ucs_status_t st;

    if (UCS_PTR_IS_ERR(sp))
        return -1;
    if (sp == NULL)
        return 0;
    while (ucp_request_check_status(sp) == UCS_INPROGRESS && xu_ms_since(t0) < 10000) {
        ucp_worker_progress(s->worker);
        if (pump != NULL)
            pump(arg);
    }
    st = ucp_request_check_status(sp);
    ucp_request_free(sp);
    return st == UCS_OK ? 0 : -1;
}

void xr_progress(xr_sender_t *s)
{
    ucp_worker_progress(s->worker);
}

void xr_close(xr_sender_t *s)
{
    if (s->ep != NULL) {
        ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_EP_CLOSE_FLAG_FORCE};
        ucs_status_ptr_t sp = ucp_ep_close_nbx(s->ep, &p);

        while (sp != NULL && !UCS_PTR_IS_ERR(sp) &&
               ucp_request_check_status(sp) == UCS_INPROGRESS)
            ucp_worker_progress(s->worker);
        if (sp != NULL && !UCS_PTR_IS_ERR(sp))
            ucp_request_free(sp);
    }
    if (s->worker != NULL)
        ucp_worker_destroy(s->worker);
    if (s->ctx != NULL)
        ucp_cleanup(s->ctx);
    *s = (xr_sender_t){0};
}
