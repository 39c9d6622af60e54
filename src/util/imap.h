/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Interval map: address ranges [start, end) to values, kept sorted by start
 * with a running maximum of ends, so that finding a range that covers
 * [addr, addr + len) is a binary search followed by a short backward scan
 * that stops as soon as no earlier range can reach addr. Ranges may be
 * adjacent, nested or overlapping; the scan is O(log n) plus the number of
 * ranges that overlap addr.
 */
#ifndef FERRY_UTIL_IMAP_H
#define FERRY_UTIL_IMAP_H

#include "util/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct ferry__imap_entry {
    uint64_t start;
    uint64_t end; /* exclusive */
    uint64_t maxend; /* max end of this and every earlier entry */
    void *val;
} ferry__imap_entry_t;

typedef struct ferry__imap {
    ferry__imap_entry_t *e;
    size_t n;
    size_t cap;
} ferry__imap_t;

typedef enum ferry__imap_hit {
    FERRY__IMAP_FOUND = 0,   /* a range covers all of [addr, addr + len) */
    FERRY__IMAP_PARTIAL = 1, /* addr lies in a range, but none covers len */
    FERRY__IMAP_NONE = 2     /* no range contains addr */
} ferry__imap_hit_t;

void ferry__imap_init(ferry__imap_t *m);
void ferry__imap_free(ferry__imap_t *m);
/* Inserts [start, start + len) in order. len > 0 and no overflow required. */
ferry_status_t ferry__imap_insert(ferry__imap_t *m, uint64_t start,
                                  uint64_t len, void *val);
/* Appends without ordering; call ferry__imap_sort() before any lookup. */
ferry_status_t ferry__imap_append(ferry__imap_t *m, uint64_t start,
                                  uint64_t len, void *val);
void ferry__imap_sort(ferry__imap_t *m);
/* Removes the entry with this start and value; returns 0, or -1 if absent. */
int ferry__imap_remove(ferry__imap_t *m, uint64_t start, const void *val);
/* Finds a range covering [addr, addr + len); on FOUND, *val_p is set. */
ferry__imap_hit_t ferry__imap_find(const ferry__imap_t *m, uint64_t addr,
                                   uint64_t len, void **val_p);

#endif
