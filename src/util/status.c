/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Status strings from the X-macro in ferry.h, and the per-thread detail
 * text behind ferry_last_error().
 */
#include "util/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define FERRY__ERRLEN 512

static _Thread_local char errbuf[FERRY__ERRLEN];

const char *ferry_status_str(ferry_status_t status)
{
    switch (status) {
#define FERRY_STATUS_CASE_(name, value, text)                                  \
    case FERRY_##name:                                                         \
        return text;
        FERRY_STATUS_MAP(FERRY_STATUS_CASE_)
#undef FERRY_STATUS_CASE_
    }
    return "unknown status";
}

const char *ferry_last_error(void)
{
    return errbuf;
}

const char *ferry_version(void)
{
    return FERRY_VERSION_STRING;
}

ferry_status_t ferry__error(ferry_status_t status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    return status;
}

void ferry__error_save(ferry__errsave_t *save)
{
    _Static_assert(sizeof(save->text) == FERRY__ERRLEN, "the saved text fits");
    memcpy(save->text, errbuf, sizeof(save->text));
}

ferry_status_t ferry__error_keep(const ferry__errsave_t *save, ferry_status_t st)
{
    if (st >= 0)
        memcpy(errbuf, save->text, sizeof(errbuf));
    return st;
}

void ferry__error_prefix(const char *fmt, ...)
{
    char old[FERRY__ERRLEN];
    va_list ap;
    int n;

    memcpy(old, errbuf, sizeof(old));
    va_start(ap, fmt);
    n = vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(errbuf) - 2)
        return;
    errbuf[n] = ':';
    errbuf[n + 1] = ' ';
    memcpy(errbuf + n + 2, old, sizeof(errbuf) - (size_t)n - 2);
    errbuf[sizeof(errbuf) - 1] = '\0';
}
