/* SPDX-License-Identifier: Apache-2.0 */
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
#include "cli.h"
#include "ferry.h"

#include <stdio.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry-info [-c]\n"
                 "  -c          print the configuration table (FERRY_* variables)\n"
                 "  -h, --help  print this help\n");
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    uint64_t what = FERRY_INFO_DEFAULT;
    ferry_status_t st;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ch", longs, NULL)) != -1) {
        switch (c) {
        case 'c':
            what = FERRY_INFO_CONFIG;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return cli_bad_option("ferry-info", c, argv, usage);
        }
    }
    if (optind < argc) {
        return cli_bad_argument("ferry-info", argv[optind], usage);
    }
    st = ferry_info_print(stdout, what);
    if (st != FERRY_OK) {
        fprintf(stderr, "ferry-info: %s: %s\n", ferry_status_str(st),
                ferry_last_error());
        return 1;
    }
    return 0;
}
