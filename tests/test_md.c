/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Metadata blobs: a packed blob round-trips through the parser and loads as
 * a peer; every malformed blob (each truncation point, bad magic, checksum,
 * version, lengths past the end, overflowing counts, bad regions, missing or
 * repeated sections, oversize) is FERRY_ERR_PROTOCOL with a detail text and
 * never a crash; unknown sections and backends are skipped. With a job
 * secret, blobs are sealed, and an unsealed blob, one sealed with another
 * secret (a replay from another job), and a sealed blob changed and given
 * a valid checksum again are refused, each naming its reason; every
 * truncation and bit flip of a sealed blob is refused too.
 */
#include "test.h"
#include "core/core.h"
#include "core/md.h"
#include "util/buf.h"

#include <unistd.h>

/* What a forged blob contains; each field can be bent by a case. */
typedef struct forge {
    uint32_t magic;
    uint16_t version;
    int nsections_delta;  /* added to the true count */
    int length_delta;     /* added to the header's length field */
    int crc_delta;        /* added to the computed checksum */
    int agent_sections;   /* 0, 1 or 2 */
    const char *name;
    int name_len_delta;   /* added to the name's length prefix */
    uint32_t region_count_override; /* 0: the true count */
    uint64_t region_len;  /* of the second region */
    uint64_t region_addr;
    uint8_t region_kind;
    uint32_t rkey_len_delta; /* added to the first region's key length */
    int unknown_section;  /* add a section of an unknown type */
    int unknown_backend;  /* add a region entry of an unknown backend */
    int trailing;         /* bytes appended after the last section */
    size_t name_n;        /* bytes of name to write; 0: strlen(name) */
    int seal_only;        /* one section, a well-formed seal, and nothing else */
} forge_t;

static forge_t forge_default(void)
{
    return (forge_t){FERRY__MD_MAGIC, FERRY__MD_VERSION, 0, 0, 0, 1, "peer-a", 0,
                     0, 4096, 0x20000, FERRY_MEM_HOST, 0, 0, 0, 0, 0, 0};
}

static void region(ferry__wbuf_t *w, const forge_t *f, uint32_t id, uint8_t kind,
                   uint64_t addr, uint64_t len, uint32_t key_delta, int extra_bk)
{
    static const uint8_t key[5] = {1, 2, 3, 4, 5};

    ferry__wbuf_u32(w, id);
    ferry__wbuf_u8(w, kind);
    ferry__wbuf_u8(w, (uint8_t)(1 + extra_bk));
    ferry__wbuf_u16(w, 0);
    ferry__wbuf_u32(w, (uint32_t)-1);
    ferry__wbuf_u64(w, addr);
    ferry__wbuf_u64(w, len);
    ferry__wbuf_u16(w, FERRY__BK_UCX);
    ferry__wbuf_u32(w, (uint32_t)sizeof(key) + key_delta);
    ferry__wbuf_bytes(w, key, sizeof(key));
    if (extra_bk) {
        ferry__wbuf_u16(w, 3000); /* a backend from the future */
        ferry__wbuf_u32(w, 2);
        ferry__wbuf_u16(w, 0xbeef);
    }
    (void)f;
}

static void forge(const forge_t *f, ferry__wbuf_t *w)
{
    uint32_t n = 0;
    size_t pos, name_n = f->name_n ? f->name_n : strlen(f->name);

    ferry__wbuf_init(w);
    ferry__wbuf_reserve(w, FERRY__MD_HDR_LEN);
    memset(w->data, 0, FERRY__MD_HDR_LEN);
    if (f->seal_only) {
        pos = ferry__md_section(w, FERRY__MD_SEC_SEAL);
        ferry__wbuf_u8(w, FERRY__MD_SEAL_HMAC_SHA256);
        for (int i = 1; i < FERRY__MD_SEAL_LEN; i++)
            ferry__wbuf_u8(w, (uint8_t)i);
        ferry__md_section_end(w, pos);
        n++;
        goto header;
    }
    for (int a = 0; a < f->agent_sections; a++, n++) {
        pos = ferry__md_section(w, FERRY__MD_SEC_AGENT);
        ferry__wbuf_u64(w, 0x1122334455667788ull);
        ferry__wbuf_u16(w, (uint16_t)(name_n + (size_t)f->name_len_delta));
        ferry__wbuf_bytes(w, f->name, name_n);
        ferry__wbuf_u16(w, 4);
        ferry__wbuf_bytes(w, "host", 4);
        ferry__wbuf_u32(w, 4242);
        ferry__md_section_end(w, pos);
    }
    pos = ferry__md_section(w, FERRY__MD_SEC_BACKEND);
    ferry__wbuf_u16(w, FERRY__BK_UCX);
    ferry__wbuf_bytes(w, "ucx-address", 11);
    ferry__md_section_end(w, pos);
    n++;
    if (f->unknown_section) {
        pos = ferry__md_section(w, 777);
        ferry__wbuf_bytes(w, "from a newer version", 20);
        ferry__md_section_end(w, pos);
        n++;
    }
    pos = ferry__md_section(w, FERRY__MD_SEC_REGIONS);
    ferry__wbuf_u32(w, f->region_count_override ? f->region_count_override : 2);
    region(w, f, 0, FERRY_MEM_HOST, 0x10000, 0x1000, f->rkey_len_delta, f->unknown_backend);
    region(w, f, 1, f->region_kind, f->region_addr, f->region_len, 0, 0);
    ferry__md_section_end(w, pos);
    n++;
    for (int i = 0; i < f->trailing; i++)
        ferry__wbuf_u8(w, 0);

header:
    ferry__store_le32(w->data, f->magic);
    w->data[4] = (uint8_t)f->version;
    w->data[5] = (uint8_t)(f->version >> 8);
    ferry__store_le32(w->data + 16, (uint32_t)((int)n + f->nsections_delta));
    ferry__md_seal(w->data, w->len);
    if (f->length_delta || f->crc_delta) {
        ferry__store_le32(w->data + 8, (uint32_t)((int)w->len + f->length_delta));
        ferry__store_le32(w->data + 12, 0);
        ferry__store_le32(w->data + 12, ferry__crc32(0, w->data, w->len) +
                                            (uint32_t)f->crc_delta);
    }
}

static ferry_status_t parse(const forge_t *f, ferry__md_t *md)
{
    ferry__wbuf_t w;
    ferry_status_t st;

    forge(f, &w);
    ASSERT_TRUE(!w.oom);
    st = ferry__md_parse(w.data, w.len, 1u << 20, md);
    ferry__wbuf_free(&w);
    return st;
}

#define EXPECT_BAD(label, mutate, needle)                                     \
    do {                                                                      \
        forge_t f_ = forge_default();                                         \
        ferry__md_t md_;                                                      \
        mutate;                                                               \
        ferry_status_t st_ = parse(&f_, &md_);                                \
        if (st_ != FERRY_ERR_PROTOCOL)                                        \
            TEST_FAIL_AT_("%s: expected PROTOCOL, got %s", label,             \
                          ferry_status_str(st_));                             \
        else if (strstr(ferry_last_error(), needle) == NULL)                  \
            TEST_FAIL_AT_("%s: detail '%s' lacks '%s'", label,                \
                          ferry_last_error(), needle);                        \
        cases++;                                                              \
    } while (0)

static int cases;

static void forged_cases(void)
{
    forge_t f = forge_default();
    ferry__md_t md;

    /* The unbent forgery is valid, which makes every bent one meaningful. */
    ASSERT_ST(FERRY_OK, parse(&f, &md));
    EXPECT_TRUE(strcmp(md.name, "peer-a") == 0);
    EXPECT_TRUE(strcmp(md.host_id, "host") == 0);
    EXPECT_EQ(4242, md.pid);
    EXPECT_EQ(2, md.nregions);
    EXPECT_EQ(0x10000, md.regions[0].addr);
    EXPECT_EQ(5, md.regions[0].bk[ferry__backend_slot(FERRY__BK_UCX)].len);
    EXPECT_EQ(11, md.bk_addr[ferry__backend_slot(FERRY__BK_UCX)].len);
    ferry__md_clear(&md);

    EXPECT_BAD("bad magic", f_.magic = 0x12345678, "magic");
    EXPECT_BAD("version 2", f_.version = 2, "version 2");
    EXPECT_BAD("version 0", f_.version = 0, "version 0");
    EXPECT_BAD("bad checksum", f_.crc_delta = 1, "checksum");
    EXPECT_BAD("length field too long", f_.length_delta = 1, "header says");
    EXPECT_BAD("length field too short", f_.length_delta = -1, "header says");
    EXPECT_BAD("one section more than present", f_.nsections_delta = 1, "past the end");
    EXPECT_BAD("section count overflow", f_.nsections_delta = -10, "cannot fit");
    EXPECT_BAD("one section fewer", f_.nsections_delta = -1, "after the last section");
    EXPECT_BAD("trailing bytes", f_.trailing = 3, "after the last section");
    EXPECT_BAD("region count overflows", f_.region_count_override = 0xFFFFFFFFu, "exceeds");
    EXPECT_BAD("region count one too many", f_.region_count_override = 3, "region count 3");
    EXPECT_BAD("region count too few", f_.region_count_override = 1, "trailing bytes");
    EXPECT_BAD("zero-length region", f_.region_len = 0, "invalid range");
    EXPECT_BAD("NULL region", f_.region_addr = 0, "invalid range");
    EXPECT_BAD("region wraps around", (f_.region_addr = UINT64_MAX - 10, f_.region_len = 100),
               "invalid range");
    EXPECT_BAD("unknown memory kind", f_.region_kind = 9, "memory kind 9");
    EXPECT_BAD("key length past the section", f_.rkey_len_delta = 1000, "runs past");
    EXPECT_BAD("key length wraps", f_.rkey_len_delta = 0xFFFFFFF0u, "runs past");
    EXPECT_BAD("empty agent name", f_.name = "", "name");
    EXPECT_BAD("name length past the section", f_.name_len_delta = 200, "name");
    EXPECT_BAD("name with a NUL", (f_.name = "ab\0cd", f_.name_n = 5), "name");
    EXPECT_BAD("no agent section", f_.agent_sections = 0, "no agent section");
    EXPECT_BAD("two agent sections", f_.agent_sections = 2, "repeats");
    EXPECT_BAD("a seal and nothing else", f_.seal_only = 1, "no agent section");

    /* What a newer writer adds is skipped, not refused. */
    f = forge_default();
    f.unknown_section = 1;
    f.unknown_backend = 1;
    EXPECT_ST(FERRY_OK, parse(&f, &md));
    EXPECT_EQ(2, md.nregions);
    EXPECT_EQ(5, md.regions[0].bk[ferry__backend_slot(FERRY__BK_UCX)].len);
    ferry__md_clear(&md);
}

/* Every proper prefix of blob (len bytes; copy has room for them) is
 * refused by agent. */
static void prefixes_refused(ferry_agent_t *agent, const void *blob, size_t len,
                             uint8_t *copy, const char *what)
{
    ferry_peer_t *peer;

    for (size_t cut = 0; cut < len; cut++) {
        memcpy(copy, blob, cut);
        if (ferry_peer_load(agent, copy, cut, &peer) != FERRY_ERR_PROTOCOL) {
            TEST_FAIL_AT_("prefix of %zu of %zu %sbytes was not refused", cut, len, what);
            break;
        }
        cases++;
    }
}

/* A real agent's blob: round trip, every truncation, public-path errors. */
static void real_blob(void)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME, .name = "md-test"};
    ferry_agent_t *agent;
    ferry_mem_t *mem;
    ferry_peer_t *peer, *again;
    static uint8_t buf[3][8192];
    ferry_desc_t d[3];
    void *blob;
    size_t len;
    ferry__md_t md;
    uint8_t *copy;

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &agent));
    for (int i = 0; i < 3; i++)
        d[i] = (ferry_desc_t){(uintptr_t)buf[i], sizeof(buf[i]) - (uint64_t)i,
                              FERRY_MEM_HOST, 0};
    ASSERT_ST(FERRY_OK, ferry_mem_register(agent, d, 3, &mem));
    ASSERT_ST(FERRY_OK, ferry_md_pack(agent, &blob, &len));

    ASSERT_ST(FERRY_OK, ferry__md_parse(blob, len, 1u << 20, &md));
    EXPECT_TRUE(strcmp(md.name, "md-test") == 0);
    EXPECT_TRUE(md.host_id[0] != '\0');
    EXPECT_EQ(getpid(), md.pid);
    EXPECT_TRUE(md.bk_addr[ferry__backend_slot(FERRY__BK_UCX)].data != NULL);
    EXPECT_EQ(3, md.nregions);
    for (uint32_t i = 0; i < md.nregions; i++) {
        int found = 0;

        for (int j = 0; j < 3; j++)
            if (md.regions[i].addr == d[j].addr && md.regions[i].len == d[j].len &&
                md.regions[i].kind == FERRY_MEM_HOST)
                found = 1;
        EXPECT_TRUE(found);
        EXPECT_TRUE(md.regions[i].bk[ferry__backend_slot(FERRY__BK_UCX)].len > 0);
    }
    ferry__md_clear(&md);

    /* Every proper prefix is refused, through the public call. */
    copy = malloc(len);
    ASSERT_TRUE(copy != NULL);
    prefixes_refused(agent, blob, len, copy, "");
    /* Every single flipped bit is caught (by the checksum if nothing else). */
    for (size_t i = 0; i < len; i++) {
        memcpy(copy, blob, len);
        copy[i] ^= 0x10;
        if (ferry_peer_load(agent, copy, len, &peer) != FERRY_ERR_PROTOCOL) {
            TEST_FAIL_AT_("bit flip at byte %zu was not refused", i);
            break;
        }
    }
    free(copy);
    EXPECT_ST(FERRY_ERR_INVALID, ferry_peer_load(agent, NULL, 0, &peer));

    /* Oversized by the configured limit. */
    setenv("FERRY_MD_MAX", "64", 1);
    EXPECT_ST(FERRY_ERR_PROTOCOL, ferry_peer_load(agent, blob, len, &peer));
    EXPECT_ERR_HAS("FERRY_MD_MAX");
    unsetenv("FERRY_MD_MAX");

    /* The intact blob loads; loading it again gives the same peer. */
    ASSERT_ST(FERRY_OK, ferry_peer_load(agent, blob, len, &peer));
    EXPECT_TRUE(strcmp(ferry_peer_name(peer), "md-test") == 0);
    ASSERT_ST(FERRY_OK, ferry_peer_load(agent, blob, len, &again));
    EXPECT_TRUE(peer == again);
    ferry_peer_forget(peer);
    ferry_md_free(blob);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(agent);
}

static ferry_agent_t *agent_with(const char *name, const char *secret)
{
    ferry_agent_params_t ap = {.field_mask = FERRY_AGENT_PARAM_NAME | FERRY_AGENT_PARAM_SECRET,
                               .name = name, .secret = secret};
    ferry_agent_t *a = NULL;

    ASSERT_ST(FERRY_OK, ferry_agent_create(&ap, &a));
    return a;
}

/* Loads a's blob into b, changed by mutate (NULL: as it is). */
static ferry_status_t load_from(ferry_agent_t *b, ferry_agent_t *a,
                                void (*mutate)(uint8_t *, size_t))
{
    void *blob;
    size_t len;
    ferry_peer_t *peer;
    ferry_status_t st;

    ASSERT_ST(FERRY_OK, ferry_md_pack(a, &blob, &len));
    if (mutate != NULL)
        mutate(blob, len);
    st = ferry_peer_load(b, blob, len, &peer);
    if (st == FERRY_OK)
        ferry_peer_forget(peer);
    ferry_md_free(blob);
    return st;
}

/* Moves the first region 4 KiB on and seals the checksum again: only the
 * MAC can tell. The REGIONS section is the one before the seal. */
static void move_region(uint8_t *blob, size_t len)
{
    ferry__md_t md;

    ASSERT_ST(FERRY_OK, ferry__md_parse(blob, len, 1u << 20, &md));
    ASSERT_TRUE(md.nregions > 0 && md.seal_off != 0);
    for (size_t i = 0; i + 8 <= len; i++) {
        uint64_t v;

        memcpy(&v, blob + i, 8); /* little-endian, as this host */
        if (v == md.regions[0].addr) {
            v += 4096;
            memcpy(blob + i, &v, 8);
            break;
        }
    }
    ferry__md_clear(&md);
    ferry__md_seal(blob, len);
}

static void secret_cases(void)
{
    static const char s1[] = "job-one-secret-0123456789abcdef";
    static const char s2[] = "job-two-secret-0123456789abcdef";
    static uint8_t buf[4096];
    ferry_desc_t d = {(uintptr_t)buf, sizeof(buf), FERRY_MEM_HOST, 0};
    ferry_agent_t *a = agent_with("sealed-a", s1), *b = agent_with("sealed-b", s1);
    ferry_agent_t *other = agent_with("other-job", s2), *open = agent_with("open", NULL);
    ferry_agent_params_t shortp = {.field_mask = FERRY_AGENT_PARAM_SECRET, .secret = "short"};
    ferry_agent_t *bad = NULL;
    ferry_mem_t *mem;
    void *blob;
    size_t len;
    uint8_t *copy;
    ferry_peer_t *peer;
    ferry__md_t md;

    EXPECT_ST(FERRY_ERR_INVALID, ferry_agent_create(&shortp, &bad));
    EXPECT_ERR_HAS("at least 16");
    ASSERT_ST(FERRY_OK, ferry_mem_register(a, &d, 1, &mem));

    /* The members load each other's blobs. */
    EXPECT_ST(FERRY_OK, load_from(b, a, NULL));
    /* A blob sealed under another job's secret: a replay, or a stranger. */
    EXPECT_ST(FERRY_ERR_PROTOCOL, load_from(b, other, NULL));
    EXPECT_ERR_HAS("another secret");
    EXPECT_ST(FERRY_ERR_PROTOCOL, load_from(other, a, NULL));
    EXPECT_ERR_HAS("another secret");
    /* An unsealed blob. */
    EXPECT_ST(FERRY_ERR_PROTOCOL, load_from(b, open, NULL));
    EXPECT_ERR_HAS("not sealed");
    /* Changed after sealing, with a valid checksum. */
    EXPECT_ST(FERRY_ERR_PROTOCOL, load_from(b, a, move_region));
    EXPECT_ERR_HAS("does not verify");
    /* An agent without a secret cannot check a seal, and loads the blob. */
    EXPECT_ST(FERRY_OK, load_from(open, a, NULL));

    /* The secret from the environment, as ferry-run hands it over. */
    setenv("FERRY_JOB_SECRET", s1, 1);
    ferry_agent_t *env = NULL;
    ASSERT_ST(FERRY_OK, ferry_agent_create(NULL, &env));
    unsetenv("FERRY_JOB_SECRET");
    EXPECT_ST(FERRY_OK, load_from(env, a, NULL));
    EXPECT_ST(FERRY_ERR_PROTOCOL, load_from(env, open, NULL));
    ASSERT_ST(FERRY_OK, ferry_md_pack(env, &blob, &len));
    ASSERT_ST(FERRY_OK, ferry__md_parse(blob, len, 1u << 20, &md));
    EXPECT_TRUE(md.seal_off != 0);
    ferry__md_clear(&md);
    ferry_md_free(blob);
    ferry_agent_destroy(env);

    /* Every truncation and bit flip of a sealed blob is refused. */
    ASSERT_ST(FERRY_OK, ferry_md_pack(a, &blob, &len));
    copy = malloc(len);
    ASSERT_TRUE(copy != NULL);
    prefixes_refused(b, blob, len, copy, "sealed ");
    for (size_t i = 0; i < len * 8; i++) {
        memcpy(copy, blob, len);
        copy[i / 8] ^= (uint8_t)(1u << (i % 8));
        ferry__md_seal(copy, len); /* the checksum is right: the seal must tell */
        ferry_status_t st = ferry_peer_load(b, copy, len, &peer);
        /* Resealing rewrites the length and checksum fields (bytes 8 to
         * 15), undoing a flip there; every other bit is under the MAC. */
        if (i / 8 >= 8 && i / 8 < 16) {
            if (st == FERRY_OK)
                ferry_peer_forget(peer);
            continue;
        }
        if (st != FERRY_ERR_PROTOCOL) {
            TEST_FAIL_AT_("resealed bit flip %zu of a sealed blob: %s", i,
                          ferry_status_str(st));
            break;
        }
        cases++;
    }
    free(copy);
    ferry_md_free(blob);
    EXPECT_ST(FERRY_OK, ferry_mem_deregister(mem));
    ferry_agent_destroy(a);
    ferry_agent_destroy(b);
    ferry_agent_destroy(other);
    ferry_agent_destroy(open);
}

int main(void)
{
    unsetenv("FERRY_JOB_SECRET");
    forged_cases();
    real_blob();
    secret_cases();
    printf("malformed cases refused: %d\n", cases);
    EXPECT_TRUE(cases >= 15);
    return test_finish("test_md");
}
