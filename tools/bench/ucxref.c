/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ucx_perftest as a reference (ucxref.h). The server listens on a port
 * that was free a moment before (a port taken meanwhile makes it exit, and
 * another is tried) and is known to be up once /proc/net/tcp shows it
 * listening; the client's output comes back through a pipe. Both children
 * get SIGKILL if this process dies first (PR_SET_PDEATHSIG), and are
 * stopped by their pid if they outstay their time.
 */
#include "ucxref.h"

#include "clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SERVER_START_S 5
#define SERVER_END_S 10
#define PORT_TRIES 5

/* A port that the kernel just gave out as free, or 0. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;

    if (fd < 0)
        return 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Whether a local TCP socket listens on port (state 0A in /proc/net/tcp*). */
static bool listening(int port)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    char line[512];
    bool found = false;

    for (int i = 0; i < 2 && !found; i++) {
        FILE *f = fopen(files[i], "r");

        if (f == NULL)
            continue;
        while (!found && fgets(line, sizeof(line), f) != NULL) {
            char local[128];
            unsigned st;
            const char *colon;

            if (sscanf(line, " %*s %127s %*s %x", local, &st) != 2)
                continue;
            colon = strrchr(local, ':');
            found = st == 0x0a && colon != NULL && strtol(colon + 1, NULL, 16) == port;
        }
        fclose(f);
    }
    return found;
}

/* Starts ucx_perftest with args; its stdout and stderr go to out_fd (or
 * /dev/null when -1). Returns the pid, or -1 with errno. */
static pid_t spawn(char *const args[], int out_fd)
{
    pid_t parent = getpid(), pid = fork();

    if (pid != 0)
        return pid;
    /* The child: only calls that are safe after fork() in a threaded
     * process, then the program. */
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (out_fd < 0)
        out_fd = open("/dev/null", O_WRONLY);
    if (out_fd >= 0) {
        (void)dup2(out_fd, STDOUT_FILENO);
        (void)dup2(out_fd, STDERR_FILENO);
    }
    execvp(args[0], args);
    _exit(127);
}

/* Reaps pid within timeout_s, else kills it (SIGKILL) and reaps it;
 * returns its wait status, or -1 if it had to be killed. */
static int reap(pid_t pid, unsigned timeout_s)
{
    uint64_t end = now_ns() + (uint64_t)timeout_s * 1000000000ull;
    int status;

    while (now_ns() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid || (r < 0 && errno != EINTR))
            return r == pid ? status : -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return -1;
}

/* Starts the server on a free port; returns its pid, with the port in
 * port_s, or -1. */
static pid_t server_start(char port_s[16])
{
    char *args[] = {"ucx_perftest", "-p", port_s, NULL};

    for (int t = 0; t < PORT_TRIES; t++) {
        int port = free_port();
        pid_t pid;

        if (port == 0)
            continue;
        snprintf(port_s, 16, "%d", port);
        pid = spawn(args, -1);
        if (pid < 0)
            return -1;
        for (int i = 0; i < SERVER_START_S * 100; i++) {
            if (listening(port))
                return pid;
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                pid = -1; /* the port was taken meanwhile: another */
                break;
            }
            usleep(10000);
        }
        if (pid > 0)
            (void)reap(pid, 0);
    }
    return -1;
}

/* Reads fd to its end or the deadline into buf (NUL-terminated, the last
 * len - 1 bytes kept if more came). */
static void read_all(int fd, char *buf, size_t len, uint64_t deadline)
{
    size_t n = 0;

    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        uint64_t now = now_ns();
        ssize_t r;

        if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000000 + 1)) == 0)
            break;
        if (n == len - 1) { /* keep the tail, where "Final:" is */
            memmove(buf, buf + len / 2, n - len / 2);
            n -= len / 2;
        }
        r = read(fd, buf + n, len - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
}

ucxref_t ucxref_run(const char *test, size_t size, size_t iters, size_t warmup,
                    unsigned timeout_s)
{
    char size_s[24], iters_s[24], warmup_s[24], port_s[16], out[8192];
    char *client[] = {"ucx_perftest", "127.0.0.1", "-p", port_s, "-t", (char *)test,
                      "-s", size_s, "-n", iters_s, "-w", warmup_s, NULL};
    ucxref_t r = {0};
    const char *final;
    int fds[2], status;
    pid_t spid, cpid;

    snprintf(size_s, sizeof(size_s), "%zu", size);
    snprintf(iters_s, sizeof(iters_s), "%zu", iters);
    snprintf(warmup_s, sizeof(warmup_s), "%zu", warmup);
    spid = server_start(port_s);
    if (spid < 0) {
        snprintf(r.why, sizeof(r.why), "ucx_perftest's server did not start (is "
                 "ucx_perftest installed?)");
        return r;
    }
    if (pipe(fds) != 0) {
        snprintf(r.why, sizeof(r.why), "pipe: %s", strerror(errno));
        (void)reap(spid, 0);
        return r;
    }
    cpid = spawn(client, fds[1]);
    close(fds[1]);
    if (cpid < 0) {
        snprintf(r.why, sizeof(r.why), "cannot start ucx_perftest: %s", strerror(errno));
        close(fds[0]);
        (void)reap(spid, 0);
        return r;
    }
    read_all(fds[0], out, sizeof(out), now_ns() + (uint64_t)timeout_s * 1000000000ull);
    close(fds[0]);
    status = reap(cpid, 1);
    /* The server ends on its own once the client is done. */
    (void)reap(spid, SERVER_END_S);
    final = strstr(out, "Final:");
    /* Final: iterations typical average overall (us) bandwidth... */
    if (status != 0 || final == NULL ||
        sscanf(final, "Final: %*s %lf %lf", &r.typical_us, &r.avg_us) != 2) {
        const char *last = out + strlen(out);

        while (last > out && (last[-1] == '\n' || last[-1] == ' '))
            last--;
        while (last > out && last[-1] != '\n')
            last--;
        snprintf(r.why, sizeof(r.why), "ucx_perftest -t %s: %s: %.100s", test,
                 status < 0    ? "killed after its time"
                 : status != 0 ? "failed"
                               : "no Final: line",
                 last);
        return r;
    }
    r.ok = true;
    return r;
}
