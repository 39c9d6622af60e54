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

/*
 * A successful call must leave ferry_last_error() as it found it, even when
 * it failed and recovered on the way (a store wait that timed out one slice
 * of a collective's deadline). A public call that can do so saves the text
 * on entry and ends with ferry__error_keep(), which puts the text back when
 * the call succeeds and returns its status unchanged.
 */
typedef struct ferry__errsave {
    char text[512];
} ferry__errsave_t;

void ferry__error_save(ferry__errsave_t *save);
ferry_status_t ferry__error_keep(const ferry__errsave_t *save, ferry_status_t st);

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
