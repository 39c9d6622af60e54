/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The etcd v3 client under the directory: requests are JSON POSTs to the
 * gateway that every etcd 3.4 member serves on its client port (libcurl),
 * replies are parsed with jansson. A call goes to the endpoint that
 * answered last; an endpoint that cannot be reached, does not answer in
 * time, answers with something that is not etcd's JSON, or says it is
 * unavailable (no leader, lost quorum) is skipped for the next one, and
 * the call fails only when every endpoint failed, with a text naming each
 * endpoint and what went wrong there. An error etcd itself returns (a
 * lease it does not know) is the cluster's answer and is not retried.
 */
#include "dir/etcd.h"
#include "util/log.h"
#include "util/time.h"

#include <curl/curl.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A reply larger than this is not etcd's answer to our requests: the
 * biggest, a range over the prefix, carries every published blob (each
 * at most FERRY_MD_MAX), and a bound keeps a bad server from filling the
 * memory. */
#define REPLY_MAX (1024u * 1024u * 1024u)

struct ferry__etcd_conn {
    CURL *curl;
    struct curl_slist *headers;
    char *buf;
    size_t len, cap;
    bool overflow;
};

/* ------------------------------------------------------------------------ */
/* URL                                                                      */
/* ------------------------------------------------------------------------ */

void ferry__etcd_fini(ferry__etcd_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->endpoints[i]);
    e->n = 0;
}

static ferry_status_t add_endpoint(ferry__etcd_t *e, const char *url,
                                   const char *s, size_t len)
{
    const char *colon = NULL;
    char *end, port[8];
    unsigned long p;

    /* The last ':' splits host from port, so that a bracketed IPv6 host
     * ("[::1]:2379") works too. */
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    if (len == 0)
        return ferry__error(FERRY_ERR_INVALID, "etcd: '%s': an empty endpoint", url);
    if (colon == NULL || colon == s || (size_t)(s + len - colon - 1) == 0 ||
        (size_t)(s + len - colon - 1) > 5)
        return ferry__error(FERRY_ERR_INVALID,
                            "etcd: '%s': endpoint '%.*s' is not host:port", url,
                            (int)len, s);
    memcpy(port, colon + 1, (size_t)(s + len - colon - 1));
    port[s + len - colon - 1] = '\0';
    errno = 0;
    p = strtoul(port, &end, 10);
    if (*end != '\0' || port[0] < '0' || port[0] > '9' || p == 0 || p > 65535)
        return ferry__error(FERRY_ERR_INVALID,
                            "etcd: '%s': endpoint '%.*s' has no valid port (1-65535)",
                            url, (int)len, s);
    if (e->n == FERRY__ETCD_MAX_ENDPOINTS)
        return ferry__error(FERRY_ERR_INVALID, "etcd: '%s': more than %d endpoints",
                            url, FERRY__ETCD_MAX_ENDPOINTS);
    if (asprintf(&e->endpoints[e->n], "http://%.*s", (int)len, s) < 0)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    e->n++;
    return FERRY_OK;
}

ferry_status_t ferry__etcd_parse_url(const char *url, ferry__etcd_t *e,
                                     char *prefix)
{
    static const char scheme[] = "etcd://";
    const char *hosts, *slash, *p;
    ferry_status_t st;
    size_t plen;

    if (url == NULL)
        return ferry__error(FERRY_ERR_INVALID, "etcd: NULL url");
    if (strncmp(url, scheme, sizeof(scheme) - 1) != 0)
        return ferry__error(FERRY_ERR_INVALID,
                            "etcd: '%s' is not etcd://host:port[,host:port]/prefix", url);
    hosts = url + sizeof(scheme) - 1;
    slash = strchr(hosts, '/');
    if (slash == NULL || slash[1] == '\0')
        return ferry__error(FERRY_ERR_INVALID,
                            "etcd: '%s' has no prefix (etcd://host:port/prefix)", url);
    plen = strlen(slash + 1);
    if (plen > FERRY__ETCD_PREFIX_MAX || slash[plen] == '/')
        return ferry__error(FERRY_ERR_INVALID,
                            "etcd: '%s': the prefix must be 1 to %d bytes, without a "
                            "trailing '/'", url, FERRY__ETCD_PREFIX_MAX);
    for (p = hosts; p < slash;) {
        const char *comma = memchr(p, ',', (size_t)(slash - p));
        const char *stop = comma ? comma : slash;

        st = add_endpoint(e, url, p, (size_t)(stop - p));
        if (st != FERRY_OK) {
            ferry__etcd_fini(e);
            return st;
        }
        p = comma ? comma + 1 : slash;
        if (comma && p == slash) {
            ferry__etcd_fini(e);
            return ferry__error(FERRY_ERR_INVALID, "etcd: '%s': an empty endpoint", url);
        }
    }
    if (e->n == 0)
        return ferry__error(FERRY_ERR_INVALID, "etcd: '%s' names no endpoint", url);
    memcpy(prefix, slash + 1, plen + 1);
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* base64 (RFC 4648, with padding), as protobuf's JSON mapping writes bytes */
/* ------------------------------------------------------------------------ */

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const void *data, size_t len)
{
    const unsigned char *s = data;
    char *out = malloc(4 * ((len + 2) / 3) + 1), *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < len)
            v |= s[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;

    return p ? (int)(p - b64) : -1;
}

/* Decodes s into a new buffer with a NUL after the data; NULL for input
 * that is not base64 (or no memory). */
static void *b64_decode(const char *s, size_t *len_p)
{
    size_t n = strlen(s), o = 0;
    unsigned char *out;

    if (n % 4 != 0)
        return NULL;
    out = malloc(n / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = b64_value(s[i + k]);
        bool last = i + 4 == n;
        if (v[0] < 0 || v[1] < 0 || (v[2] < 0 && !(last && s[i + 2] == '=' && s[i + 3] == '=')) ||
            (v[3] < 0 && !(last && s[i + 3] == '='))) {
            free(out);
            return NULL;
        }
        out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (v[2] >= 0)
            out[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
        if (v[3] >= 0)
            out[o++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
    }
    out[o] = '\0';
    *len_p = o;
    return out;
}

/* ------------------------------------------------------------------------ */
/* Connections and calls                                                    */
/* ------------------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

/* curl_global_init is not thread-safe in every libcurl: run it once. */
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* libcurl's progress callback: ends the request once the client's
 * deadline, which another thread may bring forward, has passed. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
    ferry__etcd_t *e = arg;
    uint64_t deadline = atomic_load(&e->deadline_ns);

    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return deadline != 0 && ferry__now_ns() >= deadline;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    ferry__etcd_conn_t *c = arg;
    size_t len = size * n;

    if (c->len + len + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        char *b;
        while (cap < c->len + len + 1)
            cap *= 2;
        if (cap > REPLY_MAX + 1 || (b = realloc(c->buf, cap)) == NULL) {
            c->overflow = true;
            return 0; /* libcurl ends the transfer with a write error */
        }
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    c->buf[c->len] = '\0';
    return len;
}

ferry_status_t ferry__etcd_conn_open(ferry__etcd_conn_t **conn_p)
{
    ferry__etcd_conn_t *c;

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return ferry__error(FERRY_ERR_SYSTEM, "etcd: curl_global_init: %s",
                            curl_easy_strerror(curl_init_rc));
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    c->curl = curl_easy_init();
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (c->curl == NULL || c->headers == NULL) {
        ferry__etcd_conn_close(c);
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: curl_easy_init failed");
    }
    *conn_p = c;
    return FERRY_OK;
}

void ferry__etcd_conn_close(ferry__etcd_conn_t *c)
{
    if (c == NULL)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    free(c->buf);
    free(c);
}

/* gRPC status codes etcd puts in "code" that mean "ask another member":
 * DEADLINE_EXCEEDED (4), UNAVAILABLE (14). */
static bool code_retryable(json_int_t code)
{
    return code == 4 || code == 14;
}

/* Worse failures win the final status: an endpoint that answered garbage
 * says more than one that timed out, which says more than one refused. */
static int rank_of(ferry_status_t st)
{
    return st == FERRY_ERR_PROTOCOL ? 3 : st == FERRY_ERR_BACKEND ? 2
         : st == FERRY_ERR_TIMEOUT ? 1 : 0;
}

static void trail_add(char *trail, size_t cap, const char *fmt, ...)
    FERRY__PRINTF(3, 4);

static void trail_add(char *trail, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(trail);
    va_list ap;

    if (n + 3 >= cap)
        return;
    if (n) {
        memcpy(trail + n, "; ", 3);
        n += 2;
    }
    va_start(ap, fmt);
    vsnprintf(trail + n, cap - n, fmt, ap);
    va_end(ap);
}

/*
 * POSTs req (taken: freed here) to path on the endpoints in turn and
 * returns the first proper reply in *resp_p. what names the operation for
 * the texts.
 */
static ferry_status_t call(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                           const char *what, const char *path, json_t *req,
                           json_t **resp_p)
{
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    ferry_status_t worst = FERRY_ERR_PEER_LOST;
    size_t start = atomic_load(&e->cur);
    char trail[400] = "";

    json_decref(req);
    if (body == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: %s: out of memory", what);
    atomic_store(&e->unanswered, false);
    for (size_t i = 0; i < e->n; i++) {
        size_t idx = (start + i) % e->n;
        const char *ep = e->endpoints[idx] + 7; /* without "http://" */
        uint64_t now = ferry__now_ns(), limit = e->timeout_ns;
        long ms;
        char url[300];
        ferry_status_t st;
        CURLcode rc;
        long http = 0;
        json_error_t jerr;
        json_t *resp, *err;

        uint64_t deadline = atomic_load(&e->deadline_ns);

        if (deadline != 0) {
            /* The caller's deadline holds the whole call, fail-over
             * included. */
            if (now >= deadline) {
                trail_add(trail, sizeof(trail), "%s: not tried, no time left", ep);
                worst = FERRY_ERR_TIMEOUT;
                break;
            }
            if (deadline - now < limit)
                limit = deadline - now;
        }
        ms = (long)((limit + 999999u) / 1000000u);
        if (ms < 1)
            ms = 1;
        snprintf(url, sizeof(url), "%s%s", e->endpoints[idx], path);
        c->len = 0;
        c->overflow = false;
        curl_easy_reset(c->curl);
        curl_easy_setopt(c->curl, CURLOPT_URL, url);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->headers);
        curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, ms);
        curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, ms);
        /* A deadline that another thread brings forward ends the request
         * too (libcurl asks at least once a second). */
        curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, e);
        curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
        /* Signals for timeouts are process-wide and unsafe with threads. */
        curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
        /* etcd is reached directly: an http_proxy set for the web must not
         * capture cluster traffic (nor loopback). */
        curl_easy_setopt(c->curl, CURLOPT_NOPROXY, "*");
        /* Only plain HTTP, also after a redirect (libcurl 7.85 renamed the
         * option; older ones, as in Ubuntu 22.04, have only the mask). */
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http");
#else
        curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
        rc = curl_easy_perform(c->curl);
        if (rc != CURLE_OK) {
            st = rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_ABORTED_BY_CALLBACK
                     ? FERRY_ERR_TIMEOUT
               : c->overflow ? FERRY_ERR_PROTOCOL : FERRY_ERR_PEER_LOST;
            trail_add(trail, sizeof(trail), "%s: %s", ep,
                      c->overflow ? "reply over 1 GiB" : curl_easy_strerror(rc));
            if (rank_of(st) > rank_of(worst))
                worst = st;
            continue;
        }
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &http);
        resp = json_loadb(c->buf ? c->buf : "", c->len, 0, &jerr);
        if (resp == NULL || !json_is_object(resp)) {
            trail_add(trail, sizeof(trail), "%s: HTTP %ld, not etcd's JSON (%s)",
                      ep, http, resp ? "not an object" : jerr.text);
            json_decref(resp);
            worst = FERRY_ERR_PROTOCOL;
            continue;
        }
        err = json_object_get(resp, "error");
        if (err != NULL || http != 200) {
            json_int_t code = json_integer_value(json_object_get(resp, "code"));
            const char *msg = json_string_value(err);

            if (msg == NULL)
                msg = json_string_value(json_object_get(resp, "message"));
            if (msg == NULL)
                msg = "no message";
            if (code_retryable(code) || (http >= 500 && code == 0)) {
                trail_add(trail, sizeof(trail), "%s: %s (HTTP %ld, code %d)", ep,
                          msg, http, (int)code);
                if (rank_of(FERRY_ERR_BACKEND) > rank_of(worst))
                    worst = FERRY_ERR_BACKEND;
                json_decref(resp);
                continue;
            }
            st = code == 5 ? FERRY_ERR_NOT_FOUND : FERRY_ERR_BACKEND;
            ferry__error(st, "etcd: %s: %s (%s, code %d)", what, msg, ep, (int)code);
            json_decref(resp);
            free(body);
            return st;
        }
        atomic_store(&e->cur, idx);
        free(body);
        *resp_p = resp;
        return FERRY_OK;
    }
    free(body);
    atomic_store(&e->unanswered, true);
    return ferry__error(worst, "etcd: %s: no endpoint answered: %s", what, trail);
}

/* An int64 field: the gateway writes them as decimal strings; absent
 * fields (zero values are left out) read as 0. */
static int64_t get_i64(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);

    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    return 0;
}

static json_t *i64_json(int64_t v)
{
    char s[24];

    snprintf(s, sizeof(s), "%lld", (long long)v);
    return json_string(s);
}

static json_t *bytes_json(const void *p, size_t len)
{
    char *s = b64_encode(p, len);
    json_t *j = s ? json_string(s) : NULL;

    free(s);
    return j;
}

/* A request object {"key": base64(key), ...}; NULL when out of memory. */
static json_t *key_req(const char *key)
{
    json_t *req = json_object(), *k = bytes_json(key, strlen(key));

    if (req == NULL || k == NULL || json_object_set_new(req, "key", k) != 0) {
        json_decref(req);
        return NULL;
    }
    return req;
}

static int64_t header_rev(json_t *resp)
{
    return get_i64(json_object_get(resp, "header"), "revision");
}

/* ------------------------------------------------------------------------ */
/* KV                                                                       */
/* ------------------------------------------------------------------------ */

void ferry__etcd_kvs_free(ferry__etcd_kv_t *kvs, size_t n)
{
    if (kvs == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(kvs[i].key);
        free(kvs[i].value);
    }
    free(kvs);
}

/* Parses one KeyValue (entry i of a reply) into out, which the caller
 * frees, also on failure; what names the call for the texts. */
static ferry_status_t kv_parse(json_t *kv, const char *what, size_t i,
                               bool keys_only, ferry__etcd_kv_t *out)
{
    const char *k = json_string_value(json_object_get(kv, "key"));
    const char *v = json_string_value(json_object_get(kv, "value"));
    size_t klen;

    if (k == NULL || (out->key = b64_decode(k, &klen)) == NULL ||
        strlen(out->key) != klen)
        return ferry__error(FERRY_ERR_PROTOCOL, "etcd: %s: entry %zu has no valid "
                            "key", what, i);
    if (!keys_only) {
        out->value = b64_decode(v ? v : "", &out->len);
        if (out->value == NULL)
            return ferry__error(FERRY_ERR_PROTOCOL, "etcd: %s: key '%s' has no "
                                "valid value", what, out->key);
    }
    out->create_rev = get_i64(kv, "create_revision");
    out->mod_rev = get_i64(kv, "mod_revision");
    out->lease = get_i64(kv, "lease");
    return FERRY_OK;
}

/* Parses the "kvs" of a range reply (resp: its object) into *kvs_p and
 * *n_p; what names the call for the texts. */
static ferry_status_t kvs_parse(json_t *resp, const char *what, bool keys_only,
                                ferry__etcd_kv_t **kvs_p, size_t *n_p)
{
    json_t *arr = json_object_get(resp, "kvs");
    ferry__etcd_kv_t *kvs = NULL;
    ferry_status_t st;
    size_t n = 0;

    if (arr != NULL && !json_is_array(arr))
        return ferry__error(FERRY_ERR_PROTOCOL, "etcd: %s: 'kvs' is not an array",
                            what);
    if (json_array_size(arr) > 0) {
        kvs = calloc(json_array_size(arr), sizeof(*kvs));
        if (kvs == NULL)
            return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    }
    for (n = 0; n < json_array_size(arr); n++) {
        st = kv_parse(json_array_get(arr, n), what, n, keys_only, &kvs[n]);
        if (st != FERRY_OK) {
            ferry__etcd_kvs_free(kvs, n + 1); /* entry n may hold a key */
            return st;
        }
    }
    *kvs_p = kvs;
    *n_p = n;
    return FERRY_OK;
}

/* A RangeRequest for key (with range_end for a prefix); NULL when out of
 * memory. */
static json_t *range_req(const char *key, bool prefix, bool keys_only)
{
    json_t *req = key_req(key);

    if (req == NULL)
        return NULL;
    if (prefix) {
        /* Every key starting with key: [key, key with its last byte + 1). */
        size_t len = strlen(key);
        char *end = strdup(key);
        json_t *j;

        if (end == NULL) {
            json_decref(req);
            return NULL;
        }
        end[len - 1]++;
        j = bytes_json(end, len);
        free(end);
        if (j == NULL || json_object_set_new(req, "range_end", j) != 0) {
            json_decref(req);
            return NULL;
        }
    }
    if (keys_only && json_object_set_new(req, "keys_only", json_true()) != 0) {
        json_decref(req);
        return NULL;
    }
    return req;
}

ferry_status_t ferry__etcd_range(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                 const char *key, bool prefix, bool keys_only,
                                 ferry__etcd_kv_t **kvs_p, size_t *n_p,
                                 int64_t *rev_p)
{
    json_t *req, *resp;
    ferry_status_t st;

    if (prefix && key[0] == '\0')
        return ferry__error(FERRY_ERR_INVALID, "etcd: empty range prefix");
    req = range_req(key, prefix, keys_only);
    if (req == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    FERRY_CHECK(call(e, c, "range", "/v3/kv/range", req, &resp));
    st = kvs_parse(resp, "range", keys_only, kvs_p, n_p);
    if (st == FERRY_OK && rev_p)
        *rev_p = header_rev(resp);
    json_decref(resp);
    return st;
}

/* {name: obj}, taking obj; NULL when out of memory. */
static json_t *wrap(const char *name, json_t *obj)
{
    json_t *w = obj ? json_object() : NULL;

    if (w == NULL || json_object_set_new(w, name, obj) != 0) {
        json_decref(w);
        json_decref(obj);
        return NULL;
    }
    return w;
}

/* A PutRequest; NULL when out of memory. */
static json_t *put_req(const char *key, const void *value, size_t len,
                       int64_t lease)
{
    json_t *req = key_req(key), *v = bytes_json(value, len);

    if (req == NULL || v == NULL) {
        json_decref(req);
        json_decref(v);
        return NULL;
    }
    /* json_object_set_new takes the value, also when it fails. */
    if (json_object_set_new(req, "value", v) != 0 ||
        (lease != 0 && json_object_set_new(req, "lease", i64_json(lease)) != 0)) {
        json_decref(req);
        return NULL;
    }
    return req;
}

/* A Compare for cond on key; NULL when out of memory. */
static json_t *compare_json(const char *key, const ferry__etcd_cond_t *cond)
{
    json_t *cmp = key_req(key);
    int bad = cmp == NULL;

    if (bad)
        return NULL;
    bad |= json_object_set_new(cmp, "result", json_string("EQUAL"));
    switch (cond->kind) {
    case FERRY__ETCD_IF_ABSENT:
        /* A missing key has create revision 0. */
        bad |= json_object_set_new(cmp, "target", json_string("CREATE"));
        bad |= json_object_set_new(cmp, "create_revision", i64_json(0));
        break;
    case FERRY__ETCD_IF_MOD_REV:
        bad |= json_object_set_new(cmp, "target", json_string("MOD"));
        bad |= json_object_set_new(cmp, "mod_revision", i64_json(cond->mod_rev));
        break;
    case FERRY__ETCD_IF_VALUE:
        bad |= json_object_set_new(cmp, "target", json_string("VALUE"));
        bad |= json_object_set_new(cmp, "value", bytes_json(cond->value, cond->len));
        break;
    }
    if (bad) {
        json_decref(cmp);
        return NULL;
    }
    return cmp;
}

ferry_status_t ferry__etcd_put_if(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                  const char *key,
                                  const ferry__etcd_cond_t *cond,
                                  const void *value, size_t len, int64_t lease,
                                  bool *done_p, ferry__etcd_kv_t **cur_p,
                                  size_t *ncur_p)
{
    json_t *req = json_object(), *cmp = json_array(), *ok = json_array();
    json_t *fail = json_array(), *resp, *r0;
    ferry__etcd_kv_t *kvs = NULL;
    size_t n = 0;
    bool done;
    ferry_status_t st = FERRY_OK;

    if (req == NULL || cmp == NULL || ok == NULL || fail == NULL ||
        json_array_append_new(cmp, compare_json(key, cond)) != 0 ||
        json_array_append_new(ok, wrap("request_put",
                                       put_req(key, value, len, lease))) != 0 ||
        json_array_append_new(fail, wrap("request_range",
                                         range_req(key, false, false))) != 0 ||
        json_object_set_new(req, "compare", cmp) != 0 ||
        json_object_set_new(req, "success", ok) != 0 ||
        json_object_set_new(req, "failure", fail) != 0) {
        json_decref(req);
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    }
    FERRY_CHECK(call(e, c, "txn", "/v3/kv/txn", req, &resp));
    /* "succeeded" is left out when false, as every zero value is. */
    done = json_is_true(json_object_get(resp, "succeeded"));
    if (!done) {
        r0 = json_object_get(json_array_get(json_object_get(resp, "responses"), 0),
                             "response_range");
        st = r0 ? kvs_parse(r0, "txn", false, &kvs, &n)
                : ferry__error(FERRY_ERR_PROTOCOL, "etcd: txn: a failed "
                               "comparison without the range asked for");
    }
    json_decref(resp);
    if (st != FERRY_OK)
        return st;
    *done_p = done;
    *cur_p = kvs;
    *ncur_p = n;
    return FERRY_OK;
}

/* etcd's default limit on the operations of one transaction
 * (--max-txn-ops). */
#define TXN_OPS_MAX 128

ferry_status_t ferry__etcd_get_many(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                    const char *const *keys, size_t n,
                                    bool keys_only, ferry__etcd_kv_t **kvs_p)
{
    ferry__etcd_kv_t *all = calloc(n ? n : 1, sizeof(*all));
    ferry_status_t st = FERRY_OK;

    if (all == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    for (size_t base = 0; base < n && st == FERRY_OK; base += TXN_OPS_MAX) {
        size_t m = n - base < TXN_OPS_MAX ? n - base : TXN_OPS_MAX;
        json_t *req = json_object(), *ops = json_array(), *resp, *rs;

        if (req == NULL || ops == NULL || json_object_set(req, "success", ops) != 0)
            st = ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
        for (size_t i = 0; i < m && st == FERRY_OK; i++)
            if (json_array_append_new(ops, wrap("request_range",
                                                range_req(keys[base + i], false,
                                                          keys_only))) != 0)
                st = ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
        json_decref(ops);
        if (st != FERRY_OK) {
            json_decref(req);
            break;
        }
        /* No comparison: the success branch runs, as one read of one
         * revision. */
        st = call(e, c, "txn", "/v3/kv/txn", req, &resp);
        if (st != FERRY_OK)
            break;
        rs = json_object_get(resp, "responses");
        if (json_array_size(rs) != m)
            st = ferry__error(FERRY_ERR_PROTOCOL, "etcd: txn: %zu replies to %zu "
                              "reads", json_array_size(rs), m);
        for (size_t i = 0; i < m && st == FERRY_OK; i++) {
            json_t *r = json_object_get(json_array_get(rs, i), "response_range");
            ferry__etcd_kv_t *kvs = NULL;
            size_t got = 0;

            st = r ? kvs_parse(r, "txn", keys_only, &kvs, &got)
                   : ferry__error(FERRY_ERR_PROTOCOL, "etcd: txn: reply %zu is "
                                  "not a range", i);
            if (st == FERRY_OK && got > 0 && strcmp(kvs[0].key, keys[base + i]) == 0) {
                all[base + i] = kvs[0];
                kvs[0].key = NULL;
                kvs[0].value = NULL;
            } else if (st == FERRY_OK && got > 0) {
                st = ferry__error(FERRY_ERR_PROTOCOL, "etcd: txn: asked for '%s', "
                                  "got '%s'", keys[base + i], kvs[0].key);
            }
            ferry__etcd_kvs_free(kvs, got);
        }
        json_decref(resp);
    }
    if (st != FERRY_OK) {
        ferry__etcd_kvs_free(all, n);
        return st;
    }
    *kvs_p = all;
    return FERRY_OK;
}

ferry_status_t ferry__etcd_put(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                               const char *key, const void *value, size_t len,
                               int64_t lease, int64_t *rev_p)
{
    json_t *req = put_req(key, value, len, lease), *resp;

    if (req == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    FERRY_CHECK(call(e, c, "put", "/v3/kv/put", req, &resp));
    if (rev_p)
        *rev_p = header_rev(resp);
    json_decref(resp);
    return FERRY_OK;
}

ferry_status_t ferry__etcd_delete(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                  const char *key, int64_t *deleted_p)
{
    json_t *req = key_req(key), *resp;

    if (req == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    FERRY_CHECK(call(e, c, "deleterange", "/v3/kv/deleterange", req, &resp));
    if (deleted_p)
        *deleted_p = get_i64(resp, "deleted");
    json_decref(resp);
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* Leases                                                                   */
/* ------------------------------------------------------------------------ */

/* Calls a lease endpoint with the request {field: "num"}. */
static ferry_status_t lease_call(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                 const char *what, const char *path,
                                 const char *field, int64_t num, json_t **resp_p)
{
    json_t *req = json_object(), *v = i64_json(num);

    if (req == NULL || v == NULL || json_object_set_new(req, field, v) != 0) {
        json_decref(req);
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    }
    return call(e, c, what, path, req, resp_p);
}

ferry_status_t ferry__etcd_lease_grant(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                       int64_t ttl_s, int64_t *id_p)
{
    json_t *resp;
    int64_t id;

    FERRY_CHECK(lease_call(e, c, "lease grant", "/v3/lease/grant", "TTL", ttl_s, &resp));
    id = get_i64(resp, "ID");
    json_decref(resp);
    if (id == 0)
        return ferry__error(FERRY_ERR_PROTOCOL, "etcd: lease grant: no lease ID in the reply");
    *id_p = id;
    return FERRY_OK;
}

ferry_status_t ferry__etcd_lease_keepalive(ferry__etcd_t *e,
                                           ferry__etcd_conn_t *c, int64_t id,
                                           int64_t *ttl_p)
{
    json_t *resp, *result;
    int64_t ttl;

    /* The gateway streams keepalive replies: one {"result": ...} object per
     * request, here exactly one. A lease etcd no longer knows comes back
     * with no TTL (0). */
    FERRY_CHECK(lease_call(e, c, "lease keepalive", "/v3/lease/keepalive", "ID", id, &resp));
    result = json_object_get(resp, "result");
    if (!json_is_object(result)) {
        json_decref(resp);
        return ferry__error(FERRY_ERR_PROTOCOL, "etcd: lease keepalive: no result");
    }
    ttl = get_i64(result, "TTL");
    json_decref(resp);
    *ttl_p = ttl;
    return FERRY_OK;
}

ferry_status_t ferry__etcd_lease_revoke(ferry__etcd_t *e, ferry__etcd_conn_t *c,
                                        int64_t id)
{
    json_t *resp;

    FERRY_CHECK(lease_call(e, c, "lease revoke", "/v3/lease/revoke", "ID", id, &resp));
    json_decref(resp);
    return FERRY_OK;
}

/* ------------------------------------------------------------------------ */
/* Watch: a stream of events                                                */
/* ------------------------------------------------------------------------ */

/* One watch stream's state, for its write callback. */
typedef struct watch {
    char *buf;
    size_t len, cap;
    ferry__etcd_watch_cb cb;
    void *arg;
    bool created, stopped;
    ferry_status_t st; /* a malformed message, a cancelled watch */
} watch_t;

/* One message of the stream: {"result": {"header", "created", "canceled",
 * "compact_revision", "events": [{"type", "kv"}]}}. Returns false to end
 * the stream. */
static bool watch_message(watch_t *w, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(line, len, 0, &jerr), *res, *arr;
    ferry__etcd_wevent_t *evs = NULL;
    size_t n = 0;
    bool go_on = true;

    res = json_object_get(msg, "result");
    if (!json_is_object(res)) {
        const char *e = json_string_value(json_object_get(
            json_object_get(msg, "error"), "message"));

        w->st = ferry__error(msg && e ? FERRY_ERR_BACKEND : FERRY_ERR_PROTOCOL,
                             "etcd: watch: %s", msg && e ? e : "a message that "
                             "is not etcd's");
        json_decref(msg);
        return false;
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        int64_t compact = get_i64(res, "compact_revision");
        const char *why = json_string_value(json_object_get(res, "cancel_reason"));

        if (compact != 0)
            w->st = ferry__error(FERRY_ERR_BACKEND, "etcd: watch: the revisions "
                                 "before %lld were compacted", (long long)compact);
        else
            w->st = ferry__error(FERRY_ERR_BACKEND, "etcd: watch cancelled: %s",
                                 why ? why : "no reason");
        json_decref(msg);
        return false;
    }
    if (json_is_true(json_object_get(res, "created")))
        w->created = true;
    arr = json_object_get(res, "events");
    if (json_array_size(arr) > 0 &&
        (evs = calloc(json_array_size(arr), sizeof(*evs))) == NULL) {
        w->st = ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
        go_on = false;
    }
    for (; go_on && n < json_array_size(arr); n++) {
        json_t *ev = json_array_get(arr, n);
        const char *type = json_string_value(json_object_get(ev, "type"));

        /* PUT, the zero value, is left out. */
        evs[n].deleted = type != NULL && strcmp(type, "DELETE") == 0;
        w->st = kv_parse(json_object_get(ev, "kv"), "watch", n, true, &evs[n].kv);
        go_on = w->st == FERRY_OK;
        if (!go_on)
            n++; /* its key may be there */
    }
    if (go_on)
        go_on = w->cb(w->arg, evs, n, header_rev(res));
    for (size_t i = 0; i < n; i++) {
        free(evs[i].kv.key);
        free(evs[i].kv.value);
    }
    free(evs);
    json_decref(msg);
    return go_on;
}

/* Splits what arrives into lines, one message each. */
static size_t on_watch_data(char *data, size_t size, size_t nmemb, void *arg)
{
    watch_t *w = arg;
    size_t len = size * nmemb, start = 0;

    if (w->len + len + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        char *b;

        while (cap < w->len + len + 1)
            cap *= 2;
        if (cap > REPLY_MAX + 1 || (b = realloc(w->buf, cap)) == NULL) {
            w->st = ferry__error(FERRY_ERR_PROTOCOL, "etcd: watch: a message "
                                 "over 1 GiB");
            return 0;
        }
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, data, len);
    w->len += len;
    for (size_t i = 0; i < w->len; i++) {
        if (w->buf[i] != '\n')
            continue;
        if (i > start && !watch_message(w, w->buf + start, i - start)) {
            w->stopped = true;
            return 0; /* libcurl ends the transfer */
        }
        start = i + 1;
    }
    memmove(w->buf, w->buf + start, w->len - start);
    w->len -= start;
    return len;
}

ferry_status_t ferry__etcd_watch(ferry__etcd_t *e, const char *prefix,
                                 int64_t start_rev, int stop_fd,
                                 ferry__etcd_watch_cb cb, void *arg)
{
    size_t start = atomic_load(&e->cur), len = strlen(prefix);
    long ms = (long)((e->timeout_ns + 999999u) / 1000000u);
    json_t *req = json_object(), *cr = range_req(prefix, true, false);
    char *body = NULL, trail[400] = "";
    ferry_status_t st = FERRY_ERR_PEER_LOST;

    if (len == 0)
        return ferry__error(FERRY_ERR_INVALID, "etcd: watch: empty prefix");
    if (req != NULL && cr != NULL &&
        json_object_set_new(cr, "start_revision", i64_json(start_rev)) == 0 &&
        json_object_set(req, "create_request", cr) == 0)
        body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    json_decref(cr);
    if (body == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: out of memory");
    pthread_once(&curl_once, curl_init);
    for (size_t i = 0; i < e->n; i++) {
        size_t idx = (start + i) % e->n;
        const char *ep = e->endpoints[idx] + 7;
        watch_t w = {.cb = cb, .arg = arg, .st = FERRY_OK};
        struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
        CURL *c = curl_easy_init();
        CURLM *m = curl_multi_init();
        CURLcode rc = CURLE_OK;
        bool cancelled = false;
        char url[300];
        int running = 1;

        if (c == NULL || m == NULL || hdr == NULL) {
            curl_slist_free_all(hdr);
            curl_easy_cleanup(c);
            curl_multi_cleanup(m);
            free(body);
            return ferry__error(FERRY_ERR_NO_MEMORY, "etcd: watch: curl init failed");
        }
        snprintf(url, sizeof(url), "%s/v3/watch", e->endpoints[idx]);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_watch_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &w);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, ms < 1 ? 1L : ms);
        /* A member that vanishes without closing the connection (a host
         * gone) is found out by TCP keepalives. */
        curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 5L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 2L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
#else
        curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
        curl_multi_add_handle(m, c);
        while (running) {
            struct curl_waitfd wfd = {.fd = stop_fd, .events = CURL_WAIT_POLLIN};
            CURLMcode mc = curl_multi_perform(m, &running);

            if (mc != CURLM_OK || !running)
                break;
            mc = curl_multi_poll(m, &wfd, 1, 1000, NULL);
            if (mc != CURLM_OK)
                break;
            if (wfd.revents) {
                cancelled = true;
                break;
            }
        }
        for (CURLMsg *msg; (msg = curl_multi_info_read(m, &running)) != NULL;)
            if (msg->msg == CURLMSG_DONE)
                rc = msg->data.result;
        curl_multi_remove_handle(m, c);
        curl_easy_cleanup(c);
        curl_multi_cleanup(m);
        curl_slist_free_all(hdr);
        free(w.buf);
        if (cancelled) {
            free(body);
            return ferry__error(FERRY_ERR_CANCELED, "etcd: watch: stopped");
        }
        if (w.stopped || w.created) {
            /* It ran: the callback or etcd ended it, or the connection
             * broke after the watch was set up. */
            free(body);
            if (w.st != FERRY_OK)
                return w.st;
            if (w.stopped)
                return FERRY_OK;
            atomic_store(&e->cur, (idx + 1) % e->n);
            return ferry__error(FERRY_ERR_PEER_LOST, "etcd: watch on %s ended: %s",
                                ep, rc == CURLE_OK ? "the member closed it"
                                                   : curl_easy_strerror(rc));
        }
        trail_add(trail, sizeof(trail), "%s: %s", ep,
                  w.st != FERRY_OK ? ferry_last_error()
                  : rc != CURLE_OK ? curl_easy_strerror(rc)
                                   : "closed before the watch was set up");
        if (w.st != FERRY_OK)
            st = w.st;
    }
    free(body);
    return ferry__error(st, "etcd: watch: no endpoint answered: %s", trail);
}
