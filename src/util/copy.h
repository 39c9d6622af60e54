/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The copy that moves a transfer's bytes between processes of one host, into
 * or out of a peer's memory mapped here.
 *
 * A copy whose source and destination together outgrow the last-level cache
 * pays for every destination line twice with ordinary stores: the line is
 * read from memory before it is written (and something else is evicted for
 * it). Non-temporal stores write whole lines straight to memory. glibc
 * switches to them only above its own threshold, which it derives from the
 * cache size that cpuid reports; in virtual machines that is often the
 * host's whole cache times the threads sharing it, far above the cache the
 * guest really has (320 MiB for a 32 MiB L3 here), so a 16 MiB copy never
 * gets them. ferry decides itself, from the cache size sysfs gives.
 */
#ifndef FERRY_UTIL_COPY_H
#define FERRY_UTIL_COPY_H

#include <stddef.h>

/* The size of a post from which copies use non-temporal stores:
 * FERRY_COPY_NT_MIN, whose default "auto" is half the last-level cache as
 * sysfs gives it (copies whose source and destination fill it), at most
 * 16 MiB, or never (SIZE_MAX) when sysfs has none; "off" is never. */
size_t ferry__copy_nt_min(void);

/* memmove(dst, src, len), with non-temporal stores when len >= nt_min and
 * len >= 128, the ranges do not overlap and the processor has them (x86-64).
 * Non-temporal stores are weakly ordered: call ferry__copy_fence() after the
 * last copy, before anything that tells a reader the bytes are there. */
void ferry__copy(void *dst, const void *src, size_t len, size_t nt_min);

/* Orders every earlier non-temporal store of ferry__copy() before the
 * stores that follow (a store fence; nothing where there are none). */
void ferry__copy_fence(void);

#endif
