/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The test library's small pieces: the failure count every check macro
 * adds to, time and CPU time, seeds and knobs from the environment,
 * allocation that ends the test instead of returning NULL, and posting a
 * request to its end.
 */
#include "xfer_util.h"

#include <sys/resource.h>
#include <time.h>

_Atomic int test_failures;

uint64_t xu_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double xu_now_s(void)
{
    return (double)xu_now_ns() * 1e-9;
}

double xu_ms_since(uint64_t t0)
{
    return (double)(xu_now_ns() - t0) / 1e6;
}

double xu_thread_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

uint64_t xu_seed(uint64_t dflt)
{
    const char *s = getenv("FERRY_TEST_SEED");

    return (s && *s) ? strtoull(s, NULL, 0) : dflt;
}

long xu_env_long(const char *name, long dflt)
{
    const char *s = getenv(name);

    return (s && *s) ? strtol(s, NULL, 0) : dflt;
}

void *xu_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu x %zu)\n", n, size);
        exit(1);
    }
    return p;
}

uint8_t *xu_alloc_buf(size_t len)
{
    void *p = NULL;

    if (posix_memalign(&p, 4096, len ? len : 1) != 0) {
        fprintf(stderr, "posix_memalign(%zu) failed\n", len);
        exit(1);
    }
    return p;
}

ferry_status_t xu_post_wait(ferry_xfer_t *x, int64_t timeout_ns)
{
    ferry_status_t st = ferry_xfer_post(x);

    if (st == FERRY_IN_PROGRESS)
        st = ferry_xfer_wait(x, timeout_ns);
    return st;
}
