/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A target rank: it only serves. It drives its agent's progress as
 * --target says (spinning, as ucx_perftest's responder does; sleeping on
 * ferry_agent_fd(); or leaving it to the progress thread) and answers
 * --check's fill and verify commands, until every source has said it is
 * done.
 */
#include "clock.h"
#include "pattern.h"
#include "rank.h"

#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

/* How often a target looks in the store for commands and for the end: often
 * while commands come (--check), rarely otherwise, so that a spinning
 * target spends its time on progress, not on the store. */
#define TARGET_POLL_BUSY_NS 100000ull
#define TARGET_POLL_IDLE_NS 2000000ull
#define TARGET_BUSY_NS 100000000ull

/* Serves one command from (source rank src, its thread t) if it is there;
 * returns whether it was. */
static bool serve_command(rank_ctx_t *rc, int src, int t, uint64_t *seq)
{
    const job_t *j = &rc->job;
    int me = rc->o->rank;
    cmd_t c;
    ack_t a;

    if (!kv_has(j, "cmd/%d/%d/%d/%" PRIu64, me, src, t, *seq)) {
        return false;
    }
    kv_get_exact(j, &c, sizeof(c), "cmd/%d/%d/%d/%" PRIu64, me, src, t, *seq);
    if (c.off > rc->buf.len || c.len > rc->buf.len - c.off) {
        die("command from rank %d for bytes [%" PRIu64 ", +%" PRIu64
            ") outside the buffer", src, c.off, c.len);
    }
    /* A call on the agent orders a progress thread's copies before ours. */
    ferry_agent_progress(rc->agent);
    a.bad = pattern(&rc->buf, c.off, c.len, c.seed, 0, c.cmd == CMD_FILL);
    kv_set(j, &a, sizeof(a), "ack/%d/%d/%d/%" PRIu64, me, src, t, *seq);
    (*seq)++;
    return true;
}

void run_target(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    const topo_t *tp = &rc->topo;
    int fd = -1, ndone = 0, nthreads = o->threads;
    uint64_t *seq = xcalloc((size_t)tp->nsources * (size_t)nthreads, sizeof(*seq));
    bool *done = xcalloc((size_t)tp->nsources, sizeof(*done));
    int64_t rung = 0;
    uint64_t next_poll = 0, last_cmd = 0;

    if (o->target_mode == TARGET_FD && !o->progress_thread) {
        CHECK(ferry_agent_fd(rc->agent, &fd), "--target fd: no file descriptor");
    }
    while (ndone < tp->nsources) {
        uint64_t now = now_ns();

        if (o->target_mode == TARGET_SPIN && !o->progress_thread) {
            ferry_agent_progress(rc->agent);
        } else if (fd >= 0) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            while (ferry_agent_progress(rc->agent) == FERRY_IN_PROGRESS) {
            }
            (void)poll(&pfd, 1, 1);
        } else {
            nanosleep(&(struct timespec){.tv_nsec = (long)TARGET_POLL_BUSY_NS},
                      NULL);
        }
        if (now < next_poll) {
            continue;
        }
        next_poll = now + (now - last_cmd < TARGET_BUSY_NS ? TARGET_POLL_BUSY_NS
                                                           : TARGET_POLL_IDLE_NS);
        /* Sources ring a bell after each command and when done, so one
         * round trip tells whether there is anything to look for. */
        int64_t bell = kv_add(&rc->job, 0, "bell/%d", o->rank);
        if (bell == rung) {
            continue;
        }
        rung = bell;
        last_cmd = now;
        for (int s = 0; s < tp->nsources; s++) {
            for (int t = 0; t < nthreads; t++) {
                while (serve_command(rc, tp->sources[s], t,
                                     &seq[s * nthreads + t])) {
                }
            }
            if (!done[s] && kv_has(&rc->job, "done/%d", tp->sources[s])) {
                done[s] = true;
                ndone++;
            }
        }
    }
    free(seq);
    free(done);
}
