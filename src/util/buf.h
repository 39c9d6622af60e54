/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Little-endian serialization: a growable writer and a bounds-checked
 * reader. The reader never reads past its end: an underflow sets a sticky
 * error flag and yields zeros, so a parser checks once per record instead
 * of after every field. Also the CRC-32 (IEEE) that checksums blobs.
 */
#ifndef FERRY_UTIL_BUF_H
#define FERRY_UTIL_BUF_H

#include "util/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ferry__wbuf {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool oom; /* an allocation failed; the contents are incomplete */
} ferry__wbuf_t;

void ferry__wbuf_init(ferry__wbuf_t *w);
void ferry__wbuf_free(ferry__wbuf_t *w);
/* Reserves n bytes and returns their position, or SIZE_MAX on failure. */
size_t ferry__wbuf_reserve(ferry__wbuf_t *w, size_t n);
void ferry__wbuf_bytes(ferry__wbuf_t *w, const void *p, size_t n);
void ferry__wbuf_u8(ferry__wbuf_t *w, uint8_t v);
void ferry__wbuf_u16(ferry__wbuf_t *w, uint16_t v);
void ferry__wbuf_u32(ferry__wbuf_t *w, uint32_t v);
void ferry__wbuf_u64(ferry__wbuf_t *w, uint64_t v);
/* Overwrites a u32 at an earlier position (lengths known only later). */
void ferry__wbuf_put_u32_at(ferry__wbuf_t *w, size_t pos, uint32_t v);

typedef struct ferry__rbuf {
    const uint8_t *p;
    size_t left;
    bool err; /* a read ran past the end */
} ferry__rbuf_t;

void ferry__rbuf_init(ferry__rbuf_t *r, const void *p, size_t len);
uint8_t ferry__rbuf_u8(ferry__rbuf_t *r);
uint16_t ferry__rbuf_u16(ferry__rbuf_t *r);
uint32_t ferry__rbuf_u32(ferry__rbuf_t *r);
uint64_t ferry__rbuf_u64(ferry__rbuf_t *r);
/* Returns a pointer to the next n bytes and skips them, or NULL (and sets
 * err) if fewer are left. */
const uint8_t *ferry__rbuf_bytes(ferry__rbuf_t *r, size_t n);

static inline uint32_t ferry__load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void ferry__store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* CRC-32 (IEEE 802.3, reflected, as zlib) of n bytes, continuing from crc
 * (start with 0). */
uint32_t ferry__crc32(uint32_t crc, const void *p, size_t n);

#endif
