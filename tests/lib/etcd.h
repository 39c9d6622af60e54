/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Real etcd processes for the tests that need a cluster (test_dir,
 * test_comm's etcd cases): members on free loopback ports, each with its
 * data in a temporary directory, always stopped by pid (at exit, from a
 * watchdog through xe_kill_all_now(), and through PR_SET_PDEATHSIG if the
 * test itself is killed). The executable is FERRY_TEST_ETCD, else etcd on
 * PATH; without one, xe_start() prints the reason and exits 77 (skipped).
 */
#ifndef FERRY_TEST_LIB_ETCD_H
#define FERRY_TEST_LIB_ETCD_H

#include <stddef.h>
#include <sys/types.h>

#define XE_MAX_MEMBERS 3

/* Each member's pid (0 once stopped) and client port. */
extern volatile pid_t xe_pids[XE_MAX_MEMBERS];
extern int xe_client_port[XE_MAX_MEMBERS];

/* Chooses the ports (and the data directory) of an n-member cluster
 * without starting it, so that its URL is known before it runs (exit 77
 * without etcd). */
void xe_reserve(int n);

/* Starts an n-member cluster (on the ports xe_reserve() chose, if it was
 * called) and waits (up to 30 s) until it serves reads; stops it at exit. */
void xe_start(int n);

/* "etcd://127.0.0.1:P1,.../prefix" with the n members in the given order. */
void xe_url(char *url, size_t cap, const int *order, int n, const char *prefix);

/* SIGKILLs member i and reaps it. */
void xe_kill(int i);

/* Stops every member and removes their data. */
void xe_stop(void);

/* SIGKILLs every member; async-signal-safe (for a watchdog's handler). */
void xe_kill_all_now(void);

/* A free TCP port on 127.0.0.1. */
int xe_free_port(void);

#endif
