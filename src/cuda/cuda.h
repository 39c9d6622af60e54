/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA driver, loaded lazily. Nothing in ferry links libcuda or
 * libcudart: the first caller dlopen()s libcuda.so.1 (once, thread-safe),
 * resolves every entry point below through cuGetProcAddress at one pinned
 * driver API version, and calls cuInit. A process without a driver or
 * without a device gets FERRY_ERR_UNSUPPORTED and a text that says which.
 *
 * The types and constants below are the subset of the driver ABI that ferry
 * uses, declared here so that every build is the same whether or not the
 * CUDA toolkit is installed: they are stable parts of the ABI (the values
 * of cuda.h since CUDA 11/12), and the entry points are requested at the
 * version whose signatures these are.
 */
#ifndef FERRY_CUDA_CUDA_H
#define FERRY_CUDA_CUDA_H

#include "ferry.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The driver API version every entry point is resolved at (CUDA 12.0). */
#define FERRY__CUDA_API_VERSION 12000

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef void (*CUhostFn)(void *user);

typedef struct CUipcMemHandle {
    char reserved[64];
} CUipcMemHandle;

typedef struct CUuuid {
    char bytes[16];
} CUuuid;

typedef struct CUmemLocation {
    int type; /* CU_MEM_LOCATION_TYPE_* */
    int id;
} CUmemLocation;

typedef struct CUmemAllocationProp {
    int type;                 /* CU_MEM_ALLOCATION_TYPE_* */
    int requestedHandleTypes; /* CU_MEM_HANDLE_TYPE_* bits */
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct CUmemAccessDesc {
    CUmemLocation location;
    int flags; /* CU_MEM_ACCESS_FLAGS_* */
} CUmemAccessDesc;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704,

    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_DEVICE_POINTER = 3,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11,
    CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,
    CU_MEMORYTYPE_HOST = 1,
    CU_MEMORYTYPE_DEVICE = 2,

    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    CU_DEVICE_ATTRIBUTE_PCI_BUS_ID = 33,
    CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID = 34,
    CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID = 50,
    CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102,
    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103,

    CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1,
    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1,
    CU_MEM_ALLOCATION_TYPE_PINNED = 1,
    CU_MEM_LOCATION_TYPE_DEVICE = 1,
    CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3,
    CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0,

    CU_STREAM_NON_BLOCKING = 1,
    CU_EVENT_DISABLE_TIMING = 2,
    CU_MEMHOSTALLOC_PORTABLE = 1,
    CU_MEMHOSTALLOC_DEVICEMAP = 2,
    CU_MEMHOSTREGISTER_PORTABLE = 1,
    CU_MEMHOSTREGISTER_DEVICEMAP = 2,
    CU_JIT_ERROR_LOG_BUFFER = 5,
    CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
    CU_STREAM_WAIT_VALUE_EQ = 1,
    CU_STREAM_WRITE_VALUE_DEFAULT = 0,
    CU_STREAM_CAPTURE_MODE_RELAXED = 2
};

/* X(name, parameters): every driver entry point ferry calls. */
#define FERRY__CUDA_FNS(X)                                                    \
    X(cuInit, (unsigned flags))                                               \
    X(cuDriverGetVersion, (int *version))                                     \
    X(cuGetErrorName, (CUresult err, const char **name))                      \
    X(cuGetErrorString, (CUresult err, const char **text))                    \
    X(cuDeviceGetCount, (int *count))                                         \
    X(cuDeviceGet, (CUdevice *dev, int ordinal))                              \
    X(cuDeviceGetName, (char *name, int len, CUdevice dev))                   \
    X(cuDeviceGetUuid, (CUuuid *uuid, CUdevice dev))                          \
    X(cuDeviceGetAttribute, (int *value, int attr, CUdevice dev))             \
    X(cuDeviceTotalMem, (size_t *bytes, CUdevice dev))                        \
    X(cuDeviceCanAccessPeer, (int *can, CUdevice dev, CUdevice peer))         \
    X(cuDevicePrimaryCtxRetain, (CUcontext *ctx, CUdevice dev))               \
    X(cuCtxPushCurrent, (CUcontext ctx))                                      \
    /* Only ferry-gpu-bench (its reference between two devices) calls this. */ \
    X(cuCtxEnablePeerAccess, (CUcontext peer, unsigned flags))                \
    X(cuCtxPopCurrent, (CUcontext *ctx))                                      \
    X(cuCtxGetDevice, (CUdevice *dev))                                        \
    X(cuCtxSynchronize, (void))                                               \
    X(cuPointerGetAttribute, (void *data, int attr, CUdeviceptr ptr))         \
    X(cuMemGetAddressRange, (CUdeviceptr *base, size_t *size, CUdeviceptr p)) \
    X(cuMemAlloc, (CUdeviceptr *ptr, size_t size))                            \
    X(cuMemFree, (CUdeviceptr ptr))                                           \
    X(cuMemHostAlloc, (void **ptr, size_t size, unsigned flags))              \
    X(cuMemFreeHost, (void *ptr))                                             \
    X(cuMemHostRegister, (void *ptr, size_t size, unsigned flags))            \
    X(cuMemHostUnregister, (void *ptr))                                       \
    X(cuMemHostGetDevicePointer, (CUdeviceptr *d, void *p, unsigned flags))   \
    X(cuMemcpy, (CUdeviceptr dst, CUdeviceptr src, size_t size))              \
    X(cuMemcpyAsync, (CUdeviceptr dst, CUdeviceptr src, size_t size,          \
                      CUstream stream))                                       \
    /* Only ferry-gpu-bench's reference between two devices calls this. */   \
    X(cuMemcpyPeerAsync, (CUdeviceptr dst, CUcontext dctx, CUdeviceptr src,   \
                          CUcontext sctx, size_t size, CUstream stream))      \
    X(cuIpcGetMemHandle, (CUipcMemHandle *handle, CUdeviceptr ptr))           \
    X(cuIpcOpenMemHandle, (CUdeviceptr *ptr, CUipcMemHandle handle,           \
                           unsigned flags))                                   \
    X(cuIpcCloseMemHandle, (CUdeviceptr ptr))                                 \
    X(cuMemCreate, (CUmemGenericAllocationHandle *h, size_t size,             \
                    const CUmemAllocationProp *prop, unsigned long long fl))  \
    X(cuMemRelease, (CUmemGenericAllocationHandle h))                         \
    X(cuMemRetainAllocationHandle, (CUmemGenericAllocationHandle *h,          \
                                    void *addr))                              \
    X(cuMemGetAllocationPropertiesFromHandle,                                 \
      (CUmemAllocationProp *prop, CUmemGenericAllocationHandle h))            \
    X(cuMemGetAllocationGranularity, (size_t *g,                              \
                                      const CUmemAllocationProp *prop,        \
                                      int option))                            \
    X(cuMemExportToShareableHandle, (void *out, CUmemGenericAllocationHandle h, \
                                     int type, unsigned long long flags))     \
    X(cuMemImportFromShareableHandle, (CUmemGenericAllocationHandle *h,       \
                                       void *os_handle, int type))            \
    X(cuMemAddressReserve, (CUdeviceptr *ptr, size_t size, size_t align,      \
                            CUdeviceptr addr, unsigned long long flags))      \
    X(cuMemAddressFree, (CUdeviceptr ptr, size_t size))                       \
    X(cuMemMap, (CUdeviceptr ptr, size_t size, size_t offset,                 \
                 CUmemGenericAllocationHandle h, unsigned long long flags))   \
    X(cuMemUnmap, (CUdeviceptr ptr, size_t size))                             \
    X(cuMemSetAccess, (CUdeviceptr ptr, size_t size,                          \
                       const CUmemAccessDesc *desc, size_t count))            \
    X(cuStreamCreate, (CUstream *stream, unsigned flags))                     \
    X(cuStreamDestroy, (CUstream stream))                                     \
    X(cuStreamSynchronize, (CUstream stream))                                 \
    X(cuEventCreate, (CUevent *event, unsigned flags))                        \
    X(cuEventDestroy, (CUevent event))                                        \
    X(cuEventRecord, (CUevent event, CUstream stream))                        \
    X(cuEventQuery, (CUevent event))                                          \
    X(cuStreamWaitEvent, (CUstream stream, CUevent event, unsigned flags))    \
    X(cuLaunchHostFunc, (CUstream stream, CUhostFn fn, void *user))           \
    X(cuStreamWriteValue32, (CUstream stream, CUdeviceptr addr,               \
                             uint32_t value, unsigned flags))                 \
    X(cuStreamWaitValue32, (CUstream stream, CUdeviceptr addr,                \
                            uint32_t value, unsigned flags))                  \
    X(cuStreamBeginCapture, (CUstream stream, int mode))                      \
    X(cuStreamEndCapture, (CUstream stream, CUgraph *graph))                  \
    X(cuGraphInstantiateWithFlags, (CUgraphExec *exec, CUgraph graph,         \
                                    unsigned long long flags))                \
    X(cuGraphLaunch, (CUgraphExec exec, CUstream stream))                     \
    X(cuGraphExecDestroy, (CUgraphExec exec))                                 \
    X(cuGraphDestroy, (CUgraph graph))                                        \
    X(cuModuleLoadDataEx, (CUmodule *module, const void *image, unsigned n,   \
                           int *options, void **values))                      \
    X(cuModuleGetFunction, (CUfunction *fn, CUmodule module,                  \
                            const char *name))                                \
    X(cuLaunchKernel, (CUfunction fn, unsigned gx, unsigned gy, unsigned gz,  \
                       unsigned bx, unsigned by, unsigned bz, unsigned shmem, \
                       CUstream stream, void **params, void **extra))

typedef struct ferry__cuda {
#define FERRY__CUDA_MEMBER(name, params) CUresult (*name) params;
    FERRY__CUDA_FNS(FERRY__CUDA_MEMBER)
#undef FERRY__CUDA_MEMBER
    int driver_version;
    int ndevices;
} ferry__cuda_t;

/*
 * The driver table, loading it on first use. FERRY_ERR_UNSUPPORTED with a
 * text when there is no usable driver or device ("no CUDA driver was found
 * (libcuda.so.1: ...)"); the same answer every time after the first.
 */
ferry_status_t ferry__cuda_get(const ferry__cuda_t **cu_p);
/* The table if an earlier call loaded it, else NULL; never loads. */
const ferry__cuda_t *ferry__cuda_loaded(void);

/* CUDA_SUCCESS is FERRY_OK; anything else becomes a status and a detail
 * text: "cuda: cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (out of memory)". */
ferry_status_t ferry__cuda_check(CUresult res, const char *call);
/* Calls a driver entry point of the table cu and checks its result. */
#define FERRY__CU(cu, name, args) ferry__cuda_check((cu)->name args, #name)

/* The primary context of a device, retained once for the process. */
ferry_status_t ferry__cuda_ctx(int device, CUcontext *ctx_p);
/* Makes the device's primary context current on this thread, remembering
 * the caller's; ferry__cuda_pop() restores it. */
ferry_status_t ferry__cuda_push(int device);
void ferry__cuda_pop(void);

/*
 * Where a pointer lives: *kind_p FERRY_MEM_CUDA with *device_p its device
 * ordinal, or FERRY_MEM_HOST (host memory, pinned or not, and any address
 * the driver does not know). Without a driver, everything is host memory.
 */
void ferry__cuda_classify(uint64_t addr, ferry_mem_kind_t *kind_p,
                          int32_t *device_p);

/*
 * Waits for the work of the device whose GPU memory addr lies in (nothing
 * for host memory, or when CUDA is not loaded): what cudaFree() waits for
 * before it frees. Without the agent's lock: stream work queued behind
 * ferry's own flags ends only when the progress thread, which takes the
 * lock, sets them.
 */
void ferry__cuda_quiesce(uint64_t addr);

/* For ferry-info: the driver's version and devices, or why there are none. */
void ferry__cuda_describe(FILE *out);

#endif
