/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A rank's place in its job: the communicator of every rank (the metadata
 * allgather, the final barrier), that of the initiating ranks (the barrier
 * before each step, the gathering of its figures), and a store connection
 * of its own for what is not a collective: --check's commands to a target,
 * the bells that say one is waiting, and each initiator's "done".
 *
 * A rank joins as --store URL --rank R -n N say, its keys under a
 * generation number counted in that store (a long-lived ferry-store may
 * hold earlier runs' keys), or as the environment of a launcher says
 * (ferry-run, or ferry-bench's own): FERRY_RANK, FERRY_WORLD_SIZE,
 * FERRY_STORE (or MASTER_ADDR and MASTER_PORT), under FERRY_COMM_PREFIX.
 */
#ifndef FERRY_BENCH_JOB_H
#define FERRY_BENCH_JOB_H

#include "options.h"

/* A wait that lasts this long gets a line on stderr saying what it waits
 * for (the store, or which ranks). */
#define WAIT_NOTE_NS 1500000000ull

typedef struct job {
    ferry_comm_t *comm;
    ferry_comm_t *initiators; /* NULL on a target */
    ferry_store_t *store;
    char prefix[256]; /* this run's keys, the communicators' among them */
    char url[300];    /* the store's */
    int64_t timeout_ns; /* --timeout: every store call and collective */
} job_t;

/* Runs fn on a thread of its own once a wait has lasted WAIT_NOTE_NS, to
 * print what the wait is for; wait_end() stops it, before the wait's
 * status is looked at. */
typedef struct wait_note wait_note_t;
wait_note_t *wait_begin(void (*fn)(const void *arg), const void *arg);
void wait_end(wait_note_t *w);
/* The usual fn: prints arg, a string, as the rank's "waiting for" line. */
void wait_say(const void *text);

/* Joins the job; sets o->rank and o->world from it. Says on stderr what
 * it waits for when the store or a rank is slow to come. */
void job_join(job_t *j, options_t *o);
/* Joins the initiators' communicator as the index-th of n. */
void job_join_initiators(job_t *j, int index, int n);
void job_leave(job_t *j);

/* The store's keys of this run, "<prefix>b/<fmt>". */
void kv_set(const job_t *j, const void *v, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Waits for a fixed-size value, which it copies to out. */
void kv_get_exact(const job_t *j, void *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int64_t kv_add(const job_t *j, int64_t delta, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether a key exists, without waiting. */
bool kv_has(const job_t *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
