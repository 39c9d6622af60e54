/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The job secret: an optional string shared by the members of a job
 * (FERRY_JOB_SECRET, or a parameter), from which two keys are derived with
 * HMAC-SHA-256 (OpenSSL's libcrypto): one seals metadata blobs (core/md.c),
 * the other authenticates store connections (store/). Keeping the uses
 * apart means a MAC made for one can never be replayed as the other. Also
 * here: the MAC itself over several pieces, a constant-time comparison and
 * random bytes for nonces.
 */
#ifndef FERRY_UTIL_SECRET_H
#define FERRY_UTIL_SECRET_H

#include "util/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY__MAC_LEN 32
#define FERRY__KEY_ID_LEN 8

typedef struct ferry__secret {
    bool set;
    uint8_t blob_key[FERRY__MAC_LEN];  /* seals metadata blobs */
    uint8_t store_key[FERRY__MAC_LEN]; /* authenticates store connections */
    uint8_t id[FERRY__KEY_ID_LEN];     /* names the secret, revealing nothing */
} ferry__secret_t;

/* One piece of a MAC's message. */
typedef struct ferry__mac_part {
    const void *p;
    size_t n;
} ferry__mac_part_t;

/*
 * Derives the keys from text: NULL reads FERRY_JOB_SECRET; an empty string
 * (or an unset variable) leaves the secret unset (s->set false), which is
 * FERRY_OK. FERRY_ERR_INVALID for a secret shorter than 16 bytes, which
 * could be guessed.
 */
ferry_status_t ferry__secret_init(ferry__secret_t *s, const char *text);

/* Erases the keys. */
void ferry__secret_clear(ferry__secret_t *s);

/* HMAC-SHA-256 with key over the concatenation of the parts. */
ferry_status_t ferry__mac(const uint8_t key[FERRY__MAC_LEN], const ferry__mac_part_t *parts,
                          size_t nparts, uint8_t out[FERRY__MAC_LEN]);

/* Whether a and b are equal, in time that does not depend on where they
 * differ. */
bool ferry__ct_equal(const void *a, const void *b, size_t n);

/* n bytes from the system's random source. */
ferry_status_t ferry__random(void *p, size_t n);

#endif
