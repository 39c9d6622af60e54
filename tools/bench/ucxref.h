/* SPDX-License-Identifier: Apache-2.0 */
/*
 * UCX's own figure as a reference, measured in the same run as ferry's:
 * runs ucx_perftest's server and client on this host (the server on a free
 * port, the client against 127.0.0.1), as bench/compare-ucx does from the
 * shell, and reads the client's "Final:" line.
 */
#ifndef FERRY_BENCH_UCXREF_H
#define FERRY_BENCH_UCXREF_H

#include "bench.h"

typedef struct ucxref {
    bool ok;          /* false: why says what went wrong */
    double typical_us; /* "typical" latency (a ping-pong's: one way) */
    double avg_us;    /* average latency */
    char why[160];
} ucxref_t;

/*
 * Runs ucx_perftest -t test -s size -n iters -w warmup between two
 * processes of this host and returns its latencies. Never dies: a missing
 * ucx_perftest, a server that does not start or a client that fails is
 * reported in why. Both processes are stopped by their pid, and die with
 * the calling process. Takes at most timeout_s for the client.
 */
ucxref_t ucxref_run(const char *test, size_t size, size_t iters, size_t warmup,
                    unsigned timeout_s);

#endif
