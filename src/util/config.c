/*
 * Configuration table and its readers.
 */
#include "util/config.h"
#include "util/log.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

const ferry__config_entry_t ferry__config_table[] = {
    {"FERRY_LOG", "warn", "log level: error, warn, info, debug or trace"},
    {"FERRY_UCX_TLS", "",
     "UCX transports to use (UCX_TLS syntax); empty leaves the choice to UCX"},
    {"FERRY_MD_MAX", "256m",
     "largest metadata blob ferry_peer_load() accepts, in bytes (k, m, g "
     "suffixes)"},
    {"FERRY_UCX_LANES", "1",
     "UCX lanes (a worker and a thread each) that large segments are split "
     "across, 1 to 9; 1 moves every segment on the posting thread"},
    {"FERRY_UCX_STRIPE_MIN", "4m",
     "segments at least this long are split across the UCX lanes (k, m, g "
     "suffixes)"},
    {"FERRY_WAIT_SPIN_US", "1000",
     "how long ferry_xfer_wait polls, in microseconds, before it sleeps on "
     "the transports' events"},
    {NULL, NULL, NULL},
};

static const ferry__config_entry_t *ferry__config_find(const char *name)
{
    for (const ferry__config_entry_t *e = ferry__config_table; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

const char *ferry__config_get(const char *name)
{
    const ferry__config_entry_t *e = ferry__config_find(name);
    const char *v;

    assert(e != NULL);
    v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : e->default_value;
}

static int ferry__parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || s[0] == '-')
        return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

uint64_t ferry__config_get_size(const char *name)
{
    const char *v = ferry__config_get(name);
    uint64_t out = 0;

    if (ferry__parse_size(v, &out) == 0)
        return out;
    ferry__warn("%s=%s is not a size; using %s", name, v,
                ferry__config_find(name)->default_value);
    (void)ferry__parse_size(ferry__config_find(name)->default_value, &out);
    return out;
}
