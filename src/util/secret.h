/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The job secret: an optional string shared by the members of a job
 * (FERRY_JOB_SECRET, or a parameter), from which three keys are derived
 * with HMAC-SHA-256 (OpenSSL's libcrypto): one seals metadata blobs
 * (core/md.c), one authenticates store connections (store/), one seals the
 * staging backend's messages (backends/staged/). Keeping the uses apart
 * means a MAC made for one can never be replayed as another. Also here:
 * the MAC itself over several pieces (at once, or with a key readied once
 * for the many MACs of a data path), a constant-time comparison and random
 * bytes for nonces.
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
    uint8_t stage_key[FERRY__MAC_LEN]; /* seals staging messages */
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

/* A key readied for many MACs: its HMAC state keyed once (OpenSSL's
 * EVP_MAC_CTX), so that each MAC costs only the hashing (about 0.5 us for
 * 40 bytes, where ferry__mac takes 1.2: docs/PERFORMANCE.md). Used by one
 * thread at a time. */
typedef struct ferry__mac_key ferry__mac_key_t;

/* Readies key for ferry__mac_with: FERRY_OK with *k_p, or
 * FERRY_ERR_SYSTEM. */
ferry_status_t ferry__mac_key_new(const uint8_t key[FERRY__MAC_LEN], ferry__mac_key_t **k_p);

/* HMAC-SHA-256 with a readied key over the concatenation of the parts. */
ferry_status_t ferry__mac_with(ferry__mac_key_t *k, const ferry__mac_part_t *parts,
                               size_t nparts, uint8_t out[FERRY__MAC_LEN]);

/* Frees a readied key (NULL is fine). */
void ferry__mac_key_free(ferry__mac_key_t *k);

/* Whether a and b are equal, in time that does not depend on where they
 * differ. */
bool ferry__ct_equal(const void *a, const void *b, size_t n);

/* n bytes from the system's random source. */
ferry_status_t ferry__random(void *p, size_t n);

#endif
