/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Store tests: the client and the embedded server against each other over
 * loopback. One executable, one case per argument (CTest runs each as its
 * own test): "ops" round-trips every operation with random keys and
 * values; "wait" checks that WAIT returns when another client sets the key
 * and times out otherwise; "many" holds 1000 clients with pending waits on
 * one server; "malformed" sends broken frames on raw sockets and checks
 * that only the sender is cut off; "kill" checks that a client of a killed
 * server gets PEER_LOST promptly; "tool" runs ferry-store as a process;
 * "auth" runs it with a job secret: members connect and work, a client
 * with another secret, one without (ferry's or a raw torch-style one), a
 * wrong proof and an AUTH without a challenge are each refused while the
 * members carry on, and a client with a secret refuses a store without.
 * A watchdog alarm turns any hang into a failure.
 */
#include "xfer_util.h"

#include "store/proto.h"
#include "util/buf.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static ferry_store_t *connect_port(uint16_t port, uint64_t timeout_ns)
{
    char url[64];
    ferry_store_params_t p = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                              .timeout_ns = timeout_ns};
    ferry_store_t *s = NULL;

    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", port);
    ASSERT_ST(FERRY_OK, ferry_store_connect(url, &p, &s));
    return s;
}

static void rand_key(test_rng_t *r, char *k, size_t cap)
{
    size_t n = test_rand_range(r, 1, cap - 1);

    for (size_t i = 0; i < n; i++)
        k[i] = (char)test_rand_range(r, 33, 126);
    k[n] = 0;
}

/* compare_set(key, expected, desired) on s succeeds and answers want. */
static void expect_cas(ferry_store_t *s, const char *key, const char *expected,
                       const char *desired, const char *want)
{
    void *v = NULL;
    size_t len = 0;

    EXPECT_ST(FERRY_OK, ferry_store_compare_set(s, key, expected, strlen(expected), desired,
                                                strlen(desired), &v, &len));
    if (v == NULL || len != strlen(want) || memcmp(v, want, len) != 0)
        TEST_FAIL_AT_("compare_set('%s', '%s', '%s') answered %zu bytes, not '%s'", key,
                      expected, desired, len, want);
    ferry_store_free(v);
}

/* ------------------------------------------------------------------------ */

static void case_ops(void)
{
    ferry_store_server_t *srv;
    test_rng_t rng = {.s = 0x5107e};

    ASSERT_ST(FERRY_OK, ferry_store_server_start(NULL, NULL, &srv));
    ASSERT_TRUE(ferry_store_server_port(srv) != 0);
    ferry_store_t *a = connect_port(ferry_store_server_port(srv), 5000000000ull);
    ferry_store_t *b = connect_port(ferry_store_server_port(srv), 5000000000ull);
    int64_t nkeys = 0;

    EXPECT_ST(FERRY_OK, ferry_store_ping(a));

    /* set on one client, get on the other, with random sizes incl. 0. */
    for (int i = 0; i < 200; i++) {
        char key[64];
        size_t len = i == 0 ? 0 : (size_t)test_rand_range(&rng, 0, i < 190 ? 300 : 2000000);
        uint8_t *val = malloc(len + 1);
        void *got = NULL;
        size_t glen = 0;

        snprintf(key, sizeof(key), "k%d/", i);
        rand_key(&rng, key + strlen(key), 40);
        test_rand_bytes(&rng, val, len);
        EXPECT_ST(FERRY_OK, ferry_store_set(a, key, val, len));
        EXPECT_ST(FERRY_OK, ferry_store_get(b, key, &got, &glen));
        EXPECT_EQ(len, glen);
        if (got != NULL && glen == len)
            EXPECT_TRUE(memcmp(got, val, len) == 0);
        if (got != NULL)
            EXPECT_EQ(0, ((uint8_t *)got)[glen]);
        ferry_store_free(got);
        free(val);
    }
    EXPECT_ST(FERRY_OK, ferry_store_num_keys(a, &nkeys));
    EXPECT_EQ(200, nkeys);

    /* add: counts from zero, accumulates, parses what set stored. */
    int64_t v = 0;
    EXPECT_ST(FERRY_OK, ferry_store_add(a, "ctr", 5, &v));
    EXPECT_EQ(5, v);
    EXPECT_ST(FERRY_OK, ferry_store_add(b, "ctr", -12, &v));
    EXPECT_EQ(-7, v);
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "ctr2", "40", 2));
    /* SET has no reply in the protocol: a's ping returns only after the
     * server applied a's set, which b's add must see. */
    EXPECT_ST(FERRY_OK, ferry_store_ping(a));
    EXPECT_ST(FERRY_OK, ferry_store_add(b, "ctr2", 2, &v));
    EXPECT_EQ(42, v);
    void *txt = NULL;
    size_t tlen = 0;
    EXPECT_ST(FERRY_OK, ferry_store_get(a, "ctr", &txt, &tlen));
    EXPECT_TRUE(txt != NULL && strcmp(txt, "-7") == 0);
    ferry_store_free(txt);

    /* check */
    const char *ck[] = {"ctr", "ctr2"}, *ck2[] = {"ctr", "nope"};
    int ready = -1;
    EXPECT_ST(FERRY_OK, ferry_store_check(a, ck, 2, &ready));
    EXPECT_EQ(1, ready);
    EXPECT_ST(FERRY_OK, ferry_store_check(a, ck2, 2, &ready));
    EXPECT_EQ(0, ready);

    /* compare_set: create on empty expected, swap on match, keep on
     * mismatch, and the protocol's answer for a missing key. */
    expect_cas(a, "cas", "", "one", "one");
    expect_cas(b, "cas", "one", "two!", "two!");
    expect_cas(a, "cas", "one", "three", "two!");
    expect_cas(a, "cas-missing", "x", "y", "x");
    const char *cm[] = {"cas-missing"};
    EXPECT_ST(FERRY_OK, ferry_store_check(a, cm, 1, &ready));
    EXPECT_EQ(0, ready);

    /* append */
    EXPECT_ST(FERRY_OK, ferry_store_append(a, "app", "ab", 2));
    EXPECT_ST(FERRY_OK, ferry_store_ping(a)); /* APPEND has no reply either */
    EXPECT_ST(FERRY_OK, ferry_store_append(b, "app", "cde", 3));
    EXPECT_ST(FERRY_OK, ferry_store_ping(b));
    EXPECT_ST(FERRY_OK, ferry_store_get(a, "app", &txt, &tlen));
    EXPECT_TRUE(tlen == 5 && memcmp(txt, "abcde", 5) == 0);
    ferry_store_free(txt);

    /* multi_set / multi_get with random values */
    enum { M = 50 };
    char kbuf[M][48];
    const char *mk[M];
    uint8_t vbuf[M][100];
    const void *mv[M];
    size_t ml[M], gl[M];
    void *gv[M];
    for (int i = 0; i < M; i++) {
        snprintf(kbuf[i], sizeof(kbuf[i]), "multi/%d/", i);
        rand_key(&rng, kbuf[i] + strlen(kbuf[i]), 20);
        mk[i] = kbuf[i];
        ml[i] = (size_t)test_rand_range(&rng, 0, 100);
        test_rand_bytes(&rng, vbuf[i], ml[i]);
        mv[i] = vbuf[i];
    }
    EXPECT_ST(FERRY_OK, ferry_store_multi_set(a, mk, mv, ml, M));
    EXPECT_ST(FERRY_OK, ferry_store_multi_get(b, mk, M, gv, gl));
    for (int i = 0; i < M; i++) {
        EXPECT_EQ(ml[i], gl[i]);
        EXPECT_TRUE(gl[i] == ml[i] && memcmp(gv[i], vbuf[i], ml[i]) == 0);
        ferry_store_free(gv[i]);
    }

    /* delete_key */
    int deleted = -1;
    EXPECT_ST(FERRY_OK, ferry_store_num_keys(b, &nkeys));
    EXPECT_EQ(200 + 2 + 1 + 1 + M, nkeys);
    EXPECT_ST(FERRY_OK, ferry_store_delete_key(a, "app", &deleted));
    EXPECT_EQ(1, deleted);
    EXPECT_ST(FERRY_OK, ferry_store_delete_key(a, "app", &deleted));
    EXPECT_EQ(0, deleted);
    const char *ak[] = {"app"};
    EXPECT_ST(FERRY_OK, ferry_store_check(b, ak, 1, &ready));
    EXPECT_EQ(0, ready);
    EXPECT_ST(FERRY_OK, ferry_store_num_keys(b, &nkeys));
    EXPECT_EQ(200 + 2 + 1 + M, nkeys);

    /* Argument errors are INVALID, not crashes. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_set(a, NULL, "x", 1));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_connect("http://x:1", NULL, &a));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_connect("tcp://127.0.0.1", NULL, &a));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_connect("tcp://127.0.0.1:99999", NULL, &a));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_server_start("not-an-ip", NULL, &srv));
    EXPECT_ST(FERRY_OK, ferry_store_ping(a));

    ferry_store_close(a);
    ferry_store_close(b);
    ferry_store_server_stop(srv);
}

/* ------------------------------------------------------------------------ */

typedef struct setter {
    uint16_t port;
    uint64_t delay_ns;
    const char *key;
} setter_t;

static void *setter_main(void *arg)
{
    setter_t *t = arg;
    ferry_store_t *s = connect_port(t->port, 5000000000ull);
    struct timespec ts = {.tv_sec = (time_t)(t->delay_ns / 1000000000ull),
                          .tv_nsec = (long)(t->delay_ns % 1000000000ull)};

    nanosleep(&ts, NULL);
    EXPECT_ST(FERRY_OK, ferry_store_set(s, t->key, "v", 1));
    ferry_store_close(s);
    return NULL;
}

static void case_wait(void)
{
    ferry_store_server_t *srv;
    pthread_t th;

    ASSERT_ST(FERRY_OK, ferry_store_server_start("127.0.0.1", NULL, &srv));
    uint16_t port = ferry_store_server_port(srv);
    ferry_store_t *a = connect_port(port, 5000000000ull);
    const char *keys[] = {"w/one", "w/two"};

    /* Blocks until another client sets the second of two keys. */
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "w/one", "x", 1));
    setter_t t = {.port = port, .delay_ns = 300000000ull, .key = "w/two"};
    uint64_t t0 = ferry__now_ns();
    pthread_create(&th, NULL, setter_main, &t);
    EXPECT_ST(FERRY_OK, ferry_store_wait(a, keys, 2, 10000000000ll));
    uint64_t el = ferry__now_ns() - t0;
    pthread_join(th, NULL);
    EXPECT_TRUE(el >= 250000000ull);
    EXPECT_TRUE(el < 5000000000ull);

    /* Keys that are all there (one named twice) answer at once; a missing
     * key named twice is satisfied by one set. */
    const char *present[] = {"w/one", "w/two", "w/one"};
    t0 = ferry__now_ns();
    EXPECT_ST(FERRY_OK, ferry_store_wait(a, present, 3, 10000000000ll));
    EXPECT_TRUE(ferry__now_ns() - t0 < 100000000ull);
    const char *twice[] = {"w/dup", "w/one", "w/dup"};
    setter_t t2 = {.port = port, .delay_ns = 100000000ull, .key = "w/dup"};
    t0 = ferry__now_ns();
    pthread_create(&th, NULL, setter_main, &t2);
    EXPECT_ST(FERRY_OK, ferry_store_wait(a, twice, 3, 10000000000ll));
    el = ferry__now_ns() - t0;
    pthread_join(th, NULL);
    EXPECT_TRUE(el >= 80000000ull && el < 5000000000ull);

    /* Times out, then the connection is still in step. */
    const char *missing[] = {"w/never"};
    t0 = ferry__now_ns();
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_store_wait(a, missing, 1, 200000000ll));
    el = ferry__now_ns() - t0;
    EXPECT_TRUE(el >= 190000000ull && el < 3000000000ull);
    EXPECT_ERR_HAS("w/never");
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_store_wait(a, missing, 1, 0));
    EXPECT_ST(FERRY_OK, ferry_store_ping(a));
    void *v = NULL;
    size_t vl = 0;
    EXPECT_ST(FERRY_OK, ferry_store_get(a, "w/one", &v, &vl));
    EXPECT_TRUE(vl == 1 && memcmp(v, "x", 1) == 0);
    ferry_store_free(v);

    /* A wait cancelled on time-out does not fire later: set the key now,
     * and the next request's reply must be its own. */
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "w/never", "late", 4));
    int64_t nk = 0;
    EXPECT_ST(FERRY_OK, ferry_store_num_keys(a, &nk));
    EXPECT_EQ(4, nk);

    /* get waits for the key with the store's timeout. */
    ferry_store_t *quick = connect_port(port, 300000000ull);
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_store_get(quick, "w/absent", &v, &vl));
    EXPECT_ST(FERRY_OK, ferry_store_ping(quick));

    /* Connecting to a port with no server times out, within its limit. */
    ferry_store_server_stop(srv);
    char url[64];
    ferry_store_params_t p = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                              .timeout_ns = 300000000ull};
    ferry_store_t *none = NULL;
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", port);
    t0 = ferry__now_ns();
    EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_store_connect(url, &p, &none));
    EXPECT_TRUE(ferry__now_ns() - t0 < 3000000000ull);
    /* ...and the stopped server's clients see PEER_LOST. */
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_ping(a));
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_ping(quick));
    /* A later call says what closed the connection. */
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_get(a, "w/one", &v, &vl));
    EXPECT_ERR_HAS("get: the connection was closed by an earlier failure (store");
    EXPECT_ERR_HAS(": ping: ");
    ferry_store_close(a);
    ferry_store_close(quick);
}

/* ------------------------------------------------------------------------ */
/* Raw protocol helpers for the many-client and malformed cases            */

static int raw_connect(uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        TEST_FAIL_AT_("raw connect: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n)
        TEST_FAIL_AT_("raw send: %s", strerror(errno));
}

static void raw_validate(int fd)
{
    uint8_t m[5] = {FERRY__Q_VALIDATE};

    ferry__store_le32(m + 1, FERRY__STORE_MAGIC);
    raw_send(fd, m, 5);
}

/* Reads n bytes within ms: 1 got them, 0 the peer closed, -1 timed out. */
static int raw_recv(int fd, void *p, size_t n, int ms)
{
    uint8_t *b = p;
    uint64_t end = ferry__now_ns() + (uint64_t)ms * 1000000ull;

    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint64_t now = ferry__now_ns();

        if (now >= end || poll(&pfd, 1, (int)((end - now) / 1000000 + 1)) <= 0)
            return -1;
        ssize_t k = recv(fd, b, n, 0);

        if (k <= 0)
            return 0;
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

static size_t put_u64(uint8_t *p, uint64_t v)
{
    ferry__store_le64(p, v);
    return 8;
}

static size_t put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s);

    put_u64(p, n);
    memcpy(p + 8, s, n);
    return 8 + n;
}

/* ------------------------------------------------------------------------ */

static void case_many(void)
{
    enum { N = 1000 };
    struct rlimit rl;
    ferry_store_server_t *srv;
    static int fds[N];

    /* Each client costs two descriptors here (both ends live in this
     * process). */
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 2 * N + 64) {
        printf("SKIP: RLIMIT_NOFILE hard limit %llu is below %d\n",
               (unsigned long long)rl.rlim_max, 2 * N + 64);
        exit(TEST_SKIP_CODE);
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    ASSERT_ST(FERRY_OK, ferry_store_server_start(NULL, NULL, &srv));
    uint16_t port = ferry_store_server_port(srv);

    /* Every client validates and starts a WAIT on a key that is missing. */
    uint8_t wait_msg[64];
    size_t wn = 0;
    wait_msg[wn++] = FERRY__Q_WAIT;
    wn += put_u64(wait_msg + wn, 1);
    wn += put_str(wait_msg + wn, "many/go");
    for (int i = 0; i < N; i++) {
        fds[i] = raw_connect(port);
        ASSERT_TRUE(fds[i] >= 0);
        raw_validate(fds[i]);
        raw_send(fds[i], wait_msg, wn);
    }
    /* A real client works meanwhile and can see the server is busy only
     * with waits. */
    ferry_store_t *a = connect_port(port, 10000000000ull);
    EXPECT_ST(FERRY_OK, ferry_store_ping(a));
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "many/other", "x", 1));

    /* No waiter may have been answered yet. */
    int early = 0;
    for (int i = 0; i < N; i += 97) {
        uint8_t r;
        if (raw_recv(fds[i], &r, 1, 1) != -1)
            early++;
    }
    EXPECT_EQ(0, early);

    EXPECT_ST(FERRY_OK, ferry_store_set(a, "many/go", "1", 1));
    int woken = 0, pinged = 0;
    for (int i = 0; i < N; i++) {
        uint8_t r = 0xff;
        if (raw_recv(fds[i], &r, 1, 10000) == 1 &&
            r == FERRY__WAIT_STOP_WAITING)
            woken++;
    }
    EXPECT_EQ(N, woken);
    /* Every one of them is still served. */
    for (int i = 0; i < N; i++) {
        uint8_t m[5] = {FERRY__Q_PING};
        ferry__store_le32(m + 1, (uint32_t)i);
        raw_send(fds[i], m, 5);
    }
    for (int i = 0; i < N; i++) {
        uint8_t r[4];
        if (raw_recv(fds[i], r, 4, 10000) == 1 &&
            ferry__load_le32(r) == (uint32_t)i)
            pinged++;
    }
    EXPECT_EQ(N, pinged);
    for (int i = 0; i < N; i++)
        close(fds[i]);

    /* And 1000 library clients at once, each adding to one counter. */
    static ferry_store_t *cl[N];
    for (int i = 0; i < N; i++)
        cl[i] = connect_port(port, 10000000000ull);
    int64_t v = 0;
    for (int i = 0; i < N; i++)
        EXPECT_ST(FERRY_OK, ferry_store_add(cl[i], "many/count", 1, &v));
    EXPECT_EQ(N, v);
    for (int i = 0; i < N; i++)
        ferry_store_close(cl[i]);

    EXPECT_ST(FERRY_OK, ferry_store_ping(a));
    ferry_store_close(a);
    ferry_store_server_stop(srv);
}

/* ------------------------------------------------------------------------ */

static void case_malformed(void)
{
    ferry_store_server_t *srv;
    ferry_store_server_params_t sp = {
        .field_mask = FERRY_STORE_SERVER_PARAM_MAX_KEY_LEN |
                      FERRY_STORE_SERVER_PARAM_MAX_VALUE_LEN |
                      FERRY_STORE_SERVER_PARAM_MAX_WAIT_KEYS,
        .max_key_len = 256,
        .max_value_len = 4096,
        .max_wait_keys = 64};

    ASSERT_ST(FERRY_OK, ferry_store_server_start(NULL, &sp, &srv));
    uint16_t port = ferry_store_server_port(srv);
    ferry_store_t *good = connect_port(port, 5000000000ull);
    uint8_t m[16384];
    size_t n;
    int cases = 0;

    /* Each case: a fresh connection, optionally validated, then frames
     * that must make the server close it. */
#define CASE(validated, build)                                                \
    do {                                                                      \
        int fd_ = raw_connect(port);                                          \
        uint8_t r_[16];                                                       \
        ASSERT_TRUE(fd_ >= 0);                                                \
        if (validated)                                                        \
            raw_validate(fd_);                                                \
        n = 0;                                                                \
        build;                                                                \
        raw_send(fd_, m, n);                                                  \
        int got_ = raw_recv(fd_, r_, sizeof(r_), 5000);                       \
        if (got_ != 0)                                                        \
            TEST_FAIL_AT_("malformed case %d: connection not closed (%d)",    \
                          cases, got_);                                       \
        close(fd_);                                                           \
        cases++;                                                              \
        /* The well-behaved client keeps working. */                          \
        char k_[32];                                                          \
        snprintf(k_, sizeof(k_), "good/%d", cases);                           \
        EXPECT_ST(FERRY_OK, ferry_store_set(good, k_, k_, strlen(k_)));        \
        void *v_ = NULL;                                                      \
        size_t vl_ = 0;                                                       \
        EXPECT_ST(FERRY_OK, ferry_store_get(good, k_, &v_, &vl_));             \
        EXPECT_TRUE(v_ != NULL && strcmp(v_, k_) == 0);                       \
        ferry_store_free(v_);                                                 \
    } while (0)

    /* 1: bad magic */
    CASE(0, { m[n++] = FERRY__Q_VALIDATE; ferry__store_le32(m + n, 0xdeadbeef); n += 4; });
    /* 2: a query before VALIDATE */
    CASE(0, { m[n++] = FERRY__Q_SET; n += put_str(m + n, "k"); n += put_str(m + n, "v"); });
    /* 3: unknown query type */
    CASE(1, { m[n++] = 99; });
    /* 4: a queue query (not implemented) */
    CASE(1, { m[n++] = FERRY__Q_QUEUE_LEN; n += put_str(m + n, "q"); });
    /* 5: a key length near 2^64 */
    CASE(1, { m[n++] = FERRY__Q_GET; n += put_u64(m + n, UINT64_MAX - 3); });
    /* 6: a key one byte over the limit */
    CASE(1, { m[n++] = FERRY__Q_GET; n += put_u64(m + n, 257); memset(m + n, 'k', 257); n += 257; });
    /* 7: a value length of 2^62 */
    CASE(1, { m[n++] = FERRY__Q_SET; n += put_str(m + n, "k"); n += put_u64(m + n, 1ull << 62); });
    /* 8: WAIT naming 2^40 keys */
    CASE(1, { m[n++] = FERRY__Q_WAIT; n += put_u64(m + n, 1ull << 40); });
    /* 9: MULTI_SET over the key-count limit */
    CASE(1, { m[n++] = FERRY__Q_MULTI_SET; n += put_u64(m + n, 65); });
    /* 10: ADD to a value that is not a number */
    CASE(1, { m[n++] = FERRY__Q_SET; n += put_str(m + n, "txt"); n += put_str(m + n, "hello");
              m[n++] = FERRY__Q_ADD; n += put_str(m + n, "txt"); n += put_u64(m + n, 1); });
    /* 11: ADD overflowing int64 */
    CASE(1, { m[n++] = FERRY__Q_ADD; n += put_str(m + n, "big"); n += put_u64(m + n, (uint64_t)INT64_MAX);
              m[n++] = FERRY__Q_ADD; n += put_str(m + n, "big"); n += put_u64(m + n, 1); });
    /* 12: a second WAIT while one is pending */
    CASE(1, { for (int i_ = 0; i_ < 2; i_++) { m[n++] = FERRY__Q_WAIT; n += put_u64(m + n, 1);
              n += put_str(m + n, "never"); } });
    /* 13: APPEND growing a value over the limit */
    CASE(1, { for (int i_ = 0; i_ < 2; i_++) { m[n++] = FERRY__Q_APPEND; n += put_str(m + n, "ap");
              n += put_u64(m + n, 3000); memset(m + n, 'a', 3000); n += 3000; } });
    /* 14: garbage bytes */
    CASE(1, { test_rng_t g_ = {.s = 7}; for (int i_ = 0; i_ < 64; i_++) m[n++] = (uint8_t)(17 + test_rand(&g_) % 200); });

    /* 15: a truncated frame, then the sender hangs up: nothing to check on
     * that socket, but the server must carry on. */
    {
        int fd = raw_connect(port);
        raw_validate(fd);
        n = 0;
        m[n++] = FERRY__Q_SET;
        n += put_str(m + n, "trunc");
        n += put_u64(m + n, 100);
        memset(m + n, 't', 10);
        n += 10;
        raw_send(fd, m, n);
        close(fd);
        cases++;
        const char *tk[] = {"trunc"};
        int ready = -1;
        EXPECT_ST(FERRY_OK, ferry_store_check(good, tk, 1, &ready));
        EXPECT_EQ(0, ready);
    }
    /* 16: a frame split across many sends is not malformed. */
    {
        int fd = raw_connect(port);
        raw_validate(fd);
        n = 0;
        m[n++] = FERRY__Q_SET;
        n += put_str(m + n, "split");
        n += put_str(m + n, "value-in-pieces");
        m[n++] = FERRY__Q_GET;
        n += put_str(m + n, "split");
        for (size_t i = 0; i < n; i++) {
            raw_send(fd, m + i, 1);
            if (i % 8 == 0)
                usleep(1000);
        }
        uint8_t r[8 + 15];
        EXPECT_EQ(1, raw_recv(fd, r, sizeof(r), 5000));
        EXPECT_EQ(15, ferry__load_le64(r));
        EXPECT_TRUE(memcmp(r + 8, "value-in-pieces", 15) == 0);
        close(fd);
    }
#undef CASE
    EXPECT_TRUE(cases >= 10);
    EXPECT_ST(FERRY_OK, ferry_store_ping(good));
    ferry_store_close(good);
    ferry_store_server_stop(srv);
}

/* ------------------------------------------------------------------------ */

typedef struct waiter_arg {
    ferry_store_t *s;
    ferry_status_t st;
    uint64_t done_ns;
} waiter_arg_t;

static void *waiter_main(void *arg)
{
    waiter_arg_t *w = arg;
    const char *k[] = {"kill/never"};

    w->st = ferry_store_wait(w->s, k, 1, 30000000000ll);
    w->done_ns = ferry__now_ns();
    return NULL;
}

static void case_kill(void)
{
    int pfd[2];
    uint16_t port = 0;

    ASSERT_TRUE(pipe(pfd) == 0);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        ferry_store_server_t *srv;

        close(pfd[0]);
        if (ferry_store_server_start(NULL, NULL, &srv) != FERRY_OK)
            _exit(1);
        port = ferry_store_server_port(srv);
        if (write(pfd[1], &port, sizeof(port)) != sizeof(port))
            _exit(1);
        for (;;)
            pause();
    }
    close(pfd[1]);
    ASSERT_TRUE(read(pfd[0], &port, sizeof(port)) == sizeof(port));
    close(pfd[0]);

    ferry_store_t *a = connect_port(port, 30000000000ull);
    ferry_store_t *b = connect_port(port, 30000000000ull);
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "k", "v", 1));
    waiter_arg_t w = {.s = b};
    pthread_t th;
    pthread_create(&th, NULL, waiter_main, &w);
    usleep(200000);

    uint64_t t0 = ferry__now_ns();
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    pthread_join(th, NULL);
    EXPECT_ST(FERRY_ERR_PEER_LOST, w.st);
    EXPECT_TRUE(w.done_ns - t0 < 2000000000ull);

    /* A blocking get on the other client fails at once too. */
    void *v = NULL;
    size_t vl = 0;
    t0 = ferry__now_ns();
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_get(a, "k", &v, &vl));
    EXPECT_TRUE(ferry__now_ns() - t0 < 2000000000ull);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_ping(a));
    ferry_store_close(a);
    ferry_store_close(b);
}

/* ------------------------------------------------------------------------ */

/* Starts ferry-store on a free loopback port, with FERRY_JOB_SECRET set to
 * secret (NULL: unset). Returns the port it prints, or 0 (a failed check,
 * the process killed); its pid to *pid_p, its stdout to *out_p. */
static unsigned spawn_store(const char *tool, const char *secret, pid_t *pid_p, int *out_p)
{
    int out[2];
    posix_spawn_file_actions_t fa;
    char *argv[] = {(char *)tool, "--bind", "127.0.0.1", "--port", "0", NULL};
    char line[256] = {0}, secret_env[256];
    size_t n = 0, ne = 0;
    char **envp;

    while (environ[ne])
        ne++;
    envp = calloc(ne + 2, sizeof(*envp));
    ASSERT_TRUE(envp != NULL);
    ne = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "FERRY_JOB_SECRET=", 17) != 0)
            envp[ne++] = *e;
    if (secret != NULL) {
        snprintf(secret_env, sizeof(secret_env), "FERRY_JOB_SECRET=%s", secret);
        envp[ne++] = secret_env;
    }
    ASSERT_TRUE(pipe(out) == 0);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    int rc = posix_spawn(pid_p, tool, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    close(out[1]);
    *out_p = out[0];
    if (rc != 0) {
        TEST_FAIL_AT_("cannot start %s: %s", tool, strerror(rc));
        close(out[0]);
        *out_p = -1;
        return 0;
    }
    /* "ferry-store listening on 127.0.0.1 port N" */
    while (n < sizeof(line) - 1) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0 || read(out[0], line + n, 1) != 1)
            break;
        if (line[n++] == '\n')
            break;
    }
    const char *pp = strstr(line, " port ");
    unsigned port = pp ? (unsigned)atoi(pp + 6) : 0;
    EXPECT_TRUE(port > 0 && port < 65536);
    if (port == 0) {
        kill(*pid_p, SIGKILL);
        waitpid(*pid_p, NULL, 0);
    }
    return port;
}

/* A store client with the given secret ("" for none), or NULL with the
 * status in *st_p. */
static ferry_store_t *connect_secret(unsigned port, const char *secret, uint64_t timeout_ns,
                                     ferry_status_t *st_p)
{
    char url[64];
    ferry_store_params_t p = {.field_mask = FERRY_STORE_PARAM_TIMEOUT | FERRY_STORE_PARAM_SECRET,
                              .timeout_ns = timeout_ns, .secret = secret};
    ferry_store_t *s = NULL;

    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", port);
    *st_p = ferry_store_connect(url, &p, &s);
    return s;
}

static void case_auth(const char *tool)
{
    static const char s1[] = "store-secret-0123456789abcdef0123";
    static const char s2[] = "other-secret-0123456789abcdef0123";
    ferry_status_t st;
    pid_t pid, open_pid;
    int out, open_out;
    unsigned port = spawn_store(tool, s1, &pid, &out);
    void *got = NULL;
    size_t gl = 0;
    uint8_t m[1 + 4 + 32], rep[65], b;

    if (port == 0)
        return;
    ferry_store_t *a = connect_secret(port, s1, 5000000000ull, &st);
    EXPECT_ST(FERRY_OK, st);
    ASSERT_TRUE(a != NULL);
    EXPECT_ST(FERRY_OK, ferry_store_set(a, "auth/key", "member", 6));

    /* Another job's secret: the server's proof does not verify. */
    EXPECT_TRUE(connect_secret(port, s2, 2000000000ull, &st) == NULL);
    EXPECT_ST(FERRY_ERR_PROTOCOL, st);
    EXPECT_ERR_HAS("another job secret");
    /* No secret: torch's handshake, which this server closes on. */
    EXPECT_TRUE(connect_secret(port, "", 300000000ull, &st) == NULL);
    EXPECT_TRUE(st == FERRY_ERR_TIMEOUT || st == FERRY_ERR_PEER_LOST);
    EXPECT_ERR_HAS("handshake");
    /* A raw torch-style client: VALIDATE, then a GET; no reply, closed. */
    int fd = raw_connect((uint16_t)port);
    uint8_t get[32];
    size_t gn = 0;
    raw_validate(fd);
    get[gn++] = FERRY__Q_GET;
    gn += put_str(get + gn, "auth/key");
    raw_send(fd, get, gn);
    EXPECT_EQ(0, raw_recv(fd, rep, 1, 5000));
    close(fd);
    /* A challenge answered with a wrong proof: closed. */
    fd = raw_connect((uint16_t)port);
    m[0] = FERRY__Q_VALIDATE;
    ferry__store_le32(m + 1, FERRY__STORE_AUTH_MAGIC);
    memset(m + 5, 7, 32);
    raw_send(fd, m, sizeof(m));
    EXPECT_EQ(1, raw_recv(fd, rep, 65, 5000));
    EXPECT_EQ(1, rep[0]);
    memset(rep, 0, 33);
    rep[0] = FERRY__Q_AUTH;
    raw_send(fd, rep, 33);
    EXPECT_EQ(0, raw_recv(fd, &b, 1, 5000));
    close(fd);
    /* AUTH without a challenge: closed. */
    fd = raw_connect((uint16_t)port);
    raw_send(fd, rep, 33);
    EXPECT_EQ(0, raw_recv(fd, &b, 1, 5000));
    close(fd);

    /* The member was never disturbed, and a second one joins. */
    ferry_store_t *c = connect_secret(port, s1, 5000000000ull, &st);
    EXPECT_ST(FERRY_OK, st);
    EXPECT_ST(FERRY_OK, ferry_store_ping(a));
    if (c != NULL) {
        EXPECT_ST(FERRY_OK, ferry_store_get(c, "auth/key", &got, &gl));
        EXPECT_TRUE(gl == 6 && memcmp(got, "member", 6) == 0);
        ferry_store_free(got);
        ferry_store_close(c);
    }
    ferry_store_close(a);

    /* A store without a secret: a client with one refuses it. */
    unsigned open_port = spawn_store(tool, NULL, &open_pid, &open_out);
    if (open_port != 0) {
        EXPECT_TRUE(connect_secret(open_port, s1, 2000000000ull, &st) == NULL);
        EXPECT_ST(FERRY_ERR_PROTOCOL, st);
        EXPECT_ERR_HAS("has no job secret");
        ferry_store_t *o = connect_secret(open_port, "", 2000000000ull, &st);
        EXPECT_ST(FERRY_OK, st);
        ferry_store_close(o);
        kill(open_pid, SIGTERM);
        EXPECT_TRUE(xu_reap(open_pid, 10000) != -1);
        close(open_out);
    }
    kill(pid, SIGTERM);
    int status = xu_reap(pid, 10000);
    EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(out);
}

static void case_tool(const char *tool)
{
    pid_t pid;
    int out;
    unsigned port = spawn_store(tool, NULL, &pid, &out);

    if (port > 0) {
        ferry_store_t *a = connect_port((uint16_t)port, 5000000000ull);
        ferry_store_t *b = connect_port((uint16_t)port, 5000000000ull);
        int64_t v = 0;
        void *got = NULL;
        size_t gl = 0;

        EXPECT_ST(FERRY_OK, ferry_store_set(a, "tool/key", "tool-value", 10));
        EXPECT_ST(FERRY_OK, ferry_store_get(b, "tool/key", &got, &gl));
        EXPECT_TRUE(gl == 10 && memcmp(got, "tool-value", 10) == 0);
        ferry_store_free(got);
        EXPECT_ST(FERRY_OK, ferry_store_add(b, "tool/n", 3, &v));
        EXPECT_EQ(3, v);
        ferry_store_close(a);

        /* SIGTERM stops it cleanly, and its clients see PEER_LOST. */
        kill(pid, SIGTERM);
        /* If it ignored SIGTERM, xu_reap kills it: fail, leaving nothing. */
        int status = xu_reap(pid, 10000);

        EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_store_ping(b));
        ferry_store_close(b);
    }
    if (out >= 0)
        close(out);
}

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "ops";

    alarm(50); /* a hang is a failure, never a stuck test run */
    unsetenv("FERRY_JOB_SECRET"); /* each case says which secret it uses */
    if (strcmp(which, "ops") == 0)
        case_ops();
    else if (strcmp(which, "wait") == 0)
        case_wait();
    else if (strcmp(which, "many") == 0)
        case_many();
    else if (strcmp(which, "malformed") == 0)
        case_malformed();
    else if (strcmp(which, "kill") == 0)
        case_kill();
    else if (strcmp(which, "tool") == 0)
        case_tool(argc > 2 ? argv[2] : FERRY_STORE_TOOL);
    else if (strcmp(which, "auth") == 0)
        case_auth(argc > 2 ? argv[2] : FERRY_STORE_TOOL);
    else {
        fprintf(stderr, "unknown case '%s'\n", which);
        return 2;
    }
    return test_finish(which);
}
