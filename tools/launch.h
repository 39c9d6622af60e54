/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The local launcher: starts the N ranks of a job on this host, as torchrun
 * or mpirun would, for ferry_comm_create() to find from the environment.
 * ferry-run is a command line around it; ferry-bench, ferry-gpu-bench and
 * ferry-wakebench call it to start their own ranks when they are not
 * already part of a job. launch.c describes what a rank gets and how a
 * failure ends the job.
 */
#ifndef FERRY_TOOLS_LAUNCH_H
#define FERRY_TOOLS_LAUNCH_H

#include <stdbool.h>

typedef struct launch_params {
    const char *name; /* in the launcher's own messages: "ferry-run" */
    const char *path; /* the program to run; NULL: argv[0], searched in PATH */
    char **argv;      /* each rank's arguments, NULL-terminated */
    int nranks;
    const char *store_url; /* tcp:// or etcd:// URL; NULL: host the job's store on 127.0.0.1 */
    /* Copy each rank's output, a line at a time, prefixed "[rank] "; else
     * the ranks write to the launcher's stdout and stderr themselves. */
    bool prefix_lines;
    double grace_s; /* after SIGTERM, how long before SIGKILL */
} launch_params_t;

/*
 * Runs the job to its end and returns its exit code: the first failed
 * rank's (128 + the signal number for a signal), 0 when every rank exited
 * 0, or 1 when the launcher itself failed (its reason printed). Blocks
 * SIGINT, SIGTERM, SIGCHLD and SIGPIPE while it runs and restores the mask
 * after. One call at a time per process.
 */
int launch_job(const launch_params_t *p);

/* Whether this process is a rank of a job a launcher started: FERRY_RANK
 * or FERRY_WORLD_SIZE is set (ferry-run), or RANK and WORLD_SIZE both are
 * (torchrun), the variables ferry_comm_create() reads first. */
bool launch_in_job(void);

#endif
