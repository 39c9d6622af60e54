/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Peer liveness (util/proc.h), which both backends use to turn a dead peer
 * into FERRY_ERR_PEER_LOST: a child process runs, then is killed. While it
 * runs, it must count as alive by pidfd and by pid; once it has exited (and
 * before it is reaped, as a peer process that is not our child never is),
 * as dead both ways; a pidfd for a process that is gone must not open.
 */
#include "test.h"
#include "util/proc.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
    pid_t pid = fork();
    siginfo_t si;
    int fd;

    if (pid == 0) {
        pause();
        _exit(0);
    }
    ASSERT_TRUE(pid > 0);
    fd = ferry__pidfd_open(pid);
    if (fd < 0 && errno == ENOSYS) {
        printf("test_proc: no pidfd_open in this kernel; pid checks only\n");
    } else {
        ASSERT_TRUE(fd >= 0);
        EXPECT_TRUE(ferry__pid_alive(fd, pid));
    }
    EXPECT_TRUE(ferry__pid_alive(-1, pid));

    kill(pid, SIGKILL);
    /* Wait for the exit without reaping: the process is a zombie, gone for
     * its peers but its pid still taken. */
    ASSERT_TRUE(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0);
    if (fd >= 0)
        EXPECT_TRUE(!ferry__pid_alive(fd, pid));
    ASSERT_TRUE(waitpid(pid, NULL, 0) == pid);
    if (fd >= 0)
        EXPECT_TRUE(!ferry__pid_alive(fd, pid));
    EXPECT_TRUE(!ferry__pid_alive(-1, pid));
    if (fd >= 0) {
        int again = ferry__pidfd_open(pid);

        EXPECT_TRUE(again < 0 && errno == ESRCH);
        close(fd);
    }
    return test_finish("test_proc");
}
