/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Vetting a peer's packed UCX remote key before UCX sees it.
 *
 * ucp_ep_rkey_unpack() takes no length and trusts every byte: UCX 1.13
 * reads as many bytes as the key's own fields say, attaches whatever
 * shared-memory segment it names, and on a key it cannot unpack releases
 * keys it never unpacked (a segfault in uct_rkey_release). So conn.c hands
 * it only keys that this file has decoded completely and found to fit.
 *
 * The layout, from UCX 1.13's ucp_rkey_pack() (src/ucp/core/ucp_rkey.c;
 * ucp_rkey_pack_common, ucp_ep_rkey_unpack_internal), native byte order:
 *
 *   field      size   meaning
 *   md_map     8      bit i: the key carries memory domain i's key
 *   mem_type   1      ucs_memory_type_t of the memory
 *   per set bit of md_map, lowest first:
 *     size     1      that domain's rkey_packed_size (uct_md_attr_t)
 *     key      size   uct_md_mkey_pack()'s bytes
 *   sys_dev    1      optional, then distances; ucp_rkey_pack() never
 *                     writes them (UCS_SYS_DEVICE_ID_UNKNOWN), so a key
 *                     from ucp_rkey_pack() ends after the last domain
 *
 * Domain i is the sender's domain i, and the receiver's UCX resolves its
 * component through the sender's worker address; ranks that run the same
 * UCX with the same transports number their domains alike, so a key must
 * name only domains this context has, each with this context's key size.
 * The domains and their sizes come from ucp_context_print_info() (index and
 * name) and uct_md_query() of the same domain opened through UCT.
 *
 * The shared-memory keys name a segment that unpacking attaches:
 *
 *   sysv  (12 B): u32 shmid, u64 owner address (mm_sysv.c)
 *   posix (24 B + optional namespace or directory): u64 seg_id (flags in
 *         bits 60..63; with PROCFS, pid in bits 0..29 and fd in 30..59:
 *         the peer's /proc/<pid>/fd/<fd>), u64 owner address, u64 length
 *         (mm_posix.c)
 *
 * From a peer on this host, such a segment must have been created by the
 * peer's process (shm_cpid from the kernel; for posix, the pid that the
 * procfs path opens) and must hold the whole region the blob advertises,
 * so that no blob makes this process attach another process's segment or
 * copy past the end of one (the mapped fast path copies through
 * ucp_rkey_ptr, which checks no bounds). From a peer on another host the
 * shared-memory keys are useless, and are dropped from the key instead:
 * UCX would otherwise attach a local segment of that id. Posix keys that
 * name a file instead of a process's descriptor (UCX_POSIX_USE_PROC_LINK=n)
 * are refused, having no owner to check.
 *
 * Other domains' keys (self, tcp, cma: empty; InfiniBand: an rkey number)
 * attach nothing and are checked for size only. A UCX other than 1.13 may
 * lay keys out differently: its keys pass unvetted, with a warning at start.
 */
#include "backends/ucx/ucx.h"
#include "util/log.h"
#include "util/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uct/api/uct.h>

#define UCX_KEY_HDR 9 /* md_map, mem_type */

#define UCX_POSIX_FLAG_PROCFS (1ull << 63)
#define UCX_POSIX_FLAGS (0xfull << 60)
#define UCX_POSIX_PID_BITS 30
#define UCX_POSIX_FD_BITS 30

static uint64_t load_u64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v)); /* UCX packs in native order */
    return v;
}

static uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

/* The key size of the domain named md of the component named cmpt, by
 * opening it through UCT as UCP did; 0 with *ok false if it cannot. */
static size_t md_key_size(uct_component_h *comps, unsigned ncomps, const char *cmpt,
                          const char *md, bool *ok)
{
    *ok = false;
    for (unsigned c = 0; c < ncomps; c++) {
        uct_component_attr_t ca = {.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME};
        uct_md_config_t *config;
        uct_md_attr_t attr;
        uct_md_h h;
        ucs_status_t s;

        if (uct_component_query(comps[c], &ca) != UCS_OK || strcmp(ca.name, cmpt) != 0)
            continue;
        if (uct_md_config_read(comps[c], NULL, NULL, &config) != UCS_OK)
            return 0;
        s = uct_md_open(comps[c], md, config, &h);
        uct_config_release(config);
        if (s != UCS_OK)
            return 0;
        s = uct_md_query(h, &attr);
        uct_md_close(h);
        if (s != UCS_OK)
            return 0;
        *ok = true;
        return attr.rkey_packed_size;
    }
    return 0;
}

ferry_status_t ferry__ucx_mds_init(ucx_ctx_t *ctx)
{
    char cmpts[UCX_MAX_MDS][UCT_COMPONENT_NAME_MAX];
    char *text = NULL, *line, *save = NULL;
    size_t len = 0;
    uct_component_h *comps;
    unsigned ncomps, version[3];
    FILE *mem;
    ucs_status_t s;

    ucp_get_version(&version[0], &version[1], &version[2]);
    if (version[0] != 1 || version[1] != 13) {
        ferry__warn("ucx: remote keys are vetted for UCX 1.13 only; this is UCX "
                    "%u.%u: keys from peers pass to UCX as they are (set "
                    "FERRY_JOB_SECRET so that only the job's blobs load)",
                    version[0], version[1]);
        ctx->vet = false;
        return FERRY_OK;
    }
    mem = open_memstream(&text, &len);
    if (mem == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "ucx: no memory to list the "
                            "memory domains");
    ucp_context_print_info(ctx->context, mem);
    fclose(mem);
    memset(cmpts, 0, sizeof(cmpts));
    ctx->nmds = 0;
    for (line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        unsigned i, c;
        char name[UCT_MD_NAME_MAX];

        if (sscanf(line, "# component %u : %15s", &c, name) == 2 && c < UCX_MAX_MDS) {
            snprintf(cmpts[c], sizeof(cmpts[c]), "%s", name);
        } else if (sscanf(line, "# md %u : component %u %15s", &i, &c, name) == 3) {
            if (i != ctx->nmds || i >= UCX_MAX_MDS || c >= UCX_MAX_MDS) {
                free(text);
                return ferry__error(FERRY_ERR_BACKEND, "ucx: unexpected memory "
                                    "domain listing: '%s'", line);
            }
            snprintf(ctx->mds[i].name, sizeof(ctx->mds[i].name), "%s", name);
            snprintf(ctx->mds[i].cmpt, sizeof(ctx->mds[i].cmpt), "%s", cmpts[c]);
            ctx->nmds++;
        }
    }
    free(text);
    s = uct_query_components(&comps, &ncomps);
    if (s != UCS_OK)
        return ferry__ucx_error(s, "uct_query_components", NULL);
    for (unsigned i = 0; i < ctx->nmds; i++) {
        ucx_md_t *m = &ctx->mds[i];
        bool ok;

        m->key_size = md_key_size(comps, ncomps, m->cmpt, m->name, &ok);
        if (!ok) {
            uct_release_component_list(comps);
            return ferry__error(FERRY_ERR_BACKEND, "ucx: cannot query memory "
                                "domain %u (%s, component %s)", i, m->name, m->cmpt);
        }
        m->shm = strcmp(m->cmpt, "sysv") == 0   ? UCX_SHM_SYSV
                 : strcmp(m->cmpt, "posix") == 0 ? UCX_SHM_POSIX
                                                  : UCX_SHM_NONE;
        ferry__debug("ucx: memory domain %u: %s (%s), keys of %zu B", i, m->name,
                     m->cmpt, m->key_size);
    }
    uct_release_component_list(comps);
    ctx->vet = true;
    return FERRY_OK;
}

/* Whether the peer process still runs: a segment of a dead peer is gone. */
static ferry_status_t gone_or(ucx_conn_t *conn, ferry_status_t st)
{
    if (conn->pid > 0 && !ferry__pid_alive(conn->pidfd, conn->pid))
        return ferry__error(FERRY_ERR_PEER_LOST, "ucx: peer '%s' (pid %d) has "
                            "exited", conn->peer_name, (int)conn->pid);
    return st;
}

/* The region [addr, addr + len) must lie in the segment [base, base + size). */
static ferry_status_t in_segment(ucx_conn_t *conn, const ferry__bk_rregion_t *rg,
                                 const char *what, uint64_t base, uint64_t size)
{
    if (rg->addr < base || rg->addr - base > size || rg->len > size - (rg->addr - base))
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            " [0x%" PRIx64 ", +%" PRIu64 ") lies outside its %s "
                            "segment [0x%" PRIx64 ", +%" PRIu64 ")", conn->peer_name,
                            rg->id, rg->addr, rg->len, what, base, size);
    return FERRY_OK;
}

static ferry_status_t vet_sysv(ucx_conn_t *conn, const ferry__bk_rregion_t *rg,
                               const uint8_t *key)
{
    uint32_t shmid = load_u32(key);
    uint64_t owner = load_u64(key + 4);
    struct shmid_ds ds;

    if ((int)shmid < 0)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            ": its key names sysv segment %" PRIu32 ", which is no "
                            "segment id", conn->peer_name, rg->id, shmid);
    if (shmctl((int)shmid, IPC_STAT, &ds) != 0)
        return gone_or(conn, ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region "
                                          "%" PRIu32 ": its key names sysv segment "
                                          "%" PRIu32 ", which this process cannot "
                                          "see (%s)", conn->peer_name, rg->id, shmid,
                                          strerror(errno)));
    if (ds.shm_cpid != conn->pid)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            ": its key names sysv segment %" PRIu32 ", created by "
                            "process %d, not by the peer's process %d",
                            conn->peer_name, rg->id, shmid, (int)ds.shm_cpid,
                            (int)conn->pid);
    return in_segment(conn, rg, "sysv", owner, ds.shm_segsz);
}

static ferry_status_t vet_posix(ucx_conn_t *conn, const ferry__bk_rregion_t *rg,
                                const uint8_t *key)
{
    uint64_t seg = load_u64(key), owner = load_u64(key + 8), len = load_u64(key + 16);
    uint64_t mmid = seg & ~UCX_POSIX_FLAGS;
    int pid = (int)(mmid & ((1ull << UCX_POSIX_PID_BITS) - 1));
    int fd = (int)((mmid >> UCX_POSIX_PID_BITS) & ((1ull << UCX_POSIX_FD_BITS) - 1));
    char path[64];
    struct stat sb;
    int f;

    if (!(seg & UCX_POSIX_FLAG_PROCFS))
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            ": its posix key names a file, not a descriptor of its "
                            "process, and cannot be checked (UCX_POSIX_USE_PROC_LINK"
                            "=n is not supported)", conn->peer_name, rg->id);
    if (pid != conn->pid)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            ": its posix key names a segment of process %d, not of "
                            "the peer's process %d", conn->peer_name, rg->id, pid,
                            (int)conn->pid);
    snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd);
    f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return gone_or(conn, ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region "
                                          "%" PRIu32 ": its posix key names %s: %s",
                                          conn->peer_name, rg->id, path,
                                          strerror(errno)));
    if (fstat(f, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size < len) {
        close(f);
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                            ": its posix key names %s, not a shared-memory file of "
                            "%" PRIu64 " B", conn->peer_name, rg->id, path, len);
    }
    close(f);
    return in_segment(conn, rg, "posix", owner, len);
}

ferry_status_t ferry__ucx_rkey_vet(ucx_ctx_t *ctx, ucx_conn_t *conn,
                                   const ferry__bk_rregion_t *rg, const uint8_t *data,
                                   size_t len, uint8_t *out, size_t *out_len)
{
    const uint8_t *p = data + UCX_KEY_HDR, *end = data + len;
    uint8_t *q = out + UCX_KEY_HDR;
    uint64_t map, kept = 0;
    uint8_t type;

    if (!ctx->vet) {
        memcpy(out, data, len);
        *out_len = len;
        return FERRY_OK;
    }
    if (len < UCX_KEY_HDR)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32 ": "
                            "a key of %zu B, shorter than its %d-byte header",
                            conn->peer_name, rg->id, len, UCX_KEY_HDR);
    map = load_u64(data);
    type = data[8];
    if (rg->kind == FERRY_MEM_HOST ? type != UCS_MEMORY_TYPE_HOST
                                   : type != UCS_MEMORY_TYPE_CUDA &&
                                         type != UCS_MEMORY_TYPE_CUDA_MANAGED)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32 ": "
                            "a key of memory type %u for %s memory", conn->peer_name,
                            rg->id, type, rg->kind == FERRY_MEM_HOST ? "host" : "CUDA");
    for (unsigned i = 0; i < 64; i++) {
        const ucx_md_t *m = &ctx->mds[i];
        size_t size;

        if (!(map & (1ull << i)))
            continue;
        if (i >= ctx->nmds)
            return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                                ": its key names memory domain %u; this process's "
                                "UCX has %u (every rank must run the same UCX with "
                                "the same transports)", conn->peer_name, rg->id, i,
                                ctx->nmds);
        if (p >= end || (size = *p) > (size_t)(end - p - 1))
            return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                                ": its key ends inside memory domain %u's (%zu B)",
                                conn->peer_name, rg->id, i, len);
        if (size != m->key_size)
            return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32
                                ": its key for memory domain %u (%s) has %zu B; this "
                                "process's has %zu", conn->peer_name, rg->id, i,
                                m->name, size, m->key_size);
        p++;
        if (m->shm != UCX_SHM_NONE) {
            ferry_status_t st;

            /* Another host's segment: never attach a local one of that id. */
            if (!conn->same_host) {
                p += size;
                continue;
            }
            st = m->shm == UCX_SHM_SYSV ? vet_sysv(conn, rg, p) : vet_posix(conn, rg, p);
            if (st < 0)
                return st;
        }
        *q++ = (uint8_t)size;
        memcpy(q, p, size);
        q += size;
        p += size;
        kept |= 1ull << i;
    }
    if (p != end)
        return ferry__error(FERRY_ERR_PROTOCOL, "ucx: peer '%s' region %" PRIu32 ": "
                            "%zu B after the last memory domain's key",
                            conn->peer_name, rg->id, (size_t)(end - p));
    memcpy(out, &kept, sizeof(kept));
    out[8] = type;
    *out_len = (size_t)(q - out);
    return FERRY_OK;
}
