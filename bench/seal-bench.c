/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the job secret costs (issue 20's figures): packing and loading a
 * blob of N registrations with and without a secret (the seal's
 * HMAC-SHA-256 over the blob, and its check), and connecting to the store
 * with and without the authenticated handshake, against an in-process
 * server on loopback. Then what it costs a staged transfer
 * (docs/STAGING.md, "Seals"): the MACs of the staging path alone (the
 * one-shot ferry__mac, which fetches HMAC from OpenSSL's provider on every
 * call, beside a key readied once, as the staged backend keeps it: a
 * reply's seal over its header, a chunk's over its connection, epoch and
 * worker address, and the constant-time comparison that checks the later
 * chunks of an epoch; internal functions, hence the internal library),
 * and staged WRITEs of one chunk between two agents of this process, both
 * driven by its one thread. Each figure is the median of --reps runs; the
 * runs without a secret, in the same process and alternated with the
 * others, are the reference.
 *
 *   ferry-seal-bench [--regions N] [--reps R]
 */
#include "ferry.h"
#include "util/secret.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECRET "seal-bench-secret-0123456789abcdef0123456789"

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

static double median_us(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_u64);
    return (double)v[n / 2] / 1000.0;
}

static void check(ferry_status_t st, const char *what)
{
    if (st != FERRY_OK) {
        fprintf(stderr, "seal-bench: %s: %s (%s)\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

static ferry_agent_t *agent(const char *name, const char *secret)
{
    ferry_agent_params_t p = {.field_mask = FERRY_AGENT_PARAM_NAME | FERRY_AGENT_PARAM_SECRET,
                              .name = name, .secret = secret};
    ferry_agent_t *a;

    check(ferry_agent_create(&p, &a), "agent_create");
    return a;
}

/* ns per call of what (0: one-shot MAC of a sealed reply's bytes, 1: the
 * same with a readied key, 2: a chunk seal's MAC, 3: a 32-byte
 * comparison): the median of reps batches of 1 000 calls (a batch's us
 * are a call's ns). */
static double mac_ns(const ferry__secret_t *s, ferry__mac_key_t *k, int what, uint64_t *t,
                     int reps)
{
    uint8_t hdr[40] = {1}, addr[215] = {2}, mac[32], other[32] = {3};
    uint64_t id = 7;
    uint16_t epoch = 1;
    ferry__mac_part_t reply[] = {{"reply", 5}, {hdr, sizeof(hdr)}};
    ferry__mac_part_t chunk[] = {{"chunk", 5}, {&id, 8}, {&epoch, 2}, {addr, sizeof(addr)}};
    volatile int sink = 0;

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
    (void)sink;
    return median_us(t, reps);
}

static void stage_macs(int reps)
{
    static const char *const what[] = {
        "ferry__mac, reply (45 B), HMAC fetched every call",
        "ferry__mac_with, reply (45 B), key readied once",
        "ferry__mac_with, chunk seal (230 B: a 215-byte TCP address)",
        "ferry__ct_equal, 32 B"};
    uint64_t *t = calloc((size_t)reps, sizeof(*t));
    ferry__secret_t sec;
    ferry__mac_key_t *key;

    if (t == NULL)
        exit(1);
    check(ferry__secret_init(&sec, SECRET), "secret_init");
    check(ferry__mac_key_new(sec.stage_key, &key), "mac_key_new");
    printf("\nMACs of the staging path, ns per call:\n| what | ns |\n| --- | ---: |\n");
    for (int k = 0; k < 4; k++)
        printf("| %s | %.0f |\n", what[k], mac_ns(&sec, key, k, t, reps));
    ferry__mac_key_free(key);
    ferry__secret_clear(&sec);
    free(t);
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

/* Staged WRITEs of one chunk (host memory, forced staging), one pair of
 * agents without and one with a secret, alternated post by post (each pair
 * first every other time), after 10 untimed posts; t: two arrays of reps. */
static void stage_writes(int reps, uint64_t **t)
{
    static const uint64_t sizes[] = {4096, 65536, 1u << 20, 4u << 20};
    const uint64_t max = 4u << 20;
    const ferry_xfer_params_t staged = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                        .backend = FERRY_BACKEND_STAGED};
    const char *secrets[2] = {NULL, SECRET};
    ferry_agent_t *init[2], *tgt[2];
    ferry_peer_t *peer[2];
    ferry_mem_t *lm[2], *tm[2];
    uint8_t *lbuf = aligned_alloc(4096, 2 * max), *tbuf = aligned_alloc(4096, 2 * max);

    if (lbuf == NULL || tbuf == NULL)
        exit(1);
    memset(lbuf, 1, 2 * max);
    for (int s = 0; s < 2; s++) {
        ferry_desc_t l = {(uintptr_t)lbuf + (uint64_t)s * max, max, FERRY_MEM_HOST, 0};
        ferry_desc_t r = {(uintptr_t)tbuf + (uint64_t)s * max, max, FERRY_MEM_HOST, 0};
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
    printf("\nstaged WRITE of one chunk, us per post:\n");
    printf("| chunk | without secret | with secret | added | added / WRITE |\n");
    printf("| ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        ferry_xfer_t *x[2];
        double a, b;

        for (int s = 0; s < 2; s++) {
            ferry_desc_t l = {(uintptr_t)lbuf + (uint64_t)s * max, sizes[k], FERRY_MEM_HOST, 0};
            ferry_desc_t r = {(uintptr_t)tbuf + (uint64_t)s * max, sizes[k], FERRY_MEM_HOST, 0};

            check(ferry_xfer_prepare(init[s], FERRY_OP_WRITE, &l, 1, peer[s], &r, 1,
                                     &staged, &x[s]), "xfer_prepare");
            /* The first posts open the connection. */
            for (int w = 0; w < 10; w++)
                post_poll(init[s], tgt[s], x[s]);
        }
        for (int r = 0; r < reps; r++) {
            for (int i = 0; i < 2; i++) {
                int s = i ^ (r & 1);
                uint64_t t0 = now_ns();

                post_poll(init[s], tgt[s], x[s]);
                t[s][r] = now_ns() - t0;
            }
        }
        a = median_us(t[0], reps);
        b = median_us(t[1], reps);
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
    free(lbuf);
    free(tbuf);
}

int main(int argc, char **argv)
{
    int nreg = 1000, reps = 200;
    uint8_t *mem;
    ferry_desc_t *d;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--regions") == 0)
            nreg = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]);
    }
    if (nreg < 1 || reps < 1) {
        fprintf(stderr, "usage: ferry-seal-bench [--regions N] [--reps R]\n");
        return 2;
    }
    /* Regions apart from each other (a page between), so none merge. */
    mem = aligned_alloc(4096, (size_t)nreg * 8192);
    d = calloc((size_t)nreg, sizeof(*d));
    uint64_t *t[4];
    for (int k = 0; k < 4; k++)
        t[k] = calloc((size_t)reps, sizeof(uint64_t));
    if (mem == NULL || d == NULL || !t[0] || !t[1] || !t[2] || !t[3])
        return 1;
    for (int i = 0; i < nreg; i++)
        d[i] = (ferry_desc_t){(uintptr_t)mem + (uint64_t)i * 8192, 4096, FERRY_MEM_HOST, 0};

    /* Blobs: [0] pack without, [1] pack with, [2] load without, [3] load with. */
    const char *secrets[2] = {NULL, SECRET};
    ferry_agent_t *src[2], *dst[2];
    ferry_mem_t *m[2];
    size_t blob_len[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        src[s] = agent(s ? "src-sealed" : "src-open", secrets[s]);
        dst[s] = agent(s ? "dst-sealed" : "dst-open", secrets[s]);
        check(ferry_mem_register(src[s], d, (size_t)nreg, &m[s]), "mem_register");
    }
    for (int r = 0; r < reps; r++) {
        for (int s = 0; s < 2; s++) {
            void *blob;
            size_t len;
            ferry_peer_t *peer;
            uint64_t t0 = now_ns();

            check(ferry_md_pack(src[s], &blob, &len), "md_pack");
            uint64_t t1 = now_ns();
            check(ferry_peer_load(dst[s], blob, len, &peer), "peer_load");
            uint64_t t2 = now_ns();
            t[s][r] = t1 - t0;
            t[2 + s][r] = t2 - t1;
            blob_len[s] = len;
            ferry_md_free(blob);
        }
    }
    printf("blob of %d registrations: %zu B without a secret, %zu B sealed\n", nreg,
           blob_len[0], blob_len[1]);
    printf("| step | without secret (us) | with secret (us) | added (us) |\n");
    printf("| --- | ---: | ---: | ---: |\n");
    const char *steps[2] = {"ferry_md_pack", "ferry_peer_load"};
    for (int k = 0; k < 2; k++) {
        double a = median_us(t[2 * k], reps), b = median_us(t[2 * k + 1], reps);

        printf("| %s | %.1f | %.1f | %.1f |\n", steps[k], a, b, b - a);
    }
    for (int s = 0; s < 2; s++) {
        check(ferry_mem_deregister(m[s]), "mem_deregister");
        ferry_agent_destroy(src[s]);
        ferry_agent_destroy(dst[s]);
    }

    /* Store connections: connect (handshake and ping) and close. */
    ferry_store_server_t *srv[2];
    char url[2][64];
    for (int s = 0; s < 2; s++) {
        ferry_store_server_params_t sp = {.field_mask = FERRY_STORE_SERVER_PARAM_SECRET,
                                          .secret = secrets[s]};

        check(ferry_store_server_start("127.0.0.1", &sp, &srv[s]), "server_start");
        snprintf(url[s], sizeof(url[s]), "tcp://127.0.0.1:%u",
                 (unsigned)ferry_store_server_port(srv[s]));
    }
    for (int r = 0; r < reps; r++) {
        for (int s = 0; s < 2; s++) {
            ferry_store_params_t cp = {.field_mask = FERRY_STORE_PARAM_SECRET,
                                       .secret = secrets[s]};
            ferry_store_t *st;
            uint64_t t0 = now_ns();

            check(ferry_store_connect(url[s], &cp, &st), "store_connect");
            t[s][r] = now_ns() - t0;
            ferry_store_close(st);
        }
    }
    double a = median_us(t[0], reps), b = median_us(t[1], reps);
    printf("| ferry_store_connect | %.1f | %.1f | %.1f |\n", a, b, b - a);
    for (int s = 0; s < 2; s++)
        ferry_store_server_stop(srv[s]);
    stage_macs(reps);
    stage_writes(reps, t);
    for (int k = 0; k < 4; k++)
        free(t[k]);
    free(d);
    free(mem);
    return 0;
}
