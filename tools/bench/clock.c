/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Clocks and sample statistics (clock.h).
 */
#include "clock.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static double g_ns_per_tick = 1.0;

uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double thread_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

void clock_calibrate(void)
{
#if defined(__x86_64__) || defined(__i386__)
    uint64_t n0 = now_ns(), t0 = ticks(), n1, t1;

    nanosleep(&(struct timespec){.tv_nsec = 20000000}, NULL);
    n1 = now_ns();
    t1 = ticks();
    g_ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

uint64_t ticks_ns(uint64_t t)
{
    return (uint64_t)((double)t * g_ns_per_tick + 0.5);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

uint64_t percentile(uint64_t *v, size_t n, unsigned pct)
{
    size_t rank = (pct * n + 99) / 100; /* ceil(pct n / 100), n >= 1 */

    qsort(v, n, sizeof(*v), cmp_u64);
    return v[rank - 1];
}

double sum_u64(const uint64_t *v, size_t n)
{
    double sum = 0;

    for (size_t i = 0; i < n; i++) {
        sum += (double)v[i];
    }
    return sum;
}
