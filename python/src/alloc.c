/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc.c: the Allocation type, memory from ferry_mem_alloc() (Agent.alloc)
 * that Python sees as a buffer (host memory: numpy.frombuffer,
 * memoryview), through DLPack (torch.from_dlpack, numpy.from_dlpack) and,
 * for GPU memory, through the CUDA array interface. Every view holds a
 * reference to the Allocation, and the Allocation holds the agent's core, so
 * the memory outlives every view and is freed (ferry_mem_free) after the
 * last one, even if the Agent object was closed meanwhile.
 */
#include "ferry_py.h"

#include <stdlib.h>

typedef struct alloc_object {
    PyObject_HEAD
    core_t *core;
    void *addr;
    Py_ssize_t len;
    ferry_mem_kind_t kind;
    int device;
    Py_ssize_t exports; /* buffer views and DLPack capsules not yet let go */
} alloc_object;

/* DLPack, as in mem.c (the ABI every exporter shares). */
typedef struct {
    void *data;
    int32_t device_type, device_id;
    int32_t ndim;
    uint8_t code, bits;
    uint16_t lanes;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} dl_tensor_t;

typedef struct dl_managed {
    dl_tensor_t t;
    void *manager_ctx;
    void (*deleter)(struct dl_managed *self);
} dl_managed_t;

/* A capsule's managed tensor and the shape it points to, in one block. */
typedef struct dl_export {
    dl_managed_t m;
    int64_t shape[1];
} dl_export_t;

int ferry__py_alloc_desc(PyObject *obj, ferry_desc_t *d)
{
    alloc_object *a = (alloc_object *)obj;

    if (!a->addr)
        return ferry__py_invalid("the allocation was freed"), -1;
    d->addr = (uint64_t)(uintptr_t)a->addr;
    d->len = (uint64_t)a->len;
    d->kind = a->kind;
    d->device = a->device;
    return 0;
}

static void alloc_free_memory(alloc_object *a)
{
    ferry_status_t st;

    if (!a->addr)
        return;
    st = ferry_mem_free(a->core->fa, a->addr);
    if (st != FERRY_OK)
        /* Registrations made from its address remain; the agent's
         * destruction frees it. */
        fprintf(stderr, "ferry: Allocation: %s: %s\n", ferry_status_str(st),
                ferry_last_error());
    a->addr = NULL;
}

static void alloc_dealloc(PyObject *self)
{
    alloc_object *a = (alloc_object *)self;
    PyTypeObject *tp = Py_TYPE(self);

    if (a->core) {
        alloc_free_memory(a);
        ferry__py_core_unref(a->core);
    }
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

PyObject *ferry__py_alloc_new(agent_object *agent, size_t len, ferry_mem_kind_t kind,
                              int device)
{
    alloc_object *a;
    ferry_status_t st;
    void *addr;

    if (ferry__py_agent_check(agent))
        return NULL;
    FERRY_PY_BEGIN(agent->core);
    st = ferry_mem_alloc(agent->core->fa, len, kind, &addr);
    FERRY_PY_END(agent->core);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    a = PyObject_New(alloc_object, (PyTypeObject *)ferry__py_alloc_type);
    if (!a) {
        ferry_mem_free(agent->core->fa, addr);
        return NULL;
    }
    a->core = agent->core;
    a->core->refs++;
    a->addr = addr;
    a->len = (Py_ssize_t)len;
    a->kind = kind;
    a->device = kind == FERRY_MEM_CUDA ? device : 0;
    a->exports = 0;
    return (PyObject *)a;
}

PyObject *ferry__py_alloc_method(agent_object *self, PyObject *args, PyObject *kwargs);

PyObject *ferry__py_alloc_method(agent_object *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"nbytes", "kind", "device", NULL};
    Py_ssize_t n;
    PyObject *kind = NULL;
    ferry_mem_kind_t k = FERRY_MEM_HOST;
    int device = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|Oi:alloc", kw, &n, &kind, &device))
        return NULL;
    if (device < 0)
        return ferry__py_invalid("alloc: device %d out of range", device);
    if (n <= 0)
        return ferry__py_invalid("alloc: nbytes must be at least 1, not %zd", n);
    if (kind) {
        region_t r;
        PyObject *t = Py_BuildValue("(iiO)", 1, 1, kind);

        /* The kind parser of mem.c, through a descriptor tuple. */
        if (!t || ferry__py_region(t, 0, &r)) {
            Py_XDECREF(t);
            return NULL;
        }
        Py_DECREF(t);
        k = r.desc.kind;
    }
    return ferry__py_alloc_new(self, (size_t)n, k, device);
}

static int alloc_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    alloc_object *a = (alloc_object *)self;

    if (!a->addr) {
        PyErr_SetString(PyExc_BufferError, "the allocation was freed");
        return -1;
    }
    if (a->kind != FERRY_MEM_HOST) {
        PyErr_SetString(PyExc_BufferError, "GPU memory has no buffer protocol: use "
                                           "__dlpack__ or __cuda_array_interface__");
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, a->addr, a->len, 0, flags) < 0)
        return -1;
    a->exports++;
    return 0;
}

static void alloc_releasebuffer(PyObject *self, Py_buffer *view)
{
    (void)view;
    ((alloc_object *)self)->exports--;
}

static void dl_deleter(dl_managed_t *m)
{
    PyGILState_STATE g = PyGILState_Ensure();
    alloc_object *a = m->manager_ctx;

    a->exports--;
    Py_DECREF((PyObject *)a);
    free(m);
    PyGILState_Release(g);
}

static void dl_capsule_destructor(PyObject *cap)
{
    /* Consumers rename the capsule "used_dltensor" and call the deleter
     * themselves; one never consumed is deleted here. */
    if (PyCapsule_IsValid(cap, "dltensor")) {
        dl_managed_t *m = PyCapsule_GetPointer(cap, "dltensor");

        if (m && m->deleter)
            m->deleter(m);
    }
}

static PyObject *alloc_dlpack(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *maxv = Py_None, *dev = Py_None, *copy = Py_None, *cap;
    alloc_object *a = (alloc_object *)self;
    dl_export_t *e;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", kw, &stream, &maxv,
                                     &dev, &copy))
        return NULL;
    if (!a->addr)
        return ferry__py_invalid("the allocation was freed");
    /* The memory is written by transfers, not by a stream: there is no
     * stream work to order against. */
    e = calloc(1, sizeof(*e));
    if (!e)
        return PyErr_NoMemory();
    e->shape[0] = a->len;
    e->m.t.data = a->addr;
    e->m.t.device_type = a->kind == FERRY_MEM_CUDA ? 2 : 1;
    e->m.t.device_id = a->kind == FERRY_MEM_CUDA ? a->device : 0;
    e->m.t.ndim = 1;
    e->m.t.code = 1; /* kDLUInt */
    e->m.t.bits = 8;
    e->m.t.lanes = 1;
    e->m.t.shape = e->shape;
    e->m.t.strides = NULL;
    e->m.manager_ctx = a;
    e->m.deleter = dl_deleter;
    Py_INCREF(self);
    a->exports++;
    cap = PyCapsule_New(&e->m, "dltensor", dl_capsule_destructor);
    if (!cap) {
        a->exports--;
        Py_DECREF(self);
        free(e);
    }
    return cap;
}

static PyObject *alloc_dlpack_device(PyObject *self, PyObject *unused)
{
    alloc_object *a = (alloc_object *)self;

    (void)unused;
    return Py_BuildValue("(ii)", a->kind == FERRY_MEM_CUDA ? 2 : 1,
                         a->kind == FERRY_MEM_CUDA ? a->device : 0);
}

static PyObject *alloc_free(PyObject *self, PyObject *unused)
{
    alloc_object *a = (alloc_object *)self;
    ferry_status_t st;

    (void)unused;
    if (!a->addr)
        Py_RETURN_NONE;
    if (a->exports > 0)
        return ferry__py_raise(FERRY_ERR_BUSY, "free: objects still view this allocation "
                                               "(arrays, memoryviews or tensors)");
    st = ferry_mem_free(a->core->fa, a->addr);
    if (st != FERRY_OK)
        return ferry__py_raise(st, NULL);
    a->addr = NULL;
    Py_RETURN_NONE;
}

static PyObject *alloc_get_cai(PyObject *self, void *closure)
{
    alloc_object *a = (alloc_object *)self;

    (void)closure;
    if (a->kind != FERRY_MEM_CUDA || !a->addr) {
        PyErr_SetString(PyExc_AttributeError, "__cuda_array_interface__: not GPU memory");
        return NULL;
    }
    return Py_BuildValue("{s:(n),s:s,s:(KO),s:O,s:i}", "shape", a->len, "typestr", "|u1",
                         "data", (unsigned long long)(uintptr_t)a->addr, Py_False, "strides",
                         Py_None, "version", 3);
}

static PyObject *alloc_get_addr(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong((uintptr_t)((alloc_object *)self)->addr);
}

static PyObject *alloc_get_nbytes(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(((alloc_object *)self)->len);
}

static PyObject *alloc_get_kind(PyObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(((alloc_object *)self)->kind == FERRY_MEM_CUDA ? "cuda"
                                                                              : "host");
}

static Py_ssize_t alloc_len(PyObject *self)
{
    return ((alloc_object *)self)->len;
}

static PyObject *alloc_repr(PyObject *self)
{
    alloc_object *a = (alloc_object *)self;

    return PyUnicode_FromFormat("<ferry.Allocation %zd bytes of %s memory at %p%s>", a->len,
                                a->kind == FERRY_MEM_CUDA ? "cuda" : "host", a->addr,
                                a->addr ? "" : " freed");
}

static PyMethodDef alloc_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))alloc_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, ...) -> PyCapsule\n\nThe memory as a 1-D uint8 DLPack "
     "tensor (torch.from_dlpack, numpy.from_dlpack)."},
    {"__dlpack_device__", alloc_dlpack_device, METH_NOARGS,
     "__dlpack_device__() -> (int, int)\n\nThe DLPack device: (1, 0) for host memory, "
     "(2, device) for CUDA."},
    {"free", alloc_free, METH_NOARGS,
     "free() -> None\n\nFrees the memory now (ferry_mem_free) rather than when the "
     "object goes. Raises ferry.Busy while arrays, memoryviews or tensors view it, "
     "and while registrations inside it remain."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef alloc_getset[] = {
    {"__cuda_array_interface__", alloc_get_cai, NULL,
     "The CUDA array interface (version 3) of GPU memory.", NULL},
    {"addr", alloc_get_addr, NULL, "The memory's address (0 once freed).", NULL},
    {"nbytes", alloc_get_nbytes, NULL, "The size in bytes.", NULL},
    {"kind", alloc_get_kind, NULL, "'host' or 'cuda'.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot alloc_slots[] = {
    {Py_tp_doc, "Memory from Agent.alloc() (ferry_mem_alloc): host memory that same-host "
                "peers copy into directly, or GPU memory for CUDA IPC. Host memory has "
                "the buffer protocol (numpy.frombuffer(a, numpy.uint8)); both kinds "
                "have __dlpack__ (torch.from_dlpack(a)). Register it with "
                "Agent.register() before transfers use it."},
    {Py_tp_dealloc, alloc_dealloc},
    {Py_tp_methods, alloc_methods},
    {Py_tp_getset, alloc_getset},
    {Py_tp_repr, alloc_repr},
    {Py_sq_length, alloc_len},
    {Py_bf_getbuffer, alloc_getbuffer},
    {Py_bf_releasebuffer, alloc_releasebuffer},
    {0, NULL}};

PyType_Spec ferry__py_alloc_spec = {"ferry.Allocation", sizeof(alloc_object), 0,
                                    Py_TPFLAGS_DEFAULT, alloc_slots};
