/* SPDX-License-Identifier: Apache-2.0 */
/*
 * copy-kernel: ferry's copy kernel (src/cuda/kernels/copy.cu) alone, in one
 * process, against one contiguous cudaMemcpyAsync of the same bytes, for
 * batches of scattered blocks (random block slots in two 1 GiB buffers,
 * cut into 64 KiB pieces as the library does) at several block sizes and
 * grids; each figure is the kernel's GB/s over the contiguous copy's,
 * both timed with events over 50 back-to-back launches. It chose the
 * default grid (FERRY_CUDA_COPY_BLOCKS auto: two blocks of 512 threads per
 * SM). Last, a check that unaligned pieces arrive intact.
 *
 * Not part of the build (it needs nvcc); on the GPU machine:
 *   nvcc -O3 -arch=sm_90 -o /tmp/copy-kernel bench/copy-kernel.cu && /tmp/copy-kernel
 * The end-to-end figures through ferry come from ferry-gpu-bench.
 */
#include "../src/cuda/kernels/copy.cu"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
#define CK(x) do { cudaError_t e = (x); if (e) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1);} } while (0)
int main() {
    size_t cap = 1ull << 30;
    char *a, *b; CK(cudaMalloc(&a, cap)); CK(cudaMalloc(&b, cap));
    CK(cudaMemset(a, 7, cap));
    int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    printf("SMs %d\n", sms);
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    struct { int n; size_t sz; } rows[] = {{1024, 4096}, {8192, 4096}, {1024, 32768}, {4096, 32768}, {64, 262144}, {1024, 262144}, {16, 4<<20}, {64, 1<<20}};
    int grids[] = {16, 32, 64, 132, 264, 528};
    int threads[] = {256, 512};
    for (auto &r : rows) {
        size_t total = r.n * r.sz; size_t slots = cap / r.sz;
        std::vector<size_t> idx(slots); for (size_t i = 0; i < slots; i++) idx[i] = i;
        std::shuffle(idx.begin(), idx.end(), std::mt19937(1));
        std::vector<size_t> idx2 = idx; std::shuffle(idx2.begin(), idx2.end(), std::mt19937(2));
        const size_t piece = 65536;
        std::vector<ferry_copy_entry> t;
        for (int i = 0; i < r.n; i++)
            for (size_t o = 0; o < r.sz; o += piece)
                t.push_back({(unsigned long long)(a + idx[i] * r.sz + o), (unsigned long long)(b + idx2[i] * r.sz + o), std::min(piece, r.sz - o)});
        ferry_copy_entry *dt; CK(cudaMalloc(&dt, t.size() * sizeof(t[0])));
        CK(cudaMemcpy(dt, t.data(), t.size() * sizeof(t[0]), cudaMemcpyHostToDevice));
        float ms;
        int it = 50;
        cudaMemcpyAsync(b, a, total, cudaMemcpyDeviceToDevice);
        cudaEventRecord(e0); for (int i = 0; i < it; i++) cudaMemcpyAsync(b, a, total, cudaMemcpyDeviceToDevice); cudaEventRecord(e1); cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1); double ref = total * it / (ms * 1e6);
        printf("%5d x %7zu: contiguous %.0f GB/s (%.1f us);", r.n, r.sz, ref, ms * 1000 / it);
        for (int th : threads) for (int g : grids) {
            ferry_copy<<<g, th>>>(dt, t.size(), 1);
            cudaEventRecord(e0); for (int i = 0; i < it; i++) ferry_copy<<<g, th>>>(dt, t.size(), i & 1); cudaEventRecord(e1); CK(cudaEventSynchronize(e1));
            cudaEventElapsedTime(&ms, e0, e1);
            printf(" %d/%d %.2f", th, g, total * it / (ms * 1e6) / ref);
        }
        printf("\n");
        cudaFree(dt);
    }
    // correctness spot check: misaligned
    {
        std::mt19937 g(3); std::vector<char> h(1 << 20), o(1 << 20); for (auto &c : h) c = g();
        CK(cudaMemcpy(a, h.data(), h.size(), cudaMemcpyHostToDevice)); CK(cudaMemset(b, 0, 1 << 21));
        std::vector<ferry_copy_entry> t; size_t so = 0, dof = 3;
        for (int i = 0; i < 100; i++) { size_t len = g() % 5000 + 1; so += g() % 17; if (so + len > (1<<20)) break; t.push_back({(unsigned long long)(a + so), (unsigned long long)(b + dof), len}); so += len; dof += len + 11; }
        ferry_copy_entry *dt; cudaMalloc(&dt, t.size() * 24); cudaMemcpy(dt, t.data(), t.size() * 24, cudaMemcpyHostToDevice);
        ferry_copy<<<7, 512>>>(dt, t.size(), 1); CK(cudaDeviceSynchronize());
        std::vector<char> out(1 << 21); cudaMemcpy(out.data(), b, 1 << 21, cudaMemcpyDeviceToHost);
        int bad = 0; for (auto &e : t) if (memcmp(out.data() + (e.remote - (unsigned long long)b), h.data() + (e.local - (unsigned long long)a), e.len)) bad++;
        printf("misaligned check: %zu entries, %d bad\n", t.size(), bad);
    }
}
