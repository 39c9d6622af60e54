/*
 * ferry: one-sided memory transfers between processes, hosts and GPUs.
 *
 * This is the whole public API. A process creates an agent, registers the
 * memory it wants to expose or use, packs a metadata blob that describes that
 * memory, and hands the blob to its peers by any means (a file, a pipe, a
 * rendezvous store). A peer loads the blob, prepares READ or WRITE requests
 * between its own registered memory and the advertised remote memory, and
 * posts each request as many times as it likes, learning of completion by
 * testing or waiting.
 *
 * Conventions that hold for every function below:
 *  - Fallible functions return ferry_status_t: FERRY_OK (0), FERRY_IN_PROGRESS
 *    (1) or a negative FERRY_ERR_* code. On failure ferry_last_error() gives
 *    the calling thread's detail text.
 *  - Output arguments come last, end in _p, and are written only on success.
 *  - Parameter structs begin with field_mask; a field is read only when its
 *    bit is set, and a NULL params pointer means all defaults.
 *  - Destroy-like functions accept NULL.
 *
 * Progress: requests move forward inside ferry calls (post, test, wait,
 * ferry_agent_progress) or on the agent's progress thread when it has one.
 * This holds for targets too: a process whose memory peers READ or WRITE
 * must have a progress thread, or call ferry_agent_progress() (or sleep on
 * ferry_agent_fd()) while they do, because UCX emulates one-sided operations
 * on ordinary user memory between processes of one host with messages that
 * the target's agent handles.
 *
 * Thread safety: every function may be called from any thread. An agent
 * serialises its internal state, so different requests may be prepared,
 * posted, tested and waited on from different threads at once, and memory
 * may be registered while other threads transfer. One request must not be
 * released while another thread still uses it (the caller owns its lifetime),
 * and an agent must not be destroyed while other threads use it or its
 * objects.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* Version of this header. The ABI major is the shared library's SONAME. */
#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Status                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Every status code, with its value and text. Codes are only ever appended
 * to; a value once published never changes meaning.
 */
#define FERRY_STATUS_MAP(X)                                                    \
    X(OK, 0, "success")                                                        \
    X(IN_PROGRESS, 1, "operation in progress")                                 \
    X(ERR_INVALID, -1, "invalid argument")                                     \
    X(ERR_NO_MEMORY, -2, "out of memory")                                      \
    X(ERR_NOT_FOUND, -3, "not found")                                          \
    X(ERR_NOT_REGISTERED, -4, "memory not registered")                         \
    X(ERR_OUT_OF_RANGE, -5, "out of range of a registration")                  \
    X(ERR_MISMATCH, -6, "descriptors do not match")                            \
    X(ERR_UNSUPPORTED, -7, "not supported")                                    \
    X(ERR_BUSY, -8, "busy")                                                    \
    X(ERR_TIMEOUT, -9, "timed out")                                            \
    X(ERR_CANCELED, -10, "canceled")                                           \
    X(ERR_PEER_LOST, -11, "peer lost")                                         \
    X(ERR_ABORTED, -12, "aborted by another rank")                             \
    X(ERR_PROTOCOL, -13, "protocol error (malformed blob or message)")         \
    X(ERR_BACKEND, -14, "transport backend error")                             \
    X(ERR_SYSTEM, -15, "system error")

typedef enum ferry_status {
#define FERRY_STATUS_ENUM_(name, value, text) FERRY_##name = (value),
    FERRY_STATUS_MAP(FERRY_STATUS_ENUM_)
#undef FERRY_STATUS_ENUM_
} ferry_status_t;

/*
 * Returns a static, human-readable text for a status code, or "unknown
 * status" for a value this library does not know. Never returns NULL. Any
 * thread.
 */
FERRY_API const char *ferry_status_str(ferry_status_t status);

/*
 * Returns the detail text of the calling thread's most recent failure (for
 * example "ucx: ucp_ep_rkey_unpack: Invalid parameter (peer 'rank3', region
 * 2)"), or "" if this thread has seen none. The text stays valid until the
 * thread's next failing ferry call. Never returns NULL. Any thread.
 */
FERRY_API const char *ferry_last_error(void);

/* Returns the library's version as "major.minor.patch". Any thread. */
FERRY_API const char *ferry_version(void);

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
    FERRY_AGENT_PARAM_STALL_TIMEOUT = 1u << 2
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
     * a busy one does. The check runs in progress (ferry_xfer_wait, test,
     * ferry_agent_progress or the progress thread), every stall/8 or 10 ms,
     * whichever is shorter. 0 means never. Default: FERRY_XFER_STALL_MS
     * milliseconds (10 000 unless set in the environment).
     */
    uint64_t stall_timeout_ns;
} ferry_agent_params_t;

/*
 * Creates an agent: its transport backends (UCX), its registrations and its
 * peers. params may be NULL. On success *agent_p holds the new agent.
 * Returns FERRY_ERR_INVALID for a bad name, FERRY_ERR_BACKEND when UCX cannot
 * start. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_create(const ferry_agent_params_t *params,
                                            ferry_agent_t **agent_p);

/*
 * Destroys an agent with everything it still owns: requests (in flight ones
 * are canceled first, see ferry_xfer_release()), peers and registrations.
 * Accepts NULL. No other thread may use the agent or its objects meanwhile.
 */
FERRY_API void ferry_agent_destroy(ferry_agent_t *agent);

/* Returns the agent's name; valid for the agent's lifetime. Any thread. */
FERRY_API const char *ferry_agent_name(const ferry_agent_t *agent);

/*
 * Drives the agent's transports without blocking: completes whatever
 * requests can complete, serves peers' operations on this agent's memory,
 * and notices same-host peers whose process has ended. Returns FERRY_OK
 * when nothing is left to do, after which ferry_agent_fd() becomes readable
 * when there is; FERRY_IN_PROGRESS when more work is pending (call again
 * before sleeping); FERRY_ERR_INVALID for a NULL agent. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_progress(ferry_agent_t *agent);

/*
 * Writes to *fd_p a file descriptor, owned by the agent, for an epoll,
 * poll, libuv or asyncio loop. Without a progress thread it becomes
 * readable when ferry_agent_progress() has work to do or the completion
 * queue holds entries: wait for it to be readable (or for a timeout of
 * your choosing), call ferry_agent_progress() until it returns FERRY_OK,
 * then drain ferry_agent_completions(). Once this function has been
 * called, ferry_agent_progress() arms the transports each time it finds
 * nothing to do (a few microseconds, and peers then signal their
 * messages), so call it only to sleep on the fd. With a progress thread,
 * which does the progress itself, the fd is readable exactly while the
 * completion queue holds entries. Do not read from the fd or close it.
 * Any thread.
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
 * valid objects; posting them afterwards returns FERRY_ERR_NOT_REGISTERED.
 * Accepts NULL (returns FERRY_OK). Any thread.
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
 * agent. Any thread.
 */
FERRY_API ferry_status_t ferry_mem_free(ferry_agent_t *agent, void *addr);

/* ------------------------------------------------------------------------ */
/* Metadata and peers                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Packs the agent's metadata into a new blob: its name and host identity,
 * its transport addresses, and every current registration with the keys a
 * peer needs to reach it. The blob is self-describing and portable
 * (little-endian, versioned, checksummed). On success *blob_p (free it with
 * ferry_md_free()) and *len_p are written. Any thread.
 */
FERRY_API ferry_status_t ferry_md_pack(ferry_agent_t *agent, void **blob_p,
                                       size_t *len_p);

/* Frees a blob from ferry_md_pack(). Accepts NULL. Any thread. */
FERRY_API void ferry_md_free(void *blob);

/*
 * Validates a peer's blob completely and then loads it. A blob from an agent
 * whose name is already loaded replaces that peer's metadata and returns the
 * same handle. If the blob comes from the same running agent (for example
 * re-packed after new registrations), earlier requests stay valid; if it
 * comes from a new instance under the same name (a restart), requests
 * prepared against the old metadata fail to post with FERRY_ERR_PEER_LOST
 * and must be prepared again. The agent's own blob may be loaded
 * (loopback). Returns FERRY_ERR_PROTOCOL, with a detail text, for a
 * truncated, oversized, corrupted, unknown-version or inconsistent blob
 * (FERRY_ERR_INVALID for a NULL blob); unknown sections are skipped. Any
 * thread.
 */
FERRY_API ferry_status_t ferry_peer_load(ferry_agent_t *agent,
                                         const void *blob, size_t len,
                                         ferry_peer_t **peer_p);

/*
 * Drops a peer and releases its remote keys and connection. Requests
 * prepared against it remain objects to release; posting them returns
 * FERRY_ERR_PEER_LOST. Accepts NULL. Any thread.
 */
FERRY_API void ferry_peer_forget(ferry_peer_t *peer);

/* Returns the peer's agent name; valid until forgotten. Any thread. */
FERRY_API const char *ferry_peer_name(const ferry_peer_t *peer);

/* ------------------------------------------------------------------------ */
/* Transfers                                                                */
/* ------------------------------------------------------------------------ */

typedef enum ferry_xfer_op {
    FERRY_OP_WRITE = 0, /* local -> remote */
    FERRY_OP_READ = 1   /* remote -> local */
} ferry_xfer_op_t;

/* Transport backends, as ferry_xfer_params_t.backend names them. */
typedef enum ferry_backend {
    FERRY_BACKEND_ANY = 0,     /* the library's choice (the default) */
    FERRY_BACKEND_UCX = 1,     /* UCX: host memory, any host; GPU memory only
                                * where UCX itself supports CUDA */
    FERRY_BACKEND_CUDA_IPC = 2 /* CUDA IPC: the peer's GPU memory, same host */
} ferry_backend_t;

enum {
    FERRY_XFER_PARAM_USER_DATA = 1u << 0,
    FERRY_XFER_PARAM_BACKEND = 1u << 1
};

typedef struct ferry_xfer_params {
    uint64_t field_mask;
    /*
     * FERRY_XFER_PARAM_USER_DATA: puts the request's completions in its
     * agent's completion queue (see ferry_agent_completions()), each with
     * this value of the caller's. Default: not queued.
     */
    void *user_data;
    /*
     * FERRY_XFER_PARAM_BACKEND: serves every pair with this backend only
     * (prepare fails with FERRY_ERR_UNSUPPORTED where it cannot). Default:
     * FERRY_BACKEND_ANY.
     */
    ferry_backend_t backend;
} ferry_xfer_params_t;

/*
 * Prepares a request that moves local[i] to or from remote[i] for every i,
 * on the given peer. Everything is validated here, once: each local
 * descriptor lies inside one local registration, each remote descriptor
 * inside one registration the peer advertised, and the two lists pair up.
 * Errors name the offending descriptor index:
 *   FERRY_ERR_INVALID        bad op, NULL arrays, zero counts or lengths
 *   FERRY_ERR_MISMATCH       nlocal != nremote, len or kind of a pair differ
 *   FERRY_ERR_NOT_REGISTERED a descriptor's start lies in no registration
 *   FERRY_ERR_OUT_OF_RANGE   a descriptor starts in a registration and runs
 *                            past its end
 *   FERRY_ERR_PEER_LOST      the peer was forgotten or replaced, or (same
 *                            host) its process has exited
 *   FERRY_ERR_UNSUPPORTED    no backend can serve a pair; the text names
 *                            the pair and what each backend lacks
 * Each pair goes to a backend chosen here: GPU memory of a peer on the
 * same host through CUDA IPC (the peer's allocation is mapped on first
 * use; a post's copies start after the work queued before it on the
 * legacy default stream, not after other streams' work: synchronise those,
 * or use ferry_xfer_post_on_stream(); the peer's own writes to its memory
 * are the peer's to finish, with a synchronisation, before it lets a READ
 * start, since a cuMemcpy from pageable memory may return before its DMA
 * ends), host memory through UCX, GPU memory to another host through UCX
 * only where UCX reports CUDA support. CUDA IPC serves a remote GPU region
 * with local GPU or host memory; a remote host region is reachable only
 * through UCX. params->backend (FERRY_XFER_PARAM_BACKEND) restricts the
 * choice to one backend.
 * Up to 2^32 - 1 descriptors per request. params may be NULL. On success
 * *xfer_p holds a request that may be posted any number of times. Any
 * thread.
 */
FERRY_API ferry_status_t ferry_xfer_prepare(
    ferry_agent_t *agent, ferry_xfer_op_t op, const ferry_desc_t *local,
    size_t nlocal, ferry_peer_t *peer, const ferry_desc_t *remote,
    size_t nremote, const ferry_xfer_params_t *params, ferry_xfer_t **xfer_p);

/*
 * Starts the transfer. Returns FERRY_OK if it completed inline (for a WRITE,
 * the bytes are then visible in the peer's memory; for a READ, in local
 * memory), FERRY_IN_PROGRESS if it is under way, FERRY_ERR_BUSY if the
 * request is still in flight from an earlier post, FERRY_ERR_NOT_REGISTERED
 * if a local registration it uses was deregistered, FERRY_ERR_PEER_LOST if
 * the peer is gone or was replaced, or the transport's error. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_post(ferry_xfer_t *xfer);

/*
 * Makes progress without blocking and reports the request's state:
 * FERRY_IN_PROGRESS while in flight, then FERRY_OK or the transfer's error
 * once it has finished (FERRY_ERR_PEER_LOST if the peer died,
 * FERRY_ERR_CANCELED after ferry_xfer_cancel(), FERRY_ERR_TIMEOUT after the
 * stall timeout); the result stays until the next post. Returns
 * FERRY_ERR_INVALID for a request never posted. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_test(ferry_xfer_t *xfer);

/*
 * Waits for the request to finish: timeout_ns 0 tests once, a negative value
 * waits without limit. It polls for a short time (FERRY_WAIT_SPIN_US) and
 * then sleeps on the transports' events, so a long wait costs almost no CPU.
 * Returns what ferry_xfer_test() would, or FERRY_ERR_TIMEOUT if the time ran
 * out (the request stays valid and may be waited on again). A request that
 * ended by the stall timeout reports FERRY_ERR_TIMEOUT too, with a detail
 * text that says "stall timeout"; ferry_xfer_test() tells the two apart
 * (FERRY_IN_PROGRESS for the first). Any thread; any number of threads may
 * wait on different requests at once.
 */
FERRY_API ferry_status_t ferry_xfer_wait(ferry_xfer_t *xfer, int64_t timeout_ns);

/*
 * Stops a request in flight. Returns FERRY_OK once nothing will touch the
 * request's local memory any more: it may then be deregistered and freed,
 * and test and wait report FERRY_ERR_CANCELED. Returns FERRY_IN_PROGRESS if
 * a transport must still hand the request back; test and wait then report
 * FERRY_ERR_CANCELED once it has (UCX never needs this; the return exists
 * for transports that cannot stop at once). A request that is not in
 * flight (never posted, or finished) is left as it is: FERRY_OK, and test
 * and wait keep reporting its result. FERRY_ERR_INVALID for NULL.
 *
 * What a canceled transfer leaves behind is undefined: a WRITE may have
 * written any part of the remote range, a READ any part of the local one.
 * Bytes of a WRITE that had already reached the peer's side may still be
 * applied there after cancel returns (never read from local memory again),
 * so the peer should not rely on that range until told by other means.
 *
 * A transport cannot recall one operation of many, so cancel closes the
 * connection to the request's peer: every other request in flight to that
 * peer ends as well, with FERRY_ERR_CANCELED and a detail text that says
 * so. Requests are not harmed otherwise: any of them, the canceled one
 * included, may be posted again, which reopens the connection (a peer that
 * is gone still gives FERRY_ERR_PEER_LOST). To stop one request to a
 * healthy peer without touching the others, wait for it instead. A request
 * to this same agent (a loopback peer) needs no one else to finish, so it
 * is not stopped: cancel returns FERRY_IN_PROGRESS and it ends, CANCELED,
 * when its transfer does.
 *
 * Known limit of UCX 1.13 over TCP (FERRY_UCX_TLS=tcp, or peers on other
 * hosts without RDMA): a peer that receives emulated WRITEs from a
 * connection that was closed meanwhile aborts (a UCX bug, the same that
 * takes a target down when an initiator process dies mid-transfer). Over
 * shared memory, the default between processes of one host, it does not.
 * Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_cancel(ferry_xfer_t *xfer);

/*
 * Frees a request. A request still in flight is canceled first (see
 * ferry_xfer_cancel(), including what that does to other requests to the
 * same peer), and freed only once its transport has handed it back, so
 * that nothing writes into or reads from its memory afterwards; with UCX
 * that is at once. Its entry in the completion queue, if one waits there,
 * is dropped. Accepts NULL. No other thread may use the request
 * meanwhile.
 */
FERRY_API void ferry_xfer_release(ferry_xfer_t *xfer);

/*
 * Stream-ordered transfers. ferry_xfer_post_on_stream() enqueues the start
 * of the transfer on a CUDA stream (a CUstream, passed as void *): it
 * begins once the stream's earlier work is done. ferry_xfer_wait_on_stream()
 * makes a stream's later work wait for the transfer. Both only enqueue and
 * return at once; both may be captured into a CUDA graph, and every replay
 * of the graph then moves the data again (the protocol's values never
 * change). Pairs served by CUDA IPC are copies put on the stream itself;
 * pairs served by a network backend (host memory through UCX) are started
 * by the agent's progress thread when the stream writes a flag in
 * page-locked host memory, and signal their end through a second flag that
 * the waiting stream polls, so such requests need an agent created with
 * FERRY_AGENT_PARAM_PROGRESS_THREAD (else FERRY_ERR_INVALID). The progress
 * thread notices a flag at once while it is busy and within about 1 ms when
 * it had been idle.
 *
 * Errors: a transfer that fails still releases the waiting stream (the GPU
 * never hangs on it); its status is what ferry_xfer_test() and
 * ferry_xfer_wait() report, and the next ferry_xfer_post_on_stream() of the
 * request returns it once. FERRY_ERR_UNSUPPORTED without a CUDA driver,
 * FERRY_ERR_INVALID for wait_on_stream() of a request never posted on a
 * stream, and post_on_stream() checks what ferry_xfer_post() checks. CUDA
 * IPC copies run without the host, so nothing checks the peer when they
 * run: a graph that holds them, replayed after the peer's process exited,
 * copies into or out of its orphaned memory without an error (its memory
 * stays mapped here until the peer is forgotten). A host post, or the next
 * stream post, of the request reports FERRY_ERR_PEER_LOST.
 *
 * What the caller keeps alive: the request, its registrations and its
 * peer, for as long as any stream or graph that enqueued it may still run
 * it (synchronise the streams, or destroy the graph's executables, before
 * ferry_xfer_release()); from its first stream post on, the request counts
 * as in flight for ferry_mem_deregister() (BUSY) until released. Post and
 * wait in pairs, in that order: a stream post while the previous run is
 * still going starts once it ends. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_post_on_stream(ferry_xfer_t *xfer, void *stream);
FERRY_API ferry_status_t ferry_xfer_wait_on_stream(ferry_xfer_t *xfer, void *stream);

/*
 * The agent's completion queue. A request prepared with
 * FERRY_XFER_PARAM_USER_DATA adds exactly one entry each time a post of it
 * that returned FERRY_IN_PROGRESS finishes (successfully, with an error,
 * canceled or timed out); a post that returns anything else reports its
 * outcome by its return value and adds nothing. Such a request may still
 * be tested and waited on. Posting it again before its entry was drained
 * drops that entry (the caller evidently learned of the completion another
 * way), so the queue never holds more entries than there are requests.
 *
 * A queue rather than a callback: entries are taken by the caller's own
 * thread, when it chooses, so there are no rules about what may be called
 * from inside a callback, no callbacks on the progress thread, and no lock
 * held across the caller's code; and it fits an event loop through
 * ferry_agent_fd(), which is readable while entries wait.
 */
typedef struct ferry_completion {
    ferry_xfer_t *xfer;     /* the request that finished */
    void *user_data;        /* its FERRY_XFER_PARAM_USER_DATA */
    ferry_status_t status;  /* FERRY_OK or its error; ferry_xfer_test(xfer)
                               gives the same status with its detail text
                               until the request is posted again */
} ferry_completion_t;

/*
 * Moves up to max entries, oldest first, from the agent's completion queue
 * to out[0..*n_p) and writes their number to *n_p (0 when none waits). It
 * does not drive progress: call it after ferry_agent_progress(), a wait, or
 * when ferry_agent_fd() is readable; with a progress thread, whenever
 * convenient. Returns FERRY_ERR_INVALID for a NULL agent or n_p, or a NULL
 * out with max > 0. Any thread.
 */
FERRY_API ferry_status_t ferry_agent_completions(ferry_agent_t *agent,
                                                 ferry_completion_t *out,
                                                 size_t max, size_t *n_p);

/* ------------------------------------------------------------------------ */
/* Store (rendezvous key-value store, PyTorch c10d TCPStore wire protocol)  */
/* ------------------------------------------------------------------------ */

/*
 * A client connection to a key-value store that speaks PyTorch's c10d
 * TCPStore protocol: ferry's own server (below), or the store of a torchrun
 * job. Keys are C strings sent verbatim (a torch client prefixes its keys
 * with "/", so torch's key "k" is ferry's key "/k"); values are bytes.
 * docs/STORE.md lists the messages and PyTorch versions supported.
 *
 * A store handle serialises its calls, so it may be used from any thread,
 * but calls from several threads run one after another on one connection.
 * After a call fails with FERRY_ERR_TIMEOUT (other than
 * ferry_store_wait()) or FERRY_ERR_PEER_LOST, the connection is closed and
 * every later call returns FERRY_ERR_PEER_LOST: a reply that arrived late
 * would otherwise be taken for the answer to the next question.
 */
typedef struct ferry_store ferry_store_t;
typedef struct ferry_store_server ferry_store_server_t;

enum {
    FERRY_STORE_PARAM_TIMEOUT = 1u << 0
};

typedef struct ferry_store_params {
    uint64_t field_mask;
    /* Limit, in nanoseconds, for connecting (retried until it runs out,
     * since the server may not be up yet) and for every call that takes no
     * timeout of its own; get and multi_get wait this long for their keys.
     * Default 300 s, as torch's. */
    uint64_t timeout_ns;
} ferry_store_params_t;

/*
 * Connects to the store at url ("tcp://host:port"; host a name, an IPv4
 * address or a bracketed IPv6 address), retrying refused connections until
 * the timeout, then performs the protocol's validation handshake and a ping.
 * Returns FERRY_ERR_INVALID for a malformed URL, FERRY_ERR_TIMEOUT if no
 * server answered in time, FERRY_ERR_PROTOCOL if the peer answered the ping
 * wrongly. Any thread.
 */
FERRY_API ferry_status_t ferry_store_connect(const char *url,
                                             const ferry_store_params_t *params,
                                             ferry_store_t **store_p);

/* Closes the connection and frees the handle. Accepts NULL. No other thread
 * may be using the handle. */
FERRY_API void ferry_store_close(ferry_store_t *store);

/* Frees a value returned by ferry_store_get(), ferry_store_compare_set() or
 * ferry_store_multi_get(). Accepts NULL. Any thread. */
FERRY_API void ferry_store_free(void *value);

/* Sets key to the len bytes at value (len 0 is allowed). Wakes every client
 * waiting for key. Any thread. */
FERRY_API ferry_status_t ferry_store_set(ferry_store_t *store, const char *key,
                                         const void *value, size_t len);

/*
 * Waits (up to the store's timeout) for key to exist, then returns its
 * value in a new buffer (*value_p, *len_p; free with ferry_store_free()).
 * The buffer has one extra zero byte after the value, so text values may be
 * used as C strings. Returns FERRY_ERR_TIMEOUT if the key did not appear in
 * time. Any thread.
 */
FERRY_API ferry_status_t ferry_store_get(ferry_store_t *store, const char *key,
                                         void **value_p, size_t *len_p);

/*
 * Adds delta to the decimal integer stored at key (a missing key counts as
 * 0), stores the sum as decimal text and returns it in *value_p. A key that
 * holds something other than an integer makes the server drop the
 * connection, as torch's does (FERRY_ERR_PEER_LOST). Any thread.
 */
FERRY_API ferry_status_t ferry_store_add(ferry_store_t *store, const char *key,
                                         int64_t delta, int64_t *value_p);

/* Sets *ready_p to 1 if every one of the n keys exists, else 0, without
 * waiting. Any thread. */
FERRY_API ferry_status_t ferry_store_check(ferry_store_t *store,
                                           const char *const *keys, size_t n,
                                           int *ready_p);

/*
 * Waits until every one of the n keys exists. timeout_ns 0 checks once, a
 * negative value waits without limit (a dropped connection still ends the
 * wait with FERRY_ERR_PEER_LOST). Returns FERRY_ERR_TIMEOUT if the time ran
 * out; the pending wait is then cancelled on the server and the connection
 * stays usable. Any thread.
 */
FERRY_API ferry_status_t ferry_store_wait(ferry_store_t *store,
                                          const char *const *keys, size_t n,
                                          int64_t timeout_ns);

/*
 * Atomically sets key to desired if its value equals expected, and returns
 * the value the key holds afterwards (*value_p, *len_p; free with
 * ferry_store_free()). A missing key is created only when expected_len is
 * 0; otherwise the key stays missing and the reply is expected itself (the
 * protocol's rule). Any thread.
 */
FERRY_API ferry_status_t ferry_store_compare_set(ferry_store_t *store,
                                                 const char *key,
                                                 const void *expected,
                                                 size_t expected_len,
                                                 const void *desired,
                                                 size_t desired_len,
                                                 void **value_p, size_t *len_p);

/* Deletes key; *deleted_p (may be NULL) is 1 if it existed, else 0. Any
 * thread. */
FERRY_API ferry_status_t ferry_store_delete_key(ferry_store_t *store,
                                                const char *key, int *deleted_p);

/* Returns in *num_p the number of keys the server holds (torch's server
 * counts its own bookkeeping keys too). Any thread. */
FERRY_API ferry_status_t ferry_store_num_keys(ferry_store_t *store,
                                              int64_t *num_p);

/*
 * Waits (up to the store's timeout) for all n keys, then fetches them in one
 * round trip: values_p[i] and lens_p[i] (arrays of n, supplied by the
 * caller) receive each value in a new buffer, zero-terminated like
 * ferry_store_get()'s, to be freed one by one with ferry_store_free(). The
 * arrays are written only on success. Any thread.
 */
FERRY_API ferry_status_t ferry_store_multi_get(ferry_store_t *store,
                                               const char *const *keys,
                                               size_t n, void **values_p,
                                               size_t *lens_p);

/* Sets n keys in one message, in order. Any thread. */
FERRY_API ferry_status_t ferry_store_multi_set(ferry_store_t *store,
                                               const char *const *keys,
                                               const void *const *values,
                                               const size_t *lens, size_t n);

/* Appends len bytes to the value of key, creating it if missing. Any
 * thread. */
FERRY_API ferry_status_t ferry_store_append(ferry_store_t *store,
                                            const char *key, const void *value,
                                            size_t len);

/* Sends a nonce and checks that the server echoes it: a live-connection
 * test. Any thread. */
FERRY_API ferry_status_t ferry_store_ping(ferry_store_t *store);

enum {
    FERRY_STORE_SERVER_PARAM_PORT = 1u << 0,
    FERRY_STORE_SERVER_PARAM_MAX_KEY_LEN = 1u << 1,
    FERRY_STORE_SERVER_PARAM_MAX_VALUE_LEN = 1u << 2,
    FERRY_STORE_SERVER_PARAM_MAX_WAIT_KEYS = 1u << 3,
    FERRY_STORE_SERVER_PARAM_MAX_CLIENTS = 1u << 4
};

typedef struct ferry_store_server_params {
    uint64_t field_mask;
    /* TCP port; 0 (the default) picks a free one, see
     * ferry_store_server_port(). */
    uint16_t port;
    /* Longest key accepted, in bytes. Default 8 KiB (torch's libuv server's
     * limit). */
    uint64_t max_key_len;
    /* Longest value accepted, and longest value an APPEND may grow, in
     * bytes. Default 64 MiB. */
    uint64_t max_value_len;
    /* Most keys one client may name in one CHECK, WAIT, MULTI_GET or
     * MULTI_SET (and so have pending in its wait). Default 131072 (torch's
     * libuv server's limit). */
    uint64_t max_wait_keys;
    /* Most clients connected at once; further connections are accepted and
     * closed at once. Default 65536. */
    uint64_t max_clients;
} ferry_store_server_params_t;

/*
 * Starts a store server on its own thread: one epoll loop serving every
 * client. bind_addr is a numeric IPv4 or IPv6 address, NULL meaning
 * "127.0.0.1" (loopback: pass "0.0.0.0" to serve other hosts). A client
 * that sends a malformed message, one over the limits, or anything before
 * the validation handshake, is disconnected with a warning in the log; the
 * others carry on. Returns FERRY_ERR_SYSTEM if the address cannot be bound.
 * Any thread.
 */
FERRY_API ferry_status_t ferry_store_server_start(
    const char *bind_addr, const ferry_store_server_params_t *params,
    ferry_store_server_t **server_p);

/* Returns the TCP port the server listens on. Any thread. */
FERRY_API uint16_t ferry_store_server_port(const ferry_store_server_t *server);

/* Stops the server thread, closes every client connection (their pending
 * calls fail with FERRY_ERR_PEER_LOST) and frees the server. Accepts NULL.
 * Any thread but the server's own. */
FERRY_API void ferry_store_server_stop(ferry_store_server_t *server);

/* ------------------------------------------------------------------------ */
/* End of the Store section                                                 */
/* ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------ */
/* Communicator (ranks that find each other through a store)               */
/* ------------------------------------------------------------------------ */

/*
 * A communicator joins the N ranks of a job through a store (above): ranks
 * 0..N-1, a barrier, an allgather of byte strings, and the collective
 * metadata exchange that loads every rank's blob into an agent. It is what
 * a job started by ferry-run, torchrun, mpirun or srun calls first.
 *
 * Every collective must be called by every rank, in the same order, and
 * takes a timeout. While it waits it watches the job's abort key, so that
 * after one rank calls ferry_comm_abort(), dies (its heartbeat stops) or
 * times out, every other rank's collective returns FERRY_ERR_ABORTED with a
 * detail text naming that rank and its reason, instead of hanging. An
 * aborted communicator stays aborted: every later collective returns
 * FERRY_ERR_ABORTED at once. A store that goes away is FERRY_ERR_PEER_LOST.
 * docs/COMM.md describes the keys, the abort protocol and the environment.
 *
 * A communicator may be used from any thread, but its collectives are
 * meant to be called by one thread at a time (calls from several threads
 * are serialised and would pair up with the other ranks' in an order
 * nobody chose). ferry_comm_abort() may be called from any thread at any
 * time, also while another thread waits in a collective.
 */
typedef struct ferry_comm ferry_comm_t;

enum {
    FERRY_COMM_PARAM_RANK = 1u << 0,
    FERRY_COMM_PARAM_SIZE = 1u << 1,
    FERRY_COMM_PARAM_STORE_URL = 1u << 2,
    FERRY_COMM_PARAM_TIMEOUT = 1u << 3,
    FERRY_COMM_PARAM_PREFIX = 1u << 4,
    FERRY_COMM_PARAM_LIVENESS = 1u << 5
};

typedef struct ferry_comm_params {
    uint64_t field_mask;
    /* FERRY_COMM_PARAM_RANK: this process's rank, 0 <= rank < size.
     * Default: from the environment (see ferry_comm_create()). */
    int rank;
    /* FERRY_COMM_PARAM_SIZE: the number of ranks, at least 1. Default: from
     * the environment. */
    int size;
    /* FERRY_COMM_PARAM_STORE_URL: the store, "tcp://host:port" (copied).
     * Default: FERRY_STORE, else tcp://MASTER_ADDR:MASTER_PORT. */
    const char *store_url;
    /* FERRY_COMM_PARAM_TIMEOUT: limit, in nanoseconds, for joining the
     * other ranks in ferry_comm_create() and for rank 0's wait for the
     * others in ferry_comm_destroy(). Default: FERRY_COMM_TIMEOUT_MS
     * (300 s). */
    uint64_t timeout_ns;
    /* FERRY_COMM_PARAM_PREFIX: prepended to every key the communicator
     * uses (copied, at most 200 bytes), so that several jobs, or several
     * communicators of one job, can share a store. Default:
     * FERRY_COMM_PREFIX ("ferry/"). */
    const char *prefix;
    /* FERRY_COMM_PARAM_LIVENESS: a rank whose heartbeat has not changed
     * for this long, in nanoseconds, is declared dead and the job aborted.
     * Heartbeats are written by a thread of each communicator, every
     * tenth of this time (at most every second). Default:
     * FERRY_COMM_LIVENESS_MS (10 s). */
    uint64_t liveness_ns;
} ferry_comm_params_t;

/*
 * Joins the job as one rank and waits until every rank has joined. Fields
 * not given in params (or all, for NULL params) come from the environment,
 * the first of these launchers whose variables are set winning:
 *   ferry-run / by hand   FERRY_RANK, FERRY_WORLD_SIZE
 *   torchrun              RANK, WORLD_SIZE
 *   Open MPI (mpirun)     OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
 *   Slurm (srun)          SLURM_PROCID, SLURM_NTASKS
 * and the store from FERRY_STORE, else MASTER_ADDR and MASTER_PORT. If no
 * store answers at the URL, rank 0 starts one in-process (bound to the
 * URL's address) and keeps it until every rank has left. Rank 0 therefore
 * may not call ferry_comm_destroy() long before the others.
 * Returns FERRY_ERR_INVALID, with a text naming the variable, for a
 * missing, partial (a rank without a size), malformed or out-of-range
 * setting, or when another process already joined with this rank or the
 * ranks disagree on the size; FERRY_ERR_TIMEOUT if the ranks did not all
 * join within the timeout (or no store was reached); FERRY_ERR_ABORTED if
 * the job's abort key is already set (a stale prefix). Any thread.
 */
FERRY_API ferry_status_t ferry_comm_create(const ferry_comm_params_t *params,
                                           ferry_comm_t **comm_p);

/*
 * Leaves the job and frees the communicator: stops its heartbeat and closes
 * its store connection. Rank 0, when it hosts the store, first waits (up to
 * the communicator's timeout) until every other rank has left or is dead.
 * The peers loaded by ferry_comm_exchange() belong to their agent and stay
 * valid. Accepts NULL. No other thread may use the communicator meanwhile.
 */
FERRY_API void ferry_comm_destroy(ferry_comm_t *comm);

/* This process's rank (0 <= rank < size). Any thread. */
FERRY_API int ferry_comm_rank(const ferry_comm_t *comm);

/* The number of ranks. Any thread. */
FERRY_API int ferry_comm_size(const ferry_comm_t *comm);

/*
 * Returns when every rank has entered the barrier. timeout_ns bounds the
 * wait; a negative value waits without limit (a dead rank still ends it,
 * through its heartbeat). Returns FERRY_ERR_ABORTED (naming the rank and
 * its reason) if any rank aborted, died or timed out; FERRY_ERR_TIMEOUT if
 * this rank's own time ran out first, in which case it aborts the job with
 * a reason naming the ranks it waited for; FERRY_ERR_PEER_LOST if the store
 * is gone. Any thread (see above).
 */
FERRY_API ferry_status_t ferry_comm_barrier(ferry_comm_t *comm,
                                            int64_t timeout_ns);

/*
 * Gathers one byte string from every rank: this rank contributes the len
 * bytes at data (len 0 is allowed), and on success values_p[r] and
 * lens_p[r] (arrays of ferry_comm_size() entries, supplied by the caller)
 * receive rank r's bytes in a new buffer, zero-terminated, to be freed with
 * ferry_store_free(). The arrays are written only on success. Errors and
 * timeout_ns as for ferry_comm_barrier(). Any thread (see above).
 */
FERRY_API ferry_status_t ferry_comm_allgather(ferry_comm_t *comm,
                                              const void *data, size_t len,
                                              void **values_p, size_t *lens_p,
                                              int64_t timeout_ns);

/*
 * Aborts the job: publishes reason (copied, truncated to 200 bytes; NULL
 * means "aborted") under the job's abort key, so that every rank's current
 * and later collectives return FERRY_ERR_ABORTED naming this rank and the
 * reason. The first abort of a job wins; later ones are ignored. Returns
 * FERRY_ERR_PEER_LOST if the store could not be told (this communicator is
 * aborted all the same). Any thread, also while another thread waits in a
 * collective of the same communicator; not from a signal handler.
 */
FERRY_API ferry_status_t ferry_comm_abort(ferry_comm_t *comm,
                                          const char *reason);

/*
 * The collective metadata exchange: packs agent's blob (ferry_md_pack),
 * publishes it, and loads every rank's blob (its own included) into agent
 * with ferry_peer_load(), then ends in a barrier. A blob identical to the
 * one this rank loaded from that rank in the previous exchange is not
 * loaded again, so calling it again after some ranks registered more
 * memory costs only those ranks' loads. If any rank fails (its blob does
 * not load on some rank, or it cannot pack its own), the failure is
 * published before the barrier, every rank still reaches the barrier, and
 * every rank returns the same status, with a text naming the rank that
 * failed and why; the communicator stays usable. The exchange's keys are
 * removed once every rank has passed its barrier. Abort, death, timeout
 * and a lost store end it as for ferry_comm_barrier(). Use one agent per
 * communicator. Any thread (see above).
 */
FERRY_API ferry_status_t ferry_comm_exchange(ferry_comm_t *comm,
                                             ferry_agent_t *agent,
                                             int64_t timeout_ns);

/*
 * Returns the peer handle of a rank after a successful
 * ferry_comm_exchange() (the rank's own entry is a loopback peer), or NULL
 * for a rank out of range or before any exchange. The handle belongs to
 * the exchange's agent and stays the same across exchanges (the peer is
 * reloaded in place, and requests prepared on it stay valid); do not
 * ferry_peer_forget() it while the communicator is in use. Any thread.
 */
FERRY_API ferry_peer_t *ferry_comm_peer(const ferry_comm_t *comm, int rank);

/* ------------------------------------------------------------------------ */
/* End of the Communicator section                                          */
/* ------------------------------------------------------------------------ */

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
