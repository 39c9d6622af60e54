/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Two-process benchmarks' job (pair.h).
 */
#include "pair.h"

#include "launch.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct hello_hdr {
    int64_t pid;
    uint64_t a, b, blob_len;
} hello_hdr_t;

ferry_comm_t *pair_join(const char *name, char **argv)
{
    ferry_comm_t *comm;

    bench_set_name(name);
    if (!launch_in_job()) {
        launch_params_t p = {.name = name, .path = "/proc/self/exe", .argv = argv,
                             .nranks = 2, .grace_s = 2.0};

        exit(launch_job(&p));
    }
    CHECK(ferry_comm_create(NULL, &comm), "cannot join the job");
    if (ferry_comm_size(comm) != 2) {
        die("a job of two ranks, not %d", ferry_comm_size(comm));
    }
    bench_set_rank(ferry_comm_rank(comm));
    return comm;
}

pair_hello_t pair_greet(ferry_comm_t *comm, ferry_agent_t *agent, uint64_t a,
                        uint64_t b)
{
    hello_hdr_t h = {.pid = getpid(), .a = a, .b = b};
    void *blob = NULL, *vals[2];
    size_t lens[2];
    uint8_t *v;
    int other = 1 - ferry_comm_rank(comm);
    pair_hello_t out = {0};

    if (agent != NULL) {
        CHECK(ferry_md_pack(agent, &blob, &h.blob_len), "cannot pack the metadata");
    }
    v = xcalloc(1, sizeof(h) + h.blob_len);
    memcpy(v, &h, sizeof(h));
    if (blob != NULL) {
        memcpy(v + sizeof(h), blob, h.blob_len);
    }
    ferry_md_free(blob);
    CHECK(ferry_comm_allgather(comm, v, sizeof(h) + h.blob_len, vals, lens, -1),
          "the two ranks could not greet each other");
    free(v);
    if (lens[other] >= sizeof(h)) {
        memcpy(&h, vals[other], sizeof(h));
    }
    if (lens[other] < sizeof(h) || lens[other] != sizeof(h) + h.blob_len) {
        die("a malformed greeting from rank %d", other);
    }
    out = (pair_hello_t){.pid = (pid_t)h.pid, .a = h.a, .b = h.b,
                         .blob_len = h.blob_len};
    if (h.blob_len > 0) {
        out.blob = xcalloc(1, h.blob_len);
        memcpy(out.blob, (uint8_t *)vals[other] + sizeof(h), h.blob_len);
    }
    ferry_store_free(vals[0]);
    ferry_store_free(vals[1]);
    return out;
}

void pair_leave(ferry_comm_t *comm)
{
    CHECK(ferry_comm_barrier(comm, -1), "the two ranks did not meet at the end");
    ferry_comm_destroy(comm);
}
