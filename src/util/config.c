/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration table and its readers.
 */
#include "util/config.h"
#include "util/log.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

const ferry__config_entry_t ferry__config_table[] = {
    {"FERRY_LOG", "warn", "log level: error, warn, info, debug or trace"},
    {"FERRY_UCX_TLS", "",
     "UCX transports to use (UCX_TLS syntax); empty leaves the choice to UCX"},
    {"FERRY_MD_MAX", "256m",
     "largest metadata blob ferry_peer_load() accepts, in bytes (k, m, g "
     "suffixes)"},
    {"FERRY_WAIT_SPIN_US", "1000",
     "how long ferry_xfer_wait polls, in microseconds, before it sleeps on "
     "the transports' events"},
    {"FERRY_CUDA_PIN_HOST", "1",
     "1: page-lock registered host memory with cuMemHostRegister (in "
     "processes that already use CUDA) so that host <-> GPU copies run at "
     "full speed; 0: leave it pageable"},
    {"FERRY_CUDA_FD_HANDOFF", "auto",
     "how a peer's CUDA VMM file descriptors are fetched: auto (pidfd_getfd, "
     "then the peer's hand-off socket), pidfd or socket"},
    {"FERRY_CUDA_COPY", "auto",
     "who copies a CUDA IPC batch: auto (one copy kernel launch for a batch's "
     "segments of at most FERRY_CUDA_COPY_MAX bytes, the copy engines for "
     "longer ones and for a lone segment), engine (one cuMemcpyAsync per "
     "segment) or kernel (the kernel for every segment it can reach)"},
    {"FERRY_CUDA_COPY_MAX", "8m",
     "in auto mode, the longest segment of a batch that the copy kernel "
     "moves; longer ones go to the copy engines, which use no SMs"},
    {"FERRY_CUDA_COPY_BLOCKS", "auto",
     "thread blocks (of 512 threads, each on one SM at a time) that the copy "
     "kernel launches: at most this many SMs copy at once; auto: two per SM"},
    {"FERRY_CUDA_COPY_PTX", "",
     "a file of PTX text to load as the copy kernel instead of the embedded "
     "one (for tests of a driver that cannot load it); empty: the embedded"},
    {"FERRY_COPY_NT_MIN", "auto",
     "a post that copies this many bytes or more into or out of a same-host "
     "peer's memory bypasses the cache (non-temporal stores); auto: half the "
     "last-level cache that sysfs reports, at most 16m; off: never"},
    {"FERRY_STAGE", "on",
     "on: agents can stage transfers through bounce buffers (a second UCX "
     "context and worker per agent, started with it); off: no staging, which "
     "saves that context (GPU memory of peers on other hosts then needs a "
     "UCX with CUDA support)"},
    {"FERRY_STAGE_CHUNK", "4m",
     "staging through bounce buffers (GPU memory to another host when UCX "
     "takes no GPU memory): the bytes of one chunk, the size of each bounce "
     "buffer (4k to 1g); initiator and target should agree, a target refuses "
     "chunks larger than its own"},
    {"FERRY_STAGE_CHUNKS", "8",
     "staging: the bounce buffers of each of an agent's two pools (outgoing "
     "and incoming, page-locked when CUDA is loaded), and the chunks an "
     "initiator keeps in flight to one peer (its credits)"},
    {"FERRY_STAGE_TEST_REPLY_DELAY_MS", "0",
     "tests: a staging target holds each chunk's reply back this many "
     "milliseconds after its copies end, keeping its bounce buffer, as a slow "
     "GPU copy would (0: never)"},
    {"FERRY_STAGE_TLS", "",
     "staging: the UCX transports of its own UCX context (UCX_TLS syntax); "
     "empty: those of FERRY_UCX_TLS"},
    {"FERRY_HOST_ID", "",
     "this process's host identity as its peers compare it (empty: the boot id "
     "and the PID and IPC namespaces); processes whose identities differ never "
     "use CUDA IPC or shared memory between them, as on two hosts (tests make "
     "one machine two hosts with it); give processes that share a machine "
     "different values only"},
    {"FERRY_XFER_STALL_MS", "10000",
     "a request in flight whose transport makes no headway for this many "
     "milliseconds ends with FERRY_ERR_TIMEOUT (0: never); the agent "
     "parameter stall_timeout_ns overrides it"},
    {"FERRY_NOTIF_QUEUE", "4096",
     "received notifications an agent keeps until they are drained; one "
     "more is dropped and counted (ferry_notif_dropped); the agent "
     "parameter notif_queue overrides it"},
    {"FERRY_RANK", "", "this process's rank in its job (set by ferry-run); "
     "torchrun's RANK, OMPI_COMM_WORLD_RANK and SLURM_PROCID are read when "
     "it is unset"},
    {"FERRY_WORLD_SIZE", "", "the number of ranks in the job (set by "
     "ferry-run); WORLD_SIZE, OMPI_COMM_WORLD_SIZE, SLURM_NTASKS otherwise"},
    {"FERRY_STORE", "", "the job's store, tcp://host:port (set by ferry-run); "
     "tcp://MASTER_ADDR:MASTER_PORT otherwise"},
    {"FERRY_COMM_PREFIX", "ferry/",
     "prefix of every store key a communicator uses"},
    {"FERRY_COMM_TIMEOUT_MS", "300000",
     "how long ferry_comm_create waits for every rank to join, in ms"},
    {"FERRY_COMM_LIVENESS_MS", "10000",
     "a rank whose heartbeat is this old, in ms, is declared dead"},
    {"FERRY_JOB_SECRET", "",
     "the job's shared secret (16 bytes at least; ferry-run sets one per job): "
     "blobs are sealed with it and only blobs sealed with it load, store "
     "connections authenticate with it, and staging messages are sealed with "
     "it; empty: none, and any blob, store client or staging peer is trusted"},
    {"FERRY_DIR_TTL_MS", "5000",
     "TTL of a directory's etcd lease, in ms (whole seconds): how long a "
     "dead publisher stays listed"},
    {"FERRY_DIR_TIMEOUT_MS", "2000",
     "limit for one directory call to one etcd endpoint, in ms"},
    {"FERRY_DIR_POLL_MS", "200",
     "how often a directory watch retries while its stream is down, in ms"},
    {NULL, NULL, NULL},
};

static const ferry__config_entry_t *config_find(const char *name)
{
    for (const ferry__config_entry_t *e = ferry__config_table; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

const char *ferry__config_get(const char *name)
{
    const ferry__config_entry_t *e = config_find(name);
    const char *v;

    assert(e != NULL);
    v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : e->default_value;
}

int ferry__parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || s[0] == '-')
        return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

uint64_t ferry__config_get_size(const char *name)
{
    const char *v = ferry__config_get(name);
    uint64_t out = 0;

    if (ferry__parse_size(v, &out) == 0)
        return out;
    ferry__warn("%s=%s is not a size; using %s", name, v,
                config_find(name)->default_value);
    (void)ferry__parse_size(config_find(name)->default_value, &out);
    return out;
}
