/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/comm.h: the communicator, the N ranks of a job joined through a
 * store: barrier, allgather, job-wide abort, and the collective metadata
 * exchange that loads every rank's blob into an agent. Part of <ferry.h>.
 */
#ifndef FERRY_COMM_H
#define FERRY_COMM_H

#include "agent.h"
#include "status.h"
#include "store.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A communicator joins the N ranks of a job through a store (above, or an
 * etcd cluster): ranks 0..N-1, a barrier, an allgather of byte strings, and
 * the collective metadata exchange that loads every rank's blob into an
 * agent. It is what a job started by ferry-run, torchrun, mpirun or srun
 * calls first.
 *
 * Every collective must be called by every rank, in the same order, and
 * takes a timeout. While it waits it watches the job's abort key, so that
 * after one rank calls ferry_comm_abort(), dies (its heartbeat stops) or
 * times out, every other rank's collective returns FERRY_ERR_ABORTED with a
 * detail text naming that rank and its reason, instead of hanging. An
 * aborted communicator stays aborted: every later collective returns
 * FERRY_ERR_ABORTED at once. A store that goes away (for etcd: no member
 * answers for the liveness time) is FERRY_ERR_PEER_LOST.
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
    /* FERRY_COMM_PARAM_STORE_URL: the store (copied): a c10d TCPStore,
     * "tcp://host:port", or an etcd cluster,
     * "etcd://host:port[,host:port...]/prefix", whose members the ranks
     * fail over between and under whose prefix the job's keys go, bound to
     * a lease of the job's (docs/COMM.md, "On etcd"). Default:
     * FERRY_STORE, else tcp://MASTER_ADDR:MASTER_PORT. */
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
 * store answers at a tcp:// URL, rank 0 starts one in-process (bound to the
 * URL's address) and keeps it until every rank has left. Rank 0 therefore
 * may not call ferry_comm_destroy() long before the others. An etcd:// URL
 * names a cluster that serves every rank alike; in a libferry built
 * without etcd support (libcurl, jansson) it is FERRY_ERR_UNSUPPORTED.
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
 * A store that does not answer holds it no longer than about a second
 * past that: the heartbeat's call under way is given up, and so is the
 * leave (the job's keys then stay in the store). The peers loaded by ferry_comm_exchange() belong to their agent and stay
 * valid. Accepts NULL. No other thread may use the communicator meanwhile.
 */
FERRY_API void ferry_comm_destroy(ferry_comm_t *comm);

/* This process's rank (0 <= rank < size). Any thread. */
FERRY_API int ferry_comm_rank(const ferry_comm_t *comm);

/* The number of ranks. Any thread. */
FERRY_API int ferry_comm_size(const ferry_comm_t *comm);

/*
 * Returns when every rank has entered the barrier. timeout_ns bounds the
 * wait, and every store call of the barrier too (plus one second for
 * publishing this rank's giving up), so a stalled store cannot hold it
 * longer; a negative value waits without limit (a dead rank still ends it,
 * through its heartbeat). Returns FERRY_ERR_ABORTED (naming the rank and
 * its reason) if any rank aborted, died or timed out; FERRY_ERR_TIMEOUT if
 * this rank's own time ran out first, in which case it aborts the job with
 * a reason naming the ranks it waited for; FERRY_ERR_PEER_LOST if the store
 * is gone, or at once, naming the first failure, once an earlier
 * collective's failure closed this communicator's store connection (a
 * TCPStore reply that did not come by the deadline: docs/COMM.md). A
 * collective that returns FERRY_OK leaves ferry_last_error() as it was.
 * Any thread (see above).
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
 * reason. This rank's communicator is aborted first, so that a collective
 * another thread waits in returns FERRY_ERR_ABORTED within one slice of
 * its wait (100 ms), naming this abort even if another rank's reached the
 * store first; then the abort is published on the heartbeat's own store
 * connection. The first abort published wins for the other ranks; later
 * ones are ignored. Returns FERRY_ERR_PEER_LOST if the store could not be
 * told (this communicator is aborted all the same). Any thread, also while
 * another thread waits in a collective of the same communicator; not from
 * a signal handler.
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

#ifdef __cplusplus
}
#endif

#endif /* FERRY_COMM_H */
