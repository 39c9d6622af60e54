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
 * A benchmark, not a test: it asserts nothing about time.
 */
#include "xfer_util.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEC 1000000000ll
#define IO_TIMEOUT_MS 3600000 /* control messages */

static void check(ferry_status_t st, const char *what)
{
    if (st < 0) {
        fprintf(stderr, "ferry-wakebench: %s: %s: %s\n", what, ferry_status_str(st),
                ferry_last_error());
        exit(1);
    }
}

/* The target: a progress thread serves every transfer; main only waits. */
static int target(int fd, size_t size)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "wakebench-target", .progress_thread = 1};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    void *buf = calloc(1, size), *blob;
    ferry_desc_t d = {(uintptr_t)buf, size, FERRY_MEM_HOST, 0};
    size_t len;
    char quit;

    check(ferry_agent_create(&ap, &agent), "target: agent_create");
    check(ferry_mem_register(agent, &d, 1, &mem), "target: mem_register");
    check(ferry_md_pack(agent, &blob, &len), "target: md_pack");
    xu_io(fd, &len, sizeof(len), 1, IO_TIMEOUT_MS);
    xu_io(fd, blob, len, 1, IO_TIMEOUT_MS);
    xu_io(fd, &d.addr, sizeof(d.addr), 1, IO_TIMEOUT_MS);
    ferry_md_free(blob);
    xu_io(fd, &quit, 1, 0, IO_TIMEOUT_MS);
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
    int ws;

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
    c0 = xu_thread_cpu_s();
    t0 = xu_now_s();
    for (long i = 0; i < iters; i++) {
        double s = xu_now_s();

        check(complete(x, m), "transfer");
        lat[i] = (xu_now_s() - s) * 1e6;
        sum += lat[i];
    }
    wall = xu_now_s() - t0;
    cpu = xu_thread_cpu_s() - c0;
    qsort(lat, (size_t)iters, sizeof(*lat), cmp_double);
    printf("| %-7s | %zu | %ld | %ld | %.2f | %.2f | %.2f | %.3f |", m->name, size, iters,
           inline_posts, lat[iters / 2], lat[(size_t)((double)iters * 0.99)],
           sum / (double)iters, cpu / wall);

    /* One long wait: the target stopped for about a second. */
    kill(pid, SIGSTOP);
    waitpid(pid, &ws, WUNTRACED);
    {
        ferry_status_t st = ferry_xfer_post(x);
        double resume = xu_now_s() + 1.0;

        c0 = xu_thread_cpu_s();
        t0 = xu_now_s();
        if (st == FERRY_IN_PROGRESS) {
            /* Resumed from this thread: without a helper, the waiting loop
             * checks the clock itself, which a real wait would not need. */
            if (m->spin) {
                while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS)
                    if (xu_now_s() >= resume && resume > 0) {
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
        wall = xu_now_s() - t0;
        cpu = xu_thread_cpu_s() - c0;
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
    size_t size = 64, blob_len;
    const char *which = "spin,wait,sleep,thread,thread0";
    int sv[2];
    pid_t pid;
    void *blob;
    uint64_t raddr;
    char quit = 'q';

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
    /* Both processes start before either touches UCX. */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        close(sv[0]);
        return target(sv[1], size);
    }
    close(sv[1]);
    xu_io(sv[0], &blob_len, sizeof(blob_len), 0, IO_TIMEOUT_MS);
    blob = malloc(blob_len);
    xu_io(sv[0], blob, blob_len, 0, IO_TIMEOUT_MS);
    xu_io(sv[0], &raddr, sizeof(raddr), 0, IO_TIMEOUT_MS);

    printf("| wait | size (B) | iters | inline | median (us) | p99 (us) | mean (us) | "
           "CPU s/s | stalled wait (s) | CPU s/s stalled |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++) {
        const char *p = strstr(which, modes[k].name);
        size_t n = strlen(modes[k].name);

        if (p != NULL && (p == which || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            run_mode(&modes[k], blob, blob_len, raddr, size, iters, pid);
    }
    xu_io(sv[0], &quit, 1, 1, IO_TIMEOUT_MS);
    waitpid(pid, NULL, 0);
    free(blob);
    return 0;
}
