/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Random descriptor layouts and the byte-exact check of a destination:
 * each range holds its data pattern, every byte between and around the
 * ranges its guard pattern (see xfer_util.h). Both processes of a test can
 * recompute a layout from a seed, or one sends it to the other (target.h).
 */
#include "xfer_util.h"

int xu_place(test_rng_t *rng, const uint64_t *len,
             const size_t *idx, size_t m, uint64_t cap,
             uint64_t *off, size_t *order, uint64_t *lo_p,
             uint64_t *hi_p)
{
    uint64_t total = 0, slack, extra, wsum = 0, base, cur;
    size_t *perm = xu_xcalloc(m, sizeof(*perm));
    uint32_t *w = xu_xcalloc(m + 1, sizeof(*w));

    for (size_t k = 0; k < m; k++)
        total += len[idx[k]];
    if (total + m + 1 > cap) {
        free(perm);
        free(w);
        return -1;
    }
    /* Slack of a quarter of the data (at least two bytes per gap), capped by
     * what the buffer has left. */
    slack = total / 4;
    if (slack < 2 * (uint64_t)(m + 1))
        slack = 2 * (uint64_t)(m + 1);
    if (slack > cap - total)
        slack = cap - total;
    for (size_t k = 0; k < m; k++)
        perm[k] = idx[k];
    for (size_t k = m; k > 1; k--) { /* Fisher-Yates */
        size_t j = (size_t)test_rand_range(rng, 0, k - 1), t = perm[k - 1];

        perm[k - 1] = perm[j];
        perm[j] = t;
    }
    /* Gap k precedes the k-th range in address order (gap m follows the
     * last). One gap in eight is zero; the others get one byte plus a
     * random share of the slack left over. */
    for (size_t k = 0; k <= m; k++) {
        w[k] = (test_rand(rng) % 8 == 0) ? 0 : (uint32_t)(1 + test_rand(rng) % 65535);
        wsum += w[k];
    }
    extra = slack;
    for (size_t k = 0; k <= m; k++)
        if (w[k])
            extra--;
    base = test_rand_range(rng, 0, cap - total - slack);
    *lo_p = base;
    cur = base;
    for (size_t k = 0; k <= m; k++) {
        uint64_t gap = 0;

        if (w[k] && wsum)
            gap = 1 + (uint64_t)((unsigned __int128)extra * w[k] / wsum);
        cur += gap;
        if (k == m)
            break;
        off[perm[k]] = cur;
        cur += len[perm[k]];
    }
    /* The shares round down, so the window ends at or before its budget. */
    *hi_p = cur;
    if (order)
        memcpy(order, perm, m * sizeof(*perm));
    free(perm);
    free(w);
    return 0;
}

void xu_side_alloc(xu_side_t *s, size_t n)
{
    s->off = xu_xcalloc(n, sizeof(*s->off));
    s->order = xu_xcalloc(n, sizeof(*s->order));
    s->lo = s->hi = 0;
}

void xu_layout_free(xu_layout_t *l)
{
    free(l->len);
    free(l->stream);
    free(l->local.off);
    free(l->local.order);
    free(l->remote.off);
    free(l->remote.order);
    memset(l, 0, sizeof(*l));
}

int xu_layout_make(xu_layout_t *l, test_rng_t *rng, size_t n,
                   uint64_t max_len, uint64_t local_cap,
                   uint64_t remote_cap)
{
    size_t *idx = xu_xcalloc(n, sizeof(*idx));
    int rc;

    memset(l, 0, sizeof(*l));
    l->n = n;
    l->len = xu_xcalloc(n, sizeof(*l->len));
    l->stream = xu_xcalloc(n, sizeof(*l->stream));
    xu_side_alloc(&l->local, n);
    xu_side_alloc(&l->remote, n);
    for (size_t i = 0; i < n; i++) {
        l->len[i] = test_rand_range(rng, 1, max_len);
        idx[i] = i;
    }
    if (n >= 3) {
        size_t one = (size_t)test_rand_range(rng, 0, n - 1);
        size_t big = (one + 1 + (size_t)test_rand_range(rng, 0, n - 2)) % n;

        l->len[one] = 1;
        l->len[big] = max_len;
    }
    for (size_t i = 0; i < n; i++) {
        l->stream[i] = l->total;
        l->total += l->len[i];
    }
    rc = xu_place(rng, l->len, idx, n, local_cap, l->local.off, l->local.order,
                  &l->local.lo, &l->local.hi);
    if (rc == 0)
        rc = xu_place(rng, l->len, idx, n, remote_cap, l->remote.off,
                      l->remote.order, &l->remote.lo, &l->remote.hi);
    free(idx);
    if (rc != 0)
        xu_layout_free(l);
    return rc;
}

uint64_t xu_layout_hash(const xu_layout_t *l)
{
    test_rng_t h = {l->n};

    for (size_t i = 0; i < l->n; i++) {
        h.s ^= l->len[i] * 31 + l->local.off[i];
        (void)test_rand(&h);
        h.s ^= l->remote.off[i];
        (void)test_rand(&h);
    }
    return test_rand(&h);
}

void xu_fill_ranges(uint8_t *buf, const xu_layout_t *l,
                    const xu_side_t *s, uint64_t seed,
                    uint64_t iter)
{
    for (size_t i = 0; i < l->n; i++)
        test_fill_fast(buf + s->off[i], l->len[i], seed, iter, l->stream[i]);
}

void xu_fill_guard(uint8_t *buf, uint64_t lo, uint64_t hi,
                   uint64_t seed, uint64_t guard_iter)
{
    test_fill_fast(buf + lo, hi - lo, seed, guard_iter, lo);
}

size_t xu_check_dest(const uint8_t *buf, const xu_layout_t *l,
                     const xu_side_t *s, uint64_t lo,
                     uint64_t hi, uint64_t seed, uint64_t iter,
                     uint64_t guard_iter, const char *what)
{
    size_t bad = 0;
    uint64_t cur = lo;

    for (size_t k = 0; k <= l->n; k++) {
        uint64_t gap_end = (k < l->n) ? s->off[s->order[k]] : hi;
        uint64_t r;

        /* The gap before the k-th range in address order. */
        if (gap_end > cur) {
            r = test_verify_fast(buf + cur, gap_end - cur, seed, guard_iter, cur);
            if (r != UINT64_MAX) {
                if (bad++ < 8)
                    fprintf(stderr,
                            "%s: guard byte changed at buffer offset %" PRIu64
                            " (gap after descriptor %lld, before descriptor %lld; -1 = "
                            "none): got 0x%02x, guard 0x%02x\n",
                            what, cur + r,
                            k ? (long long)s->order[k - 1] : -1LL,
                            k < l->n ? (long long)s->order[k] : -1LL,
                            buf[cur + r], test_pattern(seed, guard_iter, cur + r));
            }
        }
        if (k == l->n)
            break;
        {
            size_t i = s->order[k];

            r = test_verify_fast(buf + s->off[i], l->len[i], seed, iter, l->stream[i]);
            if (r != UINT64_MAX) {
                uint8_t got = buf[s->off[i] + r];

                if (bad++ < 8)
                    fprintf(stderr,
                            "%s: descriptor %zu (len %" PRIu64 ", buffer offset %"
                            PRIu64 "): byte %" PRIu64 " (buffer offset %" PRIu64
                            ") is 0x%02x, expected 0x%02x of pattern %" PRIu64 "%s\n",
                            what, i, l->len[i], s->off[i], r, s->off[i] + r,
                            got, test_pattern(seed, iter, l->stream[i] + r), iter,
                            got == test_pattern(seed, iter - 1, l->stream[i] + r)
                                ? " (the previous iteration's byte: stale data?)"
                                : "");
            }
            cur = s->off[i] + l->len[i];
        }
    }
    if (bad > 8)
        fprintf(stderr, "%s: %zu bad ranges/gaps in all\n", what, bad);
    return bad;
}
