/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The c10d TCPStore wire protocol shared by ferry's store client
 * (store.c) and server (store_server.c): query types, reply codes, the
 * validation magic and the little-endian helpers the frames are built with.
 * docs/STORE.md says which PyTorch sources these were taken from.
 *
 * Every integer is little-endian (PyTorch writes host order; every host it
 * ships for is little-endian). A string or byte vector is a u64 length and
 * then that many bytes. A message is one query byte and its arguments:
 *
 *   VALIDATE    0  u32 magic 0x3C85F7CE       -> (nothing); must come first
 *   SET         1  str key, vec value         -> (nothing)
 *   COMPARE_SET 2  str key, vec expected, vec desired -> vec current
 *   GET         3  str key                    -> vec value (empty if missing)
 *   ADD         4  str key, i64 delta         -> i64 sum
 *   CHECK       5  u64 n, n x str key         -> u8 READY 0 / NOT_READY 1
 *   WAIT        6  u64 n, n x str key         -> u8 STOP_WAITING 0, once all
 *                                                keys exist (maybe much later)
 *   GETNUMKEYS  7  -                          -> i64 count
 *   DELETE_KEY  8  str key                    -> i64 deleted (0 or 1)
 *   APPEND      9  str key, vec value         -> (nothing)
 *   MULTI_GET  10  u64 n, n x str key         -> n x vec value
 *   MULTI_SET  11  u64 n, n x (str key, vec value) -> (nothing)
 *   CANCEL_WAIT 12 -                          -> u8 WAIT_CANCELED 1 (after a
 *                                                STOP_WAITING already sent, if
 *                                                the wait ended first)
 *   PING       13  u32 nonce                  -> u32 nonce
 *   QUEUE_PUSH 14, QUEUE_POP 15, QUEUE_LEN 16: not implemented here.
 *
 * ferry's authenticated handshake, for a client with a job secret
 * (util/secret.h; the store key is derived from it). It replaces torch's
 * VALIDATE, so a server with a secret serves nobody who has not proved
 * the secret, and a torch client never sees it:
 *
 *   VALIDATE    0  u32 magic 0x31415246 ("FRA1"), u8 client nonce[32]
 *                  -> u8 1, u8 server nonce[32], u8 server proof[32]
 *                     (a server with a secret), or u8 0 (one without)
 *   AUTH      160  u8 client proof[32]        -> u8 1; a wrong proof
 *                                                closes the connection
 *
 *   server proof = HMAC-SHA-256(store key, "ferry store server" cn sn)
 *   client proof = HMAC-SHA-256(store key, "ferry store client" cn sn)
 *
 * Each side proves the secret over both nonces, so neither a recorded
 * exchange nor one side's proof can be replayed as the other's.
 */
#ifndef FERRY_STORE_PROTO_H
#define FERRY_STORE_PROTO_H

#include "util/secret.h"

#include <stdint.h>
#include <string.h>

#define FERRY__STORE_MAGIC 0x3C85F7CEu
#define FERRY__STORE_AUTH_MAGIC 0x31415246u
#define FERRY__STORE_NONCE 32

enum {
    FERRY__Q_VALIDATE = 0,
    FERRY__Q_SET = 1,
    FERRY__Q_COMPARE_SET = 2,
    FERRY__Q_GET = 3,
    FERRY__Q_ADD = 4,
    FERRY__Q_CHECK = 5,
    FERRY__Q_WAIT = 6,
    FERRY__Q_GETNUMKEYS = 7,
    FERRY__Q_DELETE_KEY = 8,
    FERRY__Q_APPEND = 9,
    FERRY__Q_MULTI_GET = 10,
    FERRY__Q_MULTI_SET = 11,
    FERRY__Q_CANCEL_WAIT = 12,
    FERRY__Q_PING = 13,
    FERRY__Q_QUEUE_PUSH = 14,
    FERRY__Q_QUEUE_POP = 15,
    FERRY__Q_QUEUE_LEN = 16,
    FERRY__Q_AUTH = 160
};

enum { FERRY__CHECK_READY = 0, FERRY__CHECK_NOT_READY = 1 };
enum { FERRY__WAIT_STOP_WAITING = 0, FERRY__WAIT_CANCELED = 1 };

/* The proof one side ("server" or "client") gives of the store key over the
 * handshake's nonces. */
static inline ferry_status_t ferry__store_proof(const ferry__secret_t *secret,
                                                const char *side, const uint8_t *cn,
                                                const uint8_t *sn, uint8_t *out)
{
    static const char label[] = "ferry store ";
    ferry__mac_part_t parts[] = {{label, sizeof(label) - 1}, {side, strlen(side)},
                                 {cn, FERRY__STORE_NONCE}, {sn, FERRY__STORE_NONCE}};

    return ferry__mac(secret->store_key, parts, 4, out);
}

static inline uint64_t ferry__load_le64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline void ferry__store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

#endif
