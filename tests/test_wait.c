/*
 * Waiting without spinning, with a passive target. The target process
 * creates its agent with a progress thread and then only sleeps in read():
 * every transfer into its memory is served by that thread. The initiator
 * stops the target (SIGSTOP) so that a WRITE cannot finish, and checks:
 *  - a short wait returns TIMEOUT and leaves the request valid;
 *  - a wait that lasts about a second costs the waiting thread under 5% of
 *    a core (getrusage per thread), while a loop of ferry_xfer_test over the
 *    same stall costs most of a core, which shows the measure can fail;
 *  - after SIGCONT the same request completes and the target holds every
 *    byte, at the random offset the request names, and nothing outside it
 *    changed.
 * Two processes are forked before either touches UCX.
 */
#include "xfer_util.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LEN (8u << 20)
/* The bound is 5% of a core; a sanitizer's instrumentation makes
 * every wake-up several times dearer, so sanitized builds get a looser one
 * that is still far from a spinning wait's ~100%. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MAX_WAIT_CPU 0.25
#else
#define MAX_WAIT_CPU 0.05
#endif
#define SEC 1000000000ll
#define IO_TIMEOUT_MS 60000 /* control messages */

enum { M_HELLO = 1 };

/* The target: a progress thread does all the work; main only sleeps. */
static int target(int fd)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "wait-target", .progress_thread = 1};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    uint8_t *buf = calloc(1, LEN);
    ferry_desc_t d = {(uintptr_t)buf, LEN, FERRY_MEM_HOST, 0};
    uint64_t req[3], bad; /* iteration, offset, length */

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &mem));
    if (xu_send_blob(fd, agent, M_HELLO, 0, d.addr, LEN) != 0)
        return 2;
    /* Each request from the initiator: verify what it wrote. */
    for (;;) {
        xu_io(fd, req, sizeof(req), 0, IO_TIMEOUT_MS);
        if (req[0] == UINT64_MAX)
            break;
        /* The progress thread wrote the bytes; a call on the agent orders
         * this thread after it, as ferry.h asks (and ThreadSanitizer sees). */
        ferry_agent_progress(agent);
        bad = test_verify(buf + req[1], req[2], 31, req[0], 0);
        for (uint64_t i = 0; i < LEN && bad == UINT64_MAX; i++)
            if ((i < req[1] || i >= req[1] + req[2]) && buf[i] != 0)
                bad = i; /* outside the range: still zero */
        ferry_agent_progress(agent); /* and the next writes after this read */
        xu_io(fd, &bad, sizeof(bad), 1, IO_TIMEOUT_MS);
    }
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(buf);
    return 0;
}

struct resume {
    pid_t pid;
    double after_s;
};

static void *resume_later(void *arg)
{
    struct resume *r = arg;
    struct timespec ts = {(time_t)r->after_s,
                          (long)((r->after_s - (double)(time_t)r->after_s) * 1e9)};

    nanosleep(&ts, NULL);
    kill(r->pid, SIGCONT);
    return NULL;
}

/* Stops the target, posts, and measures a wait (or a test loop) that lasts
 * until the target is resumed about a second later. Returns CPU/wall. */
static double stalled_wait(ferry_xfer_t *x, uint8_t *src, const uint64_t *req,
                           pid_t pid, int fd, uint64_t iter, int spin)
{
    struct resume r = {pid, 1.0};
    pthread_t th;
    double t0, c0, wall, cpu;
    ferry_status_t st;
    uint64_t bad = 0, msg[3] = {iter, req[1], req[2]};

    test_fill(src, req[2], 31, iter, 0);
    xu_stop_child(pid);
    st = ferry_xfer_post(x);
    ASSERT_TRUE(st == FERRY_IN_PROGRESS);
    if (!spin) {
        /* A stopped peer: a short wait times out, the request stays valid. */
        EXPECT_ST(FERRY_ERR_TIMEOUT, ferry_xfer_wait(x, SEC / 5));
        EXPECT_ST(FERRY_ERR_BUSY, ferry_xfer_post(x));
    }
    ASSERT_TRUE(pthread_create(&th, NULL, resume_later, &r) == 0);
    t0 = xu_now_s();
    c0 = xu_thread_cpu_s();
    if (spin) {
        while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS)
            ;
    } else {
        st = ferry_xfer_wait(x, 30 * SEC);
    }
    cpu = xu_thread_cpu_s() - c0;
    wall = xu_now_s() - t0;
    pthread_join(th, NULL);
    EXPECT_ST(FERRY_OK, st);
    xu_io(fd, msg, sizeof(msg), 1, IO_TIMEOUT_MS);
    xu_io(fd, &bad, sizeof(bad), 0, IO_TIMEOUT_MS);
    EXPECT_EQ(UINT64_MAX, bad);
    printf("%s: %.3f s of wall time, %.3f s of the waiting thread's CPU (%.1f%%)\n",
           spin ? "test loop" : "ferry_xfer_wait", wall, cpu, 100.0 * cpu / wall);
    EXPECT_TRUE(wall > 0.5);
    return cpu / wall;
}

int main(void)
{
    int sv[2];
    pid_t pid;
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    ferry_xfer_t *x;
    uint8_t *src, *from;
    void *blob;
    xu_msg_t m;
    uint64_t req[3], done[3] = {UINT64_MAX, 0, 0};
    test_rng_t rng = {xu_seed(0x5a17)};
    ferry_desc_t l, r;
    double sleeping, spinning;
    int status;

    ASSERT_TRUE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        return target(sv[1]);
    }
    close(sv[1]);
    alarm(120); /* a hang fails the test instead of stalling the suite */

    src = malloc(LEN);
    ASSERT_TRUE(src != NULL);
    l = (ferry_desc_t){(uintptr_t)src, LEN, FERRY_MEM_HOST, 0};
    /* One request, between random unaligned places of the two buffers. */
    req[2] = test_rand_range(&rng, LEN / 2, LEN - 4096);
    req[1] = test_rand_range(&rng, 0, LEN - req[2]);
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &l, 1, &mem));
    l.addr += test_rand_range(&rng, 0, LEN - req[2]);
    l.len = req[2];
    from = (uint8_t *)(uintptr_t)l.addr;
    blob = xu_recv_blob(sv[0], &m, M_HELLO, IO_TIMEOUT_MS);
    ASSERT_TRUE(blob != NULL && m.b == LEN);
    ASSERT_ST(FERRY_OK, ferry_peer_load(agent, blob, (size_t)m.iter, &peer));
    free(blob);
    r = (ferry_desc_t){m.a + req[1], req[2], FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));

    /* A warm-up transfer connects and checks the passive target serves it. */
    test_fill(from, req[2], 31, 0, 0);
    EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
    {
        uint64_t bad = 0;

        req[0] = 0;
        xu_io(sv[0], req, sizeof(req), 1, IO_TIMEOUT_MS);
        xu_io(sv[0], &bad, sizeof(bad), 0, IO_TIMEOUT_MS);
        EXPECT_EQ(UINT64_MAX, bad);
    }

    sleeping = stalled_wait(x, from, req, pid, sv[0], 1, 0);
    spinning = stalled_wait(x, from, req, pid, sv[0], 2, 1);
    EXPECT_TRUE(sleeping < MAX_WAIT_CPU);
    EXPECT_TRUE(spinning > 0.3);

    xu_io(sv[0], done, sizeof(done), 1, IO_TIMEOUT_MS);
    ferry_xfer_release(x);
    ferry_peer_forget(peer);
    ferry_mem_deregister(mem);
    ferry_agent_destroy(agent);
    free(src);
    EXPECT_EQ(pid, waitpid(pid, &status, 0));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return test_finish("test_wait");
}
