/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer.c: the Xfer type, a prepared request (ferry_xfer_prepare) to post,
 * test, wait on, cancel and release, and Agent.prepare that makes it. Every
 * request is prepared with its Xfer object as user_data, so that the
 * completion queue can name the object to the asyncio layer (ferry/_aio.py):
 * releasing a request drops its queue entry, so an entry never outlives its
 * object. Blocking calls release the GIL; a wait without limit sleeps in
 * slices so that Ctrl-C still interrupts it. A request may carry a
 * notification (prepare's notify=, set_notify), sent to the peer after each
 * successful post (ferry/notif.h).
 */
#include "ferry_py.h"

#include <string.h>

/* CUDA's CU_STREAM_LEGACY (cuda.h), the legacy default stream's handle. */
#define CU_STREAM_LEGACY_ ((void *)0x1)

/* A wait without limit wakes this often to check for signals. */
#define WAIT_SLICE_NS 200000000LL

static void xfer_link(xfer_object *x)
{
    agent_object *a = x->agent;

    x->prev = NULL;
    x->next = a->xfers;
    if (a->xfers)
        a->xfers->prev = x;
    a->xfers = x;
}

void ferry__py_xfer_unlink(xfer_object *x)
{
    agent_object *a = x->agent;

    if (x->prev)
        x->prev->next = x->next;
    else if (a && a->xfers == x)
        a->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->next = x->prev = NULL;
}

/* Drops the request's entry from agent.ready (keyed by id(xfer), holding a
 * weak reference, so that an entry never keeps its request alive). */
static void ready_forget(xfer_object *x)
{
    PyObject *key;

    if (!x->agent || !x->agent->ready || PyDict_Size(x->agent->ready) == 0)
        return;
    key = PyLong_FromVoidPtr(x);
    if (!key || PyDict_DelItem(x->agent->ready, key) < 0)
        PyErr_Clear();
    Py_XDECREF(key);
}

int ferry__py_msg(PyObject *obj, const char *what, ferry__py_msg_t *m)
{
    Py_ssize_t n;

    memset(m, 0, sizeof(*m));
    if (PyUnicode_Check(obj)) {
        m->buf = PyUnicode_AsUTF8AndSize(obj, &n);
        if (!m->buf)
            return -1;
    } else {
        if (PyObject_GetBuffer(obj, &m->view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: the message must be bytes-like or str, not %R",
                         what, (PyObject *)Py_TYPE(obj));
            return -1;
        }
        m->has_view = 1;
        m->buf = m->view.buf;
        n = m->view.len;
    }
    if (n > FERRY_NOTIF_MAX) {
        ferry__py_msg_clear(m);
        ferry__py_invalid("%s: a message of %zd bytes is over the maximum of %d", what, n,
                          FERRY_NOTIF_MAX);
        return -1;
    }
    m->len = (size_t)n;
    return 0;
}

void ferry__py_msg_clear(ferry__py_msg_t *m)
{
    if (m->has_view)
        PyBuffer_Release(&m->view);
    memset(m, 0, sizeof(*m));
}

static int xfer_check(xfer_object *x)
{
    if (!x->fx) {
        ferry__py_invalid("the request was released (or its agent closed)");
        return -1;
    }
    return 0;
}

static void xfer_dealloc(PyObject *self)
{
    xfer_object *x = (xfer_object *)self;
    PyTypeObject *tp = Py_TYPE(self);

    if (x->weakrefs)
        PyObject_ClearWeakRefs(self);
    if (x->fx) {
        /* With the GIL held: releasing drops the request's completion
         * entry, and until it has, another thread's Agent._drain could take
         * the entry and revive this object. */
        ferry_xfer_release(x->fx);
        x->fx = NULL;
    }
    if (x->agent) {
        ferry__py_xfer_unlink(x);
        ready_forget(x);
    }
    Py_XDECREF(x->future);
    Py_XDECREF(x->user_data);
    Py_XDECREF(x->peer);
    Py_XDECREF((PyObject *)x->agent);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* The end of a post or test: True done, False in flight, else raise. */
static PyObject *xfer_result(ferry_status_t st)
{
    if (st == FERRY_OK)
        Py_RETURN_TRUE;
    if (st == FERRY_IN_PROGRESS)
        Py_RETURN_FALSE;
    return ferry__py_raise(st, NULL);
}

/* post, test and cancel: one call on the request, the GIL released. */
static PyObject *xfer_call(PyObject *self, ferry_status_t (*fn)(ferry_xfer_t *))
{
    xfer_object *x = (xfer_object *)self;
    ferry_status_t st;

    if (xfer_check(x))
        return NULL;
    x->busy++;
    FERRY_PY_BEGIN(x->agent->core);
    st = fn(x->fx);
    FERRY_PY_END(x->agent->core);
    x->busy--;
    return xfer_result(st);
}

static PyObject *xfer_post(PyObject *self, PyObject *unused)
{
    xfer_object *x = (xfer_object *)self;

    (void)unused;
    /* A completion taken earlier and not yet returned belongs to the last
     * post; a new post replaces it, as ferry's own queue does. */
    ready_forget(x);
    return xfer_call(self, ferry_xfer_post);
}

static PyObject *xfer_test(PyObject *self, PyObject *unused)
{
    (void)unused;
    return xfer_call(self, ferry_xfer_test);
}

static PyObject *xfer_wait(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"timeout", NULL};
    xfer_object *x = (xfer_object *)self;
    PyObject *timeout = Py_None;
    int64_t left, slice;
    ferry_status_t st;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait", kw, &timeout))
        return NULL;
    if (xfer_check(x) || ferry__py_timeout(timeout, &left))
        return NULL;
    x->busy++;
    for (;;) {
        slice = left < 0 || left > WAIT_SLICE_NS ? WAIT_SLICE_NS : left;
        FERRY_PY_BEGIN(x->agent->core);
        st = ferry_xfer_wait(x->fx, slice);
        /* TIMEOUT is this slice running out or the stall timeout; test
         * tells them apart (IN_PROGRESS for the first). */
        if (st == FERRY_ERR_TIMEOUT && ferry_xfer_test(x->fx) == FERRY_IN_PROGRESS)
            st = FERRY_IN_PROGRESS;
        FERRY_PY_END(x->agent->core);
        if (st != FERRY_IN_PROGRESS)
            break;
        if (left >= 0) {
            left -= slice;
            if (left <= 0) {
                x->busy--;
                return ferry__py_raise(FERRY_ERR_TIMEOUT,
                                       "wait: the request is still in flight after the "
                                       "timeout (it stays valid: wait again or cancel)");
            }
        }
        if (PyErr_CheckSignals() < 0) {
            x->busy--;
            return NULL;
        }
    }
    x->busy--;
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *xfer_cancel(PyObject *self, PyObject *unused)
{
    (void)unused;
    return xfer_call(self, ferry_xfer_cancel);
}

static PyObject *xfer_release(PyObject *self, PyObject *unused)
{
    xfer_object *x = (xfer_object *)self;
    ferry_xfer_t *fx = x->fx;

    (void)unused;
    if (!fx)
        Py_RETURN_NONE;
    if (x->busy > 0)
        return ferry__py_raise(FERRY_ERR_BUSY, "release: another thread is inside a call "
                                               "on this request");
    x->fx = NULL;
    FERRY_PY_BEGIN(x->agent->core);
    ferry_xfer_release(fx);
    FERRY_PY_END(x->agent->core);
    ready_forget(x);
    Py_RETURN_NONE;
}

static PyObject *xfer_set_notify(PyObject *self, PyObject *msg)
{
    xfer_object *x = (xfer_object *)self;
    ferry__py_msg_t m;
    ferry_status_t st;

    if (xfer_check(x) || ferry__py_msg(msg, "set_notify", &m))
        return NULL;
    x->busy++;
    FERRY_PY_BEGIN(x->agent->core);
    st = ferry_xfer_set_notif(x->fx, m.buf, m.len);
    FERRY_PY_END(x->agent->core);
    x->busy--;
    ferry__py_msg_clear(&m);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *stream_call(PyObject *self, PyObject *stream, int wait)
{
    xfer_object *x = (xfer_object *)self;
    PyObject *h = NULL;
    void *ptr;
    ferry_status_t st;

    if (xfer_check(x))
        return NULL;
    /* torch.cuda.Stream has cuda_stream, CuPy's streams ptr; else an int. */
    if (PyObject_HasAttrString(stream, "cuda_stream"))
        h = PyObject_GetAttrString(stream, "cuda_stream");
    else if (PyObject_HasAttrString(stream, "ptr"))
        h = PyObject_GetAttrString(stream, "ptr");
    else {
        Py_INCREF(stream);
        h = stream;
    }
    if (!h)
        return NULL;
    if (h == Py_None)
        ptr = NULL;
    else {
        ptr = PyLong_AsVoidPtr(h);
        if (!ptr && PyErr_Occurred()) {
            Py_DECREF(h);
            return NULL;
        }
    }
    Py_DECREF(h);
    /* torch's default stream says 0: CUDA's NULL stream, the legacy default
     * stream, which the library takes by its explicit handle only. */
    if (!ptr)
        ptr = CU_STREAM_LEGACY_;
    x->busy++;
    FERRY_PY_BEGIN(x->agent->core);
    st = wait ? ferry_xfer_wait_on_stream(x->fx, ptr) : ferry_xfer_post_on_stream(x->fx, ptr);
    FERRY_PY_END(x->agent->core);
    x->busy--;
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *xfer_post_on_stream(PyObject *self, PyObject *stream)
{
    return stream_call(self, stream, 0);
}

static PyObject *xfer_wait_on_stream(PyObject *self, PyObject *stream)
{
    return stream_call(self, stream, 1);
}

static PyObject *xfer_aio(PyObject *self, PyObject *args, PyObject *kwargs, const char *name)
{
    static char *kw[] = {"timeout", NULL};
    PyObject *timeout = Py_None;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O", kw, &timeout))
        return NULL;
    return ferry__py_aio_call(name, Py_BuildValue("(OO)", self, timeout));
}

static PyObject *xfer_wait_async(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return xfer_aio(self, args, kwargs, "wait_async");
}

static PyObject *xfer_post_async(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return xfer_aio(self, args, kwargs, "post_async");
}

static PyObject *xfer_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *xfer_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return xfer_release(self, NULL);
}

static PyObject *xfer_get_agent(PyObject *self, void *closure)
{
    (void)closure;
    Py_INCREF((PyObject *)((xfer_object *)self)->agent);
    return (PyObject *)((xfer_object *)self)->agent;
}

static PyObject *xfer_get_peer(PyObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(((xfer_object *)self)->peer);
    return ((xfer_object *)self)->peer;
}

static PyObject *xfer_get_user_data(PyObject *self, void *closure)
{
    PyObject *u = ((xfer_object *)self)->user_data;

    (void)closure;
    u = u ? u : Py_None;
    Py_INCREF(u);
    return u;
}

static PyObject *xfer_get_count(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(((xfer_object *)self)->count);
}

static PyObject *xfer_get_op(PyObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(((xfer_object *)self)->op == FERRY_OP_READ ? "read" : "write");
}

static PyObject *xfer_get_released(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((xfer_object *)self)->fx == NULL);
}

static PyObject *xfer_repr(PyObject *self)
{
    xfer_object *x = (xfer_object *)self;

    return PyUnicode_FromFormat("<ferry.Xfer %s of %zd descriptor(s) with %R%s>",
                                x->op == FERRY_OP_READ ? "read" : "write", x->count, x->peer,
                                x->fx ? "" : " released");
}

static PyMethodDef xfer_methods[] = {
    {"post", xfer_post, METH_NOARGS,
     "post() -> bool\n\nStarts the transfer (ferry_xfer_post): True if it completed "
     "at once, False if it is in flight (then test, wait or await it). Raises "
     "ferry.Busy if the previous post is still in flight. Releases the GIL."},
    {"test", xfer_test, METH_NOARGS,
     "test() -> bool\n\nMakes progress without blocking (ferry_xfer_test): True once "
     "the last post finished, False while in flight; raises its error "
     "(ferry.PeerLost, ferry.Canceled, ferry.Timeout, ...) if it failed."},
    {"wait", (PyCFunction)(void (*)(void))xfer_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> None\n\nWaits for the last post to finish "
     "(ferry_xfer_wait), sleeping after a short poll, with the GIL released. "
     "timeout in seconds, None for no limit; raises ferry.Timeout when it runs out "
     "(the request stays in flight) and the transfer's error if it failed."},
    {"cancel", xfer_cancel, METH_NOARGS,
     "cancel() -> bool\n\nStops a request in flight (ferry_xfer_cancel; see ferry.h: "
     "it ends every request in flight to the same peer). True once nothing touches "
     "its memory any more; waits then raise ferry.Canceled."},
    {"release", xfer_release, METH_NOARGS,
     "release() -> None\n\nFrees the request (ferry_xfer_release), canceling it if in "
     "flight. Also done when the object is garbage-collected or its agent closed."},
    {"set_notify", xfer_set_notify, METH_O,
     "set_notify(msg) -> None\n\nReplaces the notification of a request prepared with "
     "notify= (ferry_xfer_set_notif): the next posts send msg (bytes-like or str, "
     "0 to 4096 bytes) to the peer. Raises ferry.InvalidArgument for a request "
     "prepared without a message or a message over 4096 bytes, ferry.Busy while a "
     "post is in flight."},
    {"post_on_stream", xfer_post_on_stream, METH_O,
     "post_on_stream(stream) -> None\n\nEnqueues the start of the transfer on a CUDA "
     "stream (ferry_xfer_post_on_stream): a torch.cuda.Stream, a CuPy stream or a "
     "raw CUstream handle (int); 0 or None is the legacy default stream."},
    {"wait_on_stream", xfer_wait_on_stream, METH_O,
     "wait_on_stream(stream) -> None\n\nMakes the stream's later work wait for the "
     "transfer (ferry_xfer_wait_on_stream)."},
    {"wait_async", (PyCFunction)(void (*)(void))xfer_wait_async,
     METH_VARARGS | METH_KEYWORDS,
     "wait_async(timeout=None) -> Awaitable[None]\n\nAwaits the end of the last post "
     "in the running asyncio loop, which sleeps on the agent's fd (no thread, no "
     "polling). Raises as wait() does."},
    {"post_async", (PyCFunction)(void (*)(void))xfer_post_async,
     METH_VARARGS | METH_KEYWORDS,
     "post_async(timeout=None) -> Awaitable[None]\n\nPosts and awaits the end of the "
     "transfer (post() then wait_async())."},
    {"__enter__", xfer_enter, METH_NOARGS, "Returns the request itself."},
    {"__exit__", xfer_exit, METH_VARARGS, "Releases the request."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef xfer_getset[] = {
    {"agent", xfer_get_agent, NULL, "The agent that prepared it.", NULL},
    {"peer", xfer_get_peer, NULL, "The peer on the other side.", NULL},
    {"user_data", xfer_get_user_data, NULL, "The user_data given to prepare.", NULL},
    {"count", xfer_get_count, NULL, "The number of descriptor pairs.", NULL},
    {"op", xfer_get_op, NULL, "'read' or 'write'.", NULL},
    {"released", xfer_get_released, NULL, "True once released.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef xfer_members[] = {
    {"_future", T_OBJECT, offsetof(xfer_object, future), 0, "Internal: asyncio future."},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(xfer_object, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot xfer_slots[] = {
    {Py_tp_doc, "A prepared READ or WRITE request (Agent.prepare): validated once, "
                "posted any number of times. A context manager: leaving the block "
                "releases it."},
    {Py_tp_dealloc, xfer_dealloc},
    {Py_tp_methods, xfer_methods},
    {Py_tp_getset, xfer_getset},
    {Py_tp_members, xfer_members},
    {Py_tp_repr, xfer_repr},
    {0, NULL}};

PyType_Spec ferry__py_xfer_spec = {"ferry.Xfer", sizeof(xfer_object), 0, Py_TPFLAGS_DEFAULT,
                                   xfer_slots};

static int parse_op(PyObject *obj, ferry_xfer_op_t *op)
{
    if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8AndSize(obj, NULL);

        if (!s)
            return -1;
        if (!strcmp(s, "write") || !strcmp(s, "WRITE"))
            *op = FERRY_OP_WRITE;
        else if (!strcmp(s, "read") || !strcmp(s, "READ"))
            *op = FERRY_OP_READ;
        else
            return ferry__py_invalid("op is 'read' or 'write', not '%s'", s), -1;
        return 0;
    }
    long v = PyLong_AsLong(obj);

    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v != FERRY_OP_WRITE && v != FERRY_OP_READ)
        return ferry__py_invalid("op is 'read' or 'write', not %ld", v), -1;
    *op = (ferry_xfer_op_t)v;
    return 0;
}

static int parse_backend(PyObject *obj, ferry_xfer_params_t *p)
{
    const char *s;

    if (obj == Py_None)
        return 0;
    p->field_mask |= FERRY_XFER_PARAM_BACKEND;
    if (PyLong_Check(obj)) {
        p->backend = (ferry_backend_t)PyLong_AsLong(obj);
        return PyErr_Occurred() ? -1 : 0;
    }
    s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8AndSize(obj, NULL) : NULL;
    if (s && !strcmp(s, "ucx"))
        p->backend = FERRY_BACKEND_UCX;
    else if (s && !strcmp(s, "cuda_ipc"))
        p->backend = FERRY_BACKEND_CUDA_IPC;
    else if (s && !strcmp(s, "staged"))
        p->backend = FERRY_BACKEND_STAGED;
    else if (s && !strcmp(s, "any"))
        p->backend = FERRY_BACKEND_ANY;
    else
        return ferry__py_invalid("backend is None, 'any', 'ucx', 'cuda_ipc' or "
                                 "'staged'"), -1;
    return 0;
}

typedef struct desc_list {
    ferry_desc_t *descs;
    size_t n;
    Py_buffer view;
    int has_view, owned;
} desc_list_t;

static void desc_list_clear(desc_list_t *l)
{
    ferry__py_descs_free(l->descs, l->owned);
    if (l->has_view)
        PyBuffer_Release(&l->view);
    memset(l, 0, sizeof(*l));
}

PyObject *ferry__py_xfer_prepare(agent_object *self, PyObject *args, PyObject *kwargs);

PyObject *ferry__py_xfer_prepare(agent_object *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"op", "local", "peer", "remote", "notify", "user_data", "backend",
                         NULL};
    PyObject *opo, *local, *peer, *remote, *notify = Py_None, *user_data = Py_None,
                                               *backend = Py_None;
    desc_list_t l = {0}, r = {0};
    ferry_xfer_params_t p = {0};
    ferry__py_msg_t m = {0};
    ferry_xfer_op_t op;
    ferry_status_t st;
    xfer_object *x;
    peer_object *po;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OOO:prepare", kw, &opo, &local, &peer,
                                     &remote, &notify, &user_data, &backend))
        return NULL;
    if (ferry__py_agent_check(self) || parse_op(opo, &op) || parse_backend(backend, &p))
        return NULL;
    if (!PyObject_TypeCheck(peer, (PyTypeObject *)ferry__py_peer_type))
        return PyErr_Format(PyExc_TypeError, "prepare: peer must be a ferry.Peer");
    po = (peer_object *)peer;
    if (!po->fp || po->agent != self)
        return ferry__py_invalid(po->fp ? "prepare: the peer belongs to another agent"
                                        : "prepare: the peer was forgotten");
    if (notify != Py_None) {
        if (ferry__py_msg(notify, "prepare", &m))
            return NULL;
        p.field_mask |= FERRY_XFER_PARAM_NOTIF;
        p.notif = m.buf;
        p.notif_len = m.len;
    }
    if (ferry__py_descs(local, "local", &l.descs, &l.n, &l.view, &l.has_view, &l.owned) ||
        ferry__py_descs(remote, "remote", &r.descs, &r.n, &r.view, &r.has_view, &r.owned)) {
        desc_list_clear(&l);
        ferry__py_msg_clear(&m);
        return NULL;
    }
    x = PyObject_New(xfer_object, (PyTypeObject *)ferry__py_xfer_type);
    if (!x)
        goto fail;
    x->fx = NULL;
    x->next = x->prev = NULL;
    x->future = NULL;
    x->weakrefs = NULL;
    x->busy = 0;
    x->op = op;
    x->count = (Py_ssize_t)l.n;
    Py_INCREF((PyObject *)self);
    x->agent = self;
    Py_INCREF(peer);
    x->peer = peer;
    x->user_data = NULL;
    if (user_data != Py_None) {
        Py_INCREF(user_data);
        x->user_data = user_data;
    }
    xfer_link(x);
    p.field_mask |= FERRY_XFER_PARAM_USER_DATA;
    p.user_data = x;
    FERRY_PY_BEGIN(self->core);
    st = ferry_xfer_prepare(self->core->fa, op, l.descs, l.n, po->fp, r.descs, r.n, &p, &x->fx);
    FERRY_PY_END(self->core);
    desc_list_clear(&l);
    desc_list_clear(&r);
    ferry__py_msg_clear(&m);
    if (st != FERRY_OK) {
        Py_DECREF(x);
        return ferry__py_raise(st, NULL);
    }
    return (PyObject *)x;
fail:
    desc_list_clear(&l);
    desc_list_clear(&r);
    ferry__py_msg_clear(&m);
    return NULL;
}
