/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal program built against an installed ferry, the way a user would
 * build one (pkg-config or find_package). It includes only the umbrella
 * header, so it builds only if ferry.h brings every part of the API along
 * (one function of each part is taken by address, and must link from the
 * shared library), and it exits 0 only if the calls it makes behave: the
 * version matches the header it was compiled with, a status has its text,
 * an agent (which starts UCX) can be created and destroyed, and
 * ferry_info_print() reports the library's version.
 */
#include <ferry.h>

#include <stdio.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)
#define HEADER_VERSION                                                         \
    STR(FERRY_VERSION_MAJOR) "." STR(FERRY_VERSION_MINOR) "." STR(             \
        FERRY_VERSION_PATCH)

typedef void (*any_fn)(void);

/* One function of each part of the API (ferry/status.h to ferry/info.h). */
static const any_fn parts[] = {
    (any_fn)ferry_status_str,
    (any_fn)ferry_mem_register,
    (any_fn)ferry_peer_load,
    (any_fn)ferry_xfer_prepare,
    (any_fn)ferry_xfer_post_on_stream,
    (any_fn)ferry_store_connect,
    (any_fn)ferry_comm_create,
    (any_fn)ferry_info_print,
};

/* ferry_info_print(FERRY_INFO_VERSION) must say "ferry <version>". */
static int check_info(const char *version)
{
    char line[64] = "", want[64];
    FILE *f = tmpfile();
    ferry_status_t st;

    if (f == NULL) {
        perror("consumer: tmpfile");
        return 1;
    }
    st = ferry_info_print(f, FERRY_INFO_VERSION);
    rewind(f);
    if (fgets(line, sizeof(line), f) == NULL)
        line[0] = '\0';
    fclose(f);
    snprintf(want, sizeof(want), "ferry %s\n", version);
    if (st != FERRY_OK || strcmp(line, want) != 0) {
        fprintf(stderr, "consumer: ferry_info_print: %s, printed '%s'\n",
                ferry_status_str(st), line);
        return 1;
    }
    return 0;
}

int main(void)
{
    const char *version = ferry_version();
    const char *busy = ferry_status_str(FERRY_ERR_BUSY);
    ferry_agent_t *agent = NULL;
    ferry_status_t st;

    /* A header from one install and a library from another would show
     * here first, before anything subtler goes wrong. */
    if (version == NULL || strcmp(version, HEADER_VERSION) != 0) {
        fprintf(stderr, "consumer: ferry_version() is '%s', header says %s\n",
                version ? version : "(null)", HEADER_VERSION);
        return 1;
    }
    if (busy == NULL || strcmp(busy, "busy") != 0) {
        fprintf(stderr, "consumer: ferry_status_str(FERRY_ERR_BUSY) is '%s'\n",
                busy ? busy : "(null)");
        return 1;
    }
    st = ferry_agent_create(NULL, &agent);
    if (st != FERRY_OK || agent == NULL) {
        fprintf(stderr, "consumer: ferry_agent_create: %s (%s)\n",
                ferry_status_str(st), ferry_last_error());
        return 1;
    }
    ferry_agent_destroy(agent);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        if (parts[i] == NULL) {
            fprintf(stderr, "consumer: part %zu of the API is missing\n", i);
            return 1;
        }
    }
    if (check_info(version) != 0)
        return 1;
    printf("consumer: ferry %s works\n", version);
    return 0;
}
