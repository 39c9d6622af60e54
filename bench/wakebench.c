/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-wakebench: what it costs to wait without spinning. Two processes on
 * this host (the target serves with its progress thread); the initiator
 * posts a small WRITE and waits for it, again and again, with each way of
 * waiting:
 *
 *   spin        ferry_xfer_test() in a loop (the reference: ~1 CPU s/s)
 *   wait        ferry_xfer_wait() with the default FERRY_WAIT_SPIN_US
 *   sleep       ferry_xfer_wait() with FERRY_WAIT_SPIN_US=0: it sleeps on
 *               the transports' fd at once, so every completion is a
 *               wake-up from epoll_wait
 *   thread      the initiator's progress thread drives progress and
 *               ferry_xfer_wait() (default spin) waits
 *   thread0     the same with FERRY_WAIT_SPIN_US=0: the waiter sleeps on
 *               the agent's condition variable at once, and the progress
 *               thread sleeps on the fd after every event
 *
 * "inline" counts the posts that completed inside ferry_xfer_post() (no
 * wait at all); the latency columns include them.
 *
 * For each it prints the round trip (post to completion seen) as median,
 * 99th percentile and mean in microseconds, and the waiting thread's CPU
 * seconds per second of wall time (getrusage RUSAGE_THREAD). A wake-up's
 * cost is the difference to "spin". Then, for each way, one wait of about
 * a second on a stopped target (SIGSTOP), with its CPU per second.
 *
 *   ferry-wakebench [--iters N] [--size BYTES] [--modes spin,wait,sleep,thread,thread0]
 *
 * A benchmark, not a test: it asserts nothing about time. Its two
 * processes are the two ranks of a job (tools/bench/pair.h) that it starts
 * itself.
 */
#include "clock.h"
#include "pair.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SEC 1000000000ll

static void check(ferry_status_t st, const char *what)
{
    if (st < 0) {
        fprintf(stderr, "ferry-wakebench: %s: %s: %s\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

static double now_s(void)
{
    return (double)now_ns() * 1e-9;
}

/* Returns once process pid (a sibling, not a child: no waitpid) is
 * stopped, as /proc says. */
static void wait_stopped(pid_t pid)
{
    char path[64], stat[512];

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    for (;;) {
        FILE *f = fopen(path, "r");
        size_t n = f != NULL ? fread(stat, 1, sizeof(stat) - 1, f) : 0;
        char *paren;

        if (f != NULL)
            fclose(f);
        stat[n] = '\0';
        paren = strrchr(stat, ')');
        /* "pid (comm) S ...": the state follows the command's name. */
        if (paren == NULL || paren[1] == '\0' || paren[2] == 'T' || paren[2] == 't')
            return;
        nanosleep(&(struct timespec){.tv_nsec = 100000}, NULL);
    }
}

/* The target: a progress thread serves every transfer; main only waits. */
static int target(ferry_comm_t *comm, size_t size)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "wakebench-target", .progress_thread = 1};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    void *buf = calloc(1, size);
    ferry_desc_t d = {(uintptr_t)buf, size, FERRY_MEM_HOST, 0};

    check(ferry_agent_create(&ap, &agent), "target: agent_create");
    check(ferry_mem_register(agent, &d, 1, &mem), "target: mem_register");
    free(pair_greet(comm, agent, d.addr, 0).blob);
    pair_leave(comm);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(buf);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

typedef struct mode {
    const char *name;
    const char *spin_us; /* FERRY_WAIT_SPIN_US, NULL: the default */
    int thread;          /* the initiator's progress thread */
    int spin;            /* test in a loop instead of waiting */
} wb_mode_t;

static const wb_mode_t modes[] = {
    {"spin", NULL, 0, 1},
    {"wait", NULL, 0, 0},
    {"sleep", "0", 0, 0},
    {"thread", NULL, 1, 0},
    {"thread0", "0", 1, 0},
};

static long inline_posts;

static ferry_status_t complete(ferry_xfer_t *x, const wb_mode_t *m)
{
    ferry_status_t st = ferry_xfer_post(x);

    if (st != FERRY_IN_PROGRESS) {
        inline_posts += st == FERRY_OK;
        return st;
    }
    if (m->spin) {
        while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS)
            ;
        return st;
    }
    return ferry_xfer_wait(x, 60 * SEC);
}

static void run_mode(const wb_mode_t *m, const void *blob, size_t blob_len, uint64_t raddr,
                     size_t size, long iters, pid_t pid)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .progress_thread = m->thread};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    ferry_xfer_t *x;
    void *buf = calloc(1, size);
    ferry_desc_t l = {(uintptr_t)buf, size, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {raddr, size, FERRY_MEM_HOST, 0};
    double *lat = calloc((size_t)iters, sizeof(*lat)), sum = 0, t0, c0, wall, cpu;

    if (m->spin_us != NULL)
        setenv("FERRY_WAIT_SPIN_US", m->spin_us, 1);
    else
        unsetenv("FERRY_WAIT_SPIN_US");
    check(ferry_agent_create(&ap, &agent), "agent_create");
    check(ferry_mem_register(agent, &l, 1, &mem), "mem_register");
    check(ferry_peer_load(agent, blob, blob_len, &peer), "peer_load");
    check(ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1, NULL, &x),
          "xfer_prepare");
    for (long i = 0; i < iters / 10 + 100; i++) /* warm-up: connect, caches */
        check(complete(x, m), "warm-up");

    inline_posts = 0;
    c0 = thread_cpu_s();
    t0 = now_s();
    for (long i = 0; i < iters; i++) {
        double s = now_s();

        check(complete(x, m), "transfer");
        lat[i] = (now_s() - s) * 1e6;
        sum += lat[i];
    }
    wall = now_s() - t0;
    cpu = thread_cpu_s() - c0;
    qsort(lat, (size_t)iters, sizeof(*lat), cmp_double);
    printf("| %-7s | %zu | %ld | %ld | %.2f | %.2f | %.2f | %.3f |", m->name, size, iters,
           inline_posts, lat[iters / 2], lat[(size_t)((double)iters * 0.99)],
           sum / (double)iters, cpu / wall);

    /* One long wait: the target stopped for about a second. */
    kill(pid, SIGSTOP);
    wait_stopped(pid);
    {
        ferry_status_t st = ferry_xfer_post(x);
        double resume = now_s() + 1.0;

        c0 = thread_cpu_s();
        t0 = now_s();
        if (st == FERRY_IN_PROGRESS) {
            /* Resumed from this thread: without a helper, the waiting loop
             * checks the clock itself, which a real wait would not need. */
            if (m->spin) {
                while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS)
                    if (now_s() >= resume && resume > 0) {
                        kill(pid, SIGCONT);
                        resume = 0;
                    }
            } else {
                st = ferry_xfer_wait(x, SEC);
                kill(pid, SIGCONT);
                resume = 0;
                if (st == FERRY_ERR_TIMEOUT)
                    st = ferry_xfer_wait(x, 60 * SEC);
            }
        }
        if (resume > 0)
            kill(pid, SIGCONT);
        wall = now_s() - t0;
        cpu = thread_cpu_s() - c0;
        check(st, "stalled transfer");
        printf(" %.2f | %.3f |\n", wall, cpu / wall);
    }
    ferry_xfer_release(x);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(buf);
    free(lat);
}

int main(int argc, char **argv)
{
    long iters = 20000;
    size_t size = 64;
    const char *which = "spin,wait,sleep,thread,thread0";
    ferry_comm_t *comm;
    pair_hello_t t;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = strtol(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            size = (size_t)strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--modes") == 0 && i + 1 < argc) {
            which = argv[++i];
        } else {
            fprintf(stderr, "usage: ferry-wakebench [--iters N] [--size BYTES] "
                            "[--modes spin,wait,sleep,thread,thread0]\n");
            return 2;
        }
    }
    if (iters < 1 || size < 1) {
        fprintf(stderr, "ferry-wakebench: --iters and --size must be positive\n");
        return 2;
    }
    /* Both processes start, as fresh images, before either touches UCX. */
    comm = pair_join("ferry-wakebench", argv);
    if (ferry_comm_rank(comm) == 1) {
        return target(comm, size);
    }
    t = pair_greet(comm, NULL, 0, 0);

    printf("| wait | size (B) | iters | inline | median (us) | p99 (us) | mean (us) | "
           "CPU s/s | stalled wait (s) | CPU s/s stalled |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++) {
        const char *p = strstr(which, modes[k].name);
        size_t n = strlen(modes[k].name);

        if (p != NULL && (p == which || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            run_mode(&modes[k], t.blob, t.blob_len, t.a, size, iters, t.pid);
    }
    pair_leave(comm);
    free(t.blob);
    return 0;
}
