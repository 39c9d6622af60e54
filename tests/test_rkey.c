/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Remote keys are vetted before UCX sees them. A target process registers
 * memory that ferry_mem_alloc gave it (a sysv segment, whose UCX key names
 * the segment) and plain memory; this process rewrites the UCX key of one
 * region in the target's blob, seals the blob again (its checksum is valid)
 * and loads it and prepares a WRITE to that region, case after case:
 *
 *   - the reported crash: random key bytes (UCX 1.13 segfaulted in
 *     uct_rkey_release, called from ferry_xfer_prepare);
 *   - structure: a memory domain this process does not have, a per-domain
 *     length that differs from the local domain's, a truncated key, bytes
 *     after the last domain's key, an unknown or wrong memory type;
 *   - ownership: a well-formed sysv key naming a segment that another
 *     process (this one) created, a region outside the key's segment;
 *   - a blob that claims another host: its shared-memory key is dropped,
 *     and the target's segment is not attached, neither at prepare nor by
 *     a WRITE, which goes over TCP and arrives;
 *   - a corpus: every bit flip of the real keys and random keys, random and
 *     structured (header and lengths right, bytes random), each one
 *     PROTOCOL (or a key that still names the right segment).
 *
 * Each refusal is FERRY_ERR_PROTOCOL with a detail text. The intact blob
 * still works at the end: a WRITE into both regions arrives, byte for byte,
 * and the target, which never died, checks its memory. Once it has exited,
 * preparing to it is FERRY_ERR_PEER_LOST at once.
 */
#include "target.h"
#include "core/core.h"
#include "core/md.h"
#include "util/buf.h"

#include <sys/ipc.h>
#include <sys/shm.h>

#define LEN (1u << 16)
#define SEED 0x4b3e1ull
#define WAIT_NS (10ll * 1000 * 1000 * 1000)

static ferry__md_t md;      /* the target's blob, parsed */
static int ucx_slot;
static int refused, accepted;
/* The target as a peer: each case's blob replaces its metadata, and, being
 * the same agent instance, keeps its connection (one endpoint for all). */
static ferry_peer_t *kept;

/* Writes md's blob again, with region r's UCX key replaced by key[0..klen)
 * (key NULL: unchanged) and, if host is not NULL, another host id; sealed,
 * so that only what it carries can refuse it. */
static uint8_t *reforge(uint32_t r, const uint8_t *key, size_t klen, const char *host,
                        size_t *len_p)
{
    ferry__wbuf_t w;
    size_t pos, cpos;
    const char *h = host != NULL ? host : md.host_id;

    ferry__wbuf_init(&w);
    ferry__wbuf_reserve(&w, FERRY__MD_HDR_LEN);
    memset(w.data, 0, FERRY__MD_HDR_LEN);
    ferry__store_le32(w.data, FERRY__MD_MAGIC);
    w.data[4] = FERRY__MD_VERSION;
    pos = ferry__md_section(&w, FERRY__MD_SEC_AGENT);
    ferry__wbuf_u64(&w, md.incarnation);
    ferry__wbuf_u16(&w, (uint16_t)strlen(md.name));
    ferry__wbuf_bytes(&w, md.name, strlen(md.name));
    ferry__wbuf_u16(&w, (uint16_t)strlen(h));
    ferry__wbuf_bytes(&w, h, strlen(h));
    ferry__wbuf_u32(&w, md.pid);
    ferry__md_section_end(&w, pos);
    uint32_t nsec = 1;
    for (int k = 0; k < FERRY__NBK; k++) {
        if (md.bk_addr[k].data == NULL)
            continue;
        pos = ferry__md_section(&w, FERRY__MD_SEC_BACKEND);
        ferry__wbuf_u16(&w, ferry__backends[k]->id);
        ferry__wbuf_bytes(&w, md.bk_addr[k].data, md.bk_addr[k].len);
        ferry__md_section_end(&w, pos);
        nsec++;
    }
    pos = ferry__md_section(&w, FERRY__MD_SEC_REGIONS);
    ferry__wbuf_u32(&w, md.nregions);
    for (uint32_t i = 0; i < md.nregions; i++) {
        const ferry__md_region_t *g = &md.regions[i];
        uint8_t nbk = 0;

        for (int k = 0; k < FERRY__NBK; k++)
            nbk += g->bk[k].data != NULL;
        ferry__wbuf_u32(&w, g->id);
        ferry__wbuf_u8(&w, (uint8_t)g->kind);
        ferry__wbuf_u8(&w, nbk);
        ferry__wbuf_u16(&w, 0);
        ferry__wbuf_u32(&w, (uint32_t)g->device);
        ferry__wbuf_u64(&w, g->addr);
        ferry__wbuf_u64(&w, g->len);
        for (int k = 0; k < FERRY__NBK; k++) {
            const uint8_t *d = g->bk[k].data;
            size_t n = g->bk[k].len;

            if (d == NULL)
                continue;
            if (i == r && k == ucx_slot && key != NULL) {
                d = key;
                n = klen;
            }
            ferry__wbuf_u16(&w, ferry__backends[k]->id);
            ferry__wbuf_u32(&w, (uint32_t)n);
            ferry__wbuf_bytes(&w, d, n);
        }
    }
    ferry__md_section_end(&w, pos);
    nsec++;
    cpos = 16;
    ferry__store_le32(w.data + cpos, nsec);
    ferry__md_seal(w.data, w.len);
    *len_p = w.len;
    return w.data;
}

/* Loads the blob with region r's key replaced and prepares a WRITE of
 * 64 bytes into that region; returns the first failure, or FERRY_OK. The
 * request is never posted: a key that passed may still be a lie. */
static ferry_status_t try_key(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t r,
                              const uint8_t *key, size_t klen, const char *host)
{
    ferry_desc_t rd = {md.regions[r].addr, 64, FERRY_MEM_HOST, 0};
    ferry_desc_t l64 = {ld->addr, 64, FERRY_MEM_HOST, 0};
    ferry_xfer_t *x;
    ferry_status_t st;
    size_t len;
    uint8_t *blob = reforge(r, key, klen, host, &len);

    st = ferry_peer_load(b, blob, len, &kept);
    free(blob);
    if (st != FERRY_OK)
        return st;
    st = ferry_xfer_prepare(b, FERRY_OP_WRITE, &l64, 1, kept, &rd, 1, NULL, &x);
    if (st == FERRY_OK)
        ferry_xfer_release(x);
    return st;
}

/* A case that must be refused with PROTOCOL, the detail naming needle. */
static void expect_refused(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t r,
                           const uint8_t *key, size_t klen, const char *needle,
                           const char *what)
{
    ferry_status_t st = try_key(b, ld, r, key, klen, NULL);

    if (st != FERRY_ERR_PROTOCOL) {
        TEST_FAIL_AT_("%s: expected PROTOCOL, got %s (%s)", what, ferry_status_str(st),
                      ferry_last_error());
        return;
    }
    if (needle != NULL && strstr(ferry_last_error(), needle) == NULL)
        TEST_FAIL_AT_("%s: the detail '%s' lacks '%s'", what, ferry_last_error(), needle);
    refused++;
}

/* A corpus case: PROTOCOL, or OK for a key that survived the mutation. */
static void expect_no_crash(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t r,
                            const uint8_t *key, size_t klen, const char *what, size_t i)
{
    ferry_status_t st = try_key(b, ld, r, key, klen, NULL);

    if (st == FERRY_ERR_PROTOCOL)
        refused++;
    else if (st == FERRY_OK)
        accepted++;
    else
        TEST_FAIL_AT_("%s %zu: expected PROTOCOL or OK, got %s (%s)", what, i,
                      ferry_status_str(st), ferry_last_error());
}

static void dump_key(const char *what, const uint8_t *k, size_t n)
{
    printf("test_rkey: %s key (%zu B):", what, n);
    for (size_t i = 0; i < n; i++)
        printf(" %02x", k[i]);
    printf("\n");
}

/* The number of processes attached to a sysv segment. */
static long nattach(uint32_t shmid)
{
    struct shmid_ds ds;

    return shmctl((int)shmid, IPC_STAT, &ds) == 0 ? (long)ds.shm_nattch : -1;
}

/* The reported crash: random key bytes behind a valid checksum. */
static void garbage(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t r)
{
    const ferry__md_bytes_t *k = &md.regions[r].bk[ucx_slot];
    uint8_t key[256];
    test_rng_t rng = {0x6a7ba6eull};

    ASSERT_TRUE(k->len <= sizeof(key));
    test_rand_bytes(&rng, key, k->len);
    expect_refused(b, ld, r, key, k->len, "ucx", "random key bytes");
    /* The real key with a sysv segment id that cannot be attached: UCX 1.13
     * then releases the keys of the domains after it, never unpacked. */
    memcpy(key, k->data, k->len);
    for (int i = 0; i < 4; i++)
        key[12 + i] ^= 0x5a;
    expect_refused(b, ld, r, key, k->len, "sysv", "a sysv segment id of nothing");
}

/* Region r's real key, with f applied to a copy. */
static size_t real_key(uint32_t r, uint8_t *key, size_t cap)
{
    const ferry__md_bytes_t *k = &md.regions[r].bk[ucx_slot];

    ASSERT_TRUE(k->len + 8 <= cap);
    memcpy(key, k->data, k->len);
    return k->len;
}

/* Keys whose structure does not fit this process's UCX. */
static void structure(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t shm, uint32_t plain)
{
    uint8_t key[256];
    size_t n;
    uint64_t map;

    n = real_key(plain, key, sizeof(key));
    memcpy(&map, key, 8);
    map |= 1ull << 40;
    memcpy(key, &map, 8);
    key[n++] = 0;
    expect_refused(b, ld, plain, key, n, "memory domain 40", "a domain UCX lacks");

    n = real_key(shm, key, sizeof(key));
    key[11]++; /* sysv's size byte (domains 0 and 1 have empty keys) */
    key[n++] = 0;
    expect_refused(b, ld, shm, key, n, "has 13 B", "a domain key of the wrong size");

    n = real_key(shm, key, sizeof(key));
    expect_refused(b, ld, shm, key, n - 1, "ends inside", "a truncated key");
    expect_refused(b, ld, shm, key, 5, "shorter than", "a key shorter than its header");
    key[n] = 0;
    expect_refused(b, ld, shm, key, n + 1, "after the last", "a byte after the key");

    n = real_key(shm, key, sizeof(key));
    key[8] = 77;
    expect_refused(b, ld, shm, key, n, "memory type 77", "an unknown memory type");
    key[8] = 1; /* UCS_MEMORY_TYPE_CUDA, for host memory */
    expect_refused(b, ld, shm, key, n, "memory type 1", "a CUDA key for host memory");
}

/* Well-formed keys naming a segment the target does not own, or one that
 * does not hold the region. */
static void ownership(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t shm)
{
    uint8_t key[256];
    size_t n;
    uint64_t owner;
    int mine = shmget(IPC_PRIVATE, LEN, IPC_CREAT | 0600);

    ASSERT_TRUE(mine >= 0);
    n = real_key(shm, key, sizeof(key));
    memcpy(key + 12, &mine, 4);
    expect_refused(b, ld, shm, key, n, "not by the peer's process",
                   "a sysv segment of another process");
    (void)shmctl(mine, IPC_RMID, NULL);

    n = real_key(shm, key, sizeof(key));
    memcpy(&owner, key + 16, 8);
    owner += 4096;
    memcpy(key + 16, &owner, 8);
    expect_refused(b, ld, shm, key, n, "lies outside", "a region before its segment");
    owner -= 4096 + (1u << 30);
    memcpy(key + 16, &owner, 8);
    expect_refused(b, ld, shm, key, n, "lies outside", "a region past its segment");
}

/* A WRITE of n bytes from ib to offset off of target buffer i, through
 * peer: it arrives, and every other byte of the buffer keeps its guard
 * pattern (the target checks). */
static void write_checked(xt_target_t *t, ferry_agent_t *b, ferry_peer_t *peer, uint8_t *ib,
                          unsigned i, uint64_t off, uint64_t n, uint64_t iter)
{
    ferry_desc_t l = {(uintptr_t)ib, n, FERRY_MEM_HOST, 0};
    ferry_desc_t r = {t->buf[i].addr + off, n, FERRY_MEM_HOST, 0};
    ferry_xfer_t *x;

    ASSERT_TRUE(xt_pattern(t, i, 0, LEN, XU_GUARD_ITER) == 0);
    test_fill_fast(ib, n, SEED, iter, 0);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_WRITE, &l, 1, peer, &r, 1, NULL, &x));
    EXPECT_ST(FERRY_OK, xu_post_wait(x, WAIT_NS));
    ferry_xfer_release(x);
    ASSERT_TRUE(xt_range(t, i, off, n, 0) == 0);
    EXPECT_EQ(0, xt_check(t, i, 0, LEN, iter, XU_GUARD_ITER, "test_rkey target"));
}

/* A blob from "another host": its sysv key is dropped, so preparing to the
 * region attaches nothing here; the same blob from this host attaches the
 * segment (which shows that the count is the right witness). A WRITE to
 * the other host's region goes over TCP (a peer on another host gets UCX
 * error handling, which shared memory cannot serve), arrives, and attaches
 * nothing either.
 *
 * The WRITE also finishes the TCP endpoint's wire-up before the peer is
 * forgotten. Without it the target, answering the endpoint's first
 * message, can hold its reply until this process, which does not drive
 * its agent meanwhile, accepts the target's connection back; if the
 * target exits first (exited() below), UCX 1.13 asserts while it purges
 * that pending reply ("got REP message", ucp_worker_destroy), as it did
 * under load before (src/backends/ucx/conn.c). */
static void other_host(xt_target_t *t, ferry_agent_t *b, uint8_t *ib,
                       const ferry_desc_t *ld, uint32_t shm)
{
    uint32_t shmid;
    ferry_desc_t rd = {md.regions[shm].addr, 64, FERRY_MEM_HOST, 0};
    ferry_desc_t l64 = {ld->addr, 64, FERRY_MEM_HOST, 0};
    const char *hosts[2] = {NULL, "another-host"};
    test_rng_t rng = {xu_seed(0x07e5ull)};

    ASSERT_TRUE(md.regions[shm].addr == t->buf[0].addr);
    memcpy(&shmid, md.regions[shm].bk[ucx_slot].data + 12, 4);
    /* Each blob gets a connection of its own: a kept one knows the host. */
    ferry_peer_forget(kept);
    kept = NULL;
    long before = nattach(shmid);
    ASSERT_TRUE(before >= 1);
    for (int h = 0; h < 2; h++) {
        ferry_peer_t *peer;
        ferry_xfer_t *x;
        size_t len;
        uint8_t *blob = reforge(shm, NULL, 0, hosts[h], &len);

        ASSERT_ST(FERRY_OK, ferry_peer_load(b, blob, len, &peer));
        free(blob);
        EXPECT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_WRITE, &l64, 1, peer, &rd, 1,
                                               NULL, &x));
        if (h == 0)
            EXPECT_EQ(before + 1, nattach(shmid));
        else
            EXPECT_EQ(before, nattach(shmid));
        ferry_xfer_release(x);
        if (h == 1) {
            uint64_t n = test_rand_range(&rng, 1, LEN / 2);
            uint64_t off = test_rand_range(&rng, 0, LEN - n);

            write_checked(t, b, peer, ib, 0, off, n, 7);
            EXPECT_EQ(before, nattach(shmid));
        }
        ferry_peer_forget(peer);
    }
}

/* The corpus: every bit flip of both real keys, random keys of random
 * lengths, and keys with the right header and lengths but random bytes. */
static void corpus(ferry_agent_t *b, const ferry_desc_t *ld, uint32_t shm, uint32_t plain)
{
    uint8_t key[256];
    size_t n;
    test_rng_t rng = {xu_seed(0xc0de5ull)};
    uint32_t rs[2] = {shm, plain};

    for (int w = 0; w < 2; w++) {
        size_t len = md.regions[rs[w]].bk[ucx_slot].len;

        for (size_t bit = 0; bit < len * 8; bit++) {
            n = real_key(rs[w], key, sizeof(key));
            key[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            expect_no_crash(b, ld, rs[w], key, n, "bit flip", bit);
        }
    }
    for (size_t i = 0; i < 150; i++) {
        n = (size_t)test_rand_range(&rng, 0, 48);
        test_rand_bytes(&rng, key, n);
        expect_refused(b, ld, shm, key, n, "ucx", "a random key");
    }
    for (size_t i = 0; i < 150; i++) {
        n = real_key(shm, key, sizeof(key));
        test_rand_bytes(&rng, key + 12, 12);
        expect_refused(b, ld, shm, key, n, "sysv", "random sysv key bytes");
    }
}

/* The intact blob still works: a WRITE into each region arrives. */
static void intact(xt_target_t *t, ferry_agent_t *b, uint8_t *ib)
{
    ferry_peer_t *peer;

    ferry_peer_forget(kept);
    ASSERT_TRUE(xt_load(t, b, &peer) == 0);
    for (unsigned i = 0; i < 2; i++)
        write_checked(t, b, peer, ib, i, 1000, 4096, i);
    ferry_peer_forget(peer);
}

/* Once the target has exited, preparing to it is PEER_LOST at once, also
 * for a region whose key is already open and with no progress in between
 * (ferry.h's promise): the key alone would not tell. */
static void exited(xt_target_t *t, ferry_agent_t *b, const ferry_desc_t *ld, uint32_t r)
{
    ferry_desc_t l64 = {ld->addr, 64, FERRY_MEM_HOST, 0};
    ferry_desc_t rd = {md.regions[r].addr, 64, FERRY_MEM_HOST, 0};
    ferry_peer_t *peer;
    ferry_xfer_t *x = NULL;

    ASSERT_TRUE(xt_load(t, b, &peer) == 0);
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(b, FERRY_OP_WRITE, &l64, 1, peer, &rd, 1, NULL,
                                           &x));
    ferry_xfer_release(x);
    EXPECT_TRUE(xt_quit(t) == 0);
    EXPECT_ST(FERRY_ERR_PEER_LOST, ferry_xfer_prepare(b, FERRY_OP_WRITE, &l64, 1, peer, &rd,
                                                      1, NULL, &x));
    EXPECT_ERR_HAS("rkey-target");
    ferry_peer_forget(peer);
}

int main(void)
{
    xt_target_t t;
    xt_opts_t to = {.name = "rkey-target", .seed = SEED, .nbuf = 2,
                    .drive = 1,
                    .buf = {{XM_HOST, LEN, 0, 1}, {XM_HOST, LEN, 0, 0}}};
    ferry_agent_t *b;
    ferry_mem_t *mb;
    uint8_t *ib;
    uint32_t shm_region = UINT32_MAX, plain_region = UINT32_MAX;

    ASSERT_TRUE(xt_start(&t, &to) == 0);
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &b));
    ucx_slot = ferry__backend_slot(FERRY__BK_UCX);
    ASSERT_TRUE(ucx_slot >= 0);
    ASSERT_TRUE(xt_connect(&t, b, &kept) == 0);
    ASSERT_ST(FERRY_OK, ferry__md_parse(t.blob, t.blob_len, XU_MAX_BLOB, &md));
    ASSERT_TRUE(md.nregions == 2);
    for (uint32_t i = 0; i < md.nregions; i++) {
        dump_key(md.regions[i].addr == t.buf[0].addr ? "allocated" : "plain",
                 md.regions[i].bk[ucx_slot].data, md.regions[i].bk[ucx_slot].len);
        if (md.regions[i].addr == t.buf[0].addr)
            shm_region = i;
        else
            plain_region = i;
    }
    ASSERT_TRUE(shm_region != UINT32_MAX && plain_region != UINT32_MAX);

    ib = malloc(LEN);
    ASSERT_TRUE(ib != NULL);
    ferry_desc_t ld = {(uintptr_t)ib, LEN, FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_mem_register(b, &ld, 1, &mb));

    garbage(b, &ld, shm_region);
    structure(b, &ld, shm_region, plain_region);
    ownership(b, &ld, shm_region);
    other_host(&t, b, ib, &ld, shm_region);
    corpus(b, &ld, shm_region, plain_region);
    EXPECT_TRUE(refused >= 300 + 15);
    intact(&t, b, ib);
    exited(&t, b, &ld, plain_region);

    printf("test_rkey: %d refused, %d accepted\n", refused, accepted);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mb));
    ferry_agent_destroy(b);
    free(ib);
    ferry__md_clear(&md);
    return test_finish("test_rkey");
}
