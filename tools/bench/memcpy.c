/* SPDX-License-Identifier: Apache-2.0 */
/*
 * --memcpy: the reference copy. Each of --threads threads copies with
 * memcpy (glibc's, which UCX's shared-memory put and get use too) between
 * two buffers of its own, of each block size and batch size (a batch
 * copies its blocks one by one, to shuffled places with --layout random),
 * in one process, with the same iteration counts as a transfer row. The
 * threads start timing together, as an initiator's do, and the row gives
 * the bytes of all over the slowest one's time: with N threads, the memory
 * bandwidth N threads can reach. Only B/W and Avg Lat. mean anything here;
 * the other figures are left blank.
 */
#include "buf.h"
#include "clock.h"
#include "local.h"
#include "pattern.h"
#include "report.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct copier {
    size_t size, batch, iters, warmup;
    const size_t *slot; /* --layout random: where block b goes */
    pthread_barrier_t *go; /* NULL with one thread */
    uint64_t ns;           /* the timed loop's */
} copier_t;

static void *copy_thread(void *arg)
{
    copier_t *c = arg;
    size_t size = c->size, batch = c->batch;
    bench_buf_t src, dst;
    uint64_t t0 = 0, t = 0;

    /* Each thread allocates (and touches) its own buffers. */
    bench_alloc(NULL, FERRY_MEM_HOST, SRC_MMAP, size * batch, &src);
    bench_alloc(NULL, FERRY_MEM_HOST, SRC_MMAP, size * batch, &dst);
    /* Timed as the transfers are, one clock reading per batch. */
    for (size_t it = 0; it < c->warmup + c->iters; it++) {
        if (it == c->warmup) {
            if (c->go != NULL) {
                pthread_barrier_wait(c->go);
            }
            t0 = ticks();
        }
        for (size_t b = 0; b < batch; b++) {
            memcpy(dst.p + (c->slot != NULL ? c->slot[b] : b) * size,
                   src.p + b * size, size);
        }
        /* Keeps the compiler from merging or dropping copies. */
        __asm__ __volatile__("" : : "r"(dst.p) : "memory");
        t = ticks();
    }
    c->ns = ticks_ns(t - t0);
    bench_free(&src);
    bench_free(&dst);
    return NULL;
}

/* One row: every thread's copies; returns the slowest thread's time. */
static double copy_row(int nthr, copier_t *proto)
{
    copier_t *cs = xcalloc((size_t)nthr, sizeof(*cs));
    pthread_barrier_t go;
    double ns = 0;

    if (nthr > 1) {
        pthread_barrier_init(&go, NULL, (unsigned)nthr);
        proto->go = &go;
    }
    for (int t = 0; t < nthr; t++) {
        cs[t] = *proto;
    }
    run_threads(nthr, copy_thread, cs, sizeof(*cs));
    if (nthr > 1) {
        pthread_barrier_destroy(&go);
    }
    for (int t = 0; t < nthr; t++) {
        ns = (double)cs[t].ns > ns ? (double)cs[t].ns : ns;
    }
    free(cs);
    return ns;
}

int run_memcpy_bench(const options_t *o)
{
    result_t *res = xcalloc(o->nsizes * o->nbatches, sizeof(*res));
    size_t nres = 0;
    int nthr = o->threads;

    if (nthr == 1) {
        printf("ferry-bench --memcpy: one thread's memcpy, B/W in decimal GB/s\n");
    } else {
        printf("ferry-bench --memcpy: %d threads' memcpy in parallel, each "
               "between its own buffers, B/W (their sum) in decimal GB/s\n",
               nthr);
    }
    report_header("MEMCPY, host memory -> host memory (one process)");
    for (size_t i = 0; i < o->nsizes; i++) {
        for (size_t bi = 0; bi < o->nbatches; bi++) {
            size_t size = o->sizes[i], batch = o->batches[bi];
            copier_t c = {.size = size, .batch = batch,
                          .iters = options_iters(o, size * batch)};
            size_t *slot = o->layout == LAYOUT_RANDOM ? shuffled_slots(batch, 1)
                                                      : NULL;

            c.warmup = options_warmup(o, c.iters);
            c.slot = slot;
            double ns = copy_row(nthr, &c);
            res[nres] = (result_t){.op = "MEMCPY", .size = size, .batch = batch,
                                   .iters = c.iters, .warmup = c.warmup};
            for (int k = 0; k < NCOLS; k++) {
                res[nres].v[k] = NAN;
            }
            res[nres].v[BW] = (double)(size * batch) * (double)c.iters *
                              (double)nthr / ns;
            res[nres].v[AVG_LAT] = ns / (double)c.iters / 1e3;
            report_row(&res[nres++]);
            free(slot);
        }
    }
    report_files(o, res, nres);
    free(res);
    return 0;
}
