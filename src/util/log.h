/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Logging to stderr with a process-wide level read once from FERRY_LOG
 * (error, warn, info, debug, trace; default warn).
 */
#ifndef FERRY_UTIL_LOG_H
#define FERRY_UTIL_LOG_H

#include "util/status.h"

typedef enum ferry__log_level {
    FERRY__LOG_ERROR = 0,
    FERRY__LOG_WARN,
    FERRY__LOG_INFO,
    FERRY__LOG_DEBUG,
    FERRY__LOG_TRACE
} ferry__log_level_t;

ferry__log_level_t ferry__log_level(void);
void ferry__log_emit(ferry__log_level_t level, const char *file, int line,
                     const char *fmt, ...) FERRY__PRINTF(4, 5);

#define ferry__log(level, ...)                                                \
    do {                                                                      \
        if ((level) <= ferry__log_level())                                    \
            ferry__log_emit((level), __FILE__, __LINE__, __VA_ARGS__);        \
    } while (0)

#define ferry__warn(...) ferry__log(FERRY__LOG_WARN, __VA_ARGS__)
#define ferry__info(...) ferry__log(FERRY__LOG_INFO, __VA_ARGS__)
#define ferry__debug(...) ferry__log(FERRY__LOG_DEBUG, __VA_ARGS__)

#endif
