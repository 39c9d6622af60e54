/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The directory in a build without libcurl or jansson (CMakeLists.txt
 * compiles this file instead of dir.c and etcd.c): every call says what is
 * missing, so that a program linked against any build of libferry runs and
 * reports FERRY_ERR_UNSUPPORTED instead of failing to link.
 */
#include "util/status.h"

static ferry_status_t missing(void)
{
    return ferry__error(FERRY_ERR_UNSUPPORTED,
                        "dir: this libferry was built without the etcd directory "
                        "(it needs libcurl and jansson: apt-get install "
                        "libcurl4-openssl-dev libjansson-dev, then rebuild)");
}

ferry_status_t ferry_dir_create(const char *url, const ferry_dir_params_t *params,
                                ferry_dir_t **dir_p)
{
    (void)url, (void)params, (void)dir_p;
    return missing();
}

void ferry_dir_destroy(ferry_dir_t *dir)
{
    (void)dir;
}

ferry_status_t ferry_dir_publish(ferry_dir_t *dir, ferry_agent_t *agent)
{
    (void)dir, (void)agent;
    return missing();
}

ferry_status_t ferry_dir_unpublish(ferry_dir_t *dir, ferry_agent_t *agent)
{
    (void)dir, (void)agent;
    return missing();
}

ferry_status_t ferry_dir_keepalive(ferry_dir_t *dir)
{
    (void)dir;
    return missing();
}

ferry_status_t ferry_dir_get(ferry_dir_t *dir, const char *name, void **blob_p,
                             size_t *len_p, int64_t *revision_p)
{
    (void)dir, (void)name, (void)blob_p, (void)len_p, (void)revision_p;
    return missing();
}

ferry_status_t ferry_dir_load(ferry_dir_t *dir, ferry_agent_t *agent,
                              const char *name, ferry_peer_t **peer_p)
{
    (void)dir, (void)agent, (void)name, (void)peer_p;
    return missing();
}

ferry_status_t ferry_dir_list(ferry_dir_t *dir, char ***names_p, size_t *n_p)
{
    (void)dir, (void)names_p, (void)n_p;
    return missing();
}

void ferry_dir_free(void *p)
{
    (void)p;
}

ferry_status_t ferry_dir_watch(ferry_dir_t *dir)
{
    (void)dir;
    return missing();
}

ferry_status_t ferry_dir_events(ferry_dir_t *dir, ferry_dir_event_t *out,
                                size_t max, size_t *n_p)
{
    (void)dir, (void)out, (void)max, (void)n_p;
    return missing();
}

ferry_status_t ferry_dir_wait(ferry_dir_t *dir, int64_t timeout_ns)
{
    (void)dir, (void)timeout_ns;
    return missing();
}

ferry_status_t ferry_dir_fd(ferry_dir_t *dir, int *fd_p)
{
    (void)dir, (void)fd_p;
    return missing();
}

ferry_status_t ferry_dir_attach(ferry_dir_t *dir, ferry_agent_t *agent)
{
    (void)dir, (void)agent;
    return missing();
}

ferry_status_t ferry_dir_detach(ferry_dir_t *dir, ferry_agent_t *agent)
{
    (void)dir, (void)agent;
    return missing();
}
