/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The lazy CUDA driver loader: one dlopen, one table, resolved through
 * cuGetProcAddress at a pinned version, and the helpers every CUDA user in
 * ferry shares (error texts, primary contexts, pointer classification).
 */
#include "cuda/cuda.h"
#include "util/log.h"
#include "util/status.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The driver's own lookup, as exported by libcuda.so.1 (the 4-argument
 * form that every driver since CUDA 11.3 keeps for compatibility). */
typedef CUresult (*ferry__cu_getproc_t)(const char *symbol, void **pfn,
                                        int version, uint64_t flags);

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static ferry__cuda_t cuda_table;
static ferry_status_t cuda_status = FERRY_ERR_UNSUPPORTED;
static char cuda_why[256];

static pthread_mutex_t cuda_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static CUcontext *cuda_ctxs; /* one per device, retained on first use */

static void cuda_load(void)
{
    ferry__cuda_t *cu = &cuda_table;
    ferry__cu_getproc_t getproc;
    const char *missing = NULL;
    CUresult res;
    void *lib;

    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(cuda_why, sizeof(cuda_why),
                 "no CUDA driver was found (%s)", dlerror());
        return;
    }
    getproc = (ferry__cu_getproc_t)dlsym(lib, "cuGetProcAddress");
    if (getproc == NULL) {
        snprintf(cuda_why, sizeof(cuda_why), "the CUDA driver is "
                 "too old: libcuda.so.1 has no cuGetProcAddress (CUDA 11.3+ needed)");
        return;
    }
#define FERRY__CUDA_RESOLVE(name, params)                                     \
    if (missing == NULL &&                                                    \
        (getproc(#name, (void **)&cu->name, FERRY__CUDA_API_VERSION, 0) !=    \
             CUDA_SUCCESS ||                                                  \
         cu->name == NULL))                                                   \
        missing = #name;
    FERRY__CUDA_FNS(FERRY__CUDA_RESOLVE)
#undef FERRY__CUDA_RESOLVE
    if (missing != NULL) {
        snprintf(cuda_why, sizeof(cuda_why), "the CUDA driver "
                 "lacks %s at API version %d (driver too old)", missing,
                 FERRY__CUDA_API_VERSION);
        return;
    }
    res = cu->cuInit(0);
    if (res != CUDA_SUCCESS) {
        const char *name = "unknown error";

        cu->cuGetErrorName(res, &name);
        snprintf(cuda_why, sizeof(cuda_why), "a CUDA driver was "
                 "found but cuInit failed: %s%s", name,
                 res == CUDA_ERROR_NO_DEVICE ? " (no CUDA device is visible)" : "");
        return;
    }
    if (cu->cuDriverGetVersion(&cu->driver_version) != CUDA_SUCCESS ||
        cu->cuDeviceGetCount(&cu->ndevices) != CUDA_SUCCESS || cu->ndevices <= 0) {
        snprintf(cuda_why, sizeof(cuda_why),
                 "a CUDA driver was found but no CUDA device is visible");
        return;
    }
    cuda_ctxs = calloc((size_t)cu->ndevices, sizeof(*cuda_ctxs));
    if (cuda_ctxs == NULL) {
        snprintf(cuda_why, sizeof(cuda_why), "no memory");
        return;
    }
    cuda_status = FERRY_OK;
    ferry__debug("CUDA driver %d.%d loaded, %d device(s)", cu->driver_version / 1000,
                 cu->driver_version % 1000 / 10, cu->ndevices);
}

ferry_status_t ferry__cuda_get(const ferry__cuda_t **cu_p)
{
    pthread_once(&cuda_once, cuda_load);
    if (cuda_status < 0)
        return ferry__error(cuda_status, "%s", cuda_why);
    *cu_p = &cuda_table;
    return FERRY_OK;
}

const ferry__cuda_t *ferry__cuda_loaded(void)
{
    const ferry__cuda_t *cu;
    void *lib;

    /* A process whose own code has not loaded the driver holds no GPU
     * memory: answer without paying for cuInit. */
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (lib == NULL)
        return NULL;
    dlclose(lib);
    return ferry__cuda_get(&cu) == FERRY_OK ? cu : NULL;
}

ferry_status_t ferry__cuda_check(CUresult res, const char *call)
{
    const char *name = "unknown error", *text = "";

    if (res == CUDA_SUCCESS)
        return FERRY_OK;
    cuda_table.cuGetErrorName(res, &name);
    cuda_table.cuGetErrorString(res, &text);
    return ferry__error(res == CUDA_ERROR_OUT_OF_MEMORY ? FERRY_ERR_NO_MEMORY
                                                        : FERRY_ERR_BACKEND,
                        "cuda: %s: %s (%s)", call, name, text);
}

ferry_status_t ferry__cuda_ctx(int device, CUcontext *ctx_p)
{
    const ferry__cuda_t *cu;
    ferry_status_t st = FERRY_OK;
    CUdevice dev;

    FERRY_CHECK(ferry__cuda_get(&cu));
    if (device < 0 || device >= cu->ndevices)
        return ferry__error(FERRY_ERR_INVALID, "cuda: device %d does not exist "
                            "(%d visible)", device, cu->ndevices);
    pthread_mutex_lock(&cuda_ctx_lock);
    if (cuda_ctxs[device] == NULL) {
        st = FERRY__CU(cu, cuDeviceGet, (&dev, device));
        if (st == FERRY_OK)
            st = FERRY__CU(cu, cuDevicePrimaryCtxRetain,
                           (&cuda_ctxs[device], dev));
    }
    if (st == FERRY_OK)
        *ctx_p = cuda_ctxs[device];
    pthread_mutex_unlock(&cuda_ctx_lock);
    return st;
}

ferry_status_t ferry__cuda_push(int device)
{
    CUcontext ctx;

    FERRY_CHECK(ferry__cuda_ctx(device, &ctx));
    return FERRY__CU(&cuda_table, cuCtxPushCurrent, (ctx));
}

void ferry__cuda_pop(void)
{
    CUcontext ctx;

    cuda_table.cuCtxPopCurrent(&ctx);
}

void ferry__cuda_classify(uint64_t addr, ferry_mem_kind_t *kind_p,
                          int32_t *device_p)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    unsigned type = 0;
    int ordinal = 0;

    *kind_p = FERRY_MEM_HOST;
    *device_p = 0;
    if (cu == NULL ||
        cu->cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                  (CUdeviceptr)addr) != CUDA_SUCCESS ||
        type != CU_MEMORYTYPE_DEVICE ||
        cu->cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                  (CUdeviceptr)addr) != CUDA_SUCCESS)
        return;
    *kind_p = FERRY_MEM_CUDA;
    *device_p = ordinal;
}

void ferry__cuda_quiesce(uint64_t addr)
{
    const ferry__cuda_t *cu = ferry__cuda_loaded();
    ferry_mem_kind_t kind;
    int32_t device;

    ferry__cuda_classify(addr, &kind, &device);
    if (kind != FERRY_MEM_CUDA || ferry__cuda_push(device) != FERRY_OK)
        return;
    (void)cu->cuCtxSynchronize(); /* a fault it reports is the work's, not ours */
    ferry__cuda_pop();
}

void ferry__cuda_describe(FILE *out)
{
    const ferry__cuda_t *cu;

    fprintf(out, "cuda:\n");
    if (ferry__cuda_get(&cu) != FERRY_OK) {
        fprintf(out, "  unavailable: %s\n", ferry_last_error());
        return;
    }
    fprintf(out, "  driver API: %d.%d\n  devices: %d\n", cu->driver_version / 1000,
            cu->driver_version % 1000 / 10, cu->ndevices);
    for (int d = 0; d < cu->ndevices; d++) {
        char name[128] = "?";
        size_t mem = 0;
        int bus = 0, dev_id = 0, domain = 0, vmm = 0, fd = 0;
        CUdevice dev;

        if (cu->cuDeviceGet(&dev, d) != CUDA_SUCCESS)
            continue;
        cu->cuDeviceGetName(name, sizeof(name), dev);
        cu->cuDeviceTotalMem(&mem, dev);
        cu->cuDeviceGetAttribute(&domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, dev);
        cu->cuDeviceGetAttribute(&bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev);
        cu->cuDeviceGetAttribute(&dev_id, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, dev);
        cu->cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                 dev);
        cu->cuDeviceGetAttribute(&fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                                 dev);
        fprintf(out, "  device %d: %s, %.1f GiB, PCI %04x:%02x:%02x, VMM %s, "
                "POSIX fd export %s\n", d, name, (double)mem / (1 << 30), domain, bus,
                dev_id, vmm ? "yes" : "no", fd ? "yes" : "no");
    }
}
