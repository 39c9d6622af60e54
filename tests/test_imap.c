/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The interval map behind registration lookups: adjacent, nested and
 * overlapping ranges, ranges that run past an end, removal, and a check
 * against a brute-force search on random ranges.
 */
#include "test.h"
#include "util/imap.h"

static int tag[64];

static ferry__imap_hit_t find(const ferry__imap_t *m, uint64_t a, uint64_t l,
                              int *which)
{
    void *v = NULL;
    ferry__imap_hit_t h = ferry__imap_find(m, a, l, &v);

    *which = (h == FERRY__IMAP_FOUND) ? (int)((int *)v - tag) : -1;
    return h;
}

static void adjacent(void)
{
    ferry__imap_t m;
    int w;

    ferry__imap_init(&m);
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 200, 100, &tag[2]));
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 100, 100, &tag[1]));
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 300, 100, &tag[3]));
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 100, 100, &w));
    EXPECT_EQ(1, w);
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 199, 1, &w));
    EXPECT_EQ(1, w);
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 200, 1, &w));
    EXPECT_EQ(2, w);
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 399, 1, &w));
    EXPECT_EQ(3, w);
    /* Spanning two adjacent registrations is not inside either. */
    EXPECT_EQ(FERRY__IMAP_PARTIAL, find(&m, 150, 100, &w));
    EXPECT_EQ(FERRY__IMAP_NONE, find(&m, 99, 1, &w));
    EXPECT_EQ(FERRY__IMAP_NONE, find(&m, 400, 1, &w));
    EXPECT_EQ(FERRY__IMAP_PARTIAL, find(&m, 350, 51, &w));
    EXPECT_EQ(0, ferry__imap_remove(&m, 200, &tag[2]));
    EXPECT_EQ(-1, ferry__imap_remove(&m, 200, &tag[2]));
    EXPECT_EQ(FERRY__IMAP_NONE, find(&m, 250, 1, &w));
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 300, 10, &w));
    EXPECT_EQ(3, w);
    ferry__imap_free(&m);
}

static void nested_and_overlapping(void)
{
    ferry__imap_t m;
    int w;

    ferry__imap_init(&m);
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 0x1000, 0x10000, &tag[1])); /* outer */
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 0x2000, 0x100, &tag[2]));   /* nested */
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 0x3000, 0x100, &tag[3]));   /* nested */
    ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, 0x10000, 0x2000, &tag[4])); /* overlaps outer's end */
    /* Past the nested ranges, the outer one still covers. */
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x3100, 0x100, &w));
    EXPECT_EQ(1, w);
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x2000, 0x80, &w));
    EXPECT_TRUE(w == 1 || w == 2);
    /* Starting in the nested range and running beyond it: the outer one covers. */
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x2080, 0x1000, &w));
    EXPECT_EQ(1, w);
    /* Beyond the outer's end only the overlapping one covers. */
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x10ff0, 0x100, &w));
    EXPECT_EQ(4, w);
    EXPECT_EQ(FERRY__IMAP_PARTIAL, find(&m, 0x10ff0, 0x2000, &w));
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x1000, 0x10000, &w));
    EXPECT_EQ(1, w);
    EXPECT_EQ(FERRY__IMAP_PARTIAL, find(&m, 0x1000, 0x11001, &w));
    /* Removing the outer leaves holes where only it was. */
    EXPECT_EQ(0, ferry__imap_remove(&m, 0x1000, &tag[1]));
    EXPECT_EQ(FERRY__IMAP_NONE, find(&m, 0x3100, 1, &w));
    EXPECT_EQ(FERRY__IMAP_PARTIAL, find(&m, 0x2080, 0x1000, &w));
    EXPECT_EQ(FERRY__IMAP_FOUND, find(&m, 0x2000, 0x100, &w));
    EXPECT_EQ(2, w);
    ferry__imap_free(&m);
}

/* Random ranges, checked against a linear search. */
static void random_against_brute_force(void)
{
    enum { N = 48, Q = 20000 };
    ferry__imap_t m, s;
    uint64_t st[N], en[N];
    test_rng_t rng = {12345};

    ferry__imap_init(&m);
    ferry__imap_init(&s);
    for (int i = 0; i < N; i++) {
        st[i] = test_rand_range(&rng, 1, 5000);
        en[i] = st[i] + test_rand_range(&rng, 1, 800);
        ASSERT_ST(FERRY_OK, ferry__imap_insert(&m, st[i], en[i] - st[i], &tag[i]));
        ASSERT_ST(FERRY_OK, ferry__imap_append(&s, st[i], en[i] - st[i], &tag[i]));
    }
    ferry__imap_sort(&s);
    for (int q = 0; q < Q; q++) {
        uint64_t a = test_rand_range(&rng, 0, 6000), l = test_rand_range(&rng, 1, 900);
        ferry__imap_hit_t want = FERRY__IMAP_NONE;
        int w;

        for (int i = 0; i < N; i++) {
            if (st[i] <= a && a < en[i]) {
                if (en[i] - a >= l) {
                    want = FERRY__IMAP_FOUND;
                    break;
                }
                want = FERRY__IMAP_PARTIAL;
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            ferry__imap_hit_t got = find(pass ? &s : &m, a, l, &w);

            if (got != want) {
                TEST_FAIL_AT_("query [%" PRIu64 ", +%" PRIu64 "): want %d got %d",
                              a, l, want, got);
                return;
            }
            if (got == FERRY__IMAP_FOUND && !(st[w] <= a && en[w] - a >= l))
                TEST_FAIL_AT_("query [%" PRIu64 ", +%" PRIu64 ") answered by a "
                              "range that does not cover it", a, l);
        }
    }
    ferry__imap_free(&m);
    ferry__imap_free(&s);
}

int main(void)
{
    adjacent();
    nested_and_overlapping();
    random_against_brute_force();
    return test_finish("test_imap");
}
