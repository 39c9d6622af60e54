/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Log level from FERRY_LOG, parsed once, and the line writer. One fprintf
 * per line keeps lines from different threads whole. The variable is read
 * here with getenv, not through the configuration table (which lists it
 * for ferry-info): the table warns through this file, and the log sits
 * below it.
 */
#include "util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char *const level_names[] = {"error", "warn", "info",
                                                 "debug", "trace"};
static ferry__log_level_t log_level = FERRY__LOG_WARN;
static pthread_once_t level_once = PTHREAD_ONCE_INIT;

static void log_init(void)
{
    const char *v = getenv("FERRY_LOG");

    if (v == NULL || *v == '\0')
        return;
    for (size_t i = 0; i < sizeof(level_names) / sizeof(*level_names); i++) {
        if (strcasecmp(v, level_names[i]) == 0) {
            log_level = (ferry__log_level_t)i;
            return;
        }
    }
    fprintf(stderr, "ferry: FERRY_LOG=%s is not a level (error, warn, info, "
                    "debug, trace); using warn\n", v);
}

ferry__log_level_t ferry__log_level(void)
{
    pthread_once(&level_once, log_init);
    return log_level;
}

void ferry__log_emit(ferry__log_level_t level, const char *file, int line,
                     const char *fmt, ...)
{
    char msg[1024];
    const char *base = strrchr(file, '/');
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry[%d] %s %s:%d: %s\n", (int)getpid(),
            level_names[level], base ? base + 1 : file, line, msg);
}
