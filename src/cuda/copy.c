/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The copy kernel's loading, launching and knobs (copy.h). The module is
 * loaded at most once per device for the process, like the primary
 * contexts it lives in, and never unloaded: a captured graph may launch
 * the kernel until the process ends.
 */
#include "cuda/copy.h"
#include "util/config.h"
#include "util/log.h"
#include "util/status.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The PTX text of kernels/copy.cu, embedded at build time (cmake/embed.cmake). */
extern const char ferry__ptx_copy[];

typedef struct copy_dev {
    int state; /* 0: not tried; 1: loaded; -1: the driver refused it */
    CUfunction fn;
    char why[320];
} copy_dev_t;

static pthread_mutex_t copy_lock = PTHREAD_MUTEX_INITIALIZER;
static copy_dev_t *copy_devs; /* one per device, allocated on first use */

ferry_status_t ferry__cuda_copy_mode(ferry__cuda_copy_mode_t *mode_p)
{
    const char *s = ferry__config_get("FERRY_CUDA_COPY");

    if (strcmp(s, "auto") == 0)
        *mode_p = FERRY__COPY_AUTO;
    else if (strcmp(s, "engine") == 0)
        *mode_p = FERRY__COPY_ENGINE;
    else if (strcmp(s, "kernel") == 0)
        *mode_p = FERRY__COPY_KERNEL;
    else
        return ferry__error(FERRY_ERR_INVALID, "FERRY_CUDA_COPY is '%s': expected "
                            "auto, engine or kernel", s);
    return FERRY_OK;
}

uint64_t ferry__cuda_copy_max(void)
{
    return ferry__config_get_size("FERRY_CUDA_COPY_MAX");
}

/* The PTX to load: FERRY_CUDA_COPY_PTX's file when it is set (a test's way
 * to give the driver text it cannot load), else the embedded text. Writes
 * a reason to why on failure. */
static char *copy_ptx(char *why, size_t whylen)
{
    const char *path = ferry__config_get("FERRY_CUDA_COPY_PTX");
    char *text = NULL;
    long len;
    FILE *f;

    if (*path == '\0')
        return strdup(ferry__ptx_copy);
    f = fopen(path, "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0 || (text = malloc((size_t)len + 1)) == NULL ||
        fread(text, 1, (size_t)len, f) != (size_t)len) {
        snprintf(why, whylen, "FERRY_CUDA_COPY_PTX '%s' cannot be read", path);
        free(text);
        text = NULL;
    } else {
        text[len] = '\0';
    }
    if (f != NULL)
        fclose(f);
    return text;
}

/*
 * Runs fn once over an empty table on a stream of its own and waits for it.
 * With lazy loading (CUDA_MODULE_LOADING, the default since CUDA 12.2) the
 * driver loads a kernel's code at its first launch, and loading may wait
 * for the whole context; were that first launch a staged gather, made by a
 * progress thread while an application's stream waits on a flag that only
 * that thread will set, neither would ever go on. Loaded here, outside any
 * transfer, a launch never loads.
 */
static CUresult copy_warm(const ferry__cuda_t *cu, CUfunction fn)
{
    CUdeviceptr table = 0;
    unsigned n = 0;
    int w = 0;
    void *args[3] = {&table, &n, &w};
    CUstream s;
    CUresult res = cu->cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);

    if (res != CUDA_SUCCESS)
        return res;
    res = cu->cuLaunchKernel(fn, 1, 1, 1, FERRY__CUDA_COPY_THREADS, 1, 1, 0, s, args, NULL);
    if (res == CUDA_SUCCESS)
        res = cu->cuStreamSynchronize(s);
    cu->cuStreamDestroy(s);
    return res;
}

/* Loads the module in device's primary context and the kernel's code on
 * the device: d->state 1 and d->fn, or -1 and d->why. */
static void copy_load(const ferry__cuda_t *cu, int device, copy_dev_t *d)
{
    char log[256] = "";
    int opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[2] = {log, (void *)(uintptr_t)sizeof(log)};
    CUmodule mod;
    CUresult res;
    char *ptx;

    d->state = -1;
    ptx = copy_ptx(d->why, sizeof(d->why));
    if (ptx == NULL)
        return;
    if (ferry__cuda_push(device) != FERRY_OK) {
        snprintf(d->why, sizeof(d->why), "%s", ferry_last_error());
        free(ptx);
        return;
    }
    res = cu->cuModuleLoadDataEx(&mod, ptx, 2, opts, vals);
    if (res == CUDA_SUCCESS)
        res = cu->cuModuleGetFunction(&d->fn, mod, "ferry_copy");
    if (res == CUDA_SUCCESS)
        res = copy_warm(cu, d->fn);
    ferry__cuda_pop();
    free(ptx);
    if (res != CUDA_SUCCESS) {
        log[sizeof(log) - 1] = '\0';
        (void)ferry__cuda_check(res, "loading the copy kernel");
        snprintf(d->why, sizeof(d->why), "the driver cannot load the copy kernel: "
                 "%s%s%.120s", ferry_last_error(), *log ? ": " : "", log);
        return;
    }
    d->state = 1;
}

ferry_status_t ferry__cuda_copy_kernel(int device, CUfunction *fn_p)
{
    const ferry__cuda_t *cu;
    copy_dev_t *d;
    ferry_status_t st = FERRY_OK;

    FERRY_CHECK(ferry__cuda_get(&cu));
    if (device < 0 || device >= cu->ndevices)
        return ferry__error(FERRY_ERR_INVALID, "cuda: device %d does not exist",
                            device);
    pthread_mutex_lock(&copy_lock);
    if (copy_devs == NULL)
        copy_devs = calloc((size_t)cu->ndevices, sizeof(*copy_devs));
    if (copy_devs == NULL) {
        st = ferry__error(FERRY_ERR_NO_MEMORY, "cuda: no memory");
        goto out;
    }
    d = &copy_devs[device];
    if (d->state == 0) {
        copy_load(cu, device, d);
        if (d->state < 0)
            ferry__warn("cuda: device %d: %s; batches are copied by the copy "
                        "engines, one call per segment", device, d->why);
    }
    if (d->state > 0)
        *fn_p = d->fn;
    else
        st = ferry__error(FERRY_ERR_UNSUPPORTED, "cuda: device %d: %s", device, d->why);
out:
    pthread_mutex_unlock(&copy_lock);
    return st;
}

void ferry__cuda_copy_preload(int device)
{
    ferry__cuda_copy_mode_t mode;
    CUfunction fn;

    if (ferry__cuda_copy_mode(&mode) == FERRY_OK && mode != FERRY__COPY_ENGINE)
        (void)ferry__cuda_copy_kernel(device, &fn);
}

unsigned ferry__cuda_copy_blocks(int device)
{
    const char *s = ferry__config_get("FERRY_CUDA_COPY_BLOCKS");
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    CUdevice dev;
    uint64_t n;
    int sms = 0;

    if (strcmp(s, "auto") != 0) {
        n = ferry__config_get_size("FERRY_CUDA_COPY_BLOCKS");
        if (n >= 1 && n <= 65535)
            return (unsigned)n;
        ferry__warn("FERRY_CUDA_COPY_BLOCKS is '%s': expected auto or 1..65535; "
                    "using auto", s);
    }
    if (cu == NULL || cu->cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
        cu->cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                                 dev) != CUDA_SUCCESS || sms < 1)
        sms = 16;
    /* Two blocks per SM: on an H100 a grid of one block per SM reached
     * 0.78-0.95 of a contiguous copy, two per SM 0.92-0.98 (4 KiB pieces
     * excepted: docs/PERFORMANCE.md). */
    return 2u * (unsigned)sms;
}

ferry_status_t ferry__cuda_copy_launch(CUfunction fn, CUdeviceptr table, unsigned n,
                                       bool write, unsigned blocks, CUstream stream)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    int w = write;
    void *args[3] = {&table, &n, &w};

    if (n == 0)
        return FERRY_OK;
    if (blocks > n)
        blocks = n;
    return FERRY__CU(cu, cuLaunchKernel, (fn, blocks, 1, 1, FERRY__CUDA_COPY_THREADS, 1, 1,
                                          0, stream, args, NULL));
}

void ferry__cuda_copy_describe(FILE *out)
{
    const ferry__cuda_t *cu;
    ferry__cuda_copy_mode_t mode;
    CUfunction fn;

    fprintf(out, "cuda copies:\n");
    if (ferry__cuda_copy_mode(&mode) != FERRY_OK) {
        fprintf(out, "  %s\n", ferry_last_error());
        return;
    }
    fprintf(out, "  mode: %s (FERRY_CUDA_COPY); segments of at most %llu bytes go "
            "to the copy kernel in a batch of several\n",
            mode == FERRY__COPY_AUTO ? "auto" : mode == FERRY__COPY_ENGINE ? "engine" : "kernel",
            (unsigned long long)ferry__cuda_copy_max());
    if (ferry__cuda_get(&cu) != FERRY_OK) {
        fprintf(out, "  no kernel: %s\n", ferry_last_error());
        return;
    }
    for (int d = 0; d < cu->ndevices; d++) {
        if (ferry__cuda_copy_kernel(d, &fn) == FERRY_OK)
            fprintf(out, "  device %d: copy kernel loaded, grid of %u blocks of %u "
                    "threads\n", d, ferry__cuda_copy_blocks(d), FERRY__CUDA_COPY_THREADS);
        else
            fprintf(out, "  device %d: copy engines only: %s\n", d, ferry_last_error());
    }
}
