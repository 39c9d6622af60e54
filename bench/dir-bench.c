/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-dir-bench: the directory's figures against an etcd that the caller
 * runs (docs/PERFORMANCE.md, "Directory"). Each latency comes with the
 * reference measured in the same run: the same request sent through
 * libcurl on a kept-alive connection (the floor of any gateway client),
 * and, when etcdctl is on PATH, one `etcdctl get` (a whole process: gRPC
 * connection and all).
 *
 *   ferry-dir-bench etcd://127.0.0.1:2379/bench [ITERS]
 *
 * Rows: publish (a put under the lease) and get, median and p99 over
 * ITERS (default 200); discovery of 64 agents (a fresh handle's watch
 * until 64 JOINs, and list + load of all 64 into one agent); departure of
 * a publisher killed with SIGKILL, TTL 2 s, three times (from the kill to
 * the LEAVE event); a change as a watching handle sees it (from the start
 * of a publish to the other handle's UPDATE event, ITERS times).
 */
#include "ferry.h"

#include <curl/curl.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAGENTS 64

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, ferry_status_t st)
{
    fprintf(stderr, "ferry-dir-bench: %s: %s: %s\n", what, ferry_status_str(st),
            ferry_last_error());
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void row(const char *what, double *t, int n)
{
    qsort(t, (size_t)n, sizeof(*t), cmp_double);
    printf("%-44s %9.1f %9.1f %6d\n", what, t[n / 2] * 1e6, t[(n * 99) / 100] * 1e6, n);
}

static size_t sink(char *p, size_t s, size_t n, void *arg)
{
    (void)p, (void)arg;
    return s * n;
}

/* The first endpoint of an etcd:// URL as http://host:port, and the
 * prefix. */
static void split_url(const char *url, char *http, size_t cap, char *prefix, size_t pcap)
{
    const char *h = url + strlen("etcd://"), *end = h + strcspn(h, ",/");
    const char *slash = strchr(h, '/');

    snprintf(http, cap, "http://%.*s", (int)(end - h), h);
    snprintf(prefix, pcap, "%s", slash ? slash + 1 : "");
}

/* A child that publishes one agent under a 2 s TTL and waits to be
 * killed. Forked before this process has any agent. */
static pid_t spawn_publisher(const char *url, const char *name)
{
    int p[2];
    pid_t pid;
    char c;

    if (pipe(p) != 0 || (pid = fork()) < 0) {
        perror("ferry-dir-bench: fork");
        exit(1);
    }
    if (pid == 0) {
        ferry_agent_params_t ap = { .field_mask = FERRY_AGENT_PARAM_NAME, .name = name };
        ferry_dir_params_t dp = { .field_mask = FERRY_DIR_PARAM_TTL, .ttl_ns = 2000000000u };
        ferry_agent_t *a;
        ferry_dir_t *d;
        ferry_status_t st;

        if ((st = ferry_agent_create(&ap, &a)) != FERRY_OK ||
            (st = ferry_dir_create(url, &dp, &d)) != FERRY_OK ||
            (st = ferry_dir_publish(d, a)) != FERRY_OK)
            die("publisher", st);
        if (write(p[1], "r", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(p[1]);
    if (read(p[0], &c, 1) != 1) {
        fprintf(stderr, "ferry-dir-bench: the publisher failed\n");
        exit(1);
    }
    close(p[0]);
    return pid;
}

static int wait_for(ferry_dir_t *dir, ferry_dir_event_kind_t kind, const char *name,
                    int count, double timeout_s)
{
    double end = now_s() + timeout_s;
    int seen = 0;

    while (seen < count && now_s() < end) {
        ferry_dir_event_t ev[64];
        size_t n;
        ferry_status_t st = ferry_dir_wait(dir, (int64_t)((end - now_s()) * 1e9));

        if (st == FERRY_ERR_TIMEOUT)
            break;
        if (st != FERRY_OK || (st = ferry_dir_events(dir, ev, 64, &n)) != FERRY_OK)
            die("events", st);
        for (size_t i = 0; i < n; i++)
            if (ev[i].kind == kind && (name == NULL || strcmp(ev[i].name, name) == 0))
                seen++;
    }
    return seen;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : NULL;
    int iters = argc > 2 ? atoi(argv[2]) : 200;
    char http[256], prefix[256], name[64], cmd[512];
    ferry_agent_t *agents[NAGENTS], *reader;
    ferry_dir_t *dir, *dir2;
    ferry_status_t st;
    double *t, t0;
    char **names;
    size_t n;

    if (url == NULL || strncmp(url, "etcd://", 7) != 0 || iters < 1) {
        fprintf(stderr, "usage: ferry-dir-bench etcd://host:port/prefix [ITERS]\n");
        return 2;
    }
    split_url(url, http, sizeof(http), prefix, sizeof(prefix));
    t = calloc((size_t)iters, sizeof(*t));

    /* Departure first: fork before this process has an agent. */
    printf("%-44s %9s\n", "departure of a SIGKILLed publisher, TTL 2 s", "seconds");
    for (int r = 0; r < 3; r++) {
        pid_t pid;
        snprintf(name, sizeof(name), "leaver-%d", r);
        pid = spawn_publisher(url, name);
        if ((st = ferry_dir_create(url, NULL, &dir)) != FERRY_OK ||
            (st = ferry_dir_watch(dir)) != FERRY_OK)
            die("watch", st);
        if (wait_for(dir, FERRY_DIR_JOIN, name, 1, 5) != 1)
            die("no JOIN for the publisher", FERRY_ERR_TIMEOUT);
        kill(pid, SIGKILL);
        t0 = now_s();
        waitpid(pid, NULL, 0);
        if (wait_for(dir, FERRY_DIR_LEAVE, name, 1, 10) != 1)
            die("no LEAVE for the publisher", FERRY_ERR_TIMEOUT);
        printf("%-44s %9.2f\n", name, now_s() - t0);
        ferry_dir_destroy(dir);
    }

    /* Publish and get against the floor: the gateway through libcurl. */
    ferry_agent_params_t rp = { .field_mask = FERRY_AGENT_PARAM_NAME, .name = "bench-reader" };
    if ((st = ferry_agent_create(&rp, &reader)) != FERRY_OK)
        die("agent", st);
    if ((st = ferry_dir_create(url, NULL, &dir)) != FERRY_OK)
        die("dir", st);
    printf("\n%-44s %9s %9s %6s\n", "operation", "med (us)", "p99 (us)", "n");
    for (int i = 0; i < iters; i++) {
        t0 = now_s();
        if ((st = ferry_dir_publish(dir, reader)) != FERRY_OK)
            die("publish", st);
        t[i] = now_s() - t0;
    }
    row("ferry_dir_publish (put of the blob)", t, iters);
    for (int i = 0; i < iters; i++) {
        void *blob;
        size_t len;
        t0 = now_s();
        if ((st = ferry_dir_get(dir, "bench-reader", &blob, &len, NULL)) != FERRY_OK)
            die("get", st);
        t[i] = now_s() - t0;
        ferry_dir_free(blob);
    }
    row("ferry_dir_get", t, iters);
    {
        CURL *c = curl_easy_init();
        char u[300], body[64];
        snprintf(u, sizeof(u), "%s/v3/kv/range", http);
        snprintf(body, sizeof(body), "{\"key\":\"eA==\"}");
        curl_easy_setopt(c, CURLOPT_URL, u);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        for (int i = 0; i < iters; i++) {
            t0 = now_s();
            if (curl_easy_perform(c) != CURLE_OK)
                die("curl", FERRY_ERR_PEER_LOST);
            t[i] = now_s() - t0;
        }
        curl_easy_cleanup(c);
        row("reference: gateway range, bare libcurl", t, iters);
    }
    if (system("command -v etcdctl >/dev/null 2>&1") == 0) {
        int k = iters < 20 ? iters : 20;
        snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints %s get x >/dev/null",
                 http + 7);
        for (int i = 0; i < k; i++) {
            t0 = now_s();
            if (system(cmd) != 0)
                die("etcdctl", FERRY_ERR_BACKEND);
            t[i] = now_s() - t0;
        }
        row("reference: etcdctl get (a whole process)", t, k);
    }
    ferry_dir_destroy(dir);

    /* 64 agents published through one handle, found by a fresh watch and
     * by list + load. */
    if ((st = ferry_dir_create(url, NULL, &dir)) != FERRY_OK)
        die("dir", st);
    for (int i = 0; i < NAGENTS; i++) {
        ferry_agent_params_t ap = { .field_mask = FERRY_AGENT_PARAM_NAME, .name = name };
        snprintf(name, sizeof(name), "agent-%02d", i);
        if ((st = ferry_agent_create(&ap, &agents[i])) != FERRY_OK ||
            (st = ferry_dir_publish(dir, agents[i])) != FERRY_OK)
            die("64 agents", st);
    }
    t0 = now_s();
    if ((st = ferry_dir_create(url, NULL, &dir2)) != FERRY_OK ||
        (st = ferry_dir_watch(dir2)) != FERRY_OK)
        die("watch", st);
    int joined = wait_for(dir2, FERRY_DIR_JOIN, NULL, NAGENTS, 10);
    printf("\n%-44s %9.1f ms (%d JOINs)\n", "64 agents: a new handle's watch", (now_s() - t0) * 1e3,
           joined);
    t0 = now_s();
    if ((st = ferry_dir_list(dir2, &names, &n)) != FERRY_OK)
        die("list", st);
    for (size_t i = 0; i < n; i++) {
        ferry_peer_t *peer;
        if (strncmp(names[i], "agent-", 6) == 0 &&
            (st = ferry_dir_load(dir2, reader, names[i], &peer)) != FERRY_OK)
            die("load", st);
    }
    printf("%-44s %9.1f ms (%zu names)\n", "64 agents: list, then get + load each",
           (now_s() - t0) * 1e3, n);
    ferry_dir_free(names);

    /* A change as a watching handle sees it: from the start of a publish
     * (the put) to the UPDATE event on the other handle. */
    for (int i = 0; i < iters; i++) {
        snprintf(name, sizeof(name), "agent-%02d", i % NAGENTS);
        t0 = now_s();
        if ((st = ferry_dir_publish(dir, agents[i % NAGENTS])) != FERRY_OK)
            die("publish", st);
        if (wait_for(dir2, FERRY_DIR_UPDATE, name, 1, 5) != 1)
            die("no UPDATE", FERRY_ERR_TIMEOUT);
        t[i] = now_s() - t0;
    }
    printf("\n");
    row("publish until a watcher's UPDATE event", t, iters);
    ferry_dir_destroy(dir2);
    ferry_dir_destroy(dir);
    for (int i = 0; i < NAGENTS; i++)
        ferry_agent_destroy(agents[i]);
    ferry_agent_destroy(reader);
    free(t);
    printf("\nferry-dir-bench: %s, prefix '%s'\n", url, prefix);
    return 0;
}
