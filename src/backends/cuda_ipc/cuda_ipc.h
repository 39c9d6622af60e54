/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA IPC backend's private header: the types its files share (the
 * context with its devices and its ring of batches in flight, registrations
 * and allocations on the owner side, connections, mapped exports and keys
 * on the importer side) and the functions one file offers the others. The
 * files: cuda_ipc.c (the context and the ops table), handoff.c (the
 * descriptor hand-off, both ends), export.c (registrations and
 * allocations), import.c (connections, mapping peers' exports, keys),
 * xfer.c (copies, their completion and sleeping on it). Not installed; the
 * core sees only the ops table (backends/backend.h).
 */
#ifndef FERRY_BACKENDS_CUDA_IPC_CUDA_IPC_H
#define FERRY_BACKENDS_CUDA_IPC_CUDA_IPC_H

#include "backends/backend.h"
#include "cuda/copy.h"
#include "cuda/cuda.h"
#include "util/list.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { CI_HOST = 0, CI_LEGACY = 1, CI_VMM = 2, CI_SELF = 3 /* importer only */ };

/* The most physical allocations one region may span. */
#define CI_MAX_CHUNKS 65536

typedef struct ci_chunk {
    uint64_t off, size;             /* within the region's allocation range */
    int fd;                         /* exported descriptor (owner side) */
    CUmemGenericAllocationHandle h; /* retained handle (owner side) */
} ci_chunk_t;

/* GPU memory from mem_alloc(): VMM memory with a shareable handle. */
typedef struct ci_alloc {
    ferry__list_t link;        /* ctx->allocs */
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
    bool mapped;               /* host: kernels reach it at its address */
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
    ferry__list_t link;        /* conn->maps */
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
    ferry__list_t maps;        /* ci_map_t */
} ci_conn_t;

typedef struct ci_rkey {
    ci_conn_t *conn;
    ci_map_t *map;
} ci_rkey_t;

/* What a prepared request keeps (plan.c): the kernel's table and the
 * segments left to the copy engines. NULL when the engines copy all. */
typedef struct ci_plan {
    int device;                /* the copying device */
    CUfunction fn;             /* the copy kernel */
    CUdeviceptr table;         /* its entries, in device's memory */
    unsigned nentries, blocks;
    size_t nengine;            /* segments the engines copy: */
    size_t engine[];           /* their indices, in order */
} ci_plan_t;

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

/* A descriptor fetched ahead of its import (handoff.c), or why not. */
typedef struct ci_pf {
    int32_t pid;
    uint64_t id;
    int rfd;                   /* its number in the owner */
    int fd;                    /* here, or -1: the fetch failed with st */
    ferry_status_t st;
    char why[200];
} ci_pf_t;

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
    ferry__list_t allocs;      /* ci_alloc_t */
    /* Descriptors fetched ahead of their import (handoff.c). */
    pthread_mutex_t pf_lock;
    ci_pf_t *pf;
    size_t npf, cappf;
} ci_ctx_t;

/* cuda_ipc.c: the context. */
/* Makes room for one more element in a growing array of *cap elements;
 * arr_p points to the array's pointer (of any object type). */
bool ferry__ci_grow(void *arr_p, size_t *cap, size_t used, size_t elem);
/* Loads CUDA and the per-device state on first use. */
ferry_status_t ferry__ci_cuda(ci_ctx_t *ctx);

/* handoff.c: the descriptor hand-off socket. */
/* Starts the socket and its thread (owner side), once. */
ferry_status_t ferry__ci_server_start(ci_ctx_t *ctx);
void ferry__ci_server_stop(ci_ctx_t *ctx);
/* Adds or removes a descriptor the socket may hand out. */
ferry_status_t ferry__ci_export_add(ci_ctx_t *ctx, int fd);
void ferry__ci_export_del(ci_ctx_t *ctx, int fd);
/* Duplicates the owner's exported descriptor remote_fd (importer side). */
ferry_status_t ferry__ci_fetch_fd(ci_conn_t *conn, int remote_fd, int *fd_p);
/* The ops' rkey_prefetch: a VMM export's descriptors, fetched ahead. */
void ferry__ci_rkey_prefetch(void *vctx, const uint8_t *addr, size_t addr_len,
                             const uint8_t *data, size_t len);
/* The ops' rkey_prefetch_end: closes what the prefetch left of that peer. */
void ferry__ci_rkey_prefetch_end(void *vctx, const uint8_t *addr, size_t addr_len);
/* Closes the descriptors fetched ahead from the owner (pid, id); pid -1:
 * all of them, the context going away. */
void ferry__ci_pf_drop(ci_ctx_t *ctx, int32_t pid, uint64_t id);

/* export.c: registrations and allocations (owner side). */
ferry_status_t ferry__ci_mem_register(void *vctx, const ferry_desc_t *d, void **lreg_p);
ferry_status_t ferry__ci_mem_pack(void *vctx, void *lreg, ferry__wbuf_t *out);
void ferry__ci_mem_deregister(void *vctx, void *lreg);
ferry_status_t ferry__ci_mem_alloc(void *vctx, size_t len, ferry_mem_kind_t kind,
                                   void **addr_p);
ferry_status_t ferry__ci_mem_free(void *vctx, void *addr);
/* Frees the allocations the user left (the context goes away). */
void ferry__ci_allocs_free(ci_ctx_t *ctx);

/* import.c: connections and keys (importer side). */
ferry_status_t ferry__ci_conn_open(void *vctx, const uint8_t *addr, size_t len,
                                   const ferry__bk_peer_t *peer, void **conn_p);
void ferry__ci_conn_close(void *vctx, void *vconn);
ferry_status_t ferry__ci_rkey_open(void *vctx, void *vconn,
                                   const ferry__bk_rregion_t *region, const uint8_t *data,
                                   size_t len, void **rkey_p);
void ferry__ci_rkey_close(void *vctx, void *vrkey);
/* Whether device d's copy engines reach the memory of device owner. */
bool ferry__ci_reaches(const ferry__cuda_t *cu, int d, int owner);

/* The address of a segment's remote end for copies on device's stream. */
static inline CUdeviceptr ferry__ci_remote_ptr(const ferry__bk_seg_t *s, int device)
{
    const ci_map_t *m = ((const ci_rkey_t *)s->rkey)->map;

    return (m->type == CI_LEGACY ? m->opens[device].ptr : m->lbase) +
           (s->raddr - m->rbase);
}

/* plan.c: which segments the copy kernel moves. */
/* Makes the plan of n segments copied on device's stream (the peer's
 * memory already opened for it): *plan_p NULL when the engines copy all. */
ferry_status_t ferry__ci_plan(ci_ctx_t *ctx, const ferry__bk_seg_t *segs, size_t n,
                              int device, ci_plan_t **plan_p);
void ferry__ci_unprepare(void *vctx, void *vplan);

/* xfer.c: copies. */
ferry_status_t ferry__ci_prepare(void *vctx, void *vconn, const ferry__bk_seg_t *segs,
                                 size_t n, void **plan_p);
ferry_status_t ferry__ci_post(void *vctx, void *vconn, void *plan, ferry_xfer_op_t op,
                              const ferry__bk_seg_t *segs, size_t n,
                              ferry__bk_done_cb cb, void *arg);
ferry_status_t ferry__ci_post_stream(void *vctx, void *vconn, void *plan,
                                     ferry_xfer_op_t op, const ferry__bk_seg_t *segs,
                                     size_t n, void *stream);
unsigned ferry__ci_progress(void *vctx);
int ferry__ci_event_fd(void *vctx);
ferry_status_t ferry__ci_arm(void *vctx);
ferry_status_t ferry__ci_conn_abort(void *vctx, void *vconn, ferry_status_t why);
uint64_t ferry__ci_conn_events(void *vctx, void *vconn);

#endif
