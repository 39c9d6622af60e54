/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Monotonic time in nanoseconds.
 */
#ifndef FERRY_UTIL_TIME_H
#define FERRY_UTIL_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ferry__now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
