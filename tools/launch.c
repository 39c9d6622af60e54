/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The local launcher (launch.h). Each rank gets FERRY_RANK,
 * FERRY_WORLD_SIZE, FERRY_STORE, LOCAL_RANK and LOCAL_WORLD_SIZE, and
 * FERRY_COMM_PREFIX when the store is not the launcher's own (a store that
 * outlives the job may hold an earlier one's keys) and none is set. Unless
 * given a store, the launcher hosts one in-process, on loopback, so the
 * store outlives every rank, and gives the job a secret of its own
 * (FERRY_JOB_SECRET: 32 random bytes in hex) unless one is set: the ranks
 * seal their blobs with it and prove it to the store, which serves no one
 * else. With a store given, the ranks inherit whatever FERRY_JOB_SECRET
 * is set (none: an unauthenticated job, as the store's own clients are).
 *
 * With prefix_lines, each rank's stdout and stderr come back through pipes
 * and are copied, a whole line at a time, to the launcher's own, each line
 * prefixed "[rank] ". Each rank runs in a process group of its own, so that
 * stopping a rank stops whatever it started, and a terminal's Ctrl-C
 * reaches the launcher only: SIGINT and SIGTERM are forwarded to every
 * rank (a second one kills them). When a rank exits non-zero or dies by a
 * signal, the others get SIGTERM, and SIGKILL after the grace period. Ranks
 * die with the launcher (PR_SET_PDEATHSIG) if it is killed, and read their
 * stdin from /dev/null.
 */
#include "launch.h"

#include "ferry.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536

extern char **environ;

typedef struct stream {
    int fd;  /* read end of the rank's pipe, -1 at EOF */
    int out; /* 1 or 2 */
    char buf[LINE_MAX_BYTES];
    size_t len;
} stream_t;

typedef struct rank {
    pid_t pid; /* 0 once reaped */
    stream_t io[2];
} rank_t;

typedef struct job {
    const launch_params_t *p;
    rank_t *ranks;
} job_t;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool launch_in_job(void)
{
    return getenv("FERRY_RANK") != NULL || getenv("FERRY_WORLD_SIZE") != NULL ||
           (getenv("RANK") != NULL && getenv("WORLD_SIZE") != NULL);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return; /* nowhere to report it */
        p += k;
        n -= (size_t)k;
    }
}

/* Writes the first n bytes of s's buffer as one prefixed line (adding a
 * newline if they lack one) and keeps the rest. */
static void emit(int r, stream_t *s, size_t n)
{
    char prefix[24];
    int plen = snprintf(prefix, sizeof(prefix), "[%d] ", r);
    bool nl = n > 0 && s->buf[n - 1] == '\n';
    char *line = malloc((size_t)plen + n + 1);

    if (line != NULL) {
        memcpy(line, prefix, (size_t)plen);
        memcpy(line + plen, s->buf, n);
        line[(size_t)plen + n] = '\n';
        write_all(s->out, line, (size_t)plen + n + !nl);
        free(line);
    }
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}

/* Writes what is left of a stream and closes it. */
static void finish(int r, stream_t *s)
{
    if (s->len > 0)
        emit(r, s, s->len);
    close(s->fd);
    s->fd = -1;
}

/* Reads what the pipe has; writes every complete line (and a full buffer
 * as one line). At EOF the last partial line goes too. */
static void pump(int r, stream_t *s)
{
    ssize_t k = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len);

    if (k < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (k <= 0) {
        finish(r, s);
        return;
    }
    s->len += (size_t)k;
    for (;;) {
        char *nl = memchr(s->buf, '\n', s->len);

        if (nl != NULL)
            emit(r, s, (size_t)(nl - s->buf) + 1);
        else if (s->len == sizeof(s->buf))
            emit(r, s, s->len);
        else
            break;
    }
}

static void signal_ranks(const job_t *j, int sig)
{
    for (int r = 0; r < j->p->nranks; r++)
        if (j->ranks[r].pid > 0)
            kill(-j->ranks[r].pid, sig);
}

/* Starts rank r: its own process group, stdin from /dev/null, stdout and
 * stderr into pipes (prefix_lines) or ours, default signal handling. */
static int spawn(job_t *j, int r, char **envp)
{
    const launch_params_t *p = j->p;
    int pp[2][2] = {{-1, -1}, {-1, -1}};
    pid_t parent = getpid(), pid;

    for (int i = 0; i < 2 && p->prefix_lines; i++)
        if (pipe2(pp[i], O_CLOEXEC) != 0) {
            fprintf(stderr, "%s: pipe: %s\n", p->name, strerror(errno));
            return -1;
        }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", p->name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        int devnull = open("/dev/null", O_RDONLY);

        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (devnull >= 0)
            dup2(devnull, 0);
        if (p->prefix_lines) {
            dup2(pp[0][1], 1);
            dup2(pp[1][1], 2);
        }
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (p->path != NULL)
            execve(p->path, p->argv, envp);
        else
            execvpe(p->argv[0], p->argv, envp);
        fprintf(stderr, "%s: cannot run '%s': %s\n", p->name,
                p->path != NULL ? p->path : p->argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so no signal can miss the group */
    j->ranks[r].pid = pid;
    for (int i = 0; i < 2 && p->prefix_lines; i++) {
        close(pp[i][1]);
        j->ranks[r].io[i].fd = pp[i][0];
        j->ranks[r].io[i].out = i + 1;
        fcntl(pp[i][0], F_SETFL, O_NONBLOCK);
    }
    return 0;
}

/* The environment of rank r: ours, without the variables we set, plus
 * them, which start at *own_p (free them and the array with env_free). */
static char **rank_env(int r, int nranks, const char *url, const char *prefix,
                       const char *secret, size_t *own_p)
{
    static const char *const ours[] = {"FERRY_RANK=", "FERRY_WORLD_SIZE=",
                                       "FERRY_STORE=", "LOCAL_RANK=",
                                       "LOCAL_WORLD_SIZE=", "FERRY_COMM_PREFIX=",
                                       "FERRY_JOB_SECRET="};
    size_t n = 0, k = 0;
    char **e;

    while (environ[n])
        n++;
    e = calloc(n + 8, sizeof(*e));
    if (e == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;

        for (size_t m = 0; m < sizeof(ours) / sizeof(ours[0]); m++)
            skip |= strncmp(environ[i], ours[m], strlen(ours[m])) == 0 &&
                    (m < 5 || (m == 5 && prefix != NULL) || (m == 6 && secret != NULL));
        if (!skip)
            e[k++] = environ[i];
    }
    *own_p = k;
    if (asprintf(&e[k++], "FERRY_RANK=%d", r) < 0 ||
        asprintf(&e[k++], "FERRY_WORLD_SIZE=%d", nranks) < 0 ||
        asprintf(&e[k++], "FERRY_STORE=%s", url) < 0 ||
        asprintf(&e[k++], "LOCAL_RANK=%d", r) < 0 ||
        asprintf(&e[k++], "LOCAL_WORLD_SIZE=%d", nranks) < 0 ||
        (prefix && asprintf(&e[k++], "FERRY_COMM_PREFIX=%s", prefix) < 0) ||
        (secret && asprintf(&e[k++], "FERRY_JOB_SECRET=%s", secret) < 0))
        return NULL;
    return e;
}

/* A job secret: 32 random bytes as 64 hex digits. 0, or -1 (errno). */
static int make_secret(char out[2 * 32 + 1])
{
    uint8_t b[32];
    size_t got = 0;

    while (got < sizeof(b)) {
        ssize_t k = getrandom(b + got, sizeof(b) - got, 0);

        if (k < 0 && errno != EINTR)
            return -1;
        got += k > 0 ? (size_t)k : 0;
    }
    for (size_t i = 0; i < sizeof(b); i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

static void env_free(char **e, size_t own)
{
    for (size_t i = own; e != NULL && e[i] != NULL; i++)
        free(e[i]);
    free(e);
}

static int exit_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

/* Until every rank has exited and every pipe is drained: copies output,
 * forwards signals, reaps ranks and stops the others after a failure.
 * Returns the job's exit code. */
static int supervise(job_t *j, int sfd, int result, bool failed)
{
    const launch_params_t *p = j->p;
    int n_ranks = p->nranks, live = 0;
    uint64_t kill_at = 0;
    rank_t *ranks = j->ranks;

    for (int r = 0; r < n_ranks; r++)
        live += ranks[r].pid > 0;
    /* The poll set and, for each entry after the signal fd, its rank and
     * stream: built afresh each round, allocated once. */
    struct pollfd *pfd = calloc((size_t)n_ranks * 2 + 1, sizeof(*pfd));
    int *owner = calloc((size_t)n_ranks * 2 + 1, sizeof(*owner));

    for (; pfd != NULL && owner != NULL;) {
        int np = 0, timeout = -1, open_streams = 0;

        pfd[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int r = 0; r < n_ranks; r++)
            for (int i = 0; i < 2; i++)
                if (ranks[r].io[i].fd >= 0) {
                    owner[np] = r * 2 + i;
                    pfd[np++] = (struct pollfd){.fd = ranks[r].io[i].fd,
                                                .events = POLLIN};
                    open_streams++;
                }
        if (live == 0 && open_streams == 0)
            break;
        if (live == 0) {
            /* Every rank is gone; a process a rank started may still hold
             * its pipe, so read what is there for a moment, not forever. */
            timeout = 1000;
        } else if (kill_at != 0) {
            uint64_t now = now_ms();

            timeout = now >= kill_at ? 0 : (int)(kill_at - now);
        }
        int n = poll(pfd, (nfds_t)np, timeout);

        if (n == 0 && live == 0) {
            for (int r = 0; r < n_ranks; r++)
                for (int i = 0; i < 2; i++)
                    if (ranks[r].io[i].fd >= 0)
                        finish(r, &ranks[r].io[i]);
            break;
        }
        if (kill_at != 0 && now_ms() >= kill_at) {
            signal_ranks(j, SIGKILL);
            kill_at = 0;
        }
        for (int k = 1; k < np; k++)
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
                pump(owner[k] / 2, &ranks[owner[k] / 2].io[owner[k] % 2]);

        struct signalfd_siginfo si;

        while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                if (kill_at != 0) {
                    signal_ranks(j, SIGKILL); /* asked twice */
                    kill_at = 0;
                } else {
                    signal_ranks(j, (int)si.ssi_signo);
                    kill_at = now_ms() + (uint64_t)(p->grace_s * 1000);
                }
            }
        }
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);

            if (pid <= 0)
                break;
            int code = exit_code(status);

            for (int r = 0; r < n_ranks; r++) {
                if (ranks[r].pid != pid)
                    continue;
                ranks[r].pid = 0;
                live--;
                /* Whatever the rank left in its group goes with it. */
                kill(-pid, SIGKILL);
                if (code != 0 && !failed) {
                    failed = true;
                    result = code;
                    fprintf(stderr, "%s: rank %d %s %d%s\n", p->name, r,
                            WIFSIGNALED(status) ? "died of signal"
                                                : "exited with",
                            WIFSIGNALED(status) ? WTERMSIG(status)
                                                : WEXITSTATUS(status),
                            kill_at ? "" : "; stopping the others");
                    /* Unless they are already being stopped (a forwarded
                     * signal), which a SIGTERM now would interrupt. */
                    if (kill_at == 0) {
                        signal_ranks(j, SIGTERM);
                        kill_at = now_ms() + (uint64_t)(p->grace_s * 1000);
                    }
                }
                break; /* a pid is one rank's */
            }
        }
    }
    if (pfd == NULL || owner == NULL) {
        fprintf(stderr, "%s: out of memory; stopping the ranks\n", p->name);
        signal_ranks(j, SIGKILL);
        result = 1;
    }
    free(pfd);
    free(owner);
    return result;
}

int launch_job(const launch_params_t *p)
{
    const char *url = p->store_url;
    char urlbuf[64], prefixbuf[64], *prefix = NULL;
    char secretbuf[2 * 32 + 1], *secret = NULL;
    ferry_store_server_t *server = NULL;
    job_t j = {.p = p};
    int result = 0, sfd;
    bool failed = false;
    sigset_t set, old;
    void (*old_int)(int), (*old_term)(int);

    /* Signals arrive through a signalfd. SIGINT may come in ignored (a
     * shell's background job), and an ignored signal is never queued. */
    old_int = signal(SIGINT, SIG_DFL);
    old_term = signal(SIGTERM, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        fprintf(stderr, "%s: signalfd: %s\n", p->name, strerror(errno));
        result = 1;
        goto restore_signals;
    }

    if (url == NULL) {
        ferry_store_server_params_t sp = {.field_mask = FERRY_STORE_SERVER_PARAM_SECRET};
        const char *given = getenv("FERRY_JOB_SECRET");

        /* The job's own secret, unless the user chose one. */
        if (given == NULL || given[0] == '\0') {
            if (make_secret(secretbuf) != 0) {
                fprintf(stderr, "%s: getrandom: %s\n", p->name, strerror(errno));
                result = 1;
                goto close_sfd;
            }
            secret = secretbuf;
        }
        sp.secret = secret != NULL ? secret : given;
        /* The server thread inherits the blocked mask set above. */
        ferry_status_t st = ferry_store_server_start("127.0.0.1", &sp, &server);

        if (st != FERRY_OK) {
            fprintf(stderr, "%s: cannot start the store: %s\n", p->name,
                    ferry_last_error());
            result = 1;
            goto close_sfd;
        }
        snprintf(urlbuf, sizeof(urlbuf), "tcp://127.0.0.1:%u",
                 (unsigned)ferry_store_server_port(server));
        url = urlbuf;
    } else if (getenv("FERRY_COMM_PREFIX") == NULL) {
        snprintf(prefixbuf, sizeof(prefixbuf), "ferry/run-%d-%llu/",
                 (int)getpid(), (unsigned long long)time(NULL));
        prefix = prefixbuf;
    }

    j.ranks = calloc((size_t)p->nranks, sizeof(*j.ranks));
    if (j.ranks == NULL) {
        fprintf(stderr, "%s: no memory\n", p->name);
        result = 1;
        goto stop_server;
    }
    for (int r = 0; r < p->nranks; r++) {
        size_t own = 0;
        char **envp = rank_env(r, p->nranks, url, prefix, secret, &own);
        int rc;

        j.ranks[r].io[0].fd = j.ranks[r].io[1].fd = -1;
        rc = envp != NULL ? spawn(&j, r, envp) : -1;
        env_free(envp, own);
        if (rc != 0) {
            fprintf(stderr, "%s: cannot start rank %d\n", p->name, r);
            result = 1;
            failed = true;
            signal_ranks(&j, SIGKILL);
            break;
        }
    }
    result = supervise(&j, sfd, result, failed);
    free(j.ranks);
stop_server:
    ferry_store_server_stop(server);
close_sfd:
    /* Signals still queued (a SIGPIPE) would act once unblocked. */
    for (struct signalfd_siginfo si;
         read(sfd, &si, sizeof(si)) == sizeof(si);) {
    }
    close(sfd);
restore_signals:
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    signal(SIGINT, old_int);
    signal(SIGTERM, old_term);
    return result;
}
