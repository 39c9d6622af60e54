/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-info: what this build of ferry can do on this machine. The library
 * version, the backends built and whether each is usable here, UCX's
 * version, transports and whether it takes GPU memory, the CUDA driver and
 * devices (or why CUDA is unavailable); with -c, every FERRY_* setting with
 * its default, its value here and what it does; with --dir URL, the agents
 * published in an etcd directory instead (include/ferry/dir.h).
 *
 * The report is the library's own (ferry_info_print()), and the tool links
 * the shared library like any user, so what it describes is the libferry.so
 * that programs on this machine load.
 */
#include "cli.h"
#include "ferry.h"

#include <inttypes.h>
#include <stdio.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry-info [-c | --dir etcd://host:port[,host:port]/prefix]\n"
                 "  -c          print the configuration table (FERRY_* variables)\n"
                 "  --dir URL   list the agents published in an etcd directory:\n"
                 "              name, blob size and the revision that last changed it\n"
                 "  -h, --help  print this help\n");
}

static int fail(ferry_status_t st)
{
    fprintf(stderr, "ferry-info: %s: %s\n", ferry_status_str(st), ferry_last_error());
    return 1;
}

/* One line per agent; an agent that leaves between the list and its read
 * is left out rather than failing the listing. */
static int list_dir(const char *url)
{
    ferry_dir_t *dir;
    char **names;
    size_t n;
    ferry_status_t st;

    if ((st = ferry_dir_create(url, NULL, &dir)) != FERRY_OK)
        return fail(st);
    if ((st = ferry_dir_list(dir, &names, &n)) != FERRY_OK) {
        ferry_dir_destroy(dir);
        return fail(st);
    }
    printf("directory %s: %zu agent%s\n", url, n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
        void *blob;
        size_t len;
        int64_t rev;

        st = ferry_dir_get(dir, names[i], &blob, &len, &rev);
        if (st == FERRY_ERR_NOT_FOUND)
            continue;
        if (st != FERRY_OK)
            break;
        printf("  %-32s %10zu bytes  revision %" PRId64 "\n", names[i], len, rev);
        ferry_dir_free(blob);
    }
    ferry_dir_free(names);
    ferry_dir_destroy(dir);
    return st == FERRY_OK || st == FERRY_ERR_NOT_FOUND ? 0 : fail(st);
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"help", no_argument, NULL, 'h'},
        {"dir", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0}};
    uint64_t what = FERRY_INFO_DEFAULT;
    const char *dir_url = NULL;
    ferry_status_t st;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ch", longs, NULL)) != -1) {
        switch (c) {
        case 'c':
            what = FERRY_INFO_CONFIG;
            break;
        case 'd':
            dir_url = optarg;
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
    if (dir_url != NULL)
        return list_dir(dir_url);
    st = ferry_info_print(stdout, what);
    if (st != FERRY_OK)
        return fail(st);
    return 0;
}
