/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The agent: creation and teardown, its lock, its identity (name, host id,
 * incarnation) and progress across its backends.
 */
#include "core/core.h"
#include "util/config.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* In order of preference: a pair of descriptors goes to the first backend
 * that can serve it, so GPU memory of a peer on the same host takes CUDA
 * IPC even where UCX could carry it too, and staging through bounce
 * buffers (backends/staged) serves only what neither can: GPU memory of a
 * peer on another host when UCX takes no GPU memory. */
const ferry__backend_ops_t *const ferry__backends[FERRY__NBK] = {
    &ferry__cuda_ipc_ops,
    &ferry__ucx_ops,
    &ferry__staged_ops,
};

int ferry__backend_slot(uint16_t id)
{
    for (unsigned k = 0; k < FERRY__NBK; k++)
        if (ferry__backends[k]->id == id)
            return (int)k;
    return -1;
}

/*
 * The agent lock is held for a few hundred nanoseconds at a time (a post
 * takes it twice around a copy done without it), so under contention a
 * waiter that spins briefly gets it far sooner than one that sleeps in the
 * kernel and has to be woken: glibc's adaptive mutex spins before it
 * sleeps. Where that type is missing, an ordinary mutex does the same job.
 */
static void agent_lock_init(pthread_mutex_t *lock)
{
    pthread_mutexattr_t attr;

    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
    (void)pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(lock, &attr);
    pthread_mutexattr_destroy(&attr);
}

void ferry__agent_lock(ferry_agent_t *agent)
{
    pthread_mutex_lock(&agent->lock);
}

void ferry__agent_unlock(ferry_agent_t *agent)
{
    pthread_mutex_unlock(&agent->lock);
}

/*
 * Host identity: the boot id names the running kernel, and the PID and IPC
 * namespaces name the sandbox; processes that agree on all three can share
 * handles that refer to each other's processes and memory. FERRY_HOST_ID
 * replaces it.
 */
static void agent_host_id(char *out, size_t size)
{
    char boot[64] = "unknown", pidns[64] = "", ipcns[64] = "";
    const char *set = ferry__config_get("FERRY_HOST_ID");
    FILE *f;
    ssize_t n;

    /* A test's (or a sandbox's) own: two processes of one machine with
     * different ones are two hosts to each other. */
    if (set[0] != '\0') {
        snprintf(out, size, "%s", set);
        return;
    }
    f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f != NULL) {
        if (fgets(boot, sizeof(boot), f) != NULL)
            boot[strcspn(boot, "\n")] = '\0';
        fclose(f);
    }
    n = readlink("/proc/self/ns/pid", pidns, sizeof(pidns) - 1);
    pidns[n > 0 ? n : 0] = '\0';
    n = readlink("/proc/self/ns/ipc", ipcns, sizeof(ipcns) - 1);
    ipcns[n > 0 ? n : 0] = '\0';
    snprintf(out, size, "%s/%s/%s", boot, pidns, ipcns);
}

ferry_status_t ferry_agent_create(const ferry_agent_params_t *params,
                                  ferry_agent_t **agent_p)
{
    ferry_agent_t *agent;
    ferry_status_t st;
    size_t queue;
    unsigned k;

    if (agent_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "agent_create: agent_p is NULL");
    agent = calloc(1, sizeof(*agent));
    if (agent == NULL)
        return ferry__error(FERRY_ERR_NO_MEMORY, "agent_create: no memory");

    if (params != NULL && (params->field_mask & FERRY_AGENT_PARAM_NAME)) {
        size_t n = params->name != NULL ? strlen(params->name) : 0;

        if (n == 0 || n > FERRY__MD_NAME_MAX) {
            st = ferry__error(FERRY_ERR_INVALID,
                              "agent_create: the name must have 1 to %d bytes "
                              "(got %zu)", FERRY__MD_NAME_MAX, n);
            goto err_free;
        }
        memcpy(agent->name, params->name, n + 1);
    } else {
        char host[128] = "localhost";

        (void)gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(agent->name, sizeof(agent->name), "%s:%d", host, (int)getpid());
    }
    if (params != NULL && (params->field_mask & FERRY_AGENT_PARAM_NOTIF_QUEUE))
        queue = params->notif_queue;
    else
        queue = (size_t)ferry__config_get_size("FERRY_NOTIF_QUEUE");
    if (queue == 0) {
        st = ferry__error(FERRY_ERR_INVALID, "agent_create: a notification queue "
                          "of 0 messages (at least 1)");
        goto err_free;
    }
    agent_host_id(agent->host_id, sizeof(agent->host_id));
    st = ferry__secret_init(&agent->secret,
                            params != NULL && (params->field_mask & FERRY_AGENT_PARAM_SECRET)
                                ? (params->secret != NULL ? params->secret : "")
                                : NULL);
    if (st < 0)
        goto err_free;
    if (getrandom(&agent->incarnation, sizeof(agent->incarnation), 0) !=
        (ssize_t)sizeof(agent->incarnation))
        agent->incarnation = ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)agent;

    agent_lock_init(&agent->lock);
    ferry__imap_init(&agent->registry);
    ferry__list_init(&agent->mems);
    ferry__list_init(&agent->peers);
    ferry__list_init(&agent->xfers);
    ferry__list_init(&agent->active);
    ferry__list_init(&agent->armed);
    ferry__list_init(&agent->cq);
    if (params != NULL && (params->field_mask & FERRY_AGENT_PARAM_STALL_TIMEOUT))
        agent->stall_ns = params->stall_timeout_ns;
    else
        agent->stall_ns = ferry__config_get_size("FERRY_XFER_STALL_MS") * 1000000;

    for (k = 0; k < FERRY__NBK; k++) {
        st = ferry__backends[k]->init(agent->name, &agent->secret, &agent->bk_ctx[k]);
        if (st < 0)
            goto err_backends;
    }
    /* Before the progress thread starts: it may receive the first message. */
    st = ferry__notif_init(agent, queue);
    if (st < 0)
        goto err_backends;
    st = ferry__events_init(agent, params != NULL &&
                                       (params->field_mask & FERRY_AGENT_PARAM_PROGRESS_THREAD) &&
                                       params->progress_thread != 0);
    if (st < 0)
        goto err_backends;
    ferry__debug("agent '%s' created (host %s)", agent->name, agent->host_id);
    *agent_p = agent;
    return FERRY_OK;

err_backends:
    while (k-- > 0)
        ferry__backends[k]->fini(agent->bk_ctx[k]);
    pthread_mutex_destroy(&agent->lock);
err_free:
    ferry__secret_clear(&agent->secret);
    free(agent);
    return st;
}

void ferry_agent_destroy(ferry_agent_t *agent)
{
    if (agent == NULL)
        return;
    /* Requests first: releasing one waits for its transport to let go of
     * its memory. */
    while (agent->xfers.next != &agent->xfers) {
        ferry_xfer_t *x = ferry__container_of(agent->xfers.next, ferry_xfer_t, link);

        ferry__debug("agent '%s': releasing a request the user left", agent->name);
        ferry_xfer_release(x);
    }
    ferry__agent_lock(agent);
    while (agent->peers.next != &agent->peers)
        ferry__peer_forget_locked(
            ferry__container_of(agent->peers.next, ferry_peer_t, link));
    while (agent->mems.next != &agent->mems)
        ferry__mem_drop(ferry__container_of(agent->mems.next, ferry_mem_t, link));
    ferry__agent_unlock(agent);

    ferry__events_fini(agent);
    ferry__notif_fini(agent);
    for (unsigned k = FERRY__NBK; k-- > 0;)
        ferry__backends[k]->fini(agent->bk_ctx[k]);
    ferry__imap_free(&agent->registry);
    pthread_mutex_destroy(&agent->lock);
    ferry__secret_clear(&agent->secret);
    free(agent);
}

const char *ferry_agent_name(const ferry_agent_t *agent)
{
    return agent != NULL ? agent->name : "";
}
