/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The completion queue, as an event loop uses it: eight requests at a time
 * are kept in flight, each prepared with a user_data; the loop sleeps in
 * epoll_wait on ferry_agent_fd(), drains ferry_agent_completions() and
 * moves each slot on (a WRITE of fresh random data to a random offset of
 * the target, then a READ of it back, checked byte for byte, then a new
 * pair elsewhere). Every post that returned FERRY_IN_PROGRESS must yield
 * exactly one entry with the right user_data; none may come otherwise.
 * Run without a progress thread (the loop drives ferry_agent_progress) and
 * with one (argument "thread": the fd then signals only the queue, and the
 * loop never drives progress). Also: entries dropped by a re-post and by
 * release, an fd that is not readable once the queue is empty, and bad
 * arguments.
 */
#include "xfer_util.h"

#include <sys/epoll.h>
#include <unistd.h>

#define SLOTS 8
#define ROUNDS 250 /* WRITE+READ pairs per slot */
#define SLICE (64u << 10)
#define SEC 1000000000ll

typedef struct slot {
    int idx;
    ferry_xfer_t *x;
    int reading; /* the WRITE is done, the READ in flight */
    int round;
    uint64_t off, len;
    unsigned expected; /* entries owed: posts that returned IN_PROGRESS */
} slot_t;

static ferry_agent_t *me, *target;
static ferry_peer_t *peer;
static uint8_t *src, *back, *dst;
static slot_t slots[SLOTS];
static test_rng_t rng = {0x5eed};
static long inline_done;

/* A request between local and the target's dst, both at off; one with a
 * NULL user_data is prepared without it, and queues no entries. */
static ferry_xfer_t *prep(ferry_xfer_op_t op, uint8_t *local, uint64_t off, uint64_t len,
                          void *user_data)
{
    ferry_desc_t l = {(uintptr_t)(local + off), len, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {(uintptr_t)(dst + off), len, FERRY_MEM_HOST, 0};
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_USER_DATA,
                              .user_data = user_data};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, op, &l, 1, peer, &r, 1,
                                           user_data ? &xp : NULL, &x));
    return x;
}

static uint64_t tag(const slot_t *s)
{
    return (uint64_t)s->idx * 100000 + (uint64_t)s->round;
}

static void slot_post(slot_t *s)
{
    ferry_status_t st = ferry_xfer_post(s->x);

    if (st == FERRY_IN_PROGRESS) {
        s->expected++;
        return;
    }
    /* Done inline: no entry will come; move on at once. */
    ASSERT_ST(FERRY_OK, st);
    inline_done++;
}

/* Starts the slot's next WRITE: a fresh range and fresh data. */
static void slot_start(slot_t *s)
{
    s->len = test_rand_range(&rng, 1, SLICE / 2);
    s->off = (uint64_t)s->idx * SLICE + test_rand_range(&rng, 0, SLICE - s->len);
    test_fill(src + s->off, s->len, 7, tag(s), 0);
    ferry_xfer_release(s->x);
    s->x = prep(FERRY_OP_WRITE, src, s->off, s->len, s);
    s->reading = 0;
}

/* Moves a slot on after its request finished; returns 1 when it is done. */
static int slot_next(slot_t *s)
{
    if (!s->reading) {
        ferry_xfer_release(s->x);
        memset(back + s->off, 0, s->len);
        s->x = prep(FERRY_OP_READ, back, s->off, s->len, s);
        s->reading = 1;
        return 0;
    }
    if (test_verify(back + s->off, s->len, 7, tag(s), 0) != UINT64_MAX)
        TEST_FAIL_AT_("slot %d round %d: READ back differs", s->idx, s->round);
    if (++s->round == ROUNDS)
        return 1;
    slot_start(s);
    return 0;
}

/* Posts the slot's request and, while posts complete inline, moves on. */
static int slot_run(slot_t *s)
{
    for (;;) {
        unsigned before = s->expected;

        slot_post(s);
        if (s->expected != before)
            return 0;
        if (slot_next(s))
            return 1;
    }
}

static void bad_arguments(void)
{
    ferry_completion_t c;
    size_t n = 99;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_completions(NULL, &c, 1, &n));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_completions(me, NULL, 1, &n));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_completions(me, &c, 1, NULL));
    EXPECT_EQ(99, n); /* outputs only on success */
    EXPECT_ST(FERRY_OK, ferry_agent_completions(me, NULL, 0, &n));
    EXPECT_EQ(0, n);
}

/* The target's [off, off+len) holds pattern iter: read back into this
 * agent's own memory (a request without user data, so it queues nothing). */
static void check_dst(uint64_t off, uint64_t len, uint64_t iter)
{
    ferry_xfer_t *x = prep(FERRY_OP_READ, back, off, len, NULL);

    memset(back + off, 0, len);
    EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
    EXPECT_EQ(UINT64_MAX, test_verify(back + off, len, 7, iter, 0));
    ferry_xfer_release(x);
}

/* Re-posting before draining drops the old entry; release drops it too. */
static void dropped_entries(void)
{
    uint64_t len = test_rand_range(&rng, 1, SLICE);
    uint64_t off = test_rand_range(&rng, 0, SLOTS * SLICE - len);
    ferry_xfer_t *x = prep(FERRY_OP_WRITE, src, off, len, &dropped_entries);
    ferry_completion_t c[4];
    size_t n = 0;
    ferry_status_t st;
    int queued = 0;

    for (int i = 0; i < 2; i++) {
        test_fill(src + off, len, 7, 900000 + (uint64_t)i, 0);
        st = ferry_xfer_post(x);
        if (st == FERRY_IN_PROGRESS) {
            queued = 1;
            st = ferry_xfer_wait(x, 30 * SEC);
        } else {
            queued = 0;
        }
        ASSERT_ST(FERRY_OK, st);
        check_dst(off, len, 900000 + (uint64_t)i);
    }
    ASSERT_ST(FERRY_OK, ferry_agent_completions(me, c, 4, &n));
    EXPECT_EQ(queued, n); /* only the second post's entry, if it had one */
    if (n == 1) {
        EXPECT_TRUE(c[0].xfer == x && c[0].user_data == (void *)&dropped_entries);
        EXPECT_ST(FERRY_OK, c[0].status);
    }
    test_fill(src + off, len, 7, 900002, 0);
    ASSERT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
    check_dst(off, len, 900002);
    ferry_xfer_release(x);
    ASSERT_ST(FERRY_OK, ferry_agent_completions(me, c, 4, &n));
    EXPECT_EQ(0, n);
}

int main(int argc, char **argv)
{
    int thread = argc > 1 && strcmp(argv[1], "thread") == 0;
    ferry_agent_params_t tp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "cq-target", .progress_thread = 1};
    ferry_agent_params_t mp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "cq-initiator", .progress_thread = thread};
    size_t cap = (size_t)SLOTS * SLICE;
    ferry_desc_t mine[2], theirs;
    ferry_mem_t *mm, *tm;
    struct epoll_event ev = {.events = EPOLLIN}, out;
    int fd, ep, running = SLOTS, sleeps = 0;
    long entries = 0, owed = 0;

    alarm(240);
    src = calloc(1, cap);
    back = calloc(1, cap);
    dst = calloc(1, cap);
    ASSERT_TRUE(src != NULL && back != NULL && dst != NULL);
    mine[0] = (ferry_desc_t){(uintptr_t)src, cap, FERRY_MEM_HOST, 0};
    mine[1] = (ferry_desc_t){(uintptr_t)back, cap, FERRY_MEM_HOST, 0};
    theirs = (ferry_desc_t){(uintptr_t)dst, cap, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_agent_create(&mp, &me));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&tp, &target));
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, mine, 2, &mm));
    ASSERT_ST(FERRY_OK, ferry_mem_register(target, &theirs, 1, &tm));
    ASSERT_ST(FERRY_OK, test_exchange(me, target, &peer));

    bad_arguments();
    dropped_entries();

    ASSERT_ST(FERRY_OK, ferry_agent_fd(me, &fd));
    ep = epoll_create1(0);
    ASSERT_TRUE(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    /* Nothing queued, nothing in flight: the fd must not be readable. */
    if (!thread)
        while (ferry_agent_progress(me) == FERRY_IN_PROGRESS)
            ;
    EXPECT_EQ(0, epoll_wait(ep, &out, 1, 0));

    for (int i = 0; i < SLOTS; i++) {
        slots[i].idx = i;
        slot_start(&slots[i]);
        if (slot_run(&slots[i]))
            running--;
    }
    while (running > 0) {
        ferry_completion_t c[SLOTS];
        size_t n = 0;

        if (!thread)
            while (ferry_agent_progress(me) == FERRY_IN_PROGRESS)
                ;
        ASSERT_ST(FERRY_OK, ferry_agent_completions(me, c, SLOTS, &n));
        if (n == 0) {
            sleeps++;
            /* A lost wake-up would show as this timeout, and fail below. */
            if (epoll_wait(ep, &out, 1, 10000) == 0) {
                TEST_FAIL_AT_("no completion within 10 s with %d slots running",
                              running);
                break;
            }
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            slot_t *s = c[k].user_data;

            entries++;
            ASSERT_TRUE(s >= slots && s < slots + SLOTS);
            EXPECT_TRUE(c[k].xfer == s->x);
            ASSERT_ST(FERRY_OK, c[k].status);
            if (s->expected == 0) {
                TEST_FAIL_AT_("slot %d: an entry no post owed", s->idx);
                continue;
            }
            s->expected--;
            if (slot_next(s) || slot_run(s))
                running--;
        }
    }
    for (int i = 0; i < SLOTS; i++) {
        owed += slots[i].expected;
        ferry_xfer_release(slots[i].x);
    }
    EXPECT_EQ(0, owed);
    printf("test_completions%s: %ld entries, %ld posts done inline, %d sleeps\n",
           thread ? " (progress thread)" : "", entries, inline_done, sleeps);
    EXPECT_TRUE(entries > 0);
    EXPECT_EQ(0, epoll_wait(ep, &out, 1, 0)); /* drained: not readable */

    close(ep);
    ferry_peer_forget(peer);
    ferry_agent_destroy(me);
    ferry_agent_destroy(target);
    free(src);
    free(back);
    free(dst);
    return test_finish(thread ? "test_completions thread" : "test_completions");
}
