/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The serving target: the one peer process that the multi-process tests
 * start (the test_target program, tests/lib/serve.c), instead of a target
 * main of their own. It creates an agent (named, with or without a progress
 * thread), allocates and registers up to XT_MAX_BUF buffers of any memory
 * kind (host, pinned, cuda, vmm; host memory optionally from
 * ferry_mem_alloc, optionally registered only in part), sends its metadata
 * blob and each buffer's address, then serves commands on its control
 * socket until told to quit, stopped, or killed:
 *
 *   pattern   fill a span of a buffer with a pattern at buffer offsets (the
 *             guard pattern of the checks, or a READ's source bytes)
 *   layout    take a list of ranges (offset, length, pattern base) and the
 *             window they occupy: where the next fills and checks go
 *   fill      fill the ranges with the data pattern of an iteration
 *   check     the span holds the data pattern in the ranges and the guard
 *             pattern everywhere else; reply with the count of bad ranges
 *             and gaps (details on the target's stderr, which is the
 *             test's)
 *   drive     drive the agent while waiting for commands, or stop doing so
 *   settle    call ferry_agent_progress() until it returns FERRY_OK, as an
 *             event loop does before it sleeps, within a limit; reply with
 *             the number of calls
 *   notif     serve a number of notifications (xt_note_t) as they arrive:
 *             check a WRITE's range against the sum its message names at
 *             once, refill a READ's range, acknowledge each one to the
 *             initiator; reply with the count of bad ones
 *   quit      deregister, free, exit 0 if everything worked
 *
 * Patterns are test_pattern()'s with the seed the target was started with,
 * so the initiator fills and checks its own side with the same functions.
 * Every command is answered, within the target's deadline; a target that
 * drives its agent keeps doing so while it waits, for transports whose
 * one-sided operations need the target's help. GPU buffers are filled and
 * checked through their host shadows (mem_util.h), on FERRY_TEST_DEVICE of
 * the target, which xu_spawn_argv() sets from FERRY_TEST_TARGET_DEVICE.
 */
#ifndef FERRY_TEST_TARGET_H
#define FERRY_TEST_TARGET_H

#include "mem_util.h"
#include "xfer_util.h"

#define XT_MAX_BUF 4

/* One buffer the target allocates and registers. */
typedef struct xt_buf_opts {
    xm_kind_t kind;
    uint64_t cap;    /* bytes allocated (zeroed) */
    uint64_t reg;    /* bytes registered from the start; 0: all of cap */
    int ferry_alloc; /* host memory from ferry_mem_alloc() */
} xt_buf_opts_t;

typedef struct xt_opts {
    const char *name;    /* the agent's name; NULL: "target" */
    int progress_thread; /* the agent has a progress thread */
    int drive;           /* drive the agent while waiting for a command */
    uint64_t seed;       /* of every pattern the target fills or checks */
    unsigned nbuf;
    xt_buf_opts_t buf[XT_MAX_BUF];
} xt_opts_t;

/* A buffer as the target reports it. */
typedef struct xt_buf {
    xm_kind_t kind;
    uint64_t addr; /* in the target's address space */
    uint64_t cap, reg;
} xt_buf_t;

typedef struct xt_target {
    pid_t pid;      /* 0 once reaped */
    int fd;         /* the control socket; -1 once closed */
    int timeout_ms; /* for each reply (xt_start() sets 60 s) */
    unsigned nbuf;
    xt_buf_t buf[XT_MAX_BUF];
    void *blob; /* the target's metadata, kept for xt_load() */
    size_t blob_len;
} xt_target_t;

/* Starts a target with the options (before this process touches UCX, so
 * that the child does not inherit it half set up). Returns 0, or -1
 * (printed). */
int xt_start(xt_target_t *t, const xt_opts_t *o);

/* Receives the target's greeting: its blob, loaded into agent (the peer in
 * *peer_p), and its buffers (t->buf). Returns 0, or -1 (printed, and a
 * failed check if the blob did not load). */
int xt_connect(xt_target_t *t, ferry_agent_t *agent, ferry_peer_t **peer_p);

/* Loads the target's blob into one more agent (after xt_connect()). */
int xt_load(xt_target_t *t, ferry_agent_t *agent, ferry_peer_t **peer_p);

/* Fills [lo, hi) of buffer buf with pattern iter at buffer offsets (the
 * same bytes xu_fill_guard() writes). Returns 0, or -1 (printed). */
int xt_pattern(xt_target_t *t, unsigned buf, uint64_t lo, uint64_t hi, uint64_t iter);

/* Gives the target the ranges of side s of layout l (its side: usually
 * l->remote) in buffer buf, for xt_fill() and xt_check(). */
int xt_layout(xt_target_t *t, unsigned buf, const xu_layout_t *l, const xu_side_t *s);

/* The same for one range of len bytes at off whose pattern starts at
 * stream offset base (test_fill(p, len, seed, iter, base) fills it). */
int xt_range(xt_target_t *t, unsigned buf, uint64_t off, uint64_t len, uint64_t base);

/* Fills the ranges last given with the data pattern of iteration iter. */
int xt_fill(xt_target_t *t, unsigned buf, uint64_t iter);

/*
 * Checks [lo, hi) of buffer buf: the ranges last given (none: an empty
 * list) hold pattern iter, every other byte pattern guard (as
 * xu_check_dest()), what naming the check in the target's report. Returns
 * the number of bad ranges and gaps, or -1 if the target did not answer.
 */
long xt_check(xt_target_t *t, unsigned buf, uint64_t lo, uint64_t hi, uint64_t iter,
              uint64_t guard, const char *what);

/* The target drives its agent while it waits (on), or stops doing so. */
int xt_drive(xt_target_t *t, int on);

/*
 * The target calls ferry_agent_progress() until it returns FERRY_OK, for at
 * most limit_ms; with fd, it first takes ferry_agent_fd(), after which each
 * progress that finds nothing to do arms the transports (an event loop's
 * way). Returns the number of calls, or -1 if the last one still returned
 * FERRY_IN_PROGRESS (the target prints how many it made, and counts a
 * failure).
 */
long xt_settle(xt_target_t *t, int limit_ms, int fd);

/* ------------------------------------------------------------------------ */
/* Notifications                                                            */
/* ------------------------------------------------------------------------ */

/* What an initiator's notification tells the serving target. */
enum {
    XT_NOTE_WRITE = 1, /* the range holds bytes whose xt_sum() is sum */
    XT_NOTE_READ,      /* the range was read: refill it (xt_note_refill) */
    XT_NOTE_PLAIN      /* a stand-alone message: with len 1, its sum must be
                        * xt_note_plain_sum() (its contents are checked) */
};

typedef struct xt_note {
    uint32_t op;  /* XT_NOTE_* */
    uint32_t pad;
    uint64_t seq; /* each message one more than the last, within a serve */
    uint64_t off, len; /* a range of the buffer served */
    uint64_t sum;
} xt_note_t;

/* Flags of xt_notif_begin(). */
enum {
    XT_NOTIF_ACK = 1u << 0,     /* answer each message with its seq (8 bytes) */
    XT_NOTIF_UNKNOWN = 1u << 1  /* the sender is one the target did not load */
};

/* FNV-1a over n bytes: the sum a WRITE's message names. */
static inline uint64_t xt_sum(const uint8_t *p, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;

    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* The sum of a stand-alone message that asks for a check (len 1): one
 * that depends on its seq and off, which the sender sets as it likes. */
static inline uint64_t xt_note_plain_sum(uint64_t seq, uint64_t off)
{
    uint64_t v[2] = {seq, off};

    return xt_sum((const uint8_t *)v, sizeof(v));
}

/* Stand-alone message seq whose contents the target checks: word (any
 * value, random say) and the sum of both. */
static inline xt_note_t xt_note_plain(uint64_t seq, uint64_t word)
{
    xt_note_t n = {.op = XT_NOTE_PLAIN, .seq = seq, .off = word, .len = 1};

    n.sum = xt_note_plain_sum(seq, word);
    return n;
}

/* What the target writes into a READ's range after its message seq: the
 * guard pattern of iteration seq + 1 at buffer offsets (xu_fill_guard),
 * which the initiator can compute too. */
#define XT_NOTE_REFILL_ITER(seq) ((seq) + 1)

/*
 * Starts the target serving count notifications on buffer buf, with the
 * flags XT_NOTIF_*; blob (len bytes, or NULL) is the initiator's metadata,
 * which the target loads to acknowledge and to check the sender. Returns
 * once the target has loaded it: the target answers when it has served
 * them (xt_notif_end).
 * Returns 0, or -1 (printed).
 */
int xt_notif_begin(xt_target_t *t, unsigned buf, uint64_t count, unsigned flags,
                   const void *blob, size_t len);

/* Waits up to 20 s for the target's acknowledgement of message seq (with
 * XT_NOTIF_ACK) on agent; 0, or -1 (a failed check). */
int xt_notif_ack(ferry_agent_t *agent, uint64_t seq);

/* Waits for the answer to xt_notif_begin(), driving agent (if not NULL)
 * meanwhile, so that messages UCX queued leave: the number of bad messages
 * (a WRITE's range that did not match its sum when the message arrived, a
 * message out of order, from the wrong sender or malformed), or -1. */
long xt_notif_end(xt_target_t *t, ferry_agent_t *agent);

/* ------------------------------------------------------------------------ */
/* A live peer beside a stalled one                                         */
/* ------------------------------------------------------------------------ */

/* A live peer: a serving target whose host buffer 0 one thread keeps
 * writing to, and what it should hold. */
typedef struct xt_live {
    xt_target_t t;        /* started by the test (xt_start) */
    ferry_agent_t *agent; /* the writer's */
    ferry_peer_t *peer;   /* t, on agent */
    ferry_mem_t *mem;     /* lb's registration */
    uint8_t *lb;          /* the source, as long as buffer 0 */
    uint8_t *shadow;      /* what buffer 0 should hold */
    test_rng_t rng;       /* the writes' lengths, places and bytes */
} xt_live_t;

/* Connects agent to the started target l->t, allocates and registers lb
 * and a zeroed shadow (the target zeroes its buffers): 0, or -1. */
int xt_live_attach(xt_live_t *l, ferry_agent_t *agent);

/*
 * For window_ns, random WRITEs of 1 B to 16 KiB of random bytes from random
 * places of lb to random places of the target's buffer 0, each prepared,
 * posted, waited for and released, and mirrored into shadow. Returns the
 * longest of them in ms; *count: how many. A failure is a failed assertion.
 */
double xt_live_window(xt_live_t *l, uint64_t window_ns, int *count);

/* The live writer's longest WRITE (ms) and count: alone, then beside. */
typedef struct xt_live_windows {
    double ref, during;
    int nref, nduring;
} xt_live_windows_t;

/* A reference window of window_ns; then the process stopped is stopped
 * (SIGSTOP) and fn(arg) runs on a thread of its own during a second
 * window, joined before it returns. */
void xt_live_beside(xt_live_t *l, pid_t stopped, void *(*fn)(void *), void *arg,
                    uint64_t window_ns, xt_live_windows_t *w);

/* Reads the target's buffer 0 back (through a registration of its own)
 * and compares every byte with shadow, then quits the target and frees
 * lb and shadow: 0, or -1 (a failed check, naming the first wrong byte,
 * or a target that did not exit cleanly). */
int xt_live_end(xt_live_t *l);

/* Tells the target to quit and reaps it; closes the socket. Returns 0 if
 * it exited with 0, else -1 (printed). */
int xt_quit(xt_target_t *t);

/* Kills the target (SIGKILL), reaps it and closes the socket; returns the
 * wait status. Safe in any state, and again. */
int xt_kill(xt_target_t *t);

/* A watchdog for a test with one target: after seconds, the target is
 * killed and this process exits with 1 (a hang fails, leaving nothing
 * behind). */
void xt_watchdog(xt_target_t *t, unsigned seconds);

#endif
