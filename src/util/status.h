/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Status plumbing shared by every layer: the thread's detail text of its
 * last failure, and the macros that propagate a failing status without
 * overwriting the detail recorded by the function that first saw it.
 */
#ifndef FERRY_UTIL_STATUS_H
#define FERRY_UTIL_STATUS_H

#include "ferry.h"

#if defined(__GNUC__)
#define FERRY__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FERRY__PRINTF(a, b)
#endif

/*
 * Records the detail text of a failure for ferry_last_error() and returns
 * status, so a failing path reads `return ferry__error(ERR, "...")`.
 */
ferry_status_t ferry__error(ferry_status_t status, const char *fmt, ...)
    FERRY__PRINTF(2, 3);

/* Prefixes the current detail text with more context ("prepare: ..."). */
void ferry__error_prefix(const char *fmt, ...) FERRY__PRINTF(1, 2);

/* Propagate a failure (negative status) to the caller. */
#define FERRY_CHECK(expr)                                                     \
    do {                                                                      \
        ferry_status_t ferry__st_ = (expr);                                   \
        if (ferry__st_ < 0)                                                   \
            return ferry__st_;                                                \
    } while (0)

/* Store a failure in st and jump to a cleanup label. */
#define FERRY_CHECK_GOTO(expr, st, label)                                     \
    do {                                                                      \
        (st) = (expr);                                                        \
        if ((st) < 0)                                                         \
            goto label;                                                       \
    } while (0)

#endif
