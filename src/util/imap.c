/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Interval map over a sorted array (see imap.h).
 */
#include "util/imap.h"

#include <stdlib.h>
#include <string.h>

void ferry__imap_init(ferry__imap_t *m)
{
    memset(m, 0, sizeof(*m));
}

void ferry__imap_free(ferry__imap_t *m)
{
    free(m->e);
    ferry__imap_init(m);
}

static void imap_fix_maxend(ferry__imap_t *m, size_t from)
{
    uint64_t maxend = from > 0 ? m->e[from - 1].maxend : 0;

    for (size_t i = from; i < m->n; i++) {
        if (m->e[i].end > maxend)
            maxend = m->e[i].end;
        m->e[i].maxend = maxend;
    }
}

/* Index of the first entry whose start is greater than addr. */
static size_t imap_upper(const ferry__imap_t *m, uint64_t addr)
{
    size_t lo = 0, hi = m->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (m->e[mid].start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static ferry_status_t imap_grow(ferry__imap_t *m)
{
    size_t cap;
    ferry__imap_entry_t *e;

    if (m->n < m->cap)
        return FERRY_OK;
    cap = m->cap ? m->cap * 2 : 16;
    e = realloc(m->e, cap * sizeof(*e));
    if (e == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "interval map: no memory for %zu entries", cap);
    m->e = e;
    m->cap = cap;
    return FERRY_OK;
}

ferry_status_t ferry__imap_insert(ferry__imap_t *m, uint64_t start,
                                  uint64_t len, void *val)
{
    size_t at;

    FERRY_CHECK(imap_grow(m));
    at = imap_upper(m, start);
    memmove(&m->e[at + 1], &m->e[at], (m->n - at) * sizeof(*m->e));
    m->e[at] = (ferry__imap_entry_t){start, start + len, 0, val};
    m->n++;
    imap_fix_maxend(m, at);
    return FERRY_OK;
}

ferry_status_t ferry__imap_append(ferry__imap_t *m, uint64_t start,
                                  uint64_t len, void *val)
{
    FERRY_CHECK(imap_grow(m));
    m->e[m->n++] = (ferry__imap_entry_t){start, start + len, 0, val};
    return FERRY_OK;
}

static int imap_cmp(const void *a, const void *b)
{
    const ferry__imap_entry_t *x = a, *y = b;

    return (x->start > y->start) - (x->start < y->start);
}

void ferry__imap_sort(ferry__imap_t *m)
{
    if (m->n > 1)
        qsort(m->e, m->n, sizeof(*m->e), imap_cmp);
    imap_fix_maxend(m, 0);
}

int ferry__imap_remove(ferry__imap_t *m, uint64_t start, const void *val)
{
    size_t i = imap_upper(m, start);

    while (i-- > 0 && m->e[i].start == start) {
        if (m->e[i].val == val) {
            memmove(&m->e[i], &m->e[i + 1], (m->n - i - 1) * sizeof(*m->e));
            m->n--;
            imap_fix_maxend(m, i);
            return 0;
        }
    }
    return -1;
}

ferry__imap_hit_t ferry__imap_find(const ferry__imap_t *m, uint64_t addr,
                                   uint64_t len, void **val_p)
{
    ferry__imap_hit_t hit = FERRY__IMAP_NONE;
    size_t i = imap_upper(m, addr);

    /* Entries before i start at or below addr; walk back while any of them
     * can still reach past addr. */
    while (i-- > 0 && m->e[i].maxend > addr) {
        if (m->e[i].end > addr) {
            if (m->e[i].end - addr >= len) {
                *val_p = m->e[i].val;
                return FERRY__IMAP_FOUND;
            }
            hit = FERRY__IMAP_PARTIAL;
        }
    }
    return hit;
}
