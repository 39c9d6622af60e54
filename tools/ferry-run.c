/*
 * ferry-run: starts the N ranks of a job on this host, the way torchrun or
 * mpirun would, for ferry_comm_create() to find from the environment:
 * FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE, LOCAL_RANK and
 * LOCAL_WORLD_SIZE. Unless given --store, it hosts the job's store itself
 * (in-process, on loopback), so the store outlives every rank.
 *
 * Each rank's output comes back prefixed "[rank] "; SIGINT and SIGTERM are
 * forwarded to every rank; when one rank fails the others are stopped
 * (SIGTERM, SIGKILL after the grace period) and ferry-run returns that
 * first failed rank's exit code (128 + the signal number for a signal), or
 * 0 when every rank exited 0. The launcher itself is launch.c, which
 * ferry-bench uses too; this file is its command line.
 */
#include "launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANKS 4096

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry-run -n N [--store URL] [--grace SEC] -- PROG [ARGS...]\n"
            "  -n N          start N ranks (1 to %d)\n"
            "  --store URL   the job's store (tcp://host:port); default: one\n"
            "                that ferry-run hosts on 127.0.0.1\n"
            "  --grace SEC   after SIGTERM, wait this long before SIGKILL\n"
            "                (default 5)\n"
            "Each rank gets FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE,\n"
            "LOCAL_RANK and LOCAL_WORLD_SIZE. The exit code is the first\n"
            "failed rank's (128 + signal for a signal), else 0.\n",
            MAX_RANKS);
}

int main(int argc, char **argv)
{
    launch_params_t p = {.name = "ferry-run", .prefix_lines = true, .grace_s = 5.0};
    int first = 1;

    for (; first < argc; first++) {
        if (strcmp(argv[first], "--") == 0) {
            first++;
            break;
        } else if (strcmp(argv[first], "-n") == 0 && first + 1 < argc) {
            char *end;
            long n = strtol(argv[++first], &end, 10);

            if (*end != 0 || n < 1 || n > MAX_RANKS) {
                fprintf(stderr, "ferry-run: -n wants 1 to %d, not '%s'\n",
                        MAX_RANKS, argv[first]);
                return 2;
            }
            p.nranks = (int)n;
        } else if (strcmp(argv[first], "--store") == 0 && first + 1 < argc) {
            p.store_url = argv[++first];
        } else if (strcmp(argv[first], "--grace") == 0 && first + 1 < argc) {
            char *end;

            p.grace_s = strtod(argv[++first], &end);
            if (*end != 0 || !(p.grace_s >= 0 && p.grace_s <= 3600)) {
                fprintf(stderr, "ferry-run: bad --grace '%s'\n", argv[first]);
                return 2;
            }
        } else if (strcmp(argv[first], "-h") == 0 ||
                   strcmp(argv[first], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (p.nranks == 0 || first >= argc) {
        usage(stderr);
        return 2;
    }
    p.argv = argv + first;
    return launch_job(&p);
}
