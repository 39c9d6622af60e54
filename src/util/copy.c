/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Copies between processes, with non-temporal stores for large ones.
 */
#include "util/copy.h"
#include "util/config.h"
#include "util/log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

/* Reads the first line of cpu0's cache file index<i>/<name> into buf,
 * without its newline; returns false (buf empty) when it cannot be read. */
static bool cache_attr(int i, const char *name, char *buf, size_t cap)
{
    char path[96];
    FILE *f;

    buf[0] = '\0';
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/%s", i, name);
    if ((f = fopen(path, "r")) == NULL)
        return false;
    if (fgets(buf, (int)cap, f) == NULL)
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return true;
}

/* The size of the highest-level data or unified cache of CPU 0, from sysfs;
 * 0 when it cannot be read. */
static uint64_t llc_size(void)
{
    uint64_t best_level = 0, size = 0;

    for (int i = 0; i < 16; i++) {
        char level[16], type[32], sz[32];
        uint64_t lv = 0, bytes = 0;

        if (!cache_attr(i, "level", level, sizeof(level)))
            break;
        (void)cache_attr(i, "type", type, sizeof(type));
        (void)cache_attr(i, "size", sz, sizeof(sz));
        if (strncmp(type, "Instruction", 11) == 0 ||
            ferry__parse_size(level, &lv) != 0 || ferry__parse_size(sz, &bytes) != 0)
            continue;
        if (lv > best_level) {
            best_level = lv;
            size = bytes;
        }
    }
    return size;
}

/* The default threshold: half the last-level cache (copies whose source and
 * destination fill it), at most 16 MiB, since a virtual machine may be told
 * of a cache far larger than its share (300 MiB on one whose copies of
 * 4 MiB already run at memory speed); never when sysfs has no cache size. */
static size_t copy_nt_auto(void)
{
    uint64_t n = llc_size() / 2;

    if (n == 0)
        return SIZE_MAX;
    return n > (16u << 20) ? (16u << 20) : (size_t)n;
}

size_t ferry__copy_nt_min(void)
{
    const char *v = ferry__config_get("FERRY_COPY_NT_MIN");
    uint64_t n;

    if (strcmp(v, "off") == 0)
        return SIZE_MAX;
    if (strcmp(v, "auto") == 0)
        return copy_nt_auto();
    if (ferry__parse_size(v, &n) != 0) {
        ferry__warn("FERRY_COPY_NT_MIN=%s is neither auto, off nor a size; using auto", v);
        return copy_nt_auto();
    }
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

#if defined(__x86_64__)
/* Unaligned 16-byte loads, non-temporal 16-byte stores (SSE2, which every
 * x86-64 has; wider stores measured no faster, since the copy is bound by
 * memory), one whole cache line per round: the head up to the destination's
 * first line boundary and the tail after its last are ordinary copies. */
static void copy_nt(uint8_t *d, const uint8_t *s, size_t len)
{
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;

    memcpy(d, s, head);
    d += head;
    s += head;
    len -= head;
    for (; len >= 64; len -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));

        _mm_stream_si128((__m128i *)(void *)d, a);
        _mm_stream_si128((__m128i *)(void *)(d + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + 48), e);
    }
    memcpy(d, s, len);
}
#endif

void ferry__copy(void *dst, const void *src, size_t len, size_t nt_min)
{
#if defined(__x86_64__)
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;

    if (len >= nt_min && len >= 128 && (d + len <= s || s + len <= d)) {
        copy_nt(dst, src, len);
        return;
    }
#else
    (void)nt_min;
#endif
    memmove(dst, src, len);
}

void ferry__copy_fence(void)
{
#if defined(__x86_64__)
    _mm_sfence();
#endif
}
