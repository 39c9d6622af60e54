/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Transfers between two real processes, the way users run ferry: a
 * "target" process registers a large host buffer and hands its metadata
 * blob to an "initiator" process, which prepares WRITE and READ requests
 * against it and posts each one many times. The two talk over a socketpair
 * (the rendezvous store is tested elsewhere), and the second process is this
 * same binary started with fork + exec, so each process starts UCX in a
 * fresh image, as separate programs would. The target is the shared serving
 * target (target.h): the initiator gives it each case's ranges, and it fills
 * them (READ) or checks them (WRITE) on command.
 *
 * Each case is a batch size (1, 7, 1024 and 100 000 descriptors) with
 * random sizes (1 B up to 64 MiB, scaled down as batches grow so each post
 * moves tens of megabytes at most) at random, non-overlapping, unaligned
 * offsets whose address order is shuffled against descriptor order. A case
 * prepares its request once and posts it 100 times (at least 10 when a
 * busy machine makes the case outlast its share of the watchdog's time),
 * with fresh data each time, because "prepare once, post many" is the
 * API's promise and stale or partial data on a re-post is exactly what a
 * user would not notice until a model produced garbage. After every post the side that received the data
 * checks every byte of every destination range and the guard bytes between
 * and around them (and the whole buffer on the last post), and reports the
 * case, iteration, descriptor index and byte offset of any mismatch.
 *
 * Nothing may hang: every wait has a finite timeout, the control socket is
 * read with poll() and a deadline, the target dies with the initiator
 * (PR_SET_PDEATHSIG), and the initiator kills and reaps the target on any
 * failure and on a watchdog alarm.
 *
 * Knobs (for reproducing and debugging, not for CI): FERRY_TEST_SEED replays
 * a run; FERRY_TEST_ITERS changes the post count; FERRY_TEST_CASES is a
 * bit mask of the cases to run (bit c = cases[c]); FERRY_TEST_PASSIVE_TARGET=1
 * makes the target stop driving its agent while it waits (a transport that
 * needs the target's help for one-sided operations then shows up as
 * timeouts), and =2 stops only after the first post of the first case (so
 * connection setup still gets the target's help).
 */
#include "target.h"

#define HOST_CAP (96ull << 20)   /* each side's registered buffer, host runs */
#define GPU_CAP (288ull << 20)   /* the same with GPU memory on either side */
#define WAIT_NS (30ll * 1000 * 1000 * 1000)
#define CTRL_TIMEOUT_MS 60000
#define GUARD_MARGIN 4096        /* bytes checked around a case's window */
#define WATCHDOG_S 280
#define MIN_POSTS 10             /* per case, however busy the machine */

typedef struct xcase {
    size_t n;
    uint64_t max_len;
    ferry_xfer_op_t op;
} xcase_t;

static const xcase_t host_cases[] = {
    {1, 64ull << 20, FERRY_OP_WRITE},     {1, 64ull << 20, FERRY_OP_READ},
    {7, 4ull << 20, FERRY_OP_WRITE},      {7, 4ull << 20, FERRY_OP_READ},
    {1024, 16ull << 10, FERRY_OP_WRITE},  {1024, 16ull << 10, FERRY_OP_READ},
    {100000, 256, FERRY_OP_WRITE},        {100000, 256, FERRY_OP_READ},
};

/* With GPU memory: single transfers up to 256 MiB (the copy engines), a
 * few segments up to 16 MiB (the copy kernel for some, the engines for the
 * longer ones, in auto mode) and batches of 2 to 20 000 segments of 1 B to
 * 1 MiB, the shape of a paged KV cache (the copy kernel). */
static const xcase_t gpu_cases[] = {
    {1, 256ull << 20, FERRY_OP_WRITE},    {1, 256ull << 20, FERRY_OP_READ},
    {7, 16ull << 20, FERRY_OP_WRITE},     {7, 16ull << 20, FERRY_OP_READ},
    {2, 1ull << 20, FERRY_OP_WRITE},      {2, 1ull << 20, FERRY_OP_READ},
    {300, 1ull << 20, FERRY_OP_WRITE},    {300, 1ull << 20, FERRY_OP_READ},
    {1024, 64ull << 10, FERRY_OP_WRITE},  {1024, 64ull << 10, FERRY_OP_READ},
    {20000, 8ull << 10, FERRY_OP_WRITE},  {20000, 8ull << 10, FERRY_OP_READ},
};

/* The run's memory: initiator and target kinds, and what follows. */
static xm_kind_t mem_init = XM_HOST, mem_target = XM_HOST;
static uint64_t CAP = HOST_CAP;
static const xcase_t *cases = host_cases;
static unsigned NCASES = sizeof(host_cases) / sizeof(host_cases[0]);

/* Parses "INITIATOR:TARGET" memory kinds (host, pinned, cuda, vmm). */
static int set_mem(const char *spec)
{
    char a[16], b[16];

    if (sscanf(spec, "%15[a-z]:%15[a-z]", a, b) != 2 || xm_parse(a, &mem_init) != 0 ||
        xm_parse(b, &mem_target) != 0) {
        fprintf(stderr, "--mem wants INITIATOR:TARGET, each host, pinned, cuda or "
                        "vmm (got '%s')\n", spec);
        return -1;
    }
    if (xm_is_gpu(mem_init) || xm_is_gpu(mem_target)) {
        CAP = GPU_CAP;
        cases = gpu_cases;
        NCASES = sizeof(gpu_cases) / sizeof(gpu_cases[0]);
    }
    return 0;
}

static uint64_t seed;
static xt_target_t tgt;
/* --backend: the backend every request is forced to (0: the library's
 * choice); "staged" moves host memory through the bounce buffers too. */
static ferry_backend_t backend;
static long passive_target; /* FERRY_TEST_PASSIVE_TARGET */
static unsigned busy_checked, busy_seen; /* in-flight re-posts tried / refused */

static const char *op_name(ferry_xfer_op_t op)
{
    return op == FERRY_OP_WRITE ? "WRITE" : "READ";
}

/* A case's layout, from the seed alone, so that a run can be replayed. */
static void case_layout(unsigned c, xu_layout_t *l)
{
    test_rng_t rng = {seed ^ ((uint64_t)(c + 1) * 0xA24BAED4963EE407ull)};

    if (xu_layout_make(l, &rng, cases[c].n, cases[c].max_len, CAP, CAP) != 0) {
        fprintf(stderr, "case %u: layout does not fit\n", c);
        exit(1);
    }
}

/* Iteration numbers are unique across cases, so data left over from an
 * earlier case can never pass for the current one. */
static uint64_t iter_id(unsigned c, uint64_t i)
{
    return (uint64_t)(c + 1) * 1000000 + i;
}

static void case_name(unsigned c, char *out, size_t len, const char *who)
{
    snprintf(out, len, "%s: case %u (%s, %zu x 1..%" PRIu64 " B)", who, c,
             op_name(cases[c].op), cases[c].n, cases[c].max_len);
}

/* The part of a destination checked after one iteration: the window and a
 * margin around it on most iterations, the whole buffer on the last. */
static void check_span(const xu_side_t *s, int last, uint64_t *lo_p, uint64_t *hi_p)
{
    *lo_p = last ? 0 : s->lo > GUARD_MARGIN ? s->lo - GUARD_MARGIN : 0;
    *hi_p = last ? CAP : s->hi + GUARD_MARGIN < CAP ? s->hi + GUARD_MARGIN : CAP;
}

/* The initiator's own check of a READ's destination. */
static size_t check_iteration(xm_buf_t *xb, const xu_layout_t *l,
                              const xu_side_t *s, unsigned c, uint64_t i,
                              int last, const char *what)
{
    uint64_t lo, hi;
    char where[160];

    check_span(s, last, &lo, &hi);
    snprintf(where, sizeof(where), "%s, iteration %" PRIu64, what, i);
    xm_from_dev(xb, lo, hi);
    return xu_check_dest(xb->host, l, s, lo, hi, seed, iter_id(c, i),
                         XU_GUARD_ITER + c, where);
}

/* The target's check of a WRITE's destination. */
static long check_target(const xu_layout_t *l, unsigned c, uint64_t i, int last)
{
    uint64_t lo, hi;
    char where[160];

    check_span(&l->remote, last, &lo, &hi);
    case_name(c, where, sizeof(where), "target");
    snprintf(where + strlen(where), sizeof(where) - strlen(where),
             ", iteration %" PRIu64, i);
    return xt_check(&tgt, 0, lo, hi, iter_id(c, i), XU_GUARD_ITER + c, where);
}

/* ------------------------------------------------------------------------ */
/* Initiator                                                                */
/* ------------------------------------------------------------------------ */

static void on_watchdog(int sig)
{
    static const char text[] = "test_xfer_2proc: watchdog expired; killing the target\n";

    (void)sig;
    if (write(2, text, sizeof(text) - 1) < 0) {
        /* Nothing more to do in a signal handler. */
    }
    if (tgt.pid > 0)
        kill(tgt.pid, SIGKILL);
    _exit(1);
}

/* Ends the test after a failure that leaves the two sides out of step. */
static void abort_test(const char *why)
{
    fprintf(stderr, "test_xfer_2proc: %s; killing the target\n", why);
    xt_kill(&tgt);
    exit(1);
}

typedef struct case_stats {
    double prep_ms, xfer_ms_total, xfer_ms_max, case_ms;
    uint64_t iters;
} case_stats_t;

/*
 * One post of the request and its completion. The first post of a case also
 * checks the in-flight rules: re-posting must say BUSY, testing must say
 * IN_PROGRESS or OK.
 */
static double post_and_wait(ferry_xfer_t *x, const char *what,
                            uint64_t i, int check_busy, uint64_t bytes)
{
    uint64_t t0 = xu_now_ns();
    ferry_status_t st = ferry_xfer_post(x), st2;

    if (st != FERRY_OK && st != FERRY_IN_PROGRESS) {
        TEST_FAIL_AT_("%s, iteration %" PRIu64 ": post returned %d (%s): %s", what, i,
                      (int)st, ferry_status_str(st), ferry_last_error());
        abort_test("post failed");
    }
    if (check_busy && st == FERRY_IN_PROGRESS) {
        busy_checked++;
        st2 = ferry_xfer_post(x);
        if (st2 == FERRY_ERR_BUSY) {
            busy_seen++;
        } else {
            /* Legal only if the first post had finished in between, which
             * a transfer of megabytes cannot do in the microseconds
             * between two calls: there it means a request was posted
             * twice while in flight. */
            if ((st2 == FERRY_OK || st2 == FERRY_IN_PROGRESS) && bytes < (4u << 20))
                printf("%s: re-post right after an in-progress post returned %s, "
                       "not BUSY (the first one finished in between)\n",
                       what, ferry_status_str(st2));
            else
                TEST_FAIL_AT_("%s: re-post while in flight returned %d (%s), "
                              "expected BUSY: %s",
                              what, (int)st2, ferry_status_str(st2), ferry_last_error());
        }
        st2 = ferry_xfer_test(x);
        if (st2 != FERRY_IN_PROGRESS && st2 != FERRY_OK)
            TEST_FAIL_AT_("%s: test while in flight returned %d (%s): %s", what,
                          (int)st2, ferry_status_str(st2), ferry_last_error());
    }
    st = ferry_xfer_wait(x, WAIT_NS);
    if (st != FERRY_OK) {
        TEST_FAIL_AT_("%s, iteration %" PRIu64 ": wait returned %d (%s) after %.0f ms: %s",
                      what, i, (int)st, ferry_status_str(st), xu_ms_since(t0),
                      ferry_last_error());
        abort_test("transfer did not complete");
    }
    return xu_ms_since(t0);
}

static void run_case(ferry_agent_t *agent, ferry_peer_t *peer,
                     xm_buf_t *xb, uint64_t rbase, unsigned c, uint64_t iters,
                     case_stats_t *cs)
{
    const xcase_t *k = &cases[c];
    xu_layout_t l;
    ferry_desc_t *ld, *rd;
    ferry_xfer_t *x = NULL;
    uint64_t t_case = xu_now_ns(), t0;
    char what[128];

    memset(cs, 0, sizeof(*cs));
    case_name(c, what, sizeof(what), "initiator");
    case_layout(c, &l);
    ld = xu_xcalloc(l.n, sizeof(*ld));
    rd = xu_xcalloc(l.n, sizeof(*rd));
    for (size_t i = 0; i < l.n; i++) {
        ld[i] = xm_desc(mem_init, xb->addr + l.local.off[i], l.len[i]);
        rd[i] = xm_target_desc(mem_target, rbase + l.remote.off[i], l.len[i]);
    }
    t0 = xu_now_ns();
    {
        ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                  .backend = backend};

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, k->op, ld, l.n, peer, rd, l.n,
                                               backend ? &xp : NULL, &x));
    }
    cs->prep_ms = xu_ms_since(t0);
    free(ld);
    free(rd);

    /* The target gets its side of the layout; a WRITE lands on the case's
     * guard pattern there, a READ on it here. */
    if (xt_layout(&tgt, 0, &l, &l.remote) != 0)
        abort_test("the target did not take the layout");
    if (k->op == FERRY_OP_WRITE) {
        if (xt_pattern(&tgt, 0, 0, CAP, XU_GUARD_ITER + c) != 0)
            abort_test("the target did not fill its guard pattern");
    } else {
        xu_fill_guard(xb->host, 0, CAP, seed, XU_GUARD_ITER + c);
        xm_to_dev(xb, 0, CAP);
    }

    for (uint64_t i = 1; i <= iters; i++) {
        /* A machine busy with other work may make a case outlast its share
         * of the watchdog's time: it then ends after MIN_POSTS posts, the
         * last one checked over the whole buffer as always. */
        int last = (i == iters) || (i >= MIN_POSTS && xu_ms_since(t_case) >
                                    WATCHDOG_S * 1000.0 / 2 / NCASES);
        double ms;

        /* FERRY_TEST_PASSIVE_TARGET=2: the target stops driving its agent
         * after the first transfer, which tells connection setup apart
         * from the transfers. */
        if (i == 2 && passive_target == 2) {
            if (xt_drive(&tgt, 0) != 0)
                abort_test("control socket failed");
            passive_target = 1;
        }
        if (k->op == FERRY_OP_WRITE) {
            long bad;

            xu_fill_ranges(xb->host, &l, &l.local, seed, iter_id(c, i));
            xm_to_dev(xb, l.local.lo, l.local.hi);
            ms = post_and_wait(x, what, i, i == 1, l.total);
            if ((bad = check_target(&l, c, i, last)) < 0)
                abort_test("control socket failed");
            if (bad != 0) {
                TEST_FAIL_AT_("%s, iteration %" PRIu64 ": the target found %ld"
                              " bad ranges or gaps (details above)",
                              what, i, bad);
                break;
            }
        } else {
            if (xt_fill(&tgt, 0, iter_id(c, i)) != 0)
                abort_test("control socket failed");
            ms = post_and_wait(x, what, i, i == 1, l.total);
            if (check_iteration(xb, &l, &l.local, c, i, last, what) != 0) {
                TEST_FAIL_AT_("%s, iteration %" PRIu64 ": READ data wrong (details above)",
                              what, i);
                break;
            }
        }
        cs->iters++;
        cs->xfer_ms_total += ms;
        if (ms > cs->xfer_ms_max)
            cs->xfer_ms_max = ms;
        if (last)
            break;
    }
    ferry_xfer_release(x);
    cs->case_ms = xu_ms_since(t_case);
    printf("  case %u %-5s n=%-6zu bytes/post=%-10" PRIu64 " prepare %8.2f ms  "
           "post+wait avg %8.3f ms max %8.3f ms  (%.2f GB/s)  case %.2f s, %" PRIu64
           " posts\n",
           c, op_name(k->op), l.n, l.total, cs->prep_ms,
           cs->iters ? cs->xfer_ms_total / (double)cs->iters : 0.0, cs->xfer_ms_max,
           cs->xfer_ms_total > 0 ? (double)l.total * (double)cs->iters /
                                       (cs->xfer_ms_total * 1e6)
                                 : 0.0,
           cs->case_ms / 1000.0, cs->iters);
    fflush(stdout);
    xu_layout_free(&l);
}

/* The peer's GPU memory through UCX, which (as Debian builds it) has no
 * CUDA support: prepare must refuse it, naming UCX, not fail later. */
static void forced_ucx(ferry_agent_t *agent, ferry_peer_t *peer, xm_buf_t *xb,
                       uint64_t rbase)
{
    ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                              .backend = FERRY_BACKEND_UCX};
    ferry_desc_t ld = xm_desc(mem_init, xb->addr + 1, 4096);
    ferry_desc_t rd = xm_target_desc(mem_target, rbase + 3, 4096);
    ferry_xfer_t *x = NULL;

    EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &ld, 1,
                                                        peer, &rd, 1, &xp, &x));
    EXPECT_ERR_HAS("ucx");
    EXPECT_TRUE(x == NULL);
    printf("forcing UCX for GPU memory: %s\n", ferry_last_error());
}

static int initiator_main(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "xfer-initiator"};
    ferry_agent_t *agent = NULL;
    ferry_mem_t *mem = NULL;
    ferry_peer_t *peer = NULL;
    xm_buf_t xb;
    char memspec[40];
    uint64_t iters = (uint64_t)xu_env_long("FERRY_TEST_ITERS", 100);
    uint64_t t_all = xu_now_ns();
    unsigned long case_mask = (unsigned long)xu_env_long("FERRY_TEST_CASES", 0xfff);
    xt_opts_t to = {.name = "xfer-target", .nbuf = 1};
    uint64_t rbase;

    /* Line-buffered, so progress survives a watchdog exit. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    seed = xu_seed(0x2b70c5eedull);
    snprintf(memspec, sizeof(memspec), "%s:%s", xm_name(mem_init), xm_name(mem_target));
    printf("test_xfer_2proc: seed %" PRIu64 " (FERRY_TEST_SEED=%" PRIu64
           " replays it), %" PRIu64 " posts per case, cases 0x%lx, memory %s\n",
           seed, seed, iters, case_mask, memspec);
    /* Without a GPU, GPU runs are skipped; the check loads CUDA here, which
     * the target, started with exec, does not inherit. */
    if ((xm_is_gpu(mem_init) || xm_is_gpu(mem_target) || mem_init == XM_PINNED ||
         mem_target == XM_PINNED) && xm_cuda() == NULL)
        return 77;
    if (iters < 1 || iters > 999999) {
        fprintf(stderr, "FERRY_TEST_ITERS must be 1..999999\n");
        return 1;
    }
    /* The target is started before this process touches UCX. */
    passive_target = xu_env_long("FERRY_TEST_PASSIVE_TARGET", 0);
    to.drive = passive_target != 1;
    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){mem_target, CAP, 0, 0};
    if (xt_start(&tgt, &to) != 0)
        return 1;
    signal(SIGALRM, on_watchdog);
    alarm(WATCHDOG_S);

    if (xm_alloc(&xb, mem_init, CAP) != 0)
        abort_test("cannot allocate the initiator's buffer");
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    {
        ferry_desc_t d = xm_desc(mem_init, xb.addr, CAP);

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    }
    tgt.timeout_ms = CTRL_TIMEOUT_MS;
    if (xt_connect(&tgt, agent, &peer) != 0 || tgt.buf[0].reg != CAP)
        abort_test("no valid hello from the target");
    rbase = tgt.buf[0].addr;
    EXPECT_TRUE(strcmp(ferry_peer_name(peer), "xfer-target") == 0);

    for (unsigned c = 0; c < NCASES; c++) {
        case_stats_t cs;

        if (!(case_mask >> c & 1))
            continue;
        run_case(agent, peer, &xb, rbase, c, iters, &cs);
    }
    if (xm_is_gpu(mem_target))
        forced_ucx(agent, peer, &xb, rbase);

    if (xt_quit(&tgt) != 0)
        TEST_FAIL_AT_("the target exited badly");
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    xm_free(&xb);
    printf("test_xfer_2proc: re-post in flight refused with BUSY %u of %u times "
           "(cases whose first post completed inline are not counted)\n",
           busy_seen, busy_checked);
    printf("test_xfer_2proc: %.2f s in all\n", xu_ms_since(t_all) / 1000.0);
    return test_finish("test_xfer_2proc");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && strcmp(argv[i], "--mem") == 0) {
            if (set_mem(argv[i + 1]) != 0)
                return 1;
        } else if (i + 1 < argc && strcmp(argv[i], "--backend") == 0 &&
                   strcmp(argv[i + 1], "staged") == 0) {
            backend = FERRY_BACKEND_STAGED;
        } else {
            fprintf(stderr, "usage: %s [--mem INITIATOR:TARGET] [--backend staged]\n",
                    argv[0]);
            return 1;
        }
    }
    return initiator_main();
}
