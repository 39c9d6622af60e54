/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The metadata blob: what an agent tells its peers about itself. Packing
 * walks the agent (md.c); parsing validates every byte before anything is
 * used and yields a ferry__md_t whose pointers refer into the caller's blob.
 *
 * Layout, all integers little-endian, no padding:
 *
 *   header (24 bytes)
 *     0  u32  magic        0x59525246 ("FRRY")
 *     4  u16  version      1
 *     6  u16  flags        0
 *     8  u32  length       of the whole blob, header included
 *    12  u32  checksum     CRC-32 (IEEE) of the whole blob, this field zero
 *    16  u32  nsections
 *    20  u32  reserved     0
 *   nsections times:
 *     0  u16  type
 *     2  u16  flags        0
 *     4  u32  len          of the payload that follows
 *     8  len bytes of payload; a reader skips types it does not know
 *
 *   AGENT (type 1), exactly once
 *        u64  incarnation  random per agent instance
 *        u16  name length (1..255), then the name (no NUL)
 *        u16  host id length (0..255), then the host id
 *        u32  process id   (liveness of peers on the same host)
 *   BACKEND (type 2), at most once per backend
 *        u16  backend id, then the rest of the payload is that backend's
 *             connection address
 *   REGIONS (type 3), at most once
 *        u32  count
 *        count times (28 bytes, then the backend entries):
 *          u32 id, u8 kind, u8 nbackends, u16 reserved,
 *          i32 device, u64 addr, u64 len,
 *          nbackends times: u16 backend id, u32 len, len bytes (remote key)
 *   SEAL (type 4), at most once, and then the last section; written when
 *   the agent has a job secret (util/secret.h)
 *        u8   algorithm    1: HMAC-SHA-256
 *        u8   reserved 0, u16 reserved 0
 *        u8   key id[8]    names the secret (a MAC of a fixed label)
 *        u8   mac[32]      HMAC-SHA-256 with the blob key of the whole blob,
 *                          with the checksum field and these 32 bytes zero
 *   The checksum covers the seal too: it is computed last.
 *
 * A section's payload must be consumed exactly; the sections must fill the
 * blob exactly. Anything else is FERRY_ERR_PROTOCOL.
 */
#ifndef FERRY_CORE_MD_H
#define FERRY_CORE_MD_H

#include "backends/backend.h"
#include "util/buf.h"
#include "util/secret.h"
#include "util/status.h"

#include <stddef.h>
#include <stdint.h>

#define FERRY__MD_MAGIC 0x59525246u
#define FERRY__MD_VERSION 1
#define FERRY__MD_HDR_LEN 24
#define FERRY__MD_NAME_MAX 255
#define FERRY__MD_REGION_FIXED 28

enum {
    FERRY__MD_SEC_AGENT = 1,
    FERRY__MD_SEC_BACKEND = 2,
    FERRY__MD_SEC_REGIONS = 3,
    FERRY__MD_SEC_SEAL = 4
};

#define FERRY__MD_SEAL_LEN 44 /* the SEAL section's payload */
#define FERRY__MD_SEAL_HMAC_SHA256 1

/* Bytes a backend contributed, by backend id (unknown ids are dropped). */
typedef struct ferry__md_bytes {
    const uint8_t *data; /* NULL when absent */
    uint32_t len;
} ferry__md_bytes_t;

typedef struct ferry__md_region {
    uint32_t id;
    ferry_mem_kind_t kind;
    int32_t device;
    uint64_t addr;
    uint64_t len;
    ferry__md_bytes_t bk[FERRY__NBK]; /* by backend slot */
} ferry__md_region_t;

typedef struct ferry__md {
    uint64_t incarnation;
    char name[FERRY__MD_NAME_MAX + 1];
    char host_id[FERRY__MD_NAME_MAX + 1];
    uint32_t pid;
    ferry__md_bytes_t bk_addr[FERRY__NBK]; /* by backend slot */
    uint32_t nregions;
    ferry__md_region_t *regions; /* allocated; free with ferry__md_clear */
    size_t seal_off; /* offset of the SEAL payload in the blob; 0: unsealed */
} ferry__md_t;

/*
 * Validates blob[0..len) completely and fills *md (pointers into blob).
 * max_len bounds the accepted size. Returns FERRY_ERR_PROTOCOL with a
 * detail text on any malformed input, FERRY_ERR_NO_MEMORY, or FERRY_OK.
 */
ferry_status_t ferry__md_parse(const void *blob, size_t len, uint64_t max_len,
                               ferry__md_t *md);
void ferry__md_clear(ferry__md_t *md);

/*
 * With a job secret set, checks the seal of a parsed blob (md from
 * ferry__md_parse() of blob): FERRY_ERR_PROTOCOL, naming the reason, for a
 * blob without a seal, sealed with another secret, or whose seal does not
 * verify (compared in constant time). Without a secret, any blob passes.
 */
ferry_status_t ferry__md_verify(const ferry__secret_t *secret, const uint8_t *blob,
                                size_t len, const ferry__md_t *md);

/* Starts a section header and returns the position of its length field;
 * ferry__md_section_end() fills that in once the payload is written (also
 * used by tests to forge blobs). */
size_t ferry__md_section(ferry__wbuf_t *w, uint16_t type);
void ferry__md_section_end(ferry__wbuf_t *w, size_t lenpos);

/* Fills in the header's length and checksum of a blob whose sections have
 * been written (also used by tests to forge blobs). */
void ferry__md_seal(uint8_t *blob, size_t len);

#endif
