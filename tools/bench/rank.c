/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A rank's life (rank.h): join the job, create the agent and the buffer,
 * swap metadata with the ranks it talks to, initiate or serve, and leave
 * once every rank is done with everyone's memory.
 */
#include "rank.h"

#include <stdlib.h>
#include <string.h>

bool initiates(const options_t *o, int r)
{
    switch (o->scheme) {
    case SCHEME_PAIRWISE: return r % 2 == 0;
    case SCHEME_MANYTOONE: return r < o->world - 1;
    default: return r == 0;
    }
}

static bool initiates_to(const options_t *o, int from, int to)
{
    switch (o->scheme) {
    case SCHEME_PAIRWISE: return from % 2 == 0 && to == from + 1;
    case SCHEME_MANYTOONE: return from < o->world - 1 && to == o->world - 1;
    default: return from == 0 && to > 0;
    }
}

static void topo_make(const options_t *o, int rank, topo_t *t)
{
    memset(t, 0, sizeof(*t));
    for (int r = 0; r < o->world; r++) {
        if (initiates_to(o, rank, r)) {
            t->targets[t->ntargets++] = r;
        }
        if (initiates_to(o, r, rank)) {
            t->sources[t->nsources++] = r;
        }
        t->index += r < rank && initiates(o, r);
        t->ninitiators += initiates(o, r);
    }
}

/* The index of src among dst's sources: which slice of dst's buffer is its. */
static int slot_of(const options_t *o, int src, int dst)
{
    int k = 0;

    for (int r = 0; r < src; r++) {
        k += initiates_to(o, r, dst);
    }
    return k;
}

uint64_t local_slice(const rank_ctx_t *rc, int t, int k)
{
    return ((uint64_t)t * (uint64_t)rc->topo.ntargets + (uint64_t)k) * rc->span;
}

/* The slices of one source's threads follow each other. */
uint64_t remote_slice(const rank_ctx_t *rc, int t, int k)
{
    const options_t *o = rc->o;

    return ((uint64_t)slot_of(o, o->rank, rc->topo.targets[k]) * (uint64_t)o->threads +
            (uint64_t)t) * rc->span;
}

/* The metadata a rank publishes: its buffer, then its blob. */
typedef struct md_hdr {
    uint64_t addr, len, blob_len;
    int64_t device;
} md_hdr_t;

/* Loads rank r's blob from the gathered metadata; its buffer's address and
 * device go to addr_p and dev_p unless they are NULL. */
static void load_peer(rank_ctx_t *rc, void *const *mds, const size_t *lens,
                      int r, ferry_peer_t **peer_p, uint64_t *addr_p,
                      int32_t *dev_p)
{
    const uint8_t *v = mds[r];
    md_hdr_t h;

    if (lens[r] < sizeof(h)) {
        die("short metadata from rank %d", r);
    }
    memcpy(&h, v, sizeof(h));
    if (h.blob_len != lens[r] - sizeof(h)) {
        die("inconsistent metadata from rank %d", r);
    }
    CHECK(ferry_peer_load(rc->agent, v + sizeof(h), h.blob_len, peer_p),
          "cannot load the metadata of rank %d", r);
    if (addr_p != NULL) {
        *addr_p = h.addr;
    }
    if (dev_p != NULL) {
        *dev_p = (int32_t)h.device;
    }
}

/* Publishes this rank's buffer and blob to every rank; loads the blobs of
 * the ranks it talks to (targets load their sources' too, as real users of
 * one-sided transfers do). */
static void swap_metadata(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    void *blob, **mds = xcalloc((size_t)o->world, sizeof(*mds));
    size_t blob_len, *lens = xcalloc((size_t)o->world, sizeof(*lens));

    CHECK(ferry_md_pack(rc->agent, &blob, &blob_len),
          "cannot pack this rank's metadata");
    md_hdr_t h = {(uintptr_t)rc->buf.p, rc->buf.len, blob_len, rc->buf.device};
    uint8_t *v = xcalloc(1, sizeof(h) + blob_len);
    memcpy(v, &h, sizeof(h));
    memcpy(v + sizeof(h), blob, blob_len);
    ferry_md_free(blob);
    wait_note_t *w = wait_begin(wait_say, "waiting for the other ranks' "
                                          "metadata (--timeout to give up)");
    ferry_status_t st = ferry_comm_allgather(rc->job.comm, v,
                                             sizeof(h) + blob_len, mds, lens,
                                             rc->job.timeout_ns);
    wait_end(w);
    CHECK(st, "the ranks could not swap their metadata");
    free(v);

    for (int k = 0; k < rc->topo.ntargets; k++) {
        load_peer(rc, mds, lens, rc->topo.targets[k], &rc->peers[k],
                  &rc->raddr[k], &rc->rdev[k]);
    }
    for (int k = 0; k < rc->topo.nsources; k++) {
        ferry_peer_t *p;
        load_peer(rc, mds, lens, rc->topo.sources[k], &p, NULL, NULL);
    }
    for (int r = 0; r < o->world; r++) {
        ferry_store_free(mds[r]);
    }
    free(mds);
    free(lens);
}

/* Creates the agent and the buffer, and swaps metadata. */
static void rank_setup(rank_ctx_t *rc, const options_t *o)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME};
    size_t max_size = 0, max_batch = 0, slices;
    char name[32];
    bool init = initiates(o, o->rank);

    rc->o = o;
    topo_make(o, o->rank, &rc->topo);
    for (size_t i = 0; i < o->nsizes; i++) {
        max_size = o->sizes[i] > max_size ? o->sizes[i] : max_size;
    }
    for (size_t i = 0; i < o->nbatches; i++) {
        max_batch = o->batches[i] > max_batch ? o->batches[i] : max_batch;
    }
    slices = (size_t)o->threads *
             (size_t)(init ? rc->topo.ntargets : rc->topo.nsources);
    if (max_size > SIZE_MAX / max_batch / slices) {
        die("block size x batch x threads x peers overflows");
    }
    rc->span = max_size * max_batch;

    snprintf(name, sizeof(name), "ferry-bench-rank%d", o->rank);
    ap.name = name;
    if (o->progress_thread || (!init && o->target_mode == TARGET_THREAD)) {
        ap.field_mask |= FERRY_AGENT_PARAM_PROGRESS_THREAD;
        ap.progress_thread = 1;
    }
    CHECK(ferry_agent_create(&ap, &rc->agent), "cannot create the agent");
    ferry_mem_kind_t kind = init ? o->init_mem : o->target_mem;
    bool gpu = kind == FERRY_MEM_CUDA;

    /* ferry allocates GPU memory on the current context's device. */
    if (gpu) {
        bench_gpu_use(o->gpu, o->rank);
    }
    bench_alloc(rc->agent, kind,
                kind == FERRY_MEM_HOST && o->alloc == ALLOC_MMAP ? SRC_MMAP
                                                                 : SRC_FERRY,
                rc->span * slices, &rc->buf);
    ferry_desc_t d = bench_desc(&rc->buf, 0, rc->buf.len);
    CHECK(ferry_mem_register(rc->agent, &d, 1, &rc->mem),
          "cannot register the %zu B buffer", rc->buf.len);
    swap_metadata(rc);
    rc->cmd_seq = xcalloc((size_t)o->threads * (size_t)rc->topo.ntargets,
                          sizeof(*rc->cmd_seq));
    if (init) {
        job_join_initiators(&rc->job, rc->topo.index, rc->topo.ninitiators);
    }
}

static void rank_teardown(rank_ctx_t *rc)
{
    CHECK(ferry_mem_deregister(rc->mem), "cannot deregister the buffer");
    bench_free(&rc->buf);
    ferry_agent_destroy(rc->agent);
    job_leave(&rc->job);
    free(rc->cmd_seq);
}

int rank_main(options_t *o)
{
    rank_ctx_t *rc = xcalloc(1, sizeof(*rc));

    job_join(&rc->job, o);
    bench_set_rank(o->rank);
    rank_setup(rc, o);
    if (initiates(o, o->rank)) {
        run_initiator(rc);
    } else {
        run_target(rc);
    }
    /* Nobody leaves before everyone is done with everyone's memory. */
    wait_note_t *w = wait_begin(wait_say, "waiting for the other ranks to "
                                          "finish (--timeout to give up)");
    ferry_status_t st = ferry_comm_barrier(rc->job.comm, rc->job.timeout_ns);
    wait_end(w);
    CHECK(st, "the ranks did not meet at the end");
    rank_teardown(rc);
    free(rc);
    return 0;
}
