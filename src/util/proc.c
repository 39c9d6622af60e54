/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Peer process liveness through pidfds.
 */
#include "util/proc.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int ferry__pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

bool ferry__pid_alive(int pidfd, pid_t pid)
{
    struct pollfd pfd = {pidfd, POLLIN, 0};

    if (pidfd >= 0)
        return poll(&pfd, 1, 0) == 0; /* readable once the process ended */
    return kill(pid, 0) == 0 || errno != ESRCH;
}
