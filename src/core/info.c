/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry_info_print(): the report that ferry-info prints, made by the library
 * itself, so that it describes the libferry a program has loaded (its
 * version, its backends, the UCX and CUDA it finds, its configuration table)
 * and not a copy of it. It only reads: each backend is started and stopped
 * once to see whether it is usable, and the UCX and CUDA parts come from
 * those layers' own describe functions.
 */
#include "backends/backend.h"
#include "core/core.h"
#include "cuda/copy.h"
#include "cuda/cuda.h"
#include "util/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KNOWN_PARTS                                                            \
    (FERRY_INFO_VERSION | FERRY_INFO_BACKENDS | FERRY_INFO_UCX |               \
     FERRY_INFO_CUDA | FERRY_INFO_CONFIG)

/* Whether each backend starts here, and if not the detail of why. */
static void print_backends(FILE *out)
{
    fprintf(out, "backends:\n");
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];
        const ferry__cuda_t *cu;
        void *ctx = NULL;
        const ferry__secret_t none = {0};
        /* The name a backend gives its context shows in UCX's own
         * messages; "ferry-info" says where they come from. */
        ferry_status_t st = ops->init("ferry-info", &none, &ctx);

        if (st == FERRY_OK)
            ops->fini(ctx);
        /* CUDA IPC starts without CUDA; usable means the driver loads. */
        if (st == FERRY_OK && ops->id == FERRY__BK_CUDA_IPC)
            st = ferry__cuda_get(&cu);
        fprintf(out, "  %-9s built, %s%s\n", ops->name,
                st == FERRY_OK ? "usable" : "unusable: ",
                st == FERRY_OK ? "" : ferry_last_error());
    }
}

static void print_config(FILE *out)
{
    fprintf(out, "configuration (environment variables):\n");
    for (const ferry__config_entry_t *e = ferry__config_table; e->name; e++) {
        const char *v = getenv(e->name);

        /* A secret is shown as set, never printed. */
        if (v != NULL && strcmp(e->name, "FERRY_JOB_SECRET") == 0)
            v = "(hidden)";
        fprintf(out, "  %s = %s%s\n      default \"%s\": %s\n", e->name,
                v != NULL ? v : e->default_value, v != NULL ? "  (set)" : "",
                e->default_value, e->help);
    }
}

ferry_status_t ferry_info_print(FILE *out, uint64_t what)
{
    char saved[512];

    if (out == NULL)
        return ferry__error(FERRY_ERR_INVALID, "info_print: NULL out");
    if (what == 0 || (what & ~(uint64_t)KNOWN_PARTS) != 0)
        return ferry__error(FERRY_ERR_INVALID,
                            "info_print: what is 0x%llx; the parts this "
                            "library knows are 0x%llx",
                            (unsigned long long)what,
                            (unsigned long long)KNOWN_PARTS);
    /* The probes below fail as a matter of course (no CUDA driver), and a
     * successful call must not leave their text as the thread's last
     * error. */
    snprintf(saved, sizeof(saved), "%s", ferry_last_error());
    if (what & FERRY_INFO_VERSION)
        fprintf(out, "ferry %s\n", ferry_version());
    if (what & FERRY_INFO_BACKENDS) {
        print_backends(out);
        ferry__staged_describe(out);
    }
    if (what & FERRY_INFO_UCX)
        ferry__ucx_describe(out);
    if (what & FERRY_INFO_CUDA) {
        ferry__cuda_describe(out);
        ferry__cuda_copy_describe(out);
    }
    if (what & FERRY_INFO_CONFIG)
        print_config(out);
    if (fflush(out) != 0 || ferror(out))
        return ferry__error(FERRY_ERR_SYSTEM, "info_print: writing the "
                            "report failed");
    (void)ferry__error(FERRY_OK, "%s", saved);
    return FERRY_OK;
}
