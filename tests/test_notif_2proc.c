/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Notifications between processes. The transfer cases run against the
 * shared serving target (target.h), which checks each message as it
 * arrives; the other cases fork their senders.
 *
 *   test_notif_2proc write [thread] [--mem I:T]
 *       10 000 WRITEs (FERRY_TEST_ITERS x 100) of random lengths between
 *       random offsets, each with a message naming its range and the sum
 *       of its fresh random bytes; every other one re-posts the request
 *       before with a new message (ferry_xfer_set_notif). The initiator
 *       does not wait for the WRITE before the target takes its message:
 *       the target sums the range at once, so a message that came before
 *       its bytes fails the test. The target acknowledges each message with
 *       a stand-alone one, which the initiator waits for (ferry_notif_wait)
 *       before the next WRITE, so no later WRITE hides an early message.
 *       thread: the target has a progress thread (without: its waits drive
 *       it). --mem: the memory kinds, as test_xfer_2proc (GPU kinds need a
 *       GPU: label gpu, skipped without one).
 *   test_notif_2proc read [thread] [--mem I:T]
 *       The same with READs: on each message the target refills the range
 *       that was read, and the initiator's next READs must see the new
 *       bytes (it keeps a copy of what the target's buffer should hold); a
 *       message that came before the READ had read its bytes would let the
 *       refill into them.
 *   test_notif_2proc failed
 *       A WRITE to a stopped target, canceled, delivers no message: once
 *       the target runs again, the first message it gets is a later
 *       stand-alone one. Then a message to the target after it was killed
 *       is FERRY_ERR_PEER_LOST, and so is a post of a request with one.
 *   test_notif_2proc killed
 *       A sender (forked, without a progress thread) sends its first
 *       message and makes no call until the receiver has it; then it sends
 *       199 more, of random sizes, and is killed:
 *       the receiver, which never loaded its blob, keeps every one, intact,
 *       in order, with the sender's name; its fd in an epoll loop is
 *       readable while they wait and not after the drain (it has a progress
 *       thread, so they arrive without a call); its next wait times out
 *       normally, and a wait of 1 s costs its thread under 50 ms of CPU.
 *   test_notif_2proc flood
 *       4 senders send 300 messages each into a receiver whose queue holds
 *       64: it keeps exactly 64, counts the rest as dropped, and what it
 *       keeps is intact and in order per sender.
 *   test_notif_2proc stopped
 *       Over UCX's TCP transport, 20 stand-alone messages from one thread
 *       to a target stopped before the connection was wired up, while a
 *       second thread times ferry_notif_dropped(), a call that takes the
 *       agent's lock: the time that thread spent in it must stay within a
 *       few times the first send (which waits for the wire-up, 200 ms) plus
 *       what it spent in a reference window as long, right after. Each
 *       send used to wait 200 ms under the lock, holding that thread for
 *       all 20. Resumed, the target gets the 20, in order and intact.
 */
#include "target.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define TCAP (1u << 20) /* the target's buffer */
#define LCAP (1u << 20) /* the initiator's */
#define MAXLEN (64u << 10)
#define SEC 1000000000ll

/* "staged": the write and read cases' requests go through the staged
 * backend (bounce buffers), whose target acknowledges a chunk only once it
 * is in place: the message must still find every byte. */
static int staged;

static xm_kind_t mem_init = XM_HOST, mem_target = XM_HOST;
static uint64_t seed;

/* The transfer cases: WRITE or READ, against the serving target. */
static int xfer_case(int read, int thread)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "notif-init"};
    xt_opts_t to = {.name = "notif-target", .progress_thread = thread, .drive = 1,
                    .nbuf = 1};
    uint64_t iters = (uint64_t)xu_env_long("FERRY_TEST_ITERS", 100) * 100;
    test_rng_t rng;
    xt_target_t t;
    ferry_agent_t *me;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    ferry_xfer_t *x = NULL;
    ferry_desc_t l = {0}, r = {0}, d;
    xm_buf_t lb;
    uint8_t *shadow = NULL;
    void *blob;
    size_t blen;
    long bad;
    uint64_t stale = 0;

    seed = xu_seed(0x40f1f);
    rng = (test_rng_t){seed};
    printf("test_notif_2proc %s%s: seed %" PRIu64 ", %" PRIu64 " posts, memory %s:%s\n",
           read ? "read" : "write", thread ? " thread" : "", seed, iters,
           xm_name(mem_init), xm_name(mem_target));
    if ((xm_is_gpu(mem_init) || xm_is_gpu(mem_target)) && xm_cuda() == NULL) {
        printf("skip: no GPU\n");
        return 77;
    }
    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){mem_target, TCAP, 0, 0};
    if (xt_start(&t, &to) != 0)
        return 1;
    if (xm_alloc(&lb, mem_init, LCAP) != 0)
        return 1;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    d = xm_desc(mem_init, lb.addr, LCAP);
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, &d, 1, &mem));
    if (xt_connect(&t, me, &peer) != 0)
        return 1;
    if (read) {
        /* What the target's buffer holds, kept up to date. */
        shadow = xu_xcalloc(1, TCAP);
        xu_fill_guard(shadow, 0, TCAP, seed, 0);
        if (xt_pattern(&t, 0, 0, TCAP, 0) != 0)
            return 1;
    }
    ASSERT_ST(FERRY_OK, ferry_md_pack(me, &blob, &blen));
    if (xt_notif_begin(&t, 0, iters, XT_NOTIF_ACK, blob, blen) != 0)
        return 1;
    ferry_md_free(blob);

    for (uint64_t i = 0; i < iters; i++) {
        ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF |
                                                (staged ? FERRY_XFER_PARAM_BACKEND : 0),
                                  .backend = FERRY_BACKEND_STAGED};
        xt_note_t note;
        ferry_status_t st;

        if (i % 2 == 0) {
            uint64_t len = test_rand_range(&rng, 1, MAXLEN);

            l = xm_desc(mem_init, lb.addr + test_rand_range(&rng, 0, LCAP - len), len);
            r = xm_target_desc(mem_target, t.buf[0].addr +
                                                test_rand_range(&rng, 0, TCAP - len), len);
        }
        note = (xt_note_t){read ? XT_NOTE_READ : XT_NOTE_WRITE, 0, i,
                           r.addr - t.buf[0].addr, r.len, 0};
        if (read) {
            memset(lb.host + (l.addr - lb.addr), 0xa5, l.len);
        } else {
            /* Fresh bytes every time: a stale range would pass the sum. */
            test_rand_bytes(&rng, lb.host + (l.addr - lb.addr), l.len);
            note.sum = xt_sum(lb.host + (l.addr - lb.addr), l.len);
        }
        xm_to_dev(&lb, l.addr - lb.addr, l.addr - lb.addr + l.len);
        if (i % 2 == 0) {
            ferry_xfer_release(x);
            xp.notif = &note;
            xp.notif_len = sizeof(note);
            ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, read ? FERRY_OP_READ : FERRY_OP_WRITE,
                                                   &l, 1, peer, &r, 1, &xp, &x));
        } else {
            EXPECT_ST(FERRY_OK, ferry_xfer_set_notif(x, &note, sizeof(note)));
        }
        /* Not waited for first: only the message tells the target. */
        st = ferry_xfer_post(x);
        if (st != FERRY_OK && st != FERRY_IN_PROGRESS)
            EXPECT_ST(FERRY_IN_PROGRESS, st);
        if (xt_notif_ack(me, i) != 0)
            break;
        EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 20 * SEC));
        if (read) {
            uint64_t off = l.addr - lb.addr, roff = note.off;

            xm_from_dev(&lb, off, off + l.len);
            if (memcmp(lb.host + off, shadow + roff, l.len) != 0) {
                if (stale++ < 5)
                    TEST_FAIL_AT_("READ %" PRIu64 " of [%" PRIu64 ", +%" PRIu64
                                  ") does not hold what the target had there",
                                  i, roff, l.len);
            }
            xu_fill_guard(shadow, roff, roff + l.len, seed, XT_NOTE_REFILL_ITER(i));
        }
    }
    ferry_xfer_release(x);
    bad = xt_notif_end(&t, me);
    EXPECT_EQ(0, bad);
    EXPECT_EQ(0, stale);
    if (xt_quit(&t) != 0)
        TEST_FAIL_AT_("the target exited badly");
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(me);
    xm_free(&lb);
    free(shadow);
    return test_finish("test_notif_2proc");
}

/* A failed post delivers nothing; a dead peer is PEER_LOST. */
static int failed_case(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "notif-init"};
    xt_opts_t to = {.name = "notif-target", .progress_thread = 1, .drive = 1, .nbuf = 1};
    const uint64_t big = 16u << 20;
    xt_target_t t;
    ferry_agent_t *me;
    ferry_peer_t *peer;
    ferry_mem_t *mem;
    ferry_xfer_t *x;
    ferry_desc_t l, r;
    uint8_t *buf = xu_alloc_buf(big);
    /* The canceled WRITE's message, which the target would count bad (an
     * empty range whose sum is not 0), and the one after it. */
    xt_note_t lost = {XT_NOTE_WRITE, 0, 7, 0, 0, 0}, marker = {XT_NOTE_PLAIN, 0, 1, 0, 0, 0};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF, .notif = &lost,
                              .notif_len = sizeof(lost)};
    ferry_status_t st;
    void *blob;
    size_t blen;

    seed = xu_seed(0xfa11);
    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){XM_HOST, big, 0, 0};
    if (xt_start(&t, &to) != 0)
        return 1;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    l = (ferry_desc_t){(uintptr_t)buf, big, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, &l, 1, &mem));
    if (xt_connect(&t, me, &peer) != 0)
        return 1;
    r = (ferry_desc_t){t.buf[0].addr, big, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &l, 1, peer, &r, 1, &xp, &x));
    /* One message first: the target loads this agent's blob and takes it. */
    ASSERT_ST(FERRY_OK, ferry_md_pack(me, &blob, &blen));
    if (xt_notif_begin(&t, 0, 1, 0, blob, blen) != 0)
        return 1;
    ferry_md_free(blob);
    ASSERT_ST(FERRY_OK, ferry_notif_send(me, peer, &(xt_note_t){XT_NOTE_PLAIN, 0, 0, 0, 0, 0},
                                         sizeof(xt_note_t)));
    EXPECT_EQ(0, xt_notif_end(&t, me));
    xu_stop_child(t.pid);
    st = ferry_xfer_post(x);
    if (st == FERRY_IN_PROGRESS) {
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(x, SEC / 5));
        EXPECT_ST(FERRY_OK, ferry_xfer_cancel(x));
        EXPECT_ST(FERRY_ERR_CANCELED, ferry_xfer_test(x));
    } else {
        TEST_FAIL_AT_("a 16 MiB WRITE to a stopped target ended at once (%s)",
                      ferry_status_str(st));
    }
    xu_cont_child(t.pid);
    /* After the canceled WRITE: the next message the target gets must be
     * this one. */
    ASSERT_ST(FERRY_OK, ferry_notif_send(me, peer, &marker, sizeof(marker)));
    if (xt_notif_begin(&t, 0, 1, 0, NULL, 0) != 0)
        return 1;
    EXPECT_EQ(0, xt_notif_end(&t, me));

    /* A dead peer: the message and the post both say so (a send asks
     * after the peer at most once a millisecond). */
    xt_kill(&t);
    usleep(5000);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_notif_send(me, peer, &marker, sizeof(marker)));
    st = ferry_xfer_post(x);
    if (st == FERRY_IN_PROGRESS)
        st = ferry_xfer_wait(x, 10 * SEC);
    EXPECT_ST(FERRY_ERR_PEER_LOST, st);
    ferry_xfer_release(x);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(me);
    free(buf);
    return test_finish("test_notif_2proc");
}

/* "stopped": a thread that keeps calling ferry_notif_dropped() until told
 * to stop, adding up the time it spent inside. */
typedef struct lock_timer {
    ferry_agent_t *agent;
    atomic_int stop;
    double in_ms, max_ms;
    long calls;
} lock_timer_t;

static void *lock_timer_main(void *arg)
{
    lock_timer_t *lt = arg;

    while (!atomic_load(&lt->stop)) {
        uint64_t t0 = xu_now_ns(), n;
        double ms;

        EXPECT_ST(FERRY_OK, ferry_notif_dropped(lt->agent, &n));
        ms = (double)(xu_now_ns() - t0) / 1e6;
        lt->in_ms += ms;
        lt->max_ms = ms > lt->max_ms ? ms : lt->max_ms;
        lt->calls++;
        usleep(100);
    }
    return NULL;
}

/* Runs a lock_timer on agent while the caller works; lock_timer_end()
 * stops it. */
static void lock_timer_begin(lock_timer_t *lt, ferry_agent_t *agent, pthread_t *t)
{
    *lt = (lock_timer_t){.agent = agent};
    ASSERT_TRUE(pthread_create(t, NULL, lock_timer_main, lt) == 0);
}

static void lock_timer_end(lock_timer_t *lt, pthread_t t)
{
    atomic_store(&lt->stop, 1);
    pthread_join(t, NULL);
}

static int stopped_case(void)
{
    enum { COUNT = 20 };
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "notif-init"};
    xt_opts_t to = {.name = "notif-target", .progress_thread = 1, .nbuf = 1,
                    .buf = {{XM_HOST, 4096, 0, 0}}};
    test_rng_t rng;
    xt_target_t t;
    ferry_agent_t *me;
    ferry_peer_t *peer;
    lock_timer_t during, ref;
    pthread_t th;
    uint64_t t0, t1;
    double first_ms = 0, sends_ms;
    long bad;

    /* Over TCP a connection's first messages wait for its wire-up, which
     * needs the peer; over shared memory they go straight into its FIFO. */
    setenv("UCX_TLS", "tcp", 1);
    seed = xu_seed(0x5709);
    rng.s = seed;
    to.seed = seed;
    if (xt_start(&t, &to) != 0)
        return 1;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    if (xt_notif_begin(&t, 0, COUNT, XT_NOTIF_UNKNOWN, NULL, 0) != 0)
        return 1;
    if (xt_connect(&t, me, &peer) != 0)
        return 1;
    xu_stop_child(t.pid);

    lock_timer_begin(&during, me, &th);
    t0 = xu_now_ns();
    for (uint64_t i = 0; i < COUNT; i++) {
        xt_note_t n = xt_note_plain(i, test_rand(&rng));

        EXPECT_ST(FERRY_OK, ferry_notif_send(me, peer, &n, sizeof(n)));
        if (i == 0)
            first_ms = (double)(xu_now_ns() - t0) / 1e6;
    }
    t1 = xu_now_ns();
    sends_ms = (double)(t1 - t0) / 1e6;
    lock_timer_end(&during, th);
    /* The reference: as long again, the peer still stopped, no sends. */
    lock_timer_begin(&ref, me, &th);
    while (xu_now_ns() - t1 < t1 - t0)
        usleep(1000);
    lock_timer_end(&ref, th);
    printf("test_notif_2proc stopped: %d sends took %.1f ms, the first %.1f ms; the "
           "other thread spent %.1f ms in %ld calls of ferry_notif_dropped (the "
           "longest %.1f ms), against %.1f ms in %ld calls (the longest %.1f ms) "
           "in the reference window\n", COUNT, sends_ms, first_ms, during.in_ms,
           during.calls, during.max_ms, ref.in_ms, ref.calls, ref.max_ms);
    if (during.in_ms > 3 * first_ms + 2 * ref.in_ms + ref.max_ms)
        TEST_FAIL_AT_("sends to a stopped peer held the agent's other thread for "
                      "%.0f ms (the first send took %.0f ms)", during.in_ms, first_ms);

    /* Resumed, the target gets them all, in order and intact, while the
     * agent is driven (it has no progress thread). */
    xu_cont_child(t.pid);
    bad = xt_notif_end(&t, me);
    EXPECT_EQ(0, bad);
    EXPECT_TRUE(xt_quit(&t) == 0);
    ferry_peer_forget(peer);
    ferry_agent_destroy(me);
    return test_finish("test_notif_2proc stopped");
}

/* ------------------------------------------------------------------------ */
/* Forked senders                                                           */
/* ------------------------------------------------------------------------ */

/* Message k of sender s: k, s, then bytes that only (s, k) give. */
static size_t sender_msg(unsigned s, uint32_t k, uint8_t *out)
{
    test_rng_t rng = {seed ^ ((uint64_t)s << 40) ^ k};
    size_t len = 8 + (size_t)test_rand_range(&rng, 0, 248);

    memcpy(out, &k, 4);
    memcpy(out + 4, &s, 4);
    test_rand_bytes(&rng, out + 8, len - 8);
    return len;
}

/*
 * The sender's process: takes the receiver's blob from fd, sends count
 * messages, says so (one byte), and waits to be told to go (or killed).
 * With a progress thread, that thread pushes out what UCX queued. Without
 * one, the first message is sent alone and the sender then makes no call
 * until the receiver says it has it: the first message on a connection
 * waits for UCX's wire-up, which the send itself must see through; the
 * rest are sent while the sender drives its agent.
 */
static void sender_main(int fd, unsigned s, uint32_t count, int thread)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .progress_thread = thread};
    char name[32];
    uint64_t len;
    void *blob;
    ferry_agent_t *a;
    ferry_peer_t *p;
    uint8_t msg[256], one = 1;

    snprintf(name, sizeof(name), "sender-%u", s);
    ap.name = name;
    xu_io(fd, &len, sizeof(len), 0, 30000);
    blob = xu_xcalloc(1, (size_t)len);
    xu_io(fd, blob, (size_t)len, 0, 30000);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &a));
    ASSERT_ST(FERRY_OK, ferry_peer_load(a, blob, (size_t)len, &p));
    for (uint32_t k = 0; k < count; k++) {
        size_t n = sender_msg(s, k, msg);

        ASSERT_ST(FERRY_OK, ferry_notif_send(a, p, msg, n));
        if (k == 0 && !thread) {
            xu_io(fd, &one, 1, 1, 30000); /* sent */
            xu_io(fd, &one, 1, 0, 30000); /* received: go on */
        }
    }
    /* Wait until the receiver says it has seen enough, or until killed. */
    xu_io(fd, &one, 1, 1, 30000);
    if (xu_recv(fd, &one, 1, 60000, thread ? NULL : a) != 0)
        _exit(1);
    ferry_agent_destroy(a);
    free(blob);
    _exit(test_failures ? 1 : 0);
}

/* Forks a sender before this process touches UCX; returns its socket. */
static int sender_fork(unsigned s, uint32_t count, int thread, pid_t *pid_p)
{
    int sv[2];
    pid_t pid;

    ASSERT_TRUE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        sender_main(sv[1], s, count, thread);
    }
    close(sv[1]);
    *pid_p = pid;
    return sv[0];
}

static void sender_start(int fd, ferry_agent_t *receiver)
{
    void *blob;
    size_t len;
    uint64_t n;

    ASSERT_ST(FERRY_OK, ferry_md_pack(receiver, &blob, &len));
    n = len;
    xu_io(fd, &n, sizeof(n), 1, 30000);
    xu_io(fd, blob, len, 1, 30000);
    ferry_md_free(blob);
}

/* Checks a message from a forked sender: returns its number, or -1. */
static long sender_check(const ferry_notif_t *n, unsigned *s_p)
{
    uint8_t want[256];
    uint32_t k;
    unsigned s;
    char name[32];

    if (n->len < 8)
        return -1;
    memcpy(&k, n->msg, 4);
    memcpy(&s, (const uint8_t *)n->msg + 4, 4);
    snprintf(name, sizeof(name), "sender-%u", s);
    if (s > 64 || n->len != sender_msg(s, k, want) || memcmp(want, n->msg, n->len) != 0 ||
        strcmp(n->peer_name, name) != 0 || n->peer != NULL)
        return -1;
    *s_p = s;
    return (long)k;
}

static int killed_case(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "receiver", .progress_thread = 1};
    const uint32_t count = 200;
    ferry_agent_t *me;
    ferry_notif_t *out[64];
    struct epoll_event ev = {.events = EPOLLIN}, got_ev;
    uint32_t next = 0;
    uint8_t one;
    pid_t pid;
    int fd, afd, ep, bad = 0, status;
    double c0, t0;

    seed = xu_seed(0x4b111);
    fd = sender_fork(0, count, 0, &pid);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    sender_start(fd, me);
    /* The first message arrives while the sender makes no call. */
    xu_io(fd, &one, 1, 0, 30000);
    EXPECT_ST(FERRY_OK, ferry_notif_wait(me, 10 * SEC));
    xu_io(fd, &one, 1, 1, 30000);
    xu_io(fd, &one, 1, 0, 30000); /* all sent */
    ASSERT_ST(FERRY_OK, ferry_agent_fd(me, &afd));
    ep = epoll_create1(EPOLL_CLOEXEC);
    ASSERT_TRUE(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, afd, &ev) == 0);
    /* The progress thread receives them; the fd says when. Wait for the
     * last before killing the sender, so that "every message sent before"
     * is all of them. */
    for (uint64_t t = xu_now_ns(); next < count && xu_ms_since(t) < 30000;) {
        size_t n = 0;

        if (epoll_wait(ep, &got_ev, 1, 30000) != 1)
            break;
        EXPECT_ST(FERRY_OK, ferry_notif_drain(me, out, 64, &n));
        for (size_t i = 0; i < n; i++) {
            unsigned s;
            long k = sender_check(out[i], &s);

            if (k != (long)next)
                bad++;
            next = (uint32_t)k + 1;
            ferry_notif_free(out[i]);
        }
        if (n == 0 && next < count) {
            /* Readable with nothing to drain: the fd lied. */
            bad++;
            break;
        }
    }
    EXPECT_EQ(count, next);
    EXPECT_EQ(0, bad);
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    close(fd);
    /* Drained: the fd is quiet, and a wait times out normally. */
    EXPECT_EQ(0, epoll_wait(ep, &got_ev, 1, 100));
    t0 = xu_now_s();
    c0 = xu_thread_cpu_s();
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_notif_wait(me, SEC));
    {
        double cpu = xu_thread_cpu_s() - c0, wall = xu_now_s() - t0;

        printf("test_notif_2proc killed: a 1 s wait took %.3f s and %.1f ms of CPU\n",
               wall, cpu * 1000);
        EXPECT_TRUE(wall >= 0.99);
        /* Sleeping, not spinning: the thread's own CPU time, which a busy
         * machine does not inflate. */
        EXPECT_TRUE(cpu < 0.05);
    }
    {
        size_t n = 1;

        EXPECT_ST(FERRY_OK, ferry_notif_drain(me, out, 64, &n));
        EXPECT_EQ(0, n);
    }
    close(ep);
    ferry_agent_destroy(me);
    return test_finish("test_notif_2proc");
}

static int flood_case(void)
{
    enum { NS = 4, COUNT = 300, QUEUE = 64 };
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_NOTIF_QUEUE,
                               .name = "receiver", .notif_queue = QUEUE};
    ferry_agent_t *me;
    ferry_notif_t *out[QUEUE + 1];
    int fd[NS], bad = 0, status;
    pid_t pid[NS];
    long last[NS];
    uint64_t dropped = 0, t;
    size_t n = 0;
    uint8_t one = 1;

    seed = xu_seed(0xf100d);
    for (unsigned s = 0; s < NS; s++) {
        fd[s] = sender_fork(s, COUNT, 1, &pid[s]);
        last[s] = -1;
    }
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    for (unsigned s = 0; s < NS; s++)
        sender_start(fd[s], me);
    /* Receive without draining until every message has been kept or
     * dropped: the senders' progress threads push out what UCX queued. */
    for (t = xu_now_ns(); xu_ms_since(t) < 60000;) {
        ferry_agent_progress(me);
        EXPECT_ST(FERRY_OK, ferry_notif_dropped(me, &dropped));
        if (dropped >= (uint64_t)NS * COUNT - QUEUE)
            break;
    }
    EXPECT_EQ((uint64_t)NS * COUNT - QUEUE, dropped);
    EXPECT_ST(FERRY_OK, ferry_notif_drain(me, out, QUEUE + 1, &n));
    EXPECT_EQ(QUEUE, n);
    for (size_t i = 0; i < n; i++) {
        unsigned s = 0;
        long k = sender_check(out[i], &s);

        if (k < 0 || s >= NS || k <= last[s])
            bad++;
        else
            last[s] = k;
        ferry_notif_free(out[i]);
    }
    EXPECT_EQ(0, bad);
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_notif_wait(me, SEC / 10));
    for (unsigned s = 0; s < NS; s++) {
        xu_io(fd[s], &one, 1, 0, 30000);
        xu_io(fd[s], &one, 1, 1, 30000);
    }
    for (unsigned s = 0; s < NS; s++) {
        status = xu_reap(pid[s], 30000);
        EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(fd[s]);
    }
    ferry_agent_destroy(me);
    return test_finish("test_notif_2proc");
}

int main(int argc, char **argv)
{
    int thread = 0;
    const char *mode = argc > 1 ? argv[1] : "";

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "thread") == 0) {
            thread = 1;
        } else if (strcmp(argv[i], "staged") == 0) {
            staged = 1;
        } else if (strcmp(argv[i], "--mem") == 0 && i + 1 < argc) {
            char a[16], b[16];

            if (sscanf(argv[++i], "%15[a-z]:%15[a-z]", a, b) != 2 ||
                xm_parse(a, &mem_init) != 0 || xm_parse(b, &mem_target) != 0)
                return fprintf(stderr, "bad --mem '%s'\n", argv[i]), 2;
        } else {
            return fprintf(stderr, "bad argument '%s'\n", argv[i]), 2;
        }
    }
    if (strcmp(mode, "write") == 0 || strcmp(mode, "read") == 0)
        return xfer_case(mode[0] == 'r', thread);
    if (strcmp(mode, "failed") == 0)
        return failed_case();
    if (strcmp(mode, "killed") == 0)
        return killed_case();
    if (strcmp(mode, "flood") == 0)
        return flood_case();
    if (strcmp(mode, "stopped") == 0)
        return stopped_case();
    fprintf(stderr, "usage: %s write|read [thread] [staged] [--mem I:T] | failed | "
                    "killed | flood | stopped\n", argv[0]);
    return 2;
}
