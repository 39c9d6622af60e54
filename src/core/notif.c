/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Notifications: the message that carries one (built here, sent through
 * the backend that has FERRY__BK_MESSAGES, UCX), the agent's bounded queue
 * of received ones, and the public calls that send, drain and wait.
 * Requests send theirs from xfer.c when a post completes; the order
 * guarantees are those of ferry/notif.h, argued in backends/ucx/msg.c.
 *
 * The message, little-endian (docs/NOTIF.md):
 *
 *   offset size field
 *   0      4    magic        "FNTF" (0x46544e46)
 *   4      2    version      1
 *   6      2    name length  n, 1 to 255
 *   8      8    incarnation  the sending agent's (tells restarts apart)
 *   16     8    sequence     per sending agent, from 0 (for diagnosis)
 *   24     4    length       m, 0 to FERRY_NOTIF_MAX
 *   28     4    reserved     0
 *   32     n    name         the sending agent's, no NUL
 *   32+n   m    message
 *
 * The receiver drops, with a logged reason, anything whose size is not
 * exactly 32 + n + m or whose fields are out of range.
 */
#include "core/core.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <stdlib.h>
#include <string.h>

#define NOTIF_MAGIC 0x46544e46u
#define NOTIF_VERSION 1
#define NOTIF_HDR 32

/* Under the lock: the sender of a message as loaded here, or NULL. */
static ferry_peer_t *notif_sender(ferry_agent_t *agent, const char *name,
                                  uint64_t incarnation)
{
    for (ferry__list_t *l = agent->peers.next; l != &agent->peers; l = l->next) {
        ferry_peer_t *p = ferry__container_of(l, ferry_peer_t, link);

        if (strcmp(p->name, name) == 0)
            return p->remote->md.incarnation == incarnation ? p : NULL;
    }
    return NULL;
}

/* A message from the wire (progress, under the lock): checked, then queued
 * unless the queue is full. */
static void notif_recv(void *arg, const void *data, size_t len)
{
    ferry_agent_t *agent = arg;
    ferry__rbuf_t r;
    uint32_t magic, mlen;
    uint16_t version, nlen;
    uint64_t incarnation;
    const uint8_t *name, *msg;
    ferry__notif_t *n;
    char *at;

    ferry__rbuf_init(&r, data, len);
    magic = ferry__rbuf_u32(&r);
    version = ferry__rbuf_u16(&r);
    nlen = ferry__rbuf_u16(&r);
    incarnation = ferry__rbuf_u64(&r);
    (void)ferry__rbuf_u64(&r); /* sequence */
    mlen = ferry__rbuf_u32(&r);
    (void)ferry__rbuf_u32(&r);
    if (r.err || magic != NOTIF_MAGIC || version != NOTIF_VERSION) {
        ferry__warn("agent '%s': dropped a malformed notification (%zu bytes): "
                    "%s", agent->name, len, r.err ? "shorter than its header"
                                                  : "bad magic or version");
        return;
    }
    if (nlen == 0 || nlen > FERRY__MD_NAME_MAX || mlen > FERRY_NOTIF_MAX ||
        len != NOTIF_HDR + (size_t)nlen + mlen) {
        ferry__warn("agent '%s': dropped a malformed notification (%zu bytes): "
                    "name of %u bytes and message of %u bytes do not fit it",
                    agent->name, len, (unsigned)nlen, (unsigned)mlen);
        return;
    }
    name = ferry__rbuf_bytes(&r, nlen);
    msg = ferry__rbuf_bytes(&r, mlen);
    if (memchr(name, '\0', nlen) != NULL) {
        ferry__warn("agent '%s': dropped a malformed notification: a NUL in the "
                    "sender's name", agent->name);
        return;
    }
    if (atomic_load_explicit(&agent->nq_len, memory_order_relaxed) >= agent->nq_max) {
        if (agent->nq_dropped++ == 0)
            ferry__warn("agent '%s': notification queue full (%zu messages): "
                        "dropping what arrives until it is drained; "
                        "ferry_notif_dropped() counts them", agent->name,
                        agent->nq_max);
        return;
    }
    n = malloc(sizeof(*n) + nlen + 1 + (mlen ? mlen : 1));
    if (n == NULL) {
        agent->nq_dropped++;
        ferry__warn("agent '%s': no memory for a notification; dropped",
                    agent->name);
        return;
    }
    at = n->data;
    memcpy(at, name, nlen);
    at[nlen] = '\0';
    memcpy(at + nlen + 1, msg, mlen);
    n->pub.peer_name = at;
    n->pub.peer = notif_sender(agent, at, incarnation);
    n->pub.msg = at + nlen + 1;
    n->pub.len = mlen;
    ferry__list_add(agent->nq.prev, &n->link);
    atomic_fetch_add_explicit(&agent->nq_len, 1, memory_order_release);
    ferry__notif_signal_locked(agent);
    /* Waiters sleep on the condition variable (ferry__wait_notif). */
    pthread_cond_broadcast(&agent->done_cv);
}

/*
 * Under the lock: makes msgfd readable while messages wait, but only for
 * an application that sleeps on ferry_agent_fd(): each change of the level
 * is a system call, which on a receiver that polls would cost more than
 * the message itself.
 */
void ferry__notif_signal_locked(ferry_agent_t *agent)
{
    bool ready = atomic_load_explicit(&agent->nq_len, memory_order_relaxed) > 0;

    if (ready == agent->msgfd_set ||
        (ready && !atomic_load_explicit(&agent->fd_used, memory_order_relaxed)))
        return;
    ferry__fd_level(agent, agent->msgfd, ready);
    agent->msgfd_set = ready;
}

ferry_status_t ferry__notif_init(ferry_agent_t *agent, size_t queue)
{
    agent->msg_slot = -1;
    agent->nq_max = queue;
    ferry__list_init(&agent->nq);
    atomic_init(&agent->nq_len, 0);
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];

        if (!(ops->flags & FERRY__BK_MESSAGES))
            continue;
        FERRY_CHECK(ops->msg_listen(agent->bk_ctx[k], notif_recv, agent));
        if (agent->msg_slot < 0)
            agent->msg_slot = (int)k;
    }
    return FERRY_OK;
}

void ferry__notif_fini(ferry_agent_t *agent)
{
    while (!ferry__list_empty(&agent->nq)) {
        ferry__notif_t *n = ferry__container_of(agent->nq.next, ferry__notif_t, link);

        ferry__list_del(&n->link);
        free(n);
    }
    atomic_store(&agent->nq_len, 0);
}

ferry_status_t ferry__notif_send_locked(ferry_agent_t *agent, ferry__remote_t *remote,
                                        const void *msg, size_t len)
{
    uint8_t buf[NOTIF_HDR + FERRY__MD_NAME_MAX + FERRY_NOTIF_MAX];
    size_t nlen = strlen(agent->name);
    const ferry__backend_ops_t *ops;
    ferry_status_t st;
    void *conn;

    if (agent->msg_slot < 0)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "notification: no backend of "
                            "this build carries notifications");
    ops = ferry__backends[agent->msg_slot];
    st = ferry__remote_conn(agent, remote, (unsigned)agent->msg_slot, &conn);
    if (st < 0) {
        ferry__error_prefix("notification to peer '%s'", remote->md.name);
        return st;
    }
    ferry__store_le32(buf, NOTIF_MAGIC);
    buf[4] = NOTIF_VERSION;
    buf[5] = 0;
    buf[6] = (uint8_t)nlen;
    buf[7] = (uint8_t)(nlen >> 8);
    for (unsigned i = 0; i < 8; i++) {
        buf[8 + i] = (uint8_t)(agent->incarnation >> (8 * i));
        buf[16 + i] = (uint8_t)(agent->msg_seq >> (8 * i));
    }
    ferry__store_le32(buf + 24, (uint32_t)len);
    ferry__store_le32(buf + 28, 0);
    memcpy(buf + NOTIF_HDR, agent->name, nlen);
    if (len > 0)
        memcpy(buf + NOTIF_HDR + nlen, msg, len);
    st = ops->msg_send(agent->bk_ctx[agent->msg_slot], conn, buf, NOTIF_HDR + nlen + len);
    if (st < 0)
        return st;
    agent->msg_seq++;
    return FERRY_OK;
}

static ferry_status_t notif_len_check(const void *msg, size_t len, const char *call)
{
    if (msg == NULL && len > 0)
        return ferry__error(FERRY_ERR_INVALID, "%s: NULL message of %zu bytes", call,
                            len);
    if (len > FERRY_NOTIF_MAX)
        return ferry__error(FERRY_ERR_INVALID, "%s: a message of %zu bytes (at most "
                            "%d)", call, len, FERRY_NOTIF_MAX);
    return FERRY_OK;
}

ferry_status_t ferry_notif_send(ferry_agent_t *agent, ferry_peer_t *peer,
                                const void *msg, size_t len)
{
    ferry_status_t st;

    if (agent == NULL || peer == NULL)
        return ferry__error(FERRY_ERR_INVALID, "notif_send: NULL %s",
                            agent == NULL ? "agent" : "peer");
    FERRY_CHECK(notif_len_check(msg, len, "notif_send"));
    if (peer->agent != agent)
        return ferry__error(FERRY_ERR_INVALID, "notif_send: the peer belongs to "
                            "another agent");
    ferry__agent_lock(agent);
    if (peer->remote->inst->retired)
        st = ferry__error(FERRY_ERR_PEER_LOST, "notif_send: peer '%s' was replaced "
                          "by a new instance", peer->name);
    else
        st = ferry__notif_send_locked(agent, peer->remote, msg, len);
    ferry__agent_unlock(agent);
    if (st < 0)
        ferry__error_prefix("notif_send");
    return st;
}

ferry_status_t ferry_xfer_set_notif(ferry_xfer_t *x, const void *msg, size_t len)
{
    ferry_status_t st = FERRY_OK;
    uint8_t *buf;

    if (x == NULL)
        return ferry__error(FERRY_ERR_INVALID, "xfer_set_notif: NULL request");
    FERRY_CHECK(notif_len_check(msg, len, "xfer_set_notif"));
    if (!x->has_msg)
        return ferry__error(FERRY_ERR_INVALID, "xfer_set_notif: the request was "
                            "prepared without a message (FERRY_XFER_PARAM_NOTIF)");
    ferry__agent_lock(x->agent);
    ferry__xfer_claim_locked(x);
    if (ferry__in_flight(x)) {
        st = ferry__error(FERRY_ERR_BUSY, "xfer_set_notif: the request is in flight");
    } else if (len > x->msg_len && (buf = realloc(x->msg, len)) == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "xfer_set_notif: no memory for %zu "
                          "bytes", len);
    } else {
        if (len > x->msg_len)
            x->msg = buf;
        if (len > 0)
            memcpy(x->msg, msg, len);
        x->msg_len = len;
    }
    ferry__agent_unlock(x->agent);
    return st;
}

ferry_status_t ferry_notif_drain(ferry_agent_t *agent, ferry_notif_t **out, size_t max,
                                 size_t *n_p)
{
    size_t n = 0;

    if (agent == NULL || n_p == NULL || (out == NULL && max > 0))
        return ferry__error(FERRY_ERR_INVALID, "notif_drain: NULL argument");
    ferry__agent_lock(agent);
    if (!agent->has_thread)
        (void)ferry__progress_locked(agent);
    while (n < max && !ferry__list_empty(&agent->nq)) {
        ferry__notif_t *m = ferry__container_of(agent->nq.next, ferry__notif_t, link);

        ferry__list_del(&m->link);
        out[n++] = &m->pub;
    }
    if (n > 0) {
        atomic_fetch_sub_explicit(&agent->nq_len, n, memory_order_relaxed);
        ferry__notif_signal_locked(agent);
    }
    ferry__agent_unlock(agent);
    *n_p = n;
    return FERRY_OK;
}

ferry_status_t ferry_notif_wait(ferry_agent_t *agent, int64_t timeout_ns)
{
    ferry_status_t st;

    if (agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "notif_wait: NULL agent");
    if (atomic_load_explicit(&agent->nq_len, memory_order_acquire) > 0)
        return FERRY_OK;
    if (timeout_ns == 0) {
        ferry__agent_lock(agent);
        if (!agent->has_thread)
            (void)ferry__progress_locked(agent);
        ferry__agent_unlock(agent);
        st = atomic_load_explicit(&agent->nq_len, memory_order_acquire) > 0
                 ? FERRY_OK : FERRY_IN_PROGRESS;
    } else {
        st = ferry__wait_notif(agent, timeout_ns < 0 ? UINT64_MAX
                                                     : ferry__now_ns() +
                                                           (uint64_t)timeout_ns);
    }
    if (st == FERRY_IN_PROGRESS)
        return ferry__error(FERRY_ERR_TIMEOUT, "notif_wait: no notification after "
                            "%lld ns", (long long)timeout_ns);
    return st;
}

ferry_status_t ferry_notif_dropped(ferry_agent_t *agent, uint64_t *count_p)
{
    if (agent == NULL || count_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "notif_dropped: NULL argument");
    ferry__agent_lock(agent);
    *count_p = agent->nq_dropped;
    ferry__agent_unlock(agent);
    return FERRY_OK;
}

void ferry_notif_free(ferry_notif_t *notif)
{
    if (notif != NULL)
        free(ferry__container_of(notif, ferry__notif_t, pub));
}
