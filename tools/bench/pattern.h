/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The bytes --check writes and expects: a pattern that depends on a seed
 * and on the offset, so that stale data from an earlier post or another
 * writer never passes, and the fixed shuffles of --layout random.
 */
#ifndef FERRY_BENCH_PATTERN_H
#define FERRY_BENCH_PATTERN_H

#include "buf.h"

/* The byte at offset off of pattern seed. */
uint8_t pattern_byte(uint64_t seed, uint64_t off);

/* Writes the pattern (fill) into [at, at + len) of b, as it runs from
 * pat_off, or returns the first offset that differs from it, or len if
 * none does; GPU memory through a host copy. */
size_t pattern(const bench_buf_t *b, size_t at, size_t len, uint64_t seed,
               uint64_t pat_off, bool fill);

/* Mixes v into the hash h: seeds from several numbers. */
uint64_t mix(uint64_t h, uint64_t v);

/* A fixed shuffle (Fisher-Yates) of n block slots, from hash h (free it). */
size_t *shuffled_slots(size_t n, uint64_t h);

#endif
