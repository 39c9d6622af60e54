/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A second process and its control socket: fork + exec with a socketpair,
 * fixed-size messages and blobs sent and received with deadlines, and
 * stopping, resuming and reaping the child, so that a hung or dead peer
 * fails a test instead of hanging it (see xfer_util.h).
 */
#include "xfer_util.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>

extern char **environ;

/* The environment of a spawned target, built before fork (the child may not
 * allocate): this one, with FERRY_TEST_DEVICE set to FERRY_TEST_TARGET_DEVICE
 * (mem_util.h) and FERRY_HOST_ID to FERRY_TEST_TARGET_HOST_ID (the target
 * another host to the test) when those are set; NULL, to inherit it
 * unchanged, when neither is. */
static char **xu_target_env(void)
{
    const char *t = getenv("FERRY_TEST_TARGET_DEVICE");
    const char *h = getenv("FERRY_TEST_TARGET_HOST_ID");
    size_t n = 0, k = 0;
    char **e;

    if (t == NULL && h == NULL)
        return NULL;
    while (environ[n] != NULL)
        n++;
    e = calloc(n + 3, sizeof(*e));
    if (e == NULL)
        return NULL;
    if (t != NULL && asprintf(&e[k++], "FERRY_TEST_DEVICE=%s", t) < 0) {
        free(e);
        return NULL;
    }
    if (h != NULL && asprintf(&e[k++], "FERRY_HOST_ID=%s", h) < 0) {
        if (t != NULL)
            free(e[0]);
        free(e);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "FERRY_TEST_DEVICE=", 18) != 0 &&
            strncmp(environ[i], "FERRY_HOST_ID=", 14) != 0)
            e[k++] = environ[i];
    e[k] = NULL;
    return e;
}

static void xu_env_free(char **env)
{
    if (env != NULL) {
        /* The strings of ours lead, before the first inherited one. */
        for (size_t i = 0; env[i] != NULL && (strncmp(env[i], "FERRY_TEST_DEVICE=", 18) == 0 ||
                                             strncmp(env[i], "FERRY_HOST_ID=", 14) == 0);
             i++)
            free(env[i]);
        free(env);
    }
}

int xu_spawn_argv(const char *path, const char *argv0, const char *role,
                  char *const *args, pid_t *pid_p)
{
    int sv[2];
    pid_t parent = getpid(), pid;
    char **env = xu_target_env(), **argv;
    char fdstr[16];
    size_t n = 0;

    while (args != NULL && args[n] != NULL)
        n++;
    argv = xu_xcalloc(n + 4, sizeof(*argv));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        perror("socketpair");
        xu_env_free(env);
        free(argv);
        return -1;
    }
    snprintf(fdstr, sizeof(fdstr), "%d", sv[1]);
    argv[0] = (char *)argv0;
    argv[1] = (char *)role;
    argv[2] = fdstr;
    for (size_t i = 0; i < n; i++)
        argv[3 + i] = args[i];
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        xu_env_free(env);
        free(argv);
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1); /* the parent died before the line above */
        close(sv[0]);
        /* The child keeps its end across exec; every other ferry fd has
         * CLOEXEC or does not exist yet. */
        fcntl(sv[1], F_SETFD, 0);
        execve(path, argv, env ? env : environ);
        perror("execve");
        _exit(127);
    }
    xu_env_free(env);
    free(argv);
    close(sv[1]);
    *pid_p = pid;
    return sv[0];
}

int xu_spawn(const char *argv0, const char *role, const char *extra1,
             const char *extra2, pid_t *pid_p)
{
    char *args[] = {(char *)extra1, extra1 ? (char *)extra2 : NULL, NULL};

    return xu_spawn_argv("/proc/self/exe", argv0, role, args, pid_p);
}

int xu_send(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;

    while (len) {
        ssize_t k = send(fd, b, len, MSG_NOSIGNAL);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            fprintf(stderr, "[%d] control socket send: %s\n", (int)getpid(),
                    strerror(errno));
            return -1;
        }
        b += k;
        len -= (size_t)k;
    }
    return 0;
}

int xu_send_msg(int fd, uint32_t type, uint32_t arg,
                uint64_t iter, uint64_t a, uint64_t b)
{
    xu_msg_t m = {type, arg, iter, a, b};

    return xu_send(fd, &m, sizeof(m));
}

int xu_recv(int fd, void *p, size_t len, int timeout_ms,
            ferry_agent_t *agent)
{
    uint8_t *b = p;
    uint64_t deadline = xu_now_ns() + (uint64_t)timeout_ms * 1000000ull;

    while (len) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int r;
        ssize_t k;

        if (agent)
            ferry_agent_progress(agent);
        if (xu_now_ns() > deadline) {
            fprintf(stderr, "[%d] control socket: no message within %d ms\n",
                    (int)getpid(), timeout_ms);
            return -1;
        }
        /* A target that drives its agent polls without sleeping (its
         * transport may need it for every operation of the peer's) but
         * yields, so that on a small machine the initiator still runs. */
        r = poll(&pfd, 1, agent ? 0 : 100);
        if (agent && r == 0)
            sched_yield();
        if (r < 0 && errno != EINTR) {
            perror("poll");
            return -1;
        }
        if (r <= 0)
            continue;
        k = recv(fd, b, len, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0) {
            fprintf(stderr, "[%d] control socket: %s\n", (int)getpid(),
                    k == 0 ? "peer closed it" : strerror(errno));
            return -1;
        }
        b += k;
        len -= (size_t)k;
    }
    return 0;
}

void xu_io(int fd, void *p, size_t n, int out, int timeout_ms)
{
    if ((out ? xu_send(fd, p, n) : xu_recv(fd, p, n, timeout_ms, NULL)) != 0)
        exit(2);
}

int xu_recv_msg(int fd, xu_msg_t *m, uint32_t want_type,
                int timeout_ms, ferry_agent_t *agent)
{
    if (xu_recv(fd, m, sizeof(*m), timeout_ms, agent) != 0)
        return -1;
    if (want_type != 0 && m->type != want_type) {
        fprintf(stderr, "[%d] control socket: message type %u, wanted %u\n",
                (int)getpid(), m->type, want_type);
        return -1;
    }
    return 0;
}

int xu_send_blob(int fd, ferry_agent_t *agent, uint32_t type,
                 uint32_t arg, uint64_t a, uint64_t b)
{
    void *blob;
    size_t len;
    int rc;

    ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &len));
    rc = xu_send_msg(fd, type, arg, len, a, b) != 0 || xu_send(fd, blob, len) != 0 ? -1 : 0;
    ferry_md_free(blob);
    return rc;
}

void *xu_recv_blob(int fd, xu_msg_t *m, uint32_t type, int timeout_ms)
{
    void *blob;

    if (xu_recv_msg(fd, m, type, timeout_ms, NULL) != 0)
        return NULL;
    if (m->iter == 0 || m->iter > XU_MAX_BLOB) {
        fprintf(stderr, "[%d] control socket: blob length %" PRIu64 "\n", (int)getpid(),
                m->iter);
        return NULL;
    }
    blob = xu_xcalloc(1, (size_t)m->iter);
    if (xu_recv(fd, blob, (size_t)m->iter, timeout_ms, NULL) != 0) {
        free(blob);
        return NULL;
    }
    return blob;
}

void xu_stop_child(pid_t pid)
{
    int ws;

    kill(pid, SIGSTOP);
    ASSERT_TRUE(waitpid(pid, &ws, WUNTRACED) == pid && WIFSTOPPED(ws));
}

void xu_cont_child(pid_t pid)
{
    int ws;

    kill(pid, SIGCONT);
    ASSERT_TRUE(waitpid(pid, &ws, WCONTINUED) == pid && WIFCONTINUED(ws));
}

int xu_reap(pid_t pid, int timeout_ms)
{
    uint64_t deadline = xu_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int status = 0;

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if (xu_now_ns() > deadline) {
            fprintf(stderr, "child %d did not exit within %d ms; killing it\n",
                    (int)pid, timeout_ms);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(1000);
    }
}
