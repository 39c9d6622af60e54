/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/dir.h: the directory of agents, kept in an etcd cluster. An agent
 * publishes its metadata blob under PREFIX/NAME, bound to a lease that the
 * directory keeps alive; other processes get it by name (loading it as a
 * peer), list the prefix, or watch it for joins, updates and departures. A
 * publisher that dies stops renewing its lease, etcd deletes its key when
 * the lease's TTL runs out, and every watcher sees the departure. Part of
 * <ferry.h>; docs/DIRECTORY.md shows the keys and values.
 *
 * The directory speaks etcd v3's JSON gateway over HTTP (etcd 3.4 and
 * later), and is built only where libcurl and jansson were found: otherwise
 * every call returns FERRY_ERR_UNSUPPORTED with a text saying so.
 */
#ifndef FERRY_DIR_H
#define FERRY_DIR_H

#include "agent.h"
#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A directory handle: a list of etcd endpoints, a key prefix, one lease
 * (granted on the first publish) shared by every agent this handle
 * publishes, and one thread of its own that renews the lease every third
 * of its TTL; once ferry_dir_watch() was called, a second thread follows
 * etcd's watch stream of the prefix. Every call to etcd has a time limit;
 * a call that fails to reach an endpoint (refused, timed out, or answered
 * with a server error) is tried on the next endpoint, so a cluster with a
 * member down keeps serving. Any thread may call any function except where
 * noted; calls are serialised on one connection per handle (the threads
 * have their own).
 */
typedef struct ferry_dir ferry_dir_t;

enum {
    FERRY_DIR_PARAM_TTL = 1u << 0,
    FERRY_DIR_PARAM_TIMEOUT = 1u << 1,
    FERRY_DIR_PARAM_POLL = 1u << 2
};

typedef struct ferry_dir_params {
    uint64_t field_mask;
    /* FERRY_DIR_PARAM_TTL: the lease's time to live, in nanoseconds,
     * rounded up to whole seconds (etcd's unit), at least 1 s: how long a
     * publisher that stopped renewing stays listed. Default: FERRY_DIR_TTL_MS
     * (5 s). */
    uint64_t ttl_ns;
    /* FERRY_DIR_PARAM_TIMEOUT: limit, in nanoseconds, for one call to one
     * endpoint (connecting included); a call that tries every endpoint may
     * take this long for each. Default: FERRY_DIR_TIMEOUT_MS (2 s). */
    uint64_t timeout_ns;
    /* FERRY_DIR_PARAM_POLL: while a watch's stream cannot be set up (no
     * endpoint answers), how often it tries again, reading the prefix each
     * time, in nanoseconds, at least 10 ms. Default: FERRY_DIR_POLL_MS
     * (200 ms). */
    uint64_t poll_ns;
} ferry_dir_params_t;

/*
 * Opens a directory at url: "etcd://host:port[,host:port...]/prefix", each
 * host a name or an IPv4 address (the endpoints are tried in order, the one
 * that answered last first), prefix one or more path characters (no
 * trailing "/"; keys are prefix + "/" + agent name). It asks the first
 * endpoint that answers for the cluster's status (a ranged read), so a
 * wrong address fails here. params may be NULL. On success *dir_p holds the
 * handle. Returns FERRY_ERR_INVALID for a malformed URL or parameters (the
 * text says what is wrong), FERRY_ERR_UNSUPPORTED in a build without the
 * directory, or the errors of any call to etcd (below). Any thread.
 *
 * Every call to etcd fails only when every endpoint failed, with a text
 * naming each endpoint and what happened there: FERRY_ERR_PEER_LOST when
 * none could be reached, FERRY_ERR_TIMEOUT when one was reached but did
 * not answer within the timeout, FERRY_ERR_PROTOCOL when one answered with
 * something other than etcd's JSON, FERRY_ERR_BACKEND when etcd refused
 * the request (its message in the text).
 */
FERRY_API ferry_status_t ferry_dir_create(const char *url,
                                          const ferry_dir_params_t *params,
                                          ferry_dir_t **dir_p);

/*
 * Stops the handle's thread, revokes its lease (so that every agent it
 * published disappears from the directory at once, not after the TTL),
 * and frees it. A revocation that fails is logged; the lease then expires
 * by itself. Accepts NULL. No other thread may use the handle meanwhile.
 */
FERRY_API void ferry_dir_destroy(ferry_dir_t *dir);

/*
 * Publishes the agent: packs its metadata (ferry_md_pack()) and puts it
 * under PREFIX/NAME (NAME the agent's name) bound to the handle's lease,
 * granting the lease first if the handle has none yet. Publishing the same
 * agent again, after new registrations, replaces the value in one put:
 * readers see the old blob or the new one, never a mix. The handle keeps a
 * copy of every blob it published, and puts them again under a new lease
 * if the old one is lost (a partition longer than the TTL). Returns
 * ferry_md_pack()'s errors or those of a call to etcd (see
 * ferry_dir_create()). Any thread.
 */
FERRY_API ferry_status_t ferry_dir_publish(ferry_dir_t *dir,
                                           ferry_agent_t *agent);

/*
 * Removes the agent's entry at once (a delete, the lease stays for the
 * others) and forgets its blob. Returns FERRY_ERR_NOT_FOUND if this handle
 * did not publish that agent. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_unpublish(ferry_dir_t *dir,
                                             ferry_agent_t *agent);

/*
 * Renews the lease now, in addition to the handle's thread, which does it
 * every third of the TTL (for a caller that has been unable to reach etcd
 * and wants to know whether it still can). If etcd no longer knows the
 * lease, a new one is granted and every blob put again. Returns FERRY_OK
 * when the handle holds no lease yet. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_keepalive(ferry_dir_t *dir);

/*
 * Reads the blob published under name: on success *blob_p (free with
 * ferry_dir_free()) and *len_p, and *revision_p (may be NULL) the etcd
 * revision that last changed it, which differs each time the entry is
 * published again. Returns FERRY_ERR_NOT_FOUND when no agent of that name
 * is published. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_get(ferry_dir_t *dir, const char *name,
                                       void **blob_p, size_t *len_p,
                                       int64_t *revision_p);

/*
 * Reads the blob published under name and loads it into agent as a peer
 * (ferry_peer_load(): the same handle for a name already loaded, its
 * metadata replaced; a restarted process under the same name is taken as
 * a new instance, whose old requests fail with FERRY_ERR_PEER_LOST).
 * Returns ferry_dir_get()'s errors, or ferry_peer_load()'s
 * (FERRY_ERR_PROTOCOL for a blob that fails to load). Any thread.
 */
FERRY_API ferry_status_t ferry_dir_load(ferry_dir_t *dir, ferry_agent_t *agent,
                                        const char *name,
                                        ferry_peer_t **peer_p);

/*
 * Lists the agents published under the prefix: *names_p an array of *n_p
 * names in key order, in one allocation that ferry_dir_free() releases
 * (NULL with *n_p 0 when there are none). Any thread.
 */
FERRY_API ferry_status_t ferry_dir_list(ferry_dir_t *dir, char ***names_p,
                                        size_t *n_p);

/* Frees what ferry_dir_get() or ferry_dir_list() returned. Accepts NULL.
 * Any thread. */
FERRY_API void ferry_dir_free(void *p);

typedef enum ferry_dir_event_kind {
    FERRY_DIR_JOIN = 1,   /* a name appeared, or reappeared (new instance) */
    FERRY_DIR_UPDATE = 2, /* its blob was published again */
    FERRY_DIR_LEAVE = 3,  /* it was removed: unpublished, revoked, expired */
    /* The blob now published under the name did not load into an attached
     * agent that had a peer of that name (ferry_dir_attach()); detail says
     * why. The peer keeps the metadata it had. */
    FERRY_DIR_LOAD_FAILED = 4
} ferry_dir_event_kind_t;

typedef struct ferry_dir_event {
    ferry_dir_event_kind_t kind;
    int64_t revision; /* etcd revision of the change (0 for LEAVE) */
    char name[256];   /* the agent's name, NUL-terminated */
    char detail[256]; /* LOAD_FAILED: the reason, NUL-terminated; else "" */
} ferry_dir_event_t;

/*
 * Starts watching the prefix: from now on a thread of the handle follows
 * etcd's watch stream and queues one event per change as etcd makes it.
 * The agents present when the watch starts are reported as JOIN events
 * first. A name deleted and published again (a restarted process) gives
 * LEAVE then JOIN, told apart from an UPDATE by etcd's creation revision.
 * When the stream breaks (its member died) the watch reads the prefix again
 * and resumes through another endpoint; changes made meanwhile are
 * reported then, though one undone meanwhile is not. Calling it again does
 * nothing. While no endpoint answers, the watch keeps its last view and
 * retries every poll interval; nothing is reported as gone because etcd
 * could not be reached. Returns FERRY_ERR_SYSTEM if the thread cannot
 * start. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_watch(ferry_dir_t *dir);

/*
 * Takes up to max queued events, oldest first, without blocking: *n_p the
 * number written to out (0 when none wait). Returns FERRY_ERR_INVALID
 * before ferry_dir_watch(). Any thread.
 */
FERRY_API ferry_status_t ferry_dir_events(ferry_dir_t *dir,
                                          ferry_dir_event_t *out, size_t max,
                                          size_t *n_p);

/*
 * Sleeps until at least one event is queued or timeout_ns passes (negative:
 * no limit). Returns FERRY_OK when events wait, FERRY_ERR_TIMEOUT when the
 * time ran out, FERRY_ERR_INVALID before ferry_dir_watch(). Any thread.
 */
FERRY_API ferry_status_t ferry_dir_wait(ferry_dir_t *dir, int64_t timeout_ns);

/*
 * Writes to *fd_p a file descriptor, owned by the handle, that is readable
 * exactly while events are queued: add it to an epoll, poll or asyncio
 * loop, and drain with ferry_dir_events() when it is readable. Do not read
 * from it or close it. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_fd(ferry_dir_t *dir, int *fd_p);

/*
 * Attaches an agent to the directory handle's watch (starting the watch if
 * needed): from now on, when the watch sees an agent leave (its lease
 * expired, was revoked, or it was unpublished), the attached agent's peer
 * of that name, if it has one, is gone: its requests in flight end with
 * FERRY_ERR_PEER_LOST (the text says it left the directory), and preparing
 * or posting to it is FERRY_ERR_PEER_LOST until a blob of that name is
 * loaded again, which counts as a new instance. When the watch sees a name
 * the attached agent has a peer of published again (UPDATE: new
 * registrations; JOIN: a restarted process), the handle's thread loads the
 * new blob into it, as ferry_dir_load() would; a blob that does not load
 * is a FERRY_DIR_LOAD_FAILED event with the reason, and the peer stays as
 * it was.
 * Detach the agent before destroying it. Attaching twice does nothing.
 * Any thread.
 */
FERRY_API ferry_status_t ferry_dir_attach(ferry_dir_t *dir, ferry_agent_t *agent);

/*
 * Detaches an agent attached with ferry_dir_attach(): once this returns,
 * the handle no longer touches it. FERRY_ERR_NOT_FOUND if it was not
 * attached. Any thread.
 */
FERRY_API ferry_status_t ferry_dir_detach(ferry_dir_t *dir, ferry_agent_t *agent);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_DIR_H */
