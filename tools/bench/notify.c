/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench --notify: what a notification adds to a WRITE, against UCX's
 * own active-message latency measured in the same run.
 *
 * Two ranks on one host: rank 0 is the target and reports, rank 1
 * initiates. The target's buffer comes from --alloc (ferry_mem_alloc() by
 * default: the initiator copies into it directly). For each size, three
 * rows, each sample the time from just before the post to the moment the
 * target sees it, on CLOCK_MONOTONIC, which both processes share:
 *
 *   WRITE          a WRITE alone; the target spins on its memory until the
 *                  first and last 8 bytes hold the post's timestamp
 *   WRITE+message  the same WRITE with an 8-byte message (the timestamp);
 *                  the target spins on ferry_notif_drain() and, on the
 *                  message, checks that the bytes are there (a message
 *                  before its bytes fails the run)
 *   message        a stand-alone 8-byte message, no WRITE
 *
 * The three rows take turns, sample by sample, so that the machine's
 * drift weighs alike on each. Both sides poll (no progress thread, no
 * sleep): this is latency, not CPU. With --alloc mmap the WRITE goes through UCX (emulated RMA on UCX
 * 1.13, served by the target's progress, and a flush before the message),
 * and the target drives its agent's progress while it spins on memory. The target answers each sample with a stand-alone message and the
 * initiator waits for it, so samples never overlap. The reference,
 * ucx_perftest -t ucp_am_lat (one way, "typical"), with a message of the
 * size of ferry's 8-byte one on the wire and the same iteration counts,
 * runs on the target's rank before and after, while the initiator waits.
 */
#include "notify.h"

#include "buf.h"
#include "clock.h"
#include "pair.h"
#include "ucxref.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEC 1000000000ll
#define DEFAULT_ITERS 10000
#define REF_TIMEOUT_S 120
/* The initiator's agent name: the sender's name travels in every message,
 * so it sizes the reference's message (docs/NOTIF.md: 32 + name + msg). */
#define INIT_NAME "notify-initiator"
#define WIRE_HDR 32

enum { M_WRITE, M_WRITE_MSG, M_MSG, NMODES };

/* One size's medians and 99th percentiles (us). */
typedef struct row {
    double med[NMODES], p99[NMODES];
} row_t;

/* Spins until one message is drained; returns it. */
static ferry_notif_t *spin_one(ferry_agent_t *agent, uint64_t timeout_ns)
{
    ferry_notif_t *n;
    size_t k = 0;
    uint64_t t0 = now_ns();

    while (k == 0) {
        CHECK(ferry_notif_drain(agent, &n, 1, &k), "cannot drain notifications");
        if (k == 0 && now_ns() - t0 > timeout_ns)
            die("no message from the other rank for %.0f s",
                (double)timeout_ns / 1e9);
    }
    return n;
}

/* 8 bytes another process writes: read byte by byte through volatile, so
 * that the compiler reads them again each time (any alignment). */
static uint64_t load64(const volatile uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    atomic_thread_fence(memory_order_acquire);
    return v;
}

static size_t max_size(const options_t *o)
{
    size_t m = 0;

    for (size_t s = 0; s < o->nsizes; s++)
        m = o->sizes[s] > m ? o->sizes[s] : m;
    return m;
}

/* ucp_am_lat with ferry's iteration counts, so that the machine's hiccups
 * weigh alike on both. */
static ucxref_t reference(size_t iters, size_t warmup)
{
    size_t wire = WIRE_HDR + strlen(INIT_NAME) + sizeof(uint64_t);

    return ucxref_run("ucp_am_lat", wire, iters, warmup, REF_TIMEOUT_S);
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0;
}

static void report(const options_t *o, size_t iters, size_t warmup, const row_t *rows,
                   const ucxref_t ref[2])
{
    double am = 0;
    int nref = 0;

    printf("ferry-bench --notify: 2 ranks on this host, %s memory, %zu iterations "
           "(+%zu warm-up) per cell; median (p99) in us\n",
           alloc_names[o->alloc], iters, warmup);
    for (int i = 0; i < 2; i++) {
        if (ref[i].ok) {
            am += ref[i].typical_us;
            nref++;
        }
    }
    if (nref > 0) {
        am /= nref;
        printf("ucx_perftest -t ucp_am_lat -s %zu (one way, typical): %.3f us before, "
               "%.3f after\n", WIRE_HDR + strlen(INIT_NAME) + sizeof(uint64_t),
               ref[0].ok ? ref[0].typical_us : 0, ref[1].ok ? ref[1].typical_us : 0);
    } else {
        printf("no UCX reference: %s\n", ref[0].why);
    }
    printf("\n| size (B) | WRITE | WRITE + message | message added | "
           "WRITE + message / WRITE | message alone | ucp_am_lat | "
           "message alone / ucp_am_lat | message added / ucp_am_lat |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t s = 0; s < o->nsizes; s++) {
        const row_t *r = &rows[s];
        double added = r->med[M_WRITE_MSG] - r->med[M_WRITE];

        printf("| %zu | %.2f (%.2f) | %.2f (%.2f) | %+.2f | %.2f | %.2f (%.2f) | ",
               o->sizes[s], r->med[M_WRITE], r->p99[M_WRITE], r->med[M_WRITE_MSG],
               r->p99[M_WRITE_MSG], added, ratio(r->med[M_WRITE_MSG], r->med[M_WRITE]),
               r->med[M_MSG], r->p99[M_MSG]);
        if (nref > 0)
            printf("%.2f | %.2f | %.2f |\n", am, ratio(r->med[M_MSG], am),
                   ratio(added, am));
        else
            printf("n/a | n/a | n/a |\n");
    }
}

/* The target: sees each sample, times it, answers; reports. */
static int target(const options_t *o, ferry_comm_t *comm, size_t iters, size_t warmup)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "notify-target"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *init;
    bench_buf_t b;
    volatile uint8_t *buf;
    ferry_desc_t d;
    pair_hello_t h;
    uint64_t *lat[NMODES];
    row_t *rows = xcalloc(o->nsizes, sizeof(*rows));
    ucxref_t ref[2];
    size_t bad = 0;
    /* The timestamp the last WRITE left at the start of the buffer. */
    uint64_t last = 0;

    for (int m = 0; m < NMODES; m++)
        lat[m] = xcalloc(iters, sizeof(*lat[m]));
    ref[0] = reference(iters, warmup);
    CHECK(ferry_agent_create(&ap, &agent), "cannot create the target's agent");
    bench_alloc(agent, FERRY_MEM_HOST, o->alloc == ALLOC_MMAP ? SRC_MMAP : SRC_FERRY,
                max_size(o), &b);
    buf = b.p;
    memset(b.p, 0, b.len);
    d = bench_desc(&b, 0, b.len);
    CHECK(ferry_mem_register(agent, &d, 1, &mem), "cannot register the target's buffer");
    h = pair_greet(comm, agent, d.addr, 0);
    CHECK(ferry_peer_load(agent, h.blob, h.blob_len, &init),
          "cannot load the initiator's metadata");
    for (size_t s = 0; s < o->nsizes; s++) {
        size_t size = o->sizes[s];

        for (size_t i = 0; i < warmup + iters; i++) {
            for (int m = 0; m < NMODES; m++) {
                uint64_t seen, post;

                if (m == M_WRITE) {
                    /* The post's timestamp at both ends of the range. */
                    uint64_t t0 = now_ns();

                    for (;;) {
                        post = load64(buf);
                        if (post != last && load64(buf + size - 8) == post)
                            break;
                        /* Into ordinary memory UCX 1.13 emulates the put
                         * with messages that this agent must serve. */
                        if (o->alloc == ALLOC_MMAP)
                            CHECK(ferry_agent_progress(agent), "progress failed");
                        if (now_ns() - t0 > o->timeout_ns)
                            die("no WRITE from the other rank for %.0f s",
                                (double)o->timeout_ns / 1e9);
                    }
                    seen = now_ns();
                    last = post;
                } else {
                    ferry_notif_t *n = spin_one(agent, o->timeout_ns);

                    seen = now_ns();
                    post = 0;
                    if (n->len == sizeof(post))
                        memcpy(&post, n->msg, sizeof(post));
                    /* A message never comes before its bytes. */
                    if (m == M_WRITE_MSG) {
                        if (load64(buf) != post || load64(buf + size - 8) != post)
                            bad++;
                        last = post;
                    }
                    ferry_notif_free(n);
                }
                CHECK(ferry_notif_send(agent, init, NULL, 0), "cannot answer a sample");
                if (i >= warmup)
                    lat[m][i - warmup] = seen - post;
            }
        }
        for (int m = 0; m < NMODES; m++) {
            rows[s].med[m] = (double)percentile(lat[m], iters, 50) / 1e3;
            rows[s].p99[m] = (double)percentile(lat[m], iters, 99) / 1e3;
        }
    }
    pair_leave(comm);
    ref[1] = reference(iters, warmup);
    report(o, iters, warmup, rows, ref);
    if (bad > 0)
        printf("ferry-bench --notify: %zu messages came before their bytes\n", bad);
    free(h.blob);
    for (int m = 0; m < NMODES; m++)
        free(lat[m]);
    free(rows);
    ferry_mem_deregister(mem);
    bench_free(&b);
    ferry_agent_destroy(agent);
    return bad > 0;
}

/* The initiator: one sample at a time, each answered by the target. */
static void initiator(const options_t *o, ferry_comm_t *comm, size_t iters,
                      size_t warmup)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = INIT_NAME};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    bench_buf_t b;
    ferry_desc_t l;
    pair_hello_t h;

    CHECK(ferry_agent_create(&ap, &agent), "cannot create the initiator's agent");
    bench_alloc(agent, FERRY_MEM_HOST, o->alloc == ALLOC_MMAP ? SRC_MMAP : SRC_FERRY,
                max_size(o), &b);
    l = bench_desc(&b, 0, b.len);
    CHECK(ferry_mem_register(agent, &l, 1, &mem), "cannot register the buffer");
    h = pair_greet(comm, agent, 0, 0);
    CHECK(ferry_peer_load(agent, h.blob, h.blob_len, &peer),
          "cannot load the target's metadata");
    for (size_t s = 0; s < o->nsizes; s++) {
        size_t size = o->sizes[s];
        ferry_desc_t r = {h.a, size, FERRY_MEM_HOST, 0}, ls = bench_desc(&b, 0, size);
        uint64_t zero = 0;
        ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF, .notif = &zero,
                                  .notif_len = sizeof(zero)};
        ferry_xfer_t *x[2];

        CHECK(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &ls, 1, peer, &r, 1, NULL, &x[0]),
              "cannot prepare a WRITE of %zu B", size);
        CHECK(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &ls, 1, peer, &r, 1, &xp, &x[1]),
              "cannot prepare a WRITE of %zu B with a message", size);
        for (size_t i = 0; i < warmup + iters; i++) {
            for (int m = 0; m < NMODES; m++) {
                ferry_xfer_t *xm = x[m == M_WRITE_MSG];
                uint64_t post = now_ns();

                if (m == M_MSG) {
                    CHECK(ferry_notif_send(agent, peer, &post, sizeof(post)),
                          "cannot send a message");
                } else {
                    memcpy(b.p, &post, sizeof(post));
                    memcpy(b.p + size - 8, &post, sizeof(post));
                    if (m == M_WRITE_MSG)
                        CHECK(ferry_xfer_set_notif(xm, &post, sizeof(post)),
                              "cannot set the message");
                    CHECK(ferry_xfer_post(xm), "cannot post a WRITE of %zu B", size);
                }
                ferry_notif_free(spin_one(agent, o->timeout_ns));
                if (m != M_MSG)
                    CHECK(ferry_xfer_wait(xm, (int64_t)o->timeout_ns),
                          "a WRITE of %zu B did not complete", size);
            }
        }
        ferry_xfer_release(x[0]);
        ferry_xfer_release(x[1]);
    }
    pair_leave(comm);
    free(h.blob);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    bench_free(&b);
    ferry_agent_destroy(agent);
}

void notify_check(options_t *o)
{
    static const size_t defaults[] = {8, 1u << 20};

    if (o->store_url != NULL || (o->world_set && o->world != 2))
        die_usage("--notify runs two ranks on this host: no --store, -n 2 only");
    if (o->csv_path != NULL || o->json_path != NULL)
        die_usage("--notify prints a table only (no --csv or --json)");
    if (o->init_mem != FERRY_MEM_HOST || o->target_mem != FERRY_MEM_HOST ||
        o->threads != 1 || o->nbatches != 1 || o->batches[0] != 1 ||
        o->progress_thread || o->check || (o->op_set && o->do_read))
        die_usage("--notify measures WRITEs of host memory, one descriptor, one "
                  "thread, both sides polling: it takes --sizes, --iters, --warmup, "
                  "--alloc and --timeout");
    if (!o->sizes_set) {
        o->nsizes = 2;
        o->sizes[0] = defaults[0];
        o->sizes[1] = defaults[1];
    }
    for (size_t s = 0; s < o->nsizes; s++)
        if (o->sizes[s] < 8)
            die_usage("--notify needs sizes of 8 bytes or more (the post's timestamp "
                      "goes at both ends), not %zu", o->sizes[s]);
}

int run_notify(const options_t *o, char **argv)
{
    size_t iters = o->iters ? o->iters : DEFAULT_ITERS;
    size_t warmup = options_warmup(o, iters);
    ferry_comm_t *comm;

    /* Outside a job this launches the two ranks and exits with their
     * code; each is a fresh image that starts UCX anew. */
    comm = pair_join("ferry-bench", argv);
    if (ferry_comm_rank(comm) == 0)
        return target(o, comm, iters, warmup);
    initiator(o, comm, iters, warmup);
    return 0;
}
