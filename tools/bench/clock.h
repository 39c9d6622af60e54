/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The benchmarks' clocks and sample statistics. now_ns() is
 * CLOCK_MONOTONIC; ticks() is the timed loops' cheaper counter, converted
 * with ticks_ns() after clock_calibrate().
 */
#ifndef FERRY_BENCH_CLOCK_H
#define FERRY_BENCH_CLOCK_H

#include <stddef.h>
#include <stdint.h>

uint64_t now_ns(void);
/* CPU seconds (user + system) the calling thread has used. */
double thread_cpu_s(void);

/*
 * The timed loops' clock. On x86 it is the time-stamp counter, which costs
 * about 10 ns here against clock_gettime()'s 23 on this VM (three readings
 * an iteration were 5% of a 64 KiB transfer's time), calibrated against
 * CLOCK_MONOTONIC at start; elsewhere it is CLOCK_MONOTONIC itself.
 * ucx_perftest times its loops with the same counter.
 */
static inline uint64_t ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return now_ns();
#endif
}

/* Measures the counter's rate (20 ms); call once before ticks_ns(). */
void clock_calibrate(void);
uint64_t ticks_ns(uint64_t t);

/* Sorts samples in place; returns the nearest-rank pct-th percentile
 * (50: the median, 99). */
uint64_t percentile(uint64_t *v, size_t n, unsigned pct);
double sum_u64(const uint64_t *v, size_t n);

#endif
