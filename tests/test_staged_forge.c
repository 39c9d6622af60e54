/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Forged staging messages (backends/staged, docs/STAGING.md "Seals"): a raw
 * UCX sender (raw_ucx.h), which knows the target's staging address from
 * its blob but is no ferry agent, feeds a staging target (the serving
 * target, another process, served by its progress thread) malformed chunk
 * headers, and an initiator's connection worker forged replies:
 *
 *   secret    both sides have a job secret. 400+ chunk headers: random
 *             address bytes (unsealed, and sealed with a random MAC),
 *             truncated headers, wrong magic, sealed with another key id,
 *             unsealed, a bad MAC (a bit flipped after sealing), a forged
 *             higher epoch and a wrong MAC for the live connection, and
 *             its earlier epochs correctly sealed, some malformed. None
 *             gets a reply, none writes (their WRITEs name a span of the
 *             target's memory that must keep its pattern), the target
 *             does not crash; then one correctly sealed header (the test
 *             knows the secret), whose error reply shows that the others
 *             were delivered and dropped. Forged replies to a READ in
 *             flight (target stopped): guessed cookies, the exact cookie
 *             unsealed and with a bad seal, on the right worker and on
 *             another connection's: the READ completes with the real bytes.
 *   nosecret  neither has a secret: the network is trusted and a header's
 *             worker address goes to UCX as it is, so random addresses
 *             are not sent (UCX 1.13 aborts on most). Truncated headers,
 *             wrong magic and the live connection's earlier epochs are
 *             dropped; sealed headers (any key id and
 *             MAC) with a good address are served (an error reply: the
 *             seal was skipped, not taken for an address); forged replies
 *             with guessed cookies, and the exact cookie on another
 *             connection's worker, are dropped.
 *
 * Each ends with real staged WRITEs and READs on the live connection,
 * random bytes at random offsets checked, its epoch unchanged, and a
 * target that quits cleanly.
 */
#include "raw_ucx.h"
#include "target.h"
#include "backends/staged/staged.h"
#include "core/core.h"
#include "core/md.h"

#define TCAP (16ull << 20)
#define FORGE_OFF (12ull << 20) /* what forged WRITEs name: must keep its pattern */
#define FORGE_LEN 4096u
#define SEC 1000000000ll
#define SECRET "forge-test-secret-0123456789abcdef"

static xt_target_t tgt;
static int with_secret;
static uint64_t seed;
static test_rng_t rng;
static xm_buf_t lxb;
static uint8_t *lbuf;
static uint64_t rbase;
static ferry__secret_t sec; /* the test's copy of the keys, to make seals */
static stg_rkey_t rkey;     /* the target's region, as its blob names it */
static int slot;            /* the staged backend's */
static int replies;         /* replies the raw sender received */
static int32_t last_status;

static const ferry_xfer_params_t staged = {.field_mask = FERRY_XFER_PARAM_BACKEND,
                                           .backend = FERRY_BACKEND_STAGED};

static void pump(void *agent)
{
    ferry_agent_progress(agent);
}

/* The raw sender's handler of the target's replies. */
static ucs_status_t on_reply(void *arg, const void *header, size_t hlen, void *data,
                             size_t len, const ucp_am_recv_param_t *param)
{
    stg_hdr_t h;

    (void)arg;
    (void)data;
    (void)len;
    (void)param;
    replies++;
    if (hlen >= sizeof(h)) {
        memcpy(&h, header, sizeof(h));
        last_status = h.status;
    }
    return UCS_OK;
}

/* The MAC a target with the secret expects of a chunk's seal. */
static void chunk_mac(uint64_t id, uint16_t epoch, const void *addr, size_t alen,
                      uint8_t mac[FERRY__MAC_LEN])
{
    const ferry__mac_part_t parts[] = {{"chunk", 5}, {&id, 8}, {&epoch, 2}, {addr, alen}};

    ASSERT_ST(FERRY_OK, ferry__mac(sec.stage_key, parts, 4, mac));
}

/*
 * Sends a chunk header to the target: h, then seal (unless NULL), then alen
 * address bytes, cut to its first cut bytes; its table names FORGE_LEN
 * bytes at FORGE_OFF of the target's region (token: its own, or an unknown
 * one), and a WRITE carries those bytes.
 */
static void forge(xr_sender_t *r, const stg_hdr_t *h, const stg_seal_t *seal,
                  const void *addr, size_t alen, size_t cut, uint32_t token)
{
    static uint8_t hb[sizeof(stg_hdr_t) + sizeof(stg_seal_t) + STG_ADDR_MAX];
    static uint8_t data[sizeof(stg_piece_t) + FORGE_LEN];
    stg_piece_t p = {token, rkey.gen, rbase + FORGE_OFF, FORGE_LEN};
    size_t n = sizeof(*h);

    memcpy(hb, h, sizeof(*h));
    if (seal != NULL) {
        memcpy(hb + n, seal, sizeof(*seal));
        n += sizeof(*seal);
    }
    memcpy(hb + n, addr, alen);
    n += alen;
    memcpy(data, &p, sizeof(p));
    memset(data + sizeof(p), 0xee, FORGE_LEN);
    EXPECT_EQ(0, xr_send(r, h->type == STG_AM_READ ? STG_AM_READ : STG_AM_WRITE, hb,
                         cut < n ? cut : n, data,
                         sizeof(p) + (h->type == STG_AM_WRITE ? FORGE_LEN : 0), NULL, NULL));
}

/* A well-formed header of a chunk of FORGE_LEN bytes in one piece. */
static stg_hdr_t hdr(uint32_t magic, uint64_t id, uint16_t epoch)
{
    uint16_t type = test_rand(&rng) % 2 ? STG_AM_WRITE : STG_AM_READ;

    return (stg_hdr_t){magic, type, epoch, 0, 1, test_rand(&rng), FORGE_LEN, id};
}

static stg_seal_t random_seal(int right_key)
{
    stg_seal_t s;

    test_rand_bytes(&rng, (uint8_t *)&s, sizeof(s));
    if (right_key)
        memcpy(s.key_id, sec.id, sizeof(s.key_id));
    return s;
}

/* Moves len bytes at a random offset below FORGE_OFF both ways on peer's
 * staged connection, random bytes, and checks every one. */
static void round_trip(ferry_agent_t *me, ferry_peer_t *peer, uint64_t iter)
{
    uint64_t len = test_rand_range(&rng, 1, 1u << 20);
    uint64_t off = test_rand_range(&rng, 0, FORGE_OFF - len);

    for (int op = 0; op < 2; op++) {
        ferry_desc_t l = xm_desc(XM_HOST, lxb.addr + off, len);
        ferry_desc_t r = xm_target_desc(XM_HOST, rbase + off, len);
        ferry_xfer_t *x;
        uint64_t bad;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, op == 0 ? FERRY_OP_WRITE : FERRY_OP_READ,
                                               &l, 1, peer, &r, 1, &staged, &x));
        ASSERT_TRUE(xt_range(&tgt, 0, off, len, 0) == 0);
        if (op == 0) {
            test_fill_fast(lbuf + off, len, seed, iter, 0);
            EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
            EXPECT_EQ(0, xt_check(&tgt, 0, off, off + len, iter, XU_GUARD_ITER, "WRITE"));
        } else {
            ASSERT_TRUE(xt_fill(&tgt, 0, iter + 1) == 0);
            memset(lbuf + off, 0, len);
            EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
            bad = test_verify_fast(lbuf + off, len, seed, iter + 1, 0);
            if (bad != UINT64_MAX)
                TEST_FAIL_AT_("READ byte %" PRIu64 " of %" PRIu64 " is wrong", bad, len);
        }
        ferry_xfer_release(x);
    }
}

/* The staged connection of a peer of agent me (opened by a transfer). */
static stg_conn_t *staged_conn(ferry_peer_t *peer)
{
    stg_conn_t *c = peer->remote->inst->conn[slot];

    ASSERT_TRUE(c != NULL && c->addr != NULL);
    return c;
}

/*
 * The malformed chunk headers; returns how many replies they should draw
 * (a target without a secret serves the well-formed ones, and answers
 * their unknown region with an error).
 */
static int send_chunks(xr_sender_t *r, const stg_conn_t *live, const void *raddr,
                       size_t ralen)
{
    uint8_t junk[600];
    stg_seal_t s;
    stg_hdr_t h;
    int sent = 0, expect = 0;
    uint64_t id = test_rand(&rng); /* a connection of the forger's */

    for (int i = 0; with_secret && i < 120; i++, sent++) {
        /* Random address bytes, unsealed or sealed at random. */
        size_t alen = test_rand_range(&rng, 1, sizeof(junk));

        test_rand_bytes(&rng, junk, alen);
        h = hdr(i % 2 ? STG_MAGIC : STG_MAGIC_SEALED, test_rand(&rng), 1);
        s = random_seal(i % 4 == 2);
        forge(r, &h, i % 2 ? NULL : &s, junk, alen, SIZE_MAX, rkey.token);
    }
    for (size_t cut = 0; cut <= sizeof(stg_hdr_t) + sizeof(stg_seal_t); cut++, sent++) {
        /* Truncated: no full header, or a sealed one with no room for an
         * address after its seal. */
        int sealed = cut >= sizeof(stg_hdr_t);

        h = hdr(sealed ? STG_MAGIC_SEALED : STG_MAGIC, id, 1);
        s = random_seal(1);
        forge(r, &h, sealed ? &s : NULL, raddr, ralen, cut, rkey.token);
    }
    for (int i = 0; i < 40; i++, sent++) {
        uint32_t magic;

        do
            magic = (uint32_t)test_rand(&rng);
        while (magic == STG_MAGIC || magic == STG_MAGIC_SEALED);
        h = hdr(magic, id, 1);
        forge(r, &h, NULL, raddr, ralen, SIZE_MAX, rkey.token);
    }
    for (int i = 0; i < 80; i++, sent++) {
        /* Sealed with another key id, or unsealed: with a secret both
         * are dropped; without one, served (an unknown region: an error
         * reply, and no byte written). */
        h = hdr(i % 2 ? STG_MAGIC_SEALED : STG_MAGIC, id, 1);
        s = random_seal(0);
        forge(r, &h, i % 2 ? &s : NULL, raddr, ralen, SIZE_MAX,
              with_secret ? rkey.token : rkey.token + 1000);
        expect += !with_secret;
    }
    for (int i = 0; with_secret && i < 40; i++, sent++) {
        /* A good seal, then one bit flipped: of the MAC, the address, the
         * connection id or the epoch. */
        uint8_t a[STG_ADDR_MAX];
        int what = i % 4;

        memcpy(a, raddr, ralen);
        h = hdr(STG_MAGIC_SEALED, test_rand(&rng), 1);
        memcpy(s.key_id, sec.id, sizeof(s.key_id));
        chunk_mac(h.conn_id, h.epoch, a, ralen, s.mac);
        if (what == 0)
            s.mac[test_rand(&rng) % sizeof(s.mac)] ^= 1;
        else if (what == 1)
            a[test_rand(&rng) % ralen] ^= 4;
        else if (what == 2)
            h.conn_id ^= 1ull << (test_rand(&rng) % 64);
        else
            h.epoch ^= 1;
        forge(r, &h, &s, a, ralen, SIZE_MAX, rkey.token);
    }
    for (int i = 0; with_secret && i < 60; i++, sent++) {
        /* The live connection: a higher epoch (its endpoint would be marked
         * dead, its chunks taken for stale), or its own epoch with a wrong
         * MAC (bytes written through its endpoint). */
        size_t alen = test_rand_range(&rng, 1, sizeof(junk));
        uint16_t epoch = (uint16_t)(live->epoch + (i < 40 ? 1 + i : 0));

        test_rand_bytes(&rng, junk, alen);
        h = hdr(STG_MAGIC_SEALED, live->id, epoch);
        s = random_seal(1);
        forge(r, &h, &s, i % 2 ? junk : raddr, i % 2 ? alen : ralen, SIZE_MAX,
              rkey.token);
    }
    for (int i = 0; i < 8; i++, sent++) {
        /* The live connection's earlier epochs, correctly sealed (the seal
         * a replay of a captured chunk carries), half of them malformed (a
         * replay may change what the seal does not cover): stale, dropped
         * without a reply, the live epoch's endpoint untouched. */
        h = hdr(with_secret ? STG_MAGIC_SEALED : STG_MAGIC, live->id,
                (uint16_t)(live->epoch - 1 - i));
        if (i % 2)
            h.npieces = i % 4 == 1 ? 0 : STG_MAX_PIECES + 1;
        memcpy(s.key_id, sec.id, sizeof(s.key_id));
        if (with_secret)
            chunk_mac(h.conn_id, h.epoch, raddr, ralen, s.mac);
        forge(r, &h, with_secret ? &s : NULL, raddr, ralen, SIZE_MAX, rkey.token);
    }
    printf("test_staged_forge: %d malformed or forged chunk headers sent\n", sent);
    return expect;
}

static void find_op(stg_ctx_t *ctx, stg_op_t *op, void *arg)
{
    (void)ctx;
    if (!op->target)
        *(stg_op_t **)arg = op;
}

/*
 * A READ in flight to a stopped target, and forged replies to it: guessed
 * cookies (the generations and indices a counter would start from, and
 * random ones), then its exact cookie, naming its connection and epoch,
 * with the bytes wrong: with a secret unsealed and badly sealed, on its
 * own worker and another connection's; without one, on another
 * connection's only (on its own, a reply is trusted). The READ then
 * completes with the target's bytes.
 */
static void forge_replies(ferry_agent_t *me, ferry_peer_t *peer, stg_conn_t *other)
{
    stg_ctx_t *ctx = me->bk_ctx[slot];
    stg_conn_t *live = staged_conn(peer);
    uint64_t off = 4096, len = 64u << 10;
    ferry_desc_t l = xm_desc(XM_HOST, lxb.addr + off, len);
    ferry_desc_t rd = xm_target_desc(XM_HOST, rbase + off, len);
    static uint8_t junk[64u << 10];
    ferry_xfer_t *x;
    stg_op_t *op = NULL;
    xr_sender_t own, wrong;
    ferry_status_t st;
    uint64_t bad, t0;
    int sent = 0;

    memset(junk, 0xee, sizeof(junk));
    ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_READ, &l, 1, peer, &rd, 1, &staged,
                                           &x));
    ASSERT_TRUE(xt_range(&tgt, 0, off, len, 0) == 0);
    ASSERT_TRUE(xt_fill(&tgt, 0, 900) == 0);
    memset(lbuf + off, 0, len);
    xu_stop_child(tgt.pid);
    st = ferry_xfer_post(x);
    EXPECT_ST(FERRY_IN_PROGRESS, st);
    for (t0 = xu_now_ns(); xu_ms_since(t0) < 50;)
        ferry_agent_progress(me);
    ferry__stg_ops_each(ctx, find_op, &op);
    ASSERT_TRUE(op != NULL && op->plan->run.conn == live);
    ASSERT_TRUE(xr_open(&own, live->addr) == 0);
    ASSERT_TRUE(xr_open(&wrong, other->addr) == 0);
    for (int i = 0; i < 320; i++, sent++) {
        uint64_t cookie = i < 256 ? (uint64_t)(1 + i / 64) << 32 | (uint64_t)(i % 64)
                                  : test_rand(&rng);
        stg_hdr_t h = {STG_MAGIC, STG_AM_READ, live->epoch, 0, 0, cookie, len, live->id};

        EXPECT_EQ(0, xr_send(&own, STG_AM_REPLY, &h, sizeof(h), junk, len, pump, me));
    }
    {
        stg_hdr_t h = {STG_MAGIC, STG_AM_READ, live->epoch, 0, 0,
                       ferry__stg_cookie(ctx, op), len, live->id};
        uint8_t hs[sizeof(h) + sizeof(stg_seal_t)];
        stg_seal_t s = random_seal(1);

        EXPECT_EQ(0, xr_send(&wrong, STG_AM_REPLY, &h, sizeof(h), junk, len, pump, me));
        sent++;
        if (with_secret) {
            EXPECT_EQ(0, xr_send(&own, STG_AM_REPLY, &h, sizeof(h), junk, len, pump, me));
            h.magic = STG_MAGIC_SEALED;
            memcpy(hs, &h, sizeof(h));
            memcpy(hs + sizeof(h), &s, sizeof(s));
            EXPECT_EQ(0, xr_send(&own, STG_AM_REPLY, hs, sizeof(hs), junk, len, pump, me));
            EXPECT_EQ(0, xr_send(&wrong, STG_AM_REPLY, hs, sizeof(hs), junk, len, pump, me));
            sent += 3;
        }
    }
    /* Every forged reply is in by now: a reply taken would have ended the
     * READ (with the wrong bytes). */
    for (t0 = xu_now_ns(); xu_ms_since(t0) < 200;)
        ferry_agent_progress(me);
    EXPECT_ST(FERRY_IN_PROGRESS, ferry_xfer_test(x));
    printf("test_staged_forge: %d forged replies sent to a READ in flight\n", sent);
    xu_cont_child(tgt.pid);
    EXPECT_ST(FERRY_OK, ferry_xfer_wait(x, 30 * SEC));
    bad = test_verify_fast(lbuf + off, len, seed, 900, 0);
    if (bad != UINT64_MAX)
        TEST_FAIL_AT_("the READ after forged replies: byte %" PRIu64 " is wrong", bad);
    ferry_xfer_release(x);
    xr_close(&own);
    xr_close(&wrong);
}

int main(int argc, char **argv)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_STALL_TIMEOUT,
                               .name = "forge-initiator", .stall_timeout_ns = 20 * SEC};
    ferry_agent_params_t op = {.field_mask = FERRY_AGENT_PARAM_NAME |
                                             FERRY_AGENT_PARAM_PROGRESS_THREAD,
                               .name = "forge-other", .progress_thread = 1};
    xt_opts_t to = {.name = "forge-target", .progress_thread = 1, .drive = 1, .nbuf = 1};
    ucp_am_handler_param_t hp = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                                               UCP_AM_HANDLER_PARAM_FIELD_CB,
                                 .id = STG_AM_REPLY, .cb = on_reply};
    ferry_agent_t *me, *other;
    ferry_peer_t *peer, *opeer;
    ferry_mem_t *lmem, *omem;
    ferry__md_t md;
    xr_sender_t raw;
    ucp_address_t *raddr;
    size_t ralen;
    ferry_desc_t d;
    stg_conn_t *live;
    uint16_t epoch;
    uint64_t id, t0;
    int expect;
    uint8_t *ref;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2 || (strcmp(argv[1], "secret") != 0 && strcmp(argv[1], "nosecret") != 0)) {
        fprintf(stderr, "usage: %s secret|nosecret\n", argv[0]);
        return 2;
    }
    with_secret = strcmp(argv[1], "secret") == 0;
    seed = xu_seed(0xf0e6eull);
    rng.s = seed;
    printf("test_staged_forge %s: seed %" PRIu64 "\n", argv[1], seed);
    xt_watchdog(&tgt, 150);
    /* The target inherits the environment: both sides get the secret. */
    if (with_secret)
        setenv("FERRY_JOB_SECRET", SECRET, 1);
    else
        unsetenv("FERRY_JOB_SECRET");
    ASSERT_ST(FERRY_OK, ferry__secret_init(&sec, with_secret ? SECRET : ""));
    slot = ferry__backend_slot(FERRY__BK_STAGED);
    ASSERT_TRUE(slot >= 0);
    to.seed = seed;
    to.buf[0] = (xt_buf_opts_t){XM_HOST, TCAP, 0, 0};
    ASSERT_TRUE(xt_start(&tgt, &to) == 0);
    tgt.timeout_ms = 60000;
    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &me));
    ASSERT_ST(FERRY_OK, ferry_agent_create(&op, &other));
    ASSERT_TRUE(xm_alloc(&lxb, XM_HOST, TCAP) == 0);
    lbuf = lxb.host;
    d = xm_desc(XM_HOST, lxb.addr, TCAP);
    ASSERT_ST(FERRY_OK, ferry_mem_register(me, &d, 1, &lmem));
    d = xm_desc(XM_HOST, lxb.addr + TCAP - 4096, 4096);
    ASSERT_ST(FERRY_OK, ferry_mem_register(other, &d, 1, &omem));
    ASSERT_TRUE(xt_connect(&tgt, me, &peer) == 0);
    ASSERT_ST(FERRY_OK, test_exchange(me, other, &opeer));
    rbase = tgt.buf[0].addr;

    /* The target's staging address and its region's key, from its blob. */
    ASSERT_ST(FERRY_OK, ferry__md_parse(tgt.blob, tgt.blob_len, tgt.blob_len, &md));
    ASSERT_TRUE(md.bk_addr[slot].data != NULL && md.nregions == 1 &&
                md.regions[0].bk[slot].len == 8);
    memcpy(&rkey, md.regions[0].bk[slot].data, 8);

    /* The live connection, and one to another agent (another worker). */
    round_trip(me, peer, 1);
    {
        ferry_desc_t a = xm_desc(XM_HOST, lxb.addr, 64), b = xm_desc(XM_HOST, d.addr, 64);
        ferry_xfer_t *x;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_WRITE, &a, 1, opeer, &b, 1,
                                               &staged, &x));
        test_fill_fast(lbuf, 64, seed, 2, 0);
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
        EXPECT_TRUE(memcmp(lbuf + TCAP - 4096, lbuf, 64) == 0);
        ferry_xfer_release(x);
    }
    live = staged_conn(peer);
    id = live->id;
    epoch = live->epoch;
    ASSERT_TRUE(xt_pattern(&tgt, 0, FORGE_OFF, FORGE_OFF + FORGE_LEN, XU_GUARD_ITER) == 0);

    /* Malformed and forged chunk headers, then one good one. */
    ASSERT_TRUE(xr_open(&raw, md.bk_addr[slot].data) == 0);
    ASSERT_TRUE(ucp_worker_set_am_recv_handler(raw.worker, &hp) == UCS_OK);
    ASSERT_TRUE(ucp_worker_get_address(raw.worker, &raddr, &ralen) == UCS_OK);
    expect = send_chunks(&raw, live, raddr, ralen);
    {
        stg_hdr_t h = hdr(with_secret ? STG_MAGIC_SEALED : STG_MAGIC, test_rand(&rng), 1);
        stg_seal_t s;

        h.type = STG_AM_READ;
        memcpy(s.key_id, sec.id, sizeof(s.key_id));
        if (with_secret)
            chunk_mac(h.conn_id, h.epoch, raddr, ralen, s.mac);
        forge(&raw, &h, with_secret ? &s : NULL, raddr, ralen, SIZE_MAX, rkey.token + 1000);
        expect++;
    }
    /* In order on one endpoint: the last reply comes after the target
     * dealt with every header before it. */
    for (t0 = xu_now_ns(); replies < expect && xu_ms_since(t0) < 30000;)
        xr_progress(&raw);
    for (t0 = xu_now_ns(); xu_ms_since(t0) < 100;)
        xr_progress(&raw);
    EXPECT_EQ(expect, replies);
    EXPECT_EQ(FERRY_ERR_NOT_REGISTERED, last_status);
    printf("test_staged_forge: %d replies (%d expected)\n", replies, expect);

    /* The live connection was not disturbed, and no forged byte landed. */
    EXPECT_TRUE(staged_conn(peer) == live && live->id == id && live->epoch == epoch);
    round_trip(me, peer, 10);
    round_trip(me, peer, 20);
    {
        ferry_desc_t l = xm_desc(XM_HOST, lxb.addr, FORGE_LEN);
        ferry_desc_t r = xm_target_desc(XM_HOST, rbase + FORGE_OFF, FORGE_LEN);
        ferry_xfer_t *x;

        ASSERT_ST(FERRY_OK, ferry_xfer_prepare(me, FERRY_OP_READ, &l, 1, peer, &r, 1,
                                               &staged, &x));
        EXPECT_ST(FERRY_OK, xu_post_wait(x, 30 * SEC));
        ferry_xfer_release(x);
        /* The guard pattern at buffer offsets, as the target wrote it. */
        ref = xu_alloc_buf(FORGE_OFF + FORGE_LEN);
        xu_fill_guard(ref, FORGE_OFF, FORGE_OFF + FORGE_LEN, seed, XU_GUARD_ITER);
        EXPECT_TRUE(memcmp(ref + FORGE_OFF, lbuf, FORGE_LEN) == 0);
        free(ref);
    }
    forge_replies(me, peer, staged_conn(opeer));
    round_trip(me, peer, 30);
    EXPECT_TRUE(staged_conn(peer) == live && live->epoch == epoch);

    ucp_worker_release_address(raw.worker, raddr);
    xr_close(&raw);
    ferry__md_clear(&md);
    EXPECT_TRUE(xt_quit(&tgt) == 0);
    ferry_peer_forget(peer);
    ferry_peer_forget(opeer);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(lmem));
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(omem));
    ferry_agent_destroy(other);
    ferry_agent_destroy(me);
    xm_free(&lxb);
    ferry__secret_clear(&sec);
    return test_finish("test_staged_forge");
}
