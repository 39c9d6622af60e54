/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A peer that dies must not take its users down with it. ferry promises
 * that requests to a dead peer finish with FERRY_ERR_PEER_LOST within a
 * bounded time, that nothing hangs, and that other peers keep working;
 * a runtime that moves KV caches between hundreds of processes depends on
 * exactly that when one of them crashes.
 *
 * The initiator (this process) starts two target processes (the shared
 * serving target, target.h), loads both blobs, and proves the connections work
 * with checked transfers. Then:
 *  1. target 0 is killed with SIGKILL while idle and reaped; the next posts
 *     and waits on its requests must report PEER_LOST (an error, never a
 *     false OK: a dead process cannot have received a WRITE) within
 *     the bound (30 s), and a request prepared afterwards must fail too;
 *     target 1 must still move correct data;
 *  2. target 1 is killed while large requests to it are in flight; waiting
 *     on them must end (OK if they finished first, else PEER_LOST) within
 *     the bound, and the next post must fail;
 *  3. forgetting the dead peers, deregistering and destroying the agent
 *     must return promptly.
 * The statuses and latencies seen are printed, so the lead can see what
 * the library reports, not just whether it passed.
 */
#include "target.h"

#define NTARGETS 2
#define TCAP (48ull << 20)     /* each target's buffer */
#define LCAP (48ull << 20)     /* the initiator's buffer */
#define BIG (32ull << 20)      /* the in-flight WRITE in phase 2 */
#define MANY 10000             /* descriptors of the other in-flight WRITE */
#define SMALL_N 8
#define SMALL_LEN 4096
#define DEATH_BOUND_DEFAULT_S 30
#define SLICE_NS (5ll * 1000 * 1000 * 1000)
#define CTRL_TIMEOUT_MS 60000
#define READ_ITER 7            /* the pattern a target's buffer holds */
#define WBACK_OFF (2u << 20)   /* where the small WRITE's bytes are read back */

static uint64_t seed;
static xt_target_t targets[NTARGETS];
/* How long a dead peer may take to show; FERRY_TEST_DEATH_BOUND_S changes
 * it for debugging. */
static long death_bound_s = DEATH_BOUND_DEFAULT_S;
#define DEATH_BOUND_NS ((uint64_t)death_bound_s * 1000000000ull)

static void on_watchdog(int sig)
{
    static const char text[] = "test_xfer_peer_death: watchdog expired (a call hung)\n";

    (void)sig;
    if (write(2, text, sizeof(text) - 1) < 0) {
        /* Nothing more to do in a signal handler. */
    }
    for (unsigned t = 0; t < NTARGETS; t++)
        if (targets[t].pid > 0)
            kill(targets[t].pid, SIGKILL);
    _exit(1);
}

static void fail_out(const char *why)
{
    fprintf(stderr, "test_xfer_peer_death: %s\n", why);
    for (unsigned t = 0; t < NTARGETS; t++)
        xt_kill(&targets[t]);
    exit(1);
}

static void kill_target(unsigned t)
{
    /* Reaped, so the process is certainly gone when the checks start. */
    int status = xt_kill(&targets[t]);

    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

typedef struct tgt {
    ferry_peer_t *peer;
    uint64_t rbase;
    ferry_xfer_t *w_small, *r_small, *w_big, *w_many;
    ferry_xfer_t *r_wback; /* reads back what w_small wrote */
} tgt_t;

static ferry_xfer_t *prepare(ferry_agent_t *agent, ferry_xfer_op_t op,
                             ferry_peer_t *peer, const ferry_desc_t *ld,
                             const ferry_desc_t *rd, size_t n)
{
    ferry_xfer_t *x = NULL;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, ld, n, peer, rd, n, NULL, &x));
    return x;
}

/* Posts and waits; returns the final status (never TIMEOUT unless the
 * whole bound passed). */
static ferry_status_t post_wait(ferry_xfer_t *x, double *ms_p)
{
    uint64_t t0 = xu_now_ns();
    ferry_status_t st = ferry_xfer_post(x);

    if (st == FERRY_OK || st == FERRY_IN_PROGRESS)
        while ((st = ferry_xfer_wait(x, SLICE_NS)) == FERRY_ERR_TIMEOUT &&
               xu_now_ns() - t0 < DEATH_BOUND_NS)
            ;
    if (ms_p)
        *ms_p = xu_ms_since(t0);
    return st;
}

/* The small READ: remote offsets 4 KiB apart from the start, into local
 * offsets at the start of the initiator's buffer. */
static int check_small_read(const uint8_t *lbuf)
{
    for (unsigned i = 0; i < SMALL_N; i++) {
        uint64_t r = test_verify_fast(lbuf + i * SMALL_LEN * 2, SMALL_LEN, seed,
                                      READ_ITER, (uint64_t)i * SMALL_LEN * 3);

        if (r != UINT64_MAX) {
            TEST_FAIL_AT_("small READ: descriptor %u byte %" PRIu64 " wrong", i, r);
            return -1;
        }
    }
    return 0;
}

/* What the small WRITE put on a target (the small READ's bytes, from the
 * start of lbuf), read back into a cleared area and checked. */
static void check_small_write(ferry_xfer_t *r_wback, uint8_t *lbuf, const char *what)
{
    memset(lbuf + WBACK_OFF, 0, 1u << 20);
    EXPECT_ST(FERRY_OK, post_wait(r_wback, NULL));
    if (check_small_read(lbuf + WBACK_OFF) != 0)
        fail_out(what);
}

/*
 * After a peer's death: posts x (again and again, since a transport may
 * notice the death only on use) until an error comes back or the bound
 * passes. Returns the error, printing what was seen on the way.
 */
static ferry_status_t until_error(ferry_xfer_t *x, const char *what)
{
    uint64_t t0 = xu_now_ns();
    unsigned oks = 0, posts = 0;
    ferry_status_t st = FERRY_OK;

    while (xu_now_ns() - t0 < DEATH_BOUND_NS) {
        posts++;
        st = post_wait(x, NULL);
        if (st == FERRY_OK) {
            oks++;
            continue;
        }
        break;
    }
    printf("  %s: %s (%d) after %.1f ms and %u post(s); detail: %s\n", what,
           ferry_status_str(st), (int)st, xu_ms_since(t0), posts, ferry_last_error());
    if (oks)
        TEST_FAIL_AT_("%s: %u post(s) to a dead peer reported OK before the error "
                      "(a completion the peer cannot have seen)",
                      what, oks);
    return st;
}

int main(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "death-initiator"};
    ferry_agent_t *agent = NULL;
    ferry_mem_t *mem = NULL;
    uint8_t *lbuf;
    tgt_t tg[NTARGETS];
    char tnames[NTARGETS][32];
    ferry_desc_t ld[SMALL_N], rd[SMALL_N];
    ferry_desc_t *mld, *mrd;
    uint64_t t0;
    ferry_status_t st;

    /* Line-buffered, so what was seen survives a watchdog exit. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    death_bound_s = xu_env_long("FERRY_TEST_DEATH_BOUND_S", DEATH_BOUND_DEFAULT_S);
    seed = xu_seed(0xdead5eedull);
    printf("test_xfer_peer_death: seed %" PRIu64 "\n", seed);
    memset(tg, 0, sizeof(tg));
    /* Both targets start before this process touches UCX. They drive their
     * agents while they wait: the test kills them, never they themselves. */
    for (unsigned t = 0; t < NTARGETS; t++) {
        xt_opts_t to = {.name = tnames[t], .drive = 1, .seed = seed, .nbuf = 1,
                        .buf = {{XM_HOST, TCAP, 0, 0}}};

        snprintf(tnames[t], sizeof(tnames[t]), "death-target-%u", t);
        if (xt_start(&targets[t], &to) != 0)
            fail_out("cannot start a target");
    }
    signal(SIGALRM, on_watchdog);
    /* Phases 1 and 2 wait at most four bounds; the alarm is reset before
     * the teardown. */
    alarm((unsigned)(4 * death_bound_s + 30));

    lbuf = xu_alloc_buf(LCAP);
    memset(lbuf, 0, LCAP);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    {
        ferry_desc_t d = {(uint64_t)(uintptr_t)lbuf, LCAP, FERRY_MEM_HOST, 0};

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    }
    mld = xu_xcalloc(MANY, sizeof(*mld));
    mrd = xu_xcalloc(MANY, sizeof(*mrd));
    for (unsigned t = 0; t < NTARGETS; t++) {
        uint64_t ra;

        if (xt_connect(&targets[t], agent, &tg[t].peer) != 0 ||
            targets[t].buf[0].reg != TCAP)
            fail_out("no valid hello from a target");
        /* The target's buffer holds pattern READ_ITER, for the READs. */
        if (xt_pattern(&targets[t], 0, 0, TCAP, READ_ITER) != 0)
            fail_out("the target did not fill its buffer");
        ra = tg[t].rbase = targets[t].buf[0].addr;

        /* Small requests: local ranges 8 KiB apart, remote ones 12 KiB
         * apart, past the first MiB of the target for the WRITE so the
         * READ's source pattern stays intact. */
        for (unsigned i = 0; i < SMALL_N; i++) {
            ld[i] = (ferry_desc_t){(uint64_t)(uintptr_t)(lbuf + i * SMALL_LEN * 2),
                                   SMALL_LEN, FERRY_MEM_HOST, 0};
            rd[i] = (ferry_desc_t){ra + (1u << 20) + (uint64_t)i * SMALL_LEN * 3,
                                   SMALL_LEN, FERRY_MEM_HOST, 0};
        }
        tg[t].w_small = prepare(agent, FERRY_OP_WRITE, tg[t].peer, ld, rd, SMALL_N);
        for (unsigned i = 0; i < SMALL_N; i++)
            rd[i].addr = ra + (uint64_t)i * SMALL_LEN * 3;
        tg[t].r_small = prepare(agent, FERRY_OP_READ, tg[t].peer, ld, rd, SMALL_N);
        for (unsigned i = 0; i < SMALL_N; i++) {
            ld[i].addr = (uint64_t)(uintptr_t)(lbuf + WBACK_OFF + i * SMALL_LEN * 2);
            rd[i].addr = ra + (1u << 20) + (uint64_t)i * SMALL_LEN * 3;
        }
        tg[t].r_wback = prepare(agent, FERRY_OP_READ, tg[t].peer, ld, rd, SMALL_N);
        ld[0] = (ferry_desc_t){(uint64_t)(uintptr_t)(lbuf + (4u << 20)), BIG,
                               FERRY_MEM_HOST, 0};
        rd[0] = (ferry_desc_t){ra + (4u << 20), BIG, FERRY_MEM_HOST, 0};
        tg[t].w_big = prepare(agent, FERRY_OP_WRITE, tg[t].peer, ld, rd, 1);
        for (unsigned i = 0; i < MANY; i++) {
            mld[i] = (ferry_desc_t){(uint64_t)(uintptr_t)(lbuf + (40u << 20) + i * 200u),
                                    100, FERRY_MEM_HOST, 0};
            mrd[i] = (ferry_desc_t){ra + (40u << 20) + i * 300u, 100, FERRY_MEM_HOST, 0};
        }
        tg[t].w_many = prepare(agent, FERRY_OP_WRITE, tg[t].peer, mld, mrd, MANY);
    }

    /* Every connection works before anything dies, or the checks below
     * would prove nothing. */
    for (unsigned t = 0; t < NTARGETS; t++) {
        memset(lbuf, 0, 1u << 20);
        ASSERT_ST(FERRY_OK, post_wait(tg[t].r_small, NULL));
        if (check_small_read(lbuf) != 0)
            fail_out("READ before any death moved wrong data");
        ASSERT_ST(FERRY_OK, post_wait(tg[t].w_small, NULL));
        check_small_write(tg[t].r_wback, lbuf, "WRITE before any death moved wrong data");
        ASSERT_ST(FERRY_OK, post_wait(tg[t].w_big, NULL));
        ASSERT_ST(FERRY_OK, post_wait(tg[t].w_many, NULL));
    }

    /* Phase 1: target 0 dies while idle. */
    printf("phase 1: SIGKILL target 0 while idle\n");
    kill_target(0);
    st = until_error(tg[0].w_small, "WRITE to the dead target");
    EXPECT_ST(FERRY_ERR_PEER_LOST, st);
    /* A finished request's result stays until the next post. */
    if (st != FERRY_ERR_TIMEOUT)
        EXPECT_ST(st, ferry_xfer_test(tg[0].w_small));
    st = until_error(tg[0].r_small, "READ from the dead target");
    EXPECT_ST(FERRY_ERR_PEER_LOST, st);
    {
        ferry_xfer_t *x = NULL;

        for (unsigned i = 0; i < SMALL_N; i++)
            rd[i] = (ferry_desc_t){tg[0].rbase + (uint64_t)i * SMALL_LEN * 3, SMALL_LEN,
                                   FERRY_MEM_HOST, 0};
        for (unsigned i = 0; i < SMALL_N; i++)
            ld[i] = (ferry_desc_t){(uint64_t)(uintptr_t)(lbuf + i * SMALL_LEN * 2),
                                   SMALL_LEN, FERRY_MEM_HOST, 0};
        st = ferry_xfer_prepare(agent, FERRY_OP_READ, ld, SMALL_N, tg[0].peer, rd,
                                SMALL_N, NULL, &x);
        printf("  prepare against the dead target: %s\n", ferry_status_str(st));
        if (st == FERRY_OK) {
            st = until_error(x, "fresh READ request to the dead target");
            EXPECT_ST(FERRY_ERR_PEER_LOST, st);
            ferry_xfer_release(x);
        } else {
            EXPECT_ST(FERRY_ERR_PEER_LOST, st);
        }
    }
    /* The other peer is unaffected. */
    for (unsigned k = 0; k < 3; k++) {
        memset(lbuf, 0, 1u << 20);
        EXPECT_ST(FERRY_OK, post_wait(tg[1].r_small, NULL));
        if (check_small_read(lbuf) != 0)
            fail_out("the surviving target's READ moved wrong data");
        EXPECT_ST(FERRY_OK, post_wait(tg[1].w_small, NULL));
        check_small_write(tg[1].r_wback, lbuf, "the surviving target's WRITE moved "
                          "wrong data");
    }

    /* Phase 2: target 1 dies with requests in flight. */
    printf("phase 2: SIGKILL target 1 with a %llu MiB WRITE and a %u-descriptor "
           "WRITE in flight\n",
           (unsigned long long)(BIG >> 20), MANY);
    {
        ferry_xfer_t *inflight[2] = {tg[1].w_big, tg[1].w_many};
        const char *names[2] = {"in-flight big WRITE", "in-flight many-descriptor WRITE"};
        ferry_status_t posted[2];

        for (unsigned k = 0; k < 2; k++) {
            posted[k] = ferry_xfer_post(inflight[k]);
            if (posted[k] != FERRY_OK && posted[k] != FERRY_IN_PROGRESS)
                TEST_FAIL_AT_("%s: post returned %s: %s", names[k],
                              ferry_status_str(posted[k]), ferry_last_error());
        }
        kill_target(1);
        for (unsigned k = 0; k < 2; k++) {
            if (posted[k] != FERRY_OK && posted[k] != FERRY_IN_PROGRESS)
                continue;
            t0 = xu_now_ns();
            while ((st = ferry_xfer_wait(inflight[k], SLICE_NS)) == FERRY_ERR_TIMEOUT &&
                   xu_now_ns() - t0 < DEATH_BOUND_NS)
                ;
            printf("  %s (post said %s): wait gave %s after %.1f ms; detail: %s\n",
                   names[k], ferry_status_str(posted[k]), ferry_status_str(st),
                   xu_ms_since(t0), st == FERRY_OK ? "" : ferry_last_error());
            if (st != FERRY_OK && st != FERRY_ERR_PEER_LOST)
                TEST_FAIL_AT_("%s: wait after the peer died gave %d (%s), expected "
                              "OK (finished first) or PEER_LOST: %s",
                              names[k], (int)st, ferry_status_str(st), ferry_last_error());
        }
    }
    st = until_error(tg[1].w_small, "WRITE after the in-flight death");
    EXPECT_ST(FERRY_ERR_PEER_LOST, st);

    /* Phase 3: teardown with dead peers must not block; a release that
     * waits forever on a request the library lost track of ends the test
     * through the watchdog instead of through CTest's timeout. */
    alarm((unsigned)death_bound_s);
    t0 = xu_now_ns();
    for (unsigned t = 0; t < NTARGETS; t++) {
        ferry_xfer_release(tg[t].w_small);
        ferry_xfer_release(tg[t].r_small);
        ferry_xfer_release(tg[t].r_wback);
        ferry_xfer_release(tg[t].w_big);
        ferry_xfer_release(tg[t].w_many);
        ferry_peer_forget(tg[t].peer);
    }
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    printf("phase 3: teardown took %.1f ms\n", xu_ms_since(t0));
    EXPECT_TRUE(xu_ms_since(t0) < (double)death_bound_s * 1000.0);
    free(mld);
    free(mrd);
    free(lbuf);
    return test_finish("test_xfer_peer_death");
}
