/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers shared by the transfer tests, compiled once into the test library
 * (tests/lib/, linked by every test): time and CPU time, seeds and knobs
 * from the environment, random descriptor layouts that both processes of a
 * multi-process test can recompute from a seed, the check that a
 * destination buffer holds exactly the data the descriptors put there and
 * the guard pattern everywhere else, and the plumbing for a second process
 * (fork + exec, a socketpair for control messages, reaping with a
 * deadline), written so that a hung or dead peer fails the test instead of
 * hanging it. The serving target that most tests start is in target.h.
 */
#ifndef FERRY_TEST_XFER_UTIL_H
#define FERRY_TEST_XFER_UTIL_H

#include "test.h"

#include <errno.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Iteration numbers at or above this one mark guard bytes; data iterations
 * stay below it, so a guard byte never equals the data pattern by design
 * (only by a 1-in-256 chance per byte, which a run of bytes defeats). */
#define XU_GUARD_ITER 0xF000000000000000ull

/* Blobs larger than this are taken for a corrupt length, not received. */
#define XU_MAX_BLOB (64u << 20)

/* ------------------------------------------------------------------------ */
/* Time, environment, memory                                                */
/* ------------------------------------------------------------------------ */

/* CLOCK_MONOTONIC in nanoseconds and in seconds. */
uint64_t xu_now_ns(void);
double xu_now_s(void);

/* Milliseconds since t0 (an xu_now_ns() value). */
double xu_ms_since(uint64_t t0);

/* The calling thread's CPU time (user + system), in seconds. */
double xu_thread_cpu_s(void);

/* The test's seed: FERRY_TEST_SEED (decimal or 0x hex) or dflt, so that a
 * failure seen once can be replayed exactly. */
uint64_t xu_seed(uint64_t dflt);

/* The integer in environment variable name, or dflt when it is unset. */
long xu_env_long(const char *name, long dflt);

/* calloc() that ends the process (exit 1) when memory runs out. */
void *xu_xcalloc(size_t n, size_t size);

/* len bytes, page-aligned so that the buffer's own alignment is not what
 * the random offsets test (the offsets themselves are byte-granular); ends
 * the process on failure. free() it. */
uint8_t *xu_alloc_buf(size_t len);

/* Posts x and, if it is under way, waits for it up to timeout_ns; returns
 * the outcome (FERRY_ERR_TIMEOUT if it is still in flight). */
ferry_status_t xu_post_wait(ferry_xfer_t *x, int64_t timeout_ns);

/* ------------------------------------------------------------------------ */
/* Layouts                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Places m ranges (lengths len[idx[k]] for k < m) at random, non-overlapping
 * offsets inside one buffer of cap bytes, writing off[idx[k]]. The ranges
 * fill a window of the buffer (their total plus slack spread over the gaps)
 * at a random position; the gaps are random, mostly at least one byte so a
 * guard byte separates neighbours, sometimes zero so adjacent descriptors
 * are covered too. The address order is a random permutation of the
 * descriptor order (written to order[0..m) when order is not NULL), because
 * a library that silently relied on sorted descriptors would otherwise pass.
 * *lo_p and *hi_p get the window. Returns 0, or -1 if the ranges cannot fit.
 */
int xu_place(test_rng_t *rng, const uint64_t *len, const size_t *idx, size_t m,
             uint64_t cap, uint64_t *off, size_t *order, uint64_t *lo_p, uint64_t *hi_p);

/*
 * One side's view of where a request's data lives: for descriptor i,
 * off[i] within the buffer; order lists descriptors by address, for walking
 * the gaps between them.
 */
typedef struct xu_side {
    uint64_t *off;
    size_t *order;
    uint64_t lo, hi; /* the window the ranges occupy */
} xu_side_t;

/*
 * A request's layout: lengths, and each descriptor's pattern base (stream
 * offset: the sum of the lengths before it), so that data that lands in the
 * wrong descriptor, or at the wrong place inside one, mismatches.
 */
typedef struct xu_layout {
    size_t n;
    uint64_t *len;
    uint64_t *stream;
    uint64_t total;
    xu_side_t local, remote;
} xu_layout_t;

/* Room for n descriptors on one side (offsets and order zeroed). */
void xu_side_alloc(xu_side_t *s, size_t n);

/* Frees what a layout holds and zeroes it; a zeroed layout is fine. */
void xu_layout_free(xu_layout_t *l);

/*
 * Builds a layout of n descriptors with lengths uniform in [1, max_len]
 * (and, for n >= 3, one of exactly 1 byte and one of exactly max_len, so the
 * edges are always covered), placed in a local buffer of local_cap bytes
 * and a remote one of remote_cap bytes. Deterministic in (rng state), so a
 * peer that seeds the same generator computes the same layout. Returns 0,
 * or -1 (nothing allocated) if the ranges do not fit.
 */
int xu_layout_make(xu_layout_t *l, test_rng_t *rng, size_t n, uint64_t max_len,
                   uint64_t local_cap, uint64_t remote_cap);

/* A digest of a layout, so two processes can confirm they computed the
 * same one before a mismatch in it is blamed on the library. */
uint64_t xu_layout_hash(const xu_layout_t *l);

/* Fills the ranges of one side with the data pattern of iteration iter. */
void xu_fill_ranges(uint8_t *buf, const xu_layout_t *l, const xu_side_t *s,
                    uint64_t seed, uint64_t iter);

/* Fills [lo, hi) with the guard pattern guard_iter. Guard bytes depend on
 * the buffer offset only (and on which case set them), so any stray write
 * anywhere shows. */
void xu_fill_guard(uint8_t *buf, uint64_t lo, uint64_t hi, uint64_t seed,
                   uint64_t guard_iter);

/*
 * Checks the part [lo, hi) of a destination buffer: each descriptor's range
 * must hold the pattern of iteration iter, every byte between and around
 * the ranges the guard pattern (a layout of no descriptors checks that all
 * of [lo, hi) holds the guard). The ranges must lie inside [lo, hi).
 * Mismatches are printed after what (which names the case and the
 * iteration) with the descriptor index and the byte offset (at most a few,
 * then a count). Returns the number of bad ranges or gaps (0 when all is
 * well).
 */
size_t xu_check_dest(const uint8_t *buf, const xu_layout_t *l, const xu_side_t *s,
                     uint64_t lo, uint64_t hi, uint64_t seed, uint64_t iter,
                     uint64_t guard_iter, const char *what);

/* ------------------------------------------------------------------------ */
/* A second process and its control socket                                  */
/* ------------------------------------------------------------------------ */

/* Every control message has this fixed form; blobs follow a message that
 * gives their length. */
typedef struct xu_msg {
    uint32_t type;
    uint32_t arg; /* case index, verdict, ... */
    uint64_t iter;
    uint64_t a, b;
} xu_msg_t;

/*
 * Starts the program at path as a separate process with argv
 * {argv0, role, "<fd>", args[0], ..., NULL} (args NULL-terminated, or NULL):
 * fork, then exec, so the child starts UCX in a fresh image instead of
 * inheriting the parent's. The child's environment is this one, with
 * FERRY_TEST_DEVICE set to FERRY_TEST_TARGET_DEVICE when that is set (see
 * mem_util.h). The child dies with its parent (PR_SET_PDEATHSIG), so a
 * killed test leaves no orphan behind. Returns the parent's end of the
 * socketpair (the child's pid in *pid_p), or -1.
 */
int xu_spawn_argv(const char *path, const char *argv0, const char *role,
                  char *const *args, pid_t *pid_p);

/* The same for this very binary (/proc/self/exe), with up to two extra
 * arguments (NULL ends them early). */
int xu_spawn(const char *argv0, const char *role, const char *extra1,
             const char *extra2, pid_t *pid_p);

/* Sends len bytes; 0, or -1 on error (printed). */
int xu_send(int fd, const void *p, size_t len);

/* Sends one control message. */
int xu_send_msg(int fd, uint32_t type, uint32_t arg, uint64_t iter, uint64_t a,
                uint64_t b);

/*
 * Receives exactly len bytes within timeout_ms. While it waits it keeps
 * driving agent (when not NULL), because a target that only waited on its
 * socket would starve a transport that needs the target's help for the
 * peer's one-sided operations (UCX 1.13 emulates RMA over active messages
 * on shared memory and TCP). Returns 0, or -1 on timeout, EOF or
 * error (printed).
 */
int xu_recv(int fd, void *p, size_t len, int timeout_ms, ferry_agent_t *agent);

/* Sends (out) or receives exactly n bytes, ending the process (exit 2) on
 * failure or after timeout_ms without them: for control messages whose loss
 * leaves nothing sensible to do. */
void xu_io(int fd, void *p, size_t n, int out, int timeout_ms);

/* Receives one message and checks its type (0: any); prints what came
 * instead. */
int xu_recv_msg(int fd, xu_msg_t *m, uint32_t want_type, int timeout_ms,
                ferry_agent_t *agent);

/*
 * A greeting: a message of the given type whose iter is the length of
 * agent's metadata blob (arg, a and b are the caller's: typically its
 * buffer's address and size), then the blob. Returns 0, or -1 if the socket
 * failed (printed).
 */
int xu_send_blob(int fd, ferry_agent_t *agent, uint32_t type, uint32_t arg, uint64_t a,
                 uint64_t b);

/*
 * The other side of xu_send_blob(): the message goes to *m and the blob
 * (m->iter bytes) is returned, for the caller to load and free(). NULL (and
 * the reason printed) if either does not come within timeout_ms each, the
 * type is wrong, or the length is 0 or over XU_MAX_BLOB.
 */
void *xu_recv_blob(int fd, xu_msg_t *m, uint32_t type, int timeout_ms);

/* Stops a child (SIGSTOP) and returns once it has stopped: signals arrive
 * asynchronously, and a test that goes on before would race the child. */
void xu_stop_child(pid_t pid);

/* Resumes a stopped child (SIGCONT) and returns once it runs again. */
void xu_cont_child(pid_t pid);

/*
 * Waits up to timeout_ms for a child to exit; kills it (SIGKILL) if it does
 * not, so no test leaves a process behind. Returns the wait status, or -1.
 */
int xu_reap(pid_t pid, int timeout_ms);

#endif
