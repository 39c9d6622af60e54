/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench's command line: what to measure (operations, block and batch
 * sizes, iterations), where (memory kinds, allocation, layout), between
 * whom (ranks, scheme, threads) and how the sides wait; parsed once into
 * an options_t that every other part reads.
 */
#ifndef FERRY_BENCH_OPTIONS_H
#define FERRY_BENCH_OPTIONS_H

#include "bench.h"

#include <stdio.h>

enum { SCHEME_PAIRWISE, SCHEME_MANYTOONE, SCHEME_ONETOMANY };
/* How a target serves: spinning on progress (as ucx_perftest's responder
 * does), sleeping on ferry_agent_fd(), or leaving it to ferry's progress
 * thread. Emulated RMA needs the target's CPU, so this matters. */
enum { TARGET_SPIN, TARGET_FD, TARGET_THREAD };
enum { WAIT_POLL, WAIT_BLOCK };
enum { ALLOC_FERRY, ALLOC_MMAP };
enum { LAYOUT_SEQ, LAYOUT_RANDOM };

extern const char *const scheme_names[];
extern const char *const target_names[];
extern const char *const wait_names[];
extern const char *const alloc_names[];
extern const char *const layout_names[];
extern const char *const kind_names[]; /* by ferry_mem_kind_t */

typedef struct options {
    size_t sizes[MAX_LIST], nsizes;
    size_t batches[MAX_LIST], nbatches;
    size_t iters, warmup; /* 0: automatic */
    bool warmup_set;
    bool do_write, do_read, check, progress_thread;
    int scheme, world, rank, threads, wait_mode, target_mode, alloc, layout;
    bool world_set; /* -n was given */
    ferry_mem_kind_t init_mem, target_mem;
    const char *csv_path, *json_path, *store_url;
    bool mem_set; /* --initiator-mem or --target-mem was given */
    size_t prepare_n; /* 0: not in --prepare-bench mode */
    bool memcpy_mode;
    bool notify;    /* --notify (notify.h) */
    bool sizes_set; /* --sizes was given */
    bool op_set;    /* --op was given */
    int gpu; /* the device of a rank's GPU memory; -1: rank modulo the count */
    uint64_t timeout_ns; /* --timeout: how long any wait on the job lasts */
} options_t;

/* Parses the command line; prints usage and exits on --help or an error. */
void options_parse(options_t *o, int argc, char **argv);
/* The checks that need the job's size, once it is known (o->world). */
void options_check_world(const options_t *o);

/* Iterations of a row moving bytes per iteration, and its warm-up. */
size_t options_iters(const options_t *o, size_t bytes);
size_t options_warmup(const options_t *o, size_t iters);

/* "WRITE" or "READ". */
const char *op_name(ferry_xfer_op_t op);

#endif
