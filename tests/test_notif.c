/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Notifications between two agents of this process, over real UCX (the
 * sender's connection has a worker of its own, so the messages cross UCX
 * as they do between processes): the API's errors, message sizes 0, 1 and
 * the maximum, WRITEs whose messages the target checks against its memory
 * on arrival with stand-alone messages between them, FIFO order,
 * ferry_xfer_set_notif(), a request with a message in the completion queue, the fd in an epoll loop (with and without the
 * target's progress thread), and malformed messages, sent to the target's
 * worker with UCX directly, which it drops without harm. The sleeping
 * wait, a killed sender and the bounded queue are in test_notif_2proc.
 *
 *   test_notif [thread]   thread: the target has a progress thread and
 *                         its memory is ordinary memory, which UCX writes
 *                         with the target's help; without, the target is
 *                         driven only by its waits, and its memory comes
 *                         from ferry_mem_alloc(), which the sender writes
 *                         directly.
 *
 * The sender has a progress thread: a message that cannot leave at once
 * (the first on a new connection waits for UCX's wire-up) leaves with the
 * sender's next progress, and this process's one thread waits on the
 * target.
 */
#include "raw_ucx.h"
#include "xfer_util.h"
#include "backends/ucx/ucx.h"
#include "core/core.h"
#include "core/md.h"

#include <sys/epoll.h>

#define CAP (256u << 10)
#define ROUNDS 2000

/* What the WRITEs' messages say: where the bytes went, and their sum. */
typedef struct note {
    uint32_t kind; /* 1: a transfer's, 2: stand-alone */
    uint32_t seq;
    uint64_t off, len, sum;
} note_t;

static int thread;
static ferry_agent_t *me, *target;
static ferry_peer_t *peer;   /* the target, on me */
static ferry_peer_t *back;   /* me, on the target */
static uint8_t *src, *dst;

static uint64_t sum(const uint8_t *p, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;

    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Takes exactly one message from the target's queue, waiting up to 10 s. */
static ferry_notif_t *take(ferry_agent_t *a)
{
    ferry_notif_t *n = NULL;
    size_t got = 0;

    EXPECT_ST(FERRY_OK, ferry_notif_wait(a, 10000000000ll));
    EXPECT_ST(FERRY_OK, ferry_notif_drain(a, &n, 1, &got));
    EXPECT_EQ(1, got);
    return got == 1 ? n : NULL;
}

static void test_errors(void)
{
    static uint8_t big[FERRY_NOTIF_MAX + 1];
    ferry_desc_t l = {(uintptr_t)src, 8, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {(uintptr_t)dst, 8, FERRY_MEM_HOST, 0};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF, .notif = big,
                              .notif_len = FERRY_NOTIF_MAX + 1};
    ferry_notif_t *out[1];
    ferry_xfer_t *x;
    size_t n;
    uint64_t d;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_send(NULL, peer, "x", 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_send(me, NULL, "x", 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_send(me, peer, NULL, 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_send(me, peer, big, FERRY_NOTIF_MAX + 1));
    EXPECT_ERR_HAS("4096");
    /* A peer loaded on another agent is unknown to this one. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_send(me, back, "x", 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_drain(NULL, out, 1, &n));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_drain(target, NULL, 1, &n));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_drain(target, out, 1, NULL));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_wait(NULL, 0));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_dropped(NULL, &d));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_notif_dropped(target, NULL));
    ferry_notif_free(NULL);

    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r,
                                                    1, &xp, &x));
    xp.notif = NULL;
    xp.notif_len = 1;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r,
                                                    1, &xp, &x));
    /* A request without a message cannot be given one later. */
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r, 1, NULL,
                                           &x));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_set_notif(x, "x", 1));
    ferry_xfer_release(x);
    xp.notif_len = 0;
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r, 1, &xp,
                                           &x));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_set_notif(NULL, "x", 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_set_notif(x, big, FERRY_NOTIF_MAX + 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_set_notif(x, NULL, 3));
    ferry_xfer_release(x);
    /* Nothing was sent by any of that. */
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_notif_wait(target, 50000000));
}

/* Sizes 0, 1 and the maximum arrive whole, with their sender. */
static void test_sizes(void)
{
    static uint8_t msg[FERRY_NOTIF_MAX];
    const size_t sizes[] = {0, 1, FERRY_NOTIF_MAX};
    test_rng_t rng = {xu_seed(0x5e)};

    for (size_t i = 0; i < 3; i++) {
        ferry_notif_t *n;

        test_rand_bytes(&rng, msg, sizes[i]);
        ASSERT_ST(FERRY_OK, ferry_notif_send(me, peer, msg, sizes[i]));
        n = take(target);
        if (n == NULL)
            continue;
        EXPECT_EQ(sizes[i], n->len);
        EXPECT_TRUE(n->len == sizes[i] && memcmp(n->msg, msg, sizes[i]) == 0);
        EXPECT_TRUE(strcmp(n->peer_name, ferry_agent_name(me)) == 0);
        EXPECT_TRUE(n->peer == back);
        ferry_notif_free(n);
    }
}

/*
 * WRITEs of random ranges, each with a message naming its range and the sum
 * of its bytes, and stand-alone messages between them: the target checks
 * the range as soon as it takes each message (a message ahead of its bytes
 * fails the sum: the sender does not wait for the WRITE before the target
 * takes its message), and every message arrives in the order sent. Half the
 * WRITEs re-post the last request with a new message and new bytes
 * (ferry_xfer_set_notif). The target waits for each message before the
 * next WRITE, so no later WRITE can overwrite a range before its check.
 */
static void test_writes(void)
{
    test_rng_t rng = {xu_seed(0x77)};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF};
    ferry_xfer_t *x = NULL;
    ferry_desc_t l = {0}, r = {0};
    uint32_t seq = 0, expect = 0;
    int bad = 0, order = 0;

    for (int i = 0; i < ROUNDS; i++) {
        ferry_status_t st;
        note_t nt;

        if (i % 2 == 0) {
            uint64_t len = test_rand_range(&rng, 1, 64u << 10);

            l = (ferry_desc_t){(uintptr_t)src + test_rand_range(&rng, 0, CAP - len), len,
                               FERRY_MEM_HOST, 0};
            r = (ferry_desc_t){(uintptr_t)dst + test_rand_range(&rng, 0, CAP - len), len,
                               FERRY_MEM_HOST, 0};
        }
        /* Fresh bytes each time: a stale range would pass the check. */
        test_rand_bytes(&rng, (uint8_t *)(uintptr_t)l.addr, l.len);
        nt = (note_t){1, seq++, r.addr - (uintptr_t)dst, l.len,
                      sum((uint8_t *)(uintptr_t)l.addr, l.len)};
        if (i % 2 == 0) {
            ferry_xfer_release(x);
            xp.notif = &nt;
            xp.notif_len = sizeof(nt);
            ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                                   &xp, &x));
        } else {
            /* The same request, its message replaced. */
            EXPECT_ST(FERRY_OK, ferry_xfer_set_notif(x, &nt, sizeof(nt)));
        }
        /* Not waited for before the target checks: only the message tells
         * the target that the bytes are there. */
        st = ferry_xfer_post(x);
        if (st != FERRY_OK && st != FERRY_IN_PROGRESS)
            EXPECT_ST(FERRY_IN_PROGRESS, st);
        while (expect < seq) {
            ferry_notif_t *n = take(target);
            note_t got;

            if (n == NULL)
                break;
            if (n->len != sizeof(got)) {
                bad++;
                ferry_notif_free(n);
                break;
            }
            memcpy(&got, n->msg, sizeof(got));
            if (got.seq != expect)
                order++;
            expect = got.seq + 1;
            /* The bytes must be there now, as the message arrives. */
            if (got.kind == 1 && sum(dst + got.off, got.len) != got.sum)
                bad++;
            ferry_notif_free(n);
        }
        /* A call on the target after reading what peers wrote, before
         * they write again: its lock orders this thread's reads before the
         * progress thread's next copy (ferry.h). */
        ferry_agent_progress(target);
        EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 10000000000ll));
        /* After the WRITE completed, so ordered after its message; two in
         * a row, taken together with the next WRITE's. */
        if (i % 5 == 0) {
            for (int k = 0; k < 2; k++) {
                note_t sa = {2, seq++, 0, 0, 0};

                EXPECT_ST(FERRY_OK, ferry_notif_send(me, peer, &sa, sizeof(sa)));
            }
        }
    }
    while (expect < seq) {
        ferry_notif_t *n = take(target);
        note_t got;

        if (n == NULL)
            break;
        memcpy(&got, n->msg, n->len < sizeof(got) ? n->len : sizeof(got));
        order += got.seq != expect;
        expect = got.seq + 1;
        ferry_notif_free(n);
    }
    ferry_xfer_release(x);
    EXPECT_EQ(0, bad);
    EXPECT_EQ(0, order);
    EXPECT_EQ(seq, expect);
}

/*
 * A request with a message and a completion queue entry (USER_DATA): the
 * sender still learns of its completions as before, and the target gets
 * each post's message. A post that completes inline reports by its return
 * value and queues nothing (ferry/xfer.h), so entries are counted only for
 * posts that returned FERRY_IN_PROGRESS.
 */
static void test_completions(void)
{
    ferry_desc_t l = {(uintptr_t)src, 4096, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {(uintptr_t)dst + 4096, 4096, FERRY_MEM_HOST, 0};
    uint32_t id = 0;
    int cookie, queued = 0, entries = 0;
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF |
                                            FERRY_XFER_PARAM_USER_DATA,
                              .notif = &id, .notif_len = sizeof(id), .user_data = &cookie};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r, 1, &xp, &x));
    for (id = 1; id <= 20; id++) {
        ferry_status_t st;
        ferry_notif_t *n;
        uint32_t got = 0;

        EXPECT_ST(FERRY_OK, ferry_xfer_set_notif(x, &id, sizeof(id)));
        st = ferry_xfer_post(x);
        queued += st == FERRY_IN_PROGRESS;
        if (st != FERRY_OK && st != FERRY_IN_PROGRESS)
            EXPECT_ST(FERRY_OK, st);
        n = take(target);
        if (n != NULL && n->len == sizeof(got))
            memcpy(&got, n->msg, sizeof(got));
        EXPECT_EQ(id, got);
        ferry_notif_free(n);
        EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 10000000000ll));
        if (st == FERRY_IN_PROGRESS) {
            ferry_completion_t c;
            size_t k = 0;

            /* The sender's progress thread queued it by now. */
            EXPECT_ST(FERRY_OK, ferry_agent_completions(me, &c, 1, &k));
            if (k == 1) {
                entries++;
                EXPECT_TRUE(c.xfer == x && c.user_data == &cookie && c.status == FERRY_OK);
            }
        }
    }
    EXPECT_EQ(queued, entries);
    printf("test_notif: %d of 20 posts with a message completed later, each with "
           "its completion queue entry\n", queued);
    ferry_xfer_release(x);
}

/*
 * The target's fd in an epoll loop: with nothing sent, it stays quiet for
 * 100 ms (with a progress thread; without, after progress returned OK);
 * after 50 messages, the loop (epoll_wait, progress until OK, drain) takes
 * all of them, in order; then it is quiet again.
 */
static void test_fd(void)
{
    struct epoll_event ev = {.events = EPOLLIN}, got;
    uint32_t next = 0;
    int fd, ep, spurious = 0;

    ASSERT_ST(FERRY_OK, ferry_agent_fd(target, &fd));
    ep = epoll_create1(EPOLL_CLOEXEC);
    ASSERT_TRUE(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    while (!thread && ferry_agent_progress(target) != FERRY_OK)
        ;
    if (thread)
        EXPECT_EQ(0, epoll_wait(ep, &got, 1, 100));
    for (uint32_t k = 0; k < 50; k++)
        EXPECT_ST(FERRY_OK, ferry_notif_send(me, peer, &k, sizeof(k)));
    for (uint64_t t0 = xu_now_ns(); next < 50 && xu_ms_since(t0) < 20000;) {
        ferry_notif_t *n[8];
        size_t cnt = 0;

        if (epoll_wait(ep, &got, 1, 10000) != 1)
            break;
        while (!thread && ferry_agent_progress(target) != FERRY_OK)
            ;
        EXPECT_ST(FERRY_OK, ferry_notif_drain(target, n, 8, &cnt));
        spurious += thread && cnt == 0;
        for (size_t i = 0; i < cnt; i++) {
            uint32_t k = UINT32_MAX;

            if (n[i]->len == sizeof(k))
                memcpy(&k, n[i]->msg, sizeof(k));
            EXPECT_EQ(next, k);
            next = k + 1;
            ferry_notif_free(n[i]);
        }
    }
    EXPECT_EQ(50, next);
    /* With a progress thread the fd is readable exactly while messages
     * wait. */
    EXPECT_EQ(0, spurious);
    if (thread)
        EXPECT_EQ(0, epoll_wait(ep, &got, 1, 100));
    close(ep);
}

static void pump_target(void *arg)
{
    (void)arg;
    ferry_agent_progress(target);
}

/* One active message of ferry's id from the raw sender; 0 when sent. */
static int raw_send(xr_sender_t *s, const void *hdr, size_t hlen, const void *data,
                    size_t len)
{
    return xr_send(s, FERRY__UCX_AM_NOTIF, hdr, hlen, data, len, pump_target, NULL);
}

/* A header as notif.c writes it (docs/NOTIF.md), with the given fields. */
static size_t raw_msg(uint8_t *out, uint32_t magic, uint16_t version, uint16_t nlen,
                      uint32_t mlen, const char *name, size_t body)
{
    memset(out, 0, 32);
    memcpy(out, &magic, 4);
    memcpy(out + 4, &version, 2);
    memcpy(out + 6, &nlen, 2);
    memcpy(out + 24, &mlen, 4);
    memcpy(out + 32, name, strlen(name));
    return 32 + strlen(name) + body;
}

/*
 * Garbage on the wire: too short, a bad magic or version, lengths that do
 * not add up, an empty or NUL-bearing name, a header, a message over the
 * maximum. Each is dropped (with a warning in the log); then a good one
 * from the same raw sender arrives as the only message, with its name and
 * no peer (the target never loaded it).
 */
static void test_malformed(void)
{
    static uint8_t m[32 + 16 + FERRY_NOTIF_MAX + 8];
    xr_sender_t raw;
    ferry__md_t md;
    ferry_notif_t *n;
    void *blob;
    size_t len, sent = 0;
    int slot = ferry__backend_slot(FERRY__BK_UCX);
    const uint32_t magic = 0x46544e46;

    ASSERT_ST(FERRY_OK, ferry_md_pack(target, &blob, &len));
    ASSERT_ST(FERRY_OK, ferry__md_parse(blob, len, len, &md));
    ASSERT_TRUE(slot >= 0 && md.bk_addr[slot].data != NULL);
    ASSERT_TRUE(xr_open(&raw, md.bk_addr[slot].data) == 0);

    sent += raw_send(&raw, NULL, 0, m, 7) == 0; /* shorter than a header */
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic + 1, 1, 3, 0, "raw", 0)) == 0;
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic, 2, 3, 0, "raw", 0)) == 0;
    /* Lengths that promise more or less than the message holds. */
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic, 1, 3, 9, "raw", 8)) == 0;
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic, 1, 3, 7, "raw", 8)) == 0;
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic, 1, 40000, 0, "raw", 0)) == 0;
    sent += raw_send(&raw, NULL, 0, m, raw_msg(m, magic, 1, 0, 0, "", 0)) == 0;
    len = raw_msg(m, magic, 1, 3, 0, "raw", 0);
    m[33] = '\0'; /* a NUL inside the name */
    sent += raw_send(&raw, NULL, 0, m, len) == 0;
    sent += raw_send(&raw, NULL, 0, m,
                     raw_msg(m, magic, 1, 3, FERRY_NOTIF_MAX + 1, "raw",
                             FERRY_NOTIF_MAX + 1)) == 0;
    /* A good message, but with a UCX header, which ferry never sends. */
    sent += raw_send(&raw, "hd", 2, m, raw_msg(m, magic, 1, 3, 0, "raw", 0)) == 0;
    EXPECT_EQ(10, sent);
    /* The one good message: it comes through alone. */
    len = raw_msg(m, magic, 1, 3, 5, "raw", 5);
    memcpy(m + 35, "hello", 5);
    EXPECT_EQ(0, raw_send(&raw, NULL, 0, m, len));
    n = take(target);
    if (n != NULL) {
        EXPECT_TRUE(n->len == 5 && memcmp(n->msg, "hello", 5) == 0);
        EXPECT_TRUE(strcmp(n->peer_name, "raw") == 0);
        EXPECT_TRUE(n->peer == NULL);
        ferry_notif_free(n);
    }
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_notif_wait(target, 100000000));

    xr_close(&raw);
    ferry__md_clear(&md);
    ferry_md_free(blob);
}

int main(int argc, char **argv)
{
    ferry_agent_params_t tp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "notif-target"};
    ferry_agent_params_t mp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "notif-me", .progress_thread = 1};
    ferry_desc_t md = {0, CAP, FERRY_MEM_HOST, 0}, td = {0, CAP, FERRY_MEM_HOST, 0};
    ferry_mem_t *mm, *tm;

    thread = argc > 1 && strcmp(argv[1], "thread") == 0;
    tp.progress_thread = thread;
    src = xu_alloc_buf(CAP);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&mp, &me));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&tp, &target));
    if (thread)
        dst = xu_alloc_buf(CAP);
    else
        ASSERT_ST(FERRY_OK, ferry_mem_alloc(target, CAP, FERRY_MEM_HOST, (void **)&dst));
    memset(dst, 0, CAP);
    md.addr = (uintptr_t)src;
    td.addr = (uintptr_t)dst;
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, &md, 1, &mm));
    ASSERT_ST(FERRY_OK, ferry_mem_register(target, &td, 1, &tm));
    ASSERT_ST(FERRY_OK, test_exchange(me, target, &peer));
    ASSERT_ST(FERRY_OK, test_exchange(target, me, &back));

    test_errors();
    test_sizes();
    test_writes();
    test_completions();
    test_fd();
    test_malformed();

    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mm));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(tm));
    if (!thread)
        EXPECT_ST(FERRY_OK, ferry_mem_free(target, dst));
    ferry_agent_destroy(me);
    ferry_agent_destroy(target);
    free(src);
    if (thread)
        free(dst);
    return test_finish("test_notif");
}
