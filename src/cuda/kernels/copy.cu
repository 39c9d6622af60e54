/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry's copy kernel: one launch moves a whole batch of scattered segments,
 * read from a table in device memory that the CUDA IPC backend builds once,
 * when a request is prepared (src/backends/cuda_ipc/kernel.c). One
 * cuMemcpyAsync per segment costs about 5 us each whatever its size, so a
 * paged KV cache's thousands of small blocks would move at a few GB/s; this
 * kernel moves them at the speed of one contiguous copy.
 *
 * This file is not compiled when ferry is built: the library embeds the PTX
 * that src/cuda/kernels/gen-ptx makes from it with nvcc (copy.ptx, committed
 * beside it), and the driver compiles that for the GPU at hand when it is
 * first loaded (cuModuleLoadData). Change this file, then run gen-ptx on a
 * machine with nvcc and commit both.
 *
 * The table: one entry per piece, {local, remote, len}, device addresses
 * (host memory by its mapped device address). The backend cuts segments
 * longer than a piece (FERRY__CUDA_COPY_PIECE bytes, src/cuda/copy.h) into
 * several entries, so that no block copies megabytes while others idle.
 * Each thread block copies whole entries, taking every gridDim.x-th one;
 * pieces never overlap (overlapping destinations in one batch are the
 * caller's error, as for any transfer).
 *
 * Any alignment and any length: within a piece, the widest word that the
 * source and destination share an alignment for (16, 8, 4, 2 bytes, else
 * single bytes) carries the body; the bytes before the destination's first
 * aligned word and after its last are copied one by one. Four words per
 * thread are loaded before any is stored, to keep enough reads in flight.
 */
#include <stdint.h>

struct ferry_copy_entry {
    unsigned long long local;
    unsigned long long remote;
    unsigned long long len;
};

template <typename T>
__device__ __forceinline__ void copy_words(char *dst, const char *src,
                                           unsigned long long bytes)
{
    T *d = reinterpret_cast<T *>(dst);
    const T *s = reinterpret_cast<const T *>(src);
    const unsigned long long n = bytes / sizeof(T), step = blockDim.x;
    unsigned long long i = threadIdx.x;

    for (; i + 3 * step < n; i += 4 * step) {
        T a = s[i], b = s[i + step], c = s[i + 2 * step], e = s[i + 3 * step];

        d[i] = a;
        d[i + step] = b;
        d[i + 2 * step] = c;
        d[i + 3 * step] = e;
    }
    for (; i < n; i += step)
        d[i] = s[i];
}

__device__ __forceinline__ void copy_piece(char *dst, const char *src,
                                           unsigned long long len)
{
    const unsigned long long apart = (unsigned long long)dst ^ (unsigned long long)src;
    const unsigned w = (apart & 15) == 0 ? 16 : (apart & 7) == 0 ? 8
                     : (apart & 3) == 0 ? 4 : (apart & 1) == 0 ? 2 : 1;
    unsigned long long head = (w - ((unsigned long long)dst & (w - 1))) & (w - 1);
    unsigned long long body;

    if (head > len)
        head = len;
    if (threadIdx.x < head)
        dst[threadIdx.x] = src[threadIdx.x];
    dst += head;
    src += head;
    len -= head;
    body = len & ~(unsigned long long)(w - 1);
    switch (w) {
    case 16: copy_words<uint4>(dst, src, body); break;
    case 8: copy_words<uint2>(dst, src, body); break;
    case 4: copy_words<unsigned>(dst, src, body); break;
    case 2: copy_words<unsigned short>(dst, src, body); break;
    default: copy_words<unsigned char>(dst, src, body); break;
    }
    if (threadIdx.x < len - body)
        dst[body + threadIdx.x] = src[body + threadIdx.x];
}

/* write != 0: local -> remote (a WRITE); else remote -> local (a READ). */
extern "C" __global__ void __launch_bounds__(512)
ferry_copy(const ferry_copy_entry *table, unsigned n, int write)
{
    for (unsigned i = blockIdx.x; i < n; i += gridDim.x) {
        const ferry_copy_entry e = table[i];
        char *dst = reinterpret_cast<char *>(write ? e.remote : e.local);
        const char *src = reinterpret_cast<const char *>(write ? e.local : e.remote);

        copy_piece(dst, src, e.len);
    }
}
