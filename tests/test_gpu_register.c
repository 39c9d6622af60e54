/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Registration rules for GPU memory, in one process (skipped without a
 * GPU): AUTO finds device memory and its device; a descriptor that claims
 * the wrong kind or device, or that runs past the end of its cuMemAlloc
 * allocation, is INVALID with a text saying which; VMM memory created
 * without a shareable handle type is UNSUPPORTED; VMM memory built from
 * several physical allocations registers as one region; and loopback
 * requests between GPU regions of one agent (its own peer: no IPC handle
 * is opened for memory the process owns) move the bytes.
 */
#include "mem_util.h"
#include "xfer_util.h"

#include <stdint.h>

static void register_rules(ferry_agent_t *agent, const ferry__cuda_t *cu)
{
    CUdeviceptr d;
    size_t size = 1 << 20;
    ferry_mem_t *mem = NULL;
    ferry_desc_t desc;

    XM_CU(cu->cuMemAlloc(&d, size));
    desc = (ferry_desc_t){d, size, FERRY_MEM_HOST, 0};
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, &desc, 1, &mem));
    EXPECT_ERR_HAS("says host memory");
    desc.kind = FERRY_MEM_CUDA;
    desc.device = 1 + cu->ndevices;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, &desc, 1, &mem));
    {
        char want[32];

        snprintf(want, sizeof(want), "memory of device %d", xm_device());
        EXPECT_ERR_HAS(want);
    }
    desc.device = xm_device();
    desc.len = size + 1;
    EXPECT_ST(FERRY_ERR_INVALID, ferry_mem_register(agent, &desc, 1, &mem));
    EXPECT_ERR_HAS("runs past the end of its CUDA allocation");
    EXPECT_TRUE(mem == NULL);
    desc.kind = FERRY_MEM_AUTO;
    desc.len = size - 100;
    desc.addr = d + 100;
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &desc, 1, &mem));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    XM_CU(cu->cuMemFree(d));
}

/* VMM memory without CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR cannot be
 * shared; registering it says so instead of failing at a peer. */
static void vmm_unshareable(ferry_agent_t *agent, const ferry__cuda_t *cu)
{
    CUmemAllocationProp prop = {0};
    CUmemAccessDesc access = {{CU_MEM_LOCATION_TYPE_DEVICE, xm_device()},
                              CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    size_t gran;
    ferry_mem_t *mem = NULL;
    ferry_desc_t desc;

    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = access.location;
    XM_CU(cu->cuMemGetAllocationGranularity(&gran, &prop,
                                            CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    XM_CU(cu->cuMemAddressReserve(&va, gran, gran, 0, 0));
    XM_CU(cu->cuMemCreate(&h, gran, &prop, 0));
    XM_CU(cu->cuMemMap(va, gran, 0, h, 0));
    XM_CU(cu->cuMemSetAccess(va, gran, &access, 1));
    desc = (ferry_desc_t){va, gran, FERRY_MEM_CUDA, xm_device()};
    EXPECT_ST(FERRY_ERR_UNSUPPORTED, ferry_mem_register(agent, &desc, 1, &mem));
    EXPECT_ERR_HAS("CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR");
    XM_CU(cu->cuMemUnmap(va, gran));
    XM_CU(cu->cuMemRelease(h));
    XM_CU(cu->cuMemAddressFree(va, gran));
}

/* A WRITE between two regions of one agent (its own loopback peer), from
 * cuMemAlloc memory into VMM memory that spans several allocations. */
static void loopback(ferry_agent_t *agent)
{
    xm_buf_t src, dst;
    size_t cap = 16u << 20;
    ferry_mem_t *ms, *md;
    ferry_peer_t *peer;
    ferry_xfer_t *x;
    test_rng_t rng = {0x5eed};
    uint64_t off_s = test_rand_range(&rng, 0, 4096);
    uint64_t off_d = cap - (9u << 20) - test_rand_range(&rng, 0, 4096);
    uint64_t len = (8u << 20) + test_rand_range(&rng, 1, 4096); /* crosses chunks */

    ASSERT_TRUE(xm_alloc(&src, XM_CUDA, cap) == 0);
    ASSERT_TRUE(xm_alloc(&dst, XM_VMM, cap) == 0);
    {
        ferry_desc_t a = {src.addr, cap, FERRY_MEM_CUDA, xm_device()};
        ferry_desc_t b = {dst.addr, cap, FERRY_MEM_AUTO, xm_device()};

        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &a, 1, &ms));
        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, &b, 1, &md));
    }
    ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));
    {
        ferry_desc_t l = {src.addr + off_s, len, FERRY_MEM_CUDA, xm_device()};
        ferry_desc_t r = {dst.addr + off_d, len, FERRY_MEM_CUDA, xm_device()};

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, &l, 1, peer, &r, 1,
                                               NULL, &x));
    }
    /* Every re-post moves the source's current bytes. */
    for (uint64_t i = 1; i <= 3; i++) {
        test_fill(src.host, cap, 7, i, 0);
        xm_to_dev(&src, 0, cap);
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 10ll * 1000 * 1000 * 1000));
        xm_from_dev(&dst, 0, cap);
        EXPECT_TRUE(memcmp(dst.host + off_d, src.host + off_s, len) == 0);
    }
    /* Nothing around the destination changed (dst started zeroed). */
    for (uint64_t i = 0; i < cap; i++)
        if ((i < off_d || i >= off_d + len) && dst.host[i] != 0) {
            TEST_FAIL_AT_("byte %llu outside the destination changed",
                          (unsigned long long)i);
            break;
        }
    ferry_xfer_release(x);

    /* One request, two backends: a GPU pair (CUDA IPC) and a host pair
     * (UCX), split into two parts at prepare and completed as one. */
    {
        xm_buf_t hs, hd;
        ferry_mem_t *mh;
        ferry_desc_t hreg[2], l[2], r[2];

        ASSERT_TRUE(xm_alloc(&hs, XM_HOST, 1 << 20) == 0);
        ASSERT_TRUE(xm_alloc(&hd, XM_HOST, 1 << 20) == 0);
        hreg[0] = (ferry_desc_t){hs.addr, 1 << 20, FERRY_MEM_HOST, 0};
        hreg[1] = (ferry_desc_t){hd.addr, 1 << 20, FERRY_MEM_HOST, 0};
        ASSERT_ST(FERRY_OK, ferry_mem_register(agent, hreg, 2, &mh));
        ferry_peer_forget(peer);
        ASSERT_ST(FERRY_OK, test_exchange(agent, agent, &peer));
        l[0] = (ferry_desc_t){src.addr + 5, 4096, FERRY_MEM_CUDA, xm_device()};
        r[0] = (ferry_desc_t){dst.addr + 77, 4096, FERRY_MEM_CUDA, xm_device()};
        l[1] = (ferry_desc_t){hs.addr + 3, 65536, FERRY_MEM_HOST, 0};
        r[1] = (ferry_desc_t){hd.addr + 11, 65536, FERRY_MEM_HOST, 0};
        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, 2, peer, r, 2,
                                               NULL, &x));
        for (uint64_t i = 1; i <= 3; i++) {
            test_fill(hs.host, 1 << 20, 8, i, 0);
            test_fill(src.host, cap, 9, i, 0);
            xm_to_dev(&src, 0, cap);
            EXPECT_ST(FERRY_OK, xu_post_wait(x, 10ll * 1000 * 1000 * 1000));
            xm_from_dev(&dst, 0, cap);
            EXPECT_TRUE(memcmp(dst.host + 77, src.host + 5, 4096) == 0);
            EXPECT_TRUE(memcmp(hd.host + 11, hs.host + 3, 65536) == 0);
        }
        ferry_xfer_release(x);
        EXPECT_ST(FERRY_OK, ferry_mem_deregister(mh));
        xm_free(&hs);
        xm_free(&hd);
    }
    ferry_peer_forget(peer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(ms));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(md));
    xm_free(&src);
    xm_free(&dst);
}

int main(void)
{
    const ferry__cuda_t *cu = xm_cuda();
    ferry_agent_t *agent;

    if (cu == NULL)
        return 77;
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &agent));
    register_rules(agent, cu);
    vmm_unshareable(agent, cu);
    loopback(agent);
    ferry_agent_destroy(agent);
    return test_finish("test_gpu_register");
}
