/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The job secret and the cryptography built on it (secret.h): HMAC-SHA-256
 * and the constant-time comparison from OpenSSL's libcrypto, nonces from
 * getrandom(). Nothing here is home-made beyond labelling the three derived
 * keys.
 */
#include "util/secret.h"
#include "util/config.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <sys/random.h>

/* The shortest secret accepted: 16 bytes of text, which ferry-run fills
 * with 64 hex digits (32 random bytes). */
#define SECRET_MIN 16

static ferry_status_t derive(const char *text, const char *label, uint8_t *out)
{
    unsigned int n = FERRY__MAC_LEN;

    if (HMAC(EVP_sha256(), text, (int)strlen(text), (const unsigned char *)label,
             strlen(label), out, &n) == NULL || n != FERRY__MAC_LEN)
        return ferry__error(FERRY_ERR_SYSTEM, "secret: HMAC-SHA-256 failed in libcrypto");
    return FERRY_OK;
}

ferry_status_t ferry__secret_init(ferry__secret_t *s, const char *text)
{
    uint8_t id[FERRY__MAC_LEN];

    memset(s, 0, sizeof(*s));
    if (text == NULL)
        text = ferry__config_get("FERRY_JOB_SECRET");
    if (text[0] == '\0')
        return FERRY_OK;
    if (strlen(text) < SECRET_MIN)
        return ferry__error(FERRY_ERR_INVALID, "secret: the job secret has %zu "
                            "bytes; at least %d are needed (ferry-run makes 64 "
                            "random hex digits)", strlen(text), SECRET_MIN);
    FERRY_CHECK(derive(text, "ferry 1 blob seal", s->blob_key));
    FERRY_CHECK(derive(text, "ferry 1 store authentication", s->store_key));
    FERRY_CHECK(derive(text, "ferry 1 staging", s->stage_key));
    FERRY_CHECK(derive(text, "ferry 1 key id", id));
    memcpy(s->id, id, sizeof(s->id));
    s->set = true;
    return FERRY_OK;
}

void ferry__secret_clear(ferry__secret_t *s)
{
    OPENSSL_cleanse(s, sizeof(*s));
}

/* A fresh HMAC-SHA-256 context keyed with key, or NULL. */
static EVP_MAC_CTX *mac_keyed(const uint8_t key[FERRY__MAC_LEN])
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};

    /* The context holds its own reference to the algorithm. */
    EVP_MAC_free(mac);
    if (ctx != NULL && EVP_MAC_init(ctx, key, FERRY__MAC_LEN, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* Hashes the parts into a keyed context and ends the MAC; frees ctx. */
static ferry_status_t mac_finish(EVP_MAC_CTX *ctx, const ferry__mac_part_t *parts,
                                 size_t nparts, uint8_t out[FERRY__MAC_LEN])
{
    size_t n = 0;
    int ok = ctx != NULL;

    for (size_t i = 0; ok && i < nparts; i++)
        ok = EVP_MAC_update(ctx, parts[i].p, parts[i].n) == 1;
    ok = ok && EVP_MAC_final(ctx, out, &n, FERRY__MAC_LEN) == 1 && n == FERRY__MAC_LEN;
    EVP_MAC_CTX_free(ctx);
    if (!ok)
        return ferry__error(FERRY_ERR_SYSTEM, "secret: HMAC-SHA-256 failed in libcrypto");
    return FERRY_OK;
}

ferry_status_t ferry__mac(const uint8_t key[FERRY__MAC_LEN], const ferry__mac_part_t *parts,
                          size_t nparts, uint8_t out[FERRY__MAC_LEN])
{
    return mac_finish(mac_keyed(key), parts, nparts, out);
}

ferry_status_t ferry__mac_key_new(const uint8_t key[FERRY__MAC_LEN], ferry__mac_key_t **k_p)
{
    EVP_MAC_CTX *ctx = mac_keyed(key);

    if (ctx == NULL)
        return ferry__error(FERRY_ERR_SYSTEM, "secret: HMAC-SHA-256 failed in libcrypto");
    *k_p = (ferry__mac_key_t *)ctx;
    return FERRY_OK;
}

ferry_status_t ferry__mac_with(ferry__mac_key_t *k, const ferry__mac_part_t *parts,
                               size_t nparts, uint8_t out[FERRY__MAC_LEN])
{
    /* A copy of the keyed state: the key's own stays ready for the next. */
    return mac_finish(EVP_MAC_CTX_dup((EVP_MAC_CTX *)k), parts, nparts, out);
}

void ferry__mac_key_free(ferry__mac_key_t *k)
{
    EVP_MAC_CTX_free((EVP_MAC_CTX *)k);
}

bool ferry__ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

ferry_status_t ferry__random(void *p, size_t n)
{
    uint8_t *b = p;

    while (n > 0) {
        ssize_t k = getrandom(b, n, 0);

        if (k < 0) {
            if (errno == EINTR)
                continue;
            return ferry__error(FERRY_ERR_SYSTEM, "getrandom: %s", strerror(errno));
        }
        b += k;
        n -= (size_t)k;
    }
    return FERRY_OK;
}
