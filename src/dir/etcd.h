/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The directory's etcd client (etcd.c): the endpoints of a cluster, one
 * HTTP connection per calling thread (libcurl), and the few v3 calls the
 * directory and the communicator make through etcd's JSON gateway (kv put,
 * range, deleterange, txn; lease grant, keepalive, revoke). Keys and values
 * travel base64-encoded, 64-bit integers as decimal strings, as the
 * gateway's protobuf mapping does. dir.c builds the public directory on
 * it, src/comm/kv_etcd.c the communicator's store operations.
 */
#ifndef FERRY_DIR_ETCD_H
#define FERRY_DIR_ETCD_H

#include "util/status.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY__ETCD_MAX_ENDPOINTS 16
#define FERRY__ETCD_PREFIX_MAX 200

/* A cluster: its endpoints ("http://host:port"), the one that answered
 * last (tried first), the limit for one call to one endpoint, and a
 * deadline (ferry__now_ns() time; 0: none) that no call goes past, its
 * fail-over to other endpoints included: a call that reaches it is
 * FERRY_ERR_TIMEOUT. After a failed call, unanswered says whether it failed
 * for want of an answer (every endpoint unreachable, silent or
 * unavailable) rather than by etcd's refusal; the request may have been
 * carried out all the same (an endpoint took it, its answer got lost), and
 * a call tried again on the next endpoint may do it twice, so requests
 * must be safe to repeat. */
typedef struct ferry__etcd {
    char *endpoints[FERRY__ETCD_MAX_ENDPOINTS];
    size_t n;
    atomic_size_t cur;
    uint64_t timeout_ns;
    _Atomic uint64_t deadline_ns; /* may be moved by another thread */
    atomic_bool unanswered;
} ferry__etcd_t;

/* One thread's connection (a libcurl easy handle and its reply buffer). */
typedef struct ferry__etcd_conn ferry__etcd_conn_t;

/* A key-value pair from a range. key and value are NUL-terminated copies
 * (value NULL for keys-only reads). */
typedef struct ferry__etcd_kv {
    char *key;
    void *value;
    size_t len;
    int64_t create_rev, mod_rev, lease;
} ferry__etcd_kv_t;

/* Parses "etcd://host:port[,host:port...]/prefix" into e's endpoints and
 * prefix (FERRY__ETCD_PREFIX_MAX + 1 bytes); FERRY_ERR_INVALID with a text
 * naming what is wrong. */
ferry_status_t ferry__etcd_parse_url(const char *url, ferry__etcd_t *e,
                                     char *prefix);

/* Frees the endpoints (not e itself). */
void ferry__etcd_fini(ferry__etcd_t *e);

ferry_status_t ferry__etcd_conn_open(ferry__etcd_conn_t **conn_p);
void ferry__etcd_conn_close(ferry__etcd_conn_t *conn);

/*
 * Reads key (prefix false) or every key that starts with key (prefix
 * true); keys_only leaves values out. On success *kvs_p (free with
 * ferry__etcd_kvs_free) holds *n_p pairs in key order and *rev_p (may be
 * NULL) the store's revision.
 */
ferry_status_t ferry__etcd_range(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                 const char *key, bool prefix, bool keys_only,
                                 ferry__etcd_kv_t **kvs_p, size_t *n_p,
                                 int64_t *rev_p);
void ferry__etcd_kvs_free(ferry__etcd_kv_t *kvs, size_t n);

/* Puts key = value bound to lease (0: none); *rev_p (may be NULL) the new
 * revision. A lease etcd does not know is FERRY_ERR_NOT_FOUND. */
ferry_status_t ferry__etcd_put(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                               const char *key, const void *value, size_t len,
                               int64_t lease, int64_t *rev_p);

/* What ferry__etcd_put_if() requires of the key: to be missing, to have
 * been modified last at revision mod_rev, or to hold value. */
typedef struct ferry__etcd_cond {
    enum {
        FERRY__ETCD_IF_ABSENT,
        FERRY__ETCD_IF_MOD_REV,
        FERRY__ETCD_IF_VALUE
    } kind;
    int64_t mod_rev;
    const void *value;
    size_t len;
} ferry__etcd_cond_t;

/*
 * One transaction: puts key = value bound to lease (0: none) if cond holds
 * on key, else reads key. *done_p says which; when not done, *cur_p (free
 * with ferry__etcd_kvs_free) holds the key's entry and *ncur_p is 1, or 0
 * when the key is missing.
 */
ferry_status_t ferry__etcd_put_if(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                  const char *key,
                                  const ferry__etcd_cond_t *cond,
                                  const void *value, size_t len, int64_t lease,
                                  bool *done_p, ferry__etcd_kv_t **cur_p,
                                  size_t *ncur_p);

/*
 * Reads n keys at one revision (read-only transactions of at most 128
 * reads, etcd's default limit): *kvs_p (free with ferry__etcd_kvs_free(kvs,
 * n)) has n entries, entry i key i's, with key NULL where it is missing.
 */
ferry_status_t ferry__etcd_get_many(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                    const char *const *keys, size_t n,
                                    bool keys_only, ferry__etcd_kv_t **kvs_p);

/* One event of a watch: key (keys only) put or deleted. */
typedef struct ferry__etcd_wevent {
    bool deleted;
    ferry__etcd_kv_t kv;
} ferry__etcd_wevent_t;

/* Called with each message of a watch: its n events (n may be 0) and its
 * revision; returns false to end the watch. */
typedef bool (*ferry__etcd_watch_cb)(void *arg, const ferry__etcd_wevent_t *ev,
                                     size_t n, int64_t revision);

/*
 * Watches every key under prefix from revision start_rev: a long-lived
 * POST to /v3/watch whose reply streams one JSON message a line, handed to
 * cb as they come, on the endpoint that answered last (the next ones in
 * turn while none can be reached). Returns FERRY_OK once cb returned
 * false; FERRY_ERR_CANCELED once stop_fd is readable; FERRY_ERR_BACKEND
 * when etcd cancelled the watch (start_rev compacted away, say);
 * FERRY_ERR_PEER_LOST when the stream broke (the next call starts on the
 * next endpoint) or no endpoint could be reached.
 */
ferry_status_t ferry__etcd_watch(ferry__etcd_t *e, const char *prefix,
                                 int64_t start_rev, int stop_fd,
                                 ferry__etcd_watch_cb cb, void *arg);

/* Deletes key; *deleted_p (may be NULL) the number of keys deleted. */
ferry_status_t ferry__etcd_delete(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                  const char *key, int64_t *deleted_p);

ferry_status_t ferry__etcd_lease_grant(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                       int64_t ttl_s, int64_t *id_p);

/* Renews lease id; *ttl_p its remaining TTL in seconds, 0 when etcd no
 * longer knows it (expired or revoked). */
ferry_status_t ferry__etcd_lease_keepalive(ferry__etcd_t *e,
                                           ferry__etcd_conn_t *c, int64_t id,
                                           int64_t *ttl_p);

ferry_status_t ferry__etcd_lease_revoke(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                        int64_t id);

#endif
