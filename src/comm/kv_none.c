/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The communicator's etcd store in a build without libcurl or jansson
 * (CMakeLists.txt compiles this file instead of kv_etcd.c, as it compiles
 * src/dir/none.c instead of the directory): an etcd:// URL is
 * FERRY_ERR_UNSUPPORTED, saying what is missing.
 */
#include "comm/kv.h"
#include "util/status.h"

static ferry_status_t missing(void)
{
    return ferry__error(FERRY_ERR_UNSUPPORTED,
                        "comm: this libferry was built without etcd support "
                        "(it needs libcurl and jansson: apt-get install "
                        "libcurl4-openssl-dev libjansson-dev, then rebuild)");
}

ferry_status_t ferry__kv_etcd_check_url(const char *url)
{
    (void)url;
    return missing();
}

ferry_status_t ferry__kv_etcd_open(const char *url, const char *lease_key,
                                   uint64_t ttl_ns, uint64_t connect_ns,
                                   uint64_t retry_ns, ferry__kv_t **kv_p)
{
    (void)url, (void)lease_key, (void)ttl_ns, (void)connect_ns, (void)retry_ns;
    (void)kv_p;
    return missing();
}
