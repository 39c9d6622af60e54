/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry_py.h: what the files of the extension module ferry._ferry share.
 * The module is a thin layer over the public libferry API (include/ferry.h)
 * written against CPython's limited API (abi3, Python 3.11 and later: the
 * buffer protocol entered the limited API in 3.11), so one build serves
 * every later interpreter. module.c holds the module and the status-to-
 * exception mapping; mem.c turns Python objects into descriptors; agent.c,
 * xfer.c, alloc.c, store.c and comm.c hold one type each (or two).
 *
 * Lifetimes. An agent's C handle lives in a core_t that the Agent object and
 * every Allocation it made share: closing the Agent releases its requests,
 * registrations and peers at once, but the libferry agent is destroyed only
 * when the last Allocation is gone too, so that a numpy array viewing
 * allocated memory never points into freed memory. Requests keep their
 * Agent object alive; registrations and peers belong to the Agent (it holds
 * them) and are invalidated when it closes. Every call that releases the
 * GIL counts itself in core->busy, and closing an agent that another thread
 * is using raises ferry.Busy instead of freeing memory under it.
 */
#ifndef FERRY_PY_H
#define FERRY_PY_H

#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>
#include <structmember.h>

#include <ferry.h>

#include <stdint.h>

/* The libferry agent, shared by its Agent object and its allocations. */
typedef struct core {
    ferry_agent_t *fa;
    long refs;   /* the Agent object (until closed) and each Allocation */
    long busy;   /* calls in progress with the GIL released */
    int closed;  /* the Agent was closed: no new objects */
    int thread;  /* created with a progress thread */
} core_t;

typedef struct xfer_object xfer_object;

typedef struct agent_object {
    PyObject_HEAD
    core_t *core;
    PyObject *name;     /* str */
    PyObject *mems;     /* dict: id -> Mem, the registrations it holds */
    PyObject *peers;    /* dict: handle address -> Peer */
    PyObject *ready;    /* dict: id(Xfer) -> (weakref, status), completions
                         * taken from the queue, not yet returned */
    PyObject *aio;      /* the asyncio state of ferry._aio, or None */
    PyObject *notes;    /* list: notifications taken from the queue (by the
                         * asyncio reader), not yet returned */
    unsigned long long notes_dropped; /* what the reader dropped, notes full */
    xfer_object *xfers; /* every live request, linked through next/prev */
    PyObject *weakrefs;
} agent_object;

typedef struct peer_object {
    PyObject_HEAD
    ferry_peer_t *fp;     /* NULL once forgotten or its agent closed */
    agent_object *agent;  /* borrowed: the agent invalidates its peers */
    PyObject *name;
} peer_object;

struct xfer_object {
    PyObject_HEAD
    ferry_xfer_t *fx;      /* NULL once released */
    agent_object *agent;   /* strong */
    PyObject *peer;        /* strong */
    PyObject *user_data;   /* the caller's, or NULL */
    PyObject *future;      /* an asyncio future waiting for it, or NULL */
    PyObject *weakrefs;
    xfer_object *next, *prev;
    Py_ssize_t count;      /* descriptors */
    long busy;             /* calls on it with the GIL released */
    int op;
};

/* One piece of memory taken from a Python object. */
typedef struct region {
    ferry_desc_t desc;
    PyObject *owner; /* a new reference to keep alive, or NULL */
    Py_buffer view;  /* held while has_view */
    int has_view;
} region_t;

/* Types and exception classes, created once by the module. */
extern PyObject *ferry__py_agent_type, *ferry__py_peer_type, *ferry__py_mem_type,
    *ferry__py_xfer_type, *ferry__py_alloc_type, *ferry__py_store_type,
    *ferry__py_server_type, *ferry__py_comm_type;

/* module.c: raises the exception class of status st with the calling
 * thread's ferry_last_error() text (or with text, when not NULL); returns
 * NULL for "return ferry__py_raise(...)". */
PyObject *ferry__py_raise(ferry_status_t st, const char *text);
/* Raises ferry.InvalidArgument with a formatted message; returns NULL. */
PyObject *ferry__py_invalid(const char *fmt, ...);
/* Calls ferry._aio.NAME(*args) and returns its result (a new reference, or
 * NULL with an exception set). Steals args, which may be NULL (an exception
 * set by its maker). */
PyObject *ferry__py_aio_call(const char *name, PyObject *args);
/* Seconds (None: forever) to nanoseconds for a blocking call; -1 with an
 * exception set for a bad value. *ns_p is -1 for forever. */
int ferry__py_timeout(PyObject *obj, int64_t *ns_p);
void ferry__py_core_unref(core_t *core);
/* Raises ferry.InvalidArgument("... is closed") unless the agent is open. */
int ferry__py_agent_check(agent_object *agent);

/* Counting a call that releases the GIL. */
#define FERRY_PY_BEGIN(core) do { (core)->busy++; Py_BEGIN_ALLOW_THREADS
#define FERRY_PY_END(core) Py_END_ALLOW_THREADS (core)->busy--; } while (0)

/* xfer.c: a notification's bytes from a bytes-like object or a str (UTF-8),
 * at most FERRY_NOTIF_MAX (ferry.InvalidArgument otherwise; TypeError for
 * another type); what names the call in the message. Release with
 * ferry__py_msg_clear. Under the GIL. */
typedef struct ferry__py_msg {
    const void *buf;
    size_t len;
    Py_buffer view;
    int has_view;
} ferry__py_msg_t;
int ferry__py_msg(PyObject *obj, const char *what, ferry__py_msg_t *m);
void ferry__py_msg_clear(ferry__py_msg_t *m);

/* mem.c */
/* Fills *r from a memory object: the buffer protocol, __dlpack__,
 * __cuda_array_interface__, an Allocation, or an (addr, len[, kind[,
 * device]]) tuple. keep: hold the buffer view and a reference to obj in
 * *r (release with ferry__py_region_clear). */
int ferry__py_region(PyObject *obj, int keep, region_t *r);
void ferry__py_region_clear(region_t *r);
/* A descriptor list for prepare: a numpy array of ferry.desc_dtype (used in
 * place), a uint64 array of shape (n, 2), one memory object or tuple, or a
 * sequence of them. *descs_p is either view->buf (view held, *owned_p 0)
 * or an array of this file's (*owned_p > 0), given back with
 * ferry__py_descs_free. Under the GIL. */
int ferry__py_descs(PyObject *obj, const char *what, ferry_desc_t **descs_p,
                    size_t *n_p, Py_buffer *view, int *has_view, int *owned_p);
void ferry__py_descs_free(ferry_desc_t *descs, int owned);
PyObject *ferry__py_desc_tuple(const ferry_desc_t *d);

/* alloc.c: the address and size of an Allocation, for mem.c. */
int ferry__py_alloc_desc(PyObject *obj, ferry_desc_t *d);
PyObject *ferry__py_alloc_new(agent_object *agent, size_t len, ferry_mem_kind_t kind,
                              int device);

/* agent.c */
PyObject *ferry__py_peer_wrap(agent_object *agent, ferry_peer_t *fp);
void ferry__py_xfer_unlink(xfer_object *x);

/* Type specs of each file, made into types by module.c. */
extern PyType_Spec ferry__py_agent_spec, ferry__py_peer_spec, ferry__py_mem_spec,
    ferry__py_xfer_spec, ferry__py_alloc_spec, ferry__py_store_spec,
    ferry__py_server_spec, ferry__py_comm_spec;

#endif /* FERRY_PY_H */
