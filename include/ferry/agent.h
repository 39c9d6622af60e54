/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/agent.h: agents and the memory they move. The descriptor of a range
 * of memory, the handle types, creating and destroying an agent, driving
 * its transports (or sleeping on its file descriptor until they need it),
 * and registering, allocating and freeing the memory that its transfers
 * use. Part of <ferry.h>.
 */
#ifndef FERRY_AGENT_H
#define FERRY_AGENT_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Descriptors                                                              */
/* ------------------------------------------------------------------------ */

typedef enum ferry_mem_kind {
    FERRY_MEM_AUTO = 0, /* let the library detect the kind */
    FERRY_MEM_HOST = 1, /* ordinary (pageable or pinned) host memory */
    FERRY_MEM_CUDA = 2  /* CUDA device memory */
} ferry_mem_kind_t;

/*
 * A contiguous range of memory. The same struct describes local and remote
 * memory: addr is always in the owner's address space. device is the GPU
 * ordinal (as the owner's CUDA numbers its visible devices) for
 * FERRY_MEM_CUDA and ignored for host memory. FERRY_MEM_AUTO asks
 * ferry_mem_register() to find out (CUDA pointer attributes, when this
 * process has loaded the CUDA driver; host memory otherwise); elsewhere it
 * matches either kind.
 */
typedef struct ferry_desc {
    uint64_t addr;
    uint64_t len;
    ferry_mem_kind_t kind;
    int32_t device;
} ferry_desc_t;

/* ------------------------------------------------------------------------ */
/* Agent                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct ferry_agent ferry_agent_t;
typedef struct ferry_mem ferry_mem_t;
typedef struct ferry_peer ferry_peer_t;
typedef struct ferry_xfer ferry_xfer_t;

enum {
    FERRY_AGENT_PARAM_NAME = 1u << 0,
    FERRY_AGENT_PARAM_PROGRESS_THREAD = 1u << 1,
    FERRY_AGENT_PARAM_STALL_TIMEOUT = 1u << 2,
    FERRY_AGENT_PARAM_SECRET = 1u << 3,
    FERRY_AGENT_PARAM_NOTIF_QUEUE = 1u << 4
};

typedef struct ferry_agent_params {
    uint64_t field_mask;
    /*
     * FERRY_AGENT_PARAM_NAME: the agent's name, which identifies it to its
     * peers (1 to 255 bytes, copied). Loading a blob whose name is already
     * known replaces that peer's metadata. Default: "<hostname>:<pid>".
     */
    const char *name;
    /*
     * FERRY_AGENT_PARAM_PROGRESS_THREAD: non-zero starts one thread that
     * sleeps on the agent's events and drives its transports, so that
     * requests complete, and peers' operations on this agent's memory are
     * served, while the application does something else. Before reading
     * memory that peers wrote (after learning by other means that they
     * did), and before letting peers write it again, make a call on the
     * agent, e.g. ferry_agent_progress(): its lock orders the application's
     * thread with the progress thread's copies. Default: 0.
     */
    int progress_thread;
    /*
     * FERRY_AGENT_PARAM_STALL_TIMEOUT: a request in flight whose transport
     * makes no headway for this many nanoseconds ends with
     * FERRY_ERR_TIMEOUT, as if canceled (see ferry_xfer_cancel(): its
     * connection is closed, so every request in flight to that peer ends
     * too, and nothing touches their memory afterwards). Headway is any
     * event the transport handles for that peer (a fragment sent, an
     * acknowledgement received); a stopped or unreachable peer makes none,
     * a busy one does. A staged request that waits for bounce buffers
     * which requests to other peers hold is not stalled either
     * (docs/STAGING.md). The check runs in progress (ferry_xfer_wait, test,
     * ferry_agent_progress or the progress thread), every stall/8 or 10 ms,
     * whichever is shorter. 0 means never. Default: FERRY_XFER_STALL_MS
     * milliseconds (10 000 unless set in the environment). UCX's keepalive
     * checks would count as headway, so ferry turns them off; a
     * UCX_KEEPALIVE_INTERVAL set in the environment is honoured, and its
     * checks then put the stall timeout off.
     */
    uint64_t stall_timeout_ns;
    /*
     * FERRY_AGENT_PARAM_SECRET: the job secret, a string shared by the
     * members of a job (16 bytes at least; ferry-run makes 64 random hex
     * digits), or NULL or "" for none. With a secret, ferry_md_pack() seals
     * every blob with HMAC-SHA-256 and ferry_peer_load() refuses, with
     * FERRY_ERR_PROTOCOL, a blob that is not sealed with the same secret.
     * Without one, any blob that parses loads: see ferry_peer_load() for
     * what is then trusted. Default: FERRY_JOB_SECRET from the environment
     * (none when unset).
     */
    const char *secret;
    /*
     * FERRY_AGENT_PARAM_NOTIF_QUEUE: how many received notifications
     * (ferry/notif.h) the agent keeps until they are drained, at least 1;
     * one more that arrives is dropped and counted. Default: FERRY_NOTIF_QUEUE
     * (4096 unless set in the environment).
     */
    size_t notif_queue;
} ferry_agent_params_t;

/*
 * Creates an agent: its transport backends (UCX), its registrations and its
 * peers. params may be NULL. On success *agent_p holds the new agent.
 * Returns FERRY_ERR_INVALID for a bad name or a secret shorter than 16
 * bytes, FERRY_ERR_BACKEND when UCX cannot
 * start. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_create(const ferry_agent_params_t *params,
                                            ferry_agent_t **agent_p);

/*
 * Destroys an agent with everything it still owns: requests (in flight ones
 * are canceled first, see ferry_xfer_release()), peers and registrations.
 * The connections of peers, forgotten before or now, whose polite close is
 * still under way (ferry_peer_forget()) are driven until each ends or its
 * second runs out, so that notifications still queued may leave: destroy
 * takes up to a second longer when a peer does not answer (it is stopped).
 * Accepts NULL. No other thread may use the agent or its objects meanwhile.
 */
FERRY_API void ferry_agent_destroy(ferry_agent_t *agent);

/* Returns the agent's name; valid for the agent's lifetime. Any thread. */
FERRY_API const char *ferry_agent_name(const ferry_agent_t *agent);

/*
 * Drives the agent's transports without blocking: completes whatever
 * requests can complete, serves peers' operations on this agent's memory,
 * and notices same-host peers whose process has ended. A peer's staged
 * transfers into or out of this agent's memory (GPU memory from another
 * host without CUDA-aware UCX: ferry/xfer.h) move only while the agent is
 * driven, by this call, a wait or the progress thread. Returns FERRY_OK
 * when nothing is left to do, after which ferry_agent_fd() becomes readable
 * when there is; FERRY_IN_PROGRESS when more work is pending (call again
 * before sleeping); FERRY_ERR_INVALID for a NULL agent. Any thread.
 *
 * FERRY_OK also when the transports hold work that more calls would not
 * move, so that a loop calling this until FERRY_OK never spins: UCX 1.13
 * keeps a reply queued for a peer that no longer reads it (an initiator
 * that canceled a transfer and then stopped, exited or destroyed its
 * agent; a peer that is stopped), and cannot then be armed to wake the fd.
 * In that case, once ferry_agent_fd() was taken and without a progress
 * thread, the fd becomes readable after a short nap instead: 1 ms, doubling
 * to 16 ms while nothing moves, as ferry's own waits retry. A loop that
 * sleeps on the fd, calls this until FERRY_OK and sleeps again thus polls
 * at that pace for as long as the state lasts (which can be the rest of
 * the process's life) and serves new work within a nap. The same nap
 * wakes it while a forgotten peer's connection closes (ferry_peer_forget()),
 * which only this agent's progress moves on.
 */
FERRY_API ferry_status_t ferry_agent_progress(ferry_agent_t *agent);

/*
 * Writes to *fd_p a file descriptor, owned by the agent, for an epoll,
 * poll, libuv or asyncio loop. Without a progress thread it becomes
 * readable when ferry_agent_progress() has work to do, the completion
 * queue holds entries, or received notifications wait (ferry/notif.h):
 * wait for it to be readable (or for a timeout of your choosing), call
 * ferry_agent_progress() until it returns FERRY_OK, then drain
 * ferry_agent_completions() and ferry_notif_drain(). Once this function
 * has been called, ferry_agent_progress() arms the transports each time it
 * finds nothing to do (a few microseconds, and peers then signal their
 * messages), so call it only to sleep on the fd. With a progress thread,
 * which does the progress itself, the fd is readable exactly while the
 * completion queue holds entries or received notifications wait. Do not
 * read from the fd or close it. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_fd(ferry_agent_t *agent, int *fd_p);

/* ------------------------------------------------------------------------ */
/* Memory registration                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Registers n descriptors (n >= 1) with the agent as one handle. Each
 * descriptor becomes a region that local requests may use and that
 * ferry_md_pack() advertises to peers. Regions may overlap earlier ones.
 * Returns FERRY_ERR_INVALID for n == 0, a zero length, a zero address, or
 * addr + len overflowing (the detail text names the descriptor index);
 * FERRY_ERR_UNSUPPORTED for a memory kind no backend of this build can
 * register; FERRY_ERR_BACKEND if the transport refuses the memory. Any
 * thread.
 *
 * GPU memory (FERRY_MEM_CUDA, or AUTO on device memory) needs the CUDA
 * driver, loaded on first use: without one the result is
 * FERRY_ERR_UNSUPPORTED ("no CUDA driver was found"). The address must be
 * device memory of the given device (else FERRY_ERR_INVALID), from
 * cuMemAlloc/cudaMalloc or from cuMemCreate + cuMemMap with the POSIX file
 * descriptor handle type (PyTorch's expandable segments); CUDA shares whole
 * allocations, so a descriptor of cuMemAlloc memory must lie inside one
 * allocation (FERRY_ERR_INVALID otherwise), while VMM memory may span
 * several physical allocations mapped back to back. In a process that uses
 * CUDA, host memory is page-locked while registered (FERRY_CUDA_PIN_HOST),
 * so that host <-> GPU copies run at full speed.
 */
FERRY_API ferry_status_t ferry_mem_register(ferry_agent_t *agent,
                                            const ferry_desc_t *descs,
                                            size_t n, ferry_mem_t **mem_p);

/*
 * Deregisters a handle from ferry_mem_register() and frees it. Returns
 * FERRY_ERR_BUSY (and changes nothing) while a posted, unfinished request
 * uses any of its regions. Requests prepared on it but not in flight stay
 * valid objects; posting them afterwards returns FERRY_ERR_NOT_REGISTERED,
 * and registering the same range again does not revive them.
 *
 * Deregistration does not revoke peers' access. Blobs packed afterwards no
 * longer advertise the regions, but a peer that loaded an earlier blob
 * keeps its keys, and its requests prepared on them still reach the
 * memory: on the same host UCX copies with process_vm_writev (cma) or
 * through the mapped segment of ferry_mem_alloc() memory, which needs no
 * registration, and nothing is torn down until the memory itself is freed.
 * Tell peers, through the application's own protocol, before reusing
 * memory they may still write. Accepts NULL (returns FERRY_OK). Any thread.
 */
FERRY_API ferry_status_t ferry_mem_deregister(ferry_mem_t *mem);

/*
 * Allocates len bytes (len >= 1) of memory of the given kind (FERRY_MEM_HOST
 * or FERRY_MEM_CUDA) that the agent's transports move fastest, and writes
 * its address to *addr_p. Host memory comes from UCX's own allocator
 * (shared memory on one host), which peers on the same host read and write
 * with one direct copy; UCX 1.13 can only emulate one-sided transfers on
 * memory it did not allocate, with a copy on each side and the target's
 * CPU, several times slower. GPU memory is one cuMemCreate allocation
 * with a shareable (POSIX file descriptor) handle, on the device of the
 * calling thread's current CUDA context (device 0 without one), which peers
 * on the same host map through CUDA IPC. The memory is not registered: register any
 * range inside it with ferry_mem_register() before use. Its contents are
 * undefined, and it lives until ferry_mem_free() or the agent's
 * destruction. Returns FERRY_ERR_INVALID for a NULL argument, a
 * zero length or a kind other than HOST or CUDA; FERRY_ERR_UNSUPPORTED for
 * a kind no backend can allocate here (CUDA memory without a CUDA driver:
 * "no CUDA driver was found"); FERRY_ERR_NO_MEMORY or FERRY_ERR_BACKEND when the
 * transport cannot allocate it. Any thread.
 */
FERRY_API ferry_status_t ferry_mem_alloc(ferry_agent_t *agent, size_t len,
                                         ferry_mem_kind_t kind, void **addr_p);

/*
 * Frees memory from ferry_mem_alloc() on the same agent. Returns FERRY_OK
 * (also for a NULL addr), FERRY_ERR_BUSY (and frees nothing) while
 * registrations inside it remain (deregister them first),
 * FERRY_ERR_NOT_FOUND for an address that ferry_mem_alloc() did not return
 * on this agent or that was freed already, FERRY_ERR_INVALID for a NULL
 * agent. GPU memory is freed once its device's work has ended, as
 * cudaFree() does: kernels and copies still queued on the device finish
 * first (the call waits for them, without holding the agent's lock, so
 * stream-ordered requests of a progress thread still end). The agent's
 * destruction frees what is left without waiting: free GPU memory that
 * work may still use before it. Any thread.
 */
FERRY_API ferry_status_t ferry_mem_free(ferry_agent_t *agent, void *addr);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_AGENT_H */
