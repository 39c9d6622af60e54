/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The serving target's control protocol (target.h), private to the test
 * library: the initiator (target.c) and the target (serve.c) on one
 * socketpair, in native byte order.
 *
 *   greeting  xu_msg_t {XT_HELLO, arg = buffers, iter = blob length}, the
 *             blob, then per buffer xu_msg_t {XT_BUF, arg = kind,
 *             iter = cap, a = addr, b = registered bytes}
 *   command   xt_cmd_t; XT_LAYOUT is followed by n x {offset, length,
 *             pattern base} (3 x uint64_t), XT_NOTIF by n bytes of the
 *             initiator's metadata blob (n may be 0)
 *   reply     xu_msg_t {op, arg = 1 done / 0 refused, iter = the
 *             command's iter, a = bad ranges and gaps (XT_CHECK), or
 *             calls of ferry_agent_progress() (XT_SETTLE)}
 *
 * XT_QUIT has no reply: the exit status is the answer. XT_NOTIF with a
 * blob has two: {XT_NOTIF, arg = 2} once the blob is loaded, then the
 * usual one.
 */
#ifndef FERRY_TEST_LIB_PROTO_H
#define FERRY_TEST_LIB_PROTO_H

#include <stdint.h>

enum {
    XT_HELLO = 0x7401,
    XT_BUF,
    XT_PATTERN,
    XT_LAYOUT,
    XT_FILL,
    XT_CHECK,
    XT_DRIVE,
    XT_QUIT,
    XT_NOTIF,
    XT_SETTLE
};

typedef struct xt_cmd {
    uint32_t op;
    uint32_t buf;      /* which buffer */
    uint64_t iter;     /* data pattern (XT_DRIVE: on or off; XT_NOTIF:
                          messages to serve; XT_SETTLE: the limit in ms) */
    uint64_t guard;    /* guard pattern (XT_CHECK); XT_NOTIF: XT_NOTIF_*;
                          XT_SETTLE: 1 to take ferry_agent_fd() first */
    uint64_t lo, hi;   /* the span, or XT_LAYOUT's window */
    uint64_t n;        /* XT_LAYOUT: ranges that follow */
    char what[96];     /* XT_CHECK: names the check in reports */
} xt_cmd_t;

#endif
