/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The two measurements ferry-bench makes in one process, without ranks:
 * --prepare-bench (the cost of preparing a request of many descriptors)
 * and --memcpy (the reference copy, the host's limit).
 */
#ifndef FERRY_BENCH_LOCAL_H
#define FERRY_BENCH_LOCAL_H

#include "options.h"

int run_prepare_bench(size_t n);
int run_memcpy_bench(const options_t *o);

#endif
