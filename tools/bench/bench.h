/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What every part of ferry-bench (and the other benchmark programs built
 * from these files) shares: the limits, and how a failure ends the run.
 * A benchmark that meets an error stops, saying what failed, with the
 * library's detail text and status; it has nothing to recover to.
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

/* Prints a line on stderr, prefixed with the program (and rank); die()
 * then exits 1, die_usage() 2 (a mistake on the command line). */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void die_usage(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* Every ferry error ends the run with what failed, in words (a printf
 * format and its arguments after the call), the library's detail text and
 * the status, which is what a user needs to find the fault. */
#define CHECK(call, ...)                                                       \
    do {                                                                       \
        ferry_status_t st_ = (call);                                           \
        if (st_ < 0) {                                                         \
            die_status(st_, __VA_ARGS__);                                      \
        }                                                                      \
    } while (0)

/* Dies with "<what>: <ferry_last_error()> (<status>)". */
void die_status(ferry_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* A count with an optional binary K/M/G suffix (either case); on anything
 * else, and on 0 unless allow_zero, exits 2 naming what and the text. */
size_t parse_count(const char *s, const char *what, bool allow_zero);

/* Runs fn on each of n contexts of size bytes at ctxs: on the calling
 * thread when n is 1 (a measurement of one thread gets no thread switch),
 * else on n new threads; returns when all are done. */
void run_threads(int n, void *(*fn)(void *), void *ctxs, size_t size);

/* calloc that dies instead of returning NULL (n == 0 is one element). */
void *xcalloc(size_t n, size_t size);

#endif
