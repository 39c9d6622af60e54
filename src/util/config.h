/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one table of FERRY_* environment variables: name, default and help.
 * Every knob the library reads is listed here, so that tools can print them.
 */
#ifndef FERRY_UTIL_CONFIG_H
#define FERRY_UTIL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct ferry__config_entry {
    const char *name;
    const char *default_value;
    const char *help;
} ferry__config_entry_t;

/* The table, terminated by an entry whose name is NULL. */
extern const ferry__config_entry_t ferry__config_table[];

/* The variable's value from the environment, or its default. The name must
 * be in the table (asserted). */
const char *ferry__config_get(const char *name);

/* Parses an unsigned number with an optional k/m/g suffix (powers of 1024)
 * into *out; returns 0, or -1 when s is not such a number. */
int ferry__parse_size(const char *s, uint64_t *out);

/* The value parsed as an unsigned number with an optional k/m/g suffix
 * (powers of 1024); falls back to the default, with a warning, when it does
 * not parse. */
uint64_t ferry__config_get_size(const char *name);

#endif
