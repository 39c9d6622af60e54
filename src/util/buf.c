/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Serialization helpers and CRC-32.
 */
#include "util/buf.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

void ferry__wbuf_init(ferry__wbuf_t *w)
{
    memset(w, 0, sizeof(*w));
}

void ferry__wbuf_free(ferry__wbuf_t *w)
{
    free(w->data);
    ferry__wbuf_init(w);
}

size_t ferry__wbuf_reserve(ferry__wbuf_t *w, size_t n)
{
    size_t pos = w->len;

    if (w->oom)
        return SIZE_MAX;
    if (n > SIZE_MAX / 2 - w->len) {
        w->oom = true;
        return SIZE_MAX;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        uint8_t *d;

        while (cap < w->len + n)
            cap *= 2;
        d = realloc(w->data, cap);
        if (d == NULL) {
            w->oom = true;
            return SIZE_MAX;
        }
        w->data = d;
        w->cap = cap;
    }
    w->len += n;
    return pos;
}

void ferry__wbuf_bytes(ferry__wbuf_t *w, const void *p, size_t n)
{
    size_t pos = ferry__wbuf_reserve(w, n);

    if (pos != SIZE_MAX && n > 0)
        memcpy(w->data + pos, p, n);
}

static void wbuf_le(ferry__wbuf_t *w, uint64_t v, size_t n)
{
    size_t pos = ferry__wbuf_reserve(w, n);

    if (pos == SIZE_MAX)
        return;
    for (size_t i = 0; i < n; i++)
        w->data[pos + i] = (uint8_t)(v >> (8 * i));
}

void ferry__wbuf_u8(ferry__wbuf_t *w, uint8_t v) { wbuf_le(w, v, 1); }
void ferry__wbuf_u16(ferry__wbuf_t *w, uint16_t v) { wbuf_le(w, v, 2); }
void ferry__wbuf_u32(ferry__wbuf_t *w, uint32_t v) { wbuf_le(w, v, 4); }
void ferry__wbuf_u64(ferry__wbuf_t *w, uint64_t v) { wbuf_le(w, v, 8); }

void ferry__wbuf_put_u32_at(ferry__wbuf_t *w, size_t pos, uint32_t v)
{
    if (!w->oom && pos + 4 <= w->len)
        ferry__store_le32(w->data + pos, v);
}

void ferry__rbuf_init(ferry__rbuf_t *r, const void *p, size_t len)
{
    r->p = p;
    r->left = len;
    r->err = false;
}

const uint8_t *ferry__rbuf_bytes(ferry__rbuf_t *r, size_t n)
{
    const uint8_t *p;

    if (r->err || n > r->left) {
        r->err = true;
        return NULL;
    }
    p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static uint64_t rbuf_le(ferry__rbuf_t *r, size_t n)
{
    const uint8_t *p = ferry__rbuf_bytes(r, n);
    uint64_t v = 0;

    if (p == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint8_t ferry__rbuf_u8(ferry__rbuf_t *r) { return (uint8_t)rbuf_le(r, 1); }
uint16_t ferry__rbuf_u16(ferry__rbuf_t *r) { return (uint16_t)rbuf_le(r, 2); }
uint32_t ferry__rbuf_u32(ferry__rbuf_t *r) { return (uint32_t)rbuf_le(r, 4); }
uint64_t ferry__rbuf_u64(ferry__rbuf_t *r) { return rbuf_le(r, 8); }

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;

        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t ferry__crc32(uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;

    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}
