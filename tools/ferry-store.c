/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-store: runs ferry's TCPStore-compatible store server as a process
 * of its own, for jobs whose ranks should not host it. It prints the
 * address and port it listens on (useful with --port 0) and serves until
 * SIGINT or SIGTERM.
 *
 * --bind takes a host name as well as a numeric address, as clients'
 * tcp://host:port URLs do: the name is resolved (getaddrinfo, AI_PASSIVE)
 * and the first of its addresses that the server can bind is the one it
 * listens on; the printed line gives that address, numeric, so that it
 * keeps the shape "ferry-store listening on ADDR port N" that scripts read.
 */
#include "cli.h"
#include "ferry.h"

#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry-store [--bind HOST] [--port N]\n"
            "  --bind HOST  host name or numeric address to listen on (default\n"
            "               127.0.0.1); a name listens on the first of its\n"
            "               addresses that can be bound\n"
            "  --port N     TCP port, 0 to 65535 (default 0: a free port, printed)\n"
            "  -h, --help   print this help\n"
            "With FERRY_JOB_SECRET set, only clients that prove that secret are\n"
            "served (torch's clients are not); without it, any client is.\n");
}

/*
 * Starts the server on the first address of host that it can bind, and
 * writes that address (numeric) to addr. Returns 0, or 1 after saying why
 * host does not resolve or why none of its addresses could be bound.
 */
static int start_on(const char *host, const ferry_store_server_params_t *params,
                    ferry_store_server_t **server_p, char *addr, size_t cap)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ais = NULL;
    ferry_status_t st = FERRY_OK;
    bool tried = false;
    int rc = getaddrinfo(host, NULL, &hints, &ais);

    if (rc != 0) {
        fprintf(stderr, "ferry-store: cannot resolve --bind '%s': %s\n", host,
                gai_strerror(rc));
        return 1;
    }
    for (struct addrinfo *ai = ais; ai != NULL; ai = ai->ai_next) {
        if (getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, (socklen_t)cap,
                        NULL, 0, NI_NUMERICHOST) != 0) {
            continue;
        }
        tried = true;
        st = ferry_store_server_start(addr, params, server_p);
        if (st == FERRY_OK) {
            break;
        }
        /* Say why this one failed before trying the next: the last
         * failure alone would hide the others. */
        if (ai->ai_next != NULL) {
            fprintf(stderr, "ferry-store: %s; trying the next address of '%s'\n",
                    ferry_last_error(), host);
        }
    }
    freeaddrinfo(ais);
    if (!tried) {
        fprintf(stderr, "ferry-store: --bind '%s' has no address to listen on\n",
                host);
        return 1;
    }
    if (st != FERRY_OK) {
        fprintf(stderr, "ferry-store: %s: %s\n", ferry_status_str(st),
                ferry_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_BIND = 256, O_PORT };
    static const struct option longs[] = {
        {"bind", required_argument, NULL, O_BIND},
        {"port", required_argument, NULL, O_PORT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *bind_addr = "127.0.0.1";
    char addr[NI_MAXHOST];
    ferry_store_server_params_t params = {0};
    ferry_store_server_t *server;
    sigset_t set;
    int c, sig = 0;
    long port;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        switch (c) {
        case O_BIND:
            bind_addr = optarg;
            break;
        case O_PORT:
            if (!cli_number("ferry-store", "--port", optarg, 0, 65535, &port)) {
                return CLI_USAGE;
            }
            params.field_mask |= FERRY_STORE_SERVER_PARAM_PORT;
            params.port = (uint16_t)port;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return cli_bad_option("ferry-store", c, argv, usage);
        }
    }
    if (optind < argc) {
        return cli_bad_argument("ferry-store", argv[optind], usage);
    }

    /* Block the signals before the server thread starts, so that it
     * inherits the mask and only sigwait() below receives them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if (start_on(bind_addr, &params, &server, addr, sizeof(addr)) != 0) {
        return 1;
    }
    printf("ferry-store listening on %s port %u\n", addr,
           (unsigned)ferry_store_server_port(server));
    fflush(stdout);

    sigwait(&set, &sig);
    fprintf(stderr, "ferry-store: %s, stopping\n", strsignal(sig));
    ferry_store_server_stop(server);
    return 0;
}
