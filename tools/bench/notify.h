/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench --notify: the latency of a notification, with and without
 * the WRITE it announces, between two ranks on this host, beside UCX's own
 * active-message latency (ucxref.h) from the same run. notify.c says what
 * each row measures.
 */
#ifndef FERRY_BENCH_NOTIFY_H
#define FERRY_BENCH_NOTIFY_H

#include "options.h"

/* Refuses (exit 2) the options --notify does not take, and sets its
 * default sizes (8 B and 1 MiB) unless --sizes was given. */
void notify_check(options_t *o);

/* Runs the measurement: launches the two ranks (argv is this program's
 * command line) or, as a rank of a two-rank job, is one of them. Returns
 * the exit code: non-zero if a message ever came before its bytes. */
int run_notify(const options_t *o, char **argv);

#endif
