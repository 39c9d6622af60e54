/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/info.h: what this build of ferry can do on this machine, as a report
 * for people: the library's version, its backends and whether each is usable
 * here, UCX, CUDA, and the FERRY_* configuration. The ferry-info tool prints
 * it; a program can print the same report from the libferry it has actually
 * loaded (for a bug report or a job's log). Part of <ferry.h>.
 */
#ifndef FERRY_INFO_H
#define FERRY_INFO_H

#include "status.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The parts of ferry_info_print()'s report, printed in this order whatever
 * the order of the bits. Bits are never renumbered; new parts come last. */
enum {
    /* "ferry <major.minor.patch>", as ferry_version() gives it. */
    FERRY_INFO_VERSION = 1u << 0,
    /* Every backend built into the library, and whether it is usable on
     * this machine or, if not, why (CUDA IPC is usable when the CUDA driver
     * loads). */
    FERRY_INFO_BACKENDS = 1u << 1,
    /* UCX's version, the memory types and transports a context gets
     * (FERRY_UCX_TLS applied), and whether it accepts GPU memory; or why
     * UCX cannot start. */
    FERRY_INFO_UCX = 1u << 2,
    /* The CUDA driver's API version and each device (name, memory, PCI
     * address, VMM and POSIX file descriptor export), and how CUDA IPC
     * batches are copied (FERRY_CUDA_COPY's mode and threshold, each
     * device's copy kernel grid, or why its kernel cannot load); or why
     * CUDA is unavailable. */
    FERRY_INFO_CUDA = 1u << 3,
    /* Every FERRY_* environment variable the library reads: its value in
     * this process (marked "(set)" when it comes from the environment),
     * its default and what it does. */
    FERRY_INFO_CONFIG = 1u << 4
};

/* The report of ferry-info without arguments (ferry-info -c prints
 * FERRY_INFO_CONFIG alone). */
#define FERRY_INFO_DEFAULT                                                     \
    (FERRY_INFO_VERSION | FERRY_INFO_BACKENDS | FERRY_INFO_UCX |               \
     FERRY_INFO_CUDA)

/*
 * Writes the parts of the report that what selects to out, as lines of
 * text meant for people (their wording may change between versions; a
 * program should not parse them). To find out what is usable it starts and
 * stops each backend once and a UCX context, and loads the CUDA driver if
 * there is one (kept loaded, as after any GPU call), which takes some tens
 * of milliseconds; UCX may write warnings of its own to stderr meanwhile.
 * Something that is missing or does not start (no CUDA driver, a UCX that
 * cannot open a transport) is reported in the text, not as an error, and
 * the calling thread's ferry_last_error() text is left as it was.
 *
 * out:  an open stream, flushed before the call returns so that a failed
 *       write shows in the result.
 * what: FERRY_INFO_* bits, at least one.
 *
 * Returns FERRY_OK; FERRY_ERR_INVALID for a NULL out, no bit, or a bit this
 * library does not know (a program built against a newer header);
 * FERRY_ERR_SYSTEM if writing to out failed. Any thread, but not while
 * another thread changes the environment (setenv), which the configuration
 * part reads.
 */
FERRY_API ferry_status_t ferry_info_print(FILE *out, uint64_t what);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_INFO_H */
