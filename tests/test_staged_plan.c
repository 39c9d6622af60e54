/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The staged backend's chunk planning (backends/staged/plan.c), without a
 * peer: random batches of segments (1 byte to several chunks, host and GPU
 * local sides) are planned, and the plan must cover every byte of every
 * segment exactly once, in order, with pieces no longer than a chunk,
 * chunks of at most a chunk's bytes and STG_MAX_PIECES pieces, a chunk's
 * byte count the sum of its pieces, each piece's target token from its
 * segment's key, and a new chunk only where the last one could not take
 * the next piece (nothing wasted: a thousand small blocks are few chunks).
 */
#include "backends/staged/staged.h"
#include "xfer_util.h"

static void check_plan(const ferry__bk_seg_t *segs, size_t n, uint64_t chunk,
                       const char *what)
{
    stg_plan_t *plan = NULL;
    size_t k = 0;
    uint64_t total = 0;

    ASSERT_ST(FERRY_OK, ferry__stg_plan(segs, n, chunk, &plan));
    /* Pieces: each segment's bytes in order, cut at chunk boundaries. */
    for (size_t i = 0; i < n; i++) {
        const stg_reg_t *lr = segs[i].lreg;
        const stg_rkey_t *rk = segs[i].rkey;

        for (uint64_t off = 0; off < segs[i].len; k++) {
            if (k >= plan->npieces) {
                TEST_FAIL_AT_("%s: the plan has %zu pieces, too few", what, plan->npieces);
                goto out;
            }
            EXPECT_EQ(segs[i].laddr + off, plan->laddr[k]);
            EXPECT_EQ(segs[i].raddr + off, plan->table[k].addr);
            EXPECT_EQ(plan->llen[k], plan->table[k].len);
            EXPECT_TRUE(plan->llen[k] >= 1 && plan->llen[k] <= chunk);
            EXPECT_EQ(rk->token, plan->table[k].token);
            EXPECT_EQ(rk->gen, plan->table[k].gen);
            EXPECT_EQ(lr->kind == FERRY_MEM_CUDA ? lr->device : -1, plan->ldev[k]);
            off += plan->llen[k];
            total += plan->llen[k];
        }
    }
    EXPECT_EQ(k, plan->npieces);
    EXPECT_EQ(total, plan->total);
    /* Chunks: consecutive, bounded, and each one full up to the next piece. */
    {
        size_t next = 0;

        for (size_t c = 0; c < plan->nchunks; c++) {
            const stg_chunk_t *ch = &plan->chunks[c];
            uint64_t bytes = 0;

            EXPECT_EQ(next, ch->first);
            EXPECT_TRUE(ch->n >= 1 && ch->n <= STG_MAX_PIECES);
            for (uint32_t p = 0; p < ch->n; p++)
                bytes += plan->llen[ch->first + p];
            EXPECT_EQ(bytes, ch->bytes);
            EXPECT_TRUE(ch->bytes <= chunk);
            next = ch->first + ch->n;
            if (next < plan->npieces && ch->n < STG_MAX_PIECES)
                EXPECT_TRUE(ch->bytes + plan->llen[next] > chunk);
        }
        EXPECT_EQ(plan->npieces, next);
    }
out:
    ferry__stg_plan_free(plan);
}

int main(void)
{
    test_rng_t rng = {xu_seed(0x5a9ed)};
    stg_reg_t host = {.kind = FERRY_MEM_HOST, .device = -1};
    stg_reg_t gpu = {.kind = FERRY_MEM_CUDA, .device = 1};
    stg_rkey_t keys[3] = {{0, 7}, {5, 9}, {2, 1}};

    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)test_rand_range(&rng, 1, round % 10 == 0 ? 20000 : 300);
        uint64_t chunk = 4096ull << test_rand_range(&rng, 0, 6);
        uint64_t maxlen = round % 3 == 0 ? 64 : round % 3 == 1 ? chunk / 3 : chunk * 3;
        ferry__bk_seg_t *segs = calloc(n, sizeof(*segs));
        uint64_t at = 0x10000;
        char what[64];

        ASSERT_TRUE(segs != NULL);
        for (size_t i = 0; i < n; i++) {
            segs[i].len = test_rand_range(&rng, 1, maxlen);
            segs[i].laddr = at;
            segs[i].raddr = 0x900000000ull + at * 3;
            segs[i].lreg = test_rand(&rng) & 1 ? &host : &gpu;
            segs[i].rkey = &keys[test_rand(&rng) % 3];
            at += segs[i].len + test_rand_range(&rng, 0, 100);
        }
        snprintf(what, sizeof(what), "round %d (%zu segments, chunk %llu)", round, n,
                 (unsigned long long)chunk);
        check_plan(segs, n, chunk, what);
        free(segs);
    }
    /* A thousand 32 KiB blocks are eight 4 MiB chunks. */
    {
        ferry__bk_seg_t segs[1000];
        stg_plan_t *plan;

        for (size_t i = 0; i < 1000; i++)
            segs[i] = (ferry__bk_seg_t){0x100000 + i * 65536, 0x200000 + i * 98304,
                                        32768, &gpu, &keys[0]};
        ASSERT_ST(FERRY_OK, ferry__stg_plan(segs, 1000, 4u << 20, &plan));
        EXPECT_EQ(8, plan->nchunks);
        EXPECT_EQ(128, plan->chunks[0].n);
        ferry__stg_plan_free(plan);
    }
    /* 20 000 blocks of 16 bytes: chunks end at STG_MAX_PIECES pieces. */
    {
        ferry__bk_seg_t *segs = calloc(20000, sizeof(*segs));
        stg_plan_t *plan;

        ASSERT_TRUE(segs != NULL);
        for (size_t i = 0; i < 20000; i++)
            segs[i] = (ferry__bk_seg_t){0x100000 + i * 32, 0x200000 + i * 64, 16, &host,
                                        &keys[1]};
        ASSERT_ST(FERRY_OK, ferry__stg_plan(segs, 20000, 4u << 20, &plan));
        EXPECT_EQ((20000 + STG_MAX_PIECES - 1) / STG_MAX_PIECES, plan->nchunks);
        ferry__stg_plan_free(plan);
        free(segs);
    }
    return test_finish("test_staged_plan");
}
