/*
 * CUDA IPC backend: GPU memory of processes on the same host, moved by the
 * copy engines with cuMemcpyAsync into and out of the peer's allocation,
 * which this process maps once.
 *
 * Registration. A CUDA region is exported as the allocation(s) that hold
 * it, because CUDA shares whole allocations: memory from cuMemAlloc as a
 * legacy IPC handle of its allocation (base and offset recorded, and a range
 * that runs into a second allocation refused), memory from cuMemCreate /
 * cuMemMap (virtual memory management, PyTorch's expandable segments) as one
 * POSIX file descriptor per physical allocation that backs the range, in
 * address order. A host region is registered for the local side of
 * host <-> GPU copies only (pinned with cuMemHostRegister when this process
 * already uses CUDA, so that copies run at full speed); it advertises
 * nothing to peers.
 *
 * Import. A peer's legacy handle is opened with cuIpcOpenMemHandle at the
 * first prepare that uses it, in the context of the device whose stream
 * will copy (so the copy goes peer to peer, not through host memory); a VMM
 * allocation's descriptors are fetched with pidfd_getfd and, where the
 * kernel refuses that (Yama's ptrace scope stops it between siblings), from
 * the owner's hand-off socket (an abstract Unix socket served by a small
 * thread, started with the first VMM registration, that gives only the
 * descriptors it exported and only to processes of the same user), then
 * imported and mapped into one reserved range with the owner's layout.
 * Mappings are shared by every key that names the same export and released
 * with the last of them, that is when the peer is forgotten or replaced.
 *
 * Transfers are cuMemcpyAsync calls on an internal stream per device (the
 * local GPU memory's device, else the peer memory's: ci_copy_device) and
 * complete through an event per batch, queried in progress(). To sleep,
 * arm() enqueues a host function behind the oldest unfinished batch that
 * writes an eventfd, so waiting costs no CPU.
 *
 * Everything CUDA is loaded lazily (src/cuda): without a driver the backend
 * still initialises, takes no GPU memory, and says why when asked.
 */
#include "backends/backend.h"
#include "cuda/cuda.h"
#include "util/config.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/time.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

enum { CI_HOST = 0, CI_LEGACY = 1, CI_VMM = 2, CI_SELF = 3 /* importer only */ };

/* How long an importer waits for the owner's hand-off socket. */
#define CI_HANDOFF_TIMEOUT_MS 5000
/* The most physical allocations one region may span. */
#define CI_MAX_CHUNKS 65536
/* How old a post may find the answer to "does the peer still run". */
#define CI_LIVENESS_NS 100000ull

typedef struct ci_chunk {
    uint64_t off, size;             /* within the region's allocation range */
    int fd;                         /* exported descriptor (owner side) */
    CUmemGenericAllocationHandle h; /* retained handle (owner side) */
} ci_chunk_t;

/* GPU memory from mem_alloc(): VMM memory with a shareable handle. */
typedef struct ci_alloc {
    struct ci_alloc *next;
    CUdeviceptr va;
    size_t size;
    CUmemGenericAllocationHandle h;
    unsigned regs;             /* registrations inside it */
} ci_alloc_t;

typedef struct ci_reg {
    int type;                  /* CI_HOST, CI_LEGACY or CI_VMM */
    ci_alloc_t *alloc;         /* the allocation it lies in, or NULL */
    int device;
    void *pinned;              /* host memory this registration pinned */
    uint64_t base, size;       /* the allocation range holding the region */
    CUuuid uuid;
    CUipcMemHandle ipc;
    uint32_t nchunks;
    ci_chunk_t chunks[];
} ci_reg_t;

/* A legacy export opened for the copies of one device's stream. */
typedef struct ci_open {
    CUdeviceptr ptr;           /* 0 until opened */
    int in;                    /* the device whose context opened it */
} ci_open_t;

/* A peer export mapped into this process, shared by the keys naming it. */
typedef struct ci_map {
    struct ci_map *next;
    unsigned refs;
    int type, device;
    uint64_t rbase, size;      /* the owner's allocation range */
    CUdeviceptr lbase;         /* VMM, self: where it is mapped here */
    size_t reserved;           /* VMM: size of the reserved range */
    CUipcMemHandle ipc;        /* legacy: the handle */
    ci_open_t *opens;          /* legacy: by copying device, at prepare */
    size_t keylen;
    uint8_t key[];             /* the packed export, to recognise it again */
} ci_map_t;

typedef struct ci_conn {
    struct ci_ctx *ctx;
    char name[64];
    int32_t pid;
    uint64_t id;               /* the owner context's hand-off socket id */
    int pidfd;                 /* the peer process's, or -1 (util/proc.h) */
    uint64_t alive_ns;         /* when it was last seen running */
    bool dead;                 /* it was seen to have exited */
    bool getfd_refused;
    uint64_t events;           /* batches completed: the stall check's headway */
    ci_map_t *maps;
} ci_conn_t;

typedef struct ci_rkey {
    ci_conn_t *conn;
    ci_map_t *map;
} ci_rkey_t;

typedef struct ci_dev {
    CUstream stream;
    CUevent *events;           /* free events */
    size_t nevents, capevents;
} ci_dev_t;

typedef struct ci_batch {
    CUevent event;
    int device;
    ci_conn_t *conn;
    ferry__bk_done_cb cb;
    void *arg;
} ci_batch_t;

typedef struct ci_ctx {
    const ferry__cuda_t *cu;   /* NULL until CUDA is first needed */
    ci_dev_t *devs;
    int ndevs;
    CUuuid *uuids;
    int evfd;                  /* written by host functions when work is done */
    atomic_bool notify_pending; /* a host function is queued */
    atomic_bool notified;      /* one ran: evfd needs draining */
    ci_batch_t *ring;          /* batches in flight, oldest first */
    size_t head, count, cap;
    uint64_t id;
    int32_t pid;
    /* The hand-off socket and the descriptors it may give away. */
    pthread_mutex_t export_lock;
    int *exported;
    size_t nexported, capexported;
    int srv_fd, stop_fd;
    bool srv_running;
    pthread_t srv_thread;
    ci_alloc_t *allocs;
} ci_ctx_t;

/* Makes room for one more element in a growing array of *cap elements;
 * arr_p points to the array's pointer (of any object type). */
static bool ci_grow(void *arr_p, size_t *cap, size_t used, size_t elem)
{
    size_t n = *cap ? *cap * 2 : 16;
    void *arr, *grown;

    if (used < *cap)
        return true;
    memcpy(&arr, arr_p, sizeof(arr));
    grown = realloc(arr, n * elem);
    if (grown == NULL)
        return false;
    memcpy(arr_p, &grown, sizeof(grown));
    *cap = n;
    return true;
}

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

/* ------------------------------------------------------------------------ */
/* Context                                                                  */
/* ------------------------------------------------------------------------ */

static ferry_status_t ci_init(const char *agent_name, void **ctx_p)
{
    ci_ctx_t *ctx = calloc(1, sizeof(*ctx));

    (void)agent_name;
    if (ctx == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    ctx->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->evfd < 0) {
        free(ctx);
        return ferry__error(FERRY_ERR_SYSTEM, "cuda_ipc: eventfd: %s", strerror(errno));
    }
    if (getrandom(&ctx->id, sizeof(ctx->id), 0) != (ssize_t)sizeof(ctx->id))
        ctx->id = (uint64_t)(uintptr_t)ctx ^ (uint64_t)getpid() << 40;
    ctx->pid = (int32_t)getpid();
    ctx->srv_fd = ctx->stop_fd = -1;
    pthread_mutex_init(&ctx->export_lock, NULL);
    atomic_init(&ctx->notify_pending, false);
    atomic_init(&ctx->notified, false);
    *ctx_p = ctx;
    return FERRY_OK;
}

/* Loads CUDA and the per-device state on first use. */
static ferry_status_t ci_cuda(ci_ctx_t *ctx)
{
    const ferry__cuda_t *cu;
    ferry_status_t st = FERRY_OK;

    if (ctx->cu != NULL)
        return FERRY_OK;
    FERRY_CHECK(ferry__cuda_get(&cu));
    ctx->devs = calloc((size_t)cu->ndevices, sizeof(*ctx->devs));
    ctx->uuids = calloc((size_t)cu->ndevices, sizeof(*ctx->uuids));
    if (ctx->devs == NULL || ctx->uuids == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        goto err_free;
    }
    for (int d = 0; d < cu->ndevices && st == FERRY_OK; d++) {
        CUdevice dev;

        st = FERRY__CU(cu, cuDeviceGet, (&dev, d));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuDeviceGetUuid, (&ctx->uuids[d], dev));
    }
    if (st < 0)
        goto err_free;
    ctx->ndevs = cu->ndevices;
    ctx->cu = cu;
    return FERRY_OK;

err_free:
    free(ctx->devs);
    free(ctx->uuids);
    ctx->devs = NULL;
    ctx->uuids = NULL;
    return st;
}

/*
 * The device's stream, created on first use; the caller has pushed the
 * device's context. A blocking stream: its copies start only after the work
 * queued before them on the legacy default stream, where an application
 * (PyTorch's default stream, cuMemcpy from pageable memory, whose DMA may
 * still be running when it returns) has just produced the bytes to send.
 */
static ferry_status_t ci_stream(ci_ctx_t *ctx, int device, CUstream *stream_p)
{
    ci_dev_t *d = &ctx->devs[device];

    if (d->stream == NULL)
        FERRY_CHECK(FERRY__CU(ctx->cu, cuStreamCreate, (&d->stream, 0)));
    *stream_p = d->stream;
    return FERRY_OK;
}

static void ci_server_stop(ci_ctx_t *ctx);

/* Undoes ci_mem_alloc(): the mapping, the reserved range, the allocation. */
static void ci_alloc_unmap(const ferry__cuda_t *cu, const ci_alloc_t *a)
{
    cu->cuMemUnmap(a->va, a->size);
    cu->cuMemAddressFree(a->va, a->size);
    cu->cuMemRelease(a->h);
}

static void ci_fini(void *vctx)
{
    ci_ctx_t *ctx = vctx;

    ci_server_stop(ctx);
    while (ctx->allocs != NULL) {
        ci_alloc_t *a = ctx->allocs;

        ferry__debug("cuda_ipc: freeing a GPU allocation of %zu B the user left",
                     a->size);
        ctx->allocs = a->next;
        ci_alloc_unmap(ctx->cu, a);
        free(a);
    }
    if (ctx->cu != NULL) {
        for (int d = 0; d < ctx->ndevs; d++) {
            ci_dev_t *dev = &ctx->devs[d];

            if (dev->stream == NULL)
                continue;
            /* Host functions still queued refer to ctx: let them run. */
            if (ferry__cuda_push(d) == FERRY_OK) {
                ctx->cu->cuStreamSynchronize(dev->stream);
                for (size_t i = 0; i < dev->nevents; i++)
                    ctx->cu->cuEventDestroy(dev->events[i]);
                ctx->cu->cuStreamDestroy(dev->stream);
                ferry__cuda_pop();
            }
            free(dev->events);
        }
        for (size_t i = 0; i < ctx->count; i++)
            ctx->cu->cuEventDestroy(ctx->ring[(ctx->head + i) % ctx->cap].event);
    }
    free(ctx->ring);
    free(ctx->devs);
    free(ctx->uuids);
    free(ctx->exported);
    pthread_mutex_destroy(&ctx->export_lock);
    close(ctx->evfd);
    free(ctx);
}

static bool ci_supports_kind(void *vctx, ferry_mem_kind_t kind)
{
    (void)vctx;
    /* Host memory is the local end of host <-> GPU copies; whether CUDA is
     * usable at all is answered when memory is registered or a key opened. */
    return kind == FERRY_MEM_HOST || kind == FERRY_MEM_CUDA;
}

static ferry_status_t ci_pack_address(void *vctx, ferry__wbuf_t *out)
{
    ci_ctx_t *ctx = vctx;

    ferry__wbuf_u32(out, (uint32_t)ctx->pid);
    ferry__wbuf_u64(out, ctx->id);
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* The hand-off socket (owner side)                                         */
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
    char ok = 0;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {&ok, 1};
    struct msghdr msg = {0};

    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
        cred.uid != getuid() || poll(&pfd, 1, CI_HANDOFF_TIMEOUT_MS) != 1 ||
        recv(c, &want, sizeof(want), 0) != (ssize_t)sizeof(want))
        return;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (ci_is_exported(ctx, (int)want)) {
        int fd = (int)want;

        ok = 1;
        memset(&cm, 0, sizeof(cm));
        msg.msg_control = cm.buf;
        msg.msg_controllen = sizeof(cm.buf);
        CMSG_FIRSTHDR(&msg)->cmsg_level = SOL_SOCKET;
        CMSG_FIRSTHDR(&msg)->cmsg_type = SCM_RIGHTS;
        CMSG_FIRSTHDR(&msg)->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(CMSG_FIRSTHDR(&msg)), &fd, sizeof(int));
    }
    if (sendmsg(c, &msg, MSG_NOSIGNAL) < 0)
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

static ferry_status_t ci_server_start(ci_ctx_t *ctx)
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

static void ci_server_stop(ci_ctx_t *ctx)
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

static ferry_status_t ci_export_add(ci_ctx_t *ctx, int fd)
{
    ferry_status_t st = FERRY_OK;

    pthread_mutex_lock(&ctx->export_lock);
    if (ci_grow(&ctx->exported, &ctx->capexported, ctx->nexported, sizeof(int)))
        ctx->exported[ctx->nexported++] = fd;
    else
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    pthread_mutex_unlock(&ctx->export_lock);
    return st;
}

static void ci_export_del(ci_ctx_t *ctx, int fd)
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
/* Registration                                                             */
/* ------------------------------------------------------------------------ */

static void ci_reg_free(ci_ctx_t *ctx, ci_reg_t *reg)
{
    if (reg->alloc != NULL)
        reg->alloc->regs--;
    for (uint32_t i = 0; i < reg->nchunks; i++) {
        if (reg->chunks[i].fd >= 0) {
            ci_export_del(ctx, reg->chunks[i].fd);
            close(reg->chunks[i].fd);
        }
        if (reg->chunks[i].h != 0)
            ctx->cu->cuMemRelease(reg->chunks[i].h);
    }
    if (reg->pinned != NULL && ferry__cuda_push(0) == FERRY_OK) {
        ctx->cu->cuMemHostUnregister(reg->pinned);
        ferry__cuda_pop();
    }
    free(reg);
}

/* The physical allocations behind [addr, addr + len) of VMM memory, in
 * address order; FERRY_ERR_NOT_FOUND if addr is not VMM memory at all. */
static ferry_status_t ci_reg_vmm(ci_ctx_t *ctx, const ferry_desc_t *d,
                                 ci_reg_t **reg_p)
{
    const ferry__cuda_t *cu = ctx->cu;
    uint64_t p = d->addr, end = d->addr + d->len;
    ci_reg_t *reg = NULL;
    uint32_t cap = 0;
    ferry_status_t st;

    while (p < end) {
        CUmemGenericAllocationHandle h;
        CUmemAllocationProp prop;
        CUdeviceptr base;
        size_t size;
        ci_chunk_t *c;
        int fd = -1;

        if (cu->cuMemRetainAllocationHandle(&h, (void *)(uintptr_t)p) != CUDA_SUCCESS) {
            if (reg == NULL)
                return FERRY_ERR_NOT_FOUND; /* not VMM memory */
            st = ferry__error(FERRY_ERR_INVALID, "cuda_ipc: the range runs past "
                              "mapped memory at 0x%llx", (unsigned long long)p);
            goto err;
        }
        st = FERRY__CU(cu, cuMemGetAddressRange, (&base, &size, (CUdeviceptr)p));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemGetAllocationPropertiesFromHandle, (&prop, h));
        if (st == FERRY_OK && !(prop.requestedHandleTypes &
                                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
            st = ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: the allocation at "
                              "0x%llx was created without "
                              "CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR and cannot "
                              "be shared with another process",
                              (unsigned long long)base);
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemExportToShareableHandle,
                           (&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
        if (st == FERRY_OK && (reg == NULL ? base > p : base != p))
            st = ferry__error(FERRY_ERR_INVALID, "cuda_ipc: unexpected allocation "
                              "layout at 0x%llx", (unsigned long long)p);
        if (st == FERRY_OK && reg != NULL && reg->nchunks == cap) {
            ci_reg_t *grown;

            cap = cap * 2;
            grown = cap > CI_MAX_CHUNKS ? NULL
                                        : realloc(reg, sizeof(*reg) + cap * sizeof(ci_chunk_t));
            if (grown == NULL)
                st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: the range spans "
                                  "too many allocations");
            else
                reg = grown;
        }
        if (st == FERRY_OK && reg == NULL) {
            cap = 4;
            reg = calloc(1, sizeof(*reg) + cap * sizeof(ci_chunk_t));
            if (reg == NULL)
                st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
            else {
                reg->type = CI_VMM;
                reg->base = base;
            }
        }
        if (st == FERRY_OK)
            st = ci_export_add(ctx, fd);
        if (st < 0) {
            if (fd >= 0)
                close(fd);
            cu->cuMemRelease(h);
            goto err;
        }
        c = &reg->chunks[reg->nchunks++];
        *c = (ci_chunk_t){base - reg->base, size, fd, h};
        reg->size = base + size - reg->base;
        p = base + size;
    }
    *reg_p = reg;
    return FERRY_OK;

err:
    if (reg != NULL)
        ci_reg_free(ctx, reg);
    return st;
}

static ferry_status_t ci_reg_cuda(ci_ctx_t *ctx, const ferry_desc_t *d,
                                  ci_reg_t **reg_p)
{
    const ferry__cuda_t *cu = ctx->cu;
    ci_reg_t *reg = NULL;
    CUdeviceptr base;
    size_t size;
    ferry_status_t st;

    st = ci_reg_vmm(ctx, d, &reg);
    if (st == FERRY_ERR_NOT_FOUND) {
        FERRY_CHECK(FERRY__CU(cu, cuMemGetAddressRange, (&base, &size,
                                                         (CUdeviceptr)d->addr)));
        if (d->addr + d->len > base + size)
            return ferry__error(FERRY_ERR_INVALID, "cuda_ipc: the range [0x%llx, "
                                "+%llu) runs past the end of its CUDA allocation "
                                "[0x%llx, +%zu): a registration must lie in one "
                                "allocation", (unsigned long long)d->addr,
                                (unsigned long long)d->len,
                                (unsigned long long)base, size);
        reg = calloc(1, sizeof(*reg));
        if (reg == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        reg->type = CI_LEGACY;
        reg->base = base;
        reg->size = size;
        st = FERRY__CU(cu, cuIpcGetMemHandle, (&reg->ipc, base));
    } else if (st == FERRY_OK) {
        st = ci_server_start(ctx);
    }
    if (st < 0) {
        if (reg != NULL)
            ci_reg_free(ctx, reg);
        return st;
    }
    *reg_p = reg;
    return FERRY_OK;
}

static ferry_status_t ci_mem_register(void *vctx, const ferry_desc_t *d,
                                      void **lreg_p)
{
    ci_ctx_t *ctx = vctx;
    ci_reg_t *reg = NULL;
    ferry_status_t st;

    if (d->kind == FERRY_MEM_HOST) {
        reg = calloc(1, sizeof(*reg));
        if (reg == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        reg->type = CI_HOST;
        /* Pinned memory copies at the link's speed, pageable memory at a
         * fraction of it; pin only in processes that already use CUDA. */
        if (ferry__config_get_size("FERRY_CUDA_PIN_HOST") != 0 &&
            ferry__cuda_loaded() != NULL && ci_cuda(ctx) == FERRY_OK &&
            ferry__cuda_push(0) == FERRY_OK) {
            CUresult res = ctx->cu->cuMemHostRegister((void *)(uintptr_t)d->addr,
                                                      d->len,
                                                      CU_MEMHOSTREGISTER_PORTABLE);

            ferry__cuda_pop();
            if (res == CUDA_SUCCESS)
                reg->pinned = (void *)(uintptr_t)d->addr;
            else
                ferry__debug("cuda_ipc: host range at 0x%llx stays unpinned "
                             "(cuMemHostRegister: %d)", (unsigned long long)d->addr,
                             res);
        }
        *lreg_p = reg;
        return FERRY_OK;
    }
    FERRY_CHECK(ci_cuda(ctx));
    if (d->device < 0 || d->device >= ctx->ndevs)
        return ferry__error(FERRY_ERR_INVALID, "cuda_ipc: device %d does not exist",
                            (int)d->device);
    FERRY_CHECK(ferry__cuda_push(d->device));
    st = ci_reg_cuda(ctx, d, &reg);
    ferry__cuda_pop();
    FERRY_CHECK(st);
    for (ci_alloc_t *a = ctx->allocs; a != NULL; a = a->next) {
        if (d->addr >= a->va && d->addr - a->va < a->size) {
            reg->alloc = a;
            a->regs++;
            break;
        }
    }
    reg->device = d->device;
    reg->uuid = ctx->uuids[d->device];
    *lreg_p = reg;
    return FERRY_OK;
}

/*
 * The export, as peers see it:
 *   u8 type (1 legacy, 2 VMM), u8 0, u16 0, 16 bytes device UUID,
 *   u64 allocation base, u64 allocation size, then
 *   legacy: 64 bytes IPC handle;
 *   VMM: u32 owner's descriptor count, then per allocation u64 offset,
 *        u64 size, u32 the owner's descriptor number.
 * Host regions export nothing.
 */
static ferry_status_t ci_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out)
{
    ci_reg_t *reg = lreg;

    (void)vctx;
    if (reg->type == CI_HOST)
        return FERRY_OK;
    ferry__wbuf_u8(out, (uint8_t)reg->type);
    ferry__wbuf_u8(out, 0);
    ferry__wbuf_u16(out, 0);
    ferry__wbuf_bytes(out, reg->uuid.bytes, sizeof(reg->uuid.bytes));
    ferry__wbuf_u64(out, reg->base);
    ferry__wbuf_u64(out, reg->size);
    if (reg->type == CI_LEGACY) {
        ferry__wbuf_bytes(out, reg->ipc.reserved, sizeof(reg->ipc.reserved));
        return FERRY_OK;
    }
    ferry__wbuf_u32(out, reg->nchunks);
    for (uint32_t i = 0; i < reg->nchunks; i++) {
        ferry__wbuf_u64(out, reg->chunks[i].off);
        ferry__wbuf_u64(out, reg->chunks[i].size);
        ferry__wbuf_u32(out, (uint32_t)reg->chunks[i].fd);
    }
    return FERRY_OK;
}

static void ci_mem_deregister(void *vctx, void *lreg)
{
    ci_reg_free(vctx, lreg);
}

/* ------------------------------------------------------------------------ */
/* Connections and remote keys (importer side)                              */
/* ------------------------------------------------------------------------ */

static ferry_status_t ci_conn_open(void *vctx, const uint8_t *addr, size_t len,
                                   const ferry__bk_peer_t *peer, void **conn_p)
{
    ci_ctx_t *ctx = vctx;
    ferry__rbuf_t r;
    ci_conn_t *conn;

    if (!peer->same_host)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: peer '%s' runs on "
                            "another host (or in another PID/IPC namespace); "
                            "CUDA IPC works only within one host", peer->name);
    conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    ferry__rbuf_init(&r, addr, len);
    conn->pid = (int32_t)ferry__rbuf_u32(&r);
    conn->id = ferry__rbuf_u64(&r);
    if (r.err || r.left != 0) {
        free(conn);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed address (%zu bytes)", peer->name, len);
    }
    conn->pidfd = ferry__pidfd_open((pid_t)conn->pid);
    if (conn->pidfd < 0 && errno == ESRCH) {
        ferry_status_t st = ferry__error(FERRY_ERR_PEER_LOST, "cuda_ipc: peer '%s' "
                                         "(pid %d) is not running", peer->name,
                                         (int)conn->pid);

        free(conn);
        return st;
    }
    conn->ctx = ctx;
    snprintf(conn->name, sizeof(conn->name), "%s", peer->name);
    *conn_p = conn;
    return FERRY_OK;
}

static void ci_map_close(ci_ctx_t *ctx, ci_map_t *m)
{
    const ferry__cuda_t *cu = ctx->cu;

    if (m->type == CI_LEGACY) {
        for (int d = 0; d < ctx->ndevs; d++) {
            const ci_open_t *o = &m->opens[d];

            if (o->ptr != 0 && ferry__cuda_push(o->in) == FERRY_OK) {
                cu->cuIpcCloseMemHandle(o->ptr);
                ferry__cuda_pop();
            }
        }
        free(m->opens);
    } else if (m->type == CI_VMM && ferry__cuda_push(m->device) == FERRY_OK) {
        cu->cuMemUnmap(m->lbase, m->reserved);
        cu->cuMemAddressFree(m->lbase, m->reserved);
        ferry__cuda_pop();
    }
}

static ferry_status_t ci_conn_abort(void *vctx, void *vconn, ferry_status_t why);

static void ci_conn_close(void *vctx, void *vconn)
{
    const ci_ctx_t *ctx = vctx;
    ci_conn_t *conn = vconn;

    /* Copies still queued for it finish first (they are never left to run
     * against a closed connection). Every key was closed before the
     * connection; maps hold no refs here. */
    for (size_t i = 0; i < ctx->count; i++) {
        if (ctx->ring[(ctx->head + i) % ctx->cap].conn == conn) {
            ferry__error(FERRY_ERR_CANCELED, "cuda_ipc: the connection to peer "
                         "'%s' was closed", conn->name);
            (void)ci_conn_abort(vctx, vconn, FERRY_ERR_CANCELED);
            break;
        }
    }
    if (conn->pidfd >= 0)
        close(conn->pidfd);
    free(conn);
}

/*
 * PEER_LOST once the peer's process has ended. Its memory stays mapped here,
 * so a copy would still run: a WRITE into memory that nobody reads any more,
 * a READ of whatever it held when the process died. Asked before each post,
 * but the system is asked (one poll(), 0.3-0.5 us, a few percent of a 1 MiB
 * copy) at most once per CI_LIVENESS_NS: a peer that died less than that
 * before a post may still take it, as if it had died just after. A batch
 * already enqueued when the peer dies finishes the same way.
 */
static ferry_status_t ci_peer_check(ci_conn_t *conn)
{
    uint64_t now;

    if (!conn->dead) {
        now = ferry__now_ns();
        if (now - conn->alive_ns < CI_LIVENESS_NS)
            return FERRY_OK;
        if (ferry__pid_alive(conn->pidfd, (pid_t)conn->pid)) {
            conn->alive_ns = now;
            return FERRY_OK;
        }
        conn->dead = true;
    }
    return ferry__error(FERRY_ERR_PEER_LOST, "cuda_ipc: peer '%s' (pid %d) has "
                        "exited", conn->name, (int)conn->pid);
}

/* One of the owner's exported descriptors, duplicated into this process. */
static ferry_status_t ci_fetch_fd(ci_conn_t *conn, int remote_fd, int *fd_p)
{
    const char *mode = ferry__config_get("FERRY_CUDA_FD_HANDOFF");
    struct sockaddr_un sa;
    socklen_t salen;
    uint32_t want = (uint32_t)remote_fd;
    char ok = 0;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {&ok, 1};
    struct msghdr msg = {0};
    struct timeval tv = {CI_HANDOFF_TIMEOUT_MS / 1000, 0};
    int s, err;

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
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cm.buf;
    msg.msg_controllen = sizeof(cm.buf);
    if (recvmsg(s, &msg, MSG_CMSG_CLOEXEC) != 1 || ok != 1 ||
        CMSG_FIRSTHDR(&msg) == NULL || CMSG_FIRSTHDR(&msg)->cmsg_type != SCM_RIGHTS) {
        err = errno;
        close(s);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' did not hand "
                            "over descriptor %d (%s)", conn->name, remote_fd,
                            ok == 0 ? "it does not export it" : strerror(err));
    }
    memcpy(fd_p, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
    close(s);
    return FERRY_OK;
}

/* Whether device d's copy engines reach the memory of device owner directly
 * (the same device, or peer to peer over NVLink or PCIe). */
static bool ci_reaches(const ferry__cuda_t *cu, int d, int owner)
{
    int can = d == owner;

    if (!can && cu->cuDeviceCanAccessPeer(&can, d, owner) != CUDA_SUCCESS)
        can = 0;
    return can != 0;
}

/* Maps the owner's VMM allocations into one reserved range, same layout,
 * open to its device and to every device here that can reach that one
 * (a batch is copied on the stream of its local GPU memory's device). */
static ferry_status_t ci_map_vmm(ci_conn_t *conn, ci_map_t *m, ferry__rbuf_t *r)
{
    const ferry__cuda_t *cu = conn->ctx->cu;
    uint32_t n = ferry__rbuf_u32(r);
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, m->device},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemAccessDesc *all;
    size_t gran = 0, mapped = 0, nall = 0;
    ferry_status_t st;

    if (r->err || n == 0 || n > CI_MAX_CHUNKS || r->left != (size_t)n * 20)
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed VMM export", conn->name);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = access.location;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    FERRY_CHECK(FERRY__CU(cu, cuMemGetAllocationGranularity,
                          (&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)));
    m->reserved = (m->size + gran - 1) / gran * gran;
    FERRY_CHECK(FERRY__CU(cu, cuMemAddressReserve, (&m->lbase, m->reserved, gran, 0, 0)));
    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = ferry__rbuf_u64(r), size = ferry__rbuf_u64(r);
        int rfd = (int)ferry__rbuf_u32(r), fd = -1;
        CUmemGenericAllocationHandle h;

        if (off != mapped || size == 0 || size > m->size - off) {
            st = ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent an "
                              "inconsistent VMM layout", conn->name);
            goto err;
        }
        FERRY_CHECK_GOTO(ci_fetch_fd(conn, rfd, &fd), st, err);
        st = FERRY__CU(cu, cuMemImportFromShareableHandle,
                       (&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
        close(fd);
        if (st < 0)
            goto err;
        /* The mapping keeps the allocation alive; the handle can go. */
        st = FERRY__CU(cu, cuMemMap, (m->lbase + off, size, 0, h, 0));
        cu->cuMemRelease(h);
        if (st < 0)
            goto err;
        mapped += size;
    }
    if (mapped != m->size) {
        st = ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a VMM "
                          "layout that does not cover its allocation", conn->name);
        goto err;
    }
    all = calloc((size_t)conn->ctx->ndevs, sizeof(*all));
    if (all == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
        goto err;
    }
    for (int d = 0; d < conn->ctx->ndevs; d++) {
        if (ci_reaches(cu, d, m->device)) {
            all[nall] = access;
            all[nall++].location.id = d;
        }
    }
    st = FERRY__CU(cu, cuMemSetAccess, (m->lbase, m->size, all, nall));
    free(all);
    if (st < 0)
        goto err;
    return FERRY_OK;

err:
    if (mapped > 0)
        cu->cuMemUnmap(m->lbase, mapped);
    cu->cuMemAddressFree(m->lbase, m->reserved);
    return st;
}

static ferry_status_t ci_map_open(ci_conn_t *conn, const uint8_t *data, size_t len,
                                  ci_map_t **map_p)
{
    ci_ctx_t *ctx = conn->ctx;
    ferry__rbuf_t r;
    const uint8_t *uuid;
    ci_map_t *m;
    ferry_status_t st;
    int type, device = -1;

    for (m = conn->maps; m != NULL; m = m->next) {
        if (m->keylen == len && memcmp(m->key, data, len) == 0) {
            m->refs++;
            *map_p = m;
            return FERRY_OK;
        }
    }
    ferry__rbuf_init(&r, data, len);
    type = ferry__rbuf_u8(&r);
    ferry__rbuf_u8(&r);
    ferry__rbuf_u16(&r);
    uuid = ferry__rbuf_bytes(&r, 16);
    m = calloc(1, sizeof(*m) + len);
    if (m == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    m->rbase = ferry__rbuf_u64(&r);
    m->size = ferry__rbuf_u64(&r);
    if (r.err || (type != CI_LEGACY && type != CI_VMM) || m->size == 0 ||
        m->rbase + m->size < m->rbase ||
        (type == CI_LEGACY && r.left != sizeof(CUipcMemHandle))) {
        free(m);
        return ferry__error(FERRY_ERR_PROTOCOL, "cuda_ipc: peer '%s' sent a "
                            "malformed export", conn->name);
    }
    for (int d = 0; d < ctx->ndevs && device < 0; d++)
        if (memcmp(ctx->uuids[d].bytes, uuid, 16) == 0)
            device = d;
    if (device < 0) {
        free(m);
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: peer '%s' has its "
                            "memory on a GPU this process cannot see "
                            "(CUDA_VISIBLE_DEVICES?)", conn->name);
    }
    m->type = type;
    m->device = device;
    if (conn->pid == ctx->pid && conn->id == ctx->id) {
        /* The agent's own memory (a loopback peer): it is mapped already,
         * and CUDA refuses to open a process's own IPC handle. */
        m->type = CI_SELF;
        m->lbase = m->rbase;
        st = FERRY_OK;
        goto done;
    }
    if (type == CI_LEGACY) {
        /* Opened at prepare, in the context of the device that copies
         * (ci_prepare). */
        memcpy(m->ipc.reserved, ferry__rbuf_bytes(&r, sizeof(m->ipc.reserved)),
               sizeof(m->ipc.reserved));
        m->opens = calloc((size_t)ctx->ndevs, sizeof(*m->opens));
        st = m->opens != NULL ? FERRY_OK
                              : ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    } else {
        FERRY_CHECK_GOTO(ferry__cuda_push(device), st, err);
        st = ci_map_vmm(conn, m, &r);
        ferry__cuda_pop();
    }
    if (st < 0)
        goto err;
done:
    m->refs = 1;
    m->keylen = len;
    memcpy(m->key, data, len);
    m->next = conn->maps;
    conn->maps = m;
    *map_p = m;
    return FERRY_OK;

err:
    free(m);
    return st;
}

static ferry_status_t ci_rkey_open(void *vctx, void *vconn, const uint8_t *data,
                                   size_t len, void **rkey_p)
{
    ci_ctx_t *ctx = vctx;
    ci_rkey_t *rk;
    ferry_status_t st;

    FERRY_CHECK(ci_cuda(ctx));
    rk = calloc(1, sizeof(*rk));
    if (rk == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    rk->conn = vconn;
    st = ci_map_open(vconn, data, len, &rk->map);
    if (st < 0) {
        free(rk);
        return st;
    }
    *rkey_p = rk;
    return FERRY_OK;
}

static void ci_rkey_close(void *vctx, void *vrkey)
{
    ci_rkey_t *rk = vrkey;
    ci_map_t **pp;

    if (--rk->map->refs == 0) {
        for (pp = &rk->conn->maps; *pp != rk->map; pp = &(*pp)->next)
            ;
        *pp = rk->map->next;
        ci_map_close(vctx, rk->map);
        free(rk->map);
    }
    free(rk);
}

/* ------------------------------------------------------------------------ */
/* Transfers                                                                */
/* ------------------------------------------------------------------------ */

static ferry_status_t ci_event_get(ci_ctx_t *ctx, int device, CUevent *ev_p)
{
    ci_dev_t *d = &ctx->devs[device];

    if (d->nevents > 0) {
        *ev_p = d->events[--d->nevents];
        return FERRY_OK;
    }
    return FERRY__CU(ctx->cu, cuEventCreate, (ev_p, CU_EVENT_DISABLE_TIMING));
}

static void ci_event_put(ci_ctx_t *ctx, int device, CUevent ev)
{
    ci_dev_t *d = &ctx->devs[device];

    if (ci_grow(&d->events, &d->capevents, d->nevents, sizeof(CUevent)))
        d->events[d->nevents++] = ev;
    else
        ctx->cu->cuEventDestroy(ev);
}

static ferry_status_t ci_ring_reserve(ci_ctx_t *ctx)
{
    ci_batch_t *grown;
    size_t cap;

    if (ctx->count < ctx->cap)
        return FERRY_OK;
    cap = ctx->cap ? ctx->cap * 2 : 64;
    grown = malloc(cap * sizeof(*grown));
    if (grown == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    for (size_t i = 0; i < ctx->count; i++)
        grown[i] = ctx->ring[(ctx->head + i) % ctx->cap];
    free(ctx->ring);
    ctx->ring = grown;
    ctx->head = 0;
    ctx->cap = cap;
    return FERRY_OK;
}

/* The address of a segment's remote end for copies on device's stream. */
static CUdeviceptr ci_remote_ptr(const ferry__bk_seg_t *s, int device)
{
    const ci_map_t *m = ((const ci_rkey_t *)s->rkey)->map;

    return (m->type == CI_LEGACY ? m->opens[device].ptr : m->lbase) +
           (s->raddr - m->rbase);
}

/*
 * The device whose stream copies a batch: its first local region's, when
 * that is GPU memory (the application produced or will consume it in
 * that device's stream order, and that device's engine always reaches it,
 * VMM memory included), else the peer region's device. The peer's memory is
 * opened for that device (ci_prepare) or mapped for every device that can
 * reach it (ci_map_vmm); with one GPU both devices are the same.
 */
static int ci_copy_device(const ferry__bk_seg_t *s)
{
    const ci_reg_t *reg = s->lreg;

    if (reg != NULL && reg->type != CI_HOST)
        return reg->device;
    return ((const ci_rkey_t *)s->rkey)->map->device;
}

/*
 * Opens a legacy export for the copies of device d's stream. In d's own
 * context, with peer access enabled on the way, the copy engines reach the
 * owner's device directly (NVLink or PCIe peer to peer); opened in the
 * owner device's context instead, a copy from d would be staged through
 * host memory. That remains the way for a device that cannot reach the
 * owner's.
 */
static ferry_status_t ci_open_legacy(ci_ctx_t *ctx, ci_map_t *m, int d)
{
    ci_open_t *o = &m->opens[d];
    ferry_status_t st;

    if (o->ptr != 0)
        return FERRY_OK;
    o->in = ci_reaches(ctx->cu, d, m->device) ? d : m->device;
    FERRY_CHECK(ferry__cuda_push(o->in));
    st = FERRY__CU(ctx->cu, cuIpcOpenMemHandle,
                   (&o->ptr, m->ipc, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    ferry__cuda_pop();
    if (st < 0)
        o->ptr = 0;
    return st;
}

/* Opens the legacy exports of one request's segments where its posts will
 * copy them (ci_copy_device). */
static ferry_status_t ci_prepare(void *vctx, void *vconn, const ferry__bk_seg_t *segs,
                                 size_t n, void **plan_p)
{
    ci_ctx_t *ctx = vctx;
    int device = ci_copy_device(&segs[0]);

    (void)vconn;
    *plan_p = NULL;
    FERRY_CHECK(ci_peer_check(((ci_rkey_t *)segs[0].rkey)->conn));
    for (size_t i = 0; i < n; i++) {
        ci_map_t *m = ((ci_rkey_t *)segs[i].rkey)->map;

        if (m->type == CI_LEGACY)
            FERRY_CHECK(ci_open_legacy(ctx, m, device));
    }
    return FERRY_OK;
}

/* Enqueues the segments' copies on stream, device's, stopping at the first
 * that fails; the caller has pushed the device's context. */
static ferry_status_t ci_enqueue(const ferry__cuda_t *cu, ferry_xfer_op_t op,
                                 const ferry__bk_seg_t *segs, size_t n,
                                 int device, CUstream stream)
{
    for (size_t i = 0; i < n; i++) {
        CUdeviceptr l = (CUdeviceptr)segs[i].laddr, r = ci_remote_ptr(&segs[i], device);
        ferry_status_t st =
            op == FERRY_OP_WRITE
                ? FERRY__CU(cu, cuMemcpyAsync, (r, l, segs[i].len, stream))
                : FERRY__CU(cu, cuMemcpyAsync, (l, r, segs[i].len, stream));

        if (st < 0) {
            ferry__error_prefix("cuda_ipc: segment %zu", i);
            return st;
        }
    }
    return FERRY_OK;
}

static ferry_status_t ci_post(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                              const ferry__bk_seg_t *segs, size_t n,
                              ferry__bk_done_cb cb, void *arg)
{
    ci_ctx_t *ctx = vctx;
    const ferry__cuda_t *cu = ctx->cu;
    int device = ci_copy_device(&segs[0]);
    ci_batch_t *b;
    CUstream stream;
    CUevent ev = NULL;
    ferry_status_t st;

    (void)plan;
    FERRY_CHECK(ci_peer_check(vconn));
    FERRY_CHECK(ci_ring_reserve(ctx));
    FERRY_CHECK(ferry__cuda_push(device));
    FERRY_CHECK_GOTO(ci_stream(ctx, device, &stream), st, out);
    FERRY_CHECK_GOTO(ci_event_get(ctx, device, &ev), st, out);
    /* Nothing may stay in flight after an error: out_sync waits for the
     * copies enqueued before the one that failed. */
    FERRY_CHECK_GOTO(ci_enqueue(cu, op, segs, n, device, stream), st, out_sync);
    FERRY_CHECK_GOTO(FERRY__CU(cu, cuEventRecord, (ev, stream)), st, out_sync);
    b = &ctx->ring[(ctx->head + ctx->count++) % ctx->cap];
    *b = (ci_batch_t){ev, device, vconn, cb, arg};
    ferry__cuda_pop();
    return FERRY_IN_PROGRESS;

out_sync:
    cu->cuStreamSynchronize(stream);
    ci_event_put(ctx, device, ev);
out:
    ferry__cuda_pop();
    return st;
}

static ferry_status_t ci_post_stream(void *vctx, void *vconn, void *plan,
                                     ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                     size_t n, void *stream)
{
    ci_ctx_t *ctx = vctx;
    int device = ci_copy_device(&segs[0]);
    ferry_status_t st;

    (void)plan;
    FERRY_CHECK(ci_peer_check(vconn));
    FERRY_CHECK(ferry__cuda_push(device));
    st = ci_enqueue(ctx->cu, op, segs, n, device, (CUstream)stream);
    ferry__cuda_pop();
    return st;
}

static unsigned ci_progress(void *vctx)
{
    ci_ctx_t *ctx = vctx;
    unsigned done = 0;
    uint64_t v;

    /* The fd is drained only after a host function wrote it, so polling
     * costs no system call. */
    if (atomic_exchange(&ctx->notified, false) &&
        read(ctx->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        ferry__debug("cuda_ipc: eventfd: %s", strerror(errno));
    while (ctx->count > 0) {
        ci_batch_t b = ctx->ring[ctx->head];
        CUresult res;

        if (ferry__cuda_push(b.device) != FERRY_OK)
            break;
        res = ctx->cu->cuEventQuery(b.event);
        ferry__cuda_pop();
        if (res == CUDA_ERROR_NOT_READY)
            break;
        ctx->head = (ctx->head + 1) % ctx->cap;
        ctx->count--;
        ci_event_put(ctx, b.device, b.event);
        b.conn->events++;
        b.cb(b.arg, ferry__cuda_check(res, "cuEventQuery (a copy failed)"));
        done++;
    }
    return done;
}

static int ci_event_fd(void *vctx)
{
    return ((ci_ctx_t *)vctx)->evfd;
}

/* Runs on a CUDA thread once the stream reaches it: no CUDA calls here. */
static void ci_notify(void *arg)
{
    ci_ctx_t *ctx = arg;
    uint64_t one = 1;

    atomic_store(&ctx->notified, true);
    atomic_store(&ctx->notify_pending, false);
    if (write(ctx->evfd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: the fd is readable anyway. */
    }
}

static ferry_status_t ci_arm(void *vctx)
{
    ci_ctx_t *ctx = vctx;
    ci_batch_t *b;
    CUresult res;
    ferry_status_t st;

    if (ctx->count == 0)
        return FERRY_OK;
    b = &ctx->ring[ctx->head];
    FERRY_CHECK(ferry__cuda_push(b->device));
    res = ctx->cu->cuEventQuery(b->event);
    if (res != CUDA_ERROR_NOT_READY) {
        ferry__cuda_pop();
        return ferry__error(FERRY_ERR_BUSY, "cuda_ipc: a batch has finished");
    }
    st = FERRY_OK;
    if (!atomic_exchange(&ctx->notify_pending, true)) {
        st = FERRY__CU(ctx->cu, cuLaunchHostFunc,
                       (ctx->devs[b->device].stream, ci_notify, ctx));
        if (st < 0)
            atomic_store(&ctx->notify_pending, false);
    }
    ferry__cuda_pop();
    return st;
}

/*
 * A copy engine cannot be told to stop a copy, but every copy finishes on
 * its own, quickly: wait for the streams, then end the connection's
 * batches with why. Nothing touches their memory afterwards.
 */
static ferry_status_t ci_conn_abort(void *vctx, void *vconn, ferry_status_t why)
{
    ci_ctx_t *ctx = vctx;
    size_t kept = 0, n = ctx->count;

    if (n == 0)
        return FERRY_OK;
    for (int d = 0; d < ctx->ndevs; d++) {
        if (ctx->devs[d].stream != NULL && ferry__cuda_push(d) == FERRY_OK) {
            ctx->cu->cuStreamSynchronize(ctx->devs[d].stream);
            ferry__cuda_pop();
        }
    }
    /* Keep the other connections' batches in order; end this one's. */
    for (size_t i = 0; i < n; i++) {
        ci_batch_t b = ctx->ring[(ctx->head + i) % ctx->cap];

        if (b.conn != vconn) {
            ctx->ring[(ctx->head + kept++) % ctx->cap] = b;
            continue;
        }
        ctx->count--;
        ci_event_put(ctx, b.device, b.event);
        b.cb(b.arg, why);
    }
    return FERRY_OK;
}

static uint64_t ci_conn_events(void *vctx, void *vconn)
{
    (void)vctx;
    return ((ci_conn_t *)vconn)->events;
}

/*
 * GPU memory that any peer on this host can map: one physical allocation
 * (cuMemCreate, with the POSIX file descriptor handle type) mapped into a
 * reserved range, on the device of the caller's current context (device 0
 * when there is none).
 */
static ferry_status_t ci_mem_alloc(void *vctx, size_t len, ferry_mem_kind_t kind,
                                   void **addr_p)
{
    ci_ctx_t *ctx = vctx;
    const ferry__cuda_t *cu;
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, 0},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUdevice dev = 0;
    size_t gran = 0;
    ci_alloc_t *a;
    ferry_status_t st;

    if (kind != FERRY_MEM_CUDA)
        return ferry__error(FERRY_ERR_UNSUPPORTED, "cuda_ipc: allocates GPU memory "
                            "only");
    FERRY_CHECK(ci_cuda(ctx));
    cu = ctx->cu;
    if (cu->cuCtxGetDevice(&dev) != CUDA_SUCCESS)
        dev = 0;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "cuda_ipc: no memory");
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    access.location.id = dev;
    FERRY_CHECK_GOTO(ferry__cuda_push(dev), st, err_free);
    st = FERRY__CU(cu, cuMemGetAllocationGranularity,
                   (&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    if (st == FERRY_OK) {
        a->size = (len + gran - 1) / gran * gran;
        st = FERRY__CU(cu, cuMemCreate, (&a->h, a->size, &prop, 0));
    }
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuMemAddressReserve, (&a->va, a->size, gran, 0, 0));
        if (st < 0)
            cu->cuMemRelease(a->h);
    }
    if (st == FERRY_OK) {
        st = FERRY__CU(cu, cuMemMap, (a->va, a->size, 0, a->h, 0));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuMemSetAccess, (a->va, a->size, &access, 1));
        if (st < 0)
            ci_alloc_unmap(cu, a);
    }
    ferry__cuda_pop();
    if (st < 0)
        goto err_free;
    a->next = ctx->allocs;
    ctx->allocs = a;
    *addr_p = (void *)(uintptr_t)a->va;
    return FERRY_OK;

err_free:
    free(a);
    return st;
}

static ferry_status_t ci_mem_free(void *vctx, void *addr)
{
    ci_ctx_t *ctx = vctx;
    ci_alloc_t **pa, *a;

    for (pa = &ctx->allocs; *pa != NULL && (*pa)->va != (CUdeviceptr)(uintptr_t)addr;
         pa = &(*pa)->next)
        ;
    a = *pa;
    if (a == NULL)
        return ferry__error(FERRY_ERR_NOT_FOUND, "cuda_ipc: %p starts no allocation",
                            addr);
    if (a->regs > 0)
        return ferry__error(FERRY_ERR_BUSY, "cuda_ipc: %u registration(s) still use "
                            "the allocation at %p", a->regs, addr);
    *pa = a->next;
    ci_alloc_unmap(ctx->cu, a);
    free(a);
    return FERRY_OK;
}

const ferry__backend_ops_t ferry__cuda_ipc_ops = {
    .size = sizeof(ferry__backend_ops_t),
    .name = "cuda_ipc",
    .id = FERRY__BK_CUDA_IPC,
    .flags = FERRY__BK_SAME_HOST_ONLY | FERRY__BK_STREAM_COPIES,
    .init = ci_init,
    .fini = ci_fini,
    .supports_kind = ci_supports_kind,
    .pack_address = ci_pack_address,
    .mem_register = ci_mem_register,
    .mem_pack = ci_mem_pack,
    .mem_deregister = ci_mem_deregister,
    .conn_open = ci_conn_open,
    .conn_close = ci_conn_close,
    .rkey_open = ci_rkey_open,
    .rkey_close = ci_rkey_close,
    .prepare = ci_prepare,
    .unprepare = ferry__bk_unprepare_nothing,
    .post = ci_post,
    .run = ferry__bk_run_unsupported,
    .progress = ci_progress,
    .event_fd = ci_event_fd,
    .arm = ci_arm,
    .conn_abort = ci_conn_abort,
    .conn_events = ci_conn_events,
    .post_stream = ci_post_stream,
    .mem_alloc = ci_mem_alloc,
    .mem_free = ci_mem_free,
};
