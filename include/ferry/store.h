/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/store.h: the rendezvous store, a client and an embedded server of
 * PyTorch's c10d TCPStore wire protocol, through which ranks hand each
 * other their metadata blobs (see ferry/comm.h). Part of <ferry.h>.
 */
#ifndef FERRY_STORE_H
#define FERRY_STORE_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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
 * every later call returns FERRY_ERR_PEER_LOST, its detail text quoting the
 * failure that closed it: a reply that arrived late would otherwise be
 * taken for the answer to the next question.
 */
typedef struct ferry_store ferry_store_t;
typedef struct ferry_store_server ferry_store_server_t;

enum {
    FERRY_STORE_PARAM_TIMEOUT = 1u << 0,
    FERRY_STORE_PARAM_SECRET = 1u << 1
};

typedef struct ferry_store_params {
    uint64_t field_mask;
    /* Limit, in nanoseconds, for connecting (retried until it runs out,
     * since the server may not be up yet) and for every call that takes no
     * timeout of its own; get and multi_get wait this long for their keys.
     * Default 300 s, as torch's. */
    uint64_t timeout_ns;
    /* FERRY_STORE_PARAM_SECRET: the job secret (16 bytes at least), or
     * NULL or "" for none. With a secret the client and the server prove
     * it to each other before any other message (HMAC-SHA-256 over fresh
     * nonces; docs/STORE.md), and the client refuses a server without one.
     * Default: FERRY_JOB_SECRET from the environment (none when unset). */
    const char *secret;
} ferry_store_params_t;

/*
 * Connects to the store at url ("tcp://host:port"; host a name, an IPv4
 * address or a bracketed IPv6 address), retrying refused connections until
 * the timeout, then performs the protocol's validation handshake and a ping.
 * With a job secret (FERRY_STORE_PARAM_SECRET or FERRY_JOB_SECRET), ferry's
 * authenticated handshake replaces the validation: client and server prove
 * the secret to each other first. Returns FERRY_ERR_INVALID for a malformed
 * URL or a secret shorter than 16 bytes, FERRY_ERR_TIMEOUT if no server
 * answered in time, FERRY_ERR_PROTOCOL if the peer answered the ping
 * wrongly, or, with a secret, if the server has none or another one, or
 * does not speak ferry's handshake (a torch server closes the connection).
 * Any thread.
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
    FERRY_STORE_SERVER_PARAM_MAX_CLIENTS = 1u << 4,
    FERRY_STORE_SERVER_PARAM_SECRET = 1u << 5
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
    /* FERRY_STORE_SERVER_PARAM_SECRET: the job secret (16 bytes at least),
     * or NULL or "" for none. With a secret, a client must prove it before
     * any other message (docs/STORE.md); one that sends torch's plain
     * validation instead (a torch client, or ferry's without the secret) or
     * a wrong proof is disconnected with a warning, and the others carry
     * on. Without one, any client that reaches the port is served, as by
     * torch's server. Default: FERRY_JOB_SECRET from the environment (none
     * when unset). */
    const char *secret;
} ferry_store_server_params_t;

/*
 * Starts a store server on its own thread: one epoll loop serving every
 * client. bind_addr is a numeric IPv4 or IPv6 address, NULL meaning
 * "127.0.0.1" (loopback: pass "0.0.0.0" to serve other hosts). A client
 * that sends a malformed message, one over the limits, or anything before
 * the validation handshake, or (with a secret) does not prove the secret
 * first, is disconnected with a warning in the log; the others carry on.
 * Returns FERRY_ERR_SYSTEM if the address cannot be bound, FERRY_ERR_INVALID
 * for a secret shorter than 16 bytes. Any thread.
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

#ifdef __cplusplus
}
#endif

#endif /* FERRY_STORE_H */
