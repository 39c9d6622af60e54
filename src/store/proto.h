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
 */
#ifndef FERRY_STORE_PROTO_H
#define FERRY_STORE_PROTO_H

#include <stdint.h>
#include <string.h>

#define FERRY__STORE_MAGIC 0x3C85F7CEu

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
    FERRY__Q_QUEUE_LEN = 16
};

enum { FERRY__CHECK_READY = 0, FERRY__CHECK_NOT_READY = 1 };
enum { FERRY__WAIT_STOP_WAITING = 0, FERRY__WAIT_CANCELED = 1 };

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
