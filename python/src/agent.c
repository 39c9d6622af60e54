/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agent.c: the Agent, Peer and Mem types. An Agent owns its registrations
 * (Mem objects, which hold the Python objects whose memory they register)
 * and its peers, and tracks its requests, so that closing it invalidates
 * them all before the libferry agent goes (see ferry_py.h on lifetimes).
 * It also sends and receives notifications (ferry/notif.h): messages
 * received are returned as (peer_name, Peer or None, bytes) by
 * notifications() or, through ferry/_aio.py, notification_async().
 */
#include "ferry_py.h"

#include <string.h>

typedef struct mem_object {
    PyObject_HEAD
    ferry_mem_t *fm;      /* NULL once deregistered */
    agent_object *agent;  /* borrowed: the agent holds its registrations */
    region_t *regions;
    Py_ssize_t n;
} mem_object;

PyObject *ferry__py_xfer_prepare(agent_object *self, PyObject *args, PyObject *kwargs);
PyObject *ferry__py_alloc_method(agent_object *self, PyObject *args, PyObject *kwargs);

static void type_free(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    freefunc f = (freefunc)PyType_GetSlot(tp, Py_tp_free);

    f(self);
    Py_DECREF(tp);
}

int ferry__py_agent_check(agent_object *agent)
{
    if (!agent || !agent->core || agent->core->closed) {
        ferry__py_invalid("the agent is closed");
        return -1;
    }
    return 0;
}

void ferry__py_core_unref(core_t *core)
{
    if (--core->refs > 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    ferry_agent_destroy(core->fa);
    Py_END_ALLOW_THREADS
    PyMem_Free(core);
}

/* ------------------------------------------------------------------------ */
/* Mem                                                                      */
/* ------------------------------------------------------------------------ */

static void mem_drop(mem_object *m)
{
    for (Py_ssize_t i = 0; i < m->n; i++)
        ferry__py_region_clear(&m->regions[i]);
    PyMem_Free(m->regions);
    m->regions = NULL;
    m->n = 0;
    m->fm = NULL;
    m->agent = NULL;
}

static void mem_dealloc(PyObject *self)
{
    mem_object *m = (mem_object *)self;

    /* The agent holds its registrations, so one that is deallocated was
     * deregistered already (or never registered). */
    if (m->fm)
        ferry_mem_deregister(m->fm);
    mem_drop(m);
    type_free(self);
}

static PyObject *mem_deregister(PyObject *self, PyObject *unused)
{
    mem_object *m = (mem_object *)self;
    agent_object *agent = m->agent;
    ferry_status_t st;

    (void)unused;
    if (!m->fm)
        Py_RETURN_NONE;
    FERRY_PY_BEGIN(agent->core);
    st = ferry_mem_deregister(m->fm);
    FERRY_PY_END(agent->core);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    mem_drop(m);
    /* Last: this may drop the agent's reference to self (the caller's
     * keeps it alive until the method returns). */
    if (PyDict_DelItem(agent->mems, self) < 0)
        PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *mem_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *mem_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return mem_deregister(self, NULL);
}

static PyObject *mem_get_descs(PyObject *self, void *closure)
{
    mem_object *m = (mem_object *)self;
    PyObject *list = PyList_New(m->n);

    (void)closure;
    for (Py_ssize_t i = 0; list && i < m->n; i++) {
        PyObject *t = ferry__py_desc_tuple(&m->regions[i].desc);

        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SetItem(list, i, t);
    }
    return list;
}

static PyObject *mem_get_addr(PyObject *self, void *closure)
{
    mem_object *m = (mem_object *)self;

    (void)closure;
    if (m->n == 0)
        return ferry__py_invalid("the registration was deregistered");
    return PyLong_FromUnsignedLongLong(m->regions[0].desc.addr);
}

static PyObject *mem_get_nbytes(PyObject *self, void *closure)
{
    mem_object *m = (mem_object *)self;
    unsigned long long total = 0;

    (void)closure;
    for (Py_ssize_t i = 0; i < m->n; i++)
        total += m->regions[i].desc.len;
    return PyLong_FromUnsignedLongLong(total);
}

static PyObject *mem_get_objects(PyObject *self, void *closure)
{
    mem_object *m = (mem_object *)self;
    PyObject *list = PyList_New(0);

    (void)closure;
    for (Py_ssize_t i = 0; list && i < m->n; i++)
        if (m->regions[i].owner && PyList_Append(list, m->regions[i].owner) < 0)
            Py_CLEAR(list);
    return list;
}

static PyObject *mem_get_registered(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((mem_object *)self)->fm != NULL);
}

static PyObject *mem_repr(PyObject *self)
{
    mem_object *m = (mem_object *)self;

    if (!m->fm)
        return PyUnicode_FromString("<ferry.Mem deregistered>");
    return PyUnicode_FromFormat("<ferry.Mem %zd region(s) at %p>", m->n,
                                (void *)(uintptr_t)m->regions[0].desc.addr);
}

static PyMethodDef mem_methods[] = {
    {"deregister", mem_deregister, METH_NOARGS,
     "deregister() -> None\n\nEnds the registration (ferry_mem_deregister) and lets go "
     "of the objects it kept alive. Raises ferry.Busy while a posted, unfinished "
     "request uses it. Deregistering twice does nothing."},
    {"__enter__", mem_enter, METH_NOARGS, "Returns the registration itself."},
    {"__exit__", mem_exit, METH_VARARGS, "Deregisters."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef mem_getset[] = {
    {"descs", mem_get_descs, NULL,
     "The registered ranges, as (addr, len, kind, device) tuples.", NULL},
    {"addr", mem_get_addr, NULL, "The address of the first registered range.", NULL},
    {"nbytes", mem_get_nbytes, NULL, "The registered bytes, all ranges together.", NULL},
    {"objects", mem_get_objects, NULL,
     "The Python objects this registration keeps alive.", NULL},
    {"registered", mem_get_registered, NULL, "False once deregistered.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot mem_slots[] = {
    {Py_tp_doc, "A registration: memory that the agent's requests may use and that "
                "its metadata advertises to peers. Made by Agent.register(); it keeps "
                "the registered objects alive until deregister() (or the agent's close)."},
    {Py_tp_dealloc, mem_dealloc},
    {Py_tp_methods, mem_methods},
    {Py_tp_getset, mem_getset},
    {Py_tp_repr, mem_repr},
    {0, NULL}};

PyType_Spec ferry__py_mem_spec = {"ferry.Mem", sizeof(mem_object), 0, Py_TPFLAGS_DEFAULT,
                                  mem_slots};

/* ------------------------------------------------------------------------ */
/* Peer                                                                     */
/* ------------------------------------------------------------------------ */

PyObject *ferry__py_peer_wrap(agent_object *agent, ferry_peer_t *fp)
{
    PyObject *key = PyLong_FromVoidPtr(fp), *p;
    peer_object *po;

    if (!key)
        return NULL;
    p = PyDict_GetItem(agent->peers, key);
    if (p) {
        Py_DECREF(key);
        Py_INCREF(p);
        return p;
    }
    po = PyObject_New(peer_object, (PyTypeObject *)ferry__py_peer_type);
    if (!po) {
        Py_DECREF(key);
        return NULL;
    }
    po->fp = fp;
    po->agent = agent;
    po->name = PyUnicode_FromString(ferry_peer_name(fp));
    if (!po->name || PyDict_SetItem(agent->peers, key, (PyObject *)po) < 0) {
        Py_DECREF(key);
        Py_DECREF(po);
        return NULL;
    }
    Py_DECREF(key);
    return (PyObject *)po;
}

static void peer_dealloc(PyObject *self)
{
    Py_XDECREF(((peer_object *)self)->name);
    type_free(self);
}

static PyObject *peer_forget(PyObject *self, PyObject *unused)
{
    peer_object *p = (peer_object *)self;
    agent_object *agent = p->agent;
    PyObject *key;

    (void)unused;
    if (!p->fp)
        Py_RETURN_NONE;
    key = PyLong_FromVoidPtr(p->fp);
    FERRY_PY_BEGIN(agent->core);
    ferry_peer_forget(p->fp);
    FERRY_PY_END(agent->core);
    p->fp = NULL;
    p->agent = NULL;
    if (key && PyDict_DelItem(agent->peers, key) < 0)
        PyErr_Clear();
    Py_XDECREF(key);
    Py_RETURN_NONE;
}

static PyObject *peer_get_name(PyObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(((peer_object *)self)->name);
    return ((peer_object *)self)->name;
}

static PyObject *peer_get_loaded(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((peer_object *)self)->fp != NULL);
}

static PyObject *peer_repr(PyObject *self)
{
    peer_object *p = (peer_object *)self;

    return PyUnicode_FromFormat("<ferry.Peer %R%s>", p->name, p->fp ? "" : " forgotten");
}

static PyMethodDef peer_methods[] = {
    {"forget", peer_forget, METH_NOARGS,
     "forget() -> None\n\nDrops the peer (ferry_peer_forget). Requests prepared on it "
     "stay objects to release; posting them raises ferry.PeerLost."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef peer_getset[] = {
    {"name", peer_get_name, NULL, "The peer agent's name.", NULL},
    {"loaded", peer_get_loaded, NULL, "False once forgotten or its agent closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot peer_slots[] = {
    {Py_tp_doc, "Another agent, loaded from its metadata blob by Agent.load_peer() (or "
                "by Comm.exchange()): the other side of requests. Loading a blob "
                "from the same agent again returns the same Peer."},
    {Py_tp_dealloc, peer_dealloc},
    {Py_tp_methods, peer_methods},
    {Py_tp_getset, peer_getset},
    {Py_tp_repr, peer_repr},
    {0, NULL}};

PyType_Spec ferry__py_peer_spec = {"ferry.Peer", sizeof(peer_object), 0, Py_TPFLAGS_DEFAULT,
                                   peer_slots};

/* ------------------------------------------------------------------------ */
/* Agent                                                                    */
/* ------------------------------------------------------------------------ */

static PyObject *agent_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"name", "progress_thread", "stall_timeout", NULL};
    const char *name = NULL;
    int thread = 1;
    PyObject *stall = Py_None;
    ferry_agent_params_t p = {0};
    agent_object *self;
    ferry_status_t st;
    ferry_agent_t *fa;
    int64_t stall_ns = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|zpO:Agent", kw, &name, &thread, &stall))
        return NULL;
    if (name) {
        p.field_mask |= FERRY_AGENT_PARAM_NAME;
        p.name = name;
    }
    p.field_mask |= FERRY_AGENT_PARAM_PROGRESS_THREAD;
    p.progress_thread = thread;
    if (stall != Py_None) {
        if (ferry__py_timeout(stall, &stall_ns))
            return NULL;
        p.field_mask |= FERRY_AGENT_PARAM_STALL_TIMEOUT;
        p.stall_timeout_ns = stall_ns < 0 ? 0 : (uint64_t)stall_ns;
    }
    Py_BEGIN_ALLOW_THREADS
    st = ferry_agent_create(&p, &fa);
    Py_END_ALLOW_THREADS
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    self = (agent_object *)PyType_GenericAlloc(type, 0);
    if (!self)
        goto fail;
    self->core = PyMem_Calloc(1, sizeof(core_t));
    self->name = PyUnicode_FromString(ferry_agent_name(fa));
    self->mems = PyDict_New();
    self->peers = PyDict_New();
    self->ready = PyDict_New();
    self->notes = PyList_New(0);
    Py_INCREF(Py_None);
    self->aio = Py_None;
    if (!self->core || !self->name || !self->mems || !self->peers || !self->ready ||
        !self->notes) {
        if (!self->core)
            PyErr_NoMemory();
        Py_DECREF(self);
        goto fail;
    }
    self->core->fa = fa;
    self->core->refs = 1;
    self->core->thread = thread;
    return (PyObject *)self;
fail:
    ferry_agent_destroy(fa);
    return NULL;
}

static int agent_close_impl(agent_object *self)
{
    core_t *core = self->core;
    PyObject *key, *value, *res;
    Py_ssize_t pos = 0;

    if (!core)
        return 0;
    if (core->busy > 0) {
        ferry__py_raise(FERRY_ERR_BUSY, "the agent is in use by another thread "
                                        "(a wait, post or other call in progress)");
        return -1;
    }
    if (self->aio && self->aio != Py_None) {
        res = ferry__py_aio_call("detach", Py_BuildValue("(O)", (PyObject *)self));
        if (!res)
            PyErr_WriteUnraisable((PyObject *)self);
        Py_XDECREF(res);
    }
    for (xfer_object *x = self->xfers; x; x = x->next) {
        if (x->fx)
            ferry_xfer_release(x->fx);
        x->fx = NULL;
    }
    while (self->xfers)
        ferry__py_xfer_unlink(self->xfers);
    while (PyDict_Next(self->mems, &pos, &key, &value)) {
        mem_object *m = (mem_object *)key;

        if (m->fm && ferry_mem_deregister(m->fm) != FERRY_OK)
            fprintf(stderr, "ferry: closing agent: %s\n", ferry_last_error());
        m->fm = NULL;
        mem_drop(m);
    }
    PyDict_Clear(self->mems);
    pos = 0;
    while (PyDict_Next(self->peers, &pos, &key, &value)) {
        ((peer_object *)value)->fp = NULL;
        ((peer_object *)value)->agent = NULL;
    }
    PyDict_Clear(self->peers);
    PyDict_Clear(self->ready);
    if (PyList_SetSlice(self->notes, 0, PyList_Size(self->notes), NULL) < 0)
        PyErr_Clear();
    core->closed = 1;
    self->core = NULL;
    ferry__py_core_unref(core);
    return 0;
}

static void agent_dealloc(PyObject *self)
{
    agent_object *a = (agent_object *)self;

    if (a->weakrefs)
        PyObject_ClearWeakRefs(self);
    if (a->core && agent_close_impl(a) < 0)
        PyErr_WriteUnraisable(self);
    Py_XDECREF(a->name);
    Py_XDECREF(a->mems);
    Py_XDECREF(a->peers);
    Py_XDECREF(a->ready);
    Py_XDECREF(a->notes);
    Py_XDECREF(a->aio);
    type_free(self);
}

static PyObject *agent_close(PyObject *self, PyObject *unused)
{
    (void)unused;
    if (agent_close_impl((agent_object *)self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *agent_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    if (ferry__py_agent_check((agent_object *)self))
        return NULL;
    Py_INCREF(self);
    return self;
}

static PyObject *agent_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return agent_close(self, NULL);
}

static PyObject *agent_register(PyObject *self, PyObject *obj)
{
    agent_object *a = (agent_object *)self;
    mem_object *m;
    ferry_desc_t *descs;
    ferry_status_t st;
    Py_ssize_t n = 1;
    int is_list = PyList_Check(obj);

    if (ferry__py_agent_check(a))
        return NULL;
    if (is_list && (n = PyList_Size(obj)) == 0)
        return ferry__py_invalid("register: an empty list");
    m = PyObject_New(mem_object, (PyTypeObject *)ferry__py_mem_type);
    if (!m)
        return NULL;
    m->fm = NULL;
    m->agent = NULL;
    m->n = 0;
    m->regions = PyMem_Calloc((size_t)n, sizeof(region_t));
    descs = PyMem_Calloc((size_t)n, sizeof(*descs));
    if (!m->regions || !descs) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ferry__py_region(is_list ? PyList_GetItem(obj, i) : obj, 1, &m->regions[i]))
            goto fail;
        m->n = i + 1;
        descs[i] = m->regions[i].desc;
    }
    FERRY_PY_BEGIN(a->core);
    st = ferry_mem_register(a->core->fa, descs, (size_t)n, &m->fm);
    FERRY_PY_END(a->core);
    if (st != FERRY_OK) {
        ferry__py_raise(st, NULL);
        goto fail;
    }
    PyMem_Free(descs);
    m->agent = a;
    if (PyDict_SetItem(a->mems, (PyObject *)m, Py_None) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
fail:
    PyMem_Free(descs);
    Py_DECREF(m);
    return NULL;
}

static PyObject *agent_metadata(PyObject *self, PyObject *unused)
{
    agent_object *a = (agent_object *)self;
    ferry_status_t st;
    void *blob;
    size_t len;
    PyObject *res;

    (void)unused;
    if (ferry__py_agent_check(a))
        return NULL;
    FERRY_PY_BEGIN(a->core);
    st = ferry_md_pack(a->core->fa, &blob, &len);
    FERRY_PY_END(a->core);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    res = PyBytes_FromStringAndSize(blob, (Py_ssize_t)len);
    ferry_md_free(blob);
    return res;
}

static PyObject *agent_load_peer(PyObject *self, PyObject *obj)
{
    agent_object *a = (agent_object *)self;
    ferry_status_t st;
    ferry_peer_t *fp;
    Py_buffer v;

    if (ferry__py_agent_check(a))
        return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    FERRY_PY_BEGIN(a->core);
    st = ferry_peer_load(a->core->fa, v.buf, (size_t)v.len, &fp);
    FERRY_PY_END(a->core);
    PyBuffer_Release(&v);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return ferry__py_peer_wrap(a, fp);
}

static PyObject *agent_progress(PyObject *self, PyObject *unused)
{
    agent_object *a = (agent_object *)self;
    ferry_status_t st;

    (void)unused;
    if (ferry__py_agent_check(a))
        return NULL;
    FERRY_PY_BEGIN(a->core);
    st = ferry_agent_progress(a->core->fa);
    FERRY_PY_END(a->core);
    if (st < 0)
        return ferry__py_raise(st, NULL);
    return PyBool_FromLong(st == FERRY_IN_PROGRESS);
}

/* _drain(progress): without a progress thread, drives progress until it has
 * nothing left (when asked); then takes every completion queue entry, as a
 * list of (Xfer, status). The asyncio layer and completions() use it. */
static PyObject *agent_drain(PyObject *self, PyObject *arg)
{
    agent_object *a = (agent_object *)self;
    ferry_completion_t c[256];
    ferry_status_t st;
    PyObject *list;
    size_t n;

    if (ferry__py_agent_check(a))
        return NULL;
    if (PyObject_IsTrue(arg) && !a->core->thread) {
        FERRY_PY_BEGIN(a->core);
        for (int i = 0; i < 10000 && ferry_agent_progress(a->core->fa) == FERRY_IN_PROGRESS; i++)
            ;
        FERRY_PY_END(a->core);
    }
    list = PyList_New(0);
    do {
        st = ferry_agent_completions(a->core->fa, c, 256, &n);
        if (st != FERRY_OK) {
            Py_XDECREF(list);
            return ferry__py_raise(st, NULL);
        }
        for (size_t i = 0; list && i < n; i++) {
            /* user_data is the Xfer itself: releasing a request drops its
             * entry, so an entry always names a live Xfer. */
            PyObject *t = Py_BuildValue("(Oi)", (PyObject *)c[i].user_data, (int)c[i].status);

            if (!t || PyList_Append(list, t) < 0)
                Py_CLEAR(list);
            Py_XDECREF(t);
        }
    } while (list && n == 256);
    return list;
}

static PyObject *agent_completions(PyObject *self, PyObject *unused)
{
    (void)unused;
    return ferry__py_aio_call("completions", Py_BuildValue("(O)", self));
}

/* ------------------------------------------------------------------------ */
/* Notifications                                                            */
/* ------------------------------------------------------------------------ */

/* A wait without limit wakes this often to check for signals. */
#define NOTIF_SLICE_NS 200000000LL

static PyObject *agent_notify(PyObject *self, PyObject *args)
{
    agent_object *a = (agent_object *)self;
    PyObject *peer, *msg;
    peer_object *po;
    ferry__py_msg_t m;
    ferry_status_t st;

    if (!PyArg_ParseTuple(args, "OO:notify", &peer, &msg))
        return NULL;
    if (ferry__py_agent_check(a))
        return NULL;
    if (!PyObject_TypeCheck(peer, (PyTypeObject *)ferry__py_peer_type))
        return PyErr_Format(PyExc_TypeError, "notify: peer must be a ferry.Peer");
    po = (peer_object *)peer;
    if (!po->fp || po->agent != a)
        return ferry__py_invalid(po->fp ? "notify: the peer belongs to another agent"
                                        : "notify: the peer was forgotten");
    if (ferry__py_msg(msg, "notify", &m))
        return NULL;
    FERRY_PY_BEGIN(a->core);
    st = ferry_notif_send(a->core->fa, po->fp, m.buf, m.len);
    FERRY_PY_END(a->core);
    ferry__py_msg_clear(&m);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

/* The Peer of a received message: the one in this agent's table for its
 * handle and name (looked up, never dereferenced: another thread may have
 * forgotten it while the GIL was released), else None. */
static PyObject *notif_peer(agent_object *a, const ferry_notif_t *n)
{
    PyObject *key, *p;
    const char *name;

    if (!n->peer)
        Py_RETURN_NONE;
    key = PyLong_FromVoidPtr(n->peer);
    if (!key)
        return NULL;
    p = PyDict_GetItem(a->peers, key);
    Py_DECREF(key);
    if (p && ((peer_object *)p)->fp == n->peer) {
        name = PyUnicode_AsUTF8AndSize(((peer_object *)p)->name, NULL);
        if (!name)
            return NULL;
        if (!strcmp(name, n->peer_name)) {
            Py_INCREF(p);
            return p;
        }
    }
    Py_RETURN_NONE;
}

/* _notif_drain(): takes every message of the agent's queue (driving the
 * transports once without a progress thread, as ferry_notif_drain does), as
 * a list of (peer_name, Peer or None, bytes), oldest first. The messages
 * the asyncio reader took before (Agent._notes) are not included. */
static PyObject *agent_notif_drain(PyObject *self, PyObject *unused)
{
    agent_object *a = (agent_object *)self;
    ferry_notif_t *m[64];
    ferry_status_t st;
    PyObject *list;
    size_t n, i;

    (void)unused;
    if (ferry__py_agent_check(a))
        return NULL;
    list = PyList_New(0);
    if (!list)
        return NULL;
    do {
        FERRY_PY_BEGIN(a->core);
        st = ferry_notif_drain(a->core->fa, m, 64, &n);
        FERRY_PY_END(a->core);
        if (st != FERRY_OK) {
            Py_DECREF(list);
            return ferry__py_raise(st, NULL);
        }
        for (i = 0; i < n; i++) {
            PyObject *peer = list ? notif_peer(a, m[i]) : NULL, *t = NULL;

            if (peer)
                /* y# makes None of a NULL pointer: b"" for an empty message. */
                t = Py_BuildValue("(sOy#)", m[i]->peer_name, peer,
                                  m[i]->msg ? (const char *)m[i]->msg : "",
                                  (Py_ssize_t)m[i]->len);
            if (!t || PyList_Append(list, t) < 0)
                Py_CLEAR(list);
            Py_XDECREF(t);
            Py_XDECREF(peer);
            ferry_notif_free(m[i]);
        }
    } while (list && n == 64);
    return list;
}

static PyObject *agent_notifications(PyObject *self, PyObject *unused)
{
    (void)unused;
    return ferry__py_aio_call("notifications", Py_BuildValue("(O)", self));
}

static PyObject *agent_wait_notification(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"timeout", NULL};
    agent_object *a = (agent_object *)self;
    PyObject *timeout = Py_None;
    int64_t left, slice;
    ferry_status_t st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait_notification", kw, &timeout))
        return NULL;
    if (ferry__py_agent_check(a) || ferry__py_timeout(timeout, &left))
        return NULL;
    /* Messages the asyncio reader took count as waiting. */
    if (PyList_Size(a->notes) > 0)
        Py_RETURN_TRUE;
    for (;;) {
        slice = left < 0 || left > NOTIF_SLICE_NS ? NOTIF_SLICE_NS : left;
        FERRY_PY_BEGIN(a->core);
        st = ferry_notif_wait(a->core->fa, slice);
        FERRY_PY_END(a->core);
        if (st == FERRY_OK)
            Py_RETURN_TRUE;
        if (st != FERRY_ERR_TIMEOUT)
            return ferry__py_raise(st, NULL);
        if (left >= 0) {
            left -= slice;
            if (left <= 0)
                Py_RETURN_FALSE;
        }
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

static PyObject *agent_notification_async(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"timeout", NULL};
    PyObject *timeout = Py_None;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:notification_async", kw, &timeout))
        return NULL;
    return ferry__py_aio_call("notification_async", Py_BuildValue("(OO)", self, timeout));
}

static PyObject *agent_notifications_async(PyObject *self, PyObject *unused)
{
    (void)unused;
    return ferry__py_aio_call("notifications_async", Py_BuildValue("(O)", self));
}

static PyObject *agent_get_dropped(PyObject *self, void *closure)
{
    agent_object *a = (agent_object *)self;
    ferry_status_t st;
    uint64_t count;

    (void)closure;
    if (ferry__py_agent_check(a))
        return NULL;
    st = ferry_notif_dropped(a->core->fa, &count);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyLong_FromUnsignedLongLong(count + a->notes_dropped);
}

static PyObject *agent_get_fd(PyObject *self, void *closure)
{
    agent_object *a = (agent_object *)self;
    ferry_status_t st;
    int fd;

    (void)closure;
    if (ferry__py_agent_check(a))
        return NULL;
    st = ferry_agent_fd(a->core->fa, &fd);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyLong_FromLong(fd);
}

static PyObject *agent_get_name(PyObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(((agent_object *)self)->name);
    return ((agent_object *)self)->name;
}

static PyObject *agent_get_closed(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((agent_object *)self)->core == NULL);
}

static PyObject *agent_get_thread(PyObject *self, void *closure)
{
    agent_object *a = (agent_object *)self;

    (void)closure;
    return PyBool_FromLong(a->core && a->core->thread);
}

static PyObject *agent_get_mems(PyObject *self, void *closure)
{
    (void)closure;
    return PyDict_Keys(((agent_object *)self)->mems);
}

static PyObject *agent_get_peers(PyObject *self, void *closure)
{
    (void)closure;
    return PyDict_Values(((agent_object *)self)->peers);
}

static PyObject *agent_repr(PyObject *self)
{
    agent_object *a = (agent_object *)self;

    return PyUnicode_FromFormat("<ferry.Agent %R%s>", a->name, a->core ? "" : " closed");
}

static PyMethodDef agent_methods[] = {
    {"close", agent_close, METH_NOARGS,
     "close() -> None\n\nReleases every request (canceling those in flight), "
     "deregisters every registration and drops every peer; the transports go once "
     "no Allocation of this agent is left. Raises ferry.Busy while another thread "
     "is inside a call on the agent or its objects. Closing twice does nothing."},
    {"__enter__", agent_enter, METH_NOARGS, "Returns the agent itself."},
    {"__exit__", agent_exit, METH_VARARGS, "Closes the agent."},
    {"register", agent_register, METH_O,
     "register(obj) -> Mem\n\nRegisters memory (ferry_mem_register): a numpy array, "
     "bytearray, writable memoryview or anything else with the buffer protocol; a "
     "tensor with __dlpack__ (torch CPU or CUDA); an object with "
     "__cuda_array_interface__; an Allocation; an (addr, len[, kind[, device]]) "
     "tuple; or a list of those as one registration. The memory must be one "
     "contiguous range per object (ferry.InvalidArgument otherwise). The objects are "
     "kept alive until the registration is deregistered or the agent closed; "
     "a tuple's memory is the caller's to keep."},
    {"alloc", (PyCFunction)(void (*)(void))ferry__py_alloc_method,
     METH_VARARGS | METH_KEYWORDS,
     "alloc(nbytes, kind='host', device=0) -> Allocation\n\nAllocates memory that the "
     "agent's transports move fastest (ferry_mem_alloc): host memory that same-host "
     "peers copy into directly, or ('cuda') GPU memory shareable through CUDA IPC, on "
     "the device of the calling thread's current CUDA context (torch.cuda.set_device), "
     "which device must name: it is the device the Allocation's DLPack export "
     "reports. The Allocation has the buffer protocol (host) and __dlpack__; register "
     "it to use it. It is freed when the last object viewing it goes."},
    {"metadata", agent_metadata, METH_NOARGS,
     "metadata() -> bytes\n\nThe agent's metadata blob (ferry_md_pack): its name, "
     "addresses and every registration, for peers to load_peer()."},
    {"load_peer", agent_load_peer, METH_O,
     "load_peer(blob) -> Peer\n\nLoads a peer's metadata blob (ferry_peer_load), "
     "any bytes-like object. Loading a newer blob of the same agent updates the same "
     "Peer. Raises ferry.Protocol for a malformed blob."},
    {"prepare", (PyCFunction)(void (*)(void))ferry__py_xfer_prepare,
     METH_VARARGS | METH_KEYWORDS,
     "prepare(op, local, peer, remote, notify=None, user_data=None, backend=None) -> "
     "Xfer\n\nPrepares a request (ferry_xfer_prepare) that moves local[i] to "
     "(op 'write') or from (op 'read') remote[i] on peer. local and remote are "
     "descriptor lists: a numpy array of ferry.desc_dtype (used in place), a uint64 "
     "array of shape (n, 2) of (addr, len) or (n, 4) of (addr, len, kind, device), a "
     "memory object (one descriptor covering it) or (addr, len[, kind[, device]]) "
     "tuple, or a list of those. Remote addresses are in the peer's address space. "
     "user_data, when given, puts the request's completions into "
     "Agent.completions(). notify, when given (bytes-like or str, 0 to 4096 bytes), "
     "is a notification that the peer receives each time a post completes "
     "successfully, after that post's bytes (FERRY_XFER_PARAM_NOTIF; "
     "Xfer.set_notify changes it). backend: None, 'ucx' or 'cuda_ipc'."},
    {"progress", agent_progress, METH_NOARGS,
     "progress() -> bool\n\nDrives the transports once without blocking "
     "(ferry_agent_progress); True while more work is pending. Needed only for an "
     "agent made with progress_thread=False."},
    {"completions", agent_completions, METH_NOARGS,
     "completions() -> list[Completion]\n\nTakes the finished posts of requests "
     "prepared with user_data (ferry_agent_completions), oldest first, as "
     "Completion(xfer, user_data, status) tuples. Without a progress thread, call "
     "progress() first."},
    {"_drain", agent_drain, METH_O, "Internal: takes every completion entry."},
    {"notify", agent_notify, METH_VARARGS,
     "notify(peer, msg) -> None\n\nSends a stand-alone notification (ferry_notif_send): "
     "msg, bytes-like or str of 0 to 4096 bytes, which the peer receives after "
     "every message this agent sent it before, including those of requests whose "
     "posts completed before the call (so after those transfers' bytes). Nothing "
     "tells the sender that it arrived. Raises ferry.InvalidArgument for a message "
     "over 4096 bytes, ferry.PeerLost when the peer is known to be gone. Releases "
     "the GIL."},
    {"notifications", agent_notifications, METH_NOARGS,
     "notifications() -> list[Notification]\n\nTakes every received notification "
     "(ferry_notif_drain), oldest first, as Notification(peer_name, peer, data) "
     "tuples: the sender's name, its Peer if this agent loaded its blob (else "
     "None), and the message as bytes. Never blocks; returns [] when none waits."},
    {"_notif_drain", agent_notif_drain, METH_NOARGS,
     "Internal: takes every message of the agent's queue."},
    {"wait_notification", (PyCFunction)(void (*)(void))agent_wait_notification,
     METH_VARARGS | METH_KEYWORDS,
     "wait_notification(timeout=None) -> bool\n\nWaits until a notification waits "
     "(ferry_notif_wait), sleeping after a short poll, with the GIL released: True "
     "when one waits (take it with notifications()), False when timeout seconds "
     "passed first (None: no limit; 0 checks once)."},
    {"notification_async", (PyCFunction)(void (*)(void))agent_notification_async,
     METH_VARARGS | METH_KEYWORDS,
     "notification_async(timeout=None) -> Awaitable[Notification]\n\nAwaits the next "
     "notification in the running asyncio loop, which sleeps on the agent's fd "
     "(no thread, no polling), and returns it (the oldest first). Raises "
     "ferry.Timeout when timeout seconds pass first."},
    {"notifications_async", agent_notifications_async, METH_NOARGS,
     "notifications_async() -> AsyncIterator[Notification]\n\nAn async iterator over "
     "the notifications as they arrive (notification_async() in a loop; it never "
     "ends by itself)."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef agent_getset[] = {
    {"name", agent_get_name, NULL, "The agent's name, as its peers know it.", NULL},
    {"closed", agent_get_closed, NULL, "True once closed.", NULL},
    {"progress_thread", agent_get_thread, NULL,
     "True if the agent has its own progress thread.", NULL},
    {"fd", agent_get_fd, NULL,
     "A file descriptor (ferry_agent_fd) that is readable when the agent has "
     "progress to make or completions or notifications wait; for event loops (the "
     "asyncio waits use it). Do not read or close it.", NULL},
    {"notifications_dropped", agent_get_dropped, NULL,
     "How many notifications this agent dropped because its queue was full "
     "(ferry_notif_dropped), since it was created, and those the asyncio "
     "reader dropped because the notifications it had taken and nobody had "
     "read yet filled its list (ferry._aio.NOTES_MAX).", NULL},
    {"registrations", agent_get_mems, NULL, "The live registrations (Mem objects).", NULL},
    {"peers", agent_get_peers, NULL, "The loaded peers.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef agent_members[] = {
    {"_aio", T_OBJECT, offsetof(agent_object, aio), 0, "Internal: asyncio state."},
    {"_ready", T_OBJECT, offsetof(agent_object, ready), READONLY,
     "Internal: completions taken but not yet returned."},
    {"_notes", T_OBJECT, offsetof(agent_object, notes), READONLY,
     "Internal: notifications taken but not yet returned."},
    {"_notes_dropped", T_ULONGLONG, offsetof(agent_object, notes_dropped), 0,
     "Internal: notifications the asyncio reader dropped, its list full."},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(agent_object, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot agent_slots[] = {
    {Py_tp_doc,
     "Agent(name=None, progress_thread=True, stall_timeout=None)\n\n"
     "A ferry agent (ferry_agent_create): its transports, registrations, peers and "
     "requests. name identifies it to peers (default '<hostname>:<pid>'); "
     "progress_thread starts a thread that drives transfers and serves peers' "
     "operations on this agent's memory (without it, call progress() or use the "
     "asyncio waits); stall_timeout, in seconds, ends a request whose transport "
     "makes no headway that long with ferry.Timeout (0: never; default "
     "FERRY_XFER_STALL_MS). A context manager: leaving the block closes it."},
    {Py_tp_new, agent_new},
    {Py_tp_dealloc, agent_dealloc},
    {Py_tp_methods, agent_methods},
    {Py_tp_getset, agent_getset},
    {Py_tp_members, agent_members},
    {Py_tp_repr, agent_repr},
    {0, NULL}};

PyType_Spec ferry__py_agent_spec = {"ferry.Agent", sizeof(agent_object), 0,
                                    Py_TPFLAGS_DEFAULT, agent_slots};
