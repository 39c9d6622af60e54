/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-run: starts the N ranks of a job on this host, the way torchrun or
 * mpirun would, for ferry_comm_create() to find from the environment:
 * FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE, LOCAL_RANK and
 * LOCAL_WORLD_SIZE. Unless given --store or --etcd, it hosts the job's
 * store itself (in-process, on loopback), so the store outlives every rank;
 * with --etcd URL the ranks rendezvous through that etcd cluster instead.
 *
 * Each rank's output comes back prefixed "[rank] "; SIGINT and SIGTERM are
 * forwarded to every rank; when one rank fails the others are stopped
 * (SIGTERM, SIGKILL after the grace period) and ferry-run returns that
 * first failed rank's exit code (128 + the signal number for a signal), or
 * 0 when every rank exited 0. The launcher itself is launch.c, which
 * ferry-bench uses too; this file is its command line.
 *
 * A --store or --etcd URL is checked before any rank starts, by the
 * library's own parsers (through ferry_store_connect() and
 * ferry_dir_create(), below), so that a URL no rank could use is one error
 * from ferry-run, not one from every rank.
 */
#include "cli.h"
#include "ferry.h"
#include "launch.h"

#include <stdio.h>

#define MAX_RANKS 4096

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry-run -n N [--store URL | --etcd URL] [--grace SEC] [--]\n"
            "                 PROG [ARGS...]\n"
            "  -n N          start N ranks (1 to %d)\n"
            "  --store URL   the job's store (tcp://host:port); default: one\n"
            "                that ferry-run hosts on 127.0.0.1\n"
            "  --etcd URL    rendezvous through an etcd cluster instead:\n"
            "                etcd://host:port[,host:port...]/prefix (the\n"
            "                job's keys go under prefix/ferry/run-PID-TIME/)\n"
            "  --grace SEC   after SIGTERM, wait this long before SIGKILL\n"
            "                (0 to 3600, default 5); ranks that handle\n"
            "                SIGTERM see a failed rank's heartbeat stop only\n"
            "                if it is longer than FERRY_COMM_LIVENESS_MS\n"
            "  -h, --help    print this help\n"
            "Each rank gets FERRY_RANK, FERRY_WORLD_SIZE, FERRY_STORE,\n"
            "LOCAL_RANK and LOCAL_WORLD_SIZE. Without --store or --etcd, the job gets\n"
            "a secret of its own in FERRY_JOB_SECRET (unless one is set),\n"
            "which the ranks and the store authenticate each other with.\n"
            "The exit code is the first failed rank's (128 + signal for a\n"
            "signal), else 0.\n",
            MAX_RANKS);
}

/*
 * Whether url is a store URL that ranks can use. ferry_store_connect()
 * parses the URL and resolves its host before it tries to connect, and
 * answers FERRY_ERR_INVALID (with the parser's text) only when one of
 * those fails. With a zero timeout it makes one attempt to connect and
 * gives up at once: the store need not be up yet (rank 0 hosts it when
 * nobody else does), so any other answer means the URL is fine.
 */
static bool store_url_ok(const char *url)
{
    ferry_store_params_t probe = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                                  .timeout_ns = 0};
    ferry_store_t *store = NULL;
    ferry_status_t st = ferry_store_connect(url, &probe, &store);

    ferry_store_close(store);
    if (st == FERRY_ERR_INVALID) {
        fprintf(stderr, "ferry-run: --store: %s\n", ferry_last_error());
        return false;
    }
    return true;
}

/*
 * Whether url is an etcd URL that ranks can use. ferry_dir_create() parses
 * it before it contacts the cluster, and only a malformed URL is
 * FERRY_ERR_INVALID; a cluster that is not up (yet) is the ranks' affair.
 * A build without etcd support says so (FERRY_ERR_UNSUPPORTED).
 */
static bool etcd_url_ok(const char *url)
{
    ferry_dir_params_t probe = {.field_mask = FERRY_DIR_PARAM_TIMEOUT,
                                .timeout_ns = 1000000};
    ferry_dir_t *dir = NULL;
    ferry_status_t st = ferry_dir_create(url, &probe, &dir);

    ferry_dir_destroy(dir);
    if (st == FERRY_ERR_INVALID || st == FERRY_ERR_UNSUPPORTED) {
        fprintf(stderr, "ferry-run: --etcd: %s\n", ferry_last_error());
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    enum { O_STORE = 256, O_GRACE, O_ETCD };
    static const struct option longs[] = {
        {"store", required_argument, NULL, O_STORE},
        {"etcd", required_argument, NULL, O_ETCD},
        {"grace", required_argument, NULL, O_GRACE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    launch_params_t p = {.name = "ferry-run", .prefix_lines = true, .grace_s = 5.0};
    char *end;
    long n;
    int c;
    bool etcd = false;

    /* "+": the options end at the program, whose own options are its. */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:n:h", longs, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!cli_number("ferry-run", "-n", optarg, 1, MAX_RANKS, &n)) {
                return CLI_USAGE;
            }
            p.nranks = (int)n;
            break;
        case O_STORE:
        case O_ETCD:
            if (p.store_url != NULL) {
                fprintf(stderr, "ferry-run: one store: --store or --etcd, once\n");
                return CLI_USAGE;
            }
            p.store_url = optarg;
            etcd = c == O_ETCD;
            break;
        case O_GRACE:
            p.grace_s = strtod(optarg, &end);
            if (end == optarg || *end != 0 ||
                !(p.grace_s >= 0 && p.grace_s <= 3600)) {
                fprintf(stderr, "ferry-run: --grace takes seconds from 0 to "
                                "3600, not '%s'\n", optarg);
                return CLI_USAGE;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return cli_bad_option("ferry-run", c, argv, usage);
        }
    }
    if (p.nranks == 0) {
        fprintf(stderr, "ferry-run: -n N is required\n");
        usage(stderr);
        return CLI_USAGE;
    }
    if (optind >= argc) {
        fprintf(stderr, "ferry-run: no program to run\n");
        usage(stderr);
        return CLI_USAGE;
    }
    if (p.store_url != NULL &&
        !(etcd ? etcd_url_ok(p.store_url) : store_url_ok(p.store_url))) {
        return CLI_USAGE;
    }
    p.argv = argv + optind;
    return launch_job(&p);
}
