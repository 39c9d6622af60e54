/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The benchmarks' one way to speak up and to fail (note(), die(),
 * die_usage(), die_status()), to run threads and to read a size (bench.h).
 */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char *g_name = "ferry-bench";
static int g_rank = -1;

void bench_set_name(const char *name)
{
    g_name = name;
}

void bench_set_rank(int rank)
{
    g_rank = rank;
}

static void vprefixed(const char *fmt, va_list ap)
{
    if (g_rank >= 0) {
        fprintf(stderr, "%s[rank %d]: ", g_name, g_rank);
    } else {
        fprintf(stderr, "%s: ", g_name);
    }
    vfprintf(stderr, fmt, ap);
}

void note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void die_usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

void die_status(ferry_status_t st, const char *fmt, ...)
{
    const char *detail = ferry_last_error();
    va_list ap;

    va_start(ap, fmt);
    vprefixed(fmt, ap);
    va_end(ap);
    if (detail != NULL && *detail != '\0') {
        fprintf(stderr, ": %s (%s)\n", detail, ferry_status_str(st));
    } else {
        fprintf(stderr, ": %s\n", ferry_status_str(st));
    }
    exit(1);
}

void run_threads(int n, void *(*fn)(void *), void *ctxs, size_t size)
{
    pthread_t *tids;

    if (n == 1) {
        fn(ctxs);
        return;
    }
    tids = xcalloc((size_t)n, sizeof(*tids));
    for (int t = 0; t < n; t++) {
        if (pthread_create(&tids[t], NULL, fn, (char *)ctxs + (size_t)t * size) != 0) {
            die("pthread_create failed");
        }
    }
    for (int t = 0; t < n; t++) {
        pthread_join(tids[t], NULL);
    }
    free(tids);
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (p == NULL) {
        die("out of memory");
    }
    return p;
}

size_t parse_count(const char *s, const char *what, bool allow_zero)
{
    char *end;
    unsigned long long v;
    int shift = 0;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *s == '-' || *s == '+' || *s == ' ') {
        die_usage("%s: '%s' is not a number (digits, then K, M or G if you like)",
            what, s);
    }
    switch (*end) {
    case 'K': case 'k': shift = 10; end++; break;
    case 'M': case 'm': shift = 20; end++; break;
    case 'G': case 'g': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0') {
        die_usage("%s: '%s' is not a number (digits, then K, M or G if you like)",
            what, s);
    }
    if (v == 0 && !allow_zero) {
        die_usage("%s: '%s' must be above 0", what, s);
    }
    if (v > (SIZE_MAX / 2) >> shift) {
        die_usage("%s: '%s' is too large", what, s);
    }
    return (size_t)(v << shift);
}
