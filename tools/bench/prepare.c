/* SPDX-License-Identifier: Apache-2.0 */
/*
 * --prepare-bench N: prepares a WRITE of N 64-byte descriptors within one
 * registered region, against the agent's own blob (loopback), and reports
 * the cost per descriptor: the design promises O(log n) lookups, so this
 * should be tens of nanoseconds. The first prepare also connects to the
 * peer, so it is reported apart.
 */
#include "buf.h"
#include "clock.h"
#include "local.h"

#include <stdlib.h>

int run_prepare_bench(size_t n)
{
    enum { DESC_LEN = 64, RUNS = 5 };
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    void *blob;
    size_t blob_len;
    bench_buf_t buf;
    ferry_desc_t *l = xcalloc(n, sizeof(*l)), *r = xcalloc(n, sizeof(*r));
    uint64_t prep[RUNS + 1], rel[RUNS + 1], prep_sum = 0, rel_sum = 0;

    CHECK(ferry_agent_create(NULL, &agent), "cannot create the agent");
    bench_alloc(agent, FERRY_MEM_HOST, SRC_MMAP, 2 * n * DESC_LEN, &buf);
    ferry_desc_t d = bench_desc(&buf, 0, buf.len);
    CHECK(ferry_mem_register(agent, &d, 1, &mem), "cannot register the buffer");
    CHECK(ferry_md_pack(agent, &blob, &blob_len), "cannot pack the metadata");
    CHECK(ferry_peer_load(agent, blob, blob_len, &peer),
          "cannot load this process's own metadata");
    ferry_md_free(blob);
    /* Sources fill the first half of the region, destinations the second. */
    for (size_t i = 0; i < n; i++) {
        l[i] = bench_desc(&buf, i * DESC_LEN, DESC_LEN);
        r[i] = bench_desc(&buf, (n + i) * DESC_LEN, DESC_LEN);
    }
    for (int run = 0; run <= RUNS; run++) {
        ferry_xfer_t *x;
        uint64_t t0 = now_ns();
        CHECK(ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, n, peer, r, n,
                                 NULL, &x),
              "cannot prepare a WRITE of %zu descriptors", n);
        uint64_t t1 = now_ns();
        ferry_xfer_release(x);
        prep[run] = t1 - t0;
        rel[run] = now_ns() - t1;
        prep_sum += run > 0 ? prep[run] : 0;
        rel_sum += run > 0 ? rel[run] : 0;
    }
    printf("prepare-bench: WRITE of %zu descriptors of %d B, loopback peer\n"
           "first prepare (connects): %.3f ms, release %.3f ms\n"
           "prepare: %.1f ns/descriptor (%.3f ms per request, mean of %d)\n"
           "release: %.2f ns/descriptor (%.3f ms per request, mean of %d)\n",
           n, DESC_LEN, (double)prep[0] / 1e6, (double)rel[0] / 1e6,
           (double)prep_sum / RUNS / (double)n, (double)prep_sum / RUNS / 1e6,
           RUNS, (double)rel_sum / RUNS / (double)n,
           (double)rel_sum / RUNS / 1e6, RUNS);
    ferry_peer_forget(peer);
    CHECK(ferry_mem_deregister(mem), "cannot deregister the buffer");
    bench_free(&buf);
    ferry_agent_destroy(agent);
    free(l);
    free(r);
    return 0;
}
