/*
 * Striping over UCX lanes (FERRY_UCX_LANES, FERRY_UCX_STRIPE_MIN): a lane
 * count out of range refuses to create the agent with a typed status and
 * its reason; with three lanes and a low threshold, WRITE and READ batches
 * of segments above and below the threshold, and of lengths that do not
 * divide into pages, move every byte and only those (in one process, two
 * agents, memory from ferry_mem_alloc).
 */
#include "xfer_util.h"

#define LEN (4u << 20)
#define WAIT_NS (10ll * 1000 * 1000 * 1000)
#define SEED 0x1a7e5ull

static void post_wait(ferry_xfer_t *x)
{
    ferry_status_t st = ferry_xfer_post(x);

    if (st == FERRY_IN_PROGRESS)
        st = ferry_xfer_wait(x, WAIT_NS);
    EXPECT_ST(FERRY_OK, st);
}

int main(void)
{
    static const uint64_t lens[] = {65536, 100000, 1u << 20, 3000, 1234567};
    enum { N = sizeof(lens) / sizeof(lens[0]) };
    ferry_agent_params_t pa = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "lanes-a"};
    ferry_agent_params_t pb = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "lanes-b"};
    ferry_agent_t *a, *b;
    ferry_mem_t *ma, *mb;
    ferry_peer_t *peer;
    ferry_xfer_t *w, *r;
    ferry_desc_t l[N], rd[N], back[N];
    uint8_t *pa_buf, *pb_buf;
    uint64_t off = 0;

    setenv("FERRY_UCX_LANES", "0", 1);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_create(NULL, &a));
    EXPECT_ERR_HAS("FERRY_UCX_LANES=0");
    setenv("FERRY_UCX_LANES", "10", 1);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_create(NULL, &a));
    EXPECT_ERR_HAS("1 to 9");

    setenv("FERRY_UCX_LANES", "3", 1);
    setenv("FERRY_UCX_STRIPE_MIN", "64k", 1);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&pa, &a));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&pb, &b));
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(a, 2 * LEN, FERRY_MEM_HOST, (void **)&pa_buf));
    ASSERT_ST(FERRY_OK, ferry_mem_alloc(b, 2 * LEN, FERRY_MEM_HOST, (void **)&pb_buf));
    ferry_desc_t da = {.addr = (uintptr_t)pa_buf, .len = 2 * LEN, .kind = FERRY_MEM_HOST};
    ferry_desc_t db = {.addr = (uintptr_t)pb_buf, .len = 2 * LEN, .kind = FERRY_MEM_HOST};
    ASSERT_ST(FERRY_OK, ferry_mem_register(a, &da, 1, &ma));
    ASSERT_ST(FERRY_OK, ferry_mem_register(b, &db, 1, &mb));
    ASSERT_ST(FERRY_OK, test_exchange(b, a, &peer));

    /* Descriptors with one-byte gaps, so that none merge: local in the
     * first half of b's buffer, remote in a's, READ back into b's second
     * half. */
    for (size_t i = 0; i < N; i++) {
        l[i] = (ferry_desc_t){(uintptr_t)pb_buf + off, lens[i], FERRY_MEM_HOST, 0};
        rd[i] = (ferry_desc_t){(uintptr_t)pa_buf + off, lens[i], FERRY_MEM_HOST, 0};
        back[i] = (ferry_desc_t){(uintptr_t)pb_buf + LEN + off, lens[i],
                                 FERRY_MEM_HOST, 0};
        off += lens[i] + 1;
    }
    ASSERT_TRUE(off <= LEN);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_WRITE, l, N, peer, rd, N,
                                           NULL, &w));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_READ, back, N, peer, rd, N,
                                           NULL, &r));
    for (uint64_t it = 0; it < 6 && test_failures == 0; it++) {
        memset(pa_buf, 0, 2 * LEN);
        memset(pb_buf + LEN, 0, LEN);
        test_fill_fast(pb_buf, off, SEED, it, 0);
        post_wait(w);
        post_wait(r);
        for (size_t i = 0; i < N; i++) {
            uint64_t at = rd[i].addr - (uintptr_t)pa_buf;

            EXPECT_EQ(UINT64_MAX, test_verify_fast(pa_buf + at, lens[i], SEED, it, at));
            EXPECT_EQ(UINT64_MAX, test_verify_fast(pb_buf + LEN + at, lens[i], SEED,
                                                   it, at));
            /* The gap byte after each range stayed untouched remotely. */
            EXPECT_EQ(0, pa_buf[at + lens[i]]);
        }
    }
    ferry_xfer_release(w);
    ferry_xfer_release(r);
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(ma));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mb));
    EXPECT_ST(FERRY_OK, ferry_mem_free(a, pa_buf));
    EXPECT_ST(FERRY_OK, ferry_mem_free(b, pb_buf));
    ferry_agent_destroy(b);
    ferry_agent_destroy(a);
    return test_finish("test_lanes");
}
