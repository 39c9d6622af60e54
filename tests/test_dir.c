/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The directory of agents against real etcd processes that this test
 * starts on free loopback ports (tests/lib/etcd.c), each with its data in a
 * temporary directory, and always stops (by pid: at exit, on the watchdog's
 * alarm, and through PR_SET_PDEATHSIG if the test itself is killed). Cases,
 * one CTest entry each:
 *
 *   errors    bad URLs, an endpoint with nothing listening, a server that
 *             answers garbage, one that never answers: a typed status and a
 *             text, in bounded time (no etcd needed)
 *   agents    one etcd: a publisher in a second process, found by name,
 *             read and written over the loaded peer (random bytes,
 *             checked); a watch sees it join, update and, once it is
 *             killed with SIGKILL, leave within the TTL (with margin); a
 *             restart under the same name is a new instance; a clean exit
 *             revokes the lease at once; ferry-info --dir lists it
 *   churn     two agents transfer all along while a third process joins,
 *             is found through the watch, receives transfers and is killed:
 *             its departure is seen within the TTL, its requests end with
 *             PEER_LOST, and not one transfer between the two others fails
 *   failover  three etcd members, four agents that publish, find each
 *             other by name and transfer (bytes checked); a follower listed
 *             first is killed, and publishing, renewing, finding and
 *             transferring go on through the others
 *
 * Without an etcd executable (PATH, or FERRY_TEST_ETCD) the etcd cases exit
 * 77 with the reason. The same executable is the publisher process
 * ("publisher URL NAME SEED TTL_MS"), driven by lines on its stdin.
 */
#include "test.h"
#include "xfer_util.h"
#include "lib/etcd.h"

#include <curl/curl.h>
#include <jansson.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE (256u * 1024u)
#define SEC 1000000000LL

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    test_rng_t r = { seed };

    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = test_rand(&r);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
}

/* ------------------------------------------------------------------------ */
/* etcd processes (tests/lib/etcd.c) and the publishers                     */
/* ------------------------------------------------------------------------ */

static volatile pid_t child_pids[4]; /* publishers, by slot */

static void stop_all(void)
{
    xe_stop();
    for (int i = 0; i < 4; i++)
        if (child_pids[i] > 0) {
            kill(child_pids[i], SIGKILL);
            waitpid(child_pids[i], NULL, 0);
            child_pids[i] = 0;
        }
}

static void on_alarm(int sig)
{
    (void)sig;
    xe_kill_all_now();
    for (int i = 0; i < 4; i++)
        if (child_pids[i] > 0)
            kill(child_pids[i], SIGKILL);
    static const char msg[] = "test_dir: watchdog: timed out\n";
    if (write(2, msg, sizeof(msg) - 1) < 0)
        _exit(1);
    _exit(1);
}

/* Starts an n-member cluster and waits until it serves reads. */
static void start_cluster(int n)
{
    xe_start(n);
    atexit(stop_all);
}

/* ------------------------------------------------------------------------ */
/* The publisher process                                                    */
/* ------------------------------------------------------------------------ */

/* Publishes an agent whose SIZE bytes of memory (from ferry_mem_alloc, or
 * with mode "malloc" ordinary memory, on which transfers need this
 * process's progress) hold fill(seed), tells the parent their address,
 * then obeys stdin: "republish" (register a second
 * region and publish again), "exit" (destroy the directory: its lease is
 * revoked), or EOF. */
static int publisher(const char *url, const char *name, uint64_t seed, long ttl_ms,
                     const char *mode)
{
    ferry_agent_params_t ap = { .field_mask = FERRY_AGENT_PARAM_NAME |
                                              FERRY_AGENT_PARAM_PROGRESS_THREAD,
                                .name = name, .progress_thread = 1 };
    ferry_dir_params_t dp = { .field_mask = FERRY_DIR_PARAM_TTL,
                              .ttl_ns = (uint64_t)ttl_ms * 1000000u };
    ferry_agent_t *agent;
    ferry_dir_t *dir;
    ferry_mem_t *mem, *mem2 = NULL;
    void *buf, *buf2 = NULL;
    char line[64];

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    if (strcmp(mode, "malloc") == 0)
        ASSERT_TRUE((buf = aligned_alloc(4096, SIZE)) != NULL);
    else
        ASSERT_ST(FERRY_OK, ferry_mem_alloc(agent, SIZE, FERRY_MEM_HOST, &buf));
    fill(buf, SIZE, seed);
    ferry_desc_t d = { .addr = (uintptr_t)buf, .len = SIZE, .kind = FERRY_MEM_HOST };
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    ASSERT_ST(FERRY_OK, ferry_dir_create(url, &dp, &dir));
    ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, agent));
    printf("ready %llx\n", (unsigned long long)(uintptr_t)buf);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (strncmp(line, "republish", 9) == 0) {
            ASSERT_ST(FERRY_OK, ferry_mem_alloc(agent, 4096, FERRY_MEM_HOST, &buf2));
            ferry_desc_t d2 = { .addr = (uintptr_t)buf2, .len = 4096, .kind = FERRY_MEM_HOST };
            ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d2, 1, &mem2));
            ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, agent));
            printf("republished\n");
            fflush(stdout);
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    ferry_dir_destroy(dir);
    ferry_mem_deregister(mem2);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    return 0;
}

typedef struct child {
    pid_t pid;
    FILE *in, *out;
    uint64_t addr;
} child_t;

static const char *self_path;

static void spawn_publisher(child_t *c, int slot, const char *url, const char *name,
                            uint64_t seed, long ttl_ms, const char *mode)
{
    int to[2], from[2];
    char seed_s[32], ttl_s[32], line[128];

    ASSERT_TRUE(pipe(to) == 0 && pipe(from) == 0);
    snprintf(seed_s, sizeof(seed_s), "%llu", (unsigned long long)seed);
    snprintf(ttl_s, sizeof(ttl_s), "%ld", ttl_ms);
    c->pid = fork();
    ASSERT_TRUE(c->pid >= 0);
    if (c->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]), close(to[1]), close(from[0]), close(from[1]);
        execl(self_path, self_path, "publisher", url, name, seed_s, ttl_s, mode,
              (char *)NULL);
        _exit(127);
    }
    child_pids[slot] = c->pid;
    close(to[0]);
    close(from[1]);
    c->in = fdopen(to[1], "w");
    c->out = fdopen(from[0], "r");
    ASSERT_TRUE(c->in && c->out);
    ASSERT_TRUE(fgets(line, sizeof(line), c->out) != NULL);
    ASSERT_TRUE(sscanf(line, "ready %" SCNx64, &c->addr) == 1);
}

static void tell(child_t *c, const char *cmd, const char *expect)
{
    char line[128];

    fprintf(c->in, "%s\n", cmd);
    fflush(c->in);
    if (expect) {
        ASSERT_TRUE(fgets(line, sizeof(line), c->out) != NULL);
        EXPECT_TRUE(strncmp(line, expect, strlen(expect)) == 0);
    }
}

static void reap(child_t *c, int slot)
{
    int status;

    fclose(c->in);
    fclose(c->out);
    waitpid(c->pid, &status, 0);
    child_pids[slot] = 0;
}

/* Waits for the next event about name (others are skipped) up to
 * timeout_s; returns its kind, or 0 on timeout. */
static int next_event(ferry_dir_t *dir, const char *name, double timeout_s)
{
    double end = now_s() + timeout_s;

    for (;;) {
        ferry_dir_event_t ev;
        size_t n;
        ASSERT_ST(FERRY_OK, ferry_dir_events(dir, &ev, 1, &n));
        if (n == 1 && strcmp(ev.name, name) == 0)
            return (int)ev.kind;
        if (n == 1)
            continue;
        double left = end - now_s();
        if (left <= 0)
            return 0;
        ferry_status_t st = ferry_dir_wait(dir, (int64_t)(left * 1e9));
        if (st == FERRY_ERR_TIMEOUT)
            return 0;
        ASSERT_ST(FERRY_OK, st);
    }
}

/* One request, prepared, posted, waited for and released: its outcome. */
static ferry_status_t move(ferry_agent_t *agent, ferry_xfer_op_t op, uint8_t *buf,
                           ferry_peer_t *peer, uint64_t addr)
{
    ferry_desc_t local = { .addr = (uintptr_t)buf, .len = SIZE, .kind = FERRY_MEM_HOST };
    ferry_desc_t remote = { .addr = addr, .len = SIZE, .kind = FERRY_MEM_HOST };
    ferry_xfer_t *x;
    ferry_status_t st;

    st = ferry_xfer_prepare(agent, op, &local, 1, peer, &remote, 1, NULL, &x);
    if (st != FERRY_OK)
        return st;
    st = xu_post_wait(x, 30 * SEC);
    ferry_xfer_release(x);
    return st;
}

/* READs the publisher's SIZE bytes and checks them against fill(seed), then
 * WRITEs other random bytes and reads them back. */
static void check_transfer(ferry_agent_t *agent, ferry_peer_t *peer, uint64_t addr,
                           uint8_t *buf, uint64_t seed)
{
    static uint8_t want[SIZE];

    memset(buf, 0, SIZE);
    fill(want, SIZE, seed);
    EXPECT_ST(FERRY_OK, move(agent, FERRY_OP_READ, buf, peer, addr));
    EXPECT_TRUE(memcmp(buf, want, SIZE) == 0);

    fill(want, SIZE, seed ^ 0x5555);
    memcpy(buf, want, SIZE);
    EXPECT_ST(FERRY_OK, move(agent, FERRY_OP_WRITE, buf, peer, addr));
    memset(buf, 0, SIZE);
    EXPECT_ST(FERRY_OK, move(agent, FERRY_OP_READ, buf, peer, addr));
    EXPECT_TRUE(memcmp(buf, want, SIZE) == 0);
}

/* Runs ferry-info --dir url: its output (stdout and stderr) must contain
 * want, and its exit status be status. */
static void check_info(const char *url, const char *want, int status)
{
    char cmd[512], out[4096];
    size_t n;
    FILE *p;
    int rc;

    snprintf(cmd, sizeof(cmd), "'%s' --dir '%s' 2>&1", FERRY_INFO_TOOL, url);
    p = popen(cmd, "r");
    ASSERT_TRUE(p != NULL);
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    rc = pclose(p);
    printf("%s", out);
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == status);
    if (strstr(out, want) == NULL)
        TEST_FAIL_AT_("ferry-info --dir %s: no '%s' in: %s", url, want, out);
}

/* ------------------------------------------------------------------------ */
/* Cases                                                                    */
/* ------------------------------------------------------------------------ */

/* A call to etcd member i's gateway, outside the client under test:
 * POSTs body to path, returns the reply's JSON. */
static json_t *gateway(int i, const char *path, const char *body)
{
    char url[128];
    CURL *c = curl_easy_init();
    FILE *f = tmpfile();
    json_error_t e;
    json_t *j;

    ASSERT_TRUE(c && f);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", xe_client_port[i], path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    ASSERT_TRUE(rc == CURLE_OK);
    rewind(f);
    j = json_loadf(f, 0, &e);
    fclose(f);
    ASSERT_TRUE(j != NULL);
    return j;
}

static void b64(const char *s, char *out)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(s);

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(uint8_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(uint8_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= (uint8_t)s[i + 2];
        *out++ = t[v >> 18];
        *out++ = t[(v >> 12) & 63];
        *out++ = i + 1 < n ? t[(v >> 6) & 63] : '=';
        *out++ = i + 2 < n ? t[v & 63] : '=';
    }
    *out = '\0';
}

/* Replaces the value of key with text that is no metadata blob, keeping
 * its lease (so that it still expires with its publisher). */
static void put_garbage(const char *key)
{
    char k64[512], body[1024];
    json_t *r;
    const char *lease;

    b64(key, k64);
    snprintf(body, sizeof(body), "{\"key\":\"%s\"}", k64);
    r = gateway(0, "/v3/kv/range", body);
    lease = json_string_value(json_object_get(
        json_array_get(json_object_get(r, "kvs"), 0), "lease"));
    ASSERT_TRUE(lease != NULL);
    snprintf(body, sizeof(body), "{\"key\":\"%s\",\"value\":\"bm90IGEgYmxvYg==\","
             "\"lease\":\"%s\"}", k64, lease); /* "not a blob" */
    json_decref(r);
    json_decref(gateway(0, "/v3/kv/put", body));
}

/* The next event for name, as next_event(), copied to *ev. */
static int next_event_full(ferry_dir_t *dir, const char *name, double timeout_s,
                           ferry_dir_event_t *out)
{
    double end = now_s() + timeout_s;

    for (;;) {
        size_t n;
        ASSERT_ST(FERRY_OK, ferry_dir_events(dir, out, 1, &n));
        if (n == 1 && strcmp(out->name, name) == 0)
            return (int)out->kind;
        if (n == 1)
            continue;
        double left = end - now_s();
        if (left <= 0 || ferry_dir_wait(dir, (int64_t)(left * 1e9)) == FERRY_ERR_TIMEOUT)
            return 0;
    }
}

static void case_agents(void)
{
    const long ttl_ms = 2000;
    const double ttl = ttl_ms / 1000.0;
    int order[1] = { 0 };
    char url[256];
    /* A stall timeout far beyond the TTL: only the directory may end the
     * request to the frozen publisher below. */
    ferry_agent_params_t ap = { .field_mask = FERRY_AGENT_PARAM_NAME |
                                              FERRY_AGENT_PARAM_PROGRESS_THREAD |
                                              FERRY_AGENT_PARAM_STALL_TIMEOUT,
                                .name = "reader", .progress_thread = 1,
                                .stall_timeout_ns = 60 * SEC };
    ferry_agent_t *agent;
    ferry_dir_t *dir;
    ferry_peer_t *peer, *peer2;
    ferry_mem_t *mem;
    void *buf;
    child_t pub, pub2, quiet, frozen;
    char **names;
    size_t n;
    void *blob;
    size_t len;
    int64_t rev, rev2;
    ferry_xfer_t *old;
    double t0, seen;
    int fd;

    start_cluster(1);
    xe_url(url, sizeof(url), order, 1, "ferry-test/agents");
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(agent, SIZE, FERRY_MEM_HOST, &buf));
    ferry_desc_t d = { .addr = (uintptr_t)buf, .len = SIZE, .kind = FERRY_MEM_HOST };
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    ASSERT_ST(FERRY_OK, ferry_dir_create(url, NULL, &dir));

    /* Before anything is published. */
    ASSERT_ST(FERRY_OK, ferry_dir_list(dir, &names, &n));
    EXPECT_EQ(0, n);
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_dir_get(dir, "prefill-0", &blob, &len, NULL));
    EXPECT_ERR_HAS("prefill-0");
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_events(dir, NULL, 0, &n));
    ASSERT_ST(FERRY_OK, ferry_dir_attach(dir, agent)); /* starts the watch */
    ASSERT_ST(FERRY_OK, ferry_dir_watch(dir));
    ASSERT_ST(FERRY_OK, ferry_dir_fd(dir, &fd));

    /* A publisher in another process: joins, is found by name, moves bytes. */
    spawn_publisher(&pub, 0, url, "prefill-0", 11, ttl_ms, "alloc");
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "prefill-0", 5));
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    EXPECT_EQ(0, poll(&pfd, 1, 0)); /* drained: not readable */
    ASSERT_ST(FERRY_OK, ferry_dir_list(dir, &names, &n));
    EXPECT_EQ(1, n);
    if (n == 1)
        EXPECT_TRUE(strcmp(names[0], "prefill-0") == 0);
    ferry_dir_free(names);
    ASSERT_ST(FERRY_OK, ferry_dir_get(dir, "prefill-0", &blob, &len, &rev));
    EXPECT_TRUE(len > 0);
    ferry_dir_free(blob);
    check_info(url, "prefill-0", 0);
    check_info("etcd://127.0.0.1:1/x", "ferry-info: peer lost: dir: opening", 1);
    t0 = now_s();
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "prefill-0", &peer));
    printf("lookup and load: %.1f ms\n", (now_s() - t0) * 1e3);
    EXPECT_TRUE(strcmp(ferry_peer_name(peer), "prefill-0") == 0);
    check_transfer(agent, peer, pub.addr, buf, 11);

    /* Re-publishing after a new registration: one UPDATE, a new revision,
     * the same peer handle, old requests still good. */
    ferry_desc_t local = { .addr = (uintptr_t)buf, .len = SIZE, .kind = FERRY_MEM_HOST };
    ferry_desc_t remote = { .addr = pub.addr, .len = SIZE, .kind = FERRY_MEM_HOST };
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &local, 1, peer,
                                           &remote, 1, NULL, &old));
    /* Something that is no blob under its name: the attached agent, which
     * has a peer of that name, tries to reload it; the failure is an event
     * with the reason, and the peer keeps its metadata. */
    ferry_dir_event_t ev;
    put_garbage("ferry-test/agents/prefill-0");
    EXPECT_EQ(FERRY_DIR_UPDATE, next_event(dir, "prefill-0", 5));
    EXPECT_EQ(FERRY_DIR_LOAD_FAILED, next_event_full(dir, "prefill-0", 5, &ev));
    printf("LOAD_FAILED: %s\n", ev.detail);
    EXPECT_TRUE(strstr(ev.detail, "dir: reloading 'prefill-0'") != NULL);
    EXPECT_TRUE(strstr(ev.detail, "metadata") != NULL);
    EXPECT_ST(FERRY_OK, xu_post_wait(old, 30 * SEC));
    {
        static uint8_t want[SIZE];

        fill(want, SIZE, 11 ^ 0x5555); /* what check_transfer left there */
        EXPECT_TRUE(memcmp(buf, want, SIZE) == 0);
    }

    tell(&pub, "republish", "republished");
    EXPECT_EQ(FERRY_DIR_UPDATE, next_event_full(dir, "prefill-0", 5, &ev));
    EXPECT_TRUE(ev.detail[0] == '\0');
    ASSERT_ST(FERRY_OK, ferry_dir_get(dir, "prefill-0", &blob, &len, &rev2));
    EXPECT_TRUE(rev2 > rev);
    ferry_dir_free(blob);
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "prefill-0", &peer2));
    EXPECT_TRUE(peer2 == peer);
    EXPECT_ST(FERRY_OK, xu_post_wait(old, 30 * SEC));

    /* SIGKILL: no revocation; the lease runs out, etcd deletes the key,
     * the watch reports it. etcd expires a lease at most TTL after the last
     * renewal (so at most TTL after the kill) and checks leases every
     * 0.5 s; the watch reads every 0.2 s: TTL + 2 s leaves a margin. */
    kill(pub.pid, SIGKILL);
    t0 = now_s();
    reap(&pub, 0);
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "prefill-0", ttl + 2.0));
    seen = now_s() - t0;
    printf("departure of a killed publisher seen after %.2f s (TTL %.1f s)\n", seen, ttl);
    EXPECT_TRUE(seen <= ttl + 2.0);
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_dir_get(dir, "prefill-0", &blob, &len, NULL));

    /* A restart under the same name: LEAVE was seen, now JOIN; loading it
     * gives the same handle with the new instance's metadata, so the old
     * request is refused and a new one reaches the new process. */
    spawn_publisher(&pub2, 1, url, "prefill-0", 22, ttl_ms, "alloc");
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "prefill-0", 5));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "prefill-0", &peer2));
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_post(old));
    ferry_xfer_release(old);
    check_transfer(agent, peer2, pub2.addr, buf, 22);

    /* A clean exit revokes the lease: gone far sooner than the TTL, which
     * is 30 s for this publisher. */
    spawn_publisher(&quiet, 2, url, "decode-0", 33, 30000, "alloc");
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "decode-0", 5));
    t0 = now_s();
    tell(&quiet, "exit", NULL);
    reap(&quiet, 2);
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "decode-0", 5));
    printf("departure of a cleanly exiting publisher seen after %.2f s (TTL 30 s)\n",
           now_s() - t0);

    tell(&pub2, "exit", NULL);
    reap(&pub2, 1);
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "prefill-0", 5));

    /* A publisher that stops (SIGSTOP: alive, but its lease is no longer
     * renewed) while a READ of its ordinary memory, which needs its
     * progress, is in flight: the departure ends the request with
     * PEER_LOST within the TTL (with margin), long before the 60 s stall
     * timeout, and refuses new prepares to it. */
    spawn_publisher(&frozen, 3, url, "frozen-0", 44, ttl_ms, "malloc");
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "frozen-0", 5));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "frozen-0", &peer));
    check_transfer(agent, peer, frozen.addr, buf, 44);
    ferry_desc_t flocal = { .addr = (uintptr_t)buf, .len = SIZE, .kind = FERRY_MEM_HOST };
    ferry_desc_t fremote = { .addr = frozen.addr, .len = SIZE, .kind = FERRY_MEM_HOST };
    ferry_xfer_t *stuck;
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &flocal, 1, peer,
                                           &fremote, 1, NULL, &stuck));
    xu_stop_child(frozen.pid); /* returns once it is stopped */
    t0 = now_s();
    ferry_status_t fst = ferry_xfer_post(stuck);
    EXPECT_ST(FERRY_IN_PROGRESS, fst);
    if (fst == FERRY_IN_PROGRESS)
        fst = ferry_xfer_wait(stuck, (int64_t)((ttl + 2.0) * 1e9));
    seen = now_s() - t0;
    EXPECT_ST(FERRY_ERR_PEER_LOST, fst);
    EXPECT_ERR_HAS("left the directory");
    printf("request in flight to a stopped publisher ended after %.2f s (TTL %.1f s)\n",
           seen, ttl);
    EXPECT_TRUE(seen <= ttl + 2.0);
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "frozen-0", 2));
    ferry_xfer_t *refused = NULL;
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_prepare(agent, FERRY_OP_READ, &flocal, 1,
                                                      peer, &fremote, 1, NULL, &refused));
    EXPECT_TRUE(refused == NULL);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_post(stuck));
    ferry_xfer_release(stuck);
    kill(frozen.pid, SIGKILL);
    reap(&frozen, 3);

    /* This process publishes too, loads itself (loopback), unpublishes
     * (its loopback peer is then gone) and comes back: the same running
     * agent, loaded again, is usable as a new instance. */
    ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, agent));
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "reader", 5));
    ASSERT_ST(FERRY_OK, ferry_dir_keepalive(dir));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "reader", &peer));
    ferry_desc_t lo = { .addr = (uintptr_t)buf, .len = SIZE / 2, .kind = FERRY_MEM_HOST };
    ferry_desc_t hi = { .addr = (uintptr_t)buf + SIZE / 2, .len = SIZE / 2,
                        .kind = FERRY_MEM_HOST };
    ferry_xfer_t *loop;
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &lo, 1, peer, &hi, 1,
                                           NULL, &loop));
    EXPECT_ST(FERRY_OK, xu_post_wait(loop, 30 * SEC));
    ASSERT_ST(FERRY_OK, ferry_dir_unpublish(dir, agent));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_dir_unpublish(dir, agent));
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "reader", 5));
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_post(loop));
    ferry_xfer_release(loop);
    ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, agent));
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "reader", 5));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, agent, "reader", &peer));
    memset(buf, 7, SIZE / 2);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &lo, 1, peer, &hi, 1,
                                           NULL, &loop));
    EXPECT_ST(FERRY_OK, xu_post_wait(loop, 30 * SEC));
    EXPECT_TRUE(memcmp(buf, (uint8_t *)buf + SIZE / 2, SIZE / 2) == 0);
    ferry_xfer_release(loop);

    EXPECT_ST(FERRY_OK, ferry_dir_detach(dir, agent));
    EXPECT_ST(FERRY_ERR_NOT_FOUND, ferry_dir_detach(dir, agent));
    ferry_dir_destroy(dir);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
}

/* Asks each member for its status through the gateway: the index of one
 * that is not the leader. */
static int find_follower(int n)
{
    for (int i = 0; i < n; i++) {
        json_t *j = gateway(i, "/v3/maintenance/status", "{}");
        const char *me = json_string_value(json_object_get(json_object_get(j, "header"),
                                                           "member_id"));
        const char *leader = json_string_value(json_object_get(j, "leader"));
        bool follower = me && leader && strcmp(me, leader) != 0;
        json_decref(j);
        if (follower)
            return i;
    }
    return -1;
}

/* The survivors' traffic in case_churn: READs of b's data into a's
 * buffer, each checked, until told to stop. */
typedef struct churn {
    ferry_agent_t *a;
    ferry_peer_t *b;
    uint8_t *buf;
    uint64_t addr;
    atomic_bool stop;
    long ok, failed;
} churn_t;

static void *churn_main(void *arg)
{
    churn_t *c = arg;
    static uint8_t want[SIZE];

    fill(want, SIZE, 55);
    while (!atomic_load(&c->stop)) {
        memset(c->buf, 0, SIZE);
        ferry_status_t st = move(c->a, FERRY_OP_READ, c->buf, c->b, c->addr);
        if (st == FERRY_OK && memcmp(c->buf, want, SIZE) == 0) {
            c->ok++;
        } else {
            c->failed++;
            fprintf(stderr, "churn: %s: %s\n", ferry_status_str(st), ferry_last_error());
        }
        usleep(200); /* leave the 2-core machine some room */
    }
    return NULL;
}

/* Join and leave under load: two agents transfer all along while a third
 * (another process) joins, is found through the watch, receives
 * transfers, and is killed with SIGKILL; the departure is seen within the
 * TTL (with margin), the third's requests end with PEER_LOST, and not one
 * transfer between the two others fails. */
static void case_churn(void)
{
    const long ttl_ms = 2000;
    int order[1] = { 0 };
    char url[256];
    ferry_agent_t *a, *b;
    ferry_mem_t *ma, *mb;
    void *bufa, *bufb;
    ferry_dir_t *dir;
    ferry_peer_t *pb, *pc;
    churn_t c = { 0 };
    pthread_t th;
    child_t third;
    double t0;

    start_cluster(1);
    xe_url(url, sizeof(url), order, 1, "ferry-test/churn");
    ferry_agent_params_t pa = { .field_mask = FERRY_AGENT_PARAM_NAME |
                                              FERRY_AGENT_PARAM_PROGRESS_THREAD,
                                .name = "survivor-a", .progress_thread = 1 };
    ferry_agent_params_t pbp = pa;
    pbp.name = "survivor-b";
    ASSERT_ST(FERRY_OK, ferry_agent_create(&pa, &a));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&pbp, &b));
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(a, 2 * SIZE, FERRY_MEM_HOST, &bufa));
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(b, SIZE, FERRY_MEM_HOST, &bufb));
    fill(bufb, SIZE, 55);
    ferry_desc_t da = { .addr = (uintptr_t)bufa, .len = 2 * SIZE, .kind = FERRY_MEM_HOST };
    ferry_desc_t db = { .addr = (uintptr_t)bufb, .len = SIZE, .kind = FERRY_MEM_HOST };
    ASSERT_ST(FERRY_OK, ferry_mem_register(a, &da, 1, &ma));
    ASSERT_ST(FERRY_OK, ferry_mem_register(b, &db, 1, &mb));
    ASSERT_ST(FERRY_OK, ferry_dir_create(url, NULL, &dir));
    ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, a));
    ASSERT_ST(FERRY_OK, ferry_dir_publish(dir, b));
    ASSERT_ST(FERRY_OK, ferry_dir_attach(dir, a));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, a, "survivor-b", &pb));

    c.a = a;
    c.b = pb;
    c.buf = bufa;
    c.addr = (uintptr_t)bufb;
    atomic_init(&c.stop, false);
    ASSERT_TRUE(pthread_create(&th, NULL, churn_main, &c) == 0);

    spawn_publisher(&third, 0, url, "third", 66, ttl_ms, "alloc");
    EXPECT_EQ(FERRY_DIR_JOIN, next_event(dir, "third", 5));
    ASSERT_ST(FERRY_OK, ferry_dir_load(dir, a, "third", &pc));
    check_transfer(a, pc, third.addr, (uint8_t *)bufa + SIZE, 66);
    kill(third.pid, SIGKILL);
    t0 = now_s();
    reap(&third, 0);
    EXPECT_EQ(FERRY_DIR_LEAVE, next_event(dir, "third", ttl_ms / 1000.0 + 2.0));
    printf("departure seen after %.2f s (TTL %.1f s) while the survivors transferred\n",
           now_s() - t0, ttl_ms / 1000.0);
    EXPECT_ST(FERRY_ERR_PEER_LOST, move(a, FERRY_OP_READ, (uint8_t *)bufa + SIZE, pc,
                                        third.addr));
    usleep(300000); /* some more traffic after the departure */
    atomic_store(&c.stop, true);
    pthread_join(th, NULL);
    printf("survivors: %ld transfers checked, %ld failed\n", c.ok, c.failed);
    EXPECT_EQ(0, c.failed);
    EXPECT_TRUE(c.ok > 10);

    EXPECT_ST(FERRY_OK, ferry_dir_detach(dir, a));
    ferry_dir_destroy(dir);
    ferry_mem_deregister(ma);
    ferry_mem_deregister(mb);
    ferry_agent_destroy(a);
    ferry_agent_destroy(b);
}

#define NFO 4

/* Each of the NFO agents loads the others by name through its own handle
 * and READs their data (the first SIZE bytes of each one's buffer, filled
 * with fill(100 + j)) into the second half of its own: bytes checked. */
static void fo_exchange(ferry_agent_t **agents, ferry_dir_t **dirs, uint8_t **bufs)
{
    static uint8_t want[SIZE];

    for (int i = 0; i < NFO; i++)
        for (int j = 0; j < NFO; j++) {
            char name[16];
            ferry_peer_t *peer;

            if (i == j)
                continue;
            snprintf(name, sizeof(name), "fo-%d", j);
            ASSERT_ST(FERRY_OK, ferry_dir_load(dirs[i], agents[i], name, &peer));
            memset(bufs[i] + SIZE, 0, SIZE);
            EXPECT_ST(FERRY_OK, move(agents[i], FERRY_OP_READ, bufs[i] + SIZE, peer,
                                     (uintptr_t)bufs[j]));
            fill(want, SIZE, 100 + (uint64_t)j);
            EXPECT_TRUE(memcmp(bufs[i] + SIZE, want, SIZE) == 0);
        }
}

static void case_failover(void)
{
    int order[XE_MAX_MEMBERS], victim, k = 0;
    char url[256];
    ferry_dir_params_t dp = { .field_mask = FERRY_DIR_PARAM_TTL | FERRY_DIR_PARAM_TIMEOUT,
                              .ttl_ns = 3 * SEC, .timeout_ns = 2 * SEC };
    ferry_agent_t *agents[NFO];
    ferry_dir_t *dirs[NFO], *dir2;
    ferry_mem_t *mems[NFO];
    uint8_t *bufs[NFO];
    void *blob;
    size_t len, n;
    char **names;
    double t0;

    start_cluster(3);
    victim = find_follower(3);
    ASSERT_TRUE(victim >= 0);
    order[k++] = victim;
    for (int i = 0; i < 3; i++)
        if (i != victim)
            order[k++] = i;
    xe_url(url, sizeof(url), order, 3, "ferry-test/failover");

    /* Four agents, each with its memory and its own directory handle,
     * publish, find each other by name and transfer. */
    for (int i = 0; i < NFO; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fo-%d", i);
        ferry_agent_params_t ap = { .field_mask = FERRY_AGENT_PARAM_NAME |
                                                  FERRY_AGENT_PARAM_PROGRESS_THREAD,
                                    .name = name, .progress_thread = 1 };
        void *b;
        ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agents[i]));
        ASSERT_ST(FERRY_OK, ferry_mem_alloc(agents[i], 2 * SIZE, FERRY_MEM_HOST, &b));
        bufs[i] = b;
        fill(bufs[i], SIZE, 100 + (uint64_t)i);
        ferry_desc_t d = { .addr = (uintptr_t)b, .len = 2 * SIZE, .kind = FERRY_MEM_HOST };
        ASSERT_ST(FERRY_OK, ferry_mem_register(agents[i], &d, 1, &mems[i]));
        ASSERT_ST(FERRY_OK, ferry_dir_create(url, &dp, &dirs[i]));
        ASSERT_ST(FERRY_OK, ferry_dir_publish(dirs[i], agents[i]));
    }
    ASSERT_ST(FERRY_OK, ferry_dir_watch(dirs[0]));
    for (int i = 0; i < NFO; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fo-%d", i);
        EXPECT_EQ(FERRY_DIR_JOIN, next_event(dirs[0], name, 5));
    }
    fo_exchange(agents, dirs, bufs);

    /* The first endpoint, the one every call went to, dies. */
    xe_kill(victim);
    t0 = now_s();
    ASSERT_ST(FERRY_OK, ferry_dir_get(dirs[0], "fo-0", &blob, &len, NULL));
    printf("first call after the member's death: %.1f ms\n", (now_s() - t0) * 1e3);
    ferry_dir_free(blob);
    for (int i = 0; i < NFO; i++) {
        ASSERT_ST(FERRY_OK, ferry_dir_publish(dirs[i], agents[i]));
        ASSERT_ST(FERRY_OK, ferry_dir_keepalive(dirs[i]));
    }
    ASSERT_ST(FERRY_OK, ferry_dir_list(dirs[0], &names, &n));
    EXPECT_EQ(NFO, n);
    ferry_dir_free(names);
    /* The watch's stream was on the dead member: the event comes through
     * another one. */
    EXPECT_EQ(FERRY_DIR_UPDATE, next_event(dirs[0], "fo-0", 5));
    fo_exchange(agents, dirs, bufs);

    /* A new handle whose first endpoint is dead connects through the next;
     * the leases stay alive through the survivors for several TTLs. */
    ASSERT_ST(FERRY_OK, ferry_dir_create(url, &dp, &dir2));
    sleep(4);
    ASSERT_ST(FERRY_OK, ferry_dir_list(dir2, &names, &n));
    EXPECT_EQ(NFO, n);
    ferry_dir_free(names);
    ferry_dir_event_t ev;
    while (ferry_dir_events(dirs[0], &ev, 1, &n) == FERRY_OK && n == 1)
        EXPECT_TRUE(ev.kind != FERRY_DIR_LEAVE); /* nobody left */

    /* Destroying revokes each lease through a survivor. */
    for (int i = 0; i < NFO; i++)
        ferry_dir_destroy(dirs[i]);
    ASSERT_ST(FERRY_OK, ferry_dir_list(dir2, &names, &n));
    EXPECT_EQ(0, n);
    ferry_dir_free(names);
    ferry_dir_destroy(dir2);
    for (int i = 0; i < NFO; i++) {
        ferry_mem_deregister(mems[i]);
        ferry_agent_destroy(agents[i]);
    }
}

/* A one-connection HTTP server thread: answers every request with reply
 * (NULL: accepts and never answers). */
typedef struct fake {
    int lfd, port;
    const char *reply;
    pthread_t th;
} fake_t;

static void *fake_main(void *arg)
{
    fake_t *f = arg;

    for (;;) {
        int c = accept(f->lfd, NULL, NULL);
        char req[4096];
        if (c < 0)
            return NULL;
        if (f->reply == NULL) {
            sleep(5); /* never answer within the client's limit */
            close(c);
            continue;
        }
        if (read(c, req, sizeof(req)) > 0) {
            char head[256];
            int h = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: "
                             "application/json\r\nContent-Length: %zu\r\nConnection: "
                             "close\r\n\r\n", strlen(f->reply));
            if (write(c, head, (size_t)h) < 0 || write(c, f->reply, strlen(f->reply)) < 0)
                perror("fake write");
        }
        close(c);
    }
}

static void fake_start(fake_t *f, const char *reply)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof(a);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->reply = reply;
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_TRUE(f->lfd >= 0 && bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
                listen(f->lfd, 8) == 0);
    ASSERT_TRUE(getsockname(f->lfd, (struct sockaddr *)&a, &len) == 0);
    f->port = ntohs(a.sin_port);
    ASSERT_TRUE(pthread_create(&f->th, NULL, fake_main, f) == 0);
    pthread_detach(f->th);
}

static void case_errors(void)
{
    static const char *bad[] = {
        "", "tcp://127.0.0.1:2379/x", "etcd://", "etcd://127.0.0.1:2379",
        "etcd://127.0.0.1:2379/", "etcd://127.0.0.1/x", "etcd://127.0.0.1:0/x",
        "etcd://127.0.0.1:99999/x", "etcd://127.0.0.1:23a/x", "etcd://:2379/x",
        "etcd://127.0.0.1:2379,/x", "etcd://,127.0.0.1:2379/x", "etcd://h:1/x/",
    };
    ferry_dir_params_t quick = { .field_mask = FERRY_DIR_PARAM_TIMEOUT,
                                 .timeout_ns = SEC / 2 };
    ferry_dir_t *dir = (ferry_dir_t *)&quick; /* must stay untouched */
    char url[128];
    fake_t garbage, html, silent;
    double t0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_create(bad[i], NULL, &dir));
        EXPECT_TRUE(strstr(ferry_last_error(), "dir:") != NULL);
    }
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_create(NULL, NULL, &dir));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_create("etcd://127.0.0.1:1/x", NULL, NULL));
    ferry_dir_params_t zero_ttl = { .field_mask = FERRY_DIR_PARAM_TTL, .ttl_ns = 1000 };
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_create("etcd://127.0.0.1:1/x", &zero_ttl, &dir));
    EXPECT_TRUE(dir == (ferry_dir_t *)&quick);

    /* Nothing listens: refused at once, on both endpoints, each named. */
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d,127.0.0.1:%d/x", xe_free_port(), xe_free_port());
    t0 = now_s();
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_dir_create(url, &quick, &dir));
    EXPECT_ERR_HAS("no endpoint answered");
    EXPECT_TRUE(now_s() - t0 < 2.0);
    printf("refused: %s\n", ferry_last_error());

    /* Something that is not etcd. */
    fake_start(&garbage, "{\"header\": ");
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d/x", garbage.port);
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_dir_create(url, &quick, &dir));
    EXPECT_ERR_HAS("not etcd's JSON");
    printf("garbage: %s\n", ferry_last_error());
    fake_start(&html, "[1, 2]");
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d/x", html.port);
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_dir_create(url, &quick, &dir));
    /* A JSON reply of the right shape with keys that are not base64. */
    fake_t badkv;
    fake_start(&badkv, "{\"kvs\": [{\"key\": \"!!!\"}]}");
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d/x", badkv.port);
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_dir_create(url, &quick, &dir));
    EXPECT_ERR_HAS("no valid key");

    /* A server that accepts and never answers: the timeout, not a hang. */
    fake_start(&silent, NULL);
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d/x", silent.port);
    t0 = now_s();
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_dir_create(url, &quick, &dir));
    double took = now_s() - t0;
    printf("silent: %s (%.2f s)\n", ferry_last_error(), took);
    EXPECT_TRUE(took >= 0.45 && took < 3.0);
    EXPECT_TRUE(dir == (ferry_dir_t *)&quick);

    /* NULL handles. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_publish(NULL, NULL));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_watch(NULL));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_dir_wait(NULL, 0));
    ferry_dir_destroy(NULL);
    ferry_dir_free(NULL);
}

int main(int argc, char **argv)
{
    const char *c = argc > 1 ? argv[1] : "errors";

    self_path = argv[0];
    if (strcmp(c, "publisher") == 0 && argc == 7)
        return publisher(argv[2], argv[3], strtoull(argv[4], NULL, 10), atol(argv[5]),
                         argv[6]);
    signal(SIGALRM, on_alarm);
    alarm(100);
    if (strcmp(c, "errors") == 0)
        case_errors();
    else if (strcmp(c, "agents") == 0)
        case_agents();
    else if (strcmp(c, "failover") == 0)
        case_failover();
    else if (strcmp(c, "churn") == 0)
        case_churn();
    else {
        fprintf(stderr, "usage: test_dir errors|agents|failover|churn\n");
        return 2;
    }
    stop_all();
    return test_finish(c);
}
