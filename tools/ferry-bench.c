/*
 * ferry-bench: measures ferry's one-sided WRITE and READ between two local
 * processes, the figure every performance claim in docs/PERFORMANCE.md rests
 * on.
 *
 * Run with no arguments, it is a launcher: it creates a socketpair, starts
 * itself twice (fork, then exec of /proc/self/exe with a hidden --role
 * argument) as rank 0, the initiator, and rank 1, the target, and waits for
 * both. The launcher never touches ferry, because UCX must be initialised in
 * the process that uses it, after any fork. The ranks swap metadata blobs
 * over the socketpair; rank 0 then prepares one request per operation and
 * block size (timing the prepare), posts and waits on it repeatedly, and
 * prints nixlbench's columns in decimal GB (1e9 bytes). Rank 1 only drives
 * its agent's progress and answers fill/verify commands for --check.
 *
 * --prepare-bench N measures the cost of preparing (and releasing) a request
 * of N small descriptors in one process, against its own blob (loopback).
 */
#include "ferry.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZES 64
/* No blocking call may hang the benchmark; a transfer taking this long is an
 * error worth reporting, not a slow figure. */
#define WAIT_TIMEOUT_NS (60LL * 1000000000LL)

enum { ROLE_LAUNCHER = -1, ROLE_INITIATOR = 0, ROLE_TARGET = 1 };
/* How rank 1 serves: spinning on progress (as ucx_perftest's responder
 * does), sleeping on ferry_agent_fd(), or leaving it to ferry's progress
 * thread. Transports that emulate RMA need the target's CPU, so this
 * matters; see --target. */
enum { TARGET_SPIN, TARGET_FD, TARGET_THREAD };

typedef struct options {
    size_t sizes[MAX_SIZES];
    size_t nsizes;
    size_t iters, warmup, batch;
    bool do_write, do_read, check;
    int target_mode; /* TARGET_SPIN, TARGET_FD or TARGET_THREAD */
    const char *csv_path, *json_path;
    size_t prepare_n; /* 0: not in --prepare-bench mode */
    int role, fd;
} options_t;

/* A result row: nixlbench's columns, in its order. One prepare per row, so
 * its average and 99th percentile coincide. */
enum { BW, AVG_LAT, AVG_PREP, P99_PREP, AVG_POST, P99_POST, AVG_TX, P99_TX,
       NCOLS };
static const char *const col_names[NCOLS] = {
    "B/W (GB/Sec)", "Avg Lat. (us)", "Avg Prep (us)", "P99 Prep (us)",
    "Avg Post (us)", "P99 Post (us)", "Avg Tx (us)", "P99 Tx (us)"};
static const char *const col_keys[NCOLS] = {
    "bw_gbps", "avg_lat_us", "avg_prep_us", "p99_prep_us",
    "avg_post_us", "p99_post_us", "avg_tx_us", "p99_tx_us"};

typedef struct result {
    ferry_xfer_op_t op;
    size_t size, batch, iters;
    double v[NCOLS];
} result_t;

/* Commands rank 0 sends to rank 1 over the socketpair, and the reply. */
enum { CMD_FILL = 1, CMD_VERIFY, CMD_DONE, CMD_REPLY };

typedef struct msg {
    uint32_t cmd;
    int32_t status; /* CMD_REPLY: 0, or 1 for a mismatch at .offset */
    uint64_t seed;  /* the pattern to fill or to expect */
    uint64_t len;   /* bytes from the start of the buffer */
    uint64_t offset;
} msg_t;

static int g_rank = ROLE_LAUNCHER;

/* ---- Helpers ------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, g_rank >= 0 ? "ferry-bench[rank %d]: " : "ferry-bench: ",
            g_rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Every ferry error ends the run with the call, its status and the detail
 * text, which is what the lead needs to find the fault. */
#define CHECK(call)                                                            \
    do {                                                                       \
        ferry_status_t st_ = (call);                                           \
        if (st_ < 0) {                                                         \
            die("%s: %s (%s)", #call, ferry_status_str(st_),                   \
                ferry_last_error());                                           \
        }                                                                      \
    } while (0)

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sends or receives exactly len bytes on the socketpair; any failure, or the
 * other rank closing its end, ends this rank. */
static void sock_io(int fd, void *buf, size_t len, bool out)
{
    for (char *p = buf; len > 0;) {
        /* MSG_NOSIGNAL: a dead peer must give an error message, not SIGPIPE. */
        ssize_t n = out ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("%s the other rank: %s", out ? "send to" : "recv from",
                n == 0 ? "connection closed (did it fail?)" : strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

static void *alloc_buffer(size_t len)
{
    /* Anonymous mmap gives page-aligned memory; touching it now keeps page
     * faults out of the timed loop. */
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        die("mmap of %zu bytes: %s", len, strerror(errno));
    }
    memset(p, 0xa5, len);
    return p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts samples in place; returns the nearest-rank 99th percentile. */
static uint64_t p99(uint64_t *v, size_t n)
{
    size_t rank = (99 * n + 99) / 100; /* ceil(0.99 n), n >= 1 */

    qsort(v, n, sizeof(*v), cmp_u64);
    return v[rank - 1];
}

static double mean_us(const uint64_t *v, size_t n)
{
    double sum = 0;

    for (size_t i = 0; i < n; i++) {
        sum += (double)v[i];
    }
    return n ? sum / (double)n / 1e3 : 0;
}

/* ---- Data pattern for --check -------------------------------------------- */

/* The byte at offset off of pattern seed. It changes with every iteration,
 * operation and size, so that stale data from an earlier post never passes. */
static uint8_t pattern_byte(uint64_t seed, uint64_t off)
{
    uint64_t x = (seed ^ (off >> 3)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return (uint8_t)(x >> ((off & 7) * 8));
}

/* Writes the pattern (fill) or returns the first offset that differs from
 * it, or len if none does. */
static size_t pattern(uint8_t *buf, size_t len, uint64_t seed, bool fill)
{
    for (size_t i = 0; i < len; i++) {
        if (fill) {
            buf[i] = pattern_byte(seed, i);
        } else if (buf[i] != pattern_byte(seed, i)) {
            return i;
        }
    }
    return len;
}

static uint64_t pattern_seed(ferry_xfer_op_t op, size_t size, size_t iter)
{
    return ((uint64_t)op << 62) ^ ((uint64_t)size << 24) ^ iter ^
           0x5eed0000000000ull;
}

/* ---- The two ranks ------------------------------------------------------- */

typedef struct rank_ctx {
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    uint8_t *buf;
    size_t buf_len;
    uint64_t remote_addr; /* the other rank's buffer, in its address space */
    int fd;
} rank_ctx_t;

/* Creates the agent, registers the buffer and swaps blobs (with the
 * buffer's address) with the other rank; both ranks load the other's blob,
 * as real users of one-sided transfers do. */
static void rank_setup(rank_ctx_t *rc, const options_t *o)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME};
    char name[32];
    uint64_t hdr[3], peer_hdr[3];
    void *blob, *peer_blob;
    size_t blob_len, max_size = 0;

    for (size_t i = 0; i < o->nsizes; i++) {
        max_size = o->sizes[i] > max_size ? o->sizes[i] : max_size;
    }
    if (max_size > SIZE_MAX / o->batch) {
        die("--sizes times --batch overflows");
    }
    rc->fd = o->fd;
    rc->buf_len = max_size * o->batch;
    rc->buf = alloc_buffer(rc->buf_len);

    snprintf(name, sizeof(name), "ferry-bench-rank%d", o->role);
    ap.name = name;
    if (o->role == ROLE_TARGET && o->target_mode == TARGET_THREAD) {
        ap.field_mask |= FERRY_AGENT_PARAM_PROGRESS_THREAD;
        ap.progress_thread = 1;
    }
    CHECK(ferry_agent_create(&ap, &rc->agent));
    ferry_desc_t d = {.addr = (uintptr_t)rc->buf, .len = rc->buf_len,
                      .kind = FERRY_MEM_HOST};
    CHECK(ferry_mem_register(rc->agent, &d, 1, &rc->mem));
    CHECK(ferry_md_pack(rc->agent, &blob, &blob_len));

    hdr[0] = (uintptr_t)rc->buf;
    hdr[1] = rc->buf_len;
    hdr[2] = blob_len;
    sock_io(rc->fd, hdr, sizeof(hdr), true);
    sock_io(rc->fd, blob, blob_len, true);
    ferry_md_free(blob);

    sock_io(rc->fd, peer_hdr, sizeof(peer_hdr), false);
    if (peer_hdr[2] == 0 || peer_hdr[2] > (64u << 20) ||
        peer_hdr[1] != rc->buf_len) {
        die("bad metadata header from the other rank");
    }
    peer_blob = malloc(peer_hdr[2]);
    if (peer_blob == NULL) {
        die("out of memory");
    }
    sock_io(rc->fd, peer_blob, peer_hdr[2], false);
    CHECK(ferry_peer_load(rc->agent, peer_blob, peer_hdr[2], &rc->peer));
    free(peer_blob);
    rc->remote_addr = peer_hdr[0];
}

static void rank_teardown(rank_ctx_t *rc)
{
    ferry_peer_forget(rc->peer);
    CHECK(ferry_mem_deregister(rc->mem));
    ferry_agent_destroy(rc->agent);
    munmap(rc->buf, rc->buf_len);
}

/* Rank 1: drives its agent (some transports, e.g. emulated RMA over active
 * messages, need the target to progress; ucx_perftest's responder polls the
 * same way) and serves fill/verify commands until told to stop. */
static int run_target(const options_t *o)
{
    rank_ctx_t rc;
    unsigned spins = 0;
    msg_t m, r;

    rank_setup(&rc, o);
    struct pollfd pfd[2] = {{.fd = rc.fd, .events = POLLIN},
                            {.fd = -1, .events = POLLIN}};
    if (o->target_mode == TARGET_FD) {
        CHECK(ferry_agent_fd(rc.agent, &pfd[1].fd));
    }
    for (;;) {
        if (o->target_mode == TARGET_SPIN) {
            ferry_agent_progress(rc.agent);
            /* Checking the socket on every spin would make the target
             * mostly a poll() loop; commands are rare and never timed. */
            if ((++spins & 63) != 0 || poll(pfd, 1, 0) <= 0) {
                continue;
            }
        } else {
            /* Progress until nothing is left, then sleep on the socket
             * and, in fd mode, on the agent's fd; the progress thread
             * needs nothing from us. */
            while (o->target_mode == TARGET_FD &&
                   ferry_agent_progress(rc.agent) == FERRY_IN_PROGRESS) {
            }
            if (poll(pfd, o->target_mode == TARGET_FD ? 2 : 1,
                     o->target_mode == TARGET_FD ? 100 : -1) <= 0 ||
                !(pfd[0].revents & (POLLIN | POLLHUP))) {
                continue;
            }
        }
        sock_io(rc.fd, &m, sizeof(m), false);
        if (m.cmd == CMD_DONE) {
            break;
        }
        if (m.len > rc.buf_len) {
            die("command length %" PRIu64 " exceeds the buffer", m.len);
        }
        memset(&r, 0, sizeof(r));
        r.cmd = CMD_REPLY;
        if (m.cmd == CMD_FILL) {
            pattern(rc.buf, m.len, m.seed, true);
        } else if (m.cmd == CMD_VERIFY) {
            r.offset = pattern(rc.buf, m.len, m.seed, false);
            r.status = r.offset != m.len;
        } else {
            die("unknown command %u", m.cmd);
        }
        sock_io(rc.fd, &r, sizeof(r), true);
    }
    rank_teardown(&rc);
    return 0;
}

static msg_t target_call(int fd, uint32_t cmd, uint64_t seed, uint64_t len)
{
    msg_t m = {.cmd = cmd, .seed = seed, .len = len}, r;

    sock_io(fd, &m, sizeof(m), true);
    sock_io(fd, &r, sizeof(r), false);
    if (r.cmd != CMD_REPLY) {
        die("unexpected reply %u from the target", r.cmd);
    }
    return r;
}

static void report_mismatch(const char *where, ferry_xfer_op_t op, size_t size,
                            size_t iter, uint64_t off, uint64_t seed)
{
    die("--check: %s data wrong after %s of %zu B, iteration %zu: first "
        "mismatch at byte %" PRIu64 " (descriptor %" PRIu64 ", offset %" PRIu64
        "), expected 0x%02x",
        where, op == FERRY_OP_WRITE ? "WRITE" : "READ", size, iter, off,
        off / size, off % size, pattern_byte(seed, off));
}

/* Posts the request and waits for it; returns the post time in *post_ns. */
static void post_wait(ferry_xfer_t *x, uint64_t *post_ns)
{
    uint64_t t0 = now_ns();
    ferry_status_t st = ferry_xfer_post(x);
    *post_ns = now_ns() - t0;
    if (st == FERRY_IN_PROGRESS) {
        st = ferry_xfer_wait(x, WAIT_TIMEOUT_NS);
    }
    if (st != FERRY_OK) {
        die("ferry_xfer_post/wait: %s (%s)", ferry_status_str(st),
            ferry_last_error());
    }
}

/* One operation at one block size: prepare once, warm up, then time. */
static result_t bench_one(rank_ctx_t *rc, const options_t *o,
                          ferry_xfer_op_t op, size_t size, uint64_t *post_v,
                          uint64_t *tx_v)
{
    result_t res = {.op = op, .size = size, .batch = o->batch,
                    .iters = o->iters};
    ferry_desc_t *l = calloc(o->batch, sizeof(*l));
    ferry_desc_t *r = calloc(o->batch, sizeof(*r));
    size_t span = size * o->batch, total = o->warmup + o->iters;
    ferry_xfer_t *x;
    uint64_t t0, loop_ns = 0;

    if (l == NULL || r == NULL) {
        die("out of memory");
    }
    for (size_t i = 0; i < o->batch; i++) {
        l[i] = (ferry_desc_t){.addr = (uintptr_t)rc->buf + i * size,
                              .len = size, .kind = FERRY_MEM_HOST};
        r[i] = (ferry_desc_t){.addr = rc->remote_addr + i * size, .len = size,
                              .kind = FERRY_MEM_HOST};
    }
    t0 = now_ns();
    CHECK(ferry_xfer_prepare(rc->agent, op, l, o->batch, rc->peer, r,
                             o->batch, NULL, &x));
    res.v[AVG_PREP] = res.v[P99_PREP] = (double)(now_ns() - t0) / 1e3;

    for (size_t it = 0; it < total; it++) {
        bool timed = it >= o->warmup;
        size_t k = it - o->warmup; /* only meaningful when timed */
        uint64_t seed = pattern_seed(op, size, it), post_ns;

        if (o->check) {
            /* The source gets this iteration's pattern, outside the timing. */
            if (op == FERRY_OP_WRITE) {
                pattern(rc->buf, span, seed, true);
            } else {
                target_call(rc->fd, CMD_FILL, seed, span);
            }
        }
        if (timed && k == 0) {
            loop_ns = now_ns();
        }
        t0 = now_ns();
        post_wait(x, &post_ns);
        if (timed) {
            tx_v[k] = now_ns() - t0;
            post_v[k] = post_ns;
        }
        if (o->check) {
            if (op == FERRY_OP_WRITE) {
                msg_t rep = target_call(rc->fd, CMD_VERIFY, seed, span);
                if (rep.status != 0) {
                    report_mismatch("remote", op, size, it, rep.offset, seed);
                }
            } else {
                size_t off = pattern(rc->buf, span, seed, false);
                if (off != span) {
                    report_mismatch("local", op, size, it, off, seed);
                }
            }
        }
    }
    loop_ns = now_ns() - loop_ns;
    ferry_xfer_release(x);
    free(l);
    free(r);

    /* With --check the loop's wall time includes the fills and verifies, so
     * the bandwidth comes from the transfers' own times instead. */
    if (o->check) {
        loop_ns = 0;
        for (size_t k = 0; k < o->iters; k++) {
            loop_ns += tx_v[k];
        }
    }
    res.v[BW] = (double)span * (double)o->iters / (double)loop_ns;
    res.v[AVG_LAT] = (double)loop_ns / (double)o->iters / 1e3;
    res.v[AVG_POST] = mean_us(post_v, o->iters);
    res.v[AVG_TX] = mean_us(tx_v, o->iters);
    res.v[P99_POST] = (double)p99(post_v, o->iters) / 1e3;
    res.v[P99_TX] = (double)p99(tx_v, o->iters) / 1e3;
    return res;
}

static const char *op_name(ferry_xfer_op_t op)
{
    return op == FERRY_OP_WRITE ? "WRITE" : "READ";
}

static void print_header(ferry_xfer_op_t op)
{
    printf("\n%s, host memory, rank 0 -> rank 1 (%s)\n%-16s%-12s", op_name(op),
           op == FERRY_OP_WRITE ? "local to remote" : "remote to local",
           "Block Size (B)", "Batch Size");
    for (int i = 0; i < NCOLS; i++) {
        printf(i + 1 < NCOLS ? "%-15s" : "%s\n", col_names[i]);
    }
    for (int i = 0; i < 16 + 12 + 15 * NCOLS - 4; i++) {
        putchar('-');
    }
    putchar('\n');
}

static void print_row(const result_t *r)
{
    printf("%-16zu%-12zu", r->size, r->batch);
    for (int i = 0; i < NCOLS; i++) {
        printf(i + 1 < NCOLS ? "%-15.3f" : "%.3f\n", r->v[i]);
    }
    fflush(stdout);
}

static FILE *open_out(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        die("cannot write %s: %s", path, strerror(errno));
    }
    return f;
}

static void write_files(const options_t *o, const result_t *res, size_t n)
{
    FILE *f;

    if (o->csv_path != NULL) {
        f = open_out(o->csv_path);
        fprintf(f, "op,block_size,batch_size,iters");
        for (int c = 0; c < NCOLS; c++) {
            fprintf(f, ",%s", col_keys[c]);
        }
        for (size_t i = 0; i < n; i++) {
            fprintf(f, "\n%s,%zu,%zu,%zu", op_name(res[i].op), res[i].size,
                    res[i].batch, res[i].iters);
            for (int c = 0; c < NCOLS; c++) {
                fprintf(f, ",%.6f", res[i].v[c]);
            }
        }
        fprintf(f, "\n");
        fclose(f);
    }
    if (o->json_path != NULL) {
        f = open_out(o->json_path);
        fprintf(f, "{\"tool\": \"ferry-bench\", \"ferry_version\": \"%s\", "
                   "\"memory\": \"host\", \"bw_unit\": \"1e9 B/s\", "
                   "\"checked\": %s, \"results\": [",
                ferry_version(), o->check ? "true" : "false");
        for (size_t i = 0; i < n; i++) {
            fprintf(f, "%s\n  {\"op\": \"%s\", \"block_size\": %zu, "
                       "\"batch_size\": %zu, \"iters\": %zu",
                    i ? "," : "", op_name(res[i].op), res[i].size,
                    res[i].batch, res[i].iters);
            for (int c = 0; c < NCOLS; c++) {
                fprintf(f, ", \"%s\": %.6f", col_keys[c], res[i].v[c]);
            }
            fprintf(f, "}");
        }
        fprintf(f, "\n]}\n");
        fclose(f);
    }
}

/* Rank 0: the initiator, which runs the sweep and reports. */
static int run_initiator(const options_t *o)
{
    ferry_xfer_op_t ops[2];
    size_t nops = 0, nres = 0;
    result_t *res = calloc(2 * o->nsizes, sizeof(*res));
    uint64_t *post_v = calloc(o->iters, sizeof(uint64_t));
    uint64_t *tx_v = calloc(o->iters, sizeof(uint64_t));
    rank_ctx_t rc;

    if (res == NULL || post_v == NULL || tx_v == NULL) {
        die("out of memory");
    }
    if (o->do_write) {
        ops[nops++] = FERRY_OP_WRITE;
    }
    if (o->do_read) {
        ops[nops++] = FERRY_OP_READ;
    }
    rank_setup(&rc, o);
    printf("ferry-bench: ferry %s, 2 local ranks, %zu iterations (+%zu "
           "warm-up) per size%s; B/W in decimal GB/s\n",
           ferry_version(), o->iters, o->warmup,
           o->check ? ", data checked after every iteration" : "");
    for (size_t i = 0; i < nops; i++) {
        print_header(ops[i]);
        for (size_t s = 0; s < o->nsizes; s++) {
            res[nres] = bench_one(&rc, o, ops[i], o->sizes[s], post_v, tx_v);
            print_row(&res[nres++]);
        }
    }
    /* Close the connection while the target still drives progress, so that
     * closing never waits on a process that has already gone. */
    ferry_peer_forget(rc.peer);
    rc.peer = NULL;
    msg_t done = {.cmd = CMD_DONE};
    sock_io(rc.fd, &done, sizeof(done), true);
    rank_teardown(&rc);
    write_files(o, res, nres);
    free(res);
    free(post_v);
    free(tx_v);
    return 0;
}

/* ---- --prepare-bench ----------------------------------------------------- */

/* Prepares a WRITE of n 64-byte descriptors within one registered region,
 * against the agent's own blob, and reports the cost per descriptor: the
 * design promises O(log n) lookups, so this should be tens of nanoseconds.
 * The first prepare also connects to the peer, so it is reported apart. */
static int run_prepare_bench(size_t n)
{
    enum { DESC_LEN = 64, RUNS = 5 };
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    void *blob;
    size_t blob_len, len = 2 * n * DESC_LEN;
    uint8_t *buf = alloc_buffer(len);
    ferry_desc_t *l = calloc(n, sizeof(*l)), *r = calloc(n, sizeof(*r));
    uint64_t prep[RUNS + 1], rel[RUNS + 1], prep_sum = 0, rel_sum = 0;

    if (l == NULL || r == NULL) {
        die("out of memory");
    }
    CHECK(ferry_agent_create(NULL, &agent));
    ferry_desc_t d = {.addr = (uintptr_t)buf, .len = len,
                      .kind = FERRY_MEM_HOST};
    CHECK(ferry_mem_register(agent, &d, 1, &mem));
    CHECK(ferry_md_pack(agent, &blob, &blob_len));
    CHECK(ferry_peer_load(agent, blob, blob_len, &peer));
    ferry_md_free(blob);
    /* Sources fill the first half of the region, destinations the second. */
    for (size_t i = 0; i < n; i++) {
        l[i] = (ferry_desc_t){.addr = (uintptr_t)buf + i * DESC_LEN,
                              .len = DESC_LEN, .kind = FERRY_MEM_HOST};
        r[i] = (ferry_desc_t){.addr = (uintptr_t)buf + (n + i) * DESC_LEN,
                              .len = DESC_LEN, .kind = FERRY_MEM_HOST};
    }
    for (int run = 0; run <= RUNS; run++) {
        ferry_xfer_t *x;
        uint64_t t0 = now_ns();
        CHECK(ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, n, peer, r, n,
                                 NULL, &x));
        uint64_t t1 = now_ns();
        ferry_xfer_release(x);
        prep[run] = t1 - t0;
        rel[run] = now_ns() - t1;
        prep_sum += run > 0 ? prep[run] : 0;
        rel_sum += run > 0 ? rel[run] : 0;
    }
    printf("prepare-bench: WRITE of %zu descriptors of %d B, loopback peer\n"
           "first prepare (connects): %.3f ms, release %.3f ms\n"
           "prepare: %.1f ns/descriptor (%.3f ms per request, mean of %d)\n"
           "release: %.2f ns/descriptor (%.3f ms per request, mean of %d)\n",
           n, DESC_LEN, (double)prep[0] / 1e6, (double)rel[0] / 1e6,
           (double)prep_sum / RUNS / (double)n, (double)prep_sum / RUNS / 1e6,
           RUNS, (double)rel_sum / RUNS / (double)n,
           (double)rel_sum / RUNS / 1e6, RUNS);
    ferry_peer_forget(peer);
    CHECK(ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
    free(l);
    free(r);
    munmap(buf, len);
    return 0;
}

/* ---- Launcher ------------------------------------------------------------ */

/* Starts both ranks as fresh processes and returns the first failure's exit
 * code; when one rank fails, the other is ended rather than left waiting. */
static int launch(int argc, char **argv)
{
    int sv[2], rc = 0;
    pid_t pids[2];
    char **args = calloc((size_t)argc + 3, sizeof(*args));

    if (args == NULL) {
        die("out of memory");
    }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        die("socketpair: %s", strerror(errno));
    }
    fflush(NULL);
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        if (pids[r] < 0) {
            die("fork: %s", strerror(errno));
        }
        if (pids[r] == 0) {
            char role[32], fd[32];
            close(sv[1 - r]);
            snprintf(role, sizeof(role), "--role=%d", r);
            snprintf(fd, sizeof(fd), "--fd=%d", sv[r]);
            args[0] = argv[0];
            args[1] = role;
            args[2] = fd;
            for (int i = 1; i < argc; i++) {
                args[i + 2] = argv[i];
            }
            execv("/proc/self/exe", args);
            fprintf(stderr, "ferry-bench: exec: %s\n", strerror(errno));
            _exit(127);
        }
    }
    close(sv[0]);
    close(sv[1]);
    free(args);

    /* After a failure the survivor gets a grace period to notice on its
     * own (ferry must fail its requests with PEER_LOST rather than hang, and
     * its message is worth seeing); only then is it ended. */
    uint64_t deadline = 0;
    for (int left = 2; left > 0;) {
        int status;
        pid_t pid = waitpid(-1, &status, deadline ? WNOHANG : 0);
        if (pid == 0) {
            if (now_ns() > deadline) {
                fprintf(stderr, "ferry-bench: rank %d still running 10 s "
                                "after the other failed; ending it\n",
                        pids[0] ? 0 : 1);
                kill(pids[0] ? pids[0] : pids[1], SIGKILL);
                deadline = 0;
            }
            nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("waitpid: %s", strerror(errno));
        }
        int code = WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        int r = pid == pids[0] ? 0 : 1;
        pids[r] = 0;
        left--;
        if (code != 0 && rc == 0) {
            rc = code;
            fprintf(stderr, "ferry-bench: rank %d failed (exit %d)\n", r, code);
            deadline = left ? now_ns() + 10000000000ull : 0;
        }
    }
    return rc;
}

/* ---- Options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: ferry-bench [options]\n"
        "  Starts two local ranks and sweeps block sizes for WRITE and READ.\n"
        "  --sizes LIST       block sizes, comma-separated, K/M/G suffixes in\n"
        "                     binary units (default 4K,64K,1M,16M)\n"
        "  --iters N          timed iterations per size (default 1000)\n"
        "  --warmup N         untimed iterations first (default 100)\n"
        "  --batch N          descriptors per request (default 1)\n"
        "  --op write|read|both  (default both)\n"
        "  --check            fill and verify data every iteration (untimed)\n"
        "  --csv FILE         also write the results as CSV\n"
        "  --json FILE        also write the results as JSON\n"
        "  --target spin|fd|thread  how rank 1 drives progress: spinning\n"
        "                     (default, like ucx_perftest), sleeping on\n"
        "                     ferry_agent_fd(), or ferry's progress thread\n"
        "  --prepare-bench [N]  in one process, time preparing a WRITE of N\n"
        "                     64-byte descriptors (default 100000)\n");
}

static size_t parse_count(const char *s, const char *what, bool allow_zero)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *s == '-') {
        die("bad %s '%s'", what, s);
    }
    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    default: break;
    }
    if (*end != '\0' || (v == 0 && !allow_zero) || v > SIZE_MAX / 2) {
        die("bad %s '%s'", what, s);
    }
    return (size_t)v;
}

static void parse_sizes(options_t *o, const char *list)
{
    char *copy = strdup(list), *save = NULL;

    if (copy == NULL) {
        die("out of memory");
    }
    o->nsizes = 0;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (o->nsizes == MAX_SIZES) {
            die("at most %d sizes", MAX_SIZES);
        }
        o->sizes[o->nsizes++] = parse_count(t, "size", false);
    }
    if (o->nsizes == 0) {
        die("--sizes needs at least one size");
    }
    free(copy);
}

static void parse_options(options_t *o, int argc, char **argv)
{
    enum { O_SIZES = 256, O_ITERS, O_WARMUP, O_BATCH, O_OP, O_CHECK, O_CSV,
           O_JSON, O_TARGET, O_PREP, O_ROLE, O_FD, O_HELP };
    static const struct option longs[] = {
        {"sizes", required_argument, NULL, O_SIZES},
        {"iters", required_argument, NULL, O_ITERS},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"batch", required_argument, NULL, O_BATCH},
        {"op", required_argument, NULL, O_OP},
        {"check", no_argument, NULL, O_CHECK},
        {"csv", required_argument, NULL, O_CSV},
        {"json", required_argument, NULL, O_JSON},
        {"target", required_argument, NULL, O_TARGET},
        {"prepare-bench", optional_argument, NULL, O_PREP},
        {"role", required_argument, NULL, O_ROLE}, /* hidden: set by launch() */
        {"fd", required_argument, NULL, O_FD},     /* hidden: set by launch() */
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    static const size_t defaults[] = {4096, 65536, 1048576, 16777216};
    int c;

    *o = (options_t){.iters = 1000, .warmup = 100, .batch = 1,
                     .do_write = true, .do_read = true,
                     .role = ROLE_LAUNCHER, .fd = -1};
    o->nsizes = sizeof(defaults) / sizeof(defaults[0]);
    memcpy(o->sizes, defaults, sizeof(defaults));

    while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (c) {
        case O_SIZES: parse_sizes(o, optarg); break;
        case O_ITERS: o->iters = parse_count(optarg, "--iters", false); break;
        case O_WARMUP: o->warmup = parse_count(optarg, "--warmup", true); break;
        case O_BATCH: o->batch = parse_count(optarg, "--batch", false); break;
        case O_OP:
            o->do_write = !strcmp(optarg, "write") || !strcmp(optarg, "both");
            o->do_read = !strcmp(optarg, "read") || !strcmp(optarg, "both");
            if (!o->do_write && !o->do_read) {
                die("--op takes write, read or both, not '%s'", optarg);
            }
            break;
        case O_CHECK: o->check = true; break;
        case O_CSV: o->csv_path = optarg; break;
        case O_JSON: o->json_path = optarg; break;
        case O_TARGET:
            if (!strcmp(optarg, "spin")) {
                o->target_mode = TARGET_SPIN;
            } else if (!strcmp(optarg, "fd")) {
                o->target_mode = TARGET_FD;
            } else if (!strcmp(optarg, "thread")) {
                o->target_mode = TARGET_THREAD;
            } else {
                die("--target takes spin, fd or thread, not '%s'", optarg);
            }
            break;
        case O_PREP:
            /* getopt only attaches an optional argument given with '=';
             * accept "--prepare-bench N" too. */
            if (optarg == NULL && optind < argc && argv[optind][0] != '-') {
                optarg = argv[optind++];
            }
            o->prepare_n = optarg ? parse_count(optarg, "--prepare-bench",
                                                false)
                                  : 100000;
            break;
        case O_ROLE: o->role = (int)parse_count(optarg, "--role", true); break;
        case O_FD: o->fd = (int)parse_count(optarg, "--fd", true); break;
        case 'h': case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        die("unexpected argument '%s' (see --help)", argv[optind]);
    }
    if (o->role > ROLE_TARGET || (o->role != ROLE_LAUNCHER && o->fd < 0)) {
        die("--role and --fd are internal options");
    }
}

int main(int argc, char **argv)
{
    options_t o;

    parse_options(&o, argc, argv);
    if (o.prepare_n > 0) {
        return run_prepare_bench(o.prepare_n);
    }
    g_rank = o.role;
    switch (o.role) {
    case ROLE_INITIATOR: return run_initiator(&o);
    case ROLE_TARGET: return run_target(&o);
    default: return launch(argc, argv);
    }
}
