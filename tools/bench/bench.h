/*
 * What every part of ferry-bench (and the other benchmark programs built
 * from these files) shares: the limits, and how a failure ends the run.
 * A benchmark that meets an error stops with the call, its status and the
 * library's detail text; it has nothing to recover to.
 */
#ifndef FERRY_BENCH_BENCH_H
#define FERRY_BENCH_BENCH_H

#include "ferry.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_LIST 64
#define MAX_RANKS 256
#define MAX_THREADS 64

/* Names the program (and, once known, the rank) in die()'s messages. */
void bench_set_name(const char *name);
void bench_set_rank(int rank);

void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Every ferry error ends the run with the call, its status and the detail
 * text, which is what the lead needs to find the fault. */
#define CHECK(call)                                                            \
    do {                                                                       \
        ferry_status_t st_ = (call);                                           \
        if (st_ < 0) {                                                         \
            die("%s: %s (%s)", #call, ferry_status_str(st_),                   \
                ferry_last_error());                                           \
        }                                                                      \
    } while (0)

/* A count with an optional binary K/M/G suffix (either case); dies naming
 * what on anything else, and on 0 unless allow_zero. */
size_t parse_count(const char *s, const char *what, bool allow_zero);

/* Runs fn on each of n contexts of size bytes at ctxs: on the calling
 * thread when n is 1 (a measurement of one thread gets no thread switch),
 * else on n new threads; returns when all are done. */
void run_threads(int n, void *(*fn)(void *), void *ctxs, size_t size);

/* calloc that dies instead of returning NULL (n == 0 is one element). */
void *xcalloc(size_t n, size_t size);

#endif
