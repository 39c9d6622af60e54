/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the job secret costs a staged transfer (docs/PERFORMANCE.md,
 * docs/STAGING.md "Seals"): first the MACs of the staging path alone (the
 * one-shot ferry__mac, which fetches HMAC from OpenSSL's provider on every
 * call, beside a key readied once, as the staged backend keeps it: a
 * reply's seal over its 40-byte header, a chunk's seal over its
 * connection, epoch and worker address, and the constant-time comparison
 * that checks the later chunks of an epoch); then staged WRITEs of one
 * chunk between two agents of this process, both driven by its one
 * thread, without and with a secret, alternated post by post, each figure
 * the median of --reps posts.
 *
 *   ferry-stage-seal-bench [--reps R]
 */
#include "ferry.h"
#include "util/secret.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECRET "stage-seal-bench-secret-0123456789abcdef"
#define MAX_LEN (4u << 20)

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static double median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_u64);
    return (double)v[n / 2];
}

static void check(ferry_status_t st, const char *what)
{
    if (st != FERRY_OK) {
        fprintf(stderr, "stage-seal-bench: %s: %s (%s)\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

/* Median ns of one call of what (k: 0 one-shot MAC of a reply header,
 * 1 readied MAC of it, 2 readied MAC of a chunk's seal, 3 comparison), in
 * batches of 1 000. */
static double mac_ns(const ferry__secret_t *s, ferry__mac_key_t *k, int what, int reps)
{
    uint8_t hdr[40] = {1}, addr[215] = {2}, mac[32], other[32] = {3};
    uint64_t id = 7;
    uint16_t epoch = 1;
    ferry__mac_part_t reply[] = {{"reply", 5}, {hdr, sizeof(hdr)}};
    ferry__mac_part_t chunk[] = {{"chunk", 5}, {&id, 8}, {&epoch, 2}, {addr, sizeof(addr)}};
    uint64_t *t = calloc((size_t)reps, sizeof(*t));
    volatile int sink = 0;
    double m;

    for (int r = 0; r < reps; r++) {
        uint64_t t0 = now_ns();

        for (int i = 0; i < 1000; i++) {
            if (what == 0)
                check(ferry__mac(s->stage_key, reply, 2, mac), "mac");
            else if (what == 1)
                check(ferry__mac_with(k, reply, 2, mac), "mac_with");
            else if (what == 2)
                check(ferry__mac_with(k, chunk, 4, mac), "mac_with");
            else
                sink += ferry__ct_equal(mac, other, sizeof(mac));
        }
        t[r] = now_ns() - t0;
    }
    m = median(t, reps) / 1000.0;
    free(t);
    (void)sink;
    return m;
}

/* Posts x and drives both agents from this thread until it ends: the
 * path's own time, without a sleeper's wake-up or a second thread on a
 * small machine. */
static void post_poll(ferry_agent_t *a, ferry_agent_t *b, ferry_xfer_t *x)
{
    ferry_status_t st = ferry_xfer_post(x);

    while (st == FERRY_IN_PROGRESS) {
        ferry_agent_progress(a);
        ferry_agent_progress(b);
        st = ferry_xfer_test(x);
    }
    check(st, "post");
}

static ferry_agent_t *agent(const char *name, const char *secret)
{
    ferry_agent_params_t p = {.field_mask = FERRY_AGENT_PARAM_NAME | FERRY_AGENT_PARAM_SECRET,
                              .name = name, .secret = secret};
    ferry_agent_t *a;

    check(ferry_agent_create(&p, &a), "agent_create");
    return a;
}

int main(int argc, char **argv)
{
    static const uint64_t sizes[] = {4096, 65536, 1u << 20, 4u << 20};
    const ferry_xfer_params_t staged = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                        .backend = FERRY_BACKEND_STAGED};
    const char *secrets[2] = {"", SECRET};
    ferry_agent_t *init[2], *tgt[2];
    ferry_peer_t *peer[2];
    ferry_mem_t *lm[2], *tm[2];
    ferry__secret_t sec;
    ferry__mac_key_t *key;
    uint8_t *lbuf, *tbuf;
    uint64_t *t[2];
    int reps = 1000;

    for (int i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]);
    if (reps < 10) {
        fprintf(stderr, "usage: ferry-stage-seal-bench [--reps R (10 or more)]\n");
        return 2;
    }

    check(ferry__secret_init(&sec, SECRET), "secret_init");
    check(ferry__mac_key_new(sec.stage_key, &key), "mac_key_new");
    printf("MACs of the staging path (ns per call, median of %d batches of 1 000):\n", reps);
    printf("| what | ns |\n| --- | ---: |\n");
    printf("| ferry__mac, reply header (45 B), HMAC fetched each call | %.0f |\n",
           mac_ns(&sec, key, 0, reps));
    printf("| ferry__mac_with, reply header (45 B), key readied once | %.0f |\n",
           mac_ns(&sec, key, 1, reps));
    printf("| ferry__mac_with, chunk seal (230 B: 215-byte TCP address) | %.0f |\n",
           mac_ns(&sec, key, 2, reps));
    printf("| ferry__ct_equal, 32 B | %.0f |\n", mac_ns(&sec, key, 3, reps));
    ferry__mac_key_free(key);
    ferry__secret_clear(&sec);

    lbuf = aligned_alloc(4096, 2 * MAX_LEN);
    tbuf = aligned_alloc(4096, 2 * MAX_LEN);
    t[0] = calloc((size_t)reps, sizeof(uint64_t));
    t[1] = calloc((size_t)reps, sizeof(uint64_t));
    if (lbuf == NULL || tbuf == NULL || t[0] == NULL || t[1] == NULL)
        return 1;
    memset(lbuf, 1, 2 * MAX_LEN);
    for (int s = 0; s < 2; s++) {
        ferry_desc_t l = {(uintptr_t)lbuf + (uint64_t)s * MAX_LEN, MAX_LEN, FERRY_MEM_HOST, 0};
        ferry_desc_t r = {(uintptr_t)tbuf + (uint64_t)s * MAX_LEN, MAX_LEN, FERRY_MEM_HOST, 0};
        void *blob;
        size_t len;

        init[s] = agent(s ? "init-sealed" : "init-open", secrets[s]);
        tgt[s] = agent(s ? "tgt-sealed" : "tgt-open", secrets[s]);
        check(ferry_mem_register(init[s], &l, 1, &lm[s]), "mem_register");
        check(ferry_mem_register(tgt[s], &r, 1, &tm[s]), "mem_register");
        check(ferry_md_pack(tgt[s], &blob, &len), "md_pack");
        check(ferry_peer_load(init[s], blob, len, &peer[s]), "peer_load");
        ferry_md_free(blob);
    }
    printf("\nstaged WRITE of one chunk, host memory, one process (us per post, median "
           "of %d):\n", reps);
    printf("| chunk | without secret | with secret | added | added / WRITE |\n");
    printf("| ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        ferry_xfer_t *x[2];
        double a, b;

        for (int s = 0; s < 2; s++) {
            ferry_desc_t l = {(uintptr_t)lbuf + (uint64_t)s * MAX_LEN, sizes[k],
                              FERRY_MEM_HOST, 0};
            ferry_desc_t r = {(uintptr_t)tbuf + (uint64_t)s * MAX_LEN, sizes[k],
                              FERRY_MEM_HOST, 0};

            check(ferry_xfer_prepare(init[s], FERRY_OP_WRITE, &l, 1, peer[s], &r, 1,
                                     &staged, &x[s]), "xfer_prepare");
            /* The first posts open the connection: not timed. */
            for (int w = 0; w < 10; w++)
                post_poll(init[s], tgt[s], x[s]);
        }
        for (int r = 0; r < reps; r++) {
            /* Each goes first every other time: neither inherits the
             * other's cache or scheduling more often. */
            for (int i = 0; i < 2; i++) {
                int s = i ^ (r & 1);
                uint64_t t0 = now_ns();

                post_poll(init[s], tgt[s], x[s]);
                t[s][r] = now_ns() - t0;
            }
        }
        a = median(t[0], reps) / 1000.0;
        b = median(t[1], reps) / 1000.0;
        printf("| %" PRIu64 " B | %.1f | %.1f | %.1f | %.3f |\n", sizes[k], a, b, b - a,
               (b - a) / a);
        ferry_xfer_release(x[0]);
        ferry_xfer_release(x[1]);
    }
    for (int s = 0; s < 2; s++) {
        ferry_peer_forget(peer[s]);
        check(ferry_mem_deregister(lm[s]), "mem_deregister");
        check(ferry_mem_deregister(tm[s]), "mem_deregister");
        ferry_agent_destroy(init[s]);
        ferry_agent_destroy(tgt[s]);
    }
    free(t[0]);
    free(t[1]);
    free(lbuf);
    free(tbuf);
    return 0;
}
