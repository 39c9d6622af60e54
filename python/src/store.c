/* SPDX-License-Identifier: Apache-2.0 */
/*
 * store.c: the Store (a client of PyTorch's c10d TCPStore protocol,
 * ferry_store_connect) and StoreServer (the embedded server,
 * ferry_store_server_start) types. Keys are str (UTF-8) or bytes; values are
 * any bytes-like object, or str; results are bytes. Every call releases the
 * GIL while it talks to the server.
 */
#include "ferry_py.h"

#include <string.h>

typedef struct store_object {
    PyObject_HEAD
    ferry_store_t *fs;
    long busy;
} store_object;

typedef struct server_object {
    PyObject_HEAD
    ferry_store_server_t *srv;
    PyObject *host;
} server_object;

/* Runs expr, which sets st, with the GIL released and the call counted. */
#define STORE_CALL(s, expr)                                                    \
    do {                                                                       \
        (s)->busy++;                                                           \
        Py_BEGIN_ALLOW_THREADS                                                 \
        st = (expr);                                                           \
        Py_END_ALLOW_THREADS                                                   \
        (s)->busy--;                                                           \
    } while (0)

static int store_check(store_object *s)
{
    if (!s->fs) {
        ferry__py_invalid("the store is closed");
        return -1;
    }
    return 0;
}

/* A key as a C string, a new bytes object in *hold. */
static const char *key_of(PyObject *k, PyObject **hold)
{
    const char *s;
    Py_ssize_t n;

    if (PyUnicode_Check(k))
        *hold = PyUnicode_AsUTF8String(k);
    else if (PyBytes_Check(k)) {
        Py_INCREF(k);
        *hold = k;
    } else {
        PyErr_SetString(PyExc_TypeError, "a store key is str or bytes");
        return NULL;
    }
    if (!*hold || PyBytes_AsStringAndSize(*hold, (char **)&s, &n) < 0)
        return NULL;
    if ((Py_ssize_t)strlen(s) != n) {
        Py_CLEAR(*hold);
        ferry__py_invalid("a store key may not hold a NUL byte");
        return NULL;
    }
    return s;
}

/* A value's bytes: str is UTF-8; anything else through the buffer protocol. */
static int value_of(PyObject *v, Py_buffer *view, PyObject **hold)
{
    *hold = NULL;
    if (PyUnicode_Check(v)) {
        *hold = PyUnicode_AsUTF8String(v);
        if (!*hold)
            return -1;
        v = *hold;
    }
    if (PyObject_GetBuffer(v, view, PyBUF_SIMPLE) < 0) {
        Py_CLEAR(*hold);
        return -1;
    }
    return 0;
}

static void value_done(Py_buffer *view, PyObject *hold)
{
    PyBuffer_Release(view);
    Py_XDECREF(hold);
}

/* keys: a sequence of str/bytes to a C array (free both with keys_free). */
typedef struct keys {
    const char **v;
    PyObject **hold;
    Py_ssize_t n;
} keys_t;

static void keys_free(keys_t *k)
{
    for (Py_ssize_t i = 0; i < k->n; i++)
        Py_XDECREF(k->hold[i]);
    PyMem_Free(k->hold);
    PyMem_Free((void *)k->v);
}

static int keys_of(PyObject *seq, keys_t *k)
{
    PyObject *list = PySequence_List(seq);

    memset(k, 0, sizeof(*k));
    if (!list)
        return -1;
    if (PyUnicode_Check(seq) || PyBytes_Check(seq)) {
        Py_DECREF(list);
        PyErr_SetString(PyExc_TypeError, "keys: a list of str or bytes, not one key");
        return -1;
    }
    k->n = PyList_Size(list);
    k->v = PyMem_Calloc((size_t)k->n + 1, sizeof(*k->v));
    k->hold = PyMem_Calloc((size_t)k->n + 1, sizeof(*k->hold));
    if (!k->v || !k->hold) {
        Py_DECREF(list);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < k->n; i++)
        if (!(k->v[i] = key_of(PyList_GetItem(list, i), &k->hold[i]))) {
            Py_DECREF(list);
            keys_free(k);
            return -1;
        }
    Py_DECREF(list);
    return 0;
}

static PyObject *store_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"url", "timeout", NULL};
    const char *url;
    PyObject *timeout = Py_None;
    ferry_store_params_t p = {0};
    ferry_store_t *fs;
    ferry_status_t st;
    store_object *s;
    int64_t ns;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O:Store", kw, &url, &timeout))
        return NULL;
    if (timeout != Py_None) {
        if (ferry__py_timeout(timeout, &ns))
            return NULL;
        p.field_mask = FERRY_STORE_PARAM_TIMEOUT;
        p.timeout_ns = ns < 0 ? UINT64_MAX / 2 : (uint64_t)ns;
    }
    Py_BEGIN_ALLOW_THREADS
    st = ferry_store_connect(url, &p, &fs);
    Py_END_ALLOW_THREADS
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    s = (store_object *)PyType_GenericAlloc(type, 0);
    if (!s) {
        ferry_store_close(fs);
        return NULL;
    }
    s->fs = fs;
    return (PyObject *)s;
}

static PyObject *store_close(PyObject *self, PyObject *unused)
{
    store_object *s = (store_object *)self;

    (void)unused;
    if (s->busy > 0)
        return ferry__py_raise(FERRY_ERR_BUSY, "the store is in use by another thread");
    ferry_store_close(s->fs);
    s->fs = NULL;
    Py_RETURN_NONE;
}

static void store_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    ferry_store_close(((store_object *)self)->fs);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

/* set and append: a key and a value to one call. */
static PyObject *store_put(PyObject *self, PyObject *args, int append)
{
    store_object *s = (store_object *)self;
    PyObject *k, *v, *kh, *vh;
    ferry_status_t st;
    const char *key;
    Py_buffer view;

    if (!PyArg_ParseTuple(args, append ? "OO:append" : "OO:set", &k, &v) || store_check(s))
        return NULL;
    if (!(key = key_of(k, &kh)))
        return NULL;
    if (value_of(v, &view, &vh)) {
        Py_DECREF(kh);
        return NULL;
    }
    STORE_CALL(s, append ? ferry_store_append(s->fs, key, view.buf, (size_t)view.len)
                         : ferry_store_set(s->fs, key, view.buf, (size_t)view.len));
    value_done(&view, vh);
    Py_DECREF(kh);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *store_set(PyObject *self, PyObject *args)
{
    return store_put(self, args, 0);
}

static PyObject *store_append(PyObject *self, PyObject *args)
{
    return store_put(self, args, 1);
}

static PyObject *take_value(void *v, size_t len)
{
    PyObject *b = PyBytes_FromStringAndSize(v, (Py_ssize_t)len);

    ferry_store_free(v);
    return b;
}

static PyObject *store_get(PyObject *self, PyObject *k)
{
    store_object *s = (store_object *)self;
    PyObject *kh;
    ferry_status_t st;
    const char *key;
    void *v;
    size_t len;

    if (store_check(s) || !(key = key_of(k, &kh)))
        return NULL;
    STORE_CALL(s, ferry_store_get(s->fs, key, &v, &len));
    Py_DECREF(kh);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return take_value(v, len);
}

static PyObject *store_add(PyObject *self, PyObject *args)
{
    store_object *s = (store_object *)self;
    PyObject *k, *kh;
    long long delta;
    int64_t out;
    ferry_status_t st;
    const char *key;

    if (!PyArg_ParseTuple(args, "OL:add", &k, &delta) || store_check(s))
        return NULL;
    if (!(key = key_of(k, &kh)))
        return NULL;
    STORE_CALL(s, ferry_store_add(s->fs, key, delta, &out));
    Py_DECREF(kh);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyLong_FromLongLong(out);
}

static PyObject *store_check_keys(PyObject *self, PyObject *seq)
{
    store_object *s = (store_object *)self;
    ferry_status_t st;
    keys_t k;
    int ready;

    if (store_check(s) || keys_of(seq, &k))
        return NULL;
    STORE_CALL(s, ferry_store_check(s->fs, k.v, (size_t)k.n, &ready));
    keys_free(&k);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyBool_FromLong(ready);
}

static PyObject *store_wait(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"keys", "timeout", NULL};
    store_object *s = (store_object *)self;
    PyObject *seq, *timeout = Py_None;
    ferry_status_t st;
    int64_t ns;
    keys_t k;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:wait", kw, &seq, &timeout) ||
        store_check(s) || ferry__py_timeout(timeout, &ns) || keys_of(seq, &k))
        return NULL;
    STORE_CALL(s, ferry_store_wait(s->fs, k.v, (size_t)k.n, ns));
    keys_free(&k);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *store_compare_set(PyObject *self, PyObject *args)
{
    store_object *s = (store_object *)self;
    PyObject *k, *e, *d, *kh, *eh, *dh;
    Py_buffer ev, dv;
    ferry_status_t st;
    const char *key;
    void *v;
    size_t len;

    if (!PyArg_ParseTuple(args, "OOO:compare_set", &k, &e, &d) || store_check(s))
        return NULL;
    if (!(key = key_of(k, &kh)))
        return NULL;
    if (value_of(e, &ev, &eh)) {
        Py_DECREF(kh);
        return NULL;
    }
    if (value_of(d, &dv, &dh)) {
        value_done(&ev, eh);
        Py_DECREF(kh);
        return NULL;
    }
    STORE_CALL(s, ferry_store_compare_set(s->fs, key, ev.buf, (size_t)ev.len, dv.buf,
                                          (size_t)dv.len, &v, &len));
    value_done(&ev, eh);
    value_done(&dv, dh);
    Py_DECREF(kh);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return take_value(v, len);
}

static PyObject *store_delete_key(PyObject *self, PyObject *k)
{
    store_object *s = (store_object *)self;
    PyObject *kh;
    ferry_status_t st;
    const char *key;
    int deleted;

    if (store_check(s) || !(key = key_of(k, &kh)))
        return NULL;
    STORE_CALL(s, ferry_store_delete_key(s->fs, key, &deleted));
    Py_DECREF(kh);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyBool_FromLong(deleted);
}

static PyObject *store_num_keys(PyObject *self, PyObject *unused)
{
    store_object *s = (store_object *)self;
    ferry_status_t st;
    int64_t n;

    (void)unused;
    if (store_check(s))
        return NULL;
    STORE_CALL(s, ferry_store_num_keys(s->fs, &n));
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return PyLong_FromLongLong(n);
}

static PyObject *store_ping(PyObject *self, PyObject *unused)
{
    store_object *s = (store_object *)self;
    ferry_status_t st;

    (void)unused;
    if (store_check(s))
        return NULL;
    STORE_CALL(s, ferry_store_ping(s->fs));
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *store_multi_get(PyObject *self, PyObject *seq)
{
    store_object *s = (store_object *)self;
    ferry_status_t st;
    void **vals;
    size_t *lens;
    PyObject *list;
    keys_t k;

    if (store_check(s) || keys_of(seq, &k))
        return NULL;
    vals = PyMem_Calloc((size_t)k.n + 1, sizeof(*vals));
    lens = PyMem_Calloc((size_t)k.n + 1, sizeof(*lens));
    if (!vals || !lens) {
        PyMem_Free(vals);
        PyMem_Free(lens);
        keys_free(&k);
        return PyErr_NoMemory();
    }
    STORE_CALL(s, ferry_store_multi_get(s->fs, k.v, (size_t)k.n, vals, lens));
    list = st == FERRY_OK ? PyList_New(k.n) : NULL;
    for (Py_ssize_t i = 0; st == FERRY_OK && i < k.n; i++) {
        PyObject *b = take_value(vals[i], lens[i]);

        if (list && b)
            PyList_SetItem(list, i, b);
        else
            Py_XDECREF(b);
    }
    PyMem_Free(vals);
    PyMem_Free(lens);
    keys_free(&k);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    return list;
}

static PyObject *store_multi_set(PyObject *self, PyObject *args)
{
    store_object *s = (store_object *)self;
    PyObject *ks, *vs, *vlist, **holds = NULL;
    Py_buffer *views = NULL;
    const void **vals = NULL;
    size_t *lens = NULL;
    ferry_status_t st = FERRY_OK;
    Py_ssize_t done = 0;
    keys_t k;

    if (!PyArg_ParseTuple(args, "OO:multi_set", &ks, &vs) || store_check(s) ||
        keys_of(ks, &k))
        return NULL;
    vlist = PySequence_List(vs);
    if (!vlist)
        goto out;
    if (PyList_Size(vlist) != k.n) {
        ferry__py_invalid("multi_set: %zd keys but %zd values", k.n, PyList_Size(vlist));
        goto out;
    }
    views = PyMem_Calloc((size_t)k.n + 1, sizeof(*views));
    holds = PyMem_Calloc((size_t)k.n + 1, sizeof(*holds));
    vals = PyMem_Calloc((size_t)k.n + 1, sizeof(*vals));
    lens = PyMem_Calloc((size_t)k.n + 1, sizeof(*lens));
    if (!views || !holds || !vals || !lens) {
        PyErr_NoMemory();
        goto out;
    }
    for (; done < k.n; done++) {
        if (value_of(PyList_GetItem(vlist, done), &views[done], &holds[done]))
            goto out;
        vals[done] = views[done].buf;
        lens[done] = (size_t)views[done].len;
    }
    STORE_CALL(s, ferry_store_multi_set(s->fs, k.v, vals, lens, (size_t)k.n));
    if (st != FERRY_OK)
        ferry__py_raise(st, NULL);
out:
    for (Py_ssize_t i = 0; i < done; i++)
        value_done(&views[i], holds[i]);
    PyMem_Free(views);
    PyMem_Free(holds);
    PyMem_Free(vals);
    PyMem_Free(lens);
    Py_XDECREF(vlist);
    keys_free(&k);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ctx_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *store_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return store_close(self, NULL);
}

static PyMethodDef store_methods[] = {
    {"set", store_set, METH_VARARGS, "set(key, value) -> None\n\nSets key to value (bytes-like or str)."},
    {"get", store_get, METH_O,
     "get(key) -> bytes\n\nWaits (up to the store's timeout) for key, then returns its value."},
    {"add", store_add, METH_VARARGS,
     "add(key, delta) -> int\n\nAdds delta to the integer at key (missing: 0); returns the sum."},
    {"check", store_check_keys, METH_O,
     "check(keys) -> bool\n\nTrue if every key exists, without waiting."},
    {"wait", (PyCFunction)(void (*)(void))store_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(keys, timeout=None) -> None\n\nWaits until every key exists; ferry.Timeout if "
     "the time runs out."},
    {"compare_set", store_compare_set, METH_VARARGS,
     "compare_set(key, expected, desired) -> bytes\n\nSets key to desired if it holds "
     "expected (a missing key counts when expected is empty); returns the value after."},
    {"delete_key", store_delete_key, METH_O,
     "delete_key(key) -> bool\n\nDeletes key; True if it existed."},
    {"num_keys", store_num_keys, METH_NOARGS, "num_keys() -> int\n\nThe number of keys."},
    {"multi_get", store_multi_get, METH_O,
     "multi_get(keys) -> list[bytes]\n\nWaits for every key, then fetches them in one round trip."},
    {"multi_set", store_multi_set, METH_VARARGS,
     "multi_set(keys, values) -> None\n\nSets the keys in one message, in order."},
    {"append", store_append, METH_VARARGS,
     "append(key, value) -> None\n\nAppends value to key's value, creating it if missing."},
    {"ping", store_ping, METH_NOARGS, "ping() -> None\n\nChecks that the server answers."},
    {"close", store_close, METH_NOARGS, "close() -> None\n\nCloses the connection."},
    {"__enter__", ctx_enter, METH_NOARGS, "Returns the store itself."},
    {"__exit__", store_exit, METH_VARARGS, "Closes the connection."},
    {NULL, NULL, 0, NULL}};

static PyType_Slot store_slots[] = {
    {Py_tp_doc,
     "Store(url, timeout=None)\n\nA client of a c10d TCPStore-compatible store "
     "(ferry_store_connect): ferry's server, ferry-store, or a torchrun job's "
     "torch.distributed.TCPStore (PyTorch 2.3 and later). url is 'tcp://host:port'; "
     "timeout (seconds, default 300) bounds connecting and every call without its "
     "own. A torch client prefixes its keys with '/': its key 'k' is '/k' here."},
    {Py_tp_new, store_new},
    {Py_tp_dealloc, store_dealloc},
    {Py_tp_methods, store_methods},
    {0, NULL}};

PyType_Spec ferry__py_store_spec = {"ferry.Store", sizeof(store_object), 0, Py_TPFLAGS_DEFAULT,
                                    store_slots};

/* ------------------------------------------------------------------------ */
/* StoreServer                                                              */
/* ------------------------------------------------------------------------ */

static PyObject *server_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"bind", "port", NULL};
    const char *bind = "127.0.0.1";
    int port = 0;
    ferry_store_server_params_t p = {0};
    ferry_store_server_t *srv;
    ferry_status_t st;
    server_object *s;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|si:StoreServer", kw, &bind, &port))
        return NULL;
    if (port < 0 || port > 65535)
        return ferry__py_invalid("port %d out of range", port);
    p.field_mask = FERRY_STORE_SERVER_PARAM_PORT;
    p.port = (uint16_t)port;
    Py_BEGIN_ALLOW_THREADS
    st = ferry_store_server_start(bind, &p, &srv);
    Py_END_ALLOW_THREADS
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    s = (server_object *)PyType_GenericAlloc(type, 0);
    if (!s || !(s->host = PyUnicode_FromString(bind))) {
        Py_XDECREF((PyObject *)s);
        ferry_store_server_stop(srv);
        return NULL;
    }
    s->srv = srv;
    return (PyObject *)s;
}

static PyObject *server_stop(PyObject *self, PyObject *unused)
{
    server_object *s = (server_object *)self;
    ferry_store_server_t *srv = s->srv;

    (void)unused;
    s->srv = NULL;
    Py_BEGIN_ALLOW_THREADS
    ferry_store_server_stop(srv);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void server_dealloc(PyObject *self)
{
    server_object *s = (server_object *)self;
    PyTypeObject *tp = Py_TYPE(self);

    ferry_store_server_stop(s->srv);
    Py_XDECREF(s->host);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyObject *server_get_port(PyObject *self, void *closure)
{
    server_object *s = (server_object *)self;

    (void)closure;
    if (!s->srv)
        return ferry__py_invalid("the server was stopped");
    return PyLong_FromLong(ferry_store_server_port(s->srv));
}

static PyObject *server_get_url(PyObject *self, void *closure)
{
    server_object *s = (server_object *)self;
    const char *h;

    (void)closure;
    if (!s->srv)
        return ferry__py_invalid("the server was stopped");
    h = PyUnicode_AsUTF8AndSize(s->host, NULL);
    if (!h)
        return NULL;
    return PyUnicode_FromFormat(strchr(h, ':') ? "tcp://[%s]:%d" : "tcp://%s:%d", h,
                                (int)ferry_store_server_port(s->srv));
}

static PyObject *server_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return server_stop(self, NULL);
}

static PyMethodDef server_methods[] = {
    {"stop", server_stop, METH_NOARGS,
     "stop() -> None\n\nStops the server; its clients' pending calls fail with ferry.PeerLost."},
    {"close", server_stop, METH_NOARGS, "close() -> None\n\nThe same as stop()."},
    {"__enter__", ctx_enter, METH_NOARGS, "Returns the server itself."},
    {"__exit__", server_exit, METH_VARARGS, "Stops the server."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef server_getset[] = {
    {"port", server_get_port, NULL, "The TCP port it listens on.", NULL},
    {"url", server_get_url, NULL, "'tcp://host:port', for Store() and FERRY_STORE.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot server_slots[] = {
    {Py_tp_doc, "StoreServer(bind='127.0.0.1', port=0)\n\nAn embedded store server "
                "(ferry_store_server_start) on its own thread, speaking c10d's TCPStore "
                "protocol, so torch.distributed.TCPStore clients can use it too. port 0 "
                "picks a free port (see .port). A context manager: leaving stops it."},
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL}};

PyType_Spec ferry__py_server_spec = {"ferry.StoreServer", sizeof(server_object), 0,
                                     Py_TPFLAGS_DEFAULT, server_slots};
