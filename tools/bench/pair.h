/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Benchmarks of two processes on one host (ferry-gpu-bench,
 * ferry-wakebench): rank 0 measures, rank 1 serves as the target. Started
 * by hand, the program launches its two ranks itself (launch.h, as
 * ferry-bench does); started as a rank of a job, it is that rank. The
 * ranks greet each other once through the communicator (each one's pid,
 * two addresses and its agent's blob) and meet at a barrier at the end.
 */
#ifndef FERRY_BENCH_PAIR_H
#define FERRY_BENCH_PAIR_H

#include "bench.h"

#include <sys/types.h>

typedef struct pair_hello {
    pid_t pid;
    uint64_t a, b;  /* what the sender's side says: its buffers' addresses */
    void *blob;     /* its agent's metadata (NULL without an agent) */
    size_t blob_len;
} pair_hello_t;

/*
 * Outside a job: runs this program as the two ranks of one (argv is its
 * command line) and exits with the job's exit code. In a job of two ranks:
 * joins it and returns the communicator.
 */
ferry_comm_t *pair_join(const char *name, char **argv);

/* Both ranks: sends this rank's greeting (agent may be NULL) and returns
 * the other's (free its blob with free()). */
pair_hello_t pair_greet(ferry_comm_t *comm, ferry_agent_t *agent, uint64_t a,
                        uint64_t b);

/* Both ranks, at the end: waits for the other, then leaves the job. */
void pair_leave(ferry_comm_t *comm);

#endif
