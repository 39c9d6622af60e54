/*
 * ferry-info: what this build of ferry can do on this machine. The library
 * version, the backends built and whether each is usable here, UCX's
 * version, transports and whether it takes GPU memory, the CUDA driver and
 * devices (or why CUDA is unavailable); with -c, every FERRY_* setting with
 * its default, its value here and what it does.
 *
 * The report is the library's own (ferry_info_print()), and the tool links
 * the shared library like any user, so what it describes is the libferry.so
 * that programs on this machine load.
 */
#include "ferry.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry-info [-c]\n"
                 "  -c  print the configuration table (FERRY_* variables)\n");
}

int main(int argc, char **argv)
{
    uint64_t what = FERRY_INFO_DEFAULT;
    ferry_status_t st;

    if (argc == 2 && strcmp(argv[1], "-c") == 0) {
        what = FERRY_INFO_CONFIG;
    } else if (argc != 1) {
        usage(stderr);
        return 2;
    }
    st = ferry_info_print(stdout, what);
    if (st != FERRY_OK) {
        fprintf(stderr, "ferry-info: %s: %s\n", ferry_status_str(st),
                ferry_last_error());
        return 1;
    }
    return 0;
}
