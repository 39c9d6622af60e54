/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A measuring rank: its place in the scheme (whom it initiates to, who
 * initiates to it), its agent and buffer, and the peers it loaded. A rank
 * either initiates (initiator.c) or serves as a target (target.c); rank.c
 * sets both up the same way and ends them together.
 *
 * A scheme says who initiates towards whom:
 *   pairwise   even ranks initiate to the next odd rank (0->1, 2->3, ...)
 *   manytoone  ranks 0..N-2 initiate to rank N-1
 *   onetomany  rank 0 initiates to ranks 1..N-1, posting to all at once
 * Every initiator rank runs --threads threads, each with its own slices of
 * the buffers (one slice per thread and target, in the target's buffer one
 * per source and thread), so that no two writers share a byte.
 */
#ifndef FERRY_BENCH_RANK_H
#define FERRY_BENCH_RANK_H

#include "buf.h"
#include "job.h"

/* A command to a target for --check, and its answer. */
enum { CMD_FILL = 1, CMD_VERIFY };

typedef struct cmd {
    uint32_t cmd;
    uint32_t pad;
    uint64_t seed, off, len; /* the pattern; the range of the target's buffer */
} cmd_t;

typedef struct ack {
    uint64_t bad; /* len if every byte matched, else the first wrong offset */
} ack_t;

typedef struct topo {
    int ntargets, targets[MAX_RANKS]; /* whom this rank initiates to */
    int nsources, sources[MAX_RANKS]; /* who initiates to this rank */
    int ninitiators;                  /* initiating ranks in the job */
    int index;                        /* this rank's among them, if one */
} topo_t;

typedef struct rank_ctx {
    const options_t *o;
    job_t job;
    topo_t topo;
    ferry_agent_t *agent;
    bench_buf_t buf;
    ferry_mem_t *mem;
    size_t span; /* one slice: the largest block size times batch */
    ferry_peer_t *peers[MAX_RANKS]; /* by target index */
    uint64_t raddr[MAX_RANKS];      /* each target's buffer */
    int32_t rdev[MAX_RANKS];        /* and its device, for GPU memory */
    uint64_t *cmd_seq; /* --check commands sent, by thread and target */
} rank_ctx_t;

/* Whether rank r initiates in o's scheme. */
bool initiates(const options_t *o, int r);

/* Thread t's slice for target k: its offset in this rank's buffer, and in
 * the target's. */
uint64_t local_slice(const rank_ctx_t *rc, int t, int k);
uint64_t remote_slice(const rank_ctx_t *rc, int t, int k);

/* Runs this process as a rank of the job; returns its exit code. */
int rank_main(options_t *o);

void run_initiator(rank_ctx_t *rc);
void run_target(rank_ctx_t *rc);

#endif
