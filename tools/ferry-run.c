/*
 * ferry-run: starts the N ranks of a job on this host, the way torchrun or
 * mpirun would, for ferry_comm_create() to find from the environment:
 * FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE, LOCAL_RANK and
 * LOCAL_WORLD_SIZE. Unless given --store, it hosts the job's store itself
 * (in-process, on loopback), so the store outlives every rank.
 *
 * Each rank's stdout and stderr come back through pipes and are copied,
 * a whole line at a time, to ferry-run's own, each line prefixed "[rank] ".
 * Each rank runs in a process group of its own, so that stopping a rank
 * stops whatever it started, and a terminal's Ctrl-C reaches ferry-run
 * only: SIGINT and SIGTERM are forwarded to every rank (a second one
 * kills them). When a rank exits non-zero or dies by a signal, the others
 * get SIGTERM, and SIGKILL after the grace period; ferry-run then returns
 * the exit code of that first failed rank (128 + the signal number for a
 * signal), or 0 when every rank exited 0. Ranks die with ferry-run
 * (PR_SET_PDEATHSIG) if it is killed. Ranks read their stdin from
 * /dev/null.
 */
#include "ferry.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536
#define MAX_RANKS 4096

extern char **environ;

typedef struct stream {
    int fd;   /* read end of the rank's pipe, -1 at EOF */
    int out;  /* 1 or 2 */
    char buf[LINE_MAX_BYTES];
    size_t len;
} stream_t;

typedef struct rank {
    pid_t pid; /* 0 once reaped */
    stream_t io[2];
} rank_t;

static int nranks;
static rank_t *ranks;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry-run -n N [--store URL] [--grace SEC] -- PROG [ARGS...]\n"
            "  -n N          start N ranks (1 to %d)\n"
            "  --store URL   the job's store (tcp://host:port); default: one\n"
            "                that ferry-run hosts on 127.0.0.1\n"
            "  --grace SEC   after SIGTERM, wait this long before SIGKILL\n"
            "                (default 5)\n"
            "Each rank gets FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE,\n"
            "LOCAL_RANK and LOCAL_WORLD_SIZE. The exit code is the first\n"
            "failed rank's (128 + signal for a signal), else 0.\n",
            MAX_RANKS);
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

static void signal_ranks(int sig)
{
    for (int r = 0; r < nranks; r++)
        if (ranks[r].pid > 0)
            kill(-ranks[r].pid, sig);
}

/* Starts rank r: its own process group, stdin from /dev/null, stdout and
 * stderr into pipes, default signal handling. */
static int spawn(int r, char **argv, char **envp)
{
    int p[2][2];
    pid_t parent = getpid(), pid;

    for (int i = 0; i < 2; i++)
        if (pipe2(p[i], O_CLOEXEC) != 0) {
            perror("ferry-run: pipe");
            return -1;
        }
    pid = fork();
    if (pid < 0) {
        perror("ferry-run: fork");
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
        dup2(p[0][1], 1);
        dup2(p[1][1], 2);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvpe(argv[0], argv, envp);
        fprintf(stderr, "ferry-run: cannot run '%s': %s\n", argv[0],
                strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so no signal can miss the group */
    ranks[r].pid = pid;
    for (int i = 0; i < 2; i++) {
        close(p[i][1]);
        ranks[r].io[i].fd = p[i][0];
        ranks[r].io[i].out = i + 1;
        fcntl(p[i][0], F_SETFL, O_NONBLOCK);
    }
    return 0;
}

/* The environment of rank r: ours, without the variables we set, plus
 * them, which start at *own_p (free them and the array with env_free). */
static char **rank_env(int r, const char *url, const char *prefix,
                       size_t *own_p)
{
    static const char *const ours[] = {"FERRY_RANK=", "FERRY_WORLD_SIZE=",
                                       "FERRY_STORE=", "LOCAL_RANK=",
                                       "LOCAL_WORLD_SIZE=", "FERRY_COMM_PREFIX="};
    size_t n = 0, k = 0;
    char **e;

    while (environ[n])
        n++;
    e = calloc(n + 8, sizeof(*e));
    if (e == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;

        for (size_t j = 0; j < sizeof(ours) / sizeof(ours[0]); j++)
            skip |= strncmp(environ[i], ours[j], strlen(ours[j])) == 0 &&
                    (j < 5 || prefix != NULL);
        if (!skip)
            e[k++] = environ[i];
    }
    *own_p = k;
    if (asprintf(&e[k++], "FERRY_RANK=%d", r) < 0 ||
        asprintf(&e[k++], "FERRY_WORLD_SIZE=%d", nranks) < 0 ||
        asprintf(&e[k++], "FERRY_STORE=%s", url) < 0 ||
        asprintf(&e[k++], "LOCAL_RANK=%d", r) < 0 ||
        asprintf(&e[k++], "LOCAL_WORLD_SIZE=%d", nranks) < 0 ||
        (prefix && asprintf(&e[k++], "FERRY_COMM_PREFIX=%s", prefix) < 0))
        return NULL;
    return e;
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

int main(int argc, char **argv)
{
    const char *url = NULL;
    char urlbuf[64], prefixbuf[64], *prefix = NULL;
    ferry_store_server_t *server = NULL;
    double grace = 5.0;
    int first = 1, result = 0, sfd, live;
    bool failed = false;
    uint64_t kill_at = 0;
    sigset_t set;

    for (; first < argc; first++) {
        if (strcmp(argv[first], "--") == 0) {
            first++;
            break;
        } else if (strcmp(argv[first], "-n") == 0 && first + 1 < argc) {
            char *end;
            long n = strtol(argv[++first], &end, 10);

            if (*end != 0 || n < 1 || n > MAX_RANKS) {
                fprintf(stderr, "ferry-run: -n wants 1 to %d, not '%s'\n",
                        MAX_RANKS, argv[first]);
                return 2;
            }
            nranks = (int)n;
        } else if (strcmp(argv[first], "--store") == 0 && first + 1 < argc) {
            url = argv[++first];
        } else if (strcmp(argv[first], "--grace") == 0 && first + 1 < argc) {
            char *end;

            grace = strtod(argv[++first], &end);
            if (*end != 0 || !(grace >= 0 && grace <= 3600)) {
                fprintf(stderr, "ferry-run: bad --grace '%s'\n", argv[first]);
                return 2;
            }
        } else if (strcmp(argv[first], "-h") == 0 ||
                   strcmp(argv[first], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (nranks == 0 || first >= argc) {
        usage(stderr);
        return 2;
    }

    /* Signals arrive through a signalfd. SIGINT may come in ignored (a
     * shell's background job), and an ignored signal is never queued. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        perror("ferry-run: signalfd");
        return 1;
    }

    if (url == NULL) {
        /* The server thread inherits the blocked mask set above. */
        ferry_status_t st = ferry_store_server_start("127.0.0.1", NULL, &server);

        if (st != FERRY_OK) {
            fprintf(stderr, "ferry-run: cannot start the store: %s\n",
                    ferry_last_error());
            return 1;
        }
        snprintf(urlbuf, sizeof(urlbuf), "tcp://127.0.0.1:%u",
                 (unsigned)ferry_store_server_port(server));
        url = urlbuf;
    } else if (getenv("FERRY_COMM_PREFIX") == NULL) {
        /* A store that outlives this job may hold an earlier one's keys. */
        snprintf(prefixbuf, sizeof(prefixbuf), "ferry/run-%d-%llu/",
                 (int)getpid(), (unsigned long long)time(NULL));
        prefix = prefixbuf;
    }

    ranks = calloc((size_t)nranks, sizeof(*ranks));
    if (ranks == NULL) {
        fprintf(stderr, "ferry-run: no memory\n");
        return 1;
    }
    for (int r = 0; r < nranks; r++) {
        size_t own = 0;
        char **envp = rank_env(r, url, prefix, &own);
        int rc;

        ranks[r].io[0].fd = ranks[r].io[1].fd = -1;
        rc = envp != NULL ? spawn(r, argv + first, envp) : -1;
        env_free(envp, own);
        if (rc != 0) {
            fprintf(stderr, "ferry-run: cannot start rank %d\n", r);
            result = 1;
            failed = true;
            signal_ranks(SIGKILL);
            break;
        }
    }

    live = 0;
    for (int r = 0; r < nranks; r++)
        live += ranks[r].pid > 0;
    /* The poll set and, for each entry after the signal fd, its rank and
     * stream: built afresh each round, allocated once. */
    struct pollfd *pfd = calloc((size_t)nranks * 2 + 1, sizeof(*pfd));
    int *owner = calloc((size_t)nranks * 2 + 1, sizeof(*owner));

    for (; pfd != NULL && owner != NULL;) {
        int np = 0, timeout = -1, open_streams = 0;

        pfd[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int r = 0; r < nranks; r++)
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
            for (int r = 0; r < nranks; r++)
                for (int i = 0; i < 2; i++)
                    if (ranks[r].io[i].fd >= 0)
                        finish(r, &ranks[r].io[i]);
            break;
        }
        if (kill_at != 0 && now_ms() >= kill_at) {
            signal_ranks(SIGKILL);
            kill_at = 0;
        }
        for (int k = 1; k < np; k++)
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
                pump(owner[k] / 2, &ranks[owner[k] / 2].io[owner[k] % 2]);

        struct signalfd_siginfo si;

        while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                if (kill_at != 0) {
                    signal_ranks(SIGKILL); /* asked twice */
                    kill_at = 0;
                } else {
                    signal_ranks((int)si.ssi_signo);
                    kill_at = now_ms() + (uint64_t)(grace * 1000);
                }
            }
        }
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);

            if (pid <= 0)
                break;
            int code = exit_code(status);

            for (int r = 0; r < nranks; r++) {
                if (ranks[r].pid != pid)
                    continue;
                ranks[r].pid = 0;
                live--;
                /* Whatever the rank left in its group goes with it. */
                kill(-pid, SIGKILL);
                if (code != 0 && !failed) {
                    failed = true;
                    result = code;
                    fprintf(stderr, "ferry-run: rank %d %s %d%s\n", r,
                            WIFSIGNALED(status) ? "died of signal"
                                                : "exited with",
                            WIFSIGNALED(status) ? WTERMSIG(status)
                                                : WEXITSTATUS(status),
                            kill_at ? "" : "; stopping the others");
                    /* Unless they are already being stopped (a forwarded
                     * signal), which a SIGTERM now would interrupt. */
                    if (kill_at == 0) {
                        signal_ranks(SIGTERM);
                        kill_at = now_ms() + (uint64_t)(grace * 1000);
                    }
                }
                break; /* a pid is one rank's */
            }
        }
    }
    if (pfd == NULL || owner == NULL) {
        fprintf(stderr, "ferry-run: out of memory; stopping the ranks\n");
        signal_ranks(SIGKILL);
        result = 1;
    }
    free(pfd);
    free(owner);
    ferry_store_server_stop(server);
    return result;
}
