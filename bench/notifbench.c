/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-notifbench: what a notification adds to a WRITE. Two processes on
 * this host; the target's buffer is ferry_mem_alloc() memory (the initiator
 * copies into it directly, as ferry-bench's default). For each size it
 * measures, as the time from just before the post to the moment the target
 * sees it (one clock: CLOCK_MONOTONIC is the same for both processes):
 *
 *   write        a WRITE alone; the target spins on its memory until the
 *                first and last 8 bytes hold the post's timestamp
 *   write+notif  the same WRITE with a message (its timestamp); the target
 *                spins on ferry_notif_drain() and, on the message, checks
 *                that the bytes are there
 *   notif        a stand-alone message of 8 bytes, no WRITE
 *
 * Both sides poll (no progress thread, no sleep): this is latency, not
 * CPU. After each sample the target answers with a stand-alone message and
 * the initiator waits for it, so samples never overlap. The target prints
 * median, 99th percentile and mean in microseconds, and the median that a
 * message adds to the WRITE. The reference is UCX's own active message
 * latency, ucx_perftest -t ucp_am_lat, run beside it (docs/PERFORMANCE.md,
 * "Notifications", has the commands).
 *
 *   ferry-notifbench [--iters N] [--sizes 8,1048576]
 *
 * A benchmark, not a test: it asserts nothing about time. Its two
 * processes are the two ranks of a job (tools/bench/pair.h) that it starts
 * itself.
 */
#include "clock.h"
#include "pair.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEC 1000000000ll
#define MAX_SIZES 8

enum { M_WRITE, M_WRITE_NOTIF, M_NOTIF, NMODES };
static const char *const mode_names[NMODES] = {"write", "write+notif", "notif"};

static void check(ferry_status_t st, const char *what)
{
    if (st < 0) {
        fprintf(stderr, "ferry-notifbench: %s: %s: %s\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

/* Spins until one message is drained; returns it. */
static ferry_notif_t *spin_one(ferry_agent_t *agent)
{
    ferry_notif_t *n;
    size_t k = 0;
    uint64_t t0 = now_ns();

    while (k == 0) {
        check(ferry_notif_drain(agent, &n, 1, &k), "notif_drain");
        if (k == 0 && now_ns() - t0 > 30 * (uint64_t)SEC) {
            fprintf(stderr, "ferry-notifbench: no message for 30 s\n");
            exit(1);
        }
    }
    return n;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
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

static size_t max_size(const size_t *sizes, int n)
{
    size_t m = 0;

    for (int s = 0; s < n; s++)
        m = sizes[s] > m ? sizes[s] : m;
    return m;
}

/* The target: sees each sample, times it, answers. */
static int target(ferry_comm_t *comm, const size_t *sizes, int nsizes, long iters,
                  long warmup)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "notifbench-target"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *init;
    volatile uint8_t *buf;
    size_t cap;
    ferry_desc_t d;
    pair_hello_t h;
    uint64_t *lat = calloc((size_t)iters, sizeof(*lat));
    double med[NMODES];
    long bad = 0;
    /* The timestamp the last WRITE left at the start of the buffer. */
    uint64_t last = 0;

    cap = max_size(sizes, nsizes);
    check(ferry_agent_create(&ap, &agent), "target: agent_create");
    check(ferry_mem_alloc(agent, cap, FERRY_MEM_HOST, (void **)&buf), "target: mem_alloc");
    memset((void *)buf, 0, cap);
    d = (ferry_desc_t){(uintptr_t)buf, cap, FERRY_MEM_HOST, 0};
    check(ferry_mem_register(agent, &d, 1, &mem), "target: mem_register");
    h = pair_greet(comm, agent, d.addr, 0);
    check(ferry_peer_load(agent, h.blob, h.blob_len, &init), "target: peer_load");

    printf("| mode | size (B) | iters | median (us) | p99 (us) | mean (us) |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int s = 0; s < nsizes; s++) {
        size_t size = sizes[s];

        for (int m = 0; m < NMODES; m++) {
            double sum = 0;

            for (long i = -warmup; i < iters; i++) {
                uint64_t seen, post;

                if (m == M_WRITE) {
                    /* The post's timestamp at both ends of the range. */
                    for (;;) {
                        post = load64(buf);
                        if (post != last && load64(buf + size - 8) == post)
                            break;
                    }
                    seen = now_ns();
                    last = post;
                } else {
                    ferry_notif_t *n = spin_one(agent);

                    seen = now_ns();
                    post = 0;
                    if (n->len == sizeof(post))
                        memcpy(&post, n->msg, sizeof(post));
                    /* A message never comes before its bytes. */
                    if (m == M_WRITE_NOTIF) {
                        if (load64(buf) != post || load64(buf + size - 8) != post)
                            bad++;
                        last = post;
                    }
                    ferry_notif_free(n);
                }
                check(ferry_notif_send(agent, init, NULL, 0), "target: ack");
                if (i >= 0) {
                    lat[i] = seen - post;
                    sum += (double)lat[i];
                }
            }
            qsort(lat, (size_t)iters, sizeof(*lat), cmp_u64);
            med[m] = (double)lat[iters / 2] / 1e3;
            printf("| %s | %zu | %ld | %.2f | %.2f | %.2f |\n", mode_names[m], size, iters,
                   med[m], (double)lat[(size_t)((double)iters * 0.99)] / 1e3,
                   sum / (double)iters / 1e3);
        }
        printf("| message added (median) | %zu | | %.2f | | |\n", size,
               med[M_WRITE_NOTIF] - med[M_WRITE]);
    }
    if (bad > 0)
        printf("ferry-notifbench: %ld messages came before their bytes\n", bad);
    pair_leave(comm);
    free(h.blob);
    free(lat);
    ferry_mem_deregister(mem);
    ferry_mem_free(agent, (void *)buf);
    ferry_agent_destroy(agent);
    return bad > 0;
}

/* The initiator: one sample at a time, each answered by the target. */
static void initiator(ferry_comm_t *comm, const size_t *sizes, int nsizes, long iters,
                      long warmup)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME,
                               .name = "notifbench-init"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    uint8_t *buf;
    size_t cap;
    ferry_desc_t l;
    pair_hello_t h;

    cap = max_size(sizes, nsizes);
    buf = calloc(1, cap);
    check(ferry_agent_create(&ap, &agent), "agent_create");
    l = (ferry_desc_t){(uintptr_t)buf, cap, FERRY_MEM_HOST, 0};
    check(ferry_mem_register(agent, &l, 1, &mem), "mem_register");
    h = pair_greet(comm, agent, 0, 0);
    check(ferry_peer_load(agent, h.blob, h.blob_len, &peer), "peer_load");
    for (int s = 0; s < nsizes; s++) {
        size_t size = sizes[s];
        ferry_desc_t r = {h.a, size, FERRY_MEM_HOST, 0}, ls = {l.addr, size, FERRY_MEM_HOST, 0};
        uint64_t zero = 0;
        ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_NOTIF, .notif = &zero,
                                  .notif_len = sizeof(zero)};
        ferry_xfer_t *x[2];

        check(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &ls, 1, peer, &r, 1, NULL, &x[0]),
              "prepare");
        check(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &ls, 1, peer, &r, 1, &xp, &x[1]),
              "prepare");
        for (int m = 0; m < NMODES; m++) {
            for (long i = -warmup; i < iters; i++) {
                uint64_t post = now_ns();
                ferry_status_t st;

                if (m == M_NOTIF) {
                    check(ferry_notif_send(agent, peer, &post, sizeof(post)), "notif_send");
                } else {
                    memcpy(buf, &post, sizeof(post));
                    memcpy(buf + size - 8, &post, sizeof(post));
                    if (m == M_WRITE_NOTIF)
                        check(ferry_xfer_set_notif(x[1], &post, sizeof(post)), "set_notif");
                    st = ferry_xfer_post(x[m == M_WRITE_NOTIF]);
                    check(st, "post");
                }
                ferry_notif_free(spin_one(agent));
                if (m != M_NOTIF)
                    check(ferry_xfer_wait(x[m == M_WRITE_NOTIF], 30 * SEC), "wait");
            }
        }
        ferry_xfer_release(x[0]);
        ferry_xfer_release(x[1]);
    }
    pair_leave(comm);
    free(h.blob);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(buf);
}

int main(int argc, char **argv)
{
    long iters = 20000, warmup;
    size_t sizes[MAX_SIZES] = {8, 1u << 20};
    int nsizes = 2;
    ferry_comm_t *comm;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = strtol(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
            char *p = argv[++i], *end;
            int bad = 0;

            for (nsizes = 0; nsizes < MAX_SIZES && *p != '\0' && !bad; nsizes++) {
                sizes[nsizes] = (size_t)strtoull(p, &end, 0);
                bad = end == p || sizes[nsizes] < 8 || (*end != ',' && *end != '\0');
                p = *end == ',' ? end + 1 : end;
            }
            if (bad || nsizes == 0 || *p != '\0') {
                fprintf(stderr, "ferry-notifbench: --sizes takes up to %d sizes of 8 "
                                "bytes or more, comma-separated\n", MAX_SIZES);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: ferry-notifbench [--iters N] [--sizes 8,1048576]\n");
            return 2;
        }
    }
    if (iters < 1) {
        fprintf(stderr, "ferry-notifbench: --iters must be positive\n");
        return 2;
    }
    warmup = iters / 10 + 100;
    /* Both processes start, as fresh images, before either touches UCX. */
    comm = pair_join("ferry-notifbench", argv);
    if (ferry_comm_rank(comm) == 1)
        return target(comm, sizes, nsizes, iters, warmup);
    initiator(comm, sizes, nsizes, iters, warmup);
    return 0;
}
