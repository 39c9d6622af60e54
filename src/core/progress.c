/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Progress without spinning: the agent's one pollable fd (an epoll set of
 * every backend's event fd, plus an eventfd that stops the progress thread),
 * the optional progress thread, and the wait behind ferry_xfer_wait() and
 * ferry_notif_wait(), which differ only in what ends them (a request's end,
 * a notification in the queue: both broadcast the condition variable).
 *
 * Waiting polls for FERRY_WAIT_SPIN_US, then sleeps. Without a progress
 * thread, one waiting thread at a time is the "poller": it arms the
 * backends and sleeps on the epoll set with the agent's lock released; the
 * other waiters sleep on the agent's condition variable, which is broadcast
 * whenever a request finishes and whenever the poller wakes, so that another
 * waiter takes over when the poller's own request is done. With a progress
 * thread, that thread is the poller and every waiter sleeps on the condition
 * variable. Polling goes on while the transports report events and stops
 * FERRY_WAIT_SPIN_US after the last one. Sleeps are capped
 * (FERRY__SLEEP_MAX_MS) so that an event no fd reports (room freed in a
 * peer's FIFO) costs a short delay, never a hang. An application that
 * sleeps on ferry_agent_fd() gets the same naps from a timerfd in that
 * fd's set, set by ferry_agent_progress() whenever the transports cannot
 * be armed or have work that only progress moves.
 */
#include "core/core.h"
#include "util/config.h"
#include "util/log.h"
#include "util/time.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* UCX does not signal its fd when a full shared-memory FIFO drains, so a
 * sender with queued fragments must not sleep long: sleeps are short. */
#define FERRY__SLEEP_MAX_MS 1
/* The longest nap between retries of sends queued for a stalled peer. */
#define FERRY__NAP_MAX_MS 16
/* How long a wait polls with nothing moving before it yields the core
 * between polls: about a GPU copy of a MiB or two, whose completion a yield
 * (a system call each time) would notice later. */
#define FERRY__YIELD_AFTER_NS 20000ull

unsigned ferry__progress_locked(ferry_agent_t *agent)
{
    unsigned n = 0;

    for (unsigned k = 0; k < FERRY__NBK; k++)
        n += ferry__backends[k]->progress(agent->bk_ctx[k]);
    ferry__stall_check_locked(agent);
    if (agent->armed.next != &agent->armed)
        n += ferry__stream_poll_locked(agent);
    return n;
}

void ferry__fd_level(ferry_agent_t *agent, int fd, bool ready)
{
    uint64_t v = 1;
    ssize_t r;

    /* A level, not a count: set when a queue fills, cleared when drained. */
    if (ready)
        r = write(fd, &v, sizeof(v));
    else
        r = read(fd, &v, sizeof(v));
    if (r < 0 && errno != EAGAIN)
        ferry__warn("agent '%s': queue eventfd: %s", agent->name, strerror(errno));
}

void ferry__cq_signal(ferry_agent_t *agent, bool ready)
{
    ferry__fd_level(agent, agent->cqfd, ready);
}

/* Under the lock: FERRY_OK when every backend will signal its fd on new
 * work; FERRY_IN_PROGRESS when they will, but one also has work that only
 * progress moves (sleep a nap at most); FERRY_ERR_BUSY when work is
 * already pending. */
static ferry_status_t arm_once_locked(ferry_agent_t *agent)
{
    ferry_status_t st = FERRY_OK;

    for (unsigned k = 0; k < FERRY__NBK; k++) {
        ferry_status_t s = ferry__backends[k]->arm(agent->bk_ctx[k]);

        if (s < 0)
            return s;
        if (s == FERRY_IN_PROGRESS)
            st = s;
    }
    return st;
}

/* How often arming is retried before a busy transport counts as stuck. */
#define FERRY__ARM_TRIES 4

/*
 * Under the lock: arms for sleeping. UCX answers BUSY both when work is
 * queued that only time can move (sends for a stalled peer) and when it has
 * just consumed the wake-up signals that the last sleep was woken by; the
 * latter only asks for a progress and a second try. Napping on it instead
 * (as this did before) cost every wake-up a millisecond, on the waiter and
 * on a target's progress thread alike. Returns FERRY_OK (armed),
 * FERRY_IN_PROGRESS (armed, but come back within a nap: arm_once_locked),
 * or FERRY_ERR_BUSY with *events_p the events that the retries' progress
 * handled (traffic: poll again) or 0 (stuck: nap).
 */
static ferry_status_t arm_locked(ferry_agent_t *agent, unsigned *events_p)
{
    ferry_status_t st = FERRY_ERR_BUSY;

    *events_p = 0;
    for (unsigned i = 0; i < FERRY__ARM_TRIES; i++) {
        st = arm_once_locked(agent);
        if (st != FERRY_ERR_BUSY)
            break;
        *events_p = ferry__progress_locked(agent);
        if (*events_p > 0)
            break;
    }
    return st;
}

static void progress_sleep(ferry_agent_t *agent, int timeout_ms)
{
    struct epoll_event ev[4];

    if (epoll_wait(agent->epfd, ev, 4, timeout_ms) < 0 && errno != EINTR)
        ferry__warn("epoll_wait: %s", strerror(errno));
}

/* Sleeps without the fd: after a busy arm the fd may stay readable. */
static void progress_nap(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000};

    nanosleep(&ts, NULL);
}

/* Milliseconds from now to deadline_ns, rounded up, clamped to [lo, hi]. */
static int ms_to(uint64_t deadline_ns, int lo, int hi)
{
    uint64_t now = ferry__now_ns();
    uint64_t ms = deadline_ns > now ? (deadline_ns - now + 999999) / 1000000 : 0;

    return ms < (uint64_t)lo ? lo : ms > (uint64_t)hi ? hi : (int)ms;
}

/*
 * The progress thread polls while there is traffic and for spin_ns after
 * the last event, then arms and sleeps. Staying unarmed while busy matters:
 * an armed UCX worker makes its peers signal every message they send it.
 */
static void *progress_thread(void *arg)
{
    ferry_agent_t *agent = arg;
    uint64_t last_event = ferry__now_ns();

    ferry__agent_lock(agent);
    while (!atomic_load_explicit(&agent->stopping, memory_order_relaxed)) {
        if (ferry__progress_locked(agent) > 0) {
            last_event = ferry__now_ns();
        } else if (ferry__now_ns() - last_event >= agent->spin_ns) {
            /* Busy arming (sends queued for a stalled peer) naps instead. */
            unsigned events;
            ferry_status_t st = arm_locked(agent, &events);

            if (st == FERRY_ERR_BUSY && events > 0) {
                last_event = ferry__now_ns();
                continue;
            }
            ferry__agent_unlock(agent);
            if (st >= 0) /* armed: a sleep is at most a nap anyway */
                progress_sleep(agent, FERRY__SLEEP_MAX_MS);
            else
                progress_nap(FERRY__SLEEP_MAX_MS);
            ferry__agent_lock(agent);
            last_event = ferry__now_ns();
            continue;
        }
        /* Let the application's threads in between rounds. */
        ferry__agent_unlock(agent);
        ferry__agent_lock(agent);
    }
    ferry__agent_unlock(agent);
    return NULL;
}

ferry_status_t ferry__events_init(ferry_agent_t *agent, bool thread)
{
    struct epoll_event ev = {.events = EPOLLIN};
    pthread_condattr_t attr;
    int err;

    agent->spin_ns = ferry__config_get_size("FERRY_WAIT_SPIN_US") * 1000;
    agent->epfd = epoll_create1(EPOLL_CLOEXEC);
    agent->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    agent->cqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    agent->msgfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    agent->appfd = epoll_create1(EPOLL_CLOEXEC);
    agent->napfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (agent->epfd < 0 || agent->wakefd < 0 || agent->cqfd < 0 || agent->msgfd < 0 ||
        agent->appfd < 0 || agent->napfd < 0 ||
        epoll_ctl(agent->epfd, EPOLL_CTL_ADD, agent->wakefd, &ev) != 0)
        goto err_sys;
    /* The caller's fd: the queues, and the transports unless the progress
     * thread serves them. The agent's own sleepers use epfd, without the
     * queues, which would keep them awake while entries wait. */
    if (epoll_ctl(agent->appfd, EPOLL_CTL_ADD, agent->cqfd, &ev) != 0 ||
        epoll_ctl(agent->appfd, EPOLL_CTL_ADD, agent->msgfd, &ev) != 0 ||
        (!thread && (epoll_ctl(agent->appfd, EPOLL_CTL_ADD, agent->epfd, &ev) != 0 ||
                     epoll_ctl(agent->appfd, EPOLL_CTL_ADD, agent->napfd, &ev) != 0)))
        goto err_sys;
    for (unsigned k = 0; k < FERRY__NBK; k++) {
        int fd = ferry__backends[k]->event_fd(agent->bk_ctx[k]);

        if (fd >= 0 && epoll_ctl(agent->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
            goto err_sys;
    }
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&agent->done_cv, &attr);
    pthread_condattr_destroy(&attr);
    if (thread) {
        err = pthread_create(&agent->thread, NULL, progress_thread, agent);
        if (err != 0) {
            pthread_cond_destroy(&agent->done_cv);
            errno = err;
            goto err_sys;
        }
        agent->has_thread = true;
    }
    return FERRY_OK;

err_sys:
    err = errno;
    if (agent->napfd >= 0)
        close(agent->napfd);
    if (agent->appfd >= 0)
        close(agent->appfd);
    if (agent->cqfd >= 0)
        close(agent->cqfd);
    if (agent->msgfd >= 0)
        close(agent->msgfd);
    if (agent->wakefd >= 0)
        close(agent->wakefd);
    if (agent->epfd >= 0)
        close(agent->epfd);
    return ferry__error(FERRY_ERR_SYSTEM, "agent_create: events: %s", strerror(err));
}

void ferry__events_fini(ferry_agent_t *agent)
{
    uint64_t one = 1;

    if (agent->has_thread) {
        atomic_store(&agent->stopping, true);
        if (write(agent->wakefd, &one, sizeof(one)) != sizeof(one))
            ferry__warn("agent '%s': cannot wake the progress thread: %s",
                        agent->name, strerror(errno));
        pthread_join(agent->thread, NULL);
    }
    pthread_cond_destroy(&agent->done_cv);
    close(agent->napfd);
    close(agent->appfd);
    close(agent->cqfd);
    close(agent->msgfd);
    close(agent->wakefd);
    close(agent->epfd);
}

/*
 * Under the lock, for the caller's fd, when the transports stay busy
 * without moving (arm_locked: sends queued for a peer that does not drain
 * them, or that is gone without UCX knowing): the fd becomes readable after
 * a nap, as long as the wait's (wait_sleeping), 1 ms doubling to
 * FERRY__NAP_MAX_MS while it lasts, so that a loop that sleeps on it polls
 * at that pace instead of spinning. Without a progress thread only: that
 * thread naps by itself.
 */
static void nap_start_locked(ferry_agent_t *agent)
{
    struct itimerspec t = {{0, 0}, {0, 0}};

    if (agent->has_thread)
        return;
    if (agent->nap_ms == 0)
        agent->nap_ms = 1;
    t.it_value.tv_nsec = (long)agent->nap_ms * 1000000;
    /* Setting it also clears an expiry the caller did not read. */
    if (timerfd_settime(agent->napfd, 0, &t, NULL) != 0)
        ferry__warn("agent '%s': nap timer: %s", agent->name, strerror(errno));
    if (agent->nap_ms < FERRY__NAP_MAX_MS)
        agent->nap_ms *= 2;
}

/* Under the lock: the transports moved or were armed; no nap is due. */
static void nap_end_locked(ferry_agent_t *agent)
{
    struct itimerspec off = {{0, 0}, {0, 0}};

    if (agent->nap_ms == 0)
        return;
    agent->nap_ms = 0;
    (void)timerfd_settime(agent->napfd, 0, &off, NULL);
}

ferry_status_t ferry_agent_progress(ferry_agent_t *agent)
{
    ferry_status_t st;
    unsigned events;

    if (agent == NULL)
        return ferry__error(FERRY_ERR_INVALID, "agent_progress: agent is NULL");
    ferry__agent_lock(agent);
    if (ferry__progress_locked(agent) > 0) {
        nap_end_locked(agent);
        ferry__agent_unlock(agent);
        return FERRY_IN_PROGRESS;
    }
    /* Arm only for an application that sleeps on the fd: an armed worker
     * makes every peer signal each message, which a polling loop would pay
     * for without any use. */
    if (!atomic_load_explicit(&agent->fd_used, memory_order_relaxed)) {
        ferry__agent_unlock(agent);
        return FERRY_OK;
    }
    /* Busy with events is traffic: call again. Busy without any, the
     * transports hold work that more calls would not move (UCX 1.13 keeps
     * a reply queued for a worker that an aborting initiator dropped, and
     * the interface stays unarmable for as long as this process lives):
     * "call again" would spin, so this is FERRY_OK, with a nap on the fd. */
    st = arm_locked(agent, &events);
    if (st == FERRY_ERR_BUSY && events > 0) {
        nap_end_locked(agent);
        st = FERRY_IN_PROGRESS;
    } else if (st == FERRY_ERR_BUSY || st == FERRY_IN_PROGRESS) {
        /* Stuck, or armed with work only progress moves (a connection
         * closing in the background): the fd comes back after a nap. */
        nap_start_locked(agent);
        st = FERRY_OK;
    } else {
        nap_end_locked(agent);
    }
    ferry__agent_unlock(agent);
    return st;
}

ferry_status_t ferry_agent_fd(ferry_agent_t *agent, int *fd_p)
{
    if (agent == NULL || fd_p == NULL)
        return ferry__error(FERRY_ERR_INVALID, "agent_fd: NULL argument");
    ferry__agent_lock(agent);
    atomic_store(&agent->fd_used, true);
    ferry__notif_signal_locked(agent); /* messages that came before */
    ferry__agent_unlock(agent);
    *fd_p = agent->appfd;
    return FERRY_OK;
}

/* What a wait waits for: a request's end (x), or a notification (x NULL). */
typedef struct ferry__waiter {
    ferry_agent_t *agent;
    ferry_xfer_t *x;
} ferry__waiter_t;

/* Whether the wait is over; without the lock, a snapshot. */
static bool wait_done(const ferry__waiter_t *w)
{
    if (w->x != NULL)
        return !ferry__in_flight(w->x);
    return atomic_load_explicit(&w->agent->nq_len, memory_order_acquire) > 0;
}

/*
 * Polls while the transports are busy and for spin_ns after the last event:
 * short waits are answered fastest that way, and queued sends keep moving.
 * Returns true when the wait is over or the deadline passed, false when it
 * is time to sleep.
 */
static bool wait_polling(const ferry__waiter_t *w, uint64_t deadline_ns)
{
    ferry_agent_t *agent = w->agent;
    uint64_t last = ferry__now_ns(), spin_end = last + agent->spin_ns;

    for (;;) {
        uint64_t now;
        unsigned n;

        if (wait_done(w))
            return true;
        ferry__agent_lock(agent);
        n = ferry__progress_locked(agent);
        ferry__agent_unlock(agent);
        now = ferry__now_ns();
        if (now >= deadline_ns)
            return true;
        if (n > 0) {
            last = now;
            spin_end = now + agent->spin_ns;
        } else {
            if (now >= spin_end)
                return false;
            /* Nothing moved for a while: on a busy machine the peer that
             * must move next may be waiting for this core. */
            if (now - last >= FERRY__YIELD_AFTER_NS)
                sched_yield();
        }
    }
}

/*
 * Sleeps until the wait is over or the deadline passes (true), or until
 * traffic resumes (false: back to polling). See the top of this file for
 * who sleeps on what; a notification's arrival broadcasts the condition
 * variable as a request's end does.
 */
static bool wait_sleeping(const ferry__waiter_t *w, uint64_t deadline_ns)
{
    ferry_agent_t *agent = w->agent;
    bool traffic = false;
    int nap_ms = 1;
    unsigned events;
    ferry_status_t st;

    ferry__agent_lock(agent);
    if (w->x != NULL)
        ferry__xfer_claim_locked(w->x); /* so that its end wakes us */
    while (!wait_done(w) && !traffic) {
        int ms = ms_to(deadline_ns, 0, FERRY__SLEEP_MAX_MS);

        if (ms == 0 && ferry__now_ns() >= deadline_ns)
            break;
        if (!agent->has_thread && !agent->polling) {
            if (ferry__progress_locked(agent) > 0) {
                traffic = true;
                break;
            }
            if (wait_done(w))
                break;
            /* Armed, the fd wakes us on new events; busy (sends queued for a
             * peer that does not drain them), a short nap retries them. */
            st = arm_locked(agent, &events);
            if (st == FERRY_ERR_BUSY && events > 0) {
                traffic = true;
                break;
            }
            agent->polling = true;
            ferry__agent_unlock(agent);
            if (st >= 0) { /* armed; ms is a nap at most */
                progress_sleep(agent, ms);
            } else {
                /* A peer that stays stalled is retried less and less often,
                 * up to FERRY__NAP_MAX_MS; any traffic resets the pace. */
                progress_nap(ms_to(deadline_ns, 1, nap_ms));
                if (nap_ms < FERRY__NAP_MAX_MS)
                    nap_ms *= 2;
            }
            ferry__agent_lock(agent);
            traffic = ferry__progress_locked(agent) > 0;
            agent->polling = false;
            pthread_cond_broadcast(&agent->done_cv);
        } else {
            struct timespec ts;
            uint64_t until = ferry__now_ns() + (uint64_t)(ms ? ms : 1) * 1000000;

            ts.tv_sec = (time_t)(until / 1000000000u);
            ts.tv_nsec = (long)(until % 1000000000u);
            (void)pthread_cond_timedwait(&agent->done_cv, &agent->lock, &ts);
        }
    }
    ferry__agent_unlock(agent);
    return !traffic;
}

ferry_status_t ferry__wait(ferry_xfer_t *x, uint64_t deadline_ns)
{
    ferry__waiter_t w = {x->agent, x};

    while (!wait_polling(&w, deadline_ns) && !wait_sleeping(&w, deadline_ns))
        ;
    if (ferry__in_flight(x))
        return FERRY_IN_PROGRESS;
    return ferry_xfer_test(x);
}

ferry_status_t ferry__wait_notif(ferry_agent_t *agent, uint64_t deadline_ns)
{
    ferry__waiter_t w = {agent, NULL};

    while (!wait_polling(&w, deadline_ns) && !wait_sleeping(&w, deadline_ns))
        ;
    return wait_done(&w) ? FERRY_OK : FERRY_IN_PROGRESS;
}
