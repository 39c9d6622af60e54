/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The store client's internals that the layer above (src/comm) shares.
 */
#ifndef FERRY_STORE_STORE_H
#define FERRY_STORE_STORE_H

#include "ferry.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Splits "tcp://host:port" or "tcp://[v6addr]:port" into host (brackets
 * removed) and port (decimal, 1 to 65535); FERRY_ERR_INVALID with a text
 * naming the URL otherwise. */
ferry_status_t ferry__store_parse_url(const char *url, char *host, size_t hostcap,
                                      char *port, size_t portcap);

/* Caps the deadline of every later call on the connection, its waits and
 * their cancellation included, at deadline_ns (ferry__now_ns() time;
 * UINT64_MAX: no cap), so that a caller with a deadline of its own (a
 * collective) is not held past it by a stalled server. */
void ferry__store_set_cap(ferry_store_t *store, uint64_t deadline_ns);

/* Sets the limit of the connection's later calls that take no timeout of
 * their own (the timeout_ns it was connected with). */
void ferry__store_set_timeout(ferry_store_t *store, uint64_t timeout_ns);

/* Whether a failure has closed the connection, so that every later call
 * fails at once with FERRY_ERR_PEER_LOST (naming that failure). */
bool ferry__store_lost(ferry_store_t *store);

#endif
