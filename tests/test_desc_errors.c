/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every descriptor error a caller can make, in one process with a loopback
 * peer: bad registrations are INVALID (or UNSUPPORTED for GPU memory this
 * build cannot take), and prepare answers NOT_REGISTERED, OUT_OF_RANGE,
 * MISMATCH or INVALID naming the offending descriptor index. Then the
 * lifetime rules: re-posting an active request and deregistering memory in
 * flight are BUSY, a request on deregistered memory or a forgotten peer
 * refuses to post, and a request survives being re-posted. And what
 * ferry.h says of the cases it used to leave open: a descriptor both of
 * the wrong kind and unregistered is NOT_REGISTERED; of two overlapping
 * registrations a request uses the one that starts nearest below it; a
 * request on a deregistered region stays dead when the range is
 * registered again.
 */
#include "test.h"

#include <dlfcn.h>
#include <stdint.h>

#define BUF (1u << 20)

static int have_cuda_driver(void)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);

    if (lib == NULL)
        return 0;
    dlclose(lib);
    return 1;
}

static uint8_t *a, *b;

static ferry_desc_t desc(const void *p, uint64_t len)
{
    return (ferry_desc_t){(uintptr_t)p, len, FERRY_MEM_HOST, 0};
}

static void registration_errors(ferry_agent_t *agent)
{
    ferry_mem_t *mem = NULL;
    ferry_desc_t d[3] = {desc(a, 100), desc(a + 200, 100), desc(a + 400, 100)};

    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 0, &mem));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, NULL, 1, &mem));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 1, NULL));
    d[1].addr = 0;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 3, &mem));
    EXPECT_ERR_HAS("descriptor 1");
    d[1] = desc(a + 200, 0);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 3, &mem));
    EXPECT_ERR_HAS("descriptor 1");
    d[1] = desc(a + 200, 100);
    d[2] = (ferry_desc_t){UINT64_MAX - 10, 100, FERRY_MEM_HOST, 0};
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 3, &mem));
    EXPECT_ERR_HAS("descriptor 2");
    EXPECT_ERR_HAS("overflows");
    d[2] = desc(a + 400, 100);
    d[0].kind = (ferry_mem_kind_t)7;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 3, &mem));
    EXPECT_ERR_HAS("descriptor 0");
    /* GPU memory: without a CUDA driver it is refused up front, saying so;
     * with one, host memory that claims to be GPU memory is refused. */
    d[0] = (ferry_desc_t){(uintptr_t)a, 100, FERRY_MEM_CUDA, 0};
    if (!have_cuda_driver()) {
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry_mem_register(agent, d, 1, &mem));
        EXPECT_ERR_HAS("no CUDA driver was found");
    } else {
        EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, d, 1, &mem));
        EXPECT_ERR_HAS("not device memory");
    }
    EXPECT_ERR_HAS("descriptor 0");
    EXPECT_TRUE(mem == NULL); /* outputs are written only on success */
    /* AUTO on host memory registers it as host memory. */
    d[0].kind = FERRY_MEM_AUTO;
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 1, &mem));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
}

static void prepare_errors(ferry_agent_t *agent, ferry_peer_t *peer)
{
    ferry_xfer_t *x = NULL;
    /* Registered: a[0, BUF/2) locally as one region, b[0, BUF/2) as another. */
    ferry_desc_t l[3] = {desc(a, 64), desc(a + 100, 64), desc(a + 1000, 64)};
    ferry_desc_t r[3] = {desc(b, 64), desc(b + 100, 64), desc(b + 1000, 64)};

    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3, peer, r, 3,
                                           NULL, &x));
    ferry_xfer_release(x);
    x = NULL;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, (ferry_xfer_op_t)5, l, 3,
                                                    peer, r, 3, NULL, &x));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 0,
                                                    peer, r, 0, NULL, &x));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3,
                                                    NULL, r, 3, NULL, &x));
    EXPECT_ST(FERRY_ERR_MISMATCH, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3,
                                                     peer, r, 2, NULL, &x));

    r[1].len = 63;
    EXPECT_ST(FERRY_ERR_MISMATCH, ferry_xfer_prepare(agent, FERRY_OP_READ, l, 3,
                                                     peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("descriptor 1");
    r[1].len = 64;
    l[2].len = r[2].len = 0;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3,
                                                    peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("descriptor 2");
    l[2].len = r[2].len = 64;

    /* Local descriptor outside every registration, and running past one. */
    l[2] = desc(a + BUF / 2 + 10, 64);
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l,
                                                           3, peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("local descriptor 2");
    l[2] = desc(a + BUF / 2 - 32, 64);
    EXPECT_ST(FERRY_ERR_OUT_OF_RANGE, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l,
                                                         3, peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("local descriptor 2");
    l[2] = desc(a + 1000, 64);

    /* The same on the remote side, naming the peer. */
    r[0] = desc(b - 4096, 64);
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_prepare(agent, FERRY_OP_READ, l,
                                                           3, peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("remote descriptor 0");
    EXPECT_ERR_HAS("desc-errors");
    r[0] = desc(b + BUF / 2 - 1, 64);
    EXPECT_ST(FERRY_ERR_OUT_OF_RANGE, ferry_xfer_prepare(agent, FERRY_OP_READ, l,
                                                         3, peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("remote descriptor 0");
    r[0] = desc(b, 64);

    /* A descriptor that claims the wrong memory kind. */
    l[1].kind = FERRY_MEM_CUDA;
    EXPECT_ST(FERRY_ERR_MISMATCH, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3,
                                                     peer, r, 3, NULL, &x));
    EXPECT_ERR_HAS("local descriptor 1");
    l[1].kind = FERRY_MEM_AUTO; /* AUTO matches whatever is registered */
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3, peer, r, 3,
                                           NULL, &x));
    ferry_xfer_release(x);

    /* Backend choice: an unknown backend is refused; CUDA IPC cannot reach
     * a peer's host memory, and prepare says so, naming the pair. */
    {
        ferry_xfer_params_t xp = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                  .backend = (ferry_backend_t)9};

        EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3,
                                                        peer, r, 3, &xp, &x));
        EXPECT_ERR_HAS("unknown backend 9");
        xp.backend = FERRY_BACKEND_CUDA_IPC;
        EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry_xfer_prepare(agent, FERRY_OP_WRITE,
                                                            l, 3, peer, r, 3, &xp, &x));
        EXPECT_ERR_HAS("descriptor 0");
        EXPECT_ERR_HAS("cuda_ipc cannot reach the peer's host memory");
        xp.backend = FERRY_BACKEND_UCX;
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 3, peer, r,
                                               3, &xp, &x));
        ferry_xfer_release(x);
    }
}

/* BUSY and retirement rules; the transfer goes over TCP so it takes time. */
static void lifetime_rules(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "lifetime"};
    ferry_agent_t *agent;
    ferry_mem_t *ma, *mb;
    ferry_peer_t *peer;
    ferry_xfer_t *x, *y;
    ferry_desc_t da = desc(a, BUF), db = desc(b, BUF);
    ferry_status_t st;
    int saw_busy = 0;

    setenv("FERRY_UCX_TLS", "tcp", 1);
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    unsetenv("FERRY_UCX_TLS");
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &da, 1, &ma));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &db, 1, &mb));
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &da, 1, peer, &db,
                                           1, NULL, &x));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_xfer_test(x)); /* never posted */

    for (int iter = 0; iter < 20; iter++) {
        test_fill(a, BUF, 99, (uint64_t)iter, 0);
        st = ferry_xfer_post(x);
        ASSERT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
        if (st == FERRY_IN_PROGRESS) {
            /* Still in flight, or finished by the progress this call makes. */
            ferry_status_t again = ferry_xfer_post(x);
            ferry_status_t dereg = ferry_mem_deregister(ma);

            if (again == FERRY_ERR_BUSY && dereg == FERRY_ERR_BUSY)
                saw_busy++;
            EXPECT_TRUE(dereg == FERRY_ERR_BUSY || dereg == FERRY_OK);
            if (dereg == FERRY_OK) {
                /* It had finished (deregistration is refused otherwise):
                 * its bytes are in place. */
                EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 10 * 1000000000ll));
                EXPECT_EQ(UINT64_MAX, test_verify(b, BUF, 99, (uint64_t)iter, 0));
                break;
            }
        }
        ASSERT_ST(FERRY_OK, ferry_xfer_wait(x, 10 * 1000000000ll));
        EXPECT_ST(FERRY_OK, ferry_xfer_test(x));
        EXPECT_EQ(UINT64_MAX, test_verify(b, BUF, 99, (uint64_t)iter, 0));
    }
    EXPECT_TRUE(saw_busy > 0);

    /* Deregistered memory: the request stays an object but refuses to post. */
    st = ferry_mem_deregister(ma);
    EXPECT_TRUE(st == FERRY_OK || st == FERRY_ERR_INVALID);
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_post(x));
    ferry_xfer_release(x);
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &da,
                                                           1, peer, &db, 1, NULL, &x));

    /* A forgotten peer: requests against it refuse to post. */
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &da, 1, &ma));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_READ, &da, 1, peer, &db, 1,
                                           NULL, &y));
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_post(y));
    ferry_xfer_release(y);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(ma));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mb));
    ferry_agent_destroy(agent);
}

/* Completes a request whose target agent lives in this process: a target
 * must drive progress for the transport's active messages. */
static ferry_status_t finish(ferry_xfer_t *x, ferry_agent_t *target)
{
    ferry_status_t st = ferry_xfer_post(x);

    for (long i = 0; st == FERRY_IN_PROGRESS && i < 100000000; i++) {
        ferry_agent_progress(target);
        st = ferry_xfer_test(x);
    }
    return st;
}

/* Reloading a peer: the same running agent keeps requests valid; a new
 * instance under the same name (a restart) retires them. */
static void replacement_rules(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "replaced"};
    ferry_agent_t *me, *old_inst, *new_inst;
    ferry_mem_t *mine, *theirs_old, *theirs_new, *more;
    ferry_peer_t *peer, *same;
    ferry_xfer_t *x;
    ferry_desc_t dl = desc(a, 4096), dr = desc(b, 4096), dm = desc(b + 8192, 4096);

    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &me));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &old_inst));
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, &dl, 1, &mine));
    ASSERT_ST(FERRY_OK, ferry_mem_register(old_inst, &dr, 1, &theirs_old));
    ASSERT_ST(FERRY_OK, test_exchange(me, old_inst, &peer));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &dl, 1, peer, &dr, 1,
                                           NULL, &x));
    test_fill(a, 4096, 5, 1, 0);
    ASSERT_ST(FERRY_OK, finish(x, old_inst));
    EXPECT_EQ(UINT64_MAX, test_verify(b, 4096, 5, 1, 0));

    /* Same instance, one more registration: same peer, request still good. */
    ASSERT_ST(FERRY_OK, ferry_mem_register(old_inst, &dm, 1, &more));
    ASSERT_ST(FERRY_OK, test_exchange(me, old_inst, &same));
    EXPECT_TRUE(same == peer);
    test_fill(a, 4096, 5, 2, 0);
    EXPECT_ST(FERRY_OK, finish(x, old_inst));
    EXPECT_EQ(UINT64_MAX, test_verify(b, 4096, 5, 2, 0));

    /* A new instance under the same name: the old request is retired. */
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &new_inst));
    ASSERT_ST(FERRY_OK, ferry_mem_register(new_inst, &dr, 1, &theirs_new));
    ASSERT_ST(FERRY_OK, test_exchange(me, new_inst, &same));
    EXPECT_TRUE(same == peer);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_post(x));
    EXPECT_ERR_HAS("replaced");
    ferry_xfer_release(x);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &dl, 1, peer, &dr, 1,
                                           NULL, &x));
    test_fill(a, 4096, 5, 3, 0);
    EXPECT_ST(FERRY_OK, finish(x, new_inst));
    EXPECT_EQ(UINT64_MAX, test_verify(b, 4096, 5, 3, 0));
    ferry_xfer_release(x);
    ferry_agent_destroy(new_inst);
    ferry_agent_destroy(old_inst);
    ferry_agent_destroy(me);
    (void)mine;
    (void)theirs_old;
    (void)theirs_new;
    (void)more;
}

/* ferry.h's answers to the questions it used to leave open. */
static void documented_rules(ferry_agent_t *agent, ferry_peer_t *peer)
{
    ferry_xfer_t *x = NULL, *y = NULL;
    ferry_mem_t *inner, *again;
    /* a[0, BUF/2) is registered; inner is a[BUF/4, BUF/2) on top of it. */
    ferry_desc_t din = desc(a + BUF / 4, BUF / 4);
    ferry_desc_t l = desc(a + BUF / 4 + 64, 64), lo = desc(a + 64, 64);
    ferry_desc_t r = desc(b, 64);
    ferry_desc_t bad = {(uintptr_t)a + BUF / 2 + 4096, 64, FERRY_MEM_CUDA, 0};

    /* Unregistered and of the wrong kind: the registration is checked first. */
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &bad, 1,
                                                           peer, &r, 1, NULL, &x));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &din, 1, &inner));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &lo, 1, peer, &r, 1,
                                           NULL, &y));
    /* x uses inner, the registration that starts nearest below it: once
     * inner is gone x is dead, while y, below inner, is not. */
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(inner));
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_post(x));
    ferry_status_t st = ferry_xfer_post(y);
    EXPECT_TRUE(st == FERRY_OK || st == FERRY_IN_PROGRESS);
    EXPECT_ST(FERRY_OK, ferry_xfer_wait(y, 5000000000ll));
    /* Registering the range again does not revive x; a new prepare works. */
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &din, 1, &again));
    EXPECT_ST(FERRY_ERR_NOT_REGISTERED, ferry_xfer_post(x));
    ferry_xfer_release(x);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                           NULL, &x));
    ferry_xfer_release(x);
    ferry_xfer_release(y);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(again));
}

int main(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "desc-errors"};
    ferry_agent_t *agent;
    ferry_mem_t *ma, *mb;
    ferry_peer_t *peer;
    ferry_desc_t da = desc(NULL, BUF / 2), db = desc(NULL, BUF / 2);

    a = malloc(BUF);
    b = malloc(BUF);
    ASSERT_TRUE(a != NULL && b != NULL);
    da.addr = (uintptr_t)a;
    db.addr = (uintptr_t)b;

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    registration_errors(agent);
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &da, 1, &ma));
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &db, 1, &mb));
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));
    prepare_errors(agent, peer);
    documented_rules(agent, peer);
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(ma));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mb));
    ferry_agent_destroy(agent);

    lifetime_rules();
    replacement_rules();
    free(a);
    free(b);
    return test_finish("test_desc_errors");
}
