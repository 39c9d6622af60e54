/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The copy behind same-host transfers (util/copy.c): every alignment of
 * source and destination and every tail length through the non-temporal
 * path, random ranges against memmove with the bytes around them untouched,
 * overlapping ranges (which must fall back to memmove), and the threshold's
 * configuration (auto, off, a size, nonsense).
 */
#include "test.h"
#include "util/copy.h"

#include <stdlib.h>

#define AREA (3u << 20)
#define PAD 256

static uint8_t *src, *dst, *want;

/* Copies [so, so+len) of src to [d_off, d_off+len) of dst with threshold
 * nt_min and compares the destination, with PAD bytes on either side, with
 * what memmove gives. */
static void one(test_rng_t *r, size_t so, size_t d_off, size_t len, size_t nt_min)
{
    size_t lo = d_off - PAD, n = len + 2 * PAD;

    test_rand_bytes(r, dst + lo, n);
    memcpy(want + lo, dst + lo, n);
    memmove(want + d_off, src + so, len);
    ferry__copy(dst + d_off, src + so, len, nt_min);
    ferry__copy_fence();
    if (memcmp(dst + lo, want + lo, n) != 0) {
        size_t i = lo;

        while (dst[i] == want[i])
            i++;
        TEST_FAIL_AT_("copy of %zu B from +%zu to +%zu (nt_min %zu): first wrong "
                      "byte at +%zu (%s the range)", len, so, d_off, nt_min, i,
                      (i >= d_off && i < d_off + len) ? "inside" : "outside");
    }
}

static void alignments(test_rng_t *r)
{
    /* Every position of the destination in a cache line (the head copied
     * before the first whole line), 16 of the source, lengths up to five
     * lines by 7 bytes (every tail), and lengths below the smallest copy
     * that uses non-temporal stores. */
    for (size_t sa = 0; sa < 16; sa++)
        for (size_t da = 0; da < 64; da++)
            for (size_t len = 0; len < 64 * 5; len += 7)
                one(r, PAD + sa, PAD + 4096 + da, len, 0);
}

static void random_ranges(test_rng_t *r)
{
    for (int i = 0; i < 300; i++) {
        size_t len = (size_t)test_rand_range(r, 0, (AREA - 2 * PAD) / 2);
        size_t so = (size_t)test_rand_range(r, PAD, AREA - PAD - len);
        size_t d_off = (size_t)test_rand_range(r, PAD, AREA - PAD - len);
        size_t nt_min = (i % 3 == 0) ? 0 : (i % 3 == 1) ? SIZE_MAX : len / 2;

        one(r, so, d_off, len, nt_min);
    }
}

static void overlapping(test_rng_t *r)
{
    /* Within one buffer, both directions: a non-temporal forward copy would
     * read bytes it had already overwritten. */
    for (int i = 0; i < 50; i++) {
        size_t len = (size_t)test_rand_range(r, 64, 1u << 20);
        size_t a = (size_t)test_rand_range(r, PAD, AREA - PAD - len - 4096);
        size_t shift = (size_t)test_rand_range(r, 1, 4096);
        size_t from = (i & 1) ? a : a + shift, to = (i & 1) ? a + shift : a;

        test_rand_bytes(r, dst, AREA);
        memcpy(want, dst, AREA);
        memmove(want + to, want + from, len);
        ferry__copy(dst + to, dst + from, len, 0);
        if (memcmp(dst, want, AREA) != 0)
            TEST_FAIL_AT_("overlapping copy of %zu B from +%zu to +%zu differs from memmove",
                          len, from, to);
    }
}

static void threshold(void)
{
    size_t autov;

    unsetenv("FERRY_COPY_NT_MIN");
    autov = ferry__copy_nt_min();
    /* Half a real last-level cache, at most 16 MiB, or never where sysfs
     * has none. */
    EXPECT_TRUE(autov == SIZE_MAX || (autov >= (64u << 10) && autov <= (16u << 20)));
    setenv("FERRY_COPY_NT_MIN", "auto", 1);
    EXPECT_EQ(autov, ferry__copy_nt_min());
    setenv("FERRY_COPY_NT_MIN", "off", 1);
    EXPECT_EQ(SIZE_MAX, ferry__copy_nt_min());
    setenv("FERRY_COPY_NT_MIN", "4m", 1);
    EXPECT_EQ(4u << 20, ferry__copy_nt_min());
    setenv("FERRY_COPY_NT_MIN", "0", 1);
    EXPECT_EQ(0, ferry__copy_nt_min());
    setenv("FERRY_COPY_NT_MIN", "lots", 1); /* warns, then auto */
    EXPECT_EQ(autov, ferry__copy_nt_min());
    unsetenv("FERRY_COPY_NT_MIN");
}

int main(void)
{
    test_rng_t r = {42};

    src = malloc(AREA);
    dst = malloc(AREA);
    want = malloc(AREA);
    ASSERT_TRUE(src && dst && want);
    test_rand_bytes(&r, src, AREA);
    alignments(&r);
    random_ranges(&r);
    overlapping(&r);
    threshold();
    free(src);
    free(dst);
    free(want);
    return test_finish("test_copy");
}
