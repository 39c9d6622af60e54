/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Metadata blobs: packing an agent's state and validating a peer's blob.
 * The format is drawn in md.h.
 */
#include "core/md.h"
#include "core/core.h"
#include "util/buf.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FERRY__MD_SEC_HDR 8

void ferry__md_seal(uint8_t *blob, size_t len)
{
    ferry__store_le32(blob + 8, (uint32_t)len);
    ferry__store_le32(blob + 12, 0);
    ferry__store_le32(blob + 12, ferry__crc32(0, blob, len));
}

/* The MAC of a blob whose SEAL payload starts at seal_off: the checksum
 * field and the MAC itself count as zero. */
static ferry_status_t md_mac(const ferry__secret_t *secret, const uint8_t *blob,
                             size_t len, size_t seal_off, uint8_t mac[FERRY__MAC_LEN])
{
    static const uint8_t zero[FERRY__MAC_LEN];
    size_t mac_off = seal_off + 4 + FERRY__KEY_ID_LEN;
    ferry__mac_part_t parts[] = {
        {blob, 12}, {zero, 4}, {blob + 16, mac_off - 16}, {zero, FERRY__MAC_LEN},
        {blob + mac_off + FERRY__MAC_LEN, len - mac_off - FERRY__MAC_LEN}};

    return ferry__mac(secret->blob_key, parts, sizeof(parts) / sizeof(parts[0]), mac);
}

ferry_status_t ferry__md_verify(const ferry__secret_t *secret, const uint8_t *blob,
                                size_t len, const ferry__md_t *md)
{
    uint8_t mac[FERRY__MAC_LEN];
    const uint8_t *seal = blob + md->seal_off;

    if (!secret->set)
        return FERRY_OK;
    if (md->seal_off == 0)
        return ferry__error(FERRY_ERR_PROTOCOL, "metadata: the blob of '%s' is not "
                            "sealed, and this agent has a job secret (FERRY_JOB_SECRET): "
                            "it loads only blobs sealed with it", md->name);
    if (!ferry__ct_equal(seal + 4, secret->id, FERRY__KEY_ID_LEN))
        return ferry__error(FERRY_ERR_PROTOCOL, "metadata: the blob of '%s' is sealed "
                            "with another secret than this agent's (another job's?)",
                            md->name);
    FERRY_CHECK(md_mac(secret, blob, len, md->seal_off, mac));
    if (!ferry__ct_equal(mac, seal + 4 + FERRY__KEY_ID_LEN, FERRY__MAC_LEN))
        return ferry__error(FERRY_ERR_PROTOCOL, "metadata: the seal of the blob of "
                            "'%s' does not verify: the blob was changed after it "
                            "was sealed", md->name);
    return FERRY_OK;
}

void ferry__md_clear(ferry__md_t *md)
{
    free(md->regions);
    memset(md, 0, sizeof(*md));
}

/* Copies a length-prefixed (u16) string into a fixed buffer. */
static int md_string(ferry__rbuf_t *r, char *out, size_t min_len)
{
    uint16_t n = ferry__rbuf_u16(r);
    const uint8_t *p = ferry__rbuf_bytes(r, n);

    if (p == NULL || n > FERRY__MD_NAME_MAX || n < min_len ||
        memchr(p, '\0', n) != NULL)
        return -1;
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

static ferry_status_t md_parse_agent(ferry__rbuf_t *r, ferry__md_t *md,
                                            size_t off)
{
    md->incarnation = ferry__rbuf_u64(r);
    if (md_string(r, md->name, 1) != 0)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: agent name at offset %zu is malformed", off);
    if (md_string(r, md->host_id, 0) != 0)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: agent host id at offset %zu is malformed", off);
    md->pid = ferry__rbuf_u32(r);
    return FERRY_OK;
}

static ferry_status_t md_parse_backend(ferry__rbuf_t *r, ferry__md_t *md,
                                              size_t off)
{
    int slot = ferry__backend_slot(ferry__rbuf_u16(r));
    size_t n = r->left;
    const uint8_t *p = ferry__rbuf_bytes(r, n);

    if (r->err || n == 0)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: backend section at offset %zu is malformed", off);
    if (slot < 0)
        return FERRY_OK; /* a backend this build does not know */
    if (md->bk_addr[slot].data != NULL)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: backend section at offset %zu repeats a backend", off);
    md->bk_addr[slot] = (ferry__md_bytes_t){p, (uint32_t)n};
    return FERRY_OK;
}

static ferry_status_t md_parse_regions(ferry__rbuf_t *r, ferry__md_t *md,
                                              size_t off)
{
    uint32_t count = ferry__rbuf_u32(r);

    /* Bound the count by what the payload can hold before allocating. */
    if (r->err || count > r->left / FERRY__MD_REGION_FIXED)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: region count %u at offset %zu exceeds "
                            "the section's %zu bytes", count, off, r->left);
    md->regions = calloc(count ? count : 1, sizeof(*md->regions));
    if (md->regions == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "metadata: no memory for %u regions",
                            count);
    md->nregions = count;
    for (uint32_t i = 0; i < count; i++) {
        ferry__md_region_t *g = &md->regions[i];
        uint8_t kind, nbk;

        g->id = ferry__rbuf_u32(r);
        kind = ferry__rbuf_u8(r);
        nbk = ferry__rbuf_u8(r);
        (void)ferry__rbuf_u16(r);
        g->device = (int32_t)ferry__rbuf_u32(r);
        g->addr = ferry__rbuf_u64(r);
        g->len = ferry__rbuf_u64(r);
        if (r->err)
            return ferry__error(FERRY_ERR_PROTOCOL,
                                "metadata: region %u is truncated", i);
        if (kind != FERRY_MEM_HOST && kind != FERRY_MEM_CUDA)
            return ferry__error(FERRY_ERR_PROTOCOL,
                                "metadata: region %u has unknown memory kind %u",
                                i, kind);
        g->kind = (ferry_mem_kind_t)kind;
        if (g->addr == 0 || g->len == 0 || g->addr + g->len < g->addr)
            return ferry__error(FERRY_ERR_PROTOCOL,
                                "metadata: region %u has an invalid range "
                                "(addr 0x%llx, len %llu)", i,
                                (unsigned long long)g->addr,
                                (unsigned long long)g->len);
        for (unsigned b = 0; b < nbk; b++) {
            uint16_t id = ferry__rbuf_u16(r);
            int slot = ferry__backend_slot(id);
            uint32_t n = ferry__rbuf_u32(r);
            const uint8_t *p = ferry__rbuf_bytes(r, n);

            if (p == NULL)
                return ferry__error(FERRY_ERR_PROTOCOL,
                                    "metadata: region %u backend entry %u runs "
                                    "past the section", i, b);
            if (slot < 0)
                continue; /* a backend this build does not know */
            if (g->bk[slot].data != NULL)
                return ferry__error(FERRY_ERR_PROTOCOL,
                                    "metadata: region %u repeats backend %u", i, id);
            g->bk[slot] = (ferry__md_bytes_t){p, n};
        }
    }
    return FERRY_OK;
}

ferry_status_t ferry__md_parse(const void *blob, size_t len, uint64_t max_len,
                               ferry__md_t *md)
{
    const uint8_t *b = blob;
    ferry__rbuf_t r;
    uint32_t magic, length, checksum, nsections;
    uint16_t version;
    uint8_t hdr[FERRY__MD_HDR_LEN];
    bool seen_agent = false, seen_regions = false;
    ferry_status_t st;

    memset(md, 0, sizeof(*md));
    if (blob == NULL || len < FERRY__MD_HDR_LEN)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: blob of %zu bytes is shorter than its "
                            "%d-byte header", len, FERRY__MD_HDR_LEN);
    if (len > max_len)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: blob of %zu bytes exceeds the limit of "
                            "%llu (FERRY_MD_MAX)", len, (unsigned long long)max_len);
    ferry__rbuf_init(&r, b, len);
    magic = ferry__rbuf_u32(&r);
    version = ferry__rbuf_u16(&r);
    (void)ferry__rbuf_u16(&r);
    length = ferry__rbuf_u32(&r);
    checksum = ferry__rbuf_u32(&r);
    nsections = ferry__rbuf_u32(&r);
    (void)ferry__rbuf_u32(&r);
    if (magic != FERRY__MD_MAGIC)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: bad magic 0x%08x (not a ferry blob)", magic);
    if (version != FERRY__MD_VERSION)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: unsupported version %u (this library "
                            "reads version %d)", version, FERRY__MD_VERSION);
    if (length != len)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: header says %u bytes but %zu were given",
                            length, len);
    memcpy(hdr, b, sizeof(hdr));
    ferry__store_le32(hdr + 12, 0);
    if (ferry__crc32(ferry__crc32(0, hdr, sizeof(hdr)), b + sizeof(hdr),
                     len - sizeof(hdr)) != checksum)
        return ferry__error(FERRY_ERR_PROTOCOL, "metadata: checksum mismatch");
    if (nsections > r.left / FERRY__MD_SEC_HDR)
        return ferry__error(FERRY_ERR_PROTOCOL,
                            "metadata: %u sections cannot fit in %zu bytes",
                            nsections, r.left);

    for (uint32_t i = 0; i < nsections; i++) {
        size_t off = len - r.left;
        uint16_t type = ferry__rbuf_u16(&r);
        uint32_t slen;
        const uint8_t *payload;
        ferry__rbuf_t s;

        (void)ferry__rbuf_u16(&r);
        slen = ferry__rbuf_u32(&r);
        payload = ferry__rbuf_bytes(&r, slen);
        if (payload == NULL) {
            st = ferry__error(FERRY_ERR_PROTOCOL,
                              "metadata: section at offset %zu runs past the end", off);
            goto err;
        }
        ferry__rbuf_init(&s, payload, slen);
        switch (type) {
        case FERRY__MD_SEC_AGENT:
            if (seen_agent) {
                st = ferry__error(FERRY_ERR_PROTOCOL,
                                  "metadata: agent section at offset %zu repeats", off);
                goto err;
            }
            seen_agent = true;
            st = md_parse_agent(&s, md, off);
            break;
        case FERRY__MD_SEC_BACKEND:
            st = md_parse_backend(&s, md, off);
            break;
        case FERRY__MD_SEC_SEAL:
            /* Last, so that everything it covers comes before it. */
            if (i + 1 != nsections) {
                st = ferry__error(FERRY_ERR_PROTOCOL, "metadata: seal section at "
                                  "offset %zu is not the last section", off);
                goto err;
            }
            if (slen != FERRY__MD_SEAL_LEN ||
                ferry__rbuf_u8(&s) != FERRY__MD_SEAL_HMAC_SHA256) {
                st = ferry__error(FERRY_ERR_PROTOCOL, "metadata: seal section at "
                                  "offset %zu: %u bytes, or an algorithm other "
                                  "than HMAC-SHA-256", off, slen);
                goto err;
            }
            md->seal_off = off + FERRY__MD_SEC_HDR;
            s.left = 0;
            st = FERRY_OK;
            break;
        case FERRY__MD_SEC_REGIONS:
            if (seen_regions) {
                st = ferry__error(FERRY_ERR_PROTOCOL,
                                  "metadata: regions section at offset %zu repeats", off);
                goto err;
            }
            seen_regions = true;
            st = md_parse_regions(&s, md, off);
            break;
        default:
            ferry__debug("metadata: skipping unknown section type %u", type);
            continue;
        }
        if (st < 0)
            goto err;
        if (s.err || s.left != 0) {
            st = ferry__error(FERRY_ERR_PROTOCOL,
                              "metadata: section type %u at offset %zu: payload "
                              "of %u bytes %s", type, off, slen,
                              s.err ? "is truncated" : "has trailing bytes");
            goto err;
        }
    }
    if (r.left != 0) {
        st = ferry__error(FERRY_ERR_PROTOCOL,
                          "metadata: %zu bytes after the last section", r.left);
        goto err;
    }
    if (!seen_agent) {
        st = ferry__error(FERRY_ERR_PROTOCOL, "metadata: no agent section");
        goto err;
    }
    return FERRY_OK;

err:
    ferry__md_clear(md);
    return st;
}

size_t ferry__md_section(ferry__wbuf_t *w, uint16_t type)
{
    ferry__wbuf_u16(w, type);
    ferry__wbuf_u16(w, 0);
    ferry__wbuf_u32(w, 0);
    return w->len - 4;
}

void ferry__md_section_end(ferry__wbuf_t *w, size_t lenpos)
{
    ferry__wbuf_put_u32_at(w, lenpos, (uint32_t)(w->len - lenpos - 4));
}

static void md_put_string(ferry__wbuf_t *w, const char *s)
{
    size_t n = strlen(s);

    ferry__wbuf_u16(w, (uint16_t)n);
    ferry__wbuf_bytes(w, s, n);
}

ferry_status_t ferry_md_pack(ferry_agent_t *agent, void **blob_p, size_t *len_p)
{
    ferry__wbuf_t w;
    uint32_t nsections = 0, nregions = 0;
    size_t pos, countpos, seal_off = 0;
    ferry_status_t st = FERRY_OK;

    if (agent == NULL || blob_p == NULL || len_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "md_pack: NULL argument");
    ferry__wbuf_init(&w);
    pos = ferry__wbuf_reserve(&w, FERRY__MD_HDR_LEN);
    if (pos != SIZE_MAX)
        memset(w.data, 0, FERRY__MD_HDR_LEN);

    ferry__agent_lock(agent);
    pos = ferry__md_section(&w, FERRY__MD_SEC_AGENT);
    ferry__wbuf_u64(&w, agent->incarnation);
    md_put_string(&w, agent->name);
    md_put_string(&w, agent->host_id);
    ferry__wbuf_u32(&w, (uint32_t)getpid());
    ferry__md_section_end(&w, pos);
    nsections++;

    for (unsigned k = 0; k < FERRY__NBK; k++) {
        pos = ferry__md_section(&w, FERRY__MD_SEC_BACKEND);
        ferry__wbuf_u16(&w, ferry__backends[k]->id);
        FERRY_CHECK_GOTO(ferry__backends[k]->pack_address(agent->bk_ctx[k], &w),
                         st, out_unlock);
        ferry__md_section_end(&w, pos);
        nsections++;
    }

    pos = ferry__md_section(&w, FERRY__MD_SEC_REGIONS);
    countpos = w.len;
    ferry__wbuf_u32(&w, 0);
    for (size_t i = 0; i < agent->registry.n; i++) {
        const ferry__region_t *g = agent->registry.e[i].val;
        size_t nbkpos;
        uint8_t nbk = 0;

        ferry__wbuf_u32(&w, g->id);
        ferry__wbuf_u8(&w, (uint8_t)g->desc.kind);
        nbkpos = w.len;
        ferry__wbuf_u8(&w, 0);
        ferry__wbuf_u16(&w, 0);
        ferry__wbuf_u32(&w, (uint32_t)g->desc.device);
        ferry__wbuf_u64(&w, g->desc.addr);
        ferry__wbuf_u64(&w, g->desc.len);
        for (unsigned k = 0; k < FERRY__NBK; k++) {
            size_t lenpos;

            if (g->lreg[k] == NULL)
                continue;
            ferry__wbuf_u16(&w, ferry__backends[k]->id);
            lenpos = w.len;
            ferry__wbuf_u32(&w, 0);
            FERRY_CHECK_GOTO(ferry__backends[k]->mem_pack(agent->bk_ctx[k],
                                                          g->lreg[k], &w),
                             st, out_unlock);
            if (!w.oom && w.len == lenpos + 4) { /* nothing to advertise */
                w.len = lenpos - 2;
                continue;
            }
            ferry__wbuf_put_u32_at(&w, lenpos, (uint32_t)(w.len - lenpos - 4));
            nbk++;
        }
        if (!w.oom)
            w.data[nbkpos] = nbk;
        nregions++;
    }
    ferry__wbuf_put_u32_at(&w, countpos, nregions);
    ferry__md_section_end(&w, pos);
    nsections++;
    if (agent->secret.set) {
        pos = ferry__md_section(&w, FERRY__MD_SEC_SEAL);
        seal_off = w.len;
        ferry__wbuf_u8(&w, FERRY__MD_SEAL_HMAC_SHA256);
        ferry__wbuf_u8(&w, 0);
        ferry__wbuf_u16(&w, 0);
        ferry__wbuf_bytes(&w, agent->secret.id, FERRY__KEY_ID_LEN);
        for (int i = 0; i < FERRY__MAC_LEN; i++)
            ferry__wbuf_u8(&w, 0);
        ferry__md_section_end(&w, pos);
        nsections++;
    }

out_unlock:
    ferry__agent_unlock(agent);
    if (st < 0)
        goto err;
    if (w.oom || w.len > UINT32_MAX) {
        st = ferry__error(FERRY_ERR_NO_MEMORY,
                          "md_pack: cannot build a blob for %u regions", nregions);
        goto err;
    }
    ferry__store_le32(w.data, FERRY__MD_MAGIC);
    w.data[4] = FERRY__MD_VERSION;
    w.data[5] = 0;
    ferry__store_le32(w.data + 16, nsections);
    ferry__store_le32(w.data + 8, (uint32_t)w.len);
    if (seal_off != 0)
        FERRY_CHECK_GOTO(md_mac(&agent->secret, w.data, w.len, seal_off,
                                w.data + seal_off + 4 + FERRY__KEY_ID_LEN),
                         st, err);
    ferry__md_seal(w.data, w.len);
    *blob_p = w.data;
    *len_p = w.len;
    return FERRY_OK;

err:
    ferry__wbuf_free(&w);
    return st;
}

void ferry_md_free(void *blob)
{
    free(blob);
}
