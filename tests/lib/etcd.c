/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Real etcd processes for the tests (etcd.h).
 */
#include "lib/etcd.h"
#include "test.h"

#include "ferry.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile pid_t xe_pids[XE_MAX_MEMBERS];
int xe_client_port[XE_MAX_MEMBERS];
static int peer_port[XE_MAX_MEMBERS];
static char tmpdir[64];

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int xe_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0), port;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_TRUE(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
    ASSERT_TRUE(getsockname(s, (struct sockaddr *)&a, &len) == 0);
    port = ntohs(a.sin_port);
    close(s);
    return port;
}

static const char *find_etcd(void)
{
    static char path[512];
    const char *env = getenv("FERRY_TEST_ETCD"), *p = getenv("PATH");

    if (env && *env)
        return access(env, X_OK) == 0 ? env : NULL;
    for (p = p ? p : "/usr/bin"; *p;) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);

        snprintf(path, sizeof(path), "%.*s/etcd", (int)n, p);
        if (n && access(path, X_OK) == 0)
            return path;
        p += n + (c != NULL);
    }
    return NULL;
}

static void start_member(const char *etcd, int i, int n)
{
    char name[16], data[128], curl_[64], purl[64], cluster[512] = "", token[32],
         log[160];
    pid_t pid;

    for (int k = 0; k < n; k++) {
        size_t l = strlen(cluster);

        snprintf(cluster + l, sizeof(cluster) - l, "%sm%d=http://127.0.0.1:%d",
                 k ? "," : "", k, peer_port[k]);
    }
    snprintf(name, sizeof(name), "m%d", i);
    snprintf(data, sizeof(data), "%s/m%d", tmpdir, i);
    snprintf(log, sizeof(log), "%s/m%d.log", tmpdir, i);
    snprintf(curl_, sizeof(curl_), "http://127.0.0.1:%d", xe_client_port[i]);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", peer_port[i]);
    snprintf(token, sizeof(token), "ferry-test-%d", (int)getpid());
    fflush(NULL);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(log, "w", stdout);

        if (f == NULL || dup2(1, 2) < 0)
            _exit(126);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(etcd, etcd, "--name", name, "--data-dir", data,
              "--listen-client-urls", curl_, "--advertise-client-urls", curl_,
              "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
              "--initial-cluster", cluster, "--initial-cluster-state", "new",
              "--initial-cluster-token", token, (char *)NULL);
        _exit(127);
    }
    xe_pids[i] = pid;
}

void xe_url(char *url, size_t cap, const int *order, int n, const char *prefix)
{
    size_t l = (size_t)snprintf(url, cap, "etcd://");

    for (int k = 0; k < n; k++)
        l += (size_t)snprintf(url + l, cap - l, "%s127.0.0.1:%d", k ? "," : "",
                              xe_client_port[order[k]]);
    snprintf(url + l, cap - l, "/%s", prefix);
}

void xe_kill(int i)
{
    if (xe_pids[i] > 0) {
        kill(xe_pids[i], SIGKILL);
        waitpid(xe_pids[i], NULL, 0);
        xe_pids[i] = 0;
    }
}

void xe_stop(void)
{
    for (int i = 0; i < XE_MAX_MEMBERS; i++)
        xe_kill(i);
    if (tmpdir[0]) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
        tmpdir[0] = '\0';
    }
}

void xe_kill_all_now(void)
{
    for (int i = 0; i < XE_MAX_MEMBERS; i++)
        if (xe_pids[i] > 0)
            kill(xe_pids[i], SIGKILL);
}

static int reserved;

void xe_reserve(int n)
{
    ASSERT_TRUE(n >= 1 && n <= XE_MAX_MEMBERS && reserved == 0);
    if (find_etcd() == NULL) {
        printf("skip: no etcd executable on PATH (apt-get install etcd-server, or "
               "set FERRY_TEST_ETCD)\n");
        exit(TEST_SKIP_CODE);
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-etcd-XXXXXX");
    ASSERT_TRUE(mkdtemp(tmpdir) != NULL);
    atexit(xe_stop);
    for (int i = 0; i < n; i++) {
        xe_client_port[i] = xe_free_port();
        peer_port[i] = xe_free_port();
    }
    reserved = n;
}

void xe_start(int n)
{
    const char *etcd;
    int order[XE_MAX_MEMBERS] = {0, 1, 2};
    char url[256];
    double t0;

    if (reserved == 0)
        xe_reserve(n);
    ASSERT_TRUE(n == reserved);
    etcd = find_etcd();
    for (int i = 0; i < n; i++)
        start_member(etcd, i, n);
    xe_url(url, sizeof(url), order, n, "probe");
    t0 = now_s();
    for (;;) {
        ferry_dir_params_t p = {.field_mask = FERRY_DIR_PARAM_TIMEOUT,
                                .timeout_ns = 500000000u};
        ferry_dir_t *d;

        if (ferry_dir_create(url, &p, &d) == FERRY_OK) {
            ferry_dir_destroy(d);
            break;
        }
        if (now_s() - t0 > 30) {
            fprintf(stderr, "etcd did not come up in 30 s: %s (logs in %s)\n",
                    ferry_last_error(), tmpdir);
            exit(1);
        }
        usleep(100000);
    }
    printf("etcd: %d member(s) up in %.2f s\n", n, now_s() - t0);
}
