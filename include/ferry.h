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
 * ordinal for FERRY_MEM_CUDA and ignored for host memory.
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
    FERRY_AGENT_PARAM_PROGRESS_THREAD = 1u << 1
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
 * are abandoned after their transport is closed), peers and registrations.
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
 * Writes to *fd_p a file descriptor, owned by the agent, that becomes
 * readable when ferry_agent_progress() has work to do, for an epoll, poll,
 * libuv or asyncio loop: wait for it to be readable (or for a timeout of
 * your choosing), then call ferry_agent_progress() until it returns
 * FERRY_OK. Once this function has been called, ferry_agent_progress() arms
 * the transports each time it finds nothing to do (a few microseconds, and
 * peers then signal their messages), so call it only to sleep on the fd.
 * Do not read from the fd or close it. Any thread.
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
 * CPU, several times slower. The memory is not registered: register any
 * range inside it with ferry_mem_register() before use. Its contents are
 * undefined, and it lives until ferry_mem_free() or the agent's
 * destruction. Returns FERRY_ERR_INVALID for a NULL argument, a
 * zero length or a kind other than HOST or CUDA; FERRY_ERR_UNSUPPORTED for
 * a kind no backend of this build can allocate (CUDA memory without a
 * CUDA-capable build); FERRY_ERR_NO_MEMORY or FERRY_ERR_BACKEND when the
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

typedef struct ferry_xfer_params {
    uint64_t field_mask; /* no fields yet; pass NULL or 0 */
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
 *   FERRY_ERR_PEER_LOST      the peer was forgotten or replaced
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
 * (FERRY_ERR_PEER_LOST if the peer died) once it has finished; the result
 * stays until the next post. Returns FERRY_ERR_INVALID for a request never
 * posted. Any thread.
 */
FERRY_API ferry_status_t ferry_xfer_test(ferry_xfer_t *xfer);

/*
 * Waits for the request to finish: timeout_ns 0 tests once, a negative value
 * waits without limit. It polls for a short time (FERRY_WAIT_SPIN_US) and
 * then sleeps on the transports' events, so a long wait costs almost no CPU.
 * Returns what ferry_xfer_test() would, or FERRY_ERR_TIMEOUT if the time ran
 * out (the request stays valid and may be waited on again). Any thread; any
 * number of threads may wait on different requests at once.
 */
FERRY_API ferry_status_t ferry_xfer_wait(ferry_xfer_t *xfer, int64_t timeout_ns);

/*
 * Frees a request. A request still in flight is first waited for (its
 * transport may still touch its memory). Accepts NULL. The caller must not
 * use the request from another thread meanwhile.
 */
FERRY_API void ferry_xfer_release(ferry_xfer_t *xfer);

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

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
