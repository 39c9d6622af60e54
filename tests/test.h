/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The test harness: check macros that print both operands (and, for
 * statuses, the status text and ferry_last_error()), a deterministic random
 * generator, and the exit code CTest reads as "skipped".
 */
#ifndef FERRY_TEST_H
#define FERRY_TEST_H

#include "ferry.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#define TEST_SKIP_CODE 77

/* The process's count of failed checks, defined once in the test library
 * (tests/lib/util.c) so that checks inside library functions count too.
 * Atomic: threads of one test may fail at once. */
extern _Atomic int test_failures;

#define TEST_FAIL_AT_(...)                                                    \
    do {                                                                      \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                       \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        test_failures++;                                                      \
    } while (0)

/* Status checks print the status names and the thread's detail text. */
#define EXPECT_ST(expected, expr)                                             \
    do {                                                                      \
        ferry_status_t e_ = (expected), a_ = (expr);                          \
        if (e_ != a_)                                                         \
            TEST_FAIL_AT_("%s: expected %d (%s), got %d (%s); last error: %s",\
                          #expr, (int)e_, ferry_status_str(e_), (int)a_,      \
                          ferry_status_str(a_), ferry_last_error());          \
    } while (0)

#define ASSERT_ST(expected, expr)                                             \
    do {                                                                      \
        int before_ = test_failures;                                          \
        EXPECT_ST(expected, expr);                                            \
        if (test_failures != before_)                                         \
            exit(1);                                                          \
    } while (0)

#define EXPECT_EQ(expected, actual)                                           \
    do {                                                                      \
        long long e_ = (long long)(expected), a_ = (long long)(actual);       \
        if (e_ != a_)                                                         \
            TEST_FAIL_AT_("%s == %s: expected %lld, got %lld", #expected,     \
                          #actual, e_, a_);                                   \
    } while (0)

#define EXPECT_TRUE(cond)                                                     \
    do {                                                                      \
        if (!(cond))                                                          \
            TEST_FAIL_AT_("expected true: %s", #cond);                        \
    } while (0)

#define ASSERT_TRUE(cond)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            TEST_FAIL_AT_("expected true: %s", #cond);                        \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* The detail text must contain a substring (for "names the index" checks). */
#define EXPECT_ERR_HAS(substr)                                                \
    do {                                                                      \
        if (strstr(ferry_last_error(), (substr)) == NULL)                     \
            TEST_FAIL_AT_("last error '%s' lacks '%s'", ferry_last_error(),   \
                          (substr));                                          \
    } while (0)

/* The in-process metadata exchange: packs from's blob and loads it into
 * into (from may be into itself, a loopback peer). */
static inline ferry_status_t test_exchange(ferry_agent_t *into, ferry_agent_t *from,
                                           ferry_peer_t **peer_p)
{
    void *blob;
    size_t len;
    ferry_status_t st = ferry_md_pack(from, &blob, &len);

    if (st != FERRY_OK)
        return st;
    st = ferry_peer_load(into, blob, len, peer_p);
    ferry_md_free(blob);
    return st;
}

/* Prints the summary line and returns the process exit code. */
static inline int test_finish(const char *name)
{
    if (test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

/* xoshiro-style splitmix64: deterministic, seedable, fast. */
typedef struct test_rng {
    uint64_t s;
} test_rng_t;

static inline uint64_t test_rand(test_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static inline uint64_t test_rand_range(test_rng_t *r, uint64_t lo, uint64_t hi)
{
    return lo + test_rand(r) % (hi - lo + 1);
}

/* n bytes straight from the generator, for data no check recomputes. */
static inline void test_rand_bytes(test_rng_t *r, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)test_rand(r);
}

/* The byte expected at address offset off of a buffer in iteration iter:
 * cheap to compute anywhere, different for every (seed, iter, off). */
static inline uint8_t test_pattern(uint64_t seed, uint64_t iter, uint64_t off)
{
    uint64_t z = seed ^ (iter * 0xD6E8FEB86659FD93ull) ^ (off >> 3) * 0x9E3779B97F4A7C15ull;

    z = (z ^ (z >> 32)) * 0xD6E8FEB86659FD93ull;
    z ^= z >> 29;
    return (uint8_t)(z >> (8 * (off & 7)));
}

static inline void test_fill(uint8_t *p, uint64_t len, uint64_t seed,
                             uint64_t iter, uint64_t base_off)
{
    for (uint64_t i = 0; i < len; i++)
        p[i] = test_pattern(seed, iter, base_off + i);
}

/* Returns the index of the first wrong byte, or UINT64_MAX if all match. */
static inline uint64_t test_verify(const uint8_t *p, uint64_t len,
                                   uint64_t seed, uint64_t iter,
                                   uint64_t base_off)
{
    for (uint64_t i = 0; i < len; i++)
        if (p[i] != test_pattern(seed, iter, base_off + i))
            return i;
    return UINT64_MAX;
}

/*
 * Word-at-a-time forms of test_fill() and test_verify(). They write and
 * check exactly the bytes test_pattern() defines (byte k of an aligned
 * 8-byte group of offsets is byte k, little-endian, of one 64-bit mix), but
 * compute one mix per 8 bytes instead of one per byte, so multi-gigabyte
 * data checks stay within a test's time budget. Any alignment of p and any
 * base_off work: the head and tail are done byte by byte.
 */
static inline uint64_t test_pattern_word(uint64_t seed, uint64_t iter,
                                         uint64_t word_index)
{
    uint64_t z = seed ^ (iter * 0xD6E8FEB86659FD93ull) ^ word_index * 0x9E3779B97F4A7C15ull;

    z = (z ^ (z >> 32)) * 0xD6E8FEB86659FD93ull;
    z ^= z >> 29;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    z = __builtin_bswap64(z);
#endif
    return z;
}

static inline void test_fill_fast(uint8_t *p, uint64_t len, uint64_t seed,
                                  uint64_t iter, uint64_t base_off)
{
    uint64_t i = 0;

    for (; i < len && ((base_off + i) & 7) != 0; i++)
        p[i] = test_pattern(seed, iter, base_off + i);
    for (; i + 8 <= len; i += 8) {
        uint64_t w = test_pattern_word(seed, iter, (base_off + i) >> 3);

        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] = test_pattern(seed, iter, base_off + i);
}

/* Returns the index of the first wrong byte, or UINT64_MAX if all match. */
static inline uint64_t test_verify_fast(const uint8_t *p, uint64_t len,
                                        uint64_t seed, uint64_t iter,
                                        uint64_t base_off)
{
    uint64_t i = 0;

    for (; i < len && ((base_off + i) & 7) != 0; i++)
        if (p[i] != test_pattern(seed, iter, base_off + i))
            return i;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = test_pattern_word(seed, iter, (base_off + i) >> 3), got;

        memcpy(&got, p + i, 8);
        if (got != w)
            break; /* the byte loop below names the exact byte */
    }
    for (; i < len; i++)
        if (p[i] != test_pattern(seed, iter, base_off + i))
            return i;
    return UINT64_MAX;
}

#endif
