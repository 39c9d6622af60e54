/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the job secret costs (issue 20's figures): packing and loading a
 * blob of N registrations with and without a secret (the seal's
 * HMAC-SHA-256 over the blob, and its check), and connecting to the store
 * with and without the authenticated handshake, against an in-process
 * server on loopback. Each figure is the median of --reps runs; the runs
 * without a secret, in the same process and alternated with the others,
 * are the reference.
 *
 *   ferry-seal-bench [--regions N] [--reps R]
 */
#include "ferry.h"

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
    for (int k = 0; k < 4; k++)
        free(t[k]);
    free(d);
    free(mem);
    return 0;
}
