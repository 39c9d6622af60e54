/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The descriptor hand-off of VMM exports, both ends. A VMM allocation is
 * shared as a POSIX file descriptor, which an importer duplicates into
 * itself with pidfd_getfd; where the kernel refuses that (Yama's ptrace
 * scope stops it between siblings), the owner's hand-off socket gives it:
 * an abstract Unix socket, named after the owner's pid and context id,
 * served by a small thread that the first VMM registration starts, which
 * hands out only the descriptors the owner exported (export.c adds and
 * removes them) and only to processes of the same user. The thread shares
 * nothing with the rest of the backend but the exported list, under its
 * own lock.
 */
#include "backends/cuda_ipc/cuda_ipc.h"
#include "util/config.h"
#include "util/log.h"
#include "util/proc.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* How long an importer waits for the owner's hand-off socket. */
#define CI_HANDOFF_TIMEOUT_MS 5000

static void ci_sock_name(struct sockaddr_un *sa, socklen_t *len, int32_t pid,
                         uint64_t id)
{
    int n;

    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    /* Abstract namespace: sun_path[0] stays NUL, nothing on disk. */
    n = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1,
                 "ferry-cuda-%d-%016llx", (int)pid, (unsigned long long)id);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* One hand-off message: a byte (1: the descriptor comes with it) and, when
 * control is set, room for one descriptor as SCM_RIGHTS. */
typedef struct ci_fdmsg {
    char ok;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov;
    struct msghdr msg;
} ci_fdmsg_t;

static void ci_fdmsg_init(ci_fdmsg_t *m, bool control)
{
    memset(m, 0, sizeof(*m));
    m->iov = (struct iovec){&m->ok, 1};
    m->msg.msg_iov = &m->iov;
    m->msg.msg_iovlen = 1;
    if (control) {
        m->msg.msg_control = m->cm.buf;
        m->msg.msg_controllen = sizeof(m->cm.buf);
    }
}

/* ------------------------------------------------------------------------ */
/* The owner's side                                                         */
/* ------------------------------------------------------------------------ */

static bool ci_is_exported(ci_ctx_t *ctx, int fd)
{
    bool found = false;

    pthread_mutex_lock(&ctx->export_lock);
    for (size_t i = 0; i < ctx->nexported && !found; i++)
        found = ctx->exported[i] == fd;
    pthread_mutex_unlock(&ctx->export_lock);
    return found;
}

/* Answers one importer: a u32 descriptor number in, that descriptor (as
 * SCM_RIGHTS) or nothing out. */
static void ci_serve_one(ci_ctx_t *ctx, int c)
{
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    struct pollfd pfd = {c, POLLIN, 0};
    uint32_t want;
    bool exported;
    ci_fdmsg_t m;

    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
        cred.uid != getuid() || poll(&pfd, 1, CI_HANDOFF_TIMEOUT_MS) != 1 ||
        recv(c, &want, sizeof(want), 0) != (ssize_t)sizeof(want))
        return;
    exported = ci_is_exported(ctx, (int)want);
    ci_fdmsg_init(&m, exported);
    if (exported) {
        int fd = (int)want;

        m.ok = 1;
        CMSG_FIRSTHDR(&m.msg)->cmsg_level = SOL_SOCKET;
        CMSG_FIRSTHDR(&m.msg)->cmsg_type = SCM_RIGHTS;
        CMSG_FIRSTHDR(&m.msg)->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(CMSG_FIRSTHDR(&m.msg)), &fd, sizeof(int));
    }
    if (sendmsg(c, &m.msg, MSG_NOSIGNAL) < 0)
        ferry__debug("cuda_ipc: hand-off reply: %s", strerror(errno));
}

static void *ci_server_main(void *arg)
{
    ci_ctx_t *ctx = arg;

    for (;;) {
        struct pollfd pfd[2] = {{ctx->srv_fd, POLLIN, 0}, {ctx->stop_fd, POLLIN, 0}};
        int c;

        if (poll(pfd, 2, -1) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            break;
        if (!(pfd[0].revents & POLLIN))
            continue;
        c = accept4(ctx->srv_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        ci_serve_one(ctx, c);
        close(c);
    }
    return NULL;
}

ferry_status_t ferry__ci_server_start(ci_ctx_t *ctx)
{
    struct sockaddr_un sa;
    socklen_t len;
    int err;

    if (ctx->srv_running)
        return FERRY_OK;
    ci_sock_name(&sa, &len, ctx->pid, ctx->id);
    ctx->srv_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ctx->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (ctx->srv_fd < 0 || ctx->stop_fd < 0 ||
        bind(ctx->srv_fd, (struct sockaddr *)&sa, len) != 0 ||
        listen(ctx->srv_fd, 64) != 0) {
        err = errno;
        goto err;
    }
    err = pthread_create(&ctx->srv_thread, NULL, ci_server_main, ctx);
    if (err != 0)
        goto err;
    ctx->srv_running = true;
    return FERRY_OK;

err:
    if (ctx->srv_fd >= 0)
        close(ctx->srv_fd);
    if (ctx->stop_fd >= 0)
        close(ctx->stop_fd);
    ctx->srv_fd = ctx->stop_fd = -1;
    return ferry__error(FERRY_ERR_SYSTEM, "cuda_ipc: the descriptor hand-off "
                        "socket: %s", strerror(err));
}

void ferry__ci_server_stop(ci_ctx_t *ctx)
{
    uint64_t one = 1;

    if (!ctx->srv_running)
        return;
    if (write(ctx->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        ferry__warn("cuda_ipc: stopping the hand-off thread: %s", strerror(errno));
    pthread_join(ctx->srv_thread, NULL);
    close(ctx->srv_fd);
    close(ctx->stop_fd);
    ctx->srv_fd = ctx->stop_fd = -1;
    ctx->srv_running = false;
}

ferry_status_t ferry__ci_export_add(ci_ctx_t *ctx, int fd)
{
    ferry_status_t st = FERRY_OK;

    pthread_mutex_lock(&ctx->export_lock);
    if (ferry__ci_grow(&ctx->exported, &ctx->capexported, ctx->nexported, sizeof(int)))
        ctx->exported[ctx->nexported++] = fd;
    else
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    pthread_mutex_unlock(&ctx->export_lock);
    return st;
}

void ferry__ci_export_del(ci_ctx_t *ctx, int fd)
{
    pthread_mutex_lock(&ctx->export_lock);
    for (size_t i = 0; i < ctx->nexported; i++) {
        if (ctx->exported[i] == fd) {
            ctx->exported[i] = ctx->exported[--ctx->nexported];
            break;
        }
    }
    pthread_mutex_unlock(&ctx->export_lock);
}

/* ------------------------------------------------------------------------ */
/* The importer's side                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Descriptors fetched ahead (ferry__ci_rkey_prefetch, without the agent
 * lock) for the import that will need them (under it): each is taken once,
 * by the owner's pid and context id and its number there; a fetch that
 * failed is kept as its status and text, so that the import fails at once
 * instead of waiting for a stopped peer again. At most CI_PF_MAX are kept;
 * those of a peer are closed with its connection, the rest with the
 * context.
 */
#define CI_PF_MAX 1024

static size_t ci_pf_find(const ci_ctx_t *ctx, int32_t pid, uint64_t id, int rfd)
{
    for (size_t i = 0; i < ctx->npf; i++)
        if (ctx->pf[i].pid == pid && ctx->pf[i].id == id && ctx->pf[i].rfd == rfd)
            return i;
    return SIZE_MAX;
}

/* Removes entry i (under pf_lock). */
static void ci_pf_remove(ci_ctx_t *ctx, size_t i)
{
    ctx->pf[i] = ctx->pf[--ctx->npf];
}

/* Takes the entry for (pid, id, rfd), if there is one: true, with *fd_p or
 * the failure in *st_p (and the detail text). */
static bool ci_pf_take(ci_ctx_t *ctx, int32_t pid, uint64_t id, int rfd, int *fd_p,
                       ferry_status_t *st_p)
{
    ci_pf_t e;
    size_t i;

    pthread_mutex_lock(&ctx->pf_lock);
    i = ci_pf_find(ctx, pid, id, rfd);
    if (i != SIZE_MAX) {
        e = ctx->pf[i];
        ci_pf_remove(ctx, i);
    }
    pthread_mutex_unlock(&ctx->pf_lock);
    if (i == SIZE_MAX)
        return false;
    *fd_p = e.fd;
    *st_p = e.fd >= 0 ? FERRY_OK : ferry__error(e.st, "%s", e.why);
    return true;
}

void ferry__ci_pf_drop(ci_ctx_t *ctx, int32_t pid, uint64_t id)
{
    pthread_mutex_lock(&ctx->pf_lock);
    for (size_t i = ctx->npf; i-- > 0;) {
        if (pid < 0 || (ctx->pf[i].pid == pid && ctx->pf[i].id == id)) {
            if (ctx->pf[i].fd >= 0)
                close(ctx->pf[i].fd);
            ci_pf_remove(ctx, i);
        }
    }
    if (pid < 0) { /* the context goes */
        free(ctx->pf);
        ctx->pf = NULL;
        ctx->cappf = 0;
    }
    pthread_mutex_unlock(&ctx->pf_lock);
}

/* The owner (pid, context id) a peer's address names: false when the
 * address is malformed or names this context. */
static bool ci_addr_owner(const ci_ctx_t *ctx, const uint8_t *addr, size_t addr_len,
                          int32_t *pid_p, uint64_t *id_p)
{
    ferry__rbuf_t r;

    ferry__rbuf_init(&r, addr, addr_len);
    *pid_p = (int32_t)ferry__rbuf_u32(&r);
    *id_p = ferry__rbuf_u64(&r);
    return !r.err && r.left == 0 && !(*pid_p == ctx->pid && *id_p == ctx->id);
}

void ferry__ci_rkey_prefetch_end(void *vctx, const uint8_t *addr, size_t addr_len)
{
    ci_ctx_t *ctx = vctx;
    int32_t pid;
    uint64_t id;

    if (ci_addr_owner(ctx, addr, addr_len, &pid, &id))
        ferry__ci_pf_drop(ctx, pid, id);
}

void ferry__ci_rkey_prefetch(void *vctx, const uint8_t *addr, size_t addr_len,
                             const uint8_t *data, size_t len)
{
    ci_ctx_t *ctx = vctx;
    ci_conn_t tmp = {.ctx = ctx, .pidfd = -1};
    ferry__rbuf_t r;
    uint32_t n;

    if (!ci_addr_owner(ctx, addr, addr_len, &tmp.pid, &tmp.id))
        return;
    ferry__rbuf_init(&r, data, len);
    if (ferry__rbuf_u8(&r) != CI_VMM)
        return;
    ferry__rbuf_u8(&r);
    ferry__rbuf_u16(&r);
    ferry__rbuf_bytes(&r, 16 + 8 + 8);
    n = ferry__rbuf_u32(&r);
    /* Malformed keys are rkey_open's to refuse. */
    if (r.err || n == 0 || n > CI_MAX_CHUNKS || r.left != (size_t)n * 20)
        return;
    snprintf(tmp.name, sizeof(tmp.name), "pid %d", (int)tmp.pid);
    tmp.pidfd = ferry__pidfd_open((pid_t)tmp.pid);
    for (uint32_t i = 0; i < n; i++) {
        ci_pf_t e = {tmp.pid, tmp.id, 0, -1, FERRY_OK, ""};
        bool have;

        ferry__rbuf_u64(&r);
        ferry__rbuf_u64(&r);
        e.rfd = (int)ferry__rbuf_u32(&r);
        pthread_mutex_lock(&ctx->pf_lock);
        have = ci_pf_find(ctx, e.pid, e.id, e.rfd) != SIZE_MAX || ctx->npf >= CI_PF_MAX;
        pthread_mutex_unlock(&ctx->pf_lock);
        if (have)
            continue;
        e.st = ferry__ci_fetch_fd(&tmp, e.rfd, &e.fd);
        if (e.st < 0)
            snprintf(e.why, sizeof(e.why), "%s", ferry_last_error());
        pthread_mutex_lock(&ctx->pf_lock);
        if (ctx->npf < CI_PF_MAX && ci_pf_find(ctx, e.pid, e.id, e.rfd) == SIZE_MAX &&
            ferry__ci_grow(&ctx->pf, &ctx->cappf, ctx->npf, sizeof(*ctx->pf))) {
            ctx->pf[ctx->npf++] = e;
            e.fd = -1;
        }
        pthread_mutex_unlock(&ctx->pf_lock);
        if (e.fd >= 0)
            close(e.fd);
        if (e.st < 0)
            break; /* the next would wait as long */
    }
    if (tmp.pidfd >= 0)
        close(tmp.pidfd);
}

/* One of the owner's exported descriptors, duplicated into this process:
 * the one fetched ahead, if there is one. */
ferry_status_t ferry__ci_fetch_fd(ci_conn_t *conn, int remote_fd, int *fd_p)
{
    const char *mode = ferry__config_get("FERRY_CUDA_FD_HANDOFF");
    struct sockaddr_un sa;
    socklen_t salen;
    uint32_t want = (uint32_t)remote_fd;
    ci_fdmsg_t m;
    struct timeval tv = {CI_HANDOFF_TIMEOUT_MS / 1000, 0};
    ferry_status_t st;
    ssize_t n;
    int s, err;

    if (ci_pf_take(conn->ctx, conn->pid, conn->id, remote_fd, fd_p, &st))
        return st;
    if (strcmp(mode, "socket") != 0 && !conn->getfd_refused) {
        if (conn->pidfd >= 0) {
            int fd = (int)syscall(SYS_pidfd_getfd, conn->pidfd, remote_fd, 0);

            if (fd >= 0) {
                *fd_p = fd;
                return FERRY_OK;
            }
            err = errno;
            if (err == ESRCH)
                return ferry__error(FERRY_ERR_PEER_LOST, "cuda_ipc: peer '%s' "
                                    "(pid %d) has exited", conn->name, (int)conn->pid);
        } else {
            err = ENOSYS; /* no pidfd for the peer: a kernel before 5.3 */
        }
        if (strcmp(mode, "pidfd") == 0)
            return ferry__error(FERRY_ERR_SYSTEM, "cuda_ipc: pidfd_getfd from peer "
                                "'%s': %s", conn->name, strerror(err));
        ferry__debug("cuda_ipc: pidfd_getfd from peer '%s' refused (%s); using "
                     "its hand-off socket", conn->name, strerror(err));
        conn->getfd_refused = true;
    }

    ci_sock_name(&sa, &salen, conn->pid, conn->id);
    s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return ferry__error(FERRY_ERR_SYSTEM, "cuda_ipc: socket: %s", strerror(errno));
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(s, (struct sockaddr *)&sa, salen) != 0 ||
        send(s, &want, sizeof(want), MSG_NOSIGNAL) != (ssize_t)sizeof(want)) {
        err = errno;
        close(s);
        return ferry__error(err == ECONNREFUSED ? FERRY_ERR_PEER_LOST : FERRY_ERR_SYSTEM,
                            "cuda_ipc: the hand-off socket of peer '%s': %s",
                            conn->name, strerror(err));
    }
    ci_fdmsg_init(&m, true);
    n = recvmsg(s, &m.msg, MSG_CMSG_CLOEXEC);
    if (n != 1 || m.ok != 1 ||
        CMSG_FIRSTHDR(&m.msg) == NULL || CMSG_FIRSTHDR(&m.msg)->cmsg_type != SCM_RIGHTS) {
        /* errno only where recvmsg failed: an answer (or a closed socket)
         * is no timeout, whatever errno an earlier call left. */
        err = n < 0 ? errno : 0;
        close(s);
        if (err == EAGAIN || err == EWOULDBLOCK)
            return ferry__error(FERRY_ERR_TIMEOUT, "cuda_ipc: peer '%s' did not hand "
                                "over descriptor %d within %d ms (is it stopped?)",
                                conn->name, remote_fd, CI_HANDOFF_TIMEOUT_MS);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' did not hand "
                            "over descriptor %d (%s)", conn->name, remote_fd,
                            m.ok == 0 ? "it does not export it" : strerror(err));
    }
    memcpy(fd_p, CMSG_DATA(CMSG_FIRSTHDR(&m.msg)), sizeof(int));
    close(s);
    return FERRY_OK;
}
