/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench: measures ferry's one-sided WRITE and READ between processes,
 * the figure every performance claim in docs/PERFORMANCE.md rests on.
 *
 * Every measuring process is a rank of a job that meets through a
 * c10d-compatible store: rank R of N with --store URL --rank R -n N
 * (several hosts; the store may be ferry-store or a torchrun job's), a rank
 * that a launcher started (ferry-run -n N -- ferry-bench), or, with
 * neither, one of N local ranks that this program starts itself through
 * the same launcher as ferry-run's (launch.h), each an exec of
 * /proc/self/exe, so that UCX starts in a fresh image; the launching
 * process itself never creates an agent. rank.h says who initiates to whom
 * and how, report.h what a row holds.
 *
 * Memory. Host buffers come from ferry_mem_alloc() by default (UCX's own
 * shared memory, copied into directly by same-host peers); --alloc mmap
 * uses ordinary memory instead, which UCX 1.13 reaches only through
 * emulated RMA. buf.h allocates every kind.
 *
 * --prepare-bench and --memcpy measure in one process (local.h); --notify
 * measures notifications between two ranks on this host (notify.h).
 */
#include "launch.h"
#include "buf.h"
#include "clock.h"
#include "local.h"
#include "notify.h"
#include "rank.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

/* The launcher gives a rank that outlives a failed one this long to report
 * its own view before it is killed. */
#define LAUNCH_GRACE_S 2.0

/* Starts o->world local ranks of this program with the arguments args and
 * returns the job's exit code. */
static int launch(const options_t *o, char **args)
{
    launch_params_t p = {.name = "ferry-bench", .path = "/proc/self/exe",
                         .argv = args, .nranks = o->world,
                         .grace_s = LAUNCH_GRACE_S};

    return launch_job(&p);
}

/* Whether this machine has a usable GPU: asked of the library's CUDA
 * loader in this process, which only launches the ranks (each is a fresh
 * image, so the driver loaded here is nothing to them). */
static bool gpu_present(void)
{
    const ferry__cuda_t *cu;

    return ferry__cuda_get(&cu) == FERRY_OK;
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
    char *paths[2] = {NULL, NULL};
    int n = 0, np = 0, rc;

    for (int i = 0; i < argc; i++) {
        args[n++] = argv[i];
        if (i + 1 < argc && (strcmp(argv[i], "--csv") == 0 ||
                             strcmp(argv[i], "--json") == 0)) {
            args[n++] = paths[np++ % 2] = cuda_path(argv[++i]);
        }
    }
    args[n++] = "--initiator-mem";
    args[n++] = "cuda";
    args[n++] = "--target-mem";
    args[n++] = "cuda";
    printf("\n");
    rc = launch(o, args);
    free(paths[0]);
    free(paths[1]);
    free(args);
    return rc;
}

/* Names this process "ferry-bench:rR" (what ps and /proc/PID/comm show,
 * and die()'s messages) once it is rank R, so that a rank started as /proc/self/exe does not
 * show as "exe"; the launcher (ferry-bench) keeps its own name. Threads
 * started after this inherit the name. */
static void name_rank(const options_t *o)
{
    const char *env = getenv("FERRY_RANK");
    char name[16];
    int rank;

    if (env == NULL) {
        env = getenv("RANK");
    }
    rank = o->rank >= 0 ? o->rank : env != NULL ? atoi(env) : 0;
    snprintf(name, sizeof(name), "ferry-bench:r%d", rank);
    prctl(PR_SET_NAME, name);
    bench_set_rank(rank);
}

int main(int argc, char **argv)
{
    options_t o;

    options_parse(&o, argc, argv);
    if (o.prepare_n > 0) {
        return run_prepare_bench(o.prepare_n);
    }
    if (o.memcpy_mode) {
        clock_calibrate();
        return run_memcpy_bench(&o);
    }
    if (o.notify) {
        notify_check(&o);
        return run_notify(&o, argv);
    }
    if (o.store_url == NULL && !launch_in_job()) {
        int rc = launch(&o, argv);

        /* With no memory kinds given, GPU memory gets the same sweep
         * wherever a GPU is present. */
        if (rc == 0 && !o.mem_set && gpu_present()) {
            rc = launch_gpu(&o, argc, argv);
        }
        return rc;
    }
    name_rank(&o);
    clock_calibrate();
    return rank_main(&o);
}
