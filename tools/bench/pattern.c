/* SPDX-License-Identifier: Apache-2.0 */
/*
 * --check's pattern and --layout random's shuffles (pattern.h).
 */
#include "pattern.h"

#include <stdlib.h>

/* The seed changes with every iteration, step, rank, thread and target. */
uint8_t pattern_byte(uint64_t seed, uint64_t off)
{
    uint64_t x = (seed ^ (off >> 3)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return (uint8_t)(x >> ((off & 7) * 8));
}

size_t pattern(const bench_buf_t *b, size_t at, size_t len, uint64_t seed,
               uint64_t pat_off, bool fill)
{
    uint8_t *buf = b->p + at;

    if (b->kind != FERRY_MEM_HOST) {
        uint8_t *host = xcalloc(len ? len : 1, 1);
        bench_buf_t hb = {.kind = FERRY_MEM_HOST, .p = host, .len = len};
        size_t bad;

        if (!fill) {
            bench_copy(b, at, host, len, false);
        }
        bad = pattern(&hb, 0, len, seed, pat_off, fill);
        if (fill) {
            bench_copy(b, at, host, len, true);
        }
        free(host);
        return bad;
    }
    for (size_t i = 0; i < len; i++) {
        if (fill) {
            buf[i] = pattern_byte(seed, pat_off + i);
        } else if (buf[i] != pattern_byte(seed, pat_off + i)) {
            return i;
        }
    }
    return len;
}

uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

/* As scattered as a KV cache's block table: no two blocks neighbour at the
 * destination as they do at the source, and none can be merged. */
size_t *shuffled_slots(size_t n, uint64_t h)
{
    size_t *slot = xcalloc(n, sizeof(*slot));

    for (size_t i = 0; i < n; i++) {
        slot[i] = i;
    }
    for (size_t i = n; i > 1; i--) {
        h = mix(h, i);
        size_t j = (size_t)(h % i), v = slot[i - 1];
        slot[i - 1] = slot[j];
        slot[j] = v;
    }
    return slot;
}
