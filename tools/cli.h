/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The command line conventions that ferry-info, ferry-store and ferry-run
 * share with ferry-bench: -h and --help print the usage on stdout and exit
 * 0; an unknown option, an option without its argument, or an argument
 * where none belongs is named on stderr ("ferry-store: unknown option
 * '--x'"), the usage follows, and the tool exits 2; an option's value that
 * is out of range is one line naming the option, its range and the value
 * given, exit 2 too.
 *
 * Each tool parses with getopt_long() under an optstring that starts with
 * ':' (or "+:") and opterr = 0, so that these words, not getopt's, are
 * what users read. Header only, so that each tool stays one source file.
 */
#ifndef FERRY_TOOLS_CLI_H
#define FERRY_TOOLS_CLI_H

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The exit code of every command line mistake. */
#define CLI_USAGE 2

/*
 * Says what was wrong when getopt_long() returned '?' or ':' (c), then
 * prints the usage on stderr; returns CLI_USAGE, the tool's exit code. The
 * option as the user typed it is argv[optind - 1], except for a short
 * option inside a group ("-cx"), which getopt reports in optopt.
 */
static inline int cli_bad_option(const char *prog, int c, char **argv,
                                 void (*usage)(FILE *))
{
    const char *typed = argv[optind - 1];
    char name[64];

    if (strncmp(typed, "--", 2) == 0) {
        /* "--port=5" names the option "--port". */
        snprintf(name, sizeof(name), "%.*s", (int)strcspn(typed, "="), typed);
    } else {
        snprintf(name, sizeof(name), "-%c", optopt);
    }
    if (c == ':') {
        fprintf(stderr, "%s: option '%s' needs an argument\n", prog, name);
    } else if (optopt != 0 && strchr(typed, '=') != NULL &&
               strncmp(typed, "--", 2) == 0) {
        /* getopt sets optopt for a known long option given a value it
         * does not take, and leaves it 0 for an unknown one. */
        fprintf(stderr, "%s: option '%s' takes no argument\n", prog, name);
    } else {
        fprintf(stderr, "%s: unknown option '%s'\n", prog, name);
    }
    usage(stderr);
    return CLI_USAGE;
}

/* The same for arg, an argument where the tool takes none. */
static inline int cli_bad_argument(const char *prog, const char *arg,
                                   void (*usage)(FILE *))
{
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, arg);
    usage(stderr);
    return CLI_USAGE;
}

/*
 * Reads arg, the value of option opt, as a decimal integer from lo to hi:
 * digits only, no sign, no suffix. Returns false after saying why not.
 */
static inline bool cli_number(const char *prog, const char *opt,
                              const char *arg, long lo, long hi, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 10);
    if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || errno != 0 ||
        v < lo || v > hi) {
        fprintf(stderr, "%s: %s takes a number from %ld to %ld, not '%s'\n",
                prog, opt, lo, hi, arg);
        return false;
    }
    *out = v;
    return true;
}

#endif
