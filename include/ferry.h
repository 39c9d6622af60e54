/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry: one-sided memory transfers between processes, hosts and GPUs.
 *
 * This header is the whole public API: it includes one part per family of
 * calls from ferry/ (listed below; each part also compiles on its own). A
 * process creates an agent, registers the memory it wants to expose or use,
 * packs a metadata blob that describes that memory, and hands the blob to
 * its peers by any means (a file, a pipe, a rendezvous store). A peer loads
 * the blob, prepares READ or WRITE requests between its own registered
 * memory and the advertised remote memory, and posts each request as many
 * times as it likes, learning of completion by testing or waiting.
 *
 * Conventions that hold for every function of every part:
 *  - Fallible functions return ferry_status_t: FERRY_OK (0), FERRY_IN_PROGRESS
 *    (1) or a negative FERRY_ERR_* code. On failure ferry_last_error() gives
 *    the calling thread's detail text.
 *  - Output arguments come last, end in _p, and are written only on success.
 *  - Parameter structs begin with field_mask; a field is read only when its
 *    bit is set, and a NULL params pointer means all defaults.
 *  - Destroy-like functions accept NULL.
 *
 * Progress: requests move forward inside ferry calls (post, test, wait,
 * ferry_agent_progress) or on the agent's progress thread when it has one.
 * This holds for targets too: a process whose memory peers READ or WRITE
 * must have a progress thread, or call ferry_agent_progress() (or sleep on
 * ferry_agent_fd()) while they do, because UCX emulates one-sided operations
 * on ordinary user memory between processes of one host with messages that
 * the target's agent handles.
 *
 * Thread safety: every function may be called from any thread. An agent
 * serialises its internal state, so different requests may be prepared,
 * posted, tested and waited on from different threads at once, and memory
 * may be registered while other threads transfer. One request must not be
 * released while another thread still uses it (the caller owns its lifetime),
 * and an agent must not be destroyed while other threads use it or its
 * objects.
 *
 * The parts, in the order a program meets them:
 *   ferry/status.h   status codes, ferry_last_error(), versions
 *   ferry/agent.h    descriptors, agents, progress, memory registration
 *   ferry/peer.h     metadata blobs and the peers loaded from them
 *   ferry/xfer.h     READ and WRITE requests, the completion queue
 *   ferry/notif.h    notifications: messages ordered after transfers
 *   ferry/stream.h   requests ordered on CUDA streams (and graphs)
 *   ferry/store.h    the c10d-compatible rendezvous store and its server
 *   ferry/comm.h     the communicator: ranks, collectives, the exchange
 *   ferry/dir.h      the directory of agents on etcd: publish, get, watch
 *   ferry/info.h     the report that ferry-info prints
 */
#ifndef FERRY_H
#define FERRY_H

#include "ferry/status.h"
#include "ferry/agent.h"
#include "ferry/peer.h"
#include "ferry/xfer.h"
#include "ferry/notif.h"
#include "ferry/stream.h"
#include "ferry/store.h"
#include "ferry/comm.h"
#include "ferry/dir.h"
#include "ferry/info.h"

#endif /* FERRY_H */
