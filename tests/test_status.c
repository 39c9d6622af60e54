/*
 * Status codes: every code has its own non-empty text, unknown values get a
 * text too, the values are the published ones, and the detail text of a
 * failure is per thread.
 */
#include "test.h"
#include "util/status.h"

#include <pthread.h>

static void *other_thread(void *arg)
{
    (void)arg;
    /* A fresh thread has seen no failure. */
    EXPECT_TRUE(strcmp(ferry_last_error(), "") == 0);
    ferry__error(FERRY_ERR_TIMEOUT, "thread detail");
    EXPECT_TRUE(strcmp(ferry_last_error(), "thread detail") == 0);
    return NULL;
}

int main(void)
{
    static const struct {
        ferry_status_t st;
        int value;
        const char *name;
    } codes[] = {
#define ROW_(name, value, text) {FERRY_##name, value, #name},
        FERRY_STATUS_MAP(ROW_)
#undef ROW_
    };
    size_t n = sizeof(codes) / sizeof(codes[0]);
    pthread_t t;

    /* The published values: appended to only, never renumbered. */
    EXPECT_EQ(0, FERRY_OK);
    EXPECT_EQ(1, FERRY_IN_PROGRESS);
    EXPECT_EQ(-1, FERRY_ERR_INVALID);
    EXPECT_EQ(-8, FERRY_ERR_BUSY);
    EXPECT_EQ(-11, FERRY_ERR_PEER_LOST);
    EXPECT_EQ(-13, FERRY_ERR_PROTOCOL);
    EXPECT_EQ(-15, FERRY_ERR_SYSTEM);
    EXPECT_EQ(17, n);

    for (size_t i = 0; i < n; i++) {
        const char *s = ferry_status_str(codes[i].st);

        EXPECT_EQ(codes[i].value, codes[i].st);
        EXPECT_TRUE(s != NULL && s[0] != '\0');
        EXPECT_TRUE(strcmp(s, "unknown status") != 0);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s, ferry_status_str(codes[j].st)) == 0)
                TEST_FAIL_AT_("%s and %s share the text '%s'", codes[i].name,
                              codes[j].name, s);
    }
    EXPECT_TRUE(strcmp(ferry_status_str((ferry_status_t)-9999), "unknown status") == 0);
    EXPECT_TRUE(strcmp(ferry_status_str((ferry_status_t)42), "unknown status") == 0);
    EXPECT_TRUE(strcmp(ferry_version(), "") != 0);

    /* The detail text is per thread and survives the other thread's errors. */
    EXPECT_ST(FERRY_ERR_BUSY, ferry__error(FERRY_ERR_BUSY, "main detail %d", 7));
    EXPECT_TRUE(strcmp(ferry_last_error(), "main detail 7") == 0);
    EXPECT_EQ(0, pthread_create(&t, NULL, other_thread, NULL));
    EXPECT_EQ(0, pthread_join(t, NULL));
    EXPECT_TRUE(strcmp(ferry_last_error(), "main detail 7") == 0);
    ferry__error_prefix("outer %s", "ctx");
    EXPECT_TRUE(strcmp(ferry_last_error(), "outer ctx: main detail 7") == 0);

    /* A public call that fails records why. */
    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_create(NULL, NULL));
    EXPECT_ERR_HAS("agent_p");
    return test_finish("test_status");
}
