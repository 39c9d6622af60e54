/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Communicator tests, one executable in several roles (CTest runs each as
 * its own test, see tests/CMakeLists.txt):
 *
 *   ring          a rank of the ring test, started by ferry-run -n N: each
 *                 rank registers random data, exchanges, WRITEs into rank
 *                 (r+1)%N and READs from rank (r-1+N)%N at random offsets
 *                 and lengths, and checks every byte (and the guard bytes
 *                 around them); then again after registering a second
 *                 buffer, and a third exchange in which only the even ranks
 *                 changed must load only their blobs. Collectives that
 *                 succeed, rank 0 coming late to them so that the others
 *                 wait through several slices, leave ferry_last_error()
 *                 as it was.
 *   fail CASE     a launcher: starts 4 ranks of this binary (role "rank")
 *                 with a fault injected in rank 2, waits for all under a
 *                 hard deadline, and checks what each rank saw (its exit
 *                 code encodes the status it got and whether the detail
 *                 text named the right rank and reason) and that no process
 *                 is left. CASE is corrupt (rank 2's blob is damaged),
 *                 abort (rank 2 aborts mid-exchange), kill (rank 2 is
 *                 SIGKILLed before the exchange's barrier), store (the
 *                 store process is killed), timeout (rank 2 never comes to
 *                 a barrier), thread (a second thread of rank 2 aborts
 *                 while its first waits in a barrier that rank 3 is late
 *                 to). In all but "store", rank 0 hosts the store.
 *   env           resolution of rank, size and store from each launcher's
 *                 variables, and the errors for conflicting or bad ones.
 *   api           one rank in process: a world of one, NULL arguments, a
 *                 second claim of a rank, garbage in the failure record and
 *                 abort keys, and a rank's own abort.
 *   stall         a world of one on a ferry-store process that is stopped
 *                 for a second during a barrier and an exchange: both end
 *                 OK within their deadline; then stopped for good: a
 *                 barrier and an exchange with a 2 s deadline fail by it
 *                 (within 8 s), though the store connection's limit is
 *                 60 s.
 *   stall4        a launcher: 4 ranks (role "rank stall") loop on
 *                 collectives while a ferry-store process is stopped for
 *                 1 s (all OK), then for 12 s (each ends by its deadline
 *                 with an error naming the store, while it is still
 *                 stopped); after it resumes the communicator is lost on
 *                 every rank (PEER_LOST), a new one works, and an abort
 *                 from a second thread of rank 2 reaches every waiting
 *                 rank within 1 s.
 *
 * With "etcd" after "fail CASE" or "stall", the store is an etcd member
 * that the test starts (tests/lib/etcd.c; exit 77 without etcd) instead of
 * a ferry-store process or rank 0's store, and in the "store" case that
 * member is killed. "fail failover etcd" runs 4 ranks against three etcd
 * members and kills the one every rank talks to while they allgather:
 * every rank's collectives go on (each part checked) and end OK.
 * "etcd-ring N" starts one and runs
 * "ferry-run -n N --etcd URL -- test_comm ring" against it. "etcd-late":
 * a world of one joins before its etcd member is up (started 5 s later,
 * past the first renewal of the job's lease): it joins and works.
 * "etcd-garbage": the etcd store's handle on keys that hold what ferry
 * never writes (a counter past int64, a lease key without a lease ID):
 * typed errors naming the key. "etcd-outage": a wait already longer than
 * the store's retry time meets a 1.5 s outage of the cluster (stopped):
 * it is tried again and ends OK.
 *
 * A watchdog alarm turns any hang into a failure.
 */
#include "xfer_util.h"

#include <pthread.h>

#include "comm/comm.h"
#include "comm/kv.h"
#include "lib/etcd.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define TMO (60LL * 1000000000LL)
#define NFAIL 4
#define VICTIM 2
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* ------------------------------------------------------------------------ */
/* Ring                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Each rank's buffer has three parts: src (its own random data, which the
 * next rank READs and this rank WRITEs from), inbox (the previous rank
 * WRITEs into it) and landing (this rank READs into it). Inbox and landing
 * hold guard bytes except where a transfer just put data.
 */
typedef struct ring_buf {
    uint8_t *p;
    uint64_t part; /* bytes per part */
    ferry_mem_t *mem;
    uint64_t addr[64], parts[64]; /* every rank's buffer (allgather) */
} ring_buf_t;

static uint64_t rank_seed(int r, int which)
{
    return 0xC0FFEE00ull + (uint64_t)r * 1000 + (uint64_t)which;
}

/* Registers a buffer (unless part is 0) and learns everyone's. */
static void ring_register(ferry_comm_t *comm, ferry_agent_t *agent,
                          ring_buf_t *b, uint64_t part, int which)
{
    int me = ferry_comm_rank(comm), n = ferry_comm_size(comm);
    void *vals[64];
    size_t lens[64];
    uint64_t mine[2] = {0, part};

    ASSERT_TRUE(n <= 64);
    b->part = part;
    b->p = NULL;
    if (part > 0) {
        b->p = xu_alloc_buf(3 * part);
        test_fill_fast(b->p, part, rank_seed(me, which), 1, 0);
        xu_fill_guard(b->p, part, 3 * part, rank_seed(me, which),
                      XU_GUARD_ITER);
        ferry_desc_t d = {.addr = (uintptr_t)b->p, .len = 3 * part,
                          .kind = FERRY_MEM_HOST};
        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &b->mem));
        mine[0] = (uintptr_t)b->p;
    }

    /* Everyone's buffer, through the communicator itself. */
    ASSERT_ST(FERRY_OK, ferry_comm_allgather(comm, mine, sizeof(mine), vals,
                                             lens, TMO));
    for (int r = 0; r < n; r++) {
        EXPECT_EQ(sizeof(mine), lens[r]);
        if (lens[r] == sizeof(mine)) {
            memcpy(&b->addr[r], vals[r], sizeof(uint64_t));
            memcpy(&b->parts[r], (uint8_t *)vals[r] + 8, sizeof(uint64_t));
        }
        ferry_store_free(vals[r]);
    }
    EXPECT_TRUE(b->addr[me] == mine[0] && b->parts[me] == part);
}

/* One transfer of len bytes between local offset loff and remote offset
 * roff of the same buffer on both sides. */
static void ring_xfer(ferry_agent_t *agent, ferry_peer_t *peer,
                      ferry_xfer_op_t op, ring_buf_t *b, int peer_rank,
                      uint64_t loff, uint64_t roff, uint64_t len)
{
    /* loff and roff are offsets from the start of each side's buffer. */
    ferry_desc_t l = {.addr = (uintptr_t)b->p + loff, .len = len,
                      .kind = FERRY_MEM_HOST};
    ferry_desc_t r = {.addr = b->addr[peer_rank] + roff, .len = len,
                      .kind = FERRY_MEM_HOST};
    ferry_xfer_t *x;

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, op, &l, 1, peer, &r, 1, NULL,
                                           &x));
    ASSERT_ST(FERRY_OK, xu_post_wait(x, TMO));
    ferry_xfer_release(x);
}

typedef struct ring_step {
    uint64_t src, dst, len;
} ring_step_t;

/* The random transfer rank r makes in iteration it: the same on every
 * rank, so the receiver knows what to expect. Offsets fall inside parts of
 * `part` bytes (the smaller of the two ranks' parts). */
static ring_step_t ring_step(uint64_t part, int r, int which, int it, int op)
{
    test_rng_t g = {.s = rank_seed(r, which) * 7919 + (uint64_t)it * 31 +
                         (uint64_t)op};
    ring_step_t s;

    s.len = test_rand_range(&g, 1, part / 2);
    s.src = test_rand_range(&g, 0, part - s.len);
    s.dst = test_rand_range(&g, 0, part - s.len);
    return s;
}

/* Checks that part p of this rank's buffer holds rank `from`'s data at
 * [s.dst, s.dst+s.len) and the guard elsewhere, then restores the guard. */
static void ring_check(ring_buf_t *b, int me, int from, int which, int part_no,
                       ring_step_t s, const char *what)
{
    uint8_t *base = b->p + (uint64_t)part_no * b->part;
    uint64_t goff = (uint64_t)part_no * b->part, bad;

    bad = test_verify_fast(base + s.dst, s.len, rank_seed(from, which), 1, s.src);
    if (bad != UINT64_MAX)
        TEST_FAIL_AT_("rank %d: %s: byte %" PRIu64 " of %" PRIu64 " from rank "
                      "%d is wrong", me, what, bad, s.len, from);
    bad = test_verify_fast(base, s.dst, rank_seed(me, which), XU_GUARD_ITER,
                           goff);
    if (bad != UINT64_MAX)
        TEST_FAIL_AT_("rank %d: %s: guard byte %" PRIu64 " changed", me, what,
                      bad);
    bad = test_verify_fast(base + s.dst + s.len, b->part - s.dst - s.len,
                           rank_seed(me, which), XU_GUARD_ITER,
                           goff + s.dst + s.len);
    if (bad != UINT64_MAX)
        TEST_FAIL_AT_("rank %d: %s: guard byte %" PRIu64 " after the data "
                      "changed", me, what, s.dst + s.len + bad);
    xu_fill_guard(b->p, goff + s.dst, goff + s.dst + s.len, rank_seed(me, which),
                  XU_GUARD_ITER);
}

static void ring_rounds(ferry_comm_t *comm, ferry_agent_t *agent, ring_buf_t *b,
                        int which, int iters)
{
    int me = ferry_comm_rank(comm), n = ferry_comm_size(comm);
    int next = (me + 1) % n, prev = (me - 1 + n) % n;
    ferry_peer_t *pn = ferry_comm_peer(comm, next);
    ferry_peer_t *pp = ferry_comm_peer(comm, prev);

    ASSERT_TRUE(pn != NULL && pp != NULL);
    for (int it = 0; it < iters; it++) {
        uint64_t to_next = MIN(b->part, b->parts[next]);
        uint64_t from_prev = MIN(b->part, b->parts[prev]);
        ring_step_t w = ring_step(to_next, me, which, it, 0);
        ring_step_t r = ring_step(from_prev, prev, which, it, 1);
        ring_step_t in = ring_step(from_prev, prev, which, it, 0);

        /* WRITE my src into next's inbox; READ prev's src into my landing. */
        ring_xfer(agent, pn, FERRY_OP_WRITE, b, next, w.src,
                  b->parts[next] + w.dst, w.len);
        ring_xfer(agent, pp, FERRY_OP_READ, b, prev, 2 * b->part + r.dst, r.src,
                  r.len);
        ASSERT_ST(FERRY_OK, ferry_comm_barrier(comm, TMO));
        ferry_agent_progress(agent); /* orders the progress thread's copies */
        ring_check(b, me, prev, which, 1, in, "WRITE into the inbox");
        ring_check(b, me, prev, which, 2, r, "READ into the landing area");
        ferry_agent_progress(agent);
        ASSERT_ST(FERRY_OK, ferry_comm_barrier(comm, TMO));
    }
}

/* A successful collective leaves the thread's last error alone, though the
 * ranks that wait for a late rank 0 see store waits time out on the way. */
static void last_error_kept(ferry_comm_t *comm, ferry_agent_t *agent, int me)
{
    char marker[256];
    int n = ferry_comm_size(comm);
    void **vals = calloc((size_t)n, sizeof(*vals));
    size_t *lens = calloc((size_t)n, sizeof(*lens));

    for (int step = 0; step < 3; step++) {
        EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_barrier(NULL, TMO));
        snprintf(marker, sizeof(marker), "%s", ferry_last_error());
        if (me == 0)
            usleep(400000);
        if (step == 0)
            EXPECT_ST(FERRY_OK, ferry_comm_barrier(comm, TMO));
        else if (step == 1)
            EXPECT_ST(FERRY_OK, ferry_comm_allgather(comm, "x", 1, vals, lens, TMO));
        else
            EXPECT_ST(FERRY_OK, ferry_comm_exchange(comm, agent, TMO));
        if (strcmp(ferry_last_error(), marker) != 0)
            TEST_FAIL_AT_("step %d: a collective that returned OK changed "
                          "ferry_last_error() from '%s' to '%s'", step, marker,
                          ferry_last_error());
    }
    for (int r = 0; r < n; r++)
        ferry_store_free(vals[r]);
    free(vals);
    free(lens);
}

static int run_ring(void)
{
    ferry_comm_t *comm;
    ferry_agent_t *agent;
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .progress_thread = 1};
    ring_buf_t b1, b2, b3 = {0};
    char name[32];
    int me, n, changed = 0;

    ASSERT_ST(FERRY_OK, ferry_comm_create(NULL, &comm));
    me = ferry_comm_rank(comm);
    n = ferry_comm_size(comm);
    snprintf(name, sizeof(name), "ring%d", me);
    ap.name = name;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    EXPECT_TRUE(ferry_comm_peer(comm, me) == NULL);

    /* First buffer: every rank's blob is new. */
    ring_register(comm, agent, &b1, 96 * 1024 + (uint64_t)me * 4099, 1);
    ASSERT_ST(FERRY_OK, ferry_comm_exchange(comm, agent, TMO));
    EXPECT_EQ(n, ferry__comm_loads(comm));
    EXPECT_TRUE(strcmp(ferry_peer_name(ferry_comm_peer(comm, (me + 1) % n)),
                       "") != 0);
    ring_rounds(comm, agent, &b1, 1, 6);

    /* Nothing changed: nothing is loaded. */
    ASSERT_ST(FERRY_OK, ferry_comm_exchange(comm, agent, TMO));
    EXPECT_EQ(0, ferry__comm_loads(comm));

    /* Second buffer on every rank: every blob is reloaded, and the first
     * buffer stays usable through the same peer handles. */
    ferry_peer_t *before = ferry_comm_peer(comm, (me + 1) % n);
    ring_register(comm, agent, &b2, 200 * 1024 + (uint64_t)me * 1237, 2);
    ASSERT_ST(FERRY_OK, ferry_comm_exchange(comm, agent, TMO));
    EXPECT_EQ(n, ferry__comm_loads(comm));
    EXPECT_TRUE(before == ferry_comm_peer(comm, (me + 1) % n));
    ring_rounds(comm, agent, &b2, 2, 6);
    ring_rounds(comm, agent, &b1, 1, 2);

    /* Only the even ranks register more: only their blobs are loaded. */
    ring_register(comm, agent, &b3, me % 2 == 0 ? 4096 : 0, 3);
    for (int r = 0; r < n; r++)
        changed += r % 2 == 0;
    ASSERT_ST(FERRY_OK, ferry_comm_exchange(comm, agent, TMO));
    EXPECT_EQ(changed, ferry__comm_loads(comm));
    ring_rounds(comm, agent, &b2, 2, 2);

    last_error_kept(comm, agent, me);
    ASSERT_ST(FERRY_OK, ferry_comm_barrier(comm, TMO));
    ferry_comm_destroy(comm);
    ferry_agent_destroy(agent);
    free(b1.p);
    free(b2.p);
    free(b3.p);
    return test_finish("test_comm ring");
}

/* ------------------------------------------------------------------------ */
/* Failure injection: the ranks                                             */
/* ------------------------------------------------------------------------ */

/* A rank's exit code: 100 + -status when the status and the detail text
 * were as expected (the launcher checks the status), 1 otherwise. */
static int verdict(ferry_status_t st, const char *want1, const char *want2)
{
    const char *e = ferry_last_error();

    fprintf(stderr, "rank %s: %s: %s\n", getenv("FERRY_RANK"),
            ferry_status_str(st), e);
    if (st < 0 && ((want1 && !strstr(e, want1)) || (want2 && !strstr(e, want2)))) {
        fprintf(stderr, "rank %s: the text lacks '%s' or '%s'\n",
                getenv("FERRY_RANK"), want1 ? want1 : "", want2 ? want2 : "");
        return 1;
    }
    return 100 - (int)st;
}

static void hook_corrupt(void *blob, size_t len, void *arg)
{
    (void)arg;
    ((uint8_t *)blob)[len / 2] ^= 0x5a;
}

static void hook_abort(ferry_comm_t *comm, void *arg)
{
    (void)arg;
    ferry_comm_abort(comm, "injected abort before the barrier");
}

static void hook_kill(ferry_comm_t *comm, void *arg)
{
    (void)comm;
    (void)arg;
    raise(SIGKILL);
}

static void wait_for_file(const char *path)
{
    struct stat sb;

    while (stat(path, &sb) != 0)
        usleep(10000);
}

/* Aborts from a second thread while the first waits in a barrier. */
static void *abort_thread(void *arg)
{
    usleep(300000);
    *(uint64_t *)((void **)arg)[1] = ferry__now_ns();
    ferry_comm_abort(((void **)arg)[0], "abort from a second thread");
    return NULL;
}

/* Touches dir/name.r (r < 0: dir/name). */
static void touch(const char *name, int r)
{
    char path[512];
    const char *dir = getenv("TEST_COMM_DIR");

    if (r < 0)
        snprintf(path, sizeof(path), "%s/%s", dir, name);
    else
        snprintf(path, sizeof(path), "%s/%s.%d", dir, name, r);
    fclose(fopen(path, "w"));
}

static bool exists(const char *name)
{
    char path[512];
    struct stat sb;

    snprintf(path, sizeof(path), "%s/%s", getenv("TEST_COMM_DIR"), name);
    return stat(path, &sb) == 0;
}

/* Rank 2's second thread: writes the time (CLOCK_MONOTONIC, the same in
 * every process of the host) to dir/abort_t, then aborts. */
static void *stall_abort_thread(void *arg)
{
    char path[512], tmp[520];
    FILE *f;

    usleep(300000);
    snprintf(path, sizeof(path), "%s/abort_t", getenv("TEST_COMM_DIR"));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    fprintf(f, "%llu\n", (unsigned long long)ferry__now_ns());
    fclose(f);
    rename(tmp, path);
    ferry_comm_abort(arg, "abort from a second thread");
    return NULL;
}

/*
 * Phase 4 of "stall4": the job goes on with a new communicator (fresh store
 * connections); ranks 0-2 wait in a barrier that rank 3 comes late to, and
 * a second thread of rank 2 aborts. Each waiting rank's barrier returns
 * ABORTED within a few wait slices (100 ms each) of the abort, measured
 * across processes on the host's monotonic clock. Returns 0 if all was as
 * expected.
 */
static int stall_abort(int me)
{
    ferry_comm_params_t p = {.field_mask = FERRY_COMM_PARAM_PREFIX,
                             .prefix = "again/"};
    ferry_comm_t *c2 = NULL;
    ferry_status_t st;
    pthread_t t;
    unsigned long long t_abort = 0;
    char path[512];
    FILE *f;
    double ms;
    int bad = 0;

    st = ferry_comm_create(&p, &c2);
    if (st == FERRY_OK)
        st = ferry_comm_barrier(c2, 30 * 1000000000ll);
    if (st != FERRY_OK) {
        verdict(st, "none expected (a new communicator)", NULL);
        return 1;
    }
    if (me == VICTIM)
        ASSERT_TRUE(pthread_create(&t, NULL, stall_abort_thread, c2) == 0);
    if (me == 3)
        usleep(3000000);
    st = ferry_comm_barrier(c2, 30 * 1000000000ll);
    uint64_t t_ret = ferry__now_ns();
    if (me == VICTIM)
        pthread_join(t, NULL);
    snprintf(path, sizeof(path), "%s/abort_t", getenv("TEST_COMM_DIR"));
    f = fopen(path, "r");
    if (f == NULL || fscanf(f, "%llu", &t_abort) != 1)
        bad = 1;
    if (f != NULL)
        fclose(f);
    ms = ((double)t_ret - (double)t_abort) / 1e6;
    fprintf(stderr, "rank %d: phase 4: the barrier returned %s %.1f ms after rank 2's "
            "second thread aborted\n", me, ferry_status_str(st), ms);
    if (verdict(st, "aborted by rank 2", "second thread") != 100 - FERRY_ERR_ABORTED ||
        st != FERRY_ERR_ABORTED)
        bad = 1;
    /* Rank 3 came after the abort: it returns at once on arrival. */
    if (me != 3 && (ms < 0 || ms > 1000)) {
        fprintf(stderr, "rank %d: the abort took %.1f ms to reach it\n", me, ms);
        bad = 1;
    }
    ferry_comm_destroy(c2);
    return bad;
}

/*
 * A rank of "stall4". Phase 1: rounds of allgather, exchange and barrier
 * (30 s deadline) while the launcher stops the store for a second; all
 * ranks leave after the same round (each says in the allgather whether it
 * has seen the launcher's "resumed" file). Every collective is OK: no
 * store call gave up early and no heartbeat declared a rank dead. Phase 2:
 * with the store stopped for good, a barrier and an exchange with a 2 s
 * deadline each end by it (plus the slack the existing stall test allows)
 * with an error that names the store. Phase 3, after the launcher resumes
 * the store: a barrier shows what is left of the job (see docs/COMM.md).
 * Exit code: 100 + -(phase 3's status), or 1 if a check failed.
 */
static int rank_stall(ferry_comm_t *comm, ferry_agent_t *agent, int me)
{
    double worst = 0;
    int rounds = 0, after = 0, rc = 100;
    ferry_status_t st;

    for (int i = 0; after < 2; i++, rounds++) {
        int mine[3] = {i, me, exists("resumed")}, any = 0;
        void *vals[NFAIL];
        size_t lens[NFAIL];
        uint64_t t0 = ferry__now_ns();

        st = ferry_comm_allgather(comm, mine, sizeof(mine), vals, lens, 30 * 1000000000ll);
        if (st != FERRY_OK) {
            verdict(st, "none expected (allgather)", NULL);
            return 1;
        }
        for (int r = 0; r < NFAIL; r++) {
            int *v = vals[r];

            if (lens[r] != sizeof(mine) || v[0] != i || v[1] != r) {
                fprintf(stderr, "rank %d: round %d: rank %d's part is wrong\n", me, i, r);
                rc = 1;
            } else {
                any |= v[2];
            }
            ferry_store_free(vals[r]);
        }
        after += any;
        st = ferry_comm_exchange(comm, agent, 30 * 1000000000ll);
        if (st == FERRY_OK)
            st = ferry_comm_barrier(comm, 30 * 1000000000ll);
        if (st != FERRY_OK) {
            verdict(st, "none expected (exchange, barrier)", NULL);
            return 1;
        }
        double ms = (double)(ferry__now_ns() - t0) / 1e6;
        worst = ms > worst ? ms : worst;
        if (i == 0)
            touch("ready", me);
    }
    fprintf(stderr, "rank %d: phase 1: %d rounds OK across a 1 s stall, the longest "
            "%.0f ms\n", me, rounds, worst);
    /* The stall fell inside some round (the ranks looped throughout). */
    if (worst < 700) {
        fprintf(stderr, "rank %d: no round waited for the stopped store\n", me);
        rc = 1;
    }

    touch("ready2", me);
    while (!exists("stopped"))
        usleep(10000);
    for (int step = 0; step < 2; step++) {
        uint64_t t0 = ferry__now_ns();

        st = step == 1 ? ferry_comm_barrier(comm, 2000000000ll)
                       : ferry_comm_exchange(comm, agent, 2000000000ll);
        double ms = (double)(ferry__now_ns() - t0) / 1e6;
        const char *e = ferry_last_error();

        fprintf(stderr, "rank %d: phase 2: %s on the stopped store: %s after %.0f ms "
                "(%s)\n", me, step == 1 ? "barrier" : "exchange",
                ferry_status_str(st), ms, e);
        if (st >= 0 || ms > 8000 || !strstr(e, "store")) {
            fprintf(stderr, "rank %d: expected an error naming the store within "
                    "8 s\n", me);
            rc = 1;
        }
        /* The exchange's failure closed the store connection: the barrier
         * after it names that failure, not only the closed connection. */
        if (step == 1 && (st != FERRY_ERR_PEER_LOST ||
                          !strstr(e, "the communicator failed earlier: exchange") ||
                          !strstr(e, "the store did not answer by the deadline"))) {
            fprintf(stderr, "rank %d: the barrier does not name the exchange's "
                    "failure\n", me);
            rc = 1;
        }
    }
    touch("gaveup", me);
    while (!exists("resumed2"))
        usleep(10000);
    uint64_t t0 = ferry__now_ns();
    st = ferry_comm_barrier(comm, 10 * 1000000000ll);
    fprintf(stderr, "rank %d: phase 3: a barrier after the store resumed: %s after "
            "%.0f ms (%s)\n", me, ferry_status_str(st),
            (double)(ferry__now_ns() - t0) / 1e6, ferry_last_error());
    if (stall_abort(me) != 0)
        rc = 1;
    return rc == 100 ? 100 - (int)st : rc;
}

static int run_rank(const char *cas)
{
    ferry_comm_t *comm;
    ferry_agent_t *agent;
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .progress_thread = 1};
    ferry__comm_hooks_t hooks = {0};
    ferry_status_t st;
    static uint8_t buf[65536];
    ferry_mem_t *mem;
    int me, rc;

    ASSERT_ST(FERRY_OK, ferry_comm_create(NULL, &comm));
    me = ferry_comm_rank(comm);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ferry_desc_t d = {.addr = (uintptr_t)buf, .len = sizeof(buf),
                      .kind = FERRY_MEM_HOST};
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));

    if (strcmp(cas, "corrupt") == 0) {
        if (me == VICTIM) {
            hooks.blob = hook_corrupt;
            ferry__comm_set_hooks(comm, &hooks);
        }
        st = ferry_comm_exchange(comm, agent, TMO);
        rc = verdict(st, "the blob of rank 2", "checksum");
        /* The communicator survives a failed exchange: the next one,
         * without the damage, works on every rank. */
        memset(&hooks, 0, sizeof(hooks));
        ferry__comm_set_hooks(comm, &hooks);
        if (ferry_comm_exchange(comm, agent, TMO) != FERRY_OK) {
            verdict(FERRY_ERR_INVALID, NULL, NULL);
            rc = 1;
        }
    } else if (strcmp(cas, "abort") == 0 || strcmp(cas, "kill") == 0) {
        if (me == VICTIM) {
            hooks.before_barrier = cas[0] == 'a' ? hook_abort : hook_kill;
            ferry__comm_set_hooks(comm, &hooks);
        }
        st = ferry_comm_exchange(comm, agent, TMO);
        rc = verdict(st, "aborted by rank 2",
                     cas[0] == 'a' ? "injected abort" : "no heartbeat");
        /* Aborted stays aborted, at once. */
        if (ferry_comm_barrier(comm, TMO) != FERRY_ERR_ABORTED)
            rc = 1;
    } else if (strcmp(cas, "thread") == 0) {
        /* Rank 3 comes late, so everyone waits; rank 2's second thread
         * aborts meanwhile. Every rank's barrier is ABORTED, rank 2's own
         * soon after the abort (its flag is set before the store is told),
         * and rank 3's at once. */
        uint64_t t_abort = 0;
        void *args[2] = {comm, &t_abort};
        pthread_t t;

        if (me == VICTIM)
            ASSERT_TRUE(pthread_create(&t, NULL, abort_thread, args) == 0);
        if (me == 3)
            usleep(3000000);
        st = ferry_comm_barrier(comm, TMO);
        rc = verdict(st, "aborted by rank 2", "second thread");
        if (me == VICTIM) {
            pthread_join(t, NULL);
            fprintf(stderr, "rank 2: the barrier returned %.1f ms after the abort\n",
                    (double)(ferry__now_ns() - t_abort) / 1e6);
        }
    } else if (strcmp(cas, "store") == 0) {
        char path[512];
        const char *dir = getenv("TEST_COMM_DIR");

        ASSERT_ST(FERRY_OK, ferry_comm_barrier(comm, TMO));
        snprintf(path, sizeof(path), "%s/ready.%d", dir, me);
        fclose(fopen(path, "w"));
        snprintf(path, sizeof(path), "%s/killed", dir);
        wait_for_file(path);
        st = ferry_comm_barrier(comm, TMO);
        rc = verdict(st, ferry__kv_is_etcd(getenv("FERRY_STORE")) ? "etcd"
                                                                 : "store", NULL);
    } else if (strcmp(cas, "failover") == 0) {
        /* Allgathers go on while the etcd member every rank talks to (the
         * first in the URL) is killed: each rank says whether it has seen
         * the launcher's "killed" file, and all count the rounds after
         * any rank saw it, so that every rank runs the same rounds. */
        const char *dir = getenv("TEST_COMM_DIR");
        char path[512];
        int after = 0;
        struct stat sb;

        rc = 100;
        snprintf(path, sizeof(path), "%s/killed", dir);
        for (int i = 0; after < 20 && rc == 100; i++) {
            int mine[3] = {i, me, stat(path, &sb) == 0}, any = 0;
            void *vals[NFAIL];
            size_t lens[NFAIL];

            st = ferry_comm_allgather(comm, mine, sizeof(mine), vals, lens, TMO);
            if (st != FERRY_OK) {
                rc = verdict(st, "none expected", NULL);
                break;
            }
            for (int r = 0; r < NFAIL; r++) {
                int *v = vals[r];

                if (lens[r] != sizeof(mine) || v[0] != i || v[1] != r) {
                    fprintf(stderr, "rank %d: round %d: rank %d's part is wrong\n",
                            me, i, r);
                    rc = 1;
                } else {
                    any |= v[2];
                }
                ferry_store_free(vals[r]);
            }
            after += any;
            if (i == 5 && me == 0) {
                snprintf(path, sizeof(path), "%s/ready.0", dir);
                fclose(fopen(path, "w"));
                snprintf(path, sizeof(path), "%s/killed", dir);
            }
        }
        if (rc == 100)
            rc = verdict(ferry_comm_exchange(comm, agent, TMO), NULL, NULL);
    } else if (strcmp(cas, "stall") == 0) {
        rc = rank_stall(comm, agent, me);
    } else if (strcmp(cas, "timeout") == 0) {
        if (me == VICTIM) {
            /* Alive (its heartbeat goes on) but late: by the time it comes,
             * the others have given up. */
            usleep(2500000);
            st = ferry_comm_barrier(comm, TMO);
            rc = verdict(st, "aborted by rank", "timed out");
        } else {
            st = ferry_comm_barrier(comm, 1500000000LL);
            rc = st == FERRY_ERR_TIMEOUT
                     ? verdict(st, "waiting for rank 2", NULL)
                     : verdict(st, "timed out", "waiting for rank 2");
        }
    } else {
        fprintf(stderr, "unknown case '%s'\n", cas);
        rc = 1;
    }
    ferry_comm_destroy(comm);
    ferry_agent_destroy(agent);
    return test_failures ? 1 : rc;
}

/* ------------------------------------------------------------------------ */
/* Failure injection: the launcher                                          */
/* ------------------------------------------------------------------------ */

static uint16_t free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ASSERT_TRUE(fd >= 0);
    ASSERT_TRUE(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    ASSERT_TRUE(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t spawn_env(char *const argv[], const char *url, int rank)
{
    pid_t parent = getpid();
    pid_t pid;

    fflush(NULL);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        char r[16], n[16];

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        snprintf(r, sizeof(r), "%d", rank);
        snprintf(n, sizeof(n), "%d", NFAIL);
        setenv("FERRY_RANK", r, 1);
        setenv("FERRY_WORLD_SIZE", n, 1);
        setenv("FERRY_STORE", url, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Starts ferry-store on a free port (it prints the port). */
static pid_t start_store(uint16_t *port)
{
    int p[2];
    char line[128] = "";
    pid_t pid;
    size_t got = 0;

    ASSERT_TRUE(pipe(p) == 0);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        execl(FERRY_STORE_TOOL, "ferry-store", "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    while (got < sizeof(line) - 1 && !strchr(line, '\n')) {
        ssize_t k = read(p[0], line + got, sizeof(line) - 1 - got);

        ASSERT_TRUE(k > 0);
        got += (size_t)k;
        line[got] = 0;
    }
    close(p[0]);
    ASSERT_TRUE(sscanf(line, "ferry-store listening on %*s port %hu", port) == 1);
    return pid;
}

static int run_fail(const char *self, const char *cas, bool etcd)
{
    char url[128], dir[] = "/tmp/ferry-test-comm-XXXXXX", path[600];
    char *argv[] = {(char *)self, "rank", (char *)cas, NULL};
    pid_t pids[NFAIL], store = 0;
    int codes[NFAIL], ntimeout = 0;
    uint16_t port;

    ASSERT_TRUE(mkdtemp(dir) != NULL);
    setenv("TEST_COMM_DIR", dir, 1);
    /* Liveness short enough for the kill case to end quickly, long enough
     * that a loaded machine does not declare a live rank dead. */
    setenv("FERRY_COMM_LIVENESS_MS", "3000", 1);
    if (etcd) {
        int order[3] = {0, 1, 2}, n = strcmp(cas, "failover") == 0 ? 3 : 1;

        xe_start(n);
        xe_url(url, sizeof(url), order, n, "fail");
        if (n == 3) /* an election may take a few seconds */
            setenv("FERRY_COMM_LIVENESS_MS", "10000", 1);
    } else {
        if (strcmp(cas, "store") == 0)
            store = start_store(&port);
        else
            port = free_port(); /* nothing there: rank 0 hosts the store */
        snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", port);
    }
    for (int r = 0; r < NFAIL; r++)
        pids[r] = spawn_env(argv, url, r);

    if (strcmp(cas, "failover") == 0) {
        snprintf(path, sizeof(path), "%s/ready.0", dir);
        wait_for_file(path);
        xe_kill(0);
        printf("etcd member 0, every rank's first endpoint, killed\n");
        snprintf(path, sizeof(path), "%s/killed", dir);
        fclose(fopen(path, "w"));
    }
    if (strcmp(cas, "store") == 0) {
        for (int r = 0; r < NFAIL; r++) {
            snprintf(path, sizeof(path), "%s/ready.%d", dir, r);
            wait_for_file(path);
        }
        if (etcd) {
            xe_kill(0);
        } else {
            kill(store, SIGKILL);
            EXPECT_TRUE(xu_reap(store, 10000) != -1);
        }
        snprintf(path, sizeof(path), "%s/killed", dir);
        fclose(fopen(path, "w"));
    }
    for (int r = 0; r < NFAIL; r++) {
        int status = xu_reap(pids[r], 60000);

        codes[r] = status == -1 ? -1
                   : WIFEXITED(status) ? WEXITSTATUS(status)
                                       : 128 + WTERMSIG(status);
        /* Reaped (or killed and reaped): nothing of it is left. */
        EXPECT_TRUE(kill(pids[r], 0) != 0 && errno == ESRCH);
    }
    for (int r = 0; r < NFAIL; r++) {
        int want = 0;

        if (strcmp(cas, "corrupt") == 0)
            want = 100 - FERRY_ERR_PROTOCOL;
        else if (strcmp(cas, "abort") == 0 || strcmp(cas, "thread") == 0)
            want = 100 - FERRY_ERR_ABORTED;
        else if (strcmp(cas, "kill") == 0)
            want = r == VICTIM ? 128 + SIGKILL : 100 - FERRY_ERR_ABORTED;
        else if (strcmp(cas, "store") == 0)
            want = 100 - FERRY_ERR_PEER_LOST;
        else if (strcmp(cas, "failover") == 0)
            want = 100;
        else if (strcmp(cas, "timeout") == 0) {
            ntimeout += codes[r] == 100 - FERRY_ERR_TIMEOUT;
            want = r == VICTIM || codes[r] == 100 - FERRY_ERR_TIMEOUT
                       ? codes[r]
                       : 100 - FERRY_ERR_ABORTED;
            if (r == VICTIM)
                EXPECT_EQ(100 - FERRY_ERR_ABORTED, codes[r]);
        }
        if (codes[r] != want)
            TEST_FAIL_AT_("case %s: rank %d exited %d, expected %d", cas, r,
                          codes[r], want);
    }
    /* Exactly one rank's timeout becomes the job's abort. */
    if (strcmp(cas, "timeout") == 0)
        EXPECT_EQ(1, ntimeout);
    for (int r = 0; r < NFAIL; r++) {
        snprintf(path, sizeof(path), "%s/ready.%d", dir, r);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/killed", dir);
    unlink(path);
    rmdir(dir);
    return test_finish("test_comm fail");
}

/* Waits up to ms for dir/name.r of every rank; false if one is missing. */
static bool wait_all(const char *name, int ms)
{
    char path[64];
    uint64_t end = ferry__now_ns() + (uint64_t)ms * 1000000ull;

    for (int r = 0; r < NFAIL; r++) {
        snprintf(path, sizeof(path), "%s.%d", name, r);
        while (!exists(path)) {
            if (ferry__now_ns() > end)
                return false;
            usleep(10000);
        }
    }
    return true;
}

/*
 * "stall4": 4 ranks (role "rank stall") on a ferry-store process that is
 * stopped for a second while they loop on collectives, then for 12 s (four
 * times the liveness time, six times the collectives' deadline: every
 * timer on the way, the collective's, its store calls', the heartbeat's,
 * has run out well before the store resumes, so a longer stall, the 60 s
 * of the original report, changes nothing), then resumed. Checks each
 * rank's verdict and that every phase-2 collective ended while the store
 * was still stopped.
 */
static int run_stall4(const char *self)
{
    char url[128], dir[] = "/tmp/ferry-test-comm-XXXXXX";
    char *argv[] = {(char *)self, "rank", "stall", NULL};
    const char *files[] = {"ready", "ready2", "gaveup", NULL};
    pid_t pids[NFAIL], store;
    uint16_t port;
    uint64_t t0;
    int codes[NFAIL];

    ASSERT_TRUE(mkdtemp(dir) != NULL);
    setenv("TEST_COMM_DIR", dir, 1);
    setenv("FERRY_COMM_LIVENESS_MS", "3000", 1);
    store = start_store(&port);
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", port);
    for (int r = 0; r < NFAIL; r++)
        pids[r] = spawn_env(argv, url, r);

    EXPECT_TRUE(wait_all("ready", 60000));
    usleep(200000);
    xu_stop_child(store);
    usleep(1000000);
    xu_cont_child(store);
    touch("resumed", -1);
    printf("test_comm stall4: the store was stopped for 1 s under the loop\n");

    EXPECT_TRUE(wait_all("ready2", 60000));
    xu_stop_child(store);
    t0 = ferry__now_ns();
    touch("stopped", -1);
    if (!wait_all("gaveup", 12000))
        TEST_FAIL_AT_("a rank's collectives still waited on the stopped store "
                      "after 12 s");
    printf("test_comm stall4: every rank gave up %.0f ms into the long stall\n",
           (double)(ferry__now_ns() - t0) / 1e6);
    while (ferry__now_ns() - t0 < 12000000000ull)
        usleep(10000);
    xu_cont_child(store);
    t0 = ferry__now_ns();
    touch("resumed2", -1);
    printf("test_comm stall4: the store resumed after a 12 s stall\n");

    for (int r = 0; r < NFAIL; r++) {
        int status = xu_reap(pids[r], 60000);

        codes[r] = status == -1 ? -1
                   : WIFEXITED(status) ? WEXITSTATUS(status)
                                       : 128 + WTERMSIG(status);
    }
    printf("test_comm stall4: every rank exited %.0f ms after the store resumed\n",
           (double)(ferry__now_ns() - t0) / 1e6);
    for (int r = 0; r < NFAIL; r++) {
        printf("test_comm stall4: rank %d exited %d\n", r, codes[r]);
        if (codes[r] != 100 - FERRY_ERR_PEER_LOST)
            TEST_FAIL_AT_("rank %d exited %d, expected %d", r, codes[r],
                          100 - FERRY_ERR_PEER_LOST);
    }
    kill(store, SIGTERM);
    EXPECT_TRUE(xu_reap(store, 10000) != -1);
    for (int f = 0; files[f]; f++)
        for (int r = 0; r < NFAIL; r++) {
            char path[600];

            snprintf(path, sizeof(path), "%s/%s.%d", dir, files[f], r);
            unlink(path);
        }
    for (int f = 0; f < 4; f++) {
        char path[600];
        const char *one[] = {"resumed", "stopped", "resumed2", "abort_t"};

        snprintf(path, sizeof(path), "%s/%s", dir, one[f]);
        unlink(path);
    }
    rmdir(dir);
    return test_finish("test_comm stall4");
}

/* ------------------------------------------------------------------------ */
/* One rank, in process: the API's edges and garbage from the store         */
/* ------------------------------------------------------------------------ */

static ferry_comm_t *comm_one(const char *url, const char *prefix)
{
    ferry_comm_params_t p = {
        .field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                      FERRY_COMM_PARAM_STORE_URL | FERRY_COMM_PARAM_PREFIX |
                      FERRY_COMM_PARAM_TIMEOUT,
        .rank = 0, .size = 1, .store_url = url, .prefix = prefix,
        .timeout_ns = 10000000000ull};
    ferry_comm_t *c = NULL;

    ASSERT_ST(FERRY_OK, ferry_comm_create(&p, &c));
    return c;
}

/* Resumes the stopped store after a second. */
static void *resume_store(void *arg)
{
    usleep(1000000);
    xu_cont_child(*(pid_t *)arg);
    return NULL;
}

/*
 * A store that stalls for a second does not fail a collective with a 30 s
 * deadline. Rank 0 of a world of one finds the store (a ferry-store
 * process) with its short probe and keeps that connection: its later calls
 * must wait as long as the communicator's timeout, not the probe's 300 ms.
 */
static int run_stall(bool etcd)
{
    uint16_t port;
    pid_t store;
    char url[128];
    ferry_agent_t *agent;
    pthread_t t;

    if (etcd) {
        int order = 0;

        xe_start(1);
        xe_url(url, sizeof(url), &order, 1, "stall");
        store = xe_pids[0];
    } else {
        store = start_store(&port);
        snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", (unsigned)port);
    }
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    /* The store connection's own limit is long (60 s): only the
     * collective's deadline can end a call on a stopped store sooner. */
    ferry_comm_params_t p = {
        .field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                      FERRY_COMM_PARAM_STORE_URL | FERRY_COMM_PARAM_PREFIX |
                      FERRY_COMM_PARAM_TIMEOUT,
        .rank = 0, .size = 1, .store_url = url, .prefix = "stall/",
        .timeout_ns = 60000000000ull};
    ferry_comm_t *c = NULL;
    ASSERT_ST(FERRY_OK, ferry_comm_create(&p, &c));
    for (int step = 0; step < 2; step++) {
        xu_stop_child(store);
        ASSERT_TRUE(pthread_create(&t, NULL, resume_store, &store) == 0);
        if (step == 0)
            EXPECT_ST(FERRY_OK, ferry_comm_barrier(c, TMO));
        else
            EXPECT_ST(FERRY_OK, ferry_comm_exchange(c, agent, TMO));
        pthread_join(t, NULL);
    }
    /* Stopped for good (until the call is back): a barrier and an exchange
     * with a 2 s deadline each end by it, plus the second a rank has to
     * publish its giving up; the store's 60 s limit would hold them. */
    xu_stop_child(store);
    for (int step = 0; step < 2; step++) {
        uint64_t t0 = ferry__now_ns();
        ferry_status_t st = step == 0 ? ferry_comm_barrier(c, 2000000000ll)
                                      : ferry_comm_exchange(c, agent, 2000000000ll);
        double ms = (double)(ferry__now_ns() - t0) / 1e6;

        printf("test_comm stall: %s on a stopped store: %s after %.0f ms (%s)\n",
               step == 0 ? "barrier" : "exchange", ferry_status_str(st), ms,
               ferry_last_error());
        EXPECT_TRUE(st < 0);
        if (step == 0) {
            EXPECT_ST(FERRY_ERR_TIMEOUT, st);
            EXPECT_ERR_HAS(etcd ? "etcd" : "no reply in time");
        } else if (!etcd) {
            /* The barrier's timeout closed the store connection: the
             * exchange fails at once, and says why it was closed. */
            EXPECT_ST(FERRY_ERR_PEER_LOST, st);
            EXPECT_ERR_HAS("comm: exchange: the communicator failed earlier: "
                           "barrier (round");
            EXPECT_ERR_HAS("no reply in time");
        }
        if (ms > 8000)
            TEST_FAIL_AT_("a collective with a 2 s deadline took %.0f ms", ms);
    }
    /* Destroy with the store still stopped: the heartbeat's call under way
     * and the leave end by the leave's second (it took 12-20 s). */
    uint64_t t0 = ferry__now_ns();
    ferry_comm_destroy(c);
    double dms = (double)(ferry__now_ns() - t0) / 1e6;
    printf("test_comm stall: destroy on a stopped store took %.0f ms\n", dms);
    if (dms > 5000)
        TEST_FAIL_AT_("destroy on a stopped store took %.0f ms", dms);
    xu_cont_child(store);
    /* The same with a communicator whose connections are whole: the
     * heartbeat's call waits on the stopped store when destroy comes. */
    p.prefix = "stall2/";
    ASSERT_ST(FERRY_OK, ferry_comm_create(&p, &c));
    ASSERT_ST(FERRY_OK, ferry_comm_barrier(c, TMO));
    xu_stop_child(store);
    usleep(300000); /* the heartbeat's next beat meets the stop */
    t0 = ferry__now_ns();
    ferry_comm_destroy(c);
    dms = (double)(ferry__now_ns() - t0) / 1e6;
    printf("test_comm stall: destroy of a whole communicator on a stopped store took "
           "%.0f ms\n", dms);
    if (dms > 5000)
        TEST_FAIL_AT_("destroy on a stopped store took %.0f ms", dms);
    xu_cont_child(store);
    ferry_agent_destroy(agent);
    if (!etcd) {
        kill(store, SIGTERM);
        EXPECT_TRUE(xu_reap(store, 10000) != -1);
    }
    return test_finish("test_comm stall");
}

/* A world of one that joins an etcd store before the cluster is up. */
typedef struct late {
    const char *url;
    ferry_status_t st;
    char err[512];
    ferry_comm_t *c;
} late_t;

static void *late_create(void *arg)
{
    late_t *l = arg;
    ferry_comm_params_t p = {
        .field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_SIZE |
                      FERRY_COMM_PARAM_STORE_URL | FERRY_COMM_PARAM_PREFIX |
                      FERRY_COMM_PARAM_TIMEOUT | FERRY_COMM_PARAM_LIVENESS,
        .rank = 0, .size = 1, .store_url = l->url, .prefix = "late/",
        .timeout_ns = 60000000000ull, .liveness_ns = 1000000000ull};

    l->st = ferry_comm_create(&p, &l->c);
    snprintf(l->err, sizeof(l->err), "%s", ferry_last_error());
    return NULL;
}

/*
 * A job started before its etcd cluster: joining waits for the cluster
 * (up to the communicator's timeout, 60 s here) and then works. The
 * cluster comes up 5 s late, after a third of the job's lease TTL (10 s
 * with a 1 s liveness time), when the lease is due for renewal though it
 * has not been found or granted yet.
 */
static int run_late(void)
{
    char url[128];
    int order = 0;
    late_t l = {.url = url};
    pthread_t t;

    xe_reserve(1);
    xe_url(url, sizeof(url), &order, 1, "late");
    ASSERT_TRUE(pthread_create(&t, NULL, late_create, &l) == 0);
    usleep(5000000);
    xe_start(1);
    pthread_join(t, NULL);
    printf("test_comm late: create: %s\n", ferry_status_str(l.st));
    if (l.st != FERRY_OK)
        TEST_FAIL_AT_("create before etcd was up: %s: %s", ferry_status_str(l.st), l.err);
    if (l.c != NULL) {
        EXPECT_ST(FERRY_OK, ferry_comm_barrier(l.c, TMO));
        ferry_comm_destroy(l.c);
    }
    return test_finish("test_comm late");
}

typedef struct outage_wait {
    ferry__kv_t *kv;
    ferry_status_t st;
    char err[512];
} outage_wait_t;

static void *outage_waiter(void *arg)
{
    outage_wait_t *w = arg;
    const char *key = "late";

    w->st = ferry__kv_wait(w->kv, &key, 1, 30000000000ll);
    snprintf(w->err, sizeof(w->err), "%s", ferry_last_error());
    return NULL;
}

/*
 * A wait that has gone on for longer than the store's retry time when the
 * cluster stops answering for a moment (1.5 s; the retry time is 4 s, one
 * call to a member 0.5 s): it is tried again, as any call that meets an
 * outage, and ends OK when the key comes after the cluster is back.
 */
static int run_etcd_outage(void)
{
    char url[128];
    int order = 0;
    ferry__kv_t *setter;
    outage_wait_t w = {0};
    pthread_t t;

    setenv("FERRY_DIR_TIMEOUT_MS", "500", 1);
    xe_start(1);
    xe_url(url, sizeof(url), &order, 1, "outage");
    ASSERT_ST(FERRY_OK, ferry__kv_etcd_open(url, "lease", 60000000000ull, 10000000000ull,
                                            4000000000ull, &w.kv));
    ASSERT_ST(FERRY_OK, ferry__kv_etcd_open(url, "lease", 60000000000ull, 10000000000ull,
                                            4000000000ull, &setter));
    ASSERT_TRUE(pthread_create(&t, NULL, outage_waiter, &w) == 0);
    usleep(6000000); /* past the retry time of the wait's call */
    xu_stop_child(xe_pids[0]);
    usleep(1500000);
    xu_cont_child(xe_pids[0]);
    usleep(1000000);
    EXPECT_ST(FERRY_OK, ferry__kv_set(setter, "late", "x", 1));
    pthread_join(t, NULL);
    printf("test_comm etcd-outage: the wait: %s\n", ferry_status_str(w.st));
    if (w.st != FERRY_OK)
        TEST_FAIL_AT_("a wait that met a 1.5 s outage: %s: %s", ferry_status_str(w.st),
                      w.err);
    ferry__kv_close(setter);
    ferry__kv_close(w.kv);
    return test_finish("test_comm etcd-outage");
}

/*
 * The etcd store's handle on keys that hold what ferry never writes there,
 * as another program sharing the prefix might: typed errors naming the
 * key, never a wrong count.
 */
static int run_etcd_garbage(void)
{
    char url[128];
    int order = 0;
    ferry__kv_t *kv;
    int64_t v = 0;
    static const char huge[] = "a 9223372036854775807\n";

    xe_start(1);
    xe_url(url, sizeof(url), &order, 1, "garbage");
    ASSERT_ST(FERRY_OK, ferry__kv_etcd_open(url, "lease", 10000000000ull, 10000000000ull,
                                            2000000000ull, &kv));
    /* An ADD that would pass int64 is refused (INVALID) before it is
     * written; a counter whose lines sum past it is PROTOCOL: never a
     * wrapped sum. */
    ASSERT_ST(FERRY_OK, ferry__kv_set(kv, "cnt", "a 1\nb 2\n", 8));
    EXPECT_ST(FERRY_OK, ferry__kv_add(kv, "cnt", 4, &v));
    EXPECT_EQ(7, v);
    ASSERT_ST(FERRY_OK, ferry__kv_set(kv, "cnt", huge, strlen(huge)));
    v = 0;
    EXPECT_ST(FERRY_OK, ferry__kv_add(kv, "cnt", -1, &v));
    EXPECT_TRUE(v == INT64_MAX - 1);
    EXPECT_ST(FERRY_ERR_INVALID, ferry__kv_add(kv, "cnt", 2, &v));
    EXPECT_ERR_HAS("'cnt' is 9223372036854775806");
    ASSERT_ST(FERRY_OK, ferry__kv_set(kv, "cnt2", huge, strlen(huge)));
    ASSERT_ST(FERRY_OK, ferry__kv_add(kv, "cnt2", 0, &v));
    EXPECT_TRUE(v == INT64_MAX);
    /* A second line that passes the range: another writer's, or a bug. */
    {
        static const char two[] = "a 9223372036854775807\nb 1\n";

        ASSERT_ST(FERRY_OK, ferry__kv_set(kv, "cnt2", two, strlen(two)));
    }
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry__kv_add(kv, "cnt2", 1, &v));
    EXPECT_ERR_HAS("'cnt2' holds ADDs whose sum is past");
    /* A lease key that holds no lease ID: PROTOCOL quoting it, not five
     * leases granted and revoked and "kept changing". */
    ASSERT_ST(FERRY_OK, ferry__kv_set(kv, "bad/lease", "zzz", 3));
    {
        ferry__kv_t *kv2 = NULL;

        EXPECT_ST(FERRY_ERR_PROTOCOL,
                  ferry__kv_etcd_open(url, "bad/lease", 10000000000ull, 10000000000ull,
                                      2000000000ull, &kv2));
        EXPECT_ERR_HAS("holds 'zzz', not a lease ID");
        EXPECT_TRUE(kv2 == NULL);
    }
    ferry__kv_close(kv);
    return test_finish("test_comm etcd-garbage");
}

static int run_api(void)
{
    ferry_store_server_t *srv;
    ferry_store_t *rogue;
    ferry_comm_t *c, *c2 = NULL;
    ferry_agent_t *agent;
    char url[64];
    void *val;
    size_t len;
    ferry_comm_params_t p = {.field_mask = FERRY_COMM_PARAM_RANK |
                                           FERRY_COMM_PARAM_SIZE |
                                           FERRY_COMM_PARAM_STORE_URL |
                                           FERRY_COMM_PARAM_PREFIX,
                             .rank = 0, .size = 1, .prefix = "api/"};

    ASSERT_ST(FERRY_OK, ferry_store_server_start(NULL, NULL, &srv));
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u",
             (unsigned)ferry_store_server_port(srv));
    ASSERT_ST(FERRY_OK, ferry_store_connect(url, NULL, &rogue));
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));

    /* A world of one: collectives work, the peer table has one entry. */
    c = comm_one(url, "api/");
    EXPECT_EQ(0, ferry_comm_rank(c));
    EXPECT_EQ(1, ferry_comm_size(c));
    EXPECT_ST(FERRY_OK, ferry_comm_barrier(c, TMO));
    EXPECT_ST(FERRY_OK, ferry_comm_allgather(c, "abc", 3, &val, &len, TMO));
    EXPECT_TRUE(len == 3 && memcmp(val, "abc", 4) == 0);
    ferry_store_free(val);
    EXPECT_ST(FERRY_OK, ferry_comm_exchange(c, agent, TMO));
    EXPECT_TRUE(ferry_comm_peer(c, 0) != NULL);
    EXPECT_TRUE(ferry_comm_peer(c, 1) == NULL && ferry_comm_peer(c, -1) == NULL);
    EXPECT_TRUE(ferry_comm_peer(NULL, 0) == NULL);

    /* NULL arguments are INVALID, never a crash. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_barrier(NULL, TMO));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_allgather(c, NULL, 1, &val, &len, TMO));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_allgather(c, "a", 1, NULL, &len, TMO));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_exchange(c, NULL, TMO));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_abort(NULL, "x"));
    ferry_comm_destroy(NULL);

    /* A second process claiming the same rank under the same prefix. */
    p.store_url = url;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_create(&p, &c2));
    EXPECT_ERR_HAS("rank 0 was already joined by another process");
    EXPECT_TRUE(c2 == NULL);

    /* A failure record that is not one: PROTOCOL, quoted. */
    EXPECT_ST(FERRY_OK, ferry_store_set(rogue, "api/x/2/err", "bogus", 5));
    EXPECT_ST(FERRY_OK, ferry_store_ping(rogue));
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_comm_exchange(c, agent, TMO));
    EXPECT_ERR_HAS("malformed failure record 'bogus'");
    EXPECT_ST(FERRY_OK, ferry_store_set(rogue, "api/x/3/err", "-999 x", 6));
    EXPECT_ST(FERRY_OK, ferry_store_ping(rogue));
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_comm_exchange(c, agent, TMO));

    /* An abort key holding garbage still aborts, and says what it held. */
    EXPECT_ST(FERRY_OK, ferry_store_set(rogue, "api/abort", "zzz", 3));
    EXPECT_ST(FERRY_OK, ferry_store_ping(rogue));
    ferry_comm_t *c3 = NULL;
    ferry_comm_destroy(c);
    ferry_comm_destroy(c2);
    EXPECT_ST(FERRY_OK, ferry_store_delete_key(rogue, "api/join/0", NULL));
    EXPECT_ST(FERRY_ERR_ABORTED, ferry_comm_create(&p, &c3));
    EXPECT_ERR_HAS("abort key holds 'zzz'");

    /* An abort of this rank's own: every later collective, at once. */
    c = comm_one(url, "api2/");
    EXPECT_ST(FERRY_OK, ferry_comm_abort(c, "enough"));
    EXPECT_ST(FERRY_ERR_ABORTED, ferry_comm_barrier(c, -1));
    EXPECT_ERR_HAS("aborted by rank 0 (this rank): enough");
    EXPECT_ST(FERRY_ERR_ABORTED, ferry_comm_exchange(c, agent, -1));
    EXPECT_ST(FERRY_OK, ferry_store_get(rogue, "api2/abort", &val, &len));
    EXPECT_TRUE(strcmp(val, "0 enough") == 0);
    ferry_store_free(val);
    ferry_comm_destroy(c);

    ferry_agent_destroy(agent);
    ferry_store_close(rogue);
    ferry_store_server_stop(srv);
    return test_finish("test_comm api");
}

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

static const char *const all_vars[] = {
    "FERRY_RANK", "FERRY_WORLD_SIZE", "FERRY_STORE", "RANK", "WORLD_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
    "FERRY_COMM_PREFIX", "FERRY_COMM_TIMEOUT_MS", "FERRY_COMM_LIVENESS_MS"};

/* Sets exactly the variables given ("NAME=value", NULL-terminated). */
static void env_only(const char *const *vars)
{
    for (size_t i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++)
        unsetenv(all_vars[i]);
    for (; *vars; vars++)
        putenv((char *)*vars);
}

#define ENV(...) env_only((const char *const[]){__VA_ARGS__, NULL})

static void expect_cfg(int line, int rank, int size, const char *url,
                       const char *source)
{
    ferry__comm_cfg_t cfg;
    ferry_status_t st = ferry__comm_resolve(NULL, &cfg);

    if (st != FERRY_OK) {
        TEST_FAIL_AT_("line %d: %s: %s", line, ferry_status_str(st),
                      ferry_last_error());
        return;
    }
    if (cfg.rank != rank || cfg.size != size || strcmp(cfg.url, url) != 0 ||
        strcmp(cfg.source, source) != 0)
        TEST_FAIL_AT_("line %d: got rank %d size %d url %s source %s", line,
                      cfg.rank, cfg.size, cfg.url, cfg.source);
}

static void expect_invalid(int line, const char *text)
{
    ferry__comm_cfg_t cfg;
    ferry_status_t st = ferry__comm_resolve(NULL, &cfg);

    if (st != FERRY_ERR_INVALID || strstr(ferry_last_error(), text) == NULL)
        TEST_FAIL_AT_("line %d: expected INVALID with '%s', got %s: %s", line,
                      text, ferry_status_str(st), ferry_last_error());
}

static int run_env(void)
{
    ferry__comm_cfg_t cfg;
    ferry_comm_params_t p = {0};

    /* Each launcher's variables, and the defaults. */
    ENV("FERRY_RANK=3", "FERRY_WORLD_SIZE=8", "FERRY_STORE=tcp://h:1");
    expect_cfg(__LINE__, 3, 8, "tcp://h:1", "FERRY");
    ASSERT_ST(FERRY_OK, ferry__comm_resolve(NULL, &cfg));
    EXPECT_EQ(300000000000ull, cfg.timeout_ns);
    EXPECT_EQ(10000000000ull, cfg.liveness_ns);
    EXPECT_TRUE(strcmp(cfg.prefix, "ferry/") == 0);
    ENV("RANK=1", "WORLD_SIZE=4", "MASTER_ADDR=10.0.0.5", "MASTER_PORT=29500");
    expect_cfg(__LINE__, 1, 4, "tcp://10.0.0.5:29500", "torchrun");
    ENV("RANK=0", "WORLD_SIZE=1", "MASTER_ADDR=::1", "MASTER_PORT=29500");
    expect_cfg(__LINE__, 0, 1, "tcp://[::1]:29500", "torchrun");
    ENV("OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=3",
        "FERRY_STORE=tcp://a:5");
    expect_cfg(__LINE__, 2, 3, "tcp://a:5", "Open MPI");
    ENV("SLURM_PROCID=0", "SLURM_NTASKS=1", "MASTER_ADDR=n1", "MASTER_PORT=7");
    expect_cfg(__LINE__, 0, 1, "tcp://n1:7", "Slurm");

    /* Precedence: ferry's own, then torchrun (which may run under Slurm or
     * mpirun, whose variables then describe the launcher, not the rank);
     * FERRY_STORE before MASTER_ADDR. */
    ENV("FERRY_RANK=1", "FERRY_WORLD_SIZE=2", "RANK=5", "WORLD_SIZE=9",
        "FERRY_STORE=tcp://f:1", "MASTER_ADDR=m", "MASTER_PORT=2");
    expect_cfg(__LINE__, 1, 2, "tcp://f:1", "FERRY");
    ENV("RANK=5", "WORLD_SIZE=8", "SLURM_PROCID=1", "SLURM_NTASKS=2",
        "OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=1",
        "MASTER_ADDR=m", "MASTER_PORT=2");
    expect_cfg(__LINE__, 5, 8, "tcp://m:2", "torchrun");

    /* Parameters win over the environment, field by field. */
    ENV("FERRY_RANK=1", "FERRY_WORLD_SIZE=4", "FERRY_STORE=tcp://e:1");
    p.field_mask = FERRY_COMM_PARAM_RANK | FERRY_COMM_PARAM_STORE_URL |
                   FERRY_COMM_PARAM_PREFIX | FERRY_COMM_PARAM_TIMEOUT;
    p.rank = 3;
    p.store_url = "tcp://p:9";
    p.prefix = "job7/";
    p.timeout_ns = 5;
    ASSERT_ST(FERRY_OK, ferry__comm_resolve(&p, &cfg));
    EXPECT_EQ(3, cfg.rank);
    EXPECT_EQ(4, cfg.size);
    EXPECT_TRUE(strcmp(cfg.url, "tcp://p:9") == 0);
    EXPECT_TRUE(strcmp(cfg.prefix, "job7/") == 0);
    EXPECT_EQ(5, cfg.timeout_ns);
    p.rank = 4; /* not below FERRY_WORLD_SIZE */
    EXPECT_ST(FERRY_ERR_INVALID, ferry__comm_resolve(&p, &cfg));
    EXPECT_ERR_HAS("rank 4 and size 4");
    p.field_mask = FERRY_COMM_PARAM_PREFIX;
    p.prefix = NULL;
    EXPECT_ST(FERRY_ERR_INVALID, ferry__comm_resolve(&p, &cfg));
    EXPECT_ERR_HAS("prefix");

    /* Partial pairs, bad numbers, bad stores: INVALID naming the variable. */
    ENV("FERRY_RANK=0", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "FERRY_RANK is set but FERRY_WORLD_SIZE is not");
    ENV("WORLD_SIZE=2", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "WORLD_SIZE is set but RANK is not");
    ENV("SLURM_PROCID=0", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "SLURM_PROCID is set but SLURM_NTASKS is not");
    ENV("FERRY_RANK=2", "FERRY_WORLD_SIZE=2", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "FERRY_RANK=2 is not below the world size 2");
    ENV("FERRY_RANK=abc", "FERRY_WORLD_SIZE=2", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "FERRY_RANK='abc' is not a number");
    ENV("FERRY_RANK=-1", "FERRY_WORLD_SIZE=2", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "FERRY_RANK='-1'");
    ENV("FERRY_RANK=1x", "FERRY_WORLD_SIZE=2", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "FERRY_RANK='1x'");
    ENV("RANK=0", "WORLD_SIZE=0", "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "WORLD_SIZE='0'");
    ENV("OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=99999999999999999999",
        "FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "OMPI_COMM_WORLD_SIZE='99999999999999999999'");
    ENV("FERRY_STORE=tcp://h:1");
    expect_invalid(__LINE__, "no rank and world size");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1");
    expect_invalid(__LINE__, "no store");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "MASTER_ADDR=m");
    expect_invalid(__LINE__, "MASTER_ADDR is set but MASTER_PORT is not");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "MASTER_ADDR=m",
        "MASTER_PORT=70000");
    expect_invalid(__LINE__, "MASTER_PORT='70000'");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=http://h:1");
    expect_invalid(__LINE__, "FERRY_STORE='http://h:1' is not tcp://host:port");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=tcp://h:99999");
    expect_invalid(__LINE__, "FERRY_STORE='tcp://h:99999' is not tcp://host:port");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=tcp://h:");
    expect_invalid(__LINE__, "FERRY_STORE='tcp://h:' is not tcp://host:port");
    /* etcd URLs: checked by the etcd client's parser, or refused as
     * UNSUPPORTED by a build without it. */
    if (ferry__kv_etcd_check_url("etcd://h:1/x") == FERRY_OK) {
        ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1",
            "FERRY_STORE=etcd://h:1,[::1]:2379/jobs/7");
        expect_cfg(__LINE__, 0, 1, "etcd://h:1,[::1]:2379/jobs/7", "FERRY");
        ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=etcd://h:1");
        expect_invalid(__LINE__, "FERRY_STORE='etcd://h:1': etcd: 'etcd://h:1' has "
                       "no prefix");
        ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=etcd://h:0/x");
        expect_invalid(__LINE__, "no valid port");
    } else {
        ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=etcd://h:1/x");
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry__comm_resolve(NULL, &cfg));
    }
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=tcp://h:1",
        "FERRY_COMM_TIMEOUT_MS=soon");
    expect_invalid(__LINE__, "FERRY_COMM_TIMEOUT_MS='soon'");
    ENV("FERRY_RANK=0", "FERRY_WORLD_SIZE=1", "FERRY_STORE=tcp://h:1",
        "FERRY_COMM_LIVENESS_MS=5");
    expect_invalid(__LINE__, "under 10 ms");

    /* ferry_comm_create reports the same, before touching any store. */
    ferry_comm_t *comm = NULL;
    ENV("FERRY_RANK=1", "FERRY_STORE=tcp://h:1");
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_create(NULL, &comm));
    EXPECT_ERR_HAS("FERRY_RANK is set but FERRY_WORLD_SIZE is not");
    EXPECT_TRUE(comm == NULL);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_comm_create(NULL, NULL));
    return test_finish("test_comm env");
}

/* ferry-run -n N --etcd URL -- this test's ring, against an etcd member
 * started here; the job's exit code. */
static int run_etcd_ring(const char *self, const char *n)
{
    char url[128];
    int order = 0, status;
    pid_t pid;

    xe_start(1);
    xe_url(url, sizeof(url), &order, 1, "ring");
    fflush(NULL);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(FERRY_RUN_TOOL, "ferry-run", "-n", n, "--etcd", url, "--", self,
              "ring", (char *)NULL);
        _exit(127);
    }
    ASSERT_TRUE(waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
    alarm(170);
    if (argc >= 2 && strcmp(argv[1], "ring") == 0)
        return run_ring();
    if (argc >= 3 && strcmp(argv[1], "rank") == 0)
        return run_rank(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "fail") == 0)
        return run_fail(argv[0], argv[2], argc >= 4 && strcmp(argv[3], "etcd") == 0);
    if (argc >= 3 && strcmp(argv[1], "etcd-ring") == 0)
        return run_etcd_ring(argv[0], argv[2]);
    if (argc >= 2 && strcmp(argv[1], "env") == 0)
        return run_env();
    if (argc >= 2 && strcmp(argv[1], "stall4") == 0)
        return run_stall4(argv[0]);
    if (argc >= 2 && strcmp(argv[1], "api") == 0)
        return run_api();
    if (argc >= 2 && strcmp(argv[1], "stall") == 0)
        return run_stall(argc >= 3 && strcmp(argv[2], "etcd") == 0);
    if (argc >= 2 && strcmp(argv[1], "etcd-late") == 0)
        return run_late();
    if (argc >= 2 && strcmp(argv[1], "etcd-garbage") == 0)
        return run_etcd_garbage();
    if (argc >= 2 && strcmp(argv[1], "etcd-outage") == 0)
        return run_etcd_outage();
    fprintf(stderr, "usage: test_comm ring | rank CASE | fail CASE [etcd] | env | api | "
            "stall [etcd] | stall4 | etcd-ring N | etcd-late | etcd-garbage | etcd-outage\n");
    return 2;
}
