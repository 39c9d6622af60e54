/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench's results: a row per operation, block size and batch size in
 * nixlbench's columns (bandwidth in decimal GB/s, times in microseconds),
 * printed as it completes, and written to --csv and --json at the end.
 * Ranks publish their figures as rank_res_t; the lead combines them.
 */
#ifndef FERRY_BENCH_REPORT_H
#define FERRY_BENCH_REPORT_H

#include "options.h"

/* A result row: nixlbench's columns, in its order, with the median of
 * the iterations' times beside the mean latency. A figure a row does not
 * measure (--memcpy's preparing and posting) is NAN: blank in the table
 * and the CSV, null in the JSON. */
enum { BW, AVG_LAT, MED_LAT, AVG_PREP, P99_PREP, AVG_POST, P99_POST, AVG_TX,
       P99_TX, NCOLS };

typedef struct result {
    const char *op; /* "WRITE", "READ", or "MEMCPY" for --memcpy */
    size_t size, batch, iters, warmup;
    double v[NCOLS];
    double checked_n, checked_bytes; /* --check: transfers, bytes compared */
} result_t;

/* What a rank publishes per step. Means are kept as sums and counts so that
 * the combined mean is exact; the combined median and 99th percentile are
 * the largest of the ranks' (exact with one initiator). */
typedef struct rank_res {
    double bytes, loop_ns;
    double prep_sum, prep_n, prep_p99;
    double post_sum, post_n, post_p99;
    double tx_sum, tx_n, tx_p99, tx_p50;
    double checked_n, checked_bytes;
} rank_res_t;

/* The row of n ranks' figures: the bytes of all over the slowest one's
 * time. */
result_t report_combine(const char *op, size_t size, size_t batch, size_t iters,
                        size_t warmup, const rank_res_t *res, size_t n);

void report_header(const char *title);
void report_row(const result_t *r);
/* Writes --csv and --json, if given. */
void report_files(const options_t *o, const result_t *res, size_t n);

#endif
