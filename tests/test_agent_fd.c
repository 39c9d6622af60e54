/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Event-loop integration: an epoll loop on ferry_agent_fd() completes 10 000
 * WRITE and READ requests, sleeping in epoll_wait between them instead of
 * polling. The target is a second agent in this process with a progress
 * thread. If the fd failed to report work, every request would wait for the
 * loop's 200 ms timeout, so the test counts those timeouts and fails on any
 * more than a handful; every WRITE carries new bytes, and every READ
 * brings them back into a cleared buffer, checked byte for byte. The
 * requests move one random length between random places of the three
 * buffers (seed: FERRY_TEST_SEED).
 */
#include "xfer_util.h"

#include <sys/epoll.h>

#define N 10000
#define LEN 4096
#define CAP (2 * LEN) /* each buffer */

int main(void)
{
    ferry_agent_params_t tp = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "fd-target", .progress_thread = 1};
    ferry_agent_t *me, *target;
    ferry_mem_t *mm, *tm;
    ferry_peer_t *peer;
    ferry_xfer_t *w, *r;
    static uint8_t src[CAP], dst[CAP], back[CAP];
    test_rng_t rng = {xu_seed(0xfd)};
    uint64_t n = test_rand_range(&rng, 1, LEN);
    uint64_t so = test_rand_range(&rng, 0, CAP - n), bo = test_rand_range(&rng, 0, CAP - n);
    ferry_desc_t ds = {(uintptr_t)src + so, n, FERRY_MEM_HOST, 0};
    ferry_desc_t db = {(uintptr_t)back + bo, n, FERRY_MEM_HOST, 0};
    ferry_desc_t dd = {(uintptr_t)dst + test_rand_range(&rng, 0, CAP - n), n,
                       FERRY_MEM_HOST, 0};
    ferry_desc_t mine[2] = {{(uintptr_t)src, CAP, FERRY_MEM_HOST, 0},
                            {(uintptr_t)back, CAP, FERRY_MEM_HOST, 0}};
    ferry_desc_t theirs = {(uintptr_t)dst, CAP, FERRY_MEM_HOST, 0};
    struct epoll_event ev = {.events = EPOLLIN}, out;
    int fd, ep, timeouts = 0, sleeps = 0;

    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &me));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&tp, &target));
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, mine, 2, &mm));
    ASSERT_ST(FERRY_OK, ferry_mem_register(target, &theirs, 1, &tm));
    ASSERT_ST(FERRY_OK, test_exchange(me, target, &peer));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &ds, 1, peer, &dd, 1,
                                           NULL, &w));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_READ, &db, 1, peer, &dd, 1,
                                           NULL, &r));

    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_fd(NULL, &fd));
    ASSERT_ST(FERRY_OK, ferry_agent_fd(me, &fd));
    ep = epoll_create1(0);
    ASSERT_TRUE(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);

    for (int i = 0; i < N; i++) {
        ferry_xfer_t *x = (i & 1) ? r : w;
        ferry_status_t st;

        if (x == w)
            test_fill_fast(src + so, n, 3, (uint64_t)i, 0);
        else
            memset(back, 0, CAP);
        st = ferry_xfer_post(x);
        ASSERT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
        while (st == FERRY_IN_PROGRESS) {
            /* Drain the agent; sleep only once it says nothing is left. */
            while (ferry_agent_progress(me) == FERRY_IN_PROGRESS)
                ;
            st = ferry_xfer_test(x);
            if (st != FERRY_IN_PROGRESS)
                break;
            sleeps++;
            if (epoll_wait(ep, &out, 1, 200) == 0)
                timeouts++;
            st = ferry_xfer_test(x);
        }
        ASSERT_ST(FERRY_OK, st);
        if (x == r) { /* the READ brings back the WRITE before it, and only it */
            EXPECT_EQ(UINT64_MAX, test_verify_fast(back + bo, n, 3, (uint64_t)i - 1, 0));
            for (uint64_t k = 0; k < CAP; k++)
                if ((k < bo || k >= bo + n) && back[k] != 0) {
                    TEST_FAIL_AT_("request %d: the READ wrote byte %" PRIu64 ", outside "
                                  "its range", i, k);
                    break;
                }
        }
    }
    printf("test_agent_fd: %d requests, %d sleeps in epoll_wait, %d timed out\n", N,
           sleeps, timeouts);
    EXPECT_TRUE(timeouts <= 5);

    ferry_xfer_release(w);
    ferry_xfer_release(r);
    ferry_peer_forget(peer);
    ferry_agent_destroy(target);
    ferry_agent_destroy(me);
    return test_finish("test_agent_fd");
}
