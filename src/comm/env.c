/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator's parameters: rank, size and store from the caller's
 * params or, for any not given, from the environment a launcher leaves
 * (ferry-run, torchrun, Open MPI, Slurm: the first whose variables are set
 * wins), and the timeouts and key prefix from the configuration table.
 * Everything is checked here, before anything connects, so that a missing
 * or malformed setting is one clear error naming the variable. It is a
 * function of its own, ferry__comm_resolve(), so that tests can exercise
 * it without a store.
 */
#include "comm/comm.h"
#include "store/store.h"
#include "util/config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RANKS 1000000

/* The launchers whose variables give rank and size, first match wins. */
static const struct {
    const char *launcher, *rank, *size;
} env_sources[] = {
    {"FERRY", "FERRY_RANK", "FERRY_WORLD_SIZE"},
    {"torchrun", "RANK", "WORLD_SIZE"},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS"},
};

static const char *env(const char *name)
{
    const char *v = getenv(name);

    return (v != NULL && v[0] != '\0') ? v : NULL;
}

/* A decimal integer in [lo, hi], digits only. */
static ferry_status_t parse_num(const char *name, const char *v,
                                unsigned long long lo, unsigned long long hi,
                                unsigned long long *out)
{
    char *end;
    unsigned long long n;

    errno = 0;
    n = strtoull(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || n < lo ||
        n > hi)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: %s='%s' is not a number from %llu to %llu",
                            name, v, lo, hi);
    *out = n;
    return FERRY_OK;
}

static ferry_status_t resolve_ranks(const ferry_comm_params_t *p,
                                    ferry__comm_cfg_t *cfg)
{
    bool have_rank = p && (p->field_mask & FERRY_COMM_PARAM_RANK);
    bool have_size = p && (p->field_mask & FERRY_COMM_PARAM_SIZE);
    unsigned long long v;

    cfg->source = "parameters";
    if (have_rank)
        cfg->rank = p->rank;
    if (have_size)
        cfg->size = p->size;
    for (size_t i = 0; i < sizeof(env_sources) / sizeof(env_sources[0]) &&
                       !(have_rank && have_size); i++) {
        const char *r = env(env_sources[i].rank), *s = env(env_sources[i].size);

        if (r == NULL && s == NULL)
            continue;
        if (r == NULL || s == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s is set but %s is not (%s launcher "
                                "variables come in pairs)",
                                r ? env_sources[i].rank : env_sources[i].size,
                                r ? env_sources[i].size : env_sources[i].rank,
                                env_sources[i].launcher);
        if (!have_size) {
            FERRY_CHECK(parse_num(env_sources[i].size, s, 1, MAX_RANKS, &v));
            cfg->size = (int)v;
        }
        if (!have_rank) {
            FERRY_CHECK(parse_num(env_sources[i].rank, r, 0, MAX_RANKS - 1, &v));
            cfg->rank = (int)v;
            if (cfg->rank >= cfg->size)
                return ferry__error(FERRY_ERR_INVALID,
                                    "comm: %s=%s is not below the world size "
                                    "%d", env_sources[i].rank, r, cfg->size);
        }
        cfg->source = env_sources[i].launcher;
        have_rank = have_size = true;
    }
    if (!have_rank || !have_size)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: no rank and world size: set FERRY_RANK and "
                            "FERRY_WORLD_SIZE, or start the job with ferry-run, "
                            "torchrun, mpirun or srun");
    if (cfg->size < 1 || cfg->size > MAX_RANKS || cfg->rank < 0 ||
        cfg->rank >= cfg->size)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: rank %d and size %d: need 0 <= rank < size "
                            "<= %d", cfg->rank, cfg->size, MAX_RANKS);
    return FERRY_OK;
}

static ferry_status_t resolve_url(const ferry_comm_params_t *p,
                                  ferry__comm_cfg_t *cfg)
{
    const char *url = NULL, *what = "store_url";
    unsigned long long port;
    int n;

    if (p && (p->field_mask & FERRY_COMM_PARAM_STORE_URL)) {
        url = p->store_url;
    } else if ((url = env("FERRY_STORE")) != NULL) {
        what = "FERRY_STORE";
    } else {
        const char *addr = env("MASTER_ADDR"), *ps = env("MASTER_PORT");

        if (addr == NULL && ps == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: no store: set FERRY_STORE=tcp://host:port "
                                "or MASTER_ADDR and MASTER_PORT");
        if (addr == NULL || ps == NULL)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s is set but %s is not",
                                addr ? "MASTER_ADDR" : "MASTER_PORT",
                                addr ? "MASTER_PORT" : "MASTER_ADDR");
        FERRY_CHECK(parse_num("MASTER_PORT", ps, 1, 65535, &port));
        n = snprintf(cfg->url, sizeof(cfg->url),
                     strchr(addr, ':') ? "tcp://[%s]:%llu" : "tcp://%s:%llu",
                     addr, port);
        if (n < 0 || (size_t)n >= sizeof(cfg->url))
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: MASTER_ADDR is too long");
        return FERRY_OK;
    }
    if (url != NULL && ferry__kv_is_etcd(url)) {
        ferry_status_t st;

        if (strlen(url) >= sizeof(cfg->url))
            return ferry__error(FERRY_ERR_INVALID, "comm: %s: the URL is over %d "
                                "bytes", what, FERRY__COMM_URL_MAX - 1);
        st = ferry__kv_etcd_check_url(url);
        if (st != FERRY_OK) {
            ferry__error_prefix("comm: %s='%s'", what, url);
            return st;
        }
    } else {
        char uhost[FERRY__COMM_URL_MAX], uport[8];

        if (url == NULL || strlen(url) >= sizeof(cfg->url) ||
            ferry__store_parse_url(url, uhost, sizeof(uhost), uport, sizeof(uport)) < 0)
            return ferry__error(FERRY_ERR_INVALID,
                                "comm: %s='%s' is not tcp://host:port (port 1 to "
                                "65535) nor etcd://host:port[,host:port]/prefix",
                                what, url ? url : "(null)");
    }
    strcpy(cfg->url, url);
    return FERRY_OK;
}

/* A duration in ms from the configuration table, strictly parsed. */
static ferry_status_t resolve_ms(const char *name, uint64_t *ns)
{
    unsigned long long v;

    FERRY_CHECK(parse_num(name, ferry__config_get(name), 1, 1000000000ull, &v));
    *ns = v * 1000000ull;
    return FERRY_OK;
}

ferry_status_t ferry__comm_resolve(const ferry_comm_params_t *p,
                                   ferry__comm_cfg_t *cfg)
{
    const char *prefix;

    memset(cfg, 0, sizeof(*cfg));
    FERRY_CHECK(resolve_ranks(p, cfg));
    FERRY_CHECK(resolve_url(p, cfg));
    if (p && (p->field_mask & FERRY_COMM_PARAM_TIMEOUT))
        cfg->timeout_ns = p->timeout_ns;
    else
        FERRY_CHECK(resolve_ms("FERRY_COMM_TIMEOUT_MS", &cfg->timeout_ns));
    if (p && (p->field_mask & FERRY_COMM_PARAM_LIVENESS))
        cfg->liveness_ns = p->liveness_ns;
    else
        FERRY_CHECK(resolve_ms("FERRY_COMM_LIVENESS_MS", &cfg->liveness_ns));
    if (cfg->liveness_ns < 10000000ull)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: a liveness time under 10 ms would declare "
                            "live ranks dead");
    prefix = (p && (p->field_mask & FERRY_COMM_PARAM_PREFIX))
                 ? p->prefix
                 : ferry__config_get("FERRY_COMM_PREFIX");
    if (prefix == NULL || strlen(prefix) > FERRY__COMM_PREFIX_MAX)
        return ferry__error(FERRY_ERR_INVALID,
                            "comm: the key prefix must be a string of at most "
                            "%d bytes", FERRY__COMM_PREFIX_MAX);
    strcpy(cfg->prefix, prefix);
    return FERRY_OK;
}
