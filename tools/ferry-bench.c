/*
 * ferry-bench: measures ferry's one-sided WRITE and READ between processes,
 * the figure every performance claim in docs/PERFORMANCE.md rests on.
 *
 * Ranks. Every measuring process is a rank of a job that meets through a
 * c10d-compatible store: rank R of N with --store URL --rank R --world N
 * (several hosts; the store may be ferry-store or a torchrun job's), or,
 * with no --store, a launcher that starts an embedded store server and N
 * local ranks (fork, then exec of /proc/self/exe, so that UCX starts in a
 * fresh image; the launcher itself never creates an agent). A scheme says
 * who initiates towards whom:
 *   pairwise   even ranks initiate to the next odd rank (0->1, 2->3, ...)
 *   manytoone  ranks 0..N-2 initiate to rank N-1
 *   onetomany  rank 0 initiates to ranks 1..N-1, posting to all at once
 * Ranks publish their metadata blob and buffer address in the store. Every
 * initiator rank runs --threads threads, each with its own prepared request
 * per target and its own slices of the buffers, so that no two writers
 * share a byte. Targets only serve: they drive progress (--target) and
 * answer fill/verify commands for --check, also through the store.
 *
 * Steps. For each operation, block size and batch size, every initiator
 * thread prepares (timed), warms up, meets the others at a barrier, then
 * posts and waits --iters times, timing each post and each post-to-done.
 * Each rank publishes its figures; rank 0 combines them and prints the row
 * at once, in nixlbench's columns, bandwidth in decimal GB/s (1e9 B/s):
 * the bytes of all initiators over the slowest one's time.
 *
 * Memory. Host buffers come from ferry_mem_alloc() by default (UCX's own
 * shared memory, copied into directly by same-host peers); --alloc mmap
 * uses ordinary memory instead, which UCX 1.13 reaches only through
 * emulated RMA. One function, bench_alloc(), allocates a buffer of a memory
 * kind, so GPU memory plugs in there.
 *
 * --prepare-bench N measures the cost of preparing (and releasing) a request
 * of N small descriptors in one process, against its own blob (loopback).
 */
#include "ferry.h"

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 64
#define MAX_RANKS 256
#define MAX_THREADS 64
/* No blocking call may hang the benchmark; a transfer taking this long is an
 * error worth reporting, not a slow figure. */
#define WAIT_TIMEOUT_NS (60LL * 1000000000LL)
/* Store calls (results, acknowledgements, barriers) wait this long. */
#define STORE_TIMEOUT_NS (120ull * 1000000000ull)
/* How often a target looks in the store for commands and for the end: often
 * while commands come (--check), rarely otherwise, so that a spinning
 * target spends its time on progress, not on the store. */
#define TARGET_POLL_BUSY_NS 100000ull
#define TARGET_POLL_IDLE_NS 2000000ull
#define TARGET_BUSY_NS 100000000ull
/* Automatic iteration counts: enough to move this much per row, within
 * [AUTO_MIN_ITERS, AUTO_MAX_ITERS], so the default sweep takes seconds;
 * with --check, whose fills and verifies cost far more than the transfers,
 * a smoke run's worth. */
#define AUTO_BYTES (4ull << 30)
#define AUTO_MIN_ITERS 16
#define AUTO_MAX_ITERS 100000
#define AUTO_CHECK_BYTES (64ull << 20)
#define AUTO_CHECK_MAX_ITERS 20

enum { SCHEME_PAIRWISE, SCHEME_MANYTOONE, SCHEME_ONETOMANY };
static const char *const scheme_names[] = {"pairwise", "manytoone", "onetomany"};
/* How a target serves: spinning on progress (as ucx_perftest's responder
 * does), sleeping on ferry_agent_fd(), or leaving it to ferry's progress
 * thread. Emulated RMA needs the target's CPU, so this matters. */
enum { TARGET_SPIN, TARGET_FD, TARGET_THREAD };
static const char *const target_names[] = {"spin", "fd", "thread"};
enum { WAIT_POLL, WAIT_BLOCK };
static const char *const wait_names[] = {"poll", "block"};
enum { ALLOC_FERRY, ALLOC_MMAP };
static const char *const alloc_names[] = {"ferry", "mmap"};
enum { LAYOUT_SEQ, LAYOUT_RANDOM };
static const char *const layout_names[] = {"seq", "random"};

typedef struct options {
    size_t sizes[MAX_LIST], nsizes;
    size_t batches[MAX_LIST], nbatches;
    size_t iters, warmup; /* 0: automatic */
    bool warmup_set;
    bool do_write, do_read, check, progress_thread;
    int scheme, world, rank, threads, wait_mode, target_mode, alloc, layout;
    ferry_mem_kind_t init_mem, target_mem;
    const char *csv_path, *json_path, *store_url;
    bool mem_set; /* --initiator-mem or --target-mem was given */
    size_t prepare_n; /* 0: not in --prepare-bench mode */
    bool memcpy_mode;
    int gpu; /* the device of a rank's GPU memory; -1: rank modulo the count */
} options_t;

/* A result row: nixlbench's columns, in its order. */
enum { BW, AVG_LAT, AVG_PREP, P99_PREP, AVG_POST, P99_POST, AVG_TX, P99_TX,
       NCOLS };
static const char *const col_names[NCOLS] = {
    "B/W (GB/Sec)", "Avg Lat. (us)", "Avg Prep (us)", "P99 Prep (us)",
    "Avg Post (us)", "P99 Post (us)", "Avg Tx (us)", "P99 Tx (us)"};
static const char *const col_keys[NCOLS] = {
    "bw_gbps", "avg_lat_us", "avg_prep_us", "p99_prep_us",
    "avg_post_us", "p99_post_us", "avg_tx_us", "p99_tx_us"};

typedef struct result {
    const char *op; /* "WRITE", "READ", or "MEMCPY" for --memcpy */
    size_t size, batch, iters;
    double v[NCOLS];
} result_t;

/* What a rank publishes per step; rank 0 combines them. Means are kept as
 * sums and counts so that the combined mean is exact; the combined 99th
 * percentile is the largest of the ranks' (exact with one initiator). */
typedef struct rank_res {
    double bytes, loop_ns;
    double prep_sum, prep_n, prep_p99;
    double post_sum, post_n, post_p99;
    double tx_sum, tx_n, tx_p99;
} rank_res_t;

/* A command to a target for --check, and its answer. */
enum { CMD_FILL = 1, CMD_VERIFY };

typedef struct cmd {
    uint32_t cmd;
    uint32_t pad;
    uint64_t seed, off, len; /* the pattern; the range of the target's buffer */
} cmd_t;

typedef struct ack {
    uint64_t bad; /* len if every byte matched, else the first wrong offset */
} ack_t;

static int g_rank = -1;

static const char *op_name(ferry_xfer_op_t op)
{
    return op == FERRY_OP_WRITE ? "WRITE" : "READ";
}
static const char *const kind_names[] = {"auto", "host", "cuda"};

/* ---- Helpers ------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, g_rank >= 0 ? "ferry-bench[rank %d]: " : "ferry-bench: ",
            g_rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Every ferry error ends the run with the call, its status and the detail
 * text, which is what the lead needs to find the fault. */
#define CHECK(call)                                                            \
    do {                                                                       \
        ferry_status_t st_ = (call);                                           \
        if (st_ < 0) {                                                         \
            die("%s: %s (%s)", #call, ferry_status_str(st_),                   \
                ferry_last_error());                                           \
        }                                                                      \
    } while (0)

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * The timed loops' clock. On x86 it is the time-stamp counter, which costs
 * about 10 ns here against clock_gettime()'s 23 on this VM (three readings
 * an iteration were 5% of a 64 KiB transfer's time), calibrated against
 * CLOCK_MONOTONIC at start; elsewhere it is CLOCK_MONOTONIC itself.
 * ucx_perftest times its loops with the same counter.
 */
static double g_ns_per_tick = 1.0;

static inline uint64_t ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return now_ns();
#endif
}

static void ticks_calibrate(void)
{
#if defined(__x86_64__) || defined(__i386__)
    uint64_t n0 = now_ns(), t0 = ticks(), n1, t1;

    nanosleep(&(struct timespec){.tv_nsec = 20000000}, NULL);
    n1 = now_ns();
    t1 = ticks();
    g_ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

static uint64_t ticks_ns(uint64_t t)
{
    return (uint64_t)((double)t * g_ns_per_tick + 0.5);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (p == NULL) {
        die("out of memory");
    }
    return p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts samples in place; returns the nearest-rank 99th percentile. */
static uint64_t p99(uint64_t *v, size_t n)
{
    size_t rank = (99 * n + 99) / 100; /* ceil(0.99 n), n >= 1 */

    qsort(v, n, sizeof(*v), cmp_u64);
    return v[rank - 1];
}

static double sum_u64(const uint64_t *v, size_t n)
{
    double sum = 0;

    for (size_t i = 0; i < n; i++) {
        sum += (double)v[i];
    }
    return sum;
}

/* ---- Buffers of a memory kind --------------------------------------------- */

typedef struct bench_buf {
    ferry_mem_kind_t kind;
    int device; /* GPU memory's */
    bool from_ferry; /* ferry_mem_alloc, else mmap */
    uint8_t *p;
    size_t len;
} bench_buf_t;

/*
 * Allocates len bytes of the given kind: the one place that knows how. Host
 * memory comes from ferry_mem_alloc() or, with --alloc mmap, from an
 * anonymous mapping; other kinds from ferry_mem_alloc(), which refuses them
 * with its reason where the build cannot allocate them.
 */
static void bench_alloc(ferry_agent_t *agent, ferry_mem_kind_t kind, int alloc,
                        size_t len, bench_buf_t *b)
{
    void *p;
    ferry_status_t st;

    *b = (bench_buf_t){.kind = kind, .len = len};
    if (kind == FERRY_MEM_HOST && alloc == ALLOC_MMAP) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
        if (p == MAP_FAILED) {
            die("mmap of %zu bytes: %s", len, strerror(errno));
        }
    } else {
        st = ferry_mem_alloc(agent, len, kind, &p);
        if (st != FERRY_OK) {
            die("allocating %zu B of %s memory: %s (%s)", len, kind_names[kind],
                ferry_status_str(st), ferry_last_error());
        }
        b->from_ferry = true;
    }
    b->p = p;
    if (kind == FERRY_MEM_HOST) {
        /* Touching it now keeps page faults out of the timed loops. */
        memset(b->p, 0xa5, len);
    }
}

static void bench_free(ferry_agent_t *agent, bench_buf_t *b)
{
    if (b->from_ferry) {
        CHECK(ferry_mem_free(agent, b->p));
    } else {
        munmap(b->p, b->len);
    }
}

/* ---- Data pattern for --check -------------------------------------------- */

/* The byte at offset off of pattern seed. The seed changes with every
 * iteration, step, rank, thread and target, so that stale data from an
 * earlier post or another writer never passes. */
static uint8_t pattern_byte(uint64_t seed, uint64_t off)
{
    uint64_t x = (seed ^ (off >> 3)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return (uint8_t)(x >> ((off & 7) * 8));
}

/*
 * GPU memory: a rank's lives on one device (--gpu), whose primary context
 * is made current while ferry_mem_alloc() allocates it (ferry allocates on
 * the current context's device) and while --check fills and reads it, with
 * the driver's cuMemcpyHtoD/DtoH. The benchmark links only the public
 * library, so it loads these few entry points itself (at the driver API
 * version the library uses, 12.0).
 */
static struct {
    pthread_once_t once;
    int (*htod)(uint64_t dst, const void *src, size_t n);
    int (*dtoh)(void *dst, uint64_t src, size_t n);
    int (*set_current)(void *ctx);
    int (*sync)(void);
    int (*retain)(void **ctx, int dev);
    int (*count)(int *n);
    void *ctx;
} g_cu = {PTHREAD_ONCE_INIT, NULL, NULL, NULL, NULL, NULL, NULL, NULL};

static void cuda_load(void)
{
    int (*getproc)(const char *, void **, int, uint64_t);
    int (*init)(unsigned);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);

    if (lib == NULL || (*(void **)&getproc = dlsym(lib, "cuGetProcAddress")) == NULL ||
        getproc("cuInit", (void **)&init, 12000, 0) != 0 || init(0) != 0 ||
        getproc("cuMemcpyHtoD", (void **)&g_cu.htod, 12000, 0) != 0 ||
        getproc("cuMemcpyDtoH", (void **)&g_cu.dtoh, 12000, 0) != 0 ||
        getproc("cuCtxSetCurrent", (void **)&g_cu.set_current, 12000, 0) != 0 ||
        getproc("cuCtxSynchronize", (void **)&g_cu.sync, 12000, 0) != 0 ||
        getproc("cuDeviceGetCount", (void **)&g_cu.count, 12000, 0) != 0 ||
        getproc("cuDevicePrimaryCtxRetain", (void **)&g_cu.retain, 12000, 0) != 0) {
        g_cu.htod = NULL;
    }
}

/* Makes the device of this rank's GPU memory current on the calling thread
 * (its context chosen on the first call); returns the device. Without a
 * driver it returns 0 and leaves ferry_mem_alloc() to say why. */
static int cuda_use(const options_t *o)
{
    static int dev = -1;

    pthread_once(&g_cu.once, cuda_load);
    if (g_cu.htod == NULL) {
        return 0;
    }
    if (dev < 0) {
        int n = 0;

        if (g_cu.count(&n) != 0 || n < 1) {
            die("GPU memory: no CUDA device");
        }
        dev = o->gpu >= 0 ? o->gpu : o->rank % n;
        if (dev >= n) {
            die("--gpu %d: this host has %d CUDA device(s)", dev, n);
        }
        if (g_cu.retain(&g_cu.ctx, dev) != 0) {
            die("GPU memory: no context for device %d", dev);
        }
    }
    if (g_cu.set_current(g_cu.ctx) != 0) {
        die("GPU memory: cannot make device %d current", dev);
    }
    return dev;
}

/* Copies between the host and GPU memory (to_gpu: host -> GPU), complete
 * when it returns: a copy from pageable memory may return before its DMA
 * ends, and a peer process reads the bytes next. The context is current
 * already (cuda_use() ran when the memory was allocated). */
static void cuda_copy(bool to_gpu, void *host, uint64_t gpu, size_t n)
{
    if (g_cu.htod == NULL) {
        die("--check on GPU memory: cannot load the CUDA driver's copies");
    }
    if (g_cu.set_current(g_cu.ctx) != 0 ||
        (to_gpu ? g_cu.htod(gpu, host, n) : g_cu.dtoh(host, gpu, n)) != 0 ||
        g_cu.sync() != 0) {
        die("--check on GPU memory: a CUDA copy of %zu B failed", n);
    }
}

/* Writes the pattern (fill) or returns the first offset that differs from
 * it, or len if none does; GPU memory through a host copy. */
static size_t pattern(const bench_buf_t *b, size_t at, size_t len,
                      uint64_t seed, uint64_t pat_off, bool fill)
{
    uint8_t *buf = b->p + at;
    size_t bad = len;

    if (b->kind != FERRY_MEM_HOST) {
        uint8_t *host = xcalloc(len ? len : 1, 1);
        bench_buf_t hb = {.kind = FERRY_MEM_HOST, .p = host, .len = len};

        if (!fill) {
            cuda_copy(false, host, (uint64_t)(uintptr_t)buf, len);
        }
        bad = pattern(&hb, 0, len, seed, pat_off, fill);
        if (fill) {
            cuda_copy(true, host, (uint64_t)(uintptr_t)buf, len);
        }
        free(host);
        return bad;
    }
    for (size_t i = 0; i < len; i++) {
        if (fill) {
            buf[i] = pattern_byte(seed, pat_off + i);
        } else if (buf[i] != pattern_byte(seed, pat_off + i)) {
            return i;
        }
    }
    return len;
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

/* A fixed shuffle (Fisher-Yates) of n block slots, as scattered as a KV
 * cache's block table, so that no two blocks neighbour at the destination
 * as they do at the source and none can be merged. */
static size_t *shuffled_slots(size_t n, uint64_t h)
{
    size_t *slot = xcalloc(n, sizeof(*slot));

    for (size_t i = 0; i < n; i++) {
        slot[i] = i;
    }
    for (size_t i = n; i > 1; i--) {
        h = mix(h, i);
        size_t j = (size_t)(h % i), v = slot[i - 1];
        slot[i - 1] = slot[j];
        slot[j] = v;
    }
    return slot;
}

/* ---- Store helpers ------------------------------------------------------- */

typedef struct job {
    ferry_store_t *store;
    char prefix[48]; /* this run's keys: "ferry-bench/<generation>/" */
} job_t;

static void key_fmt(const job_t *j, char *key, size_t cap, const char *fmt,
                    va_list ap)
{
    int n = snprintf(key, cap, "%s", j->prefix);

    vsnprintf(key + n, cap - (size_t)n, fmt, ap);
}

#define KEY_MAX 128

static void kv_set(const job_t *j, const void *v, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void kv_set(const job_t *j, const void *v, size_t len, const char *fmt, ...)
{
    char key[KEY_MAX];
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_set(j->store, key, v, len));
}

/* Waits for a key and returns its value (free with ferry_store_free). */
static void *kv_get(const job_t *j, size_t *len_p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void *kv_get(const job_t *j, size_t *len_p, const char *fmt, ...)
{
    char key[KEY_MAX];
    void *v;
    size_t len;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_get(j->store, key, &v, len_p != NULL ? len_p : &len));
    return v;
}

/* Like kv_get for a fixed-size value, which it copies to out. */
static void kv_get_exact(const job_t *j, void *out, size_t len, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));
static void kv_get_exact(const job_t *j, void *out, size_t len, const char *fmt,
                         ...)
{
    char key[KEY_MAX];
    void *v;
    size_t got;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_get(j->store, key, &v, &got));
    if (got != len) {
        die("store key %s holds %zu bytes, expected %zu", key, got, len);
    }
    memcpy(out, v, len);
    ferry_store_free(v);
}

static int64_t kv_add(const job_t *j, int64_t delta, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int64_t kv_add(const job_t *j, int64_t delta, const char *fmt, ...)
{
    char key[KEY_MAX];
    int64_t v;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_add(j->store, key, delta, &v));
    return v;
}

/* Whether a key exists, without waiting. */
static bool kv_has(const job_t *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool kv_has(const job_t *j, const char *fmt, ...)
{
    char key[KEY_MAX];
    const char *keys[1] = {key};
    int ready;
    va_list ap;

    va_start(ap, fmt);
    key_fmt(j, key, sizeof(key), fmt, ap);
    va_end(ap);
    CHECK(ferry_store_check(j->store, keys, 1, &ready));
    return ready != 0;
}

/* All n members meet: each adds one; the last one opens the gate. */
static void barrier(const job_t *j, int n, const char *name)
{
    if (kv_add(j, 1, "%s/count", name) == n) {
        kv_set(j, "", 0, "%s/open", name);
    }
    ferry_store_free(kv_get(j, NULL, "%s/open", name));
}

/* ---- Roles --------------------------------------------------------------- */

typedef struct topo {
    int ntargets, targets[MAX_RANKS]; /* whom this rank initiates to */
    int nsources, sources[MAX_RANKS]; /* who initiates to this rank */
    int ninitiators;                  /* initiating ranks in the job */
} topo_t;

static bool initiates(const options_t *o, int r)
{
    switch (o->scheme) {
    case SCHEME_PAIRWISE: return r % 2 == 0;
    case SCHEME_MANYTOONE: return r < o->world - 1;
    default: return r == 0;
    }
}

static bool initiates_to(const options_t *o, int from, int to)
{
    switch (o->scheme) {
    case SCHEME_PAIRWISE: return from % 2 == 0 && to == from + 1;
    case SCHEME_MANYTOONE: return from < o->world - 1 && to == o->world - 1;
    default: return from == 0 && to > 0;
    }
}

static void topo_make(const options_t *o, int rank, topo_t *t)
{
    memset(t, 0, sizeof(*t));
    for (int r = 0; r < o->world; r++) {
        if (initiates_to(o, rank, r)) {
            t->targets[t->ntargets++] = r;
        }
        if (initiates_to(o, r, rank)) {
            t->sources[t->nsources++] = r;
        }
        t->ninitiators += initiates(o, r);
    }
}

/* The index of src among dst's sources: which slice of dst's buffer is its. */
static int slot_of(const options_t *o, int src, int dst)
{
    int k = 0;

    for (int r = 0; r < src; r++) {
        k += initiates_to(o, r, dst);
    }
    return k;
}

/* ---- A rank -------------------------------------------------------------- */

typedef struct rank_ctx {
    const options_t *o;
    job_t job;
    topo_t topo;
    ferry_agent_t *agent;
    bench_buf_t buf;
    ferry_mem_t *mem;
    size_t span; /* one slice: the largest block size times batch */
    ferry_peer_t *peers[MAX_RANKS]; /* by target index */
    uint64_t raddr[MAX_RANKS];      /* each target's buffer */
    int32_t rdev[MAX_RANKS];        /* and its device, for GPU memory */
    uint64_t *cmd_seq; /* --check commands sent, by thread and target */
} rank_ctx_t;

/* Thread t's slice for target k: its offset in this rank's buffer, and in
 * the target's (the slices of one source's threads follow each other). */
static uint64_t local_slice(const rank_ctx_t *rc, int t, int k)
{
    return ((uint64_t)t * (uint64_t)rc->topo.ntargets + (uint64_t)k) * rc->span;
}

static uint64_t remote_slice(const rank_ctx_t *rc, int t, int k)
{
    const options_t *o = rc->o;

    return ((uint64_t)slot_of(o, o->rank, rc->topo.targets[k]) * (uint64_t)o->threads +
            (uint64_t)t) * rc->span;
}

/* The metadata a rank publishes: its buffer, then its blob. */
typedef struct md_hdr {
    uint64_t addr, len, blob_len;
    int64_t device;
} md_hdr_t;

/* Loads rank r's blob; its buffer's address and device go to addr_p and
 * dev_p unless they are NULL. */
static void load_peer(rank_ctx_t *rc, int r, ferry_peer_t **peer_p,
                      uint64_t *addr_p, int32_t *dev_p)
{
    size_t len;
    uint8_t *v = kv_get(&rc->job, &len, "md/%d", r);
    md_hdr_t h;

    if (len < sizeof(h)) {
        die("short metadata from rank %d", r);
    }
    memcpy(&h, v, sizeof(h));
    if (h.blob_len != len - sizeof(h)) {
        die("inconsistent metadata from rank %d", r);
    }
    CHECK(ferry_peer_load(rc->agent, v + sizeof(h), h.blob_len, peer_p));
    if (addr_p != NULL) {
        *addr_p = h.addr;
    }
    if (dev_p != NULL) {
        *dev_p = (int32_t)h.device;
    }
    ferry_store_free(v);
}

/* Connects to the store, creates the agent and the buffer, and swaps
 * metadata with the ranks this one talks to (targets load their sources'
 * blobs too, as real users of one-sided transfers do). */
static void rank_setup(rank_ctx_t *rc, const options_t *o)
{
    ferry_store_params_t sp = {.field_mask = FERRY_STORE_PARAM_TIMEOUT,
                               .timeout_ns = STORE_TIMEOUT_NS};
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME};
    size_t max_size = 0, max_batch = 0, slices, blob_len;
    char name[32];
    void *blob;
    bool init = initiates(o, o->rank);

    memset(rc, 0, sizeof(*rc));
    rc->o = o;
    topo_make(o, o->rank, &rc->topo);
    for (size_t i = 0; i < o->nsizes; i++) {
        max_size = o->sizes[i] > max_size ? o->sizes[i] : max_size;
    }
    for (size_t i = 0; i < o->nbatches; i++) {
        max_batch = o->batches[i] > max_batch ? o->batches[i] : max_batch;
    }
    slices = (size_t)o->threads *
             (size_t)(init ? rc->topo.ntargets : rc->topo.nsources);
    if (max_size > SIZE_MAX / max_batch / slices) {
        die("block size x batch x threads x peers overflows");
    }
    rc->span = max_size * max_batch;

    CHECK(ferry_store_connect(o->store_url, &sp, &rc->job.store));
    /* A run's keys live under a generation number, so that a store used
     * before (a long-lived ferry-store) holds nothing this run misreads. */
    int64_t arrived;
    CHECK(ferry_store_add(rc->job.store, "ferry-bench/arrivals", 1, &arrived));
    snprintf(rc->job.prefix, sizeof(rc->job.prefix), "ferry-bench/%" PRId64 "/",
             (arrived - 1) / o->world);

    snprintf(name, sizeof(name), "ferry-bench-rank%d", o->rank);
    ap.name = name;
    if (o->progress_thread || (!init && o->target_mode == TARGET_THREAD)) {
        ap.field_mask |= FERRY_AGENT_PARAM_PROGRESS_THREAD;
        ap.progress_thread = 1;
    }
    CHECK(ferry_agent_create(&ap, &rc->agent));
    ferry_mem_kind_t kind = init ? o->init_mem : o->target_mem;
    int dev = kind == FERRY_MEM_CUDA ? cuda_use(o) : 0;

    bench_alloc(rc->agent, kind, o->alloc, rc->span * slices, &rc->buf);
    rc->buf.device = dev;
    ferry_desc_t d = {.addr = (uintptr_t)rc->buf.p, .len = rc->buf.len,
                      .kind = rc->buf.kind, .device = dev};
    CHECK(ferry_mem_register(rc->agent, &d, 1, &rc->mem));
    CHECK(ferry_md_pack(rc->agent, &blob, &blob_len));
    md_hdr_t h = {(uintptr_t)rc->buf.p, rc->buf.len, blob_len, dev};
    uint8_t *v = xcalloc(1, sizeof(h) + blob_len);
    memcpy(v, &h, sizeof(h));
    memcpy(v + sizeof(h), blob, blob_len);
    kv_set(&rc->job, v, sizeof(h) + blob_len, "md/%d", o->rank);
    free(v);
    ferry_md_free(blob);

    for (int k = 0; k < rc->topo.ntargets; k++) {
        load_peer(rc, rc->topo.targets[k], &rc->peers[k], &rc->raddr[k], &rc->rdev[k]);
    }
    rc->cmd_seq = xcalloc((size_t)o->threads * (size_t)rc->topo.ntargets,
                          sizeof(*rc->cmd_seq));
    for (int k = 0; k < rc->topo.nsources; k++) {
        ferry_peer_t *p;
        load_peer(rc, rc->topo.sources[k], &p, NULL, NULL);
    }
}

static void rank_teardown(rank_ctx_t *rc)
{
    CHECK(ferry_mem_deregister(rc->mem));
    bench_free(rc->agent, &rc->buf);
    ferry_agent_destroy(rc->agent);
    ferry_store_close(rc->job.store);
    free(rc->cmd_seq);
}

/* ---- Targets ------------------------------------------------------------- */

/* Serves one command from (source rank src, its thread t) if it is there;
 * returns whether it was. */
static bool serve_command(rank_ctx_t *rc, int src, int t, uint64_t *seq)
{
    const job_t *j = &rc->job;
    int me = rc->o->rank;
    cmd_t c;
    ack_t a;

    if (!kv_has(j, "cmd/%d/%d/%d/%" PRIu64, me, src, t, *seq)) {
        return false;
    }
    kv_get_exact(j, &c, sizeof(c), "cmd/%d/%d/%d/%" PRIu64, me, src, t, *seq);
    if (c.off > rc->buf.len || c.len > rc->buf.len - c.off) {
        die("command from rank %d for bytes [%" PRIu64 ", +%" PRIu64
            ") outside the buffer", src, c.off, c.len);
    }
    /* A call on the agent orders a progress thread's copies before ours. */
    ferry_agent_progress(rc->agent);
    a.bad = pattern(&rc->buf, c.off, c.len, c.seed, 0, c.cmd == CMD_FILL);
    kv_set(j, &a, sizeof(a), "ack/%d/%d/%d/%" PRIu64, me, src, t, *seq);
    (*seq)++;
    return true;
}

/* A target rank: drives its agent as --target says and serves commands
 * until every source has said it is done. */
static void run_target(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    const topo_t *tp = &rc->topo;
    int fd = -1, ndone = 0, nthreads = o->threads;
    uint64_t *seq = xcalloc((size_t)tp->nsources * (size_t)nthreads, sizeof(*seq));
    bool *done = xcalloc((size_t)tp->nsources, sizeof(*done));
    int64_t rung = 0;
    uint64_t next_poll = 0, last_cmd = 0;

    if (o->target_mode == TARGET_FD && !o->progress_thread) {
        CHECK(ferry_agent_fd(rc->agent, &fd));
    }
    while (ndone < tp->nsources) {
        uint64_t now = now_ns();

        if (o->target_mode == TARGET_SPIN && !o->progress_thread) {
            ferry_agent_progress(rc->agent);
        } else if (fd >= 0) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            while (ferry_agent_progress(rc->agent) == FERRY_IN_PROGRESS) {
            }
            (void)poll(&pfd, 1, 1);
        } else {
            nanosleep(&(struct timespec){.tv_nsec = (long)TARGET_POLL_BUSY_NS},
                      NULL);
        }
        if (now < next_poll) {
            continue;
        }
        next_poll = now + (now - last_cmd < TARGET_BUSY_NS ? TARGET_POLL_BUSY_NS
                                                           : TARGET_POLL_IDLE_NS);
        /* Sources ring a bell after each command and when done, so one
         * round trip tells whether there is anything to look for. */
        int64_t bell = kv_add(&rc->job, 0, "bell/%d", o->rank);
        if (bell == rung) {
            continue;
        }
        rung = bell;
        last_cmd = now;
        for (int s = 0; s < tp->nsources; s++) {
            for (int t = 0; t < nthreads; t++) {
                while (serve_command(rc, tp->sources[s], t,
                                     &seq[s * nthreads + t])) {
                }
            }
            if (!done[s] && kv_has(&rc->job, "done/%d", tp->sources[s])) {
                done[s] = true;
                ndone++;
            }
        }
    }
    free(seq);
    free(done);
}

/* ---- Initiators ---------------------------------------------------------- */

typedef struct step {
    ferry_xfer_op_t op;
    size_t size, batch, iters, warmup;
    unsigned index;
} step_t;

typedef struct thread_ctx {
    rank_ctx_t *rc;
    const step_t *step;
    int t;
    pthread_barrier_t *go;
    uint64_t *prep_v; /* one per target */
    uint64_t *post_v, *tx_v;
    uint64_t loop_ns;
    size_t *slot; /* --layout random: the remote block of local block i */
} thread_ctx_t;

/* Asks target k to fill or verify this thread's slice; returns the ack. */
static uint64_t target_call(thread_ctx_t *tc, int k, uint32_t cmd, uint64_t seed,
                            uint64_t len)
{
    rank_ctx_t *rc = tc->rc;
    int me = rc->o->rank, tgt = rc->topo.targets[k];
    cmd_t c = {.cmd = cmd, .seed = seed, .off = remote_slice(rc, tc->t, k), .len = len};
    uint64_t seq = rc->cmd_seq[tc->t * rc->topo.ntargets + k]++;
    ack_t a;

    kv_set(&rc->job, &c, sizeof(c), "cmd/%d/%d/%d/%" PRIu64, tgt, me, tc->t, seq);
    kv_add(&rc->job, 1, "bell/%d", tgt);
    kv_get_exact(&rc->job, &a, sizeof(a), "ack/%d/%d/%d/%" PRIu64, tgt, me, tc->t,
                 seq);
    return a.bad;
}

static void report_mismatch(thread_ctx_t *tc, int k, const char *where,
                            size_t iter, uint64_t off, uint64_t seed)
{
    const step_t *s = tc->step;

    die("--check: %s data wrong after %s of %zu x %zu B to rank %d (thread %d), "
        "iteration %zu: first mismatch at byte %" PRIu64 " (descriptor %" PRIu64
        ", offset %" PRIu64 "), expected 0x%02x",
        where, op_name(s->op), s->batch, s->size,
        tc->rc->topo.targets[k], tc->t, iter, off, off / s->size, off % s->size,
        pattern_byte(seed, off));
}

static void wait_done(const options_t *o, ferry_xfer_t *x)
{
    ferry_status_t st;

    if (o->wait_mode == WAIT_BLOCK) {
        st = ferry_xfer_wait(x, WAIT_TIMEOUT_NS);
    } else {
        /* The clock is read only once a transfer has been tested a
         * thousand times: most finish before, and reading it on every
         * post would cost a small transfer several percent. */
        uint64_t deadline = 0;
        unsigned n = 0;
        while ((st = ferry_xfer_test(x)) == FERRY_IN_PROGRESS) {
            if ((++n & 1023) != 0) {
                continue;
            }
            if (deadline == 0) {
                deadline = now_ns() + WAIT_TIMEOUT_NS;
            } else if (now_ns() > deadline) {
                die("a transfer took longer than %lld s",
                    WAIT_TIMEOUT_NS / 1000000000LL);
            }
        }
    }
    if (st != FERRY_OK) {
        die("ferry_xfer_wait: %s (%s)", ferry_status_str(st), ferry_last_error());
    }
}

/* Fills or verifies this thread's local slice at at, block by block where
 * blocks are shuffled, with the pattern the target's slice has in its own
 * order. Returns the first wrong local offset, or the span. */
static size_t local_pattern(thread_ctx_t *tc, size_t at, uint64_t seed, bool fill)
{
    const step_t *s = tc->step;
    const bench_buf_t *b = &tc->rc->buf;

    if (tc->slot == NULL) {
        return pattern(b, at, s->size * s->batch, seed, 0, fill);
    }
    for (size_t i = 0; i < s->batch; i++) {
        size_t bad = pattern(b, at + i * s->size, s->size, seed,
                             tc->slot[i] * s->size, fill);
        if (bad != s->size) {
            return i * s->size + bad;
        }
    }
    return s->size * s->batch;
}

/* Fills the sources of one iteration (outside the timing), or, after it,
 * verifies the destinations. */
static void check_iter(thread_ctx_t *tc, size_t it, bool after)
{
    rank_ctx_t *rc = tc->rc;
    const step_t *s = tc->step;
    size_t span = s->size * s->batch;

    for (int k = 0; k < rc->topo.ntargets; k++) {
        size_t at = (size_t)local_slice(rc, tc->t, k);
        uint64_t seed = mix(mix(mix(mix(s->index, it), (uint64_t)rc->o->rank),
                                (uint64_t)tc->t), (uint64_t)k);
        uint64_t bad;

        if (s->op == FERRY_OP_WRITE && !after) {
            local_pattern(tc, at, seed, true);
        } else if (s->op == FERRY_OP_READ && !after) {
            target_call(tc, k, CMD_FILL, seed, span);
        } else if (s->op == FERRY_OP_WRITE) {
            bad = target_call(tc, k, CMD_VERIFY, seed, span);
            if (bad != span) {
                report_mismatch(tc, k, "remote", it, bad, seed);
            }
        } else {
            bad = local_pattern(tc, at, seed, false);
            if (bad != span) {
                report_mismatch(tc, k, "local", it, bad, seed);
            }
        }
    }
}

/* One thread of an initiator for one step: prepare a request per target,
 * warm up, meet the others, then the timed posts. */
static void *initiator_thread(void *arg)
{
    thread_ctx_t *tc = arg;
    rank_ctx_t *rc = tc->rc;
    const options_t *o = rc->o;
    const step_t *s = tc->step;
    int nt = rc->topo.ntargets;
    ferry_xfer_t *x[MAX_RANKS];
    ferry_desc_t *l = xcalloc(s->batch, sizeof(*l));
    ferry_desc_t *r = xcalloc(s->batch, sizeof(*r));

    if (o->layout == LAYOUT_RANDOM) {
        tc->slot = shuffled_slots(s->batch, mix(s->index, (uint64_t)tc->t));
    }
    for (int k = 0; k < nt; k++) {
        uint64_t lbase = (uintptr_t)rc->buf.p + local_slice(rc, tc->t, k);
        uint64_t rbase = rc->raddr[k] + remote_slice(rc, tc->t, k);
        for (size_t i = 0; i < s->batch; i++) {
            l[i] = (ferry_desc_t){.addr = lbase + i * s->size, .len = s->size,
                                  .kind = o->init_mem, .device = rc->buf.device};
            size_t slot = tc->slot != NULL ? tc->slot[i] : i;
            r[i] = (ferry_desc_t){.addr = rbase + slot * s->size, .len = s->size,
                                  .kind = o->target_mem, .device = rc->rdev[k]};
        }
        uint64_t t0 = now_ns();
        CHECK(ferry_xfer_prepare(rc->agent, s->op, l, s->batch, rc->peers[k], r,
                                 s->batch, NULL, &x[k]));
        tc->prep_v[k] = now_ns() - t0;
    }
    free(l);
    free(r);

    /* Back to back, an iteration starts when the previous one ended, so
     * the clock is read twice per iteration: after posting and after
     * completion. Samples are kept in ticks until the loop is over. */
    uint64_t start = 0, end = 0;
    bool chained = false;
    for (size_t it = 0; it < s->warmup + s->iters; it++) {
        bool timed = it >= s->warmup;
        size_t n = it - s->warmup; /* only meaningful when timed */

        if (it == s->warmup) {
            /* Every thread of every initiator starts timing together. */
            pthread_barrier_wait(tc->go);
            start = ticks();
            end = start;
            chained = true;
        }
        if (o->check) {
            check_iter(tc, it, false);
            chained = false;
        }
        uint64_t t0 = chained ? end : ticks();
        for (int k = 0; k < nt; k++) {
            ferry_status_t st = ferry_xfer_post(x[k]);
            if (st < 0) {
                die("ferry_xfer_post: %s (%s)", ferry_status_str(st),
                    ferry_last_error());
            }
        }
        uint64_t t1 = ticks();
        for (int k = 0; k < nt; k++) {
            wait_done(o, x[k]);
        }
        end = ticks();
        chained = true;
        if (timed) {
            tc->post_v[n] = t1 - t0;
            tc->tx_v[n] = end - t0;
        }
        if (o->check) {
            check_iter(tc, it, true);
            chained = false;
        }
    }
    tc->loop_ns = ticks_ns(end - start);
    for (size_t n = 0; n < s->iters; n++) {
        tc->post_v[n] = ticks_ns(tc->post_v[n]);
        tc->tx_v[n] = ticks_ns(tc->tx_v[n]);
    }
    /* With --check the loop's wall time includes the fills and verifies, so
     * the bandwidth comes from the transfers' own times instead. */
    if (o->check) {
        tc->loop_ns = (uint64_t)sum_u64(tc->tx_v, s->iters);
    }
    for (int k = 0; k < nt; k++) {
        ferry_xfer_release(x[k]);
    }
    free(tc->slot);
    return NULL;
}

/* Runs one step on this rank's threads and returns its published figures. */
static rank_res_t run_step(rank_ctx_t *rc, const step_t *s)
{
    const options_t *o = rc->o;
    int nthr = o->threads, nt = rc->topo.ntargets;
    thread_ctx_t *tcs = xcalloc((size_t)nthr, sizeof(*tcs));
    pthread_t *tids = xcalloc((size_t)nthr, sizeof(*tids));
    pthread_barrier_t go;
    rank_res_t res = {0};
    size_t nsamples = (size_t)nthr * s->iters;
    uint64_t *post = xcalloc(nsamples, sizeof(*post));
    uint64_t *tx = xcalloc(nsamples, sizeof(*tx));
    uint64_t *prep = xcalloc((size_t)nthr * (size_t)nt, sizeof(*prep));
    char name[32];

    /* The initiating ranks meet before their threads start, and the threads
     * of a rank meet again after their warm-up. */
    snprintf(name, sizeof(name), "step%u", s->index);
    barrier(&rc->job, rc->topo.ninitiators, name);
    pthread_barrier_init(&go, NULL, (unsigned)nthr);
    for (int t = 0; t < nthr; t++) {
        tcs[t] = (thread_ctx_t){.rc = rc, .step = s, .t = t, .go = &go,
                                .prep_v = prep + (size_t)t * (size_t)nt,
                                .post_v = post + (size_t)t * s->iters,
                                .tx_v = tx + (size_t)t * s->iters};
        if (nthr == 1) {
            initiator_thread(&tcs[0]);
        } else if (pthread_create(&tids[t], NULL, initiator_thread, &tcs[t]) != 0) {
            die("pthread_create failed");
        }
    }
    for (int t = 0; t < nthr && nthr > 1; t++) {
        pthread_join(tids[t], NULL);
    }
    pthread_barrier_destroy(&go);

    for (int t = 0; t < nthr; t++) {
        res.loop_ns = (double)tcs[t].loop_ns > res.loop_ns ? (double)tcs[t].loop_ns
                                                          : res.loop_ns;
    }
    res.bytes = (double)s->size * (double)s->batch * (double)nt * (double)nthr *
                (double)s->iters;
    res.prep_n = (double)nthr * nt;
    res.prep_sum = sum_u64(prep, (size_t)nthr * (size_t)nt);
    res.prep_p99 = (double)p99(prep, (size_t)nthr * (size_t)nt);
    res.post_n = res.tx_n = (double)nsamples;
    res.post_sum = sum_u64(post, nsamples);
    res.post_p99 = (double)p99(post, nsamples);
    res.tx_sum = sum_u64(tx, nsamples);
    res.tx_p99 = (double)p99(tx, nsamples);
    free(tcs);
    free(tids);
    free(post);
    free(tx);
    free(prep);
    return res;
}

/* Rank 0: combines every initiator's figures into the row. */
static result_t combine(rank_ctx_t *rc, const step_t *s, const rank_res_t *mine)
{
    result_t row = {.op = op_name(s->op), .size = s->size, .batch = s->batch,
                    .iters = s->iters};
    rank_res_t sum = {0};

    for (int r = 0; r < rc->o->world; r++) {
        rank_res_t x;

        if (!initiates(rc->o, r)) {
            continue;
        }
        if (r == rc->o->rank) {
            x = *mine;
        } else {
            kv_get_exact(&rc->job, &x, sizeof(x), "res/%u/%d", s->index, r);
        }
        sum.bytes += x.bytes;
        sum.loop_ns = x.loop_ns > sum.loop_ns ? x.loop_ns : sum.loop_ns;
        sum.prep_sum += x.prep_sum;
        sum.prep_n += x.prep_n;
        sum.prep_p99 = x.prep_p99 > sum.prep_p99 ? x.prep_p99 : sum.prep_p99;
        sum.post_sum += x.post_sum;
        sum.post_n += x.post_n;
        sum.post_p99 = x.post_p99 > sum.post_p99 ? x.post_p99 : sum.post_p99;
        sum.tx_sum += x.tx_sum;
        sum.tx_n += x.tx_n;
        sum.tx_p99 = x.tx_p99 > sum.tx_p99 ? x.tx_p99 : sum.tx_p99;
    }
    row.v[BW] = sum.bytes / sum.loop_ns;
    row.v[AVG_LAT] = sum.loop_ns / (double)s->iters / 1e3;
    row.v[AVG_PREP] = sum.prep_sum / sum.prep_n / 1e3;
    row.v[P99_PREP] = sum.prep_p99 / 1e3;
    row.v[AVG_POST] = sum.post_sum / sum.post_n / 1e3;
    row.v[P99_POST] = sum.post_p99 / 1e3;
    row.v[AVG_TX] = sum.tx_sum / sum.tx_n / 1e3;
    row.v[P99_TX] = sum.tx_p99 / 1e3;
    return row;
}

/* ---- Output -------------------------------------------------------------- */

static void print_header(const char *title)
{
    printf("\n%s\n%-16s%-12s", title, "Block Size (B)", "Batch Size");
    for (int i = 0; i < NCOLS; i++) {
        printf(i + 1 < NCOLS ? "%-15s" : "%s\n", col_names[i]);
    }
    for (int i = 0; i < 16 + 12 + 15 * NCOLS - 4; i++) {
        putchar('-');
    }
    putchar('\n');
}

static void print_row(const result_t *r)
{
    printf("%-16zu%-12zu", r->size, r->batch);
    for (int i = 0; i < NCOLS; i++) {
        printf(i + 1 < NCOLS ? "%-15.3f" : "%.3f\n", r->v[i]);
    }
    fflush(stdout);
}

static FILE *open_out(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        die("cannot write %s: %s", path, strerror(errno));
    }
    return f;
}

static void close_out(FILE *f, const char *path)
{
    if (ferror(f) || fclose(f) != 0) {
        die("writing %s failed", path);
    }
}

/* The configuration columns every row carries, for CSV and JSON alike. */
#define CONF_KEYS "op", "initiator_mem", "target_mem", "alloc", "layout", \
                  "scheme", "ranks", "threads", "block_size", \
                  "batch_size", "iters"
static const char *const conf_keys[] = {CONF_KEYS};
enum { NCONF = sizeof(conf_keys) / sizeof(conf_keys[0]) };

/* Writes row r's configuration values as text, JSON-quoted or not. A
 * MEMCPY row is one thread copying within one process. */
static void conf_values(const options_t *o, const result_t *r, bool json,
                        char v[NCONF][32])
{
    const char *q = json ? "\"" : "";
    bool local = strcmp(r->op, "MEMCPY") == 0;

    snprintf(v[0], 32, "%s%s%s", q, r->op, q);
    snprintf(v[1], 32, "%s%s%s", q, kind_names[o->init_mem], q);
    snprintf(v[2], 32, "%s%s%s", q, kind_names[o->target_mem], q);
    snprintf(v[3], 32, "%s%s%s", q, local ? "mmap" : alloc_names[o->alloc], q);
    snprintf(v[4], 32, "%s%s%s", q, layout_names[o->layout], q);
    snprintf(v[5], 32, "%s%s%s", q, local ? "none" : scheme_names[o->scheme], q);
    snprintf(v[6], 32, "%d", local ? 1 : o->world);
    snprintf(v[7], 32, "%d", local ? 1 : o->threads);
    snprintf(v[8], 32, "%zu", r->size);
    snprintf(v[9], 32, "%zu", r->batch);
    snprintf(v[10], 32, "%zu", r->iters);
}

static void write_files(const options_t *o, const result_t *res, size_t n)
{
    char v[NCONF][32];
    FILE *f;

    if (o->csv_path != NULL) {
        f = open_out(o->csv_path);
        for (int c = 0; c < NCONF + NCOLS; c++) {
            fprintf(f, "%s%s", c ? "," : "",
                    c < NCONF ? conf_keys[c] : col_keys[c - NCONF]);
        }
        for (size_t i = 0; i < n; i++) {
            conf_values(o, &res[i], false, v);
            fputc('\n', f);
            for (int c = 0; c < NCONF; c++) {
                fprintf(f, "%s%s", c ? "," : "", v[c]);
            }
            for (int c = 0; c < NCOLS; c++) {
                fprintf(f, ",%.6f", res[i].v[c]);
            }
        }
        fprintf(f, "\n");
        close_out(f, o->csv_path);
    }
    if (o->json_path != NULL) {
        f = open_out(o->json_path);
        fprintf(f, "{\"tool\": \"ferry-bench\", \"ferry_version\": \"%s\", "
                   "\"bw_unit\": \"1e9 B/s\", \"time_unit\": \"us\", "
                   "\"wait\": \"%s\", \"target\": \"%s\", \"progress_thread\": "
                   "%s, \"checked\": %s, \"results\": [",
                ferry_version(), wait_names[o->wait_mode],
                target_names[o->target_mode],
                o->progress_thread ? "true" : "false",
                o->check ? "true" : "false");
        for (size_t i = 0; i < n; i++) {
            conf_values(o, &res[i], true, v);
            fprintf(f, "%s\n  {", i ? "," : "");
            for (int c = 0; c < NCONF; c++) {
                fprintf(f, "%s\"%s\": %s", c ? ", " : "", conf_keys[c], v[c]);
            }
            for (int c = 0; c < NCOLS; c++) {
                fprintf(f, ", \"%s\": %.6f", col_keys[c], res[i].v[c]);
            }
            fprintf(f, "}");
        }
        fprintf(f, "\n]}\n");
        close_out(f, o->json_path);
    }
}

/* ---- A rank's main ------------------------------------------------------- */

static size_t auto_iters(const options_t *o, size_t bytes)
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
static size_t auto_warmup(const options_t *o, size_t iters)
{
    if (o->warmup_set) {
        return o->warmup;
    }
    return iters / 10 ? iters / 10 : 1;
}

static void run_initiator(rank_ctx_t *rc)
{
    const options_t *o = rc->o;
    ferry_xfer_op_t ops[2];
    size_t nops = 0, nres = 0;
    bool lead = o->rank == 0;
    result_t *res = xcalloc(2 * o->nsizes * o->nbatches, sizeof(*res));
    unsigned index = 0;

    if (o->do_write) {
        ops[nops++] = FERRY_OP_WRITE;
    }
    if (o->do_read) {
        ops[nops++] = FERRY_OP_READ;
    }
    if (lead) {
        char gpu[48] = "";

        if (o->init_mem == FERRY_MEM_CUDA || o->target_mem == FERRY_MEM_CUDA) {
            if (o->gpu >= 0) {
                snprintf(gpu, sizeof(gpu), ", GPU memory on device %d", o->gpu);
            } else {
                snprintf(gpu, sizeof(gpu), ", GPU memory on device rank %% count");
            }
        }
        printf("ferry-bench: ferry %s, %s, %d ranks (%d initiating), %d "
               "thread(s) each, %s memory (%s) -> %s memory%s, "
               "wait %s, target %s%s%s; B/W in decimal GB/s\n",
               ferry_version(), scheme_names[o->scheme], o->world,
               rc->topo.ninitiators, o->threads, kind_names[o->init_mem],
               o->alloc == ALLOC_FERRY ? "ferry_mem_alloc" : "mmap",
               kind_names[o->target_mem], gpu, wait_names[o->wait_mode],
               target_names[o->target_mode],
               o->progress_thread ? ", progress threads" : "",
               o->check ? ", every byte checked after every iteration" : "");
    }
    for (size_t i = 0; i < nops; i++) {
        if (lead) {
            char title[128];
            snprintf(title, sizeof(title), "%s, %s memory -> %s memory (%s)",
                     op_name(ops[i]), kind_names[o->init_mem],
                     kind_names[o->target_mem],
                     ops[i] == FERRY_OP_WRITE ? "initiator's to target's"
                                              : "target's to initiator's");
            print_header(title);
        }
        for (size_t si = 0; si < o->nsizes; si++) {
            for (size_t bi = 0; bi < o->nbatches; bi++) {
                step_t s = {.op = ops[i], .size = o->sizes[si],
                            .batch = o->batches[bi], .index = index++};
                s.iters = auto_iters(o, s.size * s.batch);
                s.warmup = auto_warmup(o, s.iters);
                rank_res_t mine = run_step(rc, &s);
                if (lead) {
                    res[nres] = combine(rc, &s, &mine);
                    print_row(&res[nres++]);
                } else {
                    kv_set(&rc->job, &mine, sizeof(mine), "res/%u/%d", s.index,
                           o->rank);
                }
            }
        }
    }
    /* Close the connections while the targets still drive progress, so
     * that closing never waits on a process that has already gone; then
     * tell them. */
    for (int k = 0; k < rc->topo.ntargets; k++) {
        ferry_peer_forget(rc->peers[k]);
        rc->peers[k] = NULL;
    }
    kv_set(&rc->job, "", 0, "done/%d", o->rank);
    for (int k = 0; k < rc->topo.ntargets; k++) {
        kv_add(&rc->job, 1, "bell/%d", rc->topo.targets[k]);
    }
    if (lead) {
        write_files(o, res, nres);
    }
    free(res);
}

static int run_rank(const options_t *o)
{
    rank_ctx_t rc;

    rank_setup(&rc, o);
    if (initiates(o, o->rank)) {
        run_initiator(&rc);
    } else {
        run_target(&rc);
    }
    /* Nobody leaves before everyone is done with everyone's memory. */
    barrier(&rc.job, o->world, "end");
    rank_teardown(&rc);
    return 0;
}

/* ---- --prepare-bench ----------------------------------------------------- */

/* Prepares a WRITE of n 64-byte descriptors within one registered region,
 * against the agent's own blob, and reports the cost per descriptor: the
 * design promises O(log n) lookups, so this should be tens of nanoseconds.
 * The first prepare also connects to the peer, so it is reported apart. */
static int run_prepare_bench(size_t n)
{
    enum { DESC_LEN = 64, RUNS = 5 };
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer;
    void *blob;
    size_t blob_len;
    bench_buf_t buf;
    ferry_desc_t *l = xcalloc(n, sizeof(*l)), *r = xcalloc(n, sizeof(*r));
    uint64_t prep[RUNS + 1], rel[RUNS + 1], prep_sum = 0, rel_sum = 0;

    CHECK(ferry_agent_create(NULL, &agent));
    bench_alloc(agent, FERRY_MEM_HOST, ALLOC_MMAP, 2 * n * DESC_LEN, &buf);
    ferry_desc_t d = {.addr = (uintptr_t)buf.p, .len = buf.len,
                      .kind = FERRY_MEM_HOST};
    CHECK(ferry_mem_register(agent, &d, 1, &mem));
    CHECK(ferry_md_pack(agent, &blob, &blob_len));
    CHECK(ferry_peer_load(agent, blob, blob_len, &peer));
    ferry_md_free(blob);
    /* Sources fill the first half of the region, destinations the second. */
    for (size_t i = 0; i < n; i++) {
        l[i] = (ferry_desc_t){.addr = (uintptr_t)buf.p + i * DESC_LEN,
                              .len = DESC_LEN, .kind = FERRY_MEM_HOST};
        r[i] = (ferry_desc_t){.addr = (uintptr_t)buf.p + (n + i) * DESC_LEN,
                              .len = DESC_LEN, .kind = FERRY_MEM_HOST};
    }
    for (int run = 0; run <= RUNS; run++) {
        ferry_xfer_t *x;
        uint64_t t0 = now_ns();
        CHECK(ferry_xfer_prepare(agent, FERRY_OP_WRITE, l, n, peer, r, n,
                                 NULL, &x));
        uint64_t t1 = now_ns();
        ferry_xfer_release(x);
        prep[run] = t1 - t0;
        rel[run] = now_ns() - t1;
        prep_sum += run > 0 ? prep[run] : 0;
        rel_sum += run > 0 ? rel[run] : 0;
    }
    printf("prepare-bench: WRITE of %zu descriptors of %d B, loopback peer\n"
           "first prepare (connects): %.3f ms, release %.3f ms\n"
           "prepare: %.1f ns/descriptor (%.3f ms per request, mean of %d)\n"
           "release: %.2f ns/descriptor (%.3f ms per request, mean of %d)\n",
           n, DESC_LEN, (double)prep[0] / 1e6, (double)rel[0] / 1e6,
           (double)prep_sum / RUNS / (double)n, (double)prep_sum / RUNS / 1e6,
           RUNS, (double)rel_sum / RUNS / (double)n,
           (double)rel_sum / RUNS / 1e6, RUNS);
    ferry_peer_forget(peer);
    CHECK(ferry_mem_deregister(mem));
    bench_free(agent, &buf);
    ferry_agent_destroy(agent);
    free(l);
    free(r);
    return 0;
}

/* ---- --memcpy ------------------------------------------------------------ */

/* The reference copy: one thread's memcpy (glibc's, which UCX's shared-memory
 * put and get use too) between two buffers, of each block size and batch
 * size (a batch copies its blocks one by one, to shuffled
 * places with --layout random), in one process, with the same iteration
 * counts as a transfer row. Only B/W and Avg Lat. mean anything here. */
static int run_memcpy_bench(const options_t *o)
{
    result_t *res = xcalloc(o->nsizes * o->nbatches, sizeof(*res));
    size_t nres = 0;

    printf("ferry-bench --memcpy: one thread's memcpy, B/W in decimal GB/s\n");
    print_header("MEMCPY, host memory -> host memory (one process)");
    for (size_t i = 0; i < o->nsizes; i++) {
        for (size_t bi = 0; bi < o->nbatches; bi++) {
            size_t size = o->sizes[i], batch = o->batches[bi];
            size_t iters = auto_iters(o, size * batch);
            size_t warmup = auto_warmup(o, iters);
            size_t *slot = o->layout == LAYOUT_RANDOM ? shuffled_slots(batch, 1)
                                                      : NULL;
            bench_buf_t src, dst;
            uint64_t t0 = 0, t = 0;

            bench_alloc(NULL, FERRY_MEM_HOST, ALLOC_MMAP, size * batch, &src);
            bench_alloc(NULL, FERRY_MEM_HOST, ALLOC_MMAP, size * batch, &dst);
            /* Timed as the transfers are, one clock reading per batch. */
            for (size_t it = 0; it < warmup + iters; it++) {
                if (it == warmup) {
                    t0 = ticks();
                }
                for (size_t b = 0; b < batch; b++) {
                    memcpy(dst.p + (slot != NULL ? slot[b] : b) * size,
                           src.p + b * size, size);
                }
                /* Keeps the compiler from merging or dropping copies. */
                __asm__ __volatile__("" : : "r"(dst.p) : "memory");
                t = ticks();
            }
            double ns = (double)ticks_ns(t - t0);
            res[nres] = (result_t){.op = "MEMCPY", .size = size, .batch = batch,
                                   .iters = iters};
            res[nres].v[BW] = (double)(size * batch) * (double)iters / ns;
            res[nres].v[AVG_LAT] = ns / (double)iters / 1e3;
            print_row(&res[nres++]);
            bench_free(NULL, &src);
            bench_free(NULL, &dst);
            free(slot);
        }
    }
    write_files(o, res, nres);
    free(res);
    return 0;
}

/* ---- Launcher ------------------------------------------------------------ */

/* Starts the embedded store and o->world local ranks, each this program
 * with "--store URL --rank R" added, and returns the first failure's exit
 * code; when one rank fails, the others get a moment to report their own
 * view, then are ended rather than left waiting. */
static int launch(const options_t *o, int argc, char **argv)
{
    ferry_store_server_t *server;
    char url[64], rank_arg[16];
    char **args = xcalloc((size_t)argc + 8, sizeof(*args));
    pid_t *pids = xcalloc((size_t)o->world, sizeof(*pids));
    int rc = 0, left = o->world;
    uint64_t deadline = 0;

    CHECK(ferry_store_server_start("127.0.0.1", NULL, &server));
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%u",
             (unsigned)ferry_store_server_port(server));
    for (int i = 0; i < argc; i++) {
        args[i] = argv[i];
    }
    args[argc] = "--store";
    args[argc + 1] = url;
    args[argc + 2] = "--rank";
    args[argc + 3] = rank_arg;
    fflush(NULL);
    for (int r = 0; r < o->world; r++) {
        snprintf(rank_arg, sizeof(rank_arg), "%d", r);
        pids[r] = fork();
        if (pids[r] < 0) {
            die("fork: %s", strerror(errno));
        }
        if (pids[r] == 0) {
            execv("/proc/self/exe", args);
            fprintf(stderr, "ferry-bench: exec: %s\n", strerror(errno));
            _exit(127);
        }
    }
    while (left > 0) {
        int status, r;
        pid_t pid = waitpid(-1, &status, deadline ? WNOHANG : 0);

        if (pid == 0) {
            if (now_ns() > deadline) {
                for (r = 0; r < o->world; r++) {
                    if (pids[r] > 0) {
                        fprintf(stderr, "ferry-bench: ending rank %d, still "
                                        "running after another failed\n", r);
                        kill(pids[r], SIGKILL);
                    }
                }
                deadline = 0;
            }
            nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("waitpid: %s", strerror(errno));
        }
        for (r = 0; r < o->world && pids[r] != pid; r++) {
        }
        if (r == o->world) {
            continue;
        }
        int code = WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        pids[r] = 0;
        left--;
        if (code != 0 && rc == 0) {
            rc = code;
            fprintf(stderr, "ferry-bench: rank %d failed (exit %d)\n", r, code);
            deadline = left ? now_ns() + 2000000000ull : 0;
        }
    }
    ferry_store_server_stop(server);
    free(args);
    free(pids);
    return rc;
}

/* Whether this machine has a GPU and a driver: checked without initialising
 * CUDA in this process, which only launches the ranks. */
static bool gpu_present(void)
{
    void *lib;

    if (access("/dev/nvidiactl", F_OK) != 0) {
        return false;
    }
    lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (lib == NULL) {
        return false;
    }
    dlclose(lib);
    return true;
}

/* "out.csv" -> "out-cuda.csv" (or "out-cuda" without an extension). */
static char *cuda_path(const char *path)
{
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    size_t stem = (dot != NULL && (slash == NULL || dot > slash)) ? (size_t)(dot - path)
                                                                  : strlen(path);
    char *out = xcalloc(strlen(path) + 8, 1);

    memcpy(out, path, stem);
    strcpy(out + stem, "-cuda");
    strcat(out, path + stem);
    return out;
}

/* The default run's second sweep: GPU memory on both sides, its CSV and
 * JSON beside the host run's ("-cuda" before the extension). */
static int launch_gpu(const options_t *o, int argc, char **argv)
{
    char **args = xcalloc((size_t)argc + 5, sizeof(*args));
    options_t g = *o;
    int n = 0, rc;

    for (int i = 0; i < argc; i++) {
        args[n++] = argv[i];
        if (i + 1 < argc && (strcmp(argv[i], "--csv") == 0 ||
                             strcmp(argv[i], "--json") == 0)) {
            args[n++] = cuda_path(argv[++i]);
        }
    }
    args[n++] = "--initiator-mem";
    args[n++] = "cuda";
    args[n++] = "--target-mem";
    args[n++] = "cuda";
    g.init_mem = g.target_mem = FERRY_MEM_CUDA;
    printf("\n");
    rc = launch(&g, n, args);
    free(args);
    return rc;
}

/* ---- Options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: ferry-bench [options]\n"
        "  With no --store, starts -n local ranks (default 2) over an embedded\n"
        "  store and sweeps block sizes for WRITE, then READ.\n"
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
        "  --prepare-bench [N]  in one process, time preparing a WRITE of N\n"
        "                     64-byte descriptors (default 100000)\n"
        "  --memcpy           in one process, one thread's memcpy at each\n"
        "                     block size: the reference copy\n",
        AUTO_MIN_ITERS, AUTO_MAX_ITERS);
}

static size_t parse_count(const char *s, const char *what, bool allow_zero)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *s == '-' || *s == '+') {
        die("bad %s '%s'", what, s);
    }
    int shift = 0;
    switch (*end) {
    case 'K': case 'k': shift = 10; end++; break;
    case 'M': case 'm': shift = 20; end++; break;
    case 'G': case 'g': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || (v == 0 && !allow_zero) || v > (SIZE_MAX / 2) >> shift) {
        die("bad %s '%s'", what, s);
    }
    return (size_t)(v << shift);
}

/* "A:B" (powers of two from A up to B) and single values, comma-separated. */
static void parse_list(const char *list, const char *what, size_t *out,
                       size_t *n_p)
{
    char *copy = strdup(list), *save = NULL;
    size_t n = 0;

    if (copy == NULL) {
        die("out of memory");
    }
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(t, ':');
        size_t lo, hi;

        if (colon != NULL) {
            *colon = '\0';
        }
        lo = parse_count(t, what, false);
        hi = colon != NULL ? parse_count(colon + 1, what, false) : lo;
        if (hi < lo) {
            die("%s range %zu:%zu runs backwards", what, lo, hi);
        }
        for (size_t v = lo; v <= hi; v *= 2) {
            if (n == MAX_LIST) {
                die("at most %d values for %s", MAX_LIST, what);
            }
            out[n++] = v;
            if (v > hi / 2) {
                break;
            }
        }
    }
    if (n == 0) {
        die("%s needs at least one value", what);
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
    die("%s does not take '%s' (see --help)", what, arg);
}

static ferry_mem_kind_t parse_kind(const char *arg, const char *what)
{
    static const char *const kinds[] = {"host", "cuda"};

    return parse_choice(arg, what, kinds, 2) == 0 ? FERRY_MEM_HOST
                                                  : FERRY_MEM_CUDA;
}

static void parse_options(options_t *o, int argc, char **argv)
{
    enum { O_SIZES = 256, O_ITERS, O_WARMUP, O_BATCH, O_OP, O_CHECK, O_CSV,
           O_JSON, O_TARGET, O_PREP, O_INIT_MEM, O_TARGET_MEM, O_ALLOC,
           O_SCHEME, O_THREADS, O_PROGRESS, O_WAIT, O_STORE, O_RANK, O_MEMCPY,
           O_LAYOUT, O_GPU, O_HELP };
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
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    static const char *const ops[] = {"write", "read", "both"};
    int c, op;

    *o = (options_t){.do_write = true, .do_read = true, .world = 2, .rank = -1,
                     .threads = 1, .init_mem = FERRY_MEM_HOST,
                     .target_mem = FERRY_MEM_HOST};
    parse_list("4K:64M", "--sizes", o->sizes, &o->nsizes);
    parse_list("1", "--batch", o->batches, &o->nbatches);

    while ((c = getopt_long(argc, argv, "hn:", longs, NULL)) != -1) {
        switch (c) {
        case O_SIZES: parse_list(optarg, "--sizes", o->sizes, &o->nsizes); break;
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
        case 'n': o->world = (int)parse_count(optarg, "-n", false); break;
        case O_THREADS: o->threads = (int)parse_count(optarg, "--threads", false); break;
        case O_PROGRESS: o->progress_thread = true; break;
        case O_WAIT: o->wait_mode = parse_choice(optarg, "--wait", wait_names, 2); break;
        case O_STORE: o->store_url = optarg; break;
        case O_RANK: o->rank = (int)parse_count(optarg, "--rank", true); break;
        case O_MEMCPY: o->memcpy_mode = true; break;
        case O_LAYOUT:
            o->layout = parse_choice(optarg, "--layout", layout_names, 2);
            break;
        case O_GPU:
            o->gpu = strcmp(optarg, "rank") == 0
                         ? -1
                         : (int)parse_count(optarg, "--gpu", true);
            break;
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
        die("unexpected argument '%s' (see --help)", argv[optind]);
    }
    if (o->world < 2 || o->world > MAX_RANKS) {
        die("-n takes 2 to %d ranks, not %d", MAX_RANKS, o->world);
    }
    if (o->scheme == SCHEME_PAIRWISE && o->world % 2 != 0) {
        die("--scheme pairwise needs an even number of ranks, not %d", o->world);
    }
    if (o->threads > MAX_THREADS) {
        die("--threads takes 1 to %d", MAX_THREADS);
    }
    if ((o->store_url == NULL) != (o->rank < 0)) {
        die("--store and --rank go together");
    }
    if (o->rank >= o->world) {
        die("--rank %d is not below the world size %d", o->rank, o->world);
    }
}

int main(int argc, char **argv)
{
    options_t o;

    parse_options(&o, argc, argv);
    if (o.prepare_n > 0) {
        return run_prepare_bench(o.prepare_n);
    }
    if (o.memcpy_mode) {
        ticks_calibrate();
        return run_memcpy_bench(&o);
    }
    if (o.store_url == NULL) {
        int rc = launch(&o, argc, argv);

        /* With no memory kinds given, GPU memory gets the same sweep
         * wherever a GPU is present. */
        if (rc == 0 && !o.mem_set && gpu_present()) {
            rc = launch_gpu(&o, argc, argv);
        }
        return rc;
    }
    g_rank = o.rank;
    ticks_calibrate();
    return run_rank(&o);
}
