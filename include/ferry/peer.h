/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry/peer.h: metadata and peers. An agent packs a blob that describes
 * its registrations to other agents; an agent that loads another's blob
 * gets a peer, which transfers name as their other side. Part of <ferry.h>.
 */
#ifndef FERRY_PEER_H
#define FERRY_PEER_H

#include "agent.h"
#include "status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Packs the agent's metadata into a new blob: its name and host identity,
 * its transport addresses, and every current registration with the keys a
 * peer needs to reach it. The blob is self-describing and portable
 * (little-endian, versioned, checksummed). With a job secret (the agent's
 * secret parameter or FERRY_JOB_SECRET) the blob is sealed with
 * HMAC-SHA-256, so that only agents with the same secret load it. On
 * success *blob_p (free it with ferry_md_free()) and *len_p are written.
 * Any thread.
 */
FERRY_API ferry_status_t ferry_md_pack(ferry_agent_t *agent, void **blob_p,
                                       size_t *len_p);

/* Frees a blob from ferry_md_pack(). Accepts NULL. Any thread. */
FERRY_API void ferry_md_free(void *blob);

/*
 * Validates a peer's blob completely and then loads it. A blob from an agent
 * whose name is already loaded replaces that peer's metadata and returns the
 * same handle. If the blob comes from the same running agent (for example
 * re-packed after new registrations), earlier requests stay valid; if it
 * comes from a new instance under the same name (a restart), requests
 * prepared against the old metadata fail to post with FERRY_ERR_PEER_LOST
 * and must be prepared again. The agent's own blob may be loaded
 * (loopback). Returns FERRY_ERR_PROTOCOL, with a detail text, for a
 * truncated, oversized, corrupted, unknown-version or inconsistent blob
 * (FERRY_ERR_INVALID for a NULL blob); unknown sections are skipped. An
 * agent with a job secret also refuses, with FERRY_ERR_PROTOCOL naming the
 * reason, a blob that is not sealed, is sealed with another secret, or was
 * changed after sealing (docs/METADATA.md). Any thread.
 *
 * What a blob is trusted with: the checksum catches corruption, not
 * forgery. The UCX remote key of a region is checked when a request to the
 * region is first prepared, before UCX sees it (the layout of UCX 1.13, see
 * docs/METADATA.md): a key that does not fit this process's UCX (a memory
 * domain it lacks, a length other than its own, bytes missing or left
 * over, the wrong memory type), or a shared-memory key whose segment was
 * not created by the process the blob names or does not hold the region,
 * fails that ferry_xfer_prepare() with FERRY_ERR_PROTOCOL; a segment gone
 * with its process is FERRY_ERR_PEER_LOST. What such checks cannot see is
 * trusted: a well-formed key that lies (an InfiniBand rkey number, a
 * process id the blob claims together with that process's segment) reaches
 * UCX as it is, and so do the transport addresses, which UCX may crash on
 * or use to reach the wrong memory. Under another UCX version the keys pass
 * unchecked (a warning says so). Set a job secret so that only the job's
 * members' blobs load; without one, whoever can hand this agent a blob
 * (through the store, for one) is trusted.
 */
FERRY_API ferry_status_t ferry_peer_load(ferry_agent_t *agent,
                                         const void *blob, size_t len,
                                         ferry_peer_t **peer_p);

/*
 * Drops a peer and releases its remote keys and connection. Requests
 * prepared against it remain objects to release; posting them returns
 * FERRY_ERR_PEER_LOST. Accepts NULL. Any thread.
 *
 * The connection is closed politely without waiting here: the close,
 * which first lets notifications still queued to the peer leave
 * (ferry/notif.h), goes on in the agent's progress until the peer has
 * answered it or a second has passed, then its UCX worker is destroyed
 * (a peer that is stopped then loses those messages). With a progress
 * thread that happens by itself. Without one, the close moves only during
 * the agent's calls that drive it: ferry_agent_progress(), a test or wait
 * of any request, ferry_notif_drain() or ferry_notif_wait(). A loop that
 * sleeps on ferry_agent_fd() is woken for it while it lasts (see
 * ferry_agent_progress()); a caller that makes none of these calls leaves
 * it to ferry_agent_destroy(), which finishes every close still under way
 * (waiting out the rest of its second at most, all at once).
 */
FERRY_API void ferry_peer_forget(ferry_peer_t *peer);

/* Returns the peer's agent name; valid until forgotten. Any thread. */
FERRY_API const char *ferry_peer_name(const ferry_peer_t *peer);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_PEER_H */
