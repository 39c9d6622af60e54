/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Transfers inside one process: an agent loads its own metadata blob as a
 * peer (loopback) and moves data between its registered buffers with
 * prepared, re-posted WRITE and READ requests. This is the smallest setting
 * in which the whole data path runs (registration, blob, peer, prepare,
 * post, completion), so a user's first "does anything arrive?" question is
 * answered here, without a second process to blame.
 *
 * Every buffer has a shadow copy that the test updates the way the
 * descriptors say the library should; after each completion the real
 * buffers must equal their shadows byte for byte. That checks every
 * destination byte and also that nothing outside the descriptors changed
 * (neither guard bytes between ranges nor the source). Sizes, offsets and
 * descriptor order are random per round (seed printed, FERRY_TEST_SEED
 * replays it), and each prepared request is posted several times with fresh
 * data, because a request that only works on its first post is the classic
 * re-post bug. The request-state rules are checked too: re-posting a request
 * in flight is FERRY_ERR_BUSY, a request never posted tests and waits as
 * FERRY_ERR_INVALID, and a finished request keeps reporting its result.
 */
#include "xfer_util.h"

#define WAIT_NS (10ll * 1000 * 1000 * 1000)
#define ROUNDS 24
#define POSTS_PER_ROUND 6

/* A registered buffer and the copy of what it should hold. */
typedef struct buf {
    const char *name;
    uint8_t *p;
    uint8_t *shadow;
    uint64_t cap;
} buf_t;

/* A set of buffers one side of a request draws its ranges from. */
typedef struct space {
    buf_t *bufs[2];
    size_t nbufs;
} space_t;

/* Where each descriptor of a request lives on each side. */
typedef struct req_layout {
    size_t n;
    uint64_t *len;
    buf_t **lbuf, **rbuf;
    uint64_t *loff, *roff;
} req_layout_t;

static uint64_t seed;

static void req_free(req_layout_t *r)
{
    free(r->len);
    free(r->lbuf);
    free(r->rbuf);
    free(r->loff);
    free(r->roff);
    memset(r, 0, sizeof(*r));
}

/*
 * Places the n ranges in the buffers of a space: each descriptor goes to a
 * random buffer with room (at most half of each buffer is used, so the
 * slack leaves guard gaps), then each buffer's share is placed at random,
 * non-overlapping offsets.
 */
static void place_in_space(test_rng_t *rng, const space_t *sp, size_t n,
                           const uint64_t *len, buf_t **which, uint64_t *off)
{
    uint64_t used[2] = {0, 0};
    size_t *idx = xu_xcalloc(n, sizeof(*idx));

    for (size_t i = 0; i < n; i++) {
        size_t b = (size_t)test_rand_range(rng, 0, sp->nbufs - 1);

        if (used[b] + len[i] > sp->bufs[b]->cap / 2)
            b = (b + 1) % sp->nbufs;
        ASSERT_TRUE(used[b] + len[i] <= sp->bufs[b]->cap / 2);
        used[b] += len[i];
        which[i] = sp->bufs[b];
    }
    for (size_t b = 0; b < sp->nbufs; b++) {
        size_t m = 0;
        uint64_t lo, hi;

        for (size_t i = 0; i < n; i++)
            if (which[i] == sp->bufs[b])
                idx[m++] = i;
        if (m)
            ASSERT_TRUE(xu_place(rng, len, idx, m, sp->bufs[b]->cap, off, NULL,
                                 &lo, &hi) == 0);
    }
    free(idx);
}

static void req_make(req_layout_t *r, test_rng_t *rng, size_t n,
                     uint64_t max_len, const space_t *local,
                     const space_t *remote)
{
    r->n = n;
    r->len = xu_xcalloc(n, sizeof(*r->len));
    r->lbuf = xu_xcalloc(n, sizeof(*r->lbuf));
    r->rbuf = xu_xcalloc(n, sizeof(*r->rbuf));
    r->loff = xu_xcalloc(n, sizeof(*r->loff));
    r->roff = xu_xcalloc(n, sizeof(*r->roff));
    for (size_t i = 0; i < n; i++) {
        /* A quarter of the descriptors are tiny (1 to 16 bytes), where
         * transports take their short-message paths. */
        r->len[i] = (test_rand(rng) % 4 == 0) ? test_rand_range(rng, 1, 16)
                                              : test_rand_range(rng, 1, max_len);
    }
    place_in_space(rng, local, n, r->len, r->lbuf, r->loff);
    place_in_space(rng, remote, n, r->len, r->rbuf, r->roff);
}

static ferry_xfer_t *req_prepare(ferry_agent_t *agent, ferry_peer_t *peer,
                                 ferry_xfer_op_t op, const req_layout_t *r)
{
    ferry_desc_t *ld = xu_xcalloc(r->n, sizeof(*ld));
    ferry_desc_t *rd = xu_xcalloc(r->n, sizeof(*rd));
    ferry_xfer_t *x = NULL;

    for (size_t i = 0; i < r->n; i++) {
        ld[i] = (ferry_desc_t){(uint64_t)(uintptr_t)(r->lbuf[i]->p + r->loff[i]),
                               r->len[i], FERRY_MEM_HOST, 0};
        rd[i] = (ferry_desc_t){(uint64_t)(uintptr_t)(r->rbuf[i]->p + r->roff[i]),
                               r->len[i], FERRY_MEM_HOST, 0};
    }
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, ld, r->n, peer, rd, r->n,
                                           NULL, &x));
    ASSERT_TRUE(x != NULL);
    free(ld);
    free(rd);
    return x;
}

/* Source ranges get fresh data in both the buffer and its shadow. */
static void fill_sources(const req_layout_t *r, ferry_xfer_op_t op, uint64_t iter)
{
    for (size_t i = 0; i < r->n; i++) {
        buf_t *b = (op == FERRY_OP_WRITE) ? r->lbuf[i] : r->rbuf[i];
        uint64_t o = (op == FERRY_OP_WRITE) ? r->loff[i] : r->roff[i];

        /* The pattern base mixes in the descriptor index, so data delivered
         * to the wrong descriptor cannot match by accident. */
        test_fill_fast(b->p + o, r->len[i], seed, iter, i << 32);
        memcpy(b->shadow + o, b->p + o, r->len[i]);
    }
}

/* What the library should have done, applied to the shadows. */
static void apply_to_shadows(const req_layout_t *r, ferry_xfer_op_t op)
{
    for (size_t i = 0; i < r->n; i++) {
        if (op == FERRY_OP_WRITE)
            memcpy(r->rbuf[i]->shadow + r->roff[i], r->lbuf[i]->shadow + r->loff[i],
                   r->len[i]);
        else
            memcpy(r->lbuf[i]->shadow + r->loff[i], r->rbuf[i]->shadow + r->roff[i],
                   r->len[i]);
    }
}

/* Names the descriptor (if any) whose range on either side covers byte off
 * of buffer b, for the failure message. */
static void describe_byte(const req_layout_t *r, const buf_t *b, uint64_t off,
                          char *out, size_t outlen)
{
    snprintf(out, outlen, "outside every descriptor (guard byte)");
    for (size_t i = 0; i < r->n; i++) {
        if (r->lbuf[i] == b && off >= r->loff[i] && off < r->loff[i] + r->len[i]) {
            snprintf(out, outlen, "local side of descriptor %zu, byte %" PRIu64, i,
                     off - r->loff[i]);
            return;
        }
        if (r->rbuf[i] == b && off >= r->roff[i] && off < r->roff[i] + r->len[i]) {
            snprintf(out, outlen, "remote side of descriptor %zu, byte %" PRIu64, i,
                     off - r->roff[i]);
            return;
        }
    }
}

/* Every buffer must equal its shadow; returns the number that differ. */
static int check_all(buf_t *bufs, size_t nbufs, const req_layout_t *r,
                     const char *what, uint64_t iter)
{
    int bad = 0;

    for (size_t k = 0; k < nbufs; k++) {
        buf_t *b = &bufs[k];

        if (memcmp(b->p, b->shadow, b->cap) == 0)
            continue;
        for (uint64_t off = 0; off < b->cap; off++) {
            if (b->p[off] != b->shadow[off]) {
                char where[96];

                describe_byte(r, b, off, where, sizeof(where));
                TEST_FAIL_AT_("%s, iteration %" PRIu64 ": buffer %s offset %" PRIu64
                              " (%s) is 0x%02x, expected 0x%02x",
                              what, iter, b->name, off, where, b->p[off],
                              b->shadow[off]);
                break;
            }
        }
        bad++;
    }
    return bad;
}

/* Waits for a posted request and checks the documented end state. */
static void finish(ferry_xfer_t *x, ferry_status_t posted, const char *what)
{
    if (posted != FERRY_OK && posted != FERRY_IN_PROGRESS) {
        TEST_FAIL_AT_("%s: post returned %d (%s): %s", what, (int)posted,
                      ferry_status_str(posted), ferry_last_error());
        exit(1);
    }
    ASSERT_ST(FERRY_OK, ferry_xfer_wait(x, WAIT_NS));
    /* The result stays until the next post. */
    EXPECT_ST(FERRY_OK, ferry_xfer_test(x));
    EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 0));
}

int main(void)
{
    enum { A, B1, B2, NBUFS };
    buf_t bufs[NBUFS] = {
        {"A", NULL, NULL, 4u << 20},
        {"B1", NULL, NULL, 3u << 20},
        {"B2", NULL, NULL, (1u << 20) + 13}, /* an odd size: no tail rounding */
    };
    space_t spaces[2] = {{{&bufs[A], NULL}, 1}, {{&bufs[B1], &bufs[B2]}, 2}};
    /* B1 and B2 share one registration (mem_b): the rounds past ROUNDS
     * move bytes between them, local and remote descriptors in one handle. */
    space_t shared[2] = {{{&bufs[B1], NULL}, 1}, {{&bufs[B2], NULL}, 1}};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "loopback-agent"};
    ferry_agent_t *agent = NULL;
    ferry_mem_t *mem_a = NULL, *mem_b = NULL;
    ferry_peer_t *peer = NULL;
    test_rng_t rng;
    unsigned inline_posts = 0, async_posts = 0, busy_seen = 0;
    uint64_t t0 = xu_now_ns();

    seed = xu_seed(0x10095eedull);
    rng.s = seed;
    printf("test_xfer_loopback: seed %" PRIu64 " (set FERRY_TEST_SEED to replay)\n",
           seed);

    /* The fast pattern helpers must agree with the byte-wise definition,
     * or every data check below would compare against the wrong bytes. */
    {
        uint8_t a[200], b[200];

        for (unsigned k = 0; k < 64; k++) {
            uint64_t base = test_rand(&rng) >> 8, len = test_rand_range(&rng, 0, 199);

            test_fill(a, len, seed, k, base);
            test_fill_fast(b, len, seed, k, base);
            ASSERT_TRUE(memcmp(a, b, len) == 0);
            ASSERT_TRUE(test_verify_fast(a, len, seed, k, base) == UINT64_MAX);
            if (len) {
                a[len / 2] ^= 0x10;
                ASSERT_TRUE(test_verify_fast(a, len, seed, k, base) == len / 2);
            }
        }
    }

    for (size_t k = 0; k < NBUFS; k++) {
        bufs[k].p = xu_alloc_buf(bufs[k].cap);
        bufs[k].shadow = xu_alloc_buf(bufs[k].cap);
        xu_fill_guard(bufs[k].p, 0, bufs[k].cap, seed, XU_GUARD_ITER + k);
        memcpy(bufs[k].shadow, bufs[k].p, bufs[k].cap);
    }

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    {
        /* A is registered alone with kind AUTO (the library detects host
         * memory); B1 and B2 together as one handle of two regions. */
        ferry_desc_t da = {(uint64_t)(uintptr_t)bufs[A].p, bufs[A].cap,
                           FERRY_MEM_AUTO, 0};
        ferry_desc_t db[2] = {
            {(uint64_t)(uintptr_t)bufs[B1].p, bufs[B1].cap, FERRY_MEM_HOST, 0},
            {(uint64_t)(uintptr_t)bufs[B2].p, bufs[B2].cap, FERRY_MEM_HOST, 0},
        };

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &da, 1, &mem_a));
        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, db, 2, &mem_b));
    }
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));
    EXPECT_TRUE(strcmp(ferry_peer_name(peer), "loopback-agent") == 0);

    /* A request never posted has no result to report. */
    {
        req_layout_t r = {0};
        ferry_xfer_t *x;

        req_make(&r, &rng, 3, 100, &spaces[0], &spaces[1]);
        x = req_prepare(agent, peer, FERRY_OP_WRITE, &r);
        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_test(x));
        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_wait(x, 0));
        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_wait(x, 1000000));
        /* Nothing was posted, so nothing may have changed. */
        check_all(bufs, NBUFS, &r, "never-posted request", 0);
        ferry_xfer_release(x);
        req_free(&r);
    }

    /*
     * Random rounds: WRITE and READ, A to B and B to A, then B1 to B2 and
     * back within one registration, each request prepared once and posted
     * POSTS_PER_ROUND times with fresh data.
     */
    for (unsigned round = 0; round < ROUNDS + 8; round++) {
        ferry_xfer_op_t op = (round & 1) ? FERRY_OP_READ : FERRY_OP_WRITE;
        unsigned ls = (round >> 1) & 1;
        space_t *sp = round < ROUNDS ? spaces : shared;
        const char *names[2][2] = {{"A", "B"}, {"B1", "B2"}};
        /* One buffer of a side holds the shared rounds' ranges: fewer and
         * smaller, to fit in half of B2. */
        size_t n = (size_t)test_rand_range(&rng, 1, sp == shared ? 12 : 24);
        uint64_t max_len = sp == shared ? 32u << 10 : 64u << 10;
        req_layout_t r = {0};
        ferry_xfer_t *x;
        char what[96];

        snprintf(what, sizeof(what), "round %u (%s, %s -> %s, %zu descriptors)", round,
                 op == FERRY_OP_WRITE ? "WRITE" : "READ", names[sp == shared][ls],
                 names[sp == shared][!ls], n);
        req_make(&r, &rng, n, max_len, &sp[ls], &sp[!ls]);
        x = req_prepare(agent, peer, op, &r);
        for (unsigned p = 0; p < POSTS_PER_ROUND; p++) {
            uint64_t iter = (uint64_t)round * 100 + p + 1;
            ferry_status_t st;

            fill_sources(&r, op, iter);
            apply_to_shadows(&r, op);
            st = ferry_xfer_post(x);
            if (st == FERRY_OK) {
                /* Inline completion promises the bytes are already there,
                 * before any wait. */
                inline_posts++;
                check_all(bufs, NBUFS, &r, what, iter);
            } else {
                async_posts++;
            }
            finish(x, st, what);
            check_all(bufs, NBUFS, &r, what, iter);
        }
        ferry_xfer_release(x);
        req_free(&r);
    }

    /*
     * Re-posting a request in flight must be refused with BUSY and change
     * nothing. Loopback transfers may complete inline (post returns OK),
     * in which case an immediate re-post is a legal new post; a large
     * request is tried several times to catch one in flight.
     */
    for (unsigned attempt = 0; attempt < 16; attempt++) {
        ferry_xfer_op_t op = (attempt & 1) ? FERRY_OP_READ : FERRY_OP_WRITE;
        req_layout_t r = {0};
        ferry_xfer_t *x;
        ferry_status_t st1, st2, stt;
        uint64_t iter = 100000 + attempt;
        char what[64];

        snprintf(what, sizeof(what), "busy attempt %u (%s)", attempt,
                 op == FERRY_OP_WRITE ? "WRITE" : "READ");
        req_make(&r, &rng, 48, 40u << 10, &spaces[0], &spaces[1]);
        x = req_prepare(agent, peer, op, &r);
        fill_sources(&r, op, iter);
        apply_to_shadows(&r, op);
        st1 = ferry_xfer_post(x);
        st2 = ferry_xfer_post(x);
        stt = ferry_xfer_test(x);
        if (st1 == FERRY_IN_PROGRESS) {
            async_posts++;
            if (st2 == FERRY_ERR_BUSY) {
                busy_seen++;
            } else if (st2 != FERRY_OK && st2 != FERRY_IN_PROGRESS) {
                TEST_FAIL_AT_("%s: re-post while in flight returned %d (%s): %s",
                              what, (int)st2, ferry_status_str(st2), ferry_last_error());
            } else {
                /* Legal only if the first post finished in between; the
                 * second post then started a new transfer of the same
                 * bytes. A library that re-posts an unfinished request
                 * would show up in the data check below or under ASan. */
                printf("%s: first post in progress, re-post returned %s "
                       "(first one finished in between)\n",
                       what, ferry_status_str(st2));
            }
        } else if (st1 == FERRY_OK) {
            inline_posts++;
            if (st2 != FERRY_OK && st2 != FERRY_IN_PROGRESS)
                TEST_FAIL_AT_("%s: re-post of a completed request returned %d (%s): %s",
                              what, (int)st2, ferry_status_str(st2), ferry_last_error());
        } else {
            TEST_FAIL_AT_("%s: post returned %d (%s): %s", what, (int)st1,
                          ferry_status_str(st1), ferry_last_error());
        }
        if (stt != FERRY_OK && stt != FERRY_IN_PROGRESS)
            TEST_FAIL_AT_("%s: test while in flight returned %d (%s)", what,
                          (int)stt, ferry_status_str(stt));
        finish(x, st1, what);
        check_all(bufs, NBUFS, &r, what, iter);
        ferry_xfer_release(x);
        req_free(&r);
    }
    printf("test_xfer_loopback: %u posts completed inline, %u in progress, "
           "BUSY seen %u times%s\n",
           inline_posts, async_posts, busy_seen,
           busy_seen ? "" : " (the BUSY path was not reached in loopback)");

    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem_a));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem_b));
    ferry_agent_destroy(agent);
    for (size_t k = 0; k < NBUFS; k++) {
        free(bufs[k].p);
        free(bufs[k].shadow);
    }
    printf("test_xfer_loopback: %.0f ms\n", xu_ms_since(t0));
    return test_finish("test_xfer_loopback");
}
