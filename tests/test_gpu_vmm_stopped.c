/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Importing a stopped peer's VMM memory does not hold the agent's other
 * threads. Two serving targets: "live" (host memory) and "stopped" (VMM
 * GPU memory of several allocations, shared as file descriptors). The test
 * runs with FERRY_CUDA_FD_HANDOFF=socket, so the descriptors come from the
 * owner's hand-off socket, which a stopped owner does not answer: the
 * import waits for it (CI_HANDOFF_TIMEOUT_MS, 5 s) and then fails.
 *
 * The stopped target is stopped (SIGSTOP); one thread prepares a WRITE to
 * its GPU memory, which must fail with FERRY_ERR_TIMEOUT once the hand-off
 * wait runs out; meanwhile another thread keeps writing random data to
 * random offsets of the live target. That wait used to run under the
 * agent's lock (at prepare, in the key's import), so every post of the live
 * thread waited with it. The test fails only if the prepare did wait and
 * the live thread's longest post was more than half that wait and more
 * than twice the longest post of a reference window of the same run, so
 * that a busy machine alone does not fail it. Then the stopped target is
 * resumed, and the same WRITE, prepared again, lands: its bytes and the
 * guard bytes around them are checked in the target, and every byte the
 * live thread wrote is read back and checked. Skipped (77) without a GPU.
 */
#include "target.h"
#include "util/time.h"

#include <pthread.h>

#define CAP (1u << 20)
#define GCAP (8u << 20)
#define WINDOW_NS 1500000000ull

static ferry_agent_t *agent;
static ferry_peer_t *stopped_peer;
static xt_target_t stopped;
static xt_live_t live;
static xm_buf_t gb;
static uint64_t glen, gloff, groff;
static double prep_ms = -1;
static ferry_status_t prep_st = FERRY_OK;
static char prep_why[256];

static ferry_status_t prepare_gpu(ferry_xfer_t **x_p)
{
    ferry_desc_t l = xm_desc(XM_CUDA, gb.addr + gloff, glen);
    ferry_desc_t r = xm_target_desc(XM_VMM, stopped.buf[0].addr + groff, glen);

    return ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, stopped_peer, &r, 1, NULL,
                              x_p);
}

/* A WRITE to the stopped peer's VMM memory: its import waits for the
 * hand-off socket. */
static void *importer(void *arg)
{
    ferry_xfer_t *x = NULL;
    uint64_t t0;

    (void)arg;
    usleep(200000);
    t0 = ferry__now_ns();
    prep_st = prepare_gpu(&x);
    prep_ms = (double)(ferry__now_ns() - t0) / 1e6;
    snprintf(prep_why, sizeof(prep_why), "%s", ferry_last_error());
    if (prep_st == FERRY_OK)
        ferry_xfer_release(x);
    return NULL;
}

int main(void)
{
    xt_opts_t to = {.name = "live", .progress_thread = 1, .nbuf = 1, .seed = 7,
                    .buf = {{.kind = XM_HOST, .cap = CAP}}};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .progress_thread = 1};
    ferry_mem_t *gm;
    ferry_xfer_t *x;
    xt_live_windows_t w;
    ferry_desc_t d;
    const char *mode = getenv("FERRY_CUDA_FD_HANDOFF");

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (mode == NULL || strcmp(mode, "socket") != 0) {
        fprintf(stderr, "test_gpu_vmm_stopped: run with FERRY_CUDA_FD_HANDOFF=socket\n");
        return 2;
    }
    if (xm_cuda() == NULL)
        return 77;
    live.rng.s = xu_seed(0x5EED4321ull);
    alarm(120);
    ASSERT_TRUE(xt_start(&live.t, &to) == 0);
    to.name = "stopped";
    to.seed = 11;
    to.buf[0] = (xt_buf_opts_t){.kind = XM_VMM, .cap = GCAP};
    ASSERT_TRUE(xt_start(&stopped, &to) == 0);
    if (xm_alloc(&gb, XM_CUDA, GCAP) != 0)
        return 1;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    ASSERT_TRUE(xt_live_attach(&live, agent) == 0);
    ASSERT_TRUE(xt_connect(&stopped, agent, &stopped_peer) == 0);
    d = xm_desc(XM_CUDA, gb.addr, GCAP);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &d, 1, &gm));
    /* The GPU WRITE: random bytes from a random place to a random place of
     * the stopped target's allocations (crossing from one to the next). */
    glen = test_rand_range(&live.rng, GCAP / 4, GCAP / 2);
    gloff = test_rand_range(&live.rng, 0, GCAP - glen);
    groff = test_rand_range(&live.rng, 1, GCAP - glen - 1);
    test_fill(gb.host, GCAP, 11, 1, 0);
    xm_to_dev(&gb, 0, GCAP);
    ASSERT_TRUE(xt_pattern(&stopped, 0, 0, GCAP, XU_GUARD_ITER) == 0);
    printf("test_gpu_vmm_stopped: %" PRIu64 " bytes from +%" PRIu64 " to the stopped "
           "peer's +%" PRIu64 "\n", glen, gloff, groff);

    xt_live_beside(&live, stopped.pid, importer, NULL, WINDOW_NS, &w);
    printf("test_gpu_vmm_stopped: reference: %d posts, the longest %.1f ms; while a "
           "stopped peer's VMM memory was imported: %d posts, the longest %.1f ms; "
           "the prepare took %.1f ms and returned %s (%s)\n", w.nref, w.ref, w.nduring,
           w.during, prep_ms, ferry_status_str(prep_st), prep_why);
    EXPECT_ST(FERRY_ERR_TIMEOUT, prep_st);
    if (prep_ms > 4000 && w.during > prep_ms / 2 && w.during > 2 * w.ref)
        TEST_FAIL_AT_("the import from the stopped peer held the live thread's posts "
                      "(prepare %.0f ms, longest post %.0f ms, reference %.0f ms)",
                      prep_ms, w.during, w.ref);

    /* Resumed, the peer hands its descriptors over: the WRITE lands. */
    xu_cont_child(stopped.pid);
    ASSERT_ST(FERRY_OK, prepare_gpu(&x));
    ASSERT_ST(FERRY_OK, xu_post_wait(x, 60000000000ll));
    ferry_xfer_release(x);
    EXPECT_TRUE(xt_range(&stopped, 0, groff, glen, gloff) == 0);
    EXPECT_TRUE(xt_check(&stopped, 0, 0, GCAP, 1, XU_GUARD_ITER,
                         "the stopped target after the WRITE") == 0);

    /* Every byte the live thread wrote arrived. */
    EXPECT_TRUE(xt_live_end(&live) == 0);
    EXPECT_TRUE(xt_quit(&stopped) == 0);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(gm));
    ferry_agent_destroy(agent);
    xm_free(&gb);
    return test_finish("test_gpu_vmm_stopped");
}
