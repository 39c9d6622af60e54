/*
 * ferry-store: runs ferry's TCPStore-compatible store server as a process
 * of its own, for jobs whose ranks should not host it. It prints the
 * address and port it listens on (useful with --port 0) and serves until
 * SIGINT or SIGTERM.
 */
#include "ferry.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry-store [--bind ADDR] [--port N]\n"
            "  --bind ADDR  numeric address to listen on (default 127.0.0.1)\n"
            "  --port N     TCP port (default 0: a free port, printed)\n");
}

int main(int argc, char **argv)
{
    const char *bind_addr = "127.0.0.1";
    ferry_store_server_params_t params = {0};
    ferry_store_server_t *server;
    ferry_status_t st;
    sigset_t set;
    int sig = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) {
            bind_addr = argv[++i];
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            long p = strtol(argv[++i], &end, 10);

            if (*end != 0 || p < 0 || p > 65535) {
                fprintf(stderr, "ferry-store: bad port '%s'\n", argv[i]);
                return 2;
            }
            params.field_mask |= FERRY_STORE_SERVER_PARAM_PORT;
            params.port = (uint16_t)p;
        } else if (strcmp(argv[i], "-h") == 0 ||
                   strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }

    /* Block the signals before the server thread starts, so that it
     * inherits the mask and only sigwait() below receives them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    st = ferry_store_server_start(bind_addr, &params, &server);
    if (st != FERRY_OK) {
        fprintf(stderr, "ferry-store: %s: %s\n", ferry_status_str(st),
                ferry_last_error());
        return 1;
    }
    printf("ferry-store listening on %s port %u\n", bind_addr,
           (unsigned)ferry_store_server_port(server));
    fflush(stdout);

    sigwait(&set, &sig);
    fprintf(stderr, "ferry-store: %s, stopping\n", strsignal(sig));
    ferry_store_server_stop(server);
    return 0;
}
