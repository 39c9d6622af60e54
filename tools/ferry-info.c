/*
 * ferry-info: what this build of ferry can do on this machine. The library
 * version, the backends built and whether each is usable here, UCX's
 * version, transports and whether it takes GPU memory, the CUDA driver and
 * devices (or why CUDA is unavailable); with -c, every FERRY_* setting with
 * its default, its value here and what it does.
 *
 * It links the library's objects statically (not libferry.so) because it
 * reports on internals that the public API does not expose.
 */
#include "backends/backend.h"
#include "core/core.h"
#include "cuda/cuda.h"
#include "util/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry-info [-c]\n"
                 "  -c  print the configuration table (FERRY_* variables)\n");
}

static void print_config(void)
{
    printf("configuration (environment variables):\n");
    for (const ferry__config_entry_t *e = ferry__config_table; e->name; e++) {
        const char *v = getenv(e->name);

        printf("  %s = %s%s\n      default \"%s\": %s\n", e->name,
               v != NULL ? v : e->default_value, v != NULL ? "  (set)" : "",
               e->default_value, e->help);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "-c") == 0) {
        print_config();
        return 0;
    }
    if (argc != 1) {
        usage(stderr);
        return 2;
    }
    printf("ferry %s\nbackends:\n", ferry_version());
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        const ferry__backend_ops_t *ops = ferry__backends[k];
        void *ctx = NULL;
        ferry_status_t st = ops->init("ferry-info", &ctx);
        const ferry__cuda_t *cu;

        if (st == FERRY_OK)
            ops->fini(ctx);
        /* CUDA IPC starts without CUDA; usable means the driver loads. */
        if (st == FERRY_OK && ops->id == FERRY__BK_CUDA_IPC)
            st = ferry__cuda_get(&cu);
        printf("  %-9s built, %s%s\n", ops->name, st == FERRY_OK ? "usable" : "unusable: ",
               st == FERRY_OK ? "" : ferry_last_error());
    }
    ferry__ucx_describe(stdout);
    ferry__cuda_describe(stdout);
    return 0;
}
