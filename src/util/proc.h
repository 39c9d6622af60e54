/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Whether a peer process on this host still runs. A pidfd becomes readable
 * when its process ends, so asking costs one poll() and cannot be fooled by
 * a recycled process id; kernels without pidfd_open (before 5.3) fall back
 * to kill(pid, 0).
 */
#ifndef FERRY_UTIL_PROC_H
#define FERRY_UTIL_PROC_H

#include <stdbool.h>
#include <sys/types.h>

/* A pidfd for pid (close-on-exec), or -1 with errno set: ESRCH when no such
 * process runs. */
int ferry__pidfd_open(pid_t pid);

/* Whether the process runs: by pidfd (from ferry__pidfd_open), or by pid
 * when pidfd is -1. */
bool ferry__pid_alive(int pidfd, pid_t pid);

#endif
