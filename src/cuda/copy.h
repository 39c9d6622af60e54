/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The copy kernel (kernels/copy.cu): one launch copies a batch of scattered
 * segments listed in a table in device memory, instead of one
 * cuMemcpyAsync per segment (about 5 us each, whatever the size). Its PTX
 * is embedded in the library and loaded once per device, in the device's
 * primary context, when memory of that device is first registered; a driver that
 * cannot load it makes the callers keep the copy engines.
 *
 * How a batch is split between the kernel and the copy engines is the
 * caller's (the CUDA IPC backend's plan); this file knows the kernel, its
 * table, its grid and the knobs that choose it.
 */
#ifndef FERRY_CUDA_COPY_H
#define FERRY_CUDA_COPY_H

#include "cuda/cuda.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* One entry of the kernel's table: device addresses (host memory by its
 * mapped device address) and a length; kernels/copy.cu reads the same
 * layout. */
typedef struct ferry__cuda_copy_entry {
    uint64_t local;
    uint64_t remote;
    uint64_t len;
} ferry__cuda_copy_entry_t;

/* The most bytes one entry copies: longer segments are cut into several
 * entries, so that the thread blocks share a batch's bytes evenly. */
#define FERRY__CUDA_COPY_PIECE (64u << 10)
/* Threads per block (the kernel's __launch_bounds__). */
#define FERRY__CUDA_COPY_THREADS 512u

/* FERRY_CUDA_COPY: who copies a CUDA IPC batch. */
typedef enum ferry__cuda_copy_mode {
    FERRY__COPY_AUTO,   /* the kernel for small segments, engines for large */
    FERRY__COPY_ENGINE, /* one cuMemcpyAsync per segment */
    FERRY__COPY_KERNEL  /* the kernel for every segment it can reach */
} ferry__cuda_copy_mode_t;

/* The mode FERRY_CUDA_COPY asks for; FERRY_ERR_INVALID for a value that
 * is none of auto, engine, kernel. */
ferry_status_t ferry__cuda_copy_mode(ferry__cuda_copy_mode_t *mode_p);
/* FERRY_CUDA_COPY_MAX: in auto mode, segments of at most this many bytes
 * go to the kernel. */
uint64_t ferry__cuda_copy_max(void);

/*
 * The kernel's function for device, loading its module the first time
 * (thread-safe). FERRY_ERR_UNSUPPORTED, with the driver's reason as the
 * detail text, when the driver cannot load it; the same answer every time
 * after the first, which is logged once.
 */
ferry_status_t ferry__cuda_copy_kernel(int device, CUfunction *fn_p);
/*
 * Loads the kernel for device now, unless FERRY_CUDA_COPY is engine; a
 * failure is only logged (the copies then take the engines). Called when
 * memory of the device is registered, so that no copy on a transfer's
 * path, a progress thread's included, is the first launch (copy.c says
 * why that matters).
 */
void ferry__cuda_copy_preload(int device);

/* The grid a launch on device uses: FERRY_CUDA_COPY_BLOCKS thread blocks,
 * or the default for the device. */
unsigned ferry__cuda_copy_blocks(int device);

/* Enqueues the kernel over n entries of table (device memory) on stream,
 * in blocks thread blocks (fewer when n is smaller); write: local ->
 * remote, else remote -> local. The caller has pushed the device's
 * context. Nothing is allocated: a captured graph replays it as it is. */
ferry_status_t ferry__cuda_copy_launch(CUfunction fn, CUdeviceptr table, unsigned n,
                                       bool write, unsigned blocks, CUstream stream);

/* For ferry-info: the copy mode, the threshold and each device's grid, or
 * why the kernel cannot load. */
void ferry__cuda_copy_describe(FILE *out);

#endif
