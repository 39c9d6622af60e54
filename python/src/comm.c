/* SPDX-License-Identifier: Apache-2.0 */
/*
 * comm.c: the Comm type, a communicator (ferry_comm_create): this process's
 * rank in a job started by ferry-run, torchrun, mpirun or srun, with
 * barrier, allgather, abort and the collective metadata exchange that loads
 * every rank's blob into an Agent. Collectives release the GIL; abort may
 * be called from another thread while one waits.
 */
#include "ferry_py.h"

typedef struct comm_object {
    PyObject_HEAD
    ferry_comm_t *fc;
    PyObject *agent; /* the agent of the last exchange, or NULL */
    long busy;
} comm_object;

static int comm_check(comm_object *c)
{
    if (!c->fc) {
        ferry__py_invalid("the communicator is closed");
        return -1;
    }
    return 0;
}

static PyObject *comm_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"rank", "size", "store", "timeout", "prefix", "liveness", NULL};
    PyObject *rank = Py_None, *size = Py_None, *timeout = Py_None, *liveness = Py_None;
    const char *store = NULL, *prefix = NULL;
    ferry_comm_params_t p = {0};
    ferry_comm_t *fc;
    ferry_status_t st;
    comm_object *c;
    int64_t ns;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOzOzO:Comm", kw, &rank, &size, &store,
                                     &timeout, &prefix, &liveness))
        return NULL;
    if (rank != Py_None) {
        p.field_mask |= FERRY_COMM_PARAM_RANK;
        p.rank = (int)PyLong_AsLong(rank);
    }
    if (size != Py_None) {
        p.field_mask |= FERRY_COMM_PARAM_SIZE;
        p.size = (int)PyLong_AsLong(size);
    }
    if (PyErr_Occurred())
        return NULL;
    if (store) {
        p.field_mask |= FERRY_COMM_PARAM_STORE_URL;
        p.store_url = store;
    }
    if (prefix) {
        p.field_mask |= FERRY_COMM_PARAM_PREFIX;
        p.prefix = prefix;
    }
    if (timeout != Py_None) {
        if (ferry__py_timeout(timeout, &ns))
            return NULL;
        p.field_mask |= FERRY_COMM_PARAM_TIMEOUT;
        p.timeout_ns = ns < 0 ? UINT64_MAX / 2 : (uint64_t)ns;
    }
    if (liveness != Py_None) {
        if (ferry__py_timeout(liveness, &ns))
            return NULL;
        p.field_mask |= FERRY_COMM_PARAM_LIVENESS;
        p.liveness_ns = ns < 0 ? UINT64_MAX / 2 : (uint64_t)ns;
    }
    Py_BEGIN_ALLOW_THREADS
    st = ferry_comm_create(&p, &fc);
    Py_END_ALLOW_THREADS
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    c = (comm_object *)PyType_GenericAlloc(type, 0);
    if (!c) {
        ferry_comm_destroy(fc);
        return NULL;
    }
    c->fc = fc;
    return (PyObject *)c;
}

static PyObject *comm_close(PyObject *self, PyObject *unused)
{
    comm_object *c = (comm_object *)self;
    ferry_comm_t *fc = c->fc;

    (void)unused;
    if (c->busy > 0)
        return ferry__py_raise(FERRY_ERR_BUSY, "the communicator is in use by another thread");
    c->fc = NULL;
    Py_BEGIN_ALLOW_THREADS
    ferry_comm_destroy(fc);
    Py_END_ALLOW_THREADS
    Py_CLEAR(c->agent);
    Py_RETURN_NONE;
}

static void comm_dealloc(PyObject *self)
{
    comm_object *c = (comm_object *)self;
    PyTypeObject *tp = Py_TYPE(self);

    if (c->fc) {
        Py_BEGIN_ALLOW_THREADS
        ferry_comm_destroy(c->fc);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(c->agent);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyObject *comm_barrier(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"timeout", NULL};
    comm_object *c = (comm_object *)self;
    PyObject *timeout = Py_None;
    ferry_status_t st;
    int64_t ns;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:barrier", kw, &timeout) ||
        comm_check(c) || ferry__py_timeout(timeout, &ns))
        return NULL;
    c->busy++;
    Py_BEGIN_ALLOW_THREADS
    st = ferry_comm_barrier(c->fc, ns);
    Py_END_ALLOW_THREADS
    c->busy--;
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *comm_allgather(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"data", "timeout", NULL};
    comm_object *c = (comm_object *)self;
    PyObject *data, *timeout = Py_None, *hold = NULL, *list = NULL;
    Py_buffer view;
    ferry_status_t st;
    void **vals;
    size_t *lens;
    int64_t ns;
    int n;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:allgather", kw, &data, &timeout) ||
        comm_check(c) || ferry__py_timeout(timeout, &ns))
        return NULL;
    if (PyUnicode_Check(data)) {
        hold = PyUnicode_AsUTF8String(data);
        if (!hold)
            return NULL;
        data = hold;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        Py_XDECREF(hold);
        return NULL;
    }
    n = ferry_comm_size(c->fc);
    vals = PyMem_Calloc((size_t)n, sizeof(*vals));
    lens = PyMem_Calloc((size_t)n, sizeof(*lens));
    if (!vals || !lens) {
        PyErr_NoMemory();
        goto out;
    }
    c->busy++;
    Py_BEGIN_ALLOW_THREADS
    st = ferry_comm_allgather(c->fc, view.buf, (size_t)view.len, vals, lens, ns);
    Py_END_ALLOW_THREADS
    c->busy--;
    if (st != FERRY_OK) {
        ferry__py_raise(st, NULL);
        goto out;
    }
    list = PyList_New(n);
    for (int i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromStringAndSize(vals[i], (Py_ssize_t)lens[i]);

        ferry_store_free(vals[i]);
        if (list && b)
            PyList_SetItem(list, i, b);
        else {
            Py_XDECREF(b);
            Py_CLEAR(list);
        }
    }
out:
    PyMem_Free(vals);
    PyMem_Free(lens);
    PyBuffer_Release(&view);
    Py_XDECREF(hold);
    return list;
}

static PyObject *comm_abort(PyObject *self, PyObject *args)
{
    comm_object *c = (comm_object *)self;
    const char *reason = NULL;
    ferry_status_t st;

    if (!PyArg_ParseTuple(args, "|z:abort", &reason) || comm_check(c))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = ferry_comm_abort(c->fc, reason);
    Py_END_ALLOW_THREADS
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *comm_exchange(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"agent", "timeout", NULL};
    comm_object *c = (comm_object *)self;
    PyObject *agent, *timeout = Py_None;
    agent_object *a;
    ferry_status_t st;
    int64_t ns;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:exchange", kw, &agent, &timeout) ||
        comm_check(c) || ferry__py_timeout(timeout, &ns))
        return NULL;
    if (!PyObject_TypeCheck(agent, (PyTypeObject *)ferry__py_agent_type))
        return PyErr_Format(PyExc_TypeError, "exchange: agent must be a ferry.Agent");
    a = (agent_object *)agent;
    if (ferry__py_agent_check(a))
        return NULL;
    if (c->agent && c->agent != agent)
        return ferry__py_invalid("exchange: use one agent per communicator");
    c->busy++;
    FERRY_PY_BEGIN(a->core);
    st = ferry_comm_exchange(c->fc, a->core->fa, ns);
    FERRY_PY_END(a->core);
    c->busy--;
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    if (!c->agent) {
        Py_INCREF(agent);
        c->agent = agent;
    }
    Py_RETURN_NONE;
}

static PyObject *comm_peer(PyObject *self, PyObject *arg)
{
    comm_object *c = (comm_object *)self;
    agent_object *a = (agent_object *)c->agent;
    ferry_peer_t *fp;
    long rank = PyLong_AsLong(arg);

    if (rank == -1 && PyErr_Occurred())
        return NULL;
    if (comm_check(c))
        return NULL;
    if (!a)
        return ferry__py_invalid("peer: no exchange yet");
    if (ferry__py_agent_check(a))
        return NULL;
    fp = ferry_comm_peer(c->fc, (int)rank);
    if (!fp)
        return ferry__py_invalid("peer: rank %ld out of range (size %d)", rank,
                                 ferry_comm_size(c->fc));
    return ferry__py_peer_wrap(a, fp);
}

static PyObject *comm_get_rank(PyObject *self, void *closure)
{
    comm_object *c = (comm_object *)self;

    (void)closure;
    if (comm_check(c))
        return NULL;
    return PyLong_FromLong(ferry_comm_rank(c->fc));
}

static PyObject *comm_get_size(PyObject *self, void *closure)
{
    comm_object *c = (comm_object *)self;

    (void)closure;
    if (comm_check(c))
        return NULL;
    return PyLong_FromLong(ferry_comm_size(c->fc));
}

static PyObject *comm_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *comm_exit(PyObject *self, PyObject *args)
{
    (void)args;
    return comm_close(self, NULL);
}

static PyMethodDef comm_methods[] = {
    {"barrier", (PyCFunction)(void (*)(void))comm_barrier, METH_VARARGS | METH_KEYWORDS,
     "barrier(timeout=None) -> None\n\nReturns when every rank has entered "
     "(ferry_comm_barrier); ferry.Aborted if a rank aborted, died or timed out."},
    {"allgather", (PyCFunction)(void (*)(void))comm_allgather, METH_VARARGS | METH_KEYWORDS,
     "allgather(data, timeout=None) -> list[bytes]\n\nGathers one byte string (bytes-like "
     "or str) from every rank, in rank order (ferry_comm_allgather)."},
    {"abort", comm_abort, METH_VARARGS,
     "abort(reason=None) -> None\n\nAborts the job: every rank's collectives raise "
     "ferry.Aborted naming this rank and reason. Any thread, at any time."},
    {"exchange", (PyCFunction)(void (*)(void))comm_exchange, METH_VARARGS | METH_KEYWORDS,
     "exchange(agent, timeout=None) -> None\n\nLoads every rank's metadata blob into "
     "agent (ferry_comm_exchange); call again after registering more memory."},
    {"peer", comm_peer, METH_O,
     "peer(rank) -> Peer\n\nThe Peer of a rank after exchange() (this rank's own: a "
     "loopback peer)."},
    {"close", comm_close, METH_NOARGS,
     "close() -> None\n\nLeaves the job (ferry_comm_destroy). Rank 0, when it hosts the "
     "store, first waits for the others to leave."},
    {"__enter__", comm_enter, METH_NOARGS, "Returns the communicator itself."},
    {"__exit__", comm_exit, METH_VARARGS, "Closes the communicator."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef comm_getset[] = {
    {"rank", comm_get_rank, NULL, "This process's rank.", NULL},
    {"size", comm_get_size, NULL, "The number of ranks.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot comm_slots[] = {
    {Py_tp_doc, "Comm(rank=None, size=None, store=None, timeout=None, prefix=None, "
                "liveness=None)\n\nJoins a job as one rank (ferry_comm_create). What is "
                "not given comes from the environment: FERRY_RANK, FERRY_WORLD_SIZE, "
                "FERRY_STORE (ferry-run), or torchrun's, Open MPI's or Slurm's variables. "
                "timeout and liveness are in seconds. A context manager: leaving closes it."},
    {Py_tp_new, comm_new},
    {Py_tp_dealloc, comm_dealloc},
    {Py_tp_methods, comm_methods},
    {Py_tp_getset, comm_getset},
    {0, NULL}};

PyType_Spec ferry__py_comm_spec = {"ferry.Comm", sizeof(comm_object), 0, Py_TPFLAGS_DEFAULT,
                                   comm_slots};
