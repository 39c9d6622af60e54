/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench's command line (options.h): defaults, --help, and the
 * parsing of lists ("4K:64M" is every power of two between) and choices.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* Automatic iteration counts: enough to move this much per row, within
 * [AUTO_MIN_ITERS, AUTO_MAX_ITERS], so the default sweep takes seconds;
 * with --check, whose fills and verifies cost far more than the transfers,
 * a smoke run's worth. */
#define AUTO_BYTES (4ull << 30)
#define AUTO_MIN_ITERS 16
#define AUTO_MAX_ITERS 100000
#define AUTO_CHECK_BYTES (64ull << 20)
#define AUTO_CHECK_MAX_ITERS 20
/* How long a rank waits for the store, for the other ranks and for every
 * answer, unless --timeout says otherwise. */
#define DEFAULT_TIMEOUT_S 120
#define MAX_TIMEOUT_S 86400

const char *const scheme_names[] = {"pairwise", "manytoone", "onetomany"};
const char *const target_names[] = {"spin", "fd", "thread"};
const char *const wait_names[] = {"poll", "block"};
const char *const alloc_names[] = {"ferry", "mmap"};
const char *const layout_names[] = {"seq", "random"};
const char *const kind_names[] = {"auto", "host", "cuda"};

const char *op_name(ferry_xfer_op_t op)
{
    return op == FERRY_OP_WRITE ? "WRITE" : "READ";
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: ferry-bench [options]\n"
        "  With no --store, starts -n local ranks (default 2) over an embedded\n"
        "  store and sweeps block sizes for WRITE, then READ. Started as a\n"
        "  rank of a job (ferry-run -n N -- ferry-bench: FERRY_RANK,\n"
        "  FERRY_WORLD_SIZE, FERRY_STORE set), it is that rank of one run.\n"
        "  --op write|read|both  operations (default both: WRITE, then READ)\n"
        "  --sizes LIST       block sizes: A:B is every power of two from A to\n"
        "                     B, lists are comma-separated; K/M/G suffixes are\n"
        "                     binary (default 4K:64M)\n"
        "  --batch LIST       descriptors per request, same syntax (default 1)\n"
        "  --layout seq|random  a request's remote blocks in the local order\n"
        "                     (default; neighbours are merged into one\n"
        "                     operation) or shuffled (none can be)\n"
        "  --iters N          timed iterations per row (default: enough for\n"
        "                     1 GiB, %d to %d)\n"
        "  --warmup N         untimed iterations first (default iters/10)\n"
        "  --initiator-mem host|cuda, --target-mem host|cuda\n"
        "                     memory kind of each side (default: host, then\n"
        "                     a second sweep with cuda on both sides when a\n"
        "                     GPU is present; its --csv/--json go to FILE-cuda)\n"
        "  --gpu N|rank       the CUDA device of a rank's GPU memory: N\n"
        "                     (default 0), or rank modulo the device count\n"
        "  --alloc ferry|mmap host buffers from ferry_mem_alloc (default: UCX\n"
        "                     shared memory, copied directly) or plain mmap\n"
        "                     (user memory, emulated RMA on UCX 1.13)\n"
        "  --scheme pairwise|manytoone|onetomany  who initiates to whom\n"
        "  -n, --world N      ranks (default 2)\n"
        "  --threads N        threads per initiating rank (default 1)\n"
        "  --progress-thread  every agent runs ferry's progress thread\n"
        "  --wait poll|block  poll with ferry_xfer_test (default) or sleep in\n"
        "                     ferry_xfer_wait\n"
        "  --target spin|fd|thread  how targets drive progress: spinning\n"
        "                     (default, like ucx_perftest), sleeping on\n"
        "                     ferry_agent_fd(), or ferry's progress thread\n"
        "  --check            fill and verify every byte of every iteration\n"
        "                     (untimed; B/W then from the transfers' times)\n"
        "  --csv FILE, --json FILE  also write the results there\n"
        "  --store URL --rank R  be rank R of a job whose ranks meet at the\n"
        "                     store URL (tcp://host:port), e.g. on several hosts\n"
        "  --timeout SECONDS  give up when the store, another rank or an answer\n"
        "                     has not come for this long (default %d); a wait\n"
        "                     says on stderr what it waits for after 1.5 s\n"
        "  --prepare-bench [N]  in one process, time preparing a WRITE of N\n"
        "                     64-byte descriptors (default 100000)\n"
        "  --memcpy           in one process, --threads threads' memcpy at\n"
        "                     each block size, each between its own buffers:\n"
        "                     the reference copy (B/W is their sum)\n"
        "  --notify           two ranks on this host: the time from a post to\n"
        "                     the target seeing it, for a WRITE alone, the\n"
        "                     same WRITE with an 8-byte notification and a\n"
        "                     notification alone, against ucx_perftest -t\n"
        "                     ucp_am_lat run before and after (default\n"
        "                     --sizes 8,1M, --iters 10000; takes --alloc,\n"
        "                     --warmup, --timeout)\n",
        AUTO_MIN_ITERS, AUTO_MAX_ITERS, DEFAULT_TIMEOUT_S);
}

/* Seconds, fractions allowed, above 0 and at most MAX_TIMEOUT_S. */
static uint64_t parse_seconds(const char *s, const char *what)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0) ||
        v > MAX_TIMEOUT_S) {
        die_usage("%s takes seconds above 0, at most %d, not '%s'", what,
                  MAX_TIMEOUT_S, s);
    }
    return (uint64_t)(v * 1e9);
}

/* "A:B" (powers of two from A up to B) and single values, comma-separated.
 * Every item must be there: an empty one (a trailing comma, two commas)
 * is a typing slip, refused rather than skipped. */
static void parse_list(const char *list, const char *what, size_t *out,
                       size_t *n_p)
{
    char *copy = strdup(list);
    size_t n = 0;
    int item = 0;

    if (copy == NULL) {
        die("out of memory");
    }
    for (char *t = copy, *next; t != NULL; t = next) {
        char *comma = strchr(t, ','), *colon;
        char name[64];
        size_t lo, hi;

        next = comma != NULL ? comma + 1 : NULL;
        if (comma != NULL) {
            *comma = '\0';
        }
        item++;
        if (*t == '\0') {
            die_usage("%s '%s': item %d is empty", what, list, item);
        }
        snprintf(name, sizeof(name), "%s item %d", what, item);
        colon = strchr(t, ':');
        if (colon != NULL) {
            *colon = '\0';
        }
        lo = parse_count(t, name, false);
        hi = colon != NULL ? parse_count(colon + 1, name, false) : lo;
        if (hi < lo) {
            die_usage("%s: '%s:%s' runs backwards (write the smaller size first)",
                name, t, colon + 1);
        }
        for (size_t v = lo; v <= hi; v *= 2) {
            if (n == MAX_LIST) {
                die_usage("at most %d values for %s", MAX_LIST, what);
            }
            out[n++] = v;
            if (v > hi / 2) {
                break;
            }
        }
    }
    free(copy);
    *n_p = n;
}

static int parse_choice(const char *arg, const char *what,
                        const char *const *names, int n)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(arg, names[i]) == 0) {
            return i;
        }
    }
    die_usage("%s does not take '%s' (see --help)", what, arg);
}

static ferry_mem_kind_t parse_kind(const char *arg, const char *what)
{
    static const char *const kinds[] = {"host", "cuda"};

    return parse_choice(arg, what, kinds, 2) == 0 ? FERRY_MEM_HOST
                                                  : FERRY_MEM_CUDA;
}

void options_parse(options_t *o, int argc, char **argv)
{
    enum { O_SIZES = 256, O_ITERS, O_WARMUP, O_BATCH, O_OP, O_CHECK, O_CSV,
           O_JSON, O_TARGET, O_PREP, O_INIT_MEM, O_TARGET_MEM, O_ALLOC,
           O_SCHEME, O_THREADS, O_PROGRESS, O_WAIT, O_STORE, O_RANK, O_MEMCPY,
           O_LAYOUT, O_GPU, O_TIMEOUT, O_NOTIFY, O_HELP };
    static const struct option longs[] = {
        {"sizes", required_argument, NULL, O_SIZES},
        {"iters", required_argument, NULL, O_ITERS},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"batch", required_argument, NULL, O_BATCH},
        {"op", required_argument, NULL, O_OP},
        {"check", no_argument, NULL, O_CHECK},
        {"csv", required_argument, NULL, O_CSV},
        {"json", required_argument, NULL, O_JSON},
        {"target", required_argument, NULL, O_TARGET},
        {"prepare-bench", optional_argument, NULL, O_PREP},
        {"initiator-mem", required_argument, NULL, O_INIT_MEM},
        {"target-mem", required_argument, NULL, O_TARGET_MEM},
        {"alloc", required_argument, NULL, O_ALLOC},
        {"scheme", required_argument, NULL, O_SCHEME},
        {"world", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, O_THREADS},
        {"progress-thread", no_argument, NULL, O_PROGRESS},
        {"wait", required_argument, NULL, O_WAIT},
        {"store", required_argument, NULL, O_STORE},
        {"rank", required_argument, NULL, O_RANK},
        {"memcpy", no_argument, NULL, O_MEMCPY},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"gpu", required_argument, NULL, O_GPU},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"notify", no_argument, NULL, O_NOTIFY},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    static const char *const ops[] = {"write", "read", "both"};
    int c, op;

    *o = (options_t){.do_write = true, .do_read = true, .world = 2, .rank = -1,
                     .threads = 1, .init_mem = FERRY_MEM_HOST,
                     .target_mem = FERRY_MEM_HOST,
                     .timeout_ns = DEFAULT_TIMEOUT_S * 1000000000ull};
    parse_list("4K:64M", "--sizes", o->sizes, &o->nsizes);
    parse_list("1", "--batch", o->batches, &o->nbatches);

    while ((c = getopt_long(argc, argv, "hn:", longs, NULL)) != -1) {
        switch (c) {
        case O_SIZES:
            parse_list(optarg, "--sizes", o->sizes, &o->nsizes);
            o->sizes_set = true;
            break;
        case O_BATCH:
            parse_list(optarg, "--batch", o->batches, &o->nbatches);
            break;
        case O_ITERS: o->iters = parse_count(optarg, "--iters", false); break;
        case O_WARMUP:
            o->warmup = parse_count(optarg, "--warmup", true);
            o->warmup_set = true;
            break;
        case O_OP:
            op = parse_choice(optarg, "--op", ops, 3);
            o->do_write = op != 1;
            o->do_read = op != 0;
            o->op_set = true;
            break;
        case O_CHECK: o->check = true; break;
        case O_CSV: o->csv_path = optarg; break;
        case O_JSON: o->json_path = optarg; break;
        case O_TARGET:
            o->target_mode = parse_choice(optarg, "--target", target_names, 3);
            break;
        case O_INIT_MEM:
            o->init_mem = parse_kind(optarg, "--initiator-mem");
            o->mem_set = true;
            break;
        case O_TARGET_MEM:
            o->target_mem = parse_kind(optarg, "--target-mem");
            o->mem_set = true;
            break;
        case O_ALLOC: o->alloc = parse_choice(optarg, "--alloc", alloc_names, 2); break;
        case O_SCHEME:
            o->scheme = parse_choice(optarg, "--scheme", scheme_names, 3);
            break;
        case 'n':
            o->world = (int)parse_count(optarg, "-n", false);
            o->world_set = true;
            break;
        case O_THREADS: o->threads = (int)parse_count(optarg, "--threads", false); break;
        case O_PROGRESS: o->progress_thread = true; break;
        case O_WAIT: o->wait_mode = parse_choice(optarg, "--wait", wait_names, 2); break;
        case O_STORE: o->store_url = optarg; break;
        case O_RANK: o->rank = (int)parse_count(optarg, "--rank", true); break;
        case O_MEMCPY: o->memcpy_mode = true; break;
        case O_NOTIFY: o->notify = true; break;
        case O_LAYOUT:
            o->layout = parse_choice(optarg, "--layout", layout_names, 2);
            break;
        case O_GPU:
            o->gpu = strcmp(optarg, "rank") == 0
                         ? -1
                         : (int)parse_count(optarg, "--gpu", true);
            break;
        case O_TIMEOUT: o->timeout_ns = parse_seconds(optarg, "--timeout"); break;
        case O_PREP:
            /* getopt only attaches an optional argument given with '=';
             * accept "--prepare-bench N" too. */
            if (optarg == NULL && optind < argc && argv[optind][0] != '-') {
                optarg = argv[optind++];
            }
            o->prepare_n = optarg ? parse_count(optarg, "--prepare-bench",
                                                false)
                                  : 100000;
            break;
        case 'h': case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        die_usage("unexpected argument '%s' (see --help)", argv[optind]);
    }
    options_check_world(o);
    if (o->threads > MAX_THREADS) {
        die_usage("--threads takes 1 to %d", MAX_THREADS);
    }
    if ((o->store_url == NULL) != (o->rank < 0)) {
        die_usage("--store and --rank go together");
    }
}

void options_check_world(const options_t *o)
{
    if (o->world < 2 || o->world > MAX_RANKS) {
        die_usage("-n takes 2 to %d ranks, not %d", MAX_RANKS, o->world);
    }
    if (o->scheme == SCHEME_PAIRWISE && o->world % 2 != 0) {
        die_usage("--scheme pairwise needs an even number of ranks, not %d", o->world);
    }
    if (o->rank >= o->world) {
        die_usage("--rank %d is not below the world size %d", o->rank, o->world);
    }
}

size_t options_iters(const options_t *o, size_t bytes)
{
    size_t lo = o->check ? 2 : AUTO_MIN_ITERS;
    size_t hi = o->check ? AUTO_CHECK_MAX_ITERS : AUTO_MAX_ITERS;
    size_t n = (o->check ? AUTO_CHECK_BYTES : AUTO_BYTES) / (bytes ? bytes : 1);

    if (o->iters != 0) {
        return o->iters;
    }
    return n < lo ? lo : n > hi ? hi : n;
}

/* --warmup, or a tenth of the timed iterations (at least one). */
size_t options_warmup(const options_t *o, size_t iters)
{
    if (o->warmup_set) {
        return o->warmup;
    }
    return iters / 10 ? iters / 10 : 1;
}
