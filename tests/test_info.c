/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry_info_print(), from a user's side (only ferry.h): bad arguments are
 * refused before anything is written; each part prints what it says and the
 * parts of a mask come out in their fixed order, exactly as if printed one
 * by one; the configuration part shows a variable set in the environment,
 * marked, and each unset one at its default; a stream that cannot be
 * written is an error; a successful call leaves ferry_last_error() alone;
 * and two threads printing at once get the same report.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* open_memstream, setenv */
#endif
#include "ferry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                        \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                 \
        exit(1);                                                               \
    } while (0)

#define EXPECT_ST(want, expr)                                                  \
    do {                                                                       \
        ferry_status_t got_ = (expr);                                          \
        if (got_ != (want))                                                    \
            FAIL("%s: %s (%s), expected %s", #expr, ferry_status_str(got_),    \
                 ferry_last_error(), ferry_status_str(want));                  \
    } while (0)

#define EXPECT_STR(want, got)                                                  \
    do {                                                                       \
        const char *w_ = (want), *g_ = (got);                                  \
        if (strcmp(w_, g_) != 0)                                               \
            FAIL("%s is\n'%s'\nexpected\n'%s'", #got, g_, w_);                 \
    } while (0)

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond))                                                           \
            FAIL("%s is false", #cond);                                        \
    } while (0)

/* The report of the parts in what, as a string to free(); exits if the call
 * does not return `want`. */
static char *report(uint64_t what, ferry_status_t want)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (f == NULL)
        FAIL("open_memstream failed");
    EXPECT_ST(want, ferry_info_print(f, what));
    fclose(f);
    return text;
}

/* The value and the default that the configuration part shows for name. */
static void config_entry(const char *cfg, const char *name, char *value,
                         char *def, size_t cap)
{
    char head[128];
    const char *at, *d;
    size_t n;

    snprintf(head, sizeof(head), "\n  %s = ", name);
    at = strstr(cfg, head);
    if (at == NULL)
        FAIL("%s is not in the configuration part:\n%s", name, cfg);
    at += strlen(head);
    n = strcspn(at, "\n");
    snprintf(value, cap, "%.*s", (int)n, at);
    d = strstr(at, "\n      default \"");
    if (d == NULL || d > at + n + 1)
        FAIL("%s has no default line", name);
    d += strlen("\n      default \"");
    n = strcspn(d, "\"");
    snprintf(def, cap, "%.*s", (int)n, d);
}

static void test_arguments(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    EXPECT(f != NULL);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_info_print(NULL, FERRY_INFO_VERSION));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_info_print(f, 0));
    /* A bit from a newer header: refused, not silently skipped. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_info_print(f, FERRY_INFO_VERSION | 1u << 5));
    EXPECT_ST(FERRY_ERR_INVALID, ferry_info_print(f, 1ull << 63));
    fclose(f);
    EXPECT(len == 0); /* refused before writing anything */
    free(text);
}

static void test_version(void)
{
    char want[64], header[64];
    char *text = report(FERRY_INFO_VERSION, FERRY_OK);

    snprintf(header, sizeof(header), "%d.%d.%d", FERRY_VERSION_MAJOR,
             FERRY_VERSION_MINOR, FERRY_VERSION_PATCH);
    EXPECT_STR(header, ferry_version());
    snprintf(want, sizeof(want), "ferry %s\n", ferry_version());
    EXPECT_STR(want, text);
    free(text);
}

/* A mask prints its parts in the fixed order, each as it prints alone. */
static void test_parts(void)
{
    static const uint64_t parts[] = {FERRY_INFO_VERSION, FERRY_INFO_BACKENDS,
                                     FERRY_INFO_UCX, FERRY_INFO_CUDA,
                                     FERRY_INFO_CONFIG};
    static const char *const heads[] = {"ferry ", "backends:\n", "ucx:\n",
                                        "cuda:\n",
                                        "configuration (environment "
                                        "variables):\n"};
    char *all = report(FERRY_INFO_DEFAULT | FERRY_INFO_CONFIG, FERRY_OK);
    char *dflt = report(FERRY_INFO_DEFAULT, FERRY_OK);
    size_t at = 0;

    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        char *one = report(parts[i], FERRY_OK);
        size_t n = strlen(one);

        if (strncmp(one, heads[i], strlen(heads[i])) != 0)
            FAIL("part %zu starts '%.40s', expected '%s'", i, one, heads[i]);
        if (strncmp(all + at, one, n) != 0)
            FAIL("part %zu differs inside the full report:\n%s\nalone:\n%s",
                 i, all + at, one);
        at += n;
        free(one);
    }
    EXPECT(all[at] == '\0');
    /* FERRY_INFO_DEFAULT is everything but the configuration. */
    EXPECT(strncmp(all, dflt, strlen(dflt)) == 0);
    EXPECT(strncmp(all + strlen(dflt), heads[4], strlen(heads[4])) == 0);
    /* The backends part names both backends. */
    EXPECT(strstr(dflt, "\n  ucx ") != NULL);
    EXPECT(strstr(dflt, "\n  cuda_ipc ") != NULL);
    free(all);
    free(dflt);
}

static void test_config(void)
{
    char value[256], def[256], want[300];
    char *cfg;

    setenv("FERRY_WAIT_SPIN_US", "77", 1);
    unsetenv("FERRY_LOG");
    unsetenv("FERRY_STORE");
    cfg = report(FERRY_INFO_CONFIG, FERRY_OK);
    config_entry(cfg, "FERRY_WAIT_SPIN_US", value, def, sizeof(value));
    EXPECT_STR("77  (set)", value);
    EXPECT(strcmp(def, "77") != 0);
    config_entry(cfg, "FERRY_LOG", value, def, sizeof(value));
    EXPECT_STR(def, value);
    EXPECT(def[0] != '\0');
    config_entry(cfg, "FERRY_STORE", value, def, sizeof(value));
    EXPECT_STR(def, value);
    config_entry(cfg, "FERRY_LOG", value, def, sizeof(value));
    free(cfg);

    /* Set to its default, a variable is still marked as set. */
    setenv("FERRY_LOG", def, 1);
    cfg = report(FERRY_INFO_CONFIG, FERRY_OK);
    config_entry(cfg, "FERRY_LOG", value, def, sizeof(value));
    snprintf(want, sizeof(want), "%s  (set)", def);
    EXPECT_STR(want, value);
    free(cfg);
    unsetenv("FERRY_LOG");
    unsetenv("FERRY_WAIT_SPIN_US");
}

static void test_write_error(void)
{
    FILE *f = fopen("/dev/full", "w");

    if (f == NULL) {
        printf("test_info: no /dev/full, write errors not checked\n");
        return;
    }
    EXPECT_ST(FERRY_ERR_SYSTEM, ferry_info_print(f, FERRY_INFO_CONFIG));
    fclose(f);
}

/* The probes fail routinely (no CUDA driver, say); a successful call must
 * not leave their text behind as this thread's last error. */
static void test_last_error(void)
{
    char before[512];
    ferry_store_t *store = NULL;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_store_connect("not a url", NULL, &store));
    snprintf(before, sizeof(before), "%s", ferry_last_error());
    EXPECT(before[0] != '\0');
    free(report(FERRY_INFO_DEFAULT | FERRY_INFO_CONFIG, FERRY_OK));
    EXPECT_STR(before, ferry_last_error());
}

static void *print_thread(void *arg)
{
    *(char **)arg = report(FERRY_INFO_DEFAULT, FERRY_OK);
    return NULL;
}

/* "Any thread": two at once get the same report as one alone. */
static void test_threads(void)
{
    char *alone = report(FERRY_INFO_DEFAULT, FERRY_OK), *got[2] = {NULL, NULL};
    pthread_t t[2];

    for (int i = 0; i < 2; i++)
        EXPECT(pthread_create(&t[i], NULL, print_thread, &got[i]) == 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        EXPECT_STR(alone, got[i]);
        free(got[i]);
    }
    free(alone);
}

int main(void)
{
    test_arguments();
    test_version();
    test_parts();
    test_config();
    test_write_error();
    test_last_error();
    test_threads();
    printf("test_info: all checks passed\n");
    return 0;
}
