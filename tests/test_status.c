/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Status codes as a user depends on them: the published codes keep their
 * numbers (written out here by hand, from the documented list, not taken
 * from the X-macro that defines them), new codes are only appended, every
 * code has its own non-empty text, any other value gets a text that says
 * it is unknown, and the detail text of a failure belongs to the thread
 * that failed, survives other threads' failures, and is cut, never
 * overrun, when it is long. Also: the library's version string is the
 * header's version.
 */
#include "test.h"
#include "util/status.h"

#include <limits.h>
#include <pthread.h>

/* The published codes, in the order of ferry.h. A new code goes after the
 * last; none of these may change. */
static const struct {
    ferry_status_t st;
    int value;
    const char *name;
} published[] = {
    {FERRY_OK, 0, "OK"},
    {FERRY_IN_PROGRESS, 1, "IN_PROGRESS"},
    {FERRY_ERR_INVALID, -1, "ERR_INVALID"},
    {FERRY_ERR_NO_MEMORY, -2, "ERR_NO_MEMORY"},
    {FERRY_ERR_NOT_FOUND, -3, "ERR_NOT_FOUND"},
    {FERRY_ERR_NOT_REGISTERED, -4, "ERR_NOT_REGISTERED"},
    {FERRY_ERR_OUT_OF_RANGE, -5, "ERR_OUT_OF_RANGE"},
    {FERRY_ERR_MISMATCH, -6, "ERR_MISMATCH"},
    {FERRY_ERR_UNSUPPORTED, -7, "ERR_UNSUPPORTED"},
    {FERRY_ERR_BUSY, -8, "ERR_BUSY"},
    {FERRY_ERR_TIMEOUT, -9, "ERR_TIMEOUT"},
    {FERRY_ERR_CANCELED, -10, "ERR_CANCELED"},
    {FERRY_ERR_PEER_LOST, -11, "ERR_PEER_LOST"},
    {FERRY_ERR_ABORTED, -12, "ERR_ABORTED"},
    {FERRY_ERR_PROTOCOL, -13, "ERR_PROTOCOL"},
    {FERRY_ERR_BACKEND, -14, "ERR_BACKEND"},
    {FERRY_ERR_SYSTEM, -15, "ERR_SYSTEM"},
};
#define NPUB (sizeof(published) / sizeof(published[0]))

/* Every code the header defines now, with its text. */
static const struct {
    int value;
    const char *name, *text;
} rows[] = {
#define ROW_(name, value, text) {value, #name, text},
    FERRY_STATUS_MAP(ROW_)
#undef ROW_
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static int is_code(long v)
{
    for (size_t i = 0; i < NROWS; i++)
        if (rows[i].value == v)
            return 1;
    return 0;
}

static void codes_are_stable(void)
{
    /* Each published enumerator has its documented number. */
    for (size_t i = 0; i < NPUB; i++)
        if ((int)published[i].st != published[i].value)
            TEST_FAIL_AT_("FERRY_%s is %d; it was published as %d", published[i].name,
                          (int)published[i].st, published[i].value);
    /* The header's list starts with the published codes, in order, and
     * whatever follows them is new: appended, never inserted. */
    EXPECT_TRUE(NROWS >= NPUB);
    for (size_t i = 0; i < NPUB && i < NROWS; i++)
        if (strcmp(rows[i].name, published[i].name) != 0 ||
            rows[i].value != published[i].value)
            TEST_FAIL_AT_("row %zu of FERRY_STATUS_MAP is %s = %d, where %s = %d was "
                          "published", i, rows[i].name, rows[i].value, published[i].name,
                          published[i].value);
    /* No two codes share a value (an appended one must not reuse one). */
    for (size_t i = 0; i < NROWS; i++)
        for (size_t j = 0; j < i; j++)
            if (rows[i].value == rows[j].value)
                TEST_FAIL_AT_("FERRY_%s and FERRY_%s are both %d", rows[i].name,
                              rows[j].name, rows[i].value);
}

static void texts(void)
{
    for (size_t i = 0; i < NROWS; i++) {
        const char *s = ferry_status_str((ferry_status_t)rows[i].value);

        if (s == NULL || s[0] == '\0' || strstr(s, "unknown") != NULL) {
            TEST_FAIL_AT_("FERRY_%s (%d): text '%s'", rows[i].name, rows[i].value,
                          s ? s : "(null)");
            continue;
        }
        /* The text is the one the header documents for that code. */
        if (strcmp(s, rows[i].text) != 0)
            TEST_FAIL_AT_("FERRY_%s: ferry_status_str says '%s', ferry.h '%s'",
                          rows[i].name, s, rows[i].text);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s, ferry_status_str((ferry_status_t)rows[j].value)) == 0)
                TEST_FAIL_AT_("FERRY_%s and FERRY_%s share the text '%s'", rows[i].name,
                              rows[j].name, s);
    }
    /* Anything else, near the codes or far from them, is unknown, never
     * NULL: callers print it straight away. */
    for (long v = -200; v <= 200; v++) {
        const char *s;

        if (is_code(v))
            continue;
        s = ferry_status_str((ferry_status_t)v);
        if (s == NULL || strstr(s, "unknown") == NULL)
            TEST_FAIL_AT_("ferry_status_str(%ld) is '%s', not an unknown status", v,
                          s ? s : "(null)");
    }
    EXPECT_TRUE(strstr(ferry_status_str((ferry_status_t)INT_MIN), "unknown") != NULL);
    EXPECT_TRUE(strstr(ferry_status_str((ferry_status_t)INT_MAX), "unknown") != NULL);
}

/* Threads that fail over and over, each with its own text, at once: each
 * must read back its own, every time. */
#define RACERS 8
#define RACES 20000

static void *racer(void *arg)
{
    int id = (int)(intptr_t)arg;
    char want[64];

    /* A fresh thread has seen no failure. */
    if (strcmp(ferry_last_error(), "") != 0)
        TEST_FAIL_AT_("thread %d starts with the detail '%s'", id, ferry_last_error());
    for (int i = 0; i < RACES; i++) {
        snprintf(want, sizeof(want), "thread %d failure %d", id, i);
        if (ferry__error(FERRY_ERR_TIMEOUT, "thread %d failure %d", id, i) !=
            FERRY_ERR_TIMEOUT)
            TEST_FAIL_AT_("ferry__error did not return its status");
        if (strcmp(ferry_last_error(), want) != 0) {
            TEST_FAIL_AT_("thread %d reads '%s', wrote '%s'", id, ferry_last_error(), want);
            break;
        }
    }
    return NULL;
}

static void per_thread_detail(void)
{
    pthread_t t[RACERS];

    EXPECT_ST(FERRY_ERR_BUSY, ferry__error(FERRY_ERR_BUSY, "main detail %d", 7));
    for (intptr_t i = 0; i < RACERS; i++)
        EXPECT_EQ(0, pthread_create(&t[i], NULL, racer, (void *)i));
    for (int i = 0; i < RACERS; i++)
        EXPECT_EQ(0, pthread_join(t[i], NULL));
    EXPECT_TRUE(strcmp(ferry_last_error(), "main detail 7") == 0);
    ferry__error_prefix("outer %s", "ctx");
    EXPECT_TRUE(strcmp(ferry_last_error(), "outer ctx: main detail 7") == 0);

    /* A public call that fails records why, naming the argument. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_create(NULL, NULL));
    EXPECT_ERR_HAS("agent_p");
}

/* A detail longer than the library keeps is cut to a prefix and stays a
 * string; a prefix added to it keeps the start of both. */
static void long_detail(void)
{
    static char big[8192];
    size_t n;

    memset(big, 'x', sizeof(big) - 1);
    memcpy(big, "start", 5);
    ferry__error(FERRY_ERR_SYSTEM, "%s", big);
    n = strlen(ferry_last_error());
    EXPECT_TRUE(n > 100 && n < sizeof(big) - 1);
    EXPECT_TRUE(strncmp(ferry_last_error(), big, n) == 0);
    ferry__error_prefix("ctx");
    EXPECT_TRUE(strncmp(ferry_last_error(), "ctx: start", 10) == 0);
    EXPECT_TRUE(strlen(ferry_last_error()) <= n + 5);
    ferry__error_prefix("%s", big); /* longer than the text can be */
    EXPECT_TRUE(strlen(ferry_last_error()) <= n + 5);
}

int main(void)
{
    char version[32];

    codes_are_stable();
    texts();
    per_thread_detail();
    long_detail();
    /* The library a program runs with reports the version its header has. */
    snprintf(version, sizeof(version), "%d.%d.%d", FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR,
             FERRY_VERSION_PATCH);
    if (strcmp(ferry_version(), version) != 0)
        TEST_FAIL_AT_("ferry_version() is '%s', the header says %s", ferry_version(),
                      version);
    return test_finish("test_status");
}
