/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-comm-bench: the rendezvous figures of docs/PERFORMANCE.md.
 *
 *   ferry-comm-bench store [--clients 1,4,16] [--seconds S] [--store URL]
 *       Small-value store throughput on loopback: each client (a thread
 *       with its own connection) repeats SET of a 16-byte value and GET of
 *       it back, on keys of its own; every SET and every GET counts as one
 *       operation. A GET is two round trips (WAIT for the key, then GET, as
 *       torch's client does), a SET none (the protocol has no reply). The
 *       reference, in the same run: PINGs per second, one round trip each,
 *       from the same number of clients. Without --store the server is
 *       ferry's, embedded in this process (its own thread).
 *
 *   ferry-run -n N -- ferry-comm-bench exchange [--reps R]
 *       Wall time of ferry_comm_exchange() across N ranks: the first
 *       exchange (every blob new), R exchanges after every rank registered
 *       one more buffer (every blob changed), and R with nothing changed.
 *       Each rank times the exchange from the end of a barrier; the figure
 *       is the slowest rank's time, gathered with ferry_comm_allgather().
 *       Rank 0 prints the median and the worst of each kind.
 *
 * It measures; it asserts nothing. A failing call ends it with its status.
 */
#include "ferry.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TMO (120LL * 1000000000LL)

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(ferry_status_t st, const char *what)
{
    if (st != FERRY_OK) {
        fprintf(stderr, "ferry-comm-bench: %s: %s: %s\n", what,
                ferry_status_str(st), ferry_last_error());
        exit(1);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------------ */
/* Store throughput                                                         */
/* ------------------------------------------------------------------------ */

typedef struct client {
    pthread_t thread;
    const char *url;
    int id;
    double seconds;
    pthread_barrier_t *start;
    bool ping; /* the reference: PING only */
    unsigned long long ops;
} client_t;

static void *client_main(void *arg)
{
    client_t *c = arg;
    ferry_store_t *s;
    char key[32], val[16];
    double end;

    check(ferry_store_connect(c->url, NULL, &s), "connect");
    memset(val, 'v', sizeof(val));
    pthread_barrier_wait(c->start);
    end = now_s() + c->seconds;
    for (unsigned i = 0; now_s() < end; i++) {
        void *got;
        size_t len;

        if (c->ping) {
            check(ferry_store_ping(s), "ping");
            c->ops++;
            continue;
        }
        /* 1000 keys per client, so the table holds more than one. */
        snprintf(key, sizeof(key), "bench/%d/%u", c->id, i % 1000);
        check(ferry_store_set(s, key, val, sizeof(val)), "set");
        check(ferry_store_get(s, key, &got, &len), "get");
        ferry_store_free(got);
        c->ops += 2;
    }
    ferry_store_close(s);
    return NULL;
}

static int bench_store(int argc, char **argv)
{
    const char *clients = "1,4,16", *url = NULL;
    char urlbuf[64], list[256];
    double seconds = 2;
    ferry_store_server_t *srv = NULL;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--clients") == 0 && i + 1 < argc)
            clients = argv[++i];
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--store") == 0 && i + 1 < argc)
            url = argv[++i];
        else {
            fprintf(stderr, "ferry-comm-bench store: bad argument '%s'\n",
                    argv[i]);
            return 2;
        }
    }
    if (url == NULL) {
        check(ferry_store_server_start("127.0.0.1", NULL, &srv), "server");
        snprintf(urlbuf, sizeof(urlbuf), "tcp://127.0.0.1:%u",
                 (unsigned)ferry_store_server_port(srv));
        url = urlbuf;
    }
    printf("%-8s %14s %16s %18s %14s\n", "clients", "set+get ops/s",
           "ops/s/client", "us per set+get", "ref: pings/s");
    snprintf(list, sizeof(list), "%s", clients);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int n = atoi(tok);
        client_t *cs = calloc((size_t)(n > 0 ? n : 1), sizeof(*cs));
        pthread_barrier_t start;
        unsigned long long total[2] = {0, 0};

        if (n < 1 || cs == NULL)
            return 2;
        for (int ping = 0; ping < 2; ping++) {
            pthread_barrier_init(&start, NULL, (unsigned)n);
            for (int i = 0; i < n; i++) {
                cs[i] = (client_t){.url = url, .id = i, .seconds = seconds,
                                   .start = &start, .ping = ping};
                pthread_create(&cs[i].thread, NULL, client_main, &cs[i]);
            }
            for (int i = 0; i < n; i++) {
                pthread_join(cs[i].thread, NULL);
                total[ping] += cs[i].ops;
            }
            pthread_barrier_destroy(&start);
        }
        printf("%-8d %14.0f %16.0f %18.1f %14.0f\n", n,
               (double)total[0] / seconds, (double)total[0] / seconds / n,
               1e6 * seconds * n / ((double)total[0] / 2),
               (double)total[1] / seconds);
        free(cs);
    }
    ferry_store_server_stop(srv);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Exchange wall time                                                       */
/* ------------------------------------------------------------------------ */

/* One timed exchange; returns the slowest rank's seconds (on every rank). */
static double timed_exchange(ferry_comm_t *comm, ferry_agent_t *agent)
{
    int n = ferry_comm_size(comm);
    void **vals = calloc((size_t)n, sizeof(*vals));
    size_t *lens = calloc((size_t)n, sizeof(*lens));
    double t, worst = 0;

    check(ferry_comm_barrier(comm, TMO), "barrier");
    t = now_s();
    check(ferry_comm_exchange(comm, agent, TMO), "exchange");
    t = now_s() - t;
    check(ferry_comm_allgather(comm, &t, sizeof(t), vals, lens, TMO),
          "allgather");
    for (int r = 0; r < n; r++) {
        double x;

        memcpy(&x, vals[r], sizeof(x));
        worst = x > worst ? x : worst;
        ferry_store_free(vals[r]);
    }
    free(vals);
    free(lens);
    return worst;
}

static void report(const char *what, int n, double *t, int k)
{
    qsort(t, (size_t)k, sizeof(*t), cmp_double);
    printf("%-6d %-28s %5d %12.1f %12.1f\n", n, what, k, 1e3 * t[k / 2],
           1e3 * t[k - 1]);
}

static int bench_exchange(int argc, char **argv)
{
    ferry_comm_t *comm;
    ferry_agent_t *agent;
    int reps = 5, me, n;
    double first, *changed, *same;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "ferry-comm-bench exchange: bad argument '%s'\n",
                    argv[i]);
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    check(ferry_comm_create(NULL, &comm), "comm_create");
    me = ferry_comm_rank(comm);
    n = ferry_comm_size(comm);
    check(ferry_agent_create(NULL, &agent), "agent_create");
    changed = calloc((size_t)reps, sizeof(*changed));
    same = calloc((size_t)reps, sizeof(*same));
    /* reps + 1 buffers of 64 KiB, registered one per changed exchange. */
    char *mem = calloc((size_t)reps + 1, 65536);
    ferry_mem_t *h;
    ferry_desc_t d = {.addr = (uintptr_t)mem, .len = 65536,
                      .kind = FERRY_MEM_HOST};

    check(ferry_mem_register(agent, &d, 1, &h), "register");
    first = timed_exchange(comm, agent);
    for (int i = 0; i < reps; i++) {
        d.addr = (uintptr_t)mem + (uint64_t)(i + 1) * 65536;
        check(ferry_mem_register(agent, &d, 1, &h), "register");
        changed[i] = timed_exchange(comm, agent);
        same[i] = timed_exchange(comm, agent);
    }
    if (me == 0) {
        printf("%-6s %-28s %5s %12s %12s\n", "ranks", "exchange", "runs",
               "median ms", "worst ms");
        report("first (all blobs new)", n, &first, 1);
        report("after new registrations", n, changed, reps);
        report("nothing changed", n, same, reps);
    }
    check(ferry_comm_barrier(comm, TMO), "barrier");
    ferry_comm_destroy(comm);
    ferry_agent_destroy(agent);
    free(mem);
    free(changed);
    free(same);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "store") == 0)
        return bench_store(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "exchange") == 0)
        return bench_exchange(argc - 2, argv + 2);
    fprintf(stderr,
            "usage: ferry-comm-bench store [--clients 1,4,16] [--seconds S] "
            "[--store URL]\n"
            "       ferry-run -n N -- ferry-comm-bench exchange [--reps R]\n");
    return 2;
}
