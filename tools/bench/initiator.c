/* SPDX-License-Identifier: Apache-2.0 */
/*
 * An initiator rank. For each operation, block size and batch size (a
 * step), every thread prepares a request per target (timed), warms up,
 * meets the others (all threads of all initiators start timing together),
 * then posts and waits --iters times, timing each post and each
 * post-to-done. The initiators gather their figures at rank 0, which
 * prints the row at once (report.h). With --check, every iteration's
 * sources are filled and its destinations verified outside the timing.
 */
#include "clock.h"
#include "pattern.h"
#include "rank.h"
#include "report.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* No blocking call may hang the benchmark; a transfer taking this long is an
 * error worth reporting, not a slow figure. */
#define WAIT_TIMEOUT_NS (60LL * 1000000000LL)

typedef struct step {
    ferry_xfer_op_t op;
    size_t size, batch, iters, warmup;
    unsigned index;
} step_t;

typedef struct thread_ctx {
    rank_ctx_t *rc;
    const step_t *step;
    int t;
    pthread_barrier_t *go;
    uint64_t *prep_v; /* one per target */
    uint64_t *post_v, *tx_v;
    uint64_t loop_ns;
    size_t *slot; /* --layout random: the remote block of local block i */
} thread_ctx_t;

/* Asks target k to fill or verify this thread's slice; returns the ack. */
static uint64_t target_call(thread_ctx_t *tc, int k, uint32_t cmd, uint64_t seed,
                            uint64_t len)
{
    rank_ctx_t *rc = tc->rc;
    int me = rc->o->rank, tgt = rc->topo.targets[k];
    cmd_t c = {.cmd = cmd, .seed = seed, .off = remote_slice(rc, tc->t, k), .len = len};
    uint64_t seq = rc->cmd_seq[tc->t * rc->topo.ntargets + k]++;
    ack_t a;

    kv_set(&rc->job, &c, sizeof(c), "cmd/%d/%d/%d/%" PRIu64, tgt, me, tc->t, seq);
    kv_add(&rc->job, 1, "bell/%d", tgt);
    kv_get_exact(&rc->job, &a, sizeof(a), "ack/%d/%d/%d/%" PRIu64, tgt, me, tc->t,
                 seq);
    return a.bad;
}

static void report_mismatch(thread_ctx_t *tc, int k, const char *where,
                            size_t iter, uint64_t off, uint64_t seed)
{
    const step_t *s = tc->step;

    die("--check: %s data wrong after %s of %zu x %zu B to rank %d (thread %d), "
        "iteration %zu: first mismatch at byte %" PRIu64 " (descriptor %" PRIu64
        ", offset %" PRIu64 "), expected 0x%02x",
        where, op_name(s->op), s->batch, s->size,
        tc->rc->topo.targets[k], tc->t, iter, off, off / s->size, off % s->size,
        pattern_byte(seed, off));
}

static void wait_done(const options_t *o, ferry_xfer_t *x)
{
    ferry_status_t st;

    if (o->wait_mode == WAIT_BLOCK) {
        st = ferry_xfer_wait(x, WAIT_TIMEOUT_NS);
    } else {
        /* The clock is read only once a transfer has been tested a
         * thousand times: most finish before, and reading it on every
         * post would cost a small transfer several percent. */
        uint64_t deadline = 0;
        unsigned n = 0;
        while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS) {
            if ((++n & 1023) != 0) {
                continue;
            }
            if (deadline == 0) {
                deadline = now_ns() + WAIT_TIMEOUT_NS;
            } else if (now_ns() > deadline) {
                die("a transfer took longer than %lld s",
                    WAIT_TIMEOUT_NS / 1000000000LL);
            }
        }
    }
    if (st != FERRY_OK) {
        die_status(st, "a transfer failed");
    }
}

/* Fills or verifies this thread's local slice at at, block by block where
 * blocks are shuffled, with the pattern the target's slice has in its own
 * order. Returns the first wrong local offset, or the span. */
static size_t local_pattern(thread_ctx_t *tc, size_t at, uint64_t seed, bool fill)
{
    const step_t *s = tc->step;
    const bench_buf_t *b = &tc->rc->buf;

    if (tc->slot == NULL) {
        return pattern(b, at, s->size * s->batch, seed, 0, fill);
    }
    for (size_t i = 0; i < s->batch; i++) {
        size_t bad = pattern(b, at + i * s->size, s->size, seed,
                             tc->slot[i] * s->size, fill);
        if (bad != s->size) {
            return i * s->size + bad;
        }
    }
    return s->size * s->batch;
}

/* Fills the sources of one iteration (outside the timing), or, after it,
 * verifies the destinations. */
static void check_iter(thread_ctx_t *tc, size_t it, bool after)
{
    rank_ctx_t *rc = tc->rc;
    const step_t *s = tc->step;
    size_t span = s->size * s->batch;

    for (int k = 0; k < rc->topo.ntargets; k++) {
        size_t at = (size_t)local_slice(rc, tc->t, k);
        uint64_t seed = mix(mix(mix(mix(s->index, it), (uint64_t)rc->o->rank),
                                (uint64_t)tc->t), (uint64_t)k);
        uint64_t bad;

        if (s->op == FERRY_OP_WRITE && !after) {
            local_pattern(tc, at, seed, true);
        } else if (s->op == FERRY_OP_READ && !after) {
            target_call(tc, k, CMD_FILL, seed, span);
        } else if (s->op == FERRY_OP_WRITE) {
            bad = target_call(tc, k, CMD_VERIFY, seed, span);
            if (bad != span) {
                report_mismatch(tc, k, "remote", it, bad, seed);
            }
        } else {
            bad = local_pattern(tc, at, seed, false);
            if (bad != span) {
                report_mismatch(tc, k, "local", it, bad, seed);
            }
        }
    }
}

/* One thread of an initiator for one step: prepare a request per target,
 * warm up, meet the others, then the timed posts. */
static void *initiator_thread(void *arg)
{
    thread_ctx_t *tc = arg;
    rank_ctx_t *rc = tc->rc;
    const options_t *o = rc->o;
    const step_t *s = tc->step;
    int nt = rc->topo.ntargets;
    ferry_xfer_t *x[MAX_RANKS];
    ferry_desc_t *l = xcalloc(s->batch, sizeof(*l));
    ferry_desc_t *r = xcalloc(s->batch, sizeof(*r));

    if (o->layout == LAYOUT_RANDOM) {
        tc->slot = shuffled_slots(s->batch, mix(s->index, (uint64_t)tc->t));
    }
    for (int k = 0; k < nt; k++) {
        uint64_t lbase = (uintptr_t)rc->buf.p + local_slice(rc, tc->t, k);
        uint64_t rbase = rc->raddr[k] + remote_slice(rc, tc->t, k);
        for (size_t i = 0; i < s->batch; i++) {
            l[i] = (ferry_desc_t){.addr = lbase + i * s->size, .len = s->size,
                                  .kind = o->init_mem, .device = rc->buf.device};
            size_t slot = tc->slot != NULL ? tc->slot[i] : i;
            r[i] = (ferry_desc_t){.addr = rbase + slot * s->size, .len = s->size,
                                  .kind = o->target_mem, .device = rc->rdev[k]};
        }
        uint64_t t0 = now_ns();
        CHECK(ferry_xfer_prepare(rc->agent, s->op, l, s->batch, rc->peers[k], r,
                                 s->batch, NULL, &x[k]),
              "cannot prepare a %s of %zu x %zu B to rank %d", op_name(s->op),
              s->batch, s->size, rc->topo.targets[k]);
        tc->prep_v[k] = now_ns() - t0;
    }
    free(l);
    free(r);

    /* Back to back, an iteration starts when the previous one ended, so
     * the clock is read twice per iteration: after posting and after
     * completion. Samples are kept in ticks until the loop is over. */
    uint64_t start = 0, end = 0;
    bool chained = false;
    for (size_t it = 0; it < s->warmup + s->iters; it++) {
        bool timed = it >= s->warmup;
        size_t n = it - s->warmup; /* only meaningful when timed */

        if (it == s->warmup) {
            /* Every thread of every initiator starts timing together. */
            pthread_barrier_wait(tc->go);
            start = ticks();
            end = start;
            chained = true;
        }
        if (o->check) {
            check_iter(tc, it, false);
            chained = false;
        }
        uint64_t t0 = chained ? end : ticks();
        for (int k = 0; k < nt; k++) {
            ferry_status_t st = ferry_xfer_post(x[k]);
            if (st < 0) {
                die_status(st, "cannot post a transfer to rank %d",
                           rc->topo.targets[k]);
            }
        }
        uint64_t t1 = ticks();
        for (int k = 0; k < nt; k++) {
            wait_done(o, x[k]);
        }
        end = ticks();
        chained = true;
        if (timed) {
            tc->post_v[n] = t1 - t0;
            tc->tx_v[n] = end - t0;
        }
        if (o->check) {
            check_iter(tc, it, true);
            chained = false;
        }
    }
    tc->loop_ns = ticks_ns(end - start);
    for (size_t n = 0; n < s->iters; n++) {
        tc->post_v[n] = ticks_ns(tc->post_v[n]);
        tc->tx_v[n] = ticks_ns(tc->tx_v[n]);
    }
    /* With --check the loop's wall time includes the fills and verifies, so
     * the bandwidth comes from the transfers' own times instead. */
    if (o->check) {
        tc->loop_ns = (uint64_t)sum_u64(tc->tx_v, s->iters);
    }
    for (int k = 0; k < nt; k++) {
        ferry_xfer_release(x[k]);
    }
    free(tc->slot);
    return NULL;
}

/* Runs one step on this rank's threads and returns its published figures. */
static rank_res_t run_step(rank_ctx_t *rc, const step_t *s)
{
    const options_t *o = rc->o;
    int nthr = o->threads, nt = rc->topo.ntargets;
    thread_ctx_t *tcs = xcalloc((size_t)nthr, sizeof(*tcs));
    pthread_barrier_t go;
    rank_res_t res = {0};
    size_t nsamples = (size_t)nthr * s->iters;
    uint64_t *post = xcalloc(nsamples, sizeof(*post));
    uint64_t *tx = xcalloc(nsamples, sizeof(*tx));
    uint64_t *prep = xcalloc((size_t)nthr * (size_t)nt, sizeof(*prep));

    /* The initiating ranks meet before their threads start, and the threads
     * of a rank meet again after their warm-up. */
    CHECK(ferry_comm_barrier(rc->job.initiators, rc->job.timeout_ns),
          "the initiating ranks did not meet before a row");
    pthread_barrier_init(&go, NULL, (unsigned)nthr);
    for (int t = 0; t < nthr; t++) {
        tcs[t] = (thread_ctx_t){.rc = rc, .step = s, .t = t, .go = &go,
                                .prep_v = prep + (size_t)t * (size_t)nt,
                                .post_v = post + (size_t)t * s->iters,
                                .tx_v = tx + (size_t)t * s->iters};
    }
    run_threads(nthr, initiator_thread, tcs, sizeof(*tcs));
    pthread_barrier_destroy(&go);

    for (int t = 0; t < nthr; t++) {
        res.loop_ns = (double)tcs[t].loop_ns > res.loop_ns ? (double)tcs[t].loop_ns
                                                          : res.loop_ns;
    }
    res.bytes = (double)s->size * (double)s->batch * (double)nt * (double)nthr *
                (double)s->iters;
    res.prep_n = (double)nthr * nt;
    res.prep_sum = sum_u64(prep, (size_t)nthr * (size_t)nt);
    res.prep_p99 = (double)percentile(prep, (size_t)nthr * (size_t)nt, 99);
    res.post_n = res.tx_n = (double)nsamples;
    res.post_sum = sum_u64(post, nsamples);
    res.post_p99 = (double)percentile(post, nsamples, 99);
    res.tx_sum = sum_u64(tx, nsamples);
    res.tx_p99 = (double)percentile(tx, nsamples, 99);
    res.tx_p50 = (double)percentile(tx, nsamples, 50);
    if (o->check) {
        res.checked_n = (double)nthr * nt * (double)(s->warmup + s->iters);
        res.checked_bytes = res.checked_n * (double)s->size * (double)s->batch;
    }
    free(tcs);
    free(post);
    free(tx);
    free(prep);
    return res;
}

/* Every initiator's figures of a step, gathered; rank 0 (the first
 * initiator in every scheme) combines them into the row. */
static bool gather_row(rank_ctx_t *rc, const step_t *s, const rank_res_t *mine,
                       result_t *row)
{
    int n = rc->topo.ninitiators;
    void **vals = xcalloc((size_t)n, sizeof(*vals));
    size_t *lens = xcalloc((size_t)n, sizeof(*lens));
    rank_res_t *all = xcalloc((size_t)n, sizeof(*all));
    bool lead = rc->o->rank == 0;

    CHECK(ferry_comm_allgather(rc->job.initiators, mine, sizeof(*mine), vals, lens,
                               rc->job.timeout_ns),
          "the initiating ranks could not gather a row's figures");
    for (int i = 0; i < n; i++) {
        if (lens[i] != sizeof(*all)) {
            die("initiator %d published %zu bytes of figures, not %zu", i,
                lens[i], sizeof(*all));
        }
        memcpy(&all[i], vals[i], sizeof(*all));
        ferry_store_free(vals[i]);
    }
    if (lead) {
        *row = report_combine(op_name(s->op), s->size, s->batch, s->iters,
                              s->warmup, all, (size_t)n);
    }
    free(vals);
    free(lens);
    free(all);
    return lead;
}

/* Opens the connection to every target the way the first request would
 * (preparing one opens it), so that no row's Avg Prep includes it; returns
 * the time that took. */
static double connect_targets(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    uint64_t t0 = now_ns();

    for (int k = 0; k < rc->topo.ntargets; k++) {
        ferry_desc_t l = {.addr = (uintptr_t)rc->buf.p, .len = 1,
                          .kind = o->init_mem, .device = rc->buf.device};
        ferry_desc_t r = {.addr = rc->raddr[k], .len = 1,
                          .kind = o->target_mem, .device = rc->rdev[k]};
        ferry_xfer_t *x;

        CHECK(ferry_xfer_prepare(rc->agent, FERRY_OP_WRITE, &l, 1, rc->peers[k],
                                 &r, 1, NULL, &x),
              "cannot connect to rank %d", rc->topo.targets[k]);
        ferry_xfer_release(x);
    }
    return (double)(now_ns() - t0);
}

/* The UCX transports this process's contexts get, from the library's
 * report (ferry_info_print(), the public way to learn them); NULL when the
 * report has no such line. The caller frees the result. */
static char *ucx_transports(void)
{
    static const char key[] = "transports:";
    char *text = NULL, *line, *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (f == NULL) {
        return NULL;
    }
    (void)ferry_info_print(f, FERRY_INFO_UCX);
    fclose(f);
    line = text != NULL ? strstr(text, key) : NULL;
    if (line != NULL) {
        line += sizeof(key) - 1;
        line += strspn(line, " ");
        out = strndup(line, strcspn(line, "\n"));
    }
    free(text);
    return out;
}

/* The run's first line, on rank 0. */
static void print_banner(const rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    char gpu[48] = "";

    if (o->init_mem == FERRY_MEM_CUDA || o->target_mem == FERRY_MEM_CUDA) {
        if (o->gpu >= 0) {
            snprintf(gpu, sizeof(gpu), ", GPU memory on device %d", o->gpu);
        } else {
            snprintf(gpu, sizeof(gpu), ", GPU memory on device rank %% count");
        }
    }
    printf("ferry-bench: ferry %s, %s, %d ranks (%d initiating), %d "
           "thread(s) each, %s memory (%s) -> %s memory%s, "
           "wait %s, target %s%s%s; B/W in decimal GB/s\n",
           ferry_version(), scheme_names[o->scheme], o->world,
           rc->topo.ninitiators, o->threads, kind_names[o->init_mem],
           o->alloc == ALLOC_FERRY ? "ferry_mem_alloc" : "mmap",
           kind_names[o->target_mem], gpu, wait_names[o->wait_mode],
           target_names[o->target_mode],
           o->progress_thread ? ", progress threads" : "",
           o->check ? ", every byte checked after every iteration" : "");
    char *tls = ucx_transports();
    printf("ucx transports available: %s\n", tls != NULL ? tls : "unknown");
    free(tls);
}

void run_initiator(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    ferry_xfer_op_t ops[2];
    size_t nops = 0, nres = 0;
    bool lead = o->rank == 0;
    result_t *res = xcalloc(2 * o->nsizes * o->nbatches, sizeof(*res));
    unsigned index = 0;

    if (o->do_write) {
        ops[nops++] = FERRY_OP_WRITE;
    }
    if (o->do_read) {
        ops[nops++] = FERRY_OP_READ;
    }
    if (lead) {
        print_banner(rc);
    }
    double connect_ns = connect_targets(rc);
    if (lead) {
        printf("connect: %.3f ms to %d target(s), before the rows (Avg Prep "
               "below is preparing only)\n", connect_ns / 1e6,
               rc->topo.ntargets);
    }
    double checked_n = 0, checked_bytes = 0;
    for (size_t i = 0; i < nops; i++) {
        if (lead) {
            char title[128];
            snprintf(title, sizeof(title), "%s, %s memory -> %s memory (%s)",
                     op_name(ops[i]), kind_names[o->init_mem],
                     kind_names[o->target_mem],
                     ops[i] == FERRY_OP_WRITE ? "initiator's to target's"
                                              : "target's to initiator's");
            report_header(title);
        }
        for (size_t si = 0; si < o->nsizes; si++) {
            for (size_t bi = 0; bi < o->nbatches; bi++) {
                step_t s = {.op = ops[i], .size = o->sizes[si],
                            .batch = o->batches[bi], .index = index++};
                s.iters = options_iters(o, s.size * s.batch);
                s.warmup = options_warmup(o, s.iters);
                rank_res_t mine = run_step(rc, &s);
                if (gather_row(rc, &s, &mine, &res[nres])) {
                    checked_n += res[nres].checked_n;
                    checked_bytes += res[nres].checked_bytes;
                    report_row(&res[nres++]);
                }
            }
        }
    }
    /* Close the connections while the targets still drive progress, so
     * that closing never waits on a process that has already gone; then
     * tell them. */
    for (int k = 0; k < rc->topo.ntargets; k++) {
        ferry_peer_forget(rc->peers[k]);
        rc->peers[k] = NULL;
    }
    kv_set(&rc->job, "", 0, "done/%d", o->rank);
    for (int k = 0; k < rc->topo.ntargets; k++) {
        kv_add(&rc->job, 1, "bell/%d", rc->topo.targets[k]);
    }
    if (lead && o->check) {
        /* Any wrong byte ended the run already (report_mismatch). */
        bool gb = checked_bytes >= 1e9;

        printf("\ncheck: %.0f transfers, %.3f %s compared, all bytes intact\n",
               checked_n, checked_bytes / (gb ? 1e9 : 1e6), gb ? "GB" : "MB");
    }
    if (lead) {
        report_files(o, res, nres);
    }
    free(res);
}
