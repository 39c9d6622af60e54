/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mem.c: Python objects to ferry descriptors. A memory object is anything
 * that exposes memory: the buffer protocol (numpy arrays, bytearray,
 * memoryview), __dlpack__ (torch CPU and CUDA tensors, CuPy), the CUDA
 * array interface (Numba, CuPy), an Allocation from Agent.alloc, or an
 * explicit (addr, len[, kind[, device]]) tuple. A descriptor list, for
 * prepare, is one of those or a sequence of them, or a numpy table: an
 * array of ferry.desc_dtype, which has ferry_desc_t's layout and is used in
 * place, or a uint64 array of shape (n, 2) or (n, 4), converted in one C
 * loop, so that 10^5 descriptors never become Python objects.
 */
#include "ferry_py.h"

#include <stdlib.h>
#include <string.h>

/* DLPack's ABI (dlpack.h, version 0.x "dltensor" capsules), which every
 * exporter shares; declared here so that the module needs no header. */
typedef struct {
    int32_t device_type;
    int32_t device_id;
} dl_device_t;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} dl_dtype_t;

typedef struct {
    void *data;
    dl_device_t device;
    int32_t ndim;
    dl_dtype_t dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} dl_tensor_t;

typedef struct dl_managed {
    dl_tensor_t dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct dl_managed *self);
} dl_managed_t;

enum { DL_CPU = 1, DL_CUDA = 2, DL_CUDA_HOST = 3, DL_CUDA_MANAGED = 13 };

static int kind_from(PyObject *obj, ferry_mem_kind_t *kind_p)
{
    long v;

    if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8AndSize(obj, NULL);

        if (!s)
            return -1;
        if (!strcmp(s, "auto"))
            *kind_p = FERRY_MEM_AUTO;
        else if (!strcmp(s, "host") || !strcmp(s, "cpu"))
            *kind_p = FERRY_MEM_HOST;
        else if (!strcmp(s, "cuda"))
            *kind_p = FERRY_MEM_CUDA;
        else
            return ferry__py_invalid("unknown memory kind '%s' (auto, host or cuda)", s),
                   -1;
        return 0;
    }
    v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v != FERRY_MEM_AUTO && v != FERRY_MEM_HOST && v != FERRY_MEM_CUDA)
        return ferry__py_invalid("unknown memory kind %ld", v), -1;
    *kind_p = (ferry_mem_kind_t)v;
    return 0;
}

/* (addr, len[, kind[, device]]) */
static int from_tuple(PyObject *t, ferry_desc_t *d)
{
    Py_ssize_t n = PyTuple_Size(t);
    unsigned long long addr, len;
    long dev = 0;

    if (n < 2 || n > 4)
        return ferry__py_invalid("a descriptor tuple is (addr, len[, kind[, device]]), "
                                 "not %zd items", n),
               -1;
    addr = PyLong_AsUnsignedLongLong(PyTuple_GetItem(t, 0));
    if (addr == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    len = PyLong_AsUnsignedLongLong(PyTuple_GetItem(t, 1));
    if (len == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    d->addr = addr;
    d->len = len;
    d->kind = FERRY_MEM_AUTO;
    d->device = 0;
    if (n > 2 && kind_from(PyTuple_GetItem(t, 2), &d->kind))
        return -1;
    if (n > 3) {
        dev = PyLong_AsLong(PyTuple_GetItem(t, 3));
        if (dev == -1 && PyErr_Occurred())
            return -1;
        if (dev < 0 || dev > INT32_MAX)
            return ferry__py_invalid("device %ld out of range", dev), -1;
    }
    d->device = (int32_t)dev;
    return 0;
}

/* Turns a BufferError (non-contiguous, read-only) into ferry.InvalidArgument
 * with its text, so that every bad input has one exception family. */
static int buffer_error(PyObject *obj, const char *why)
{
    PyObject *type, *value, *tb, *s = NULL;
    const char *text = NULL;

    /* numpy says ValueError where others say BufferError. */
    if (!PyErr_ExceptionMatches(PyExc_BufferError) && !PyErr_ExceptionMatches(PyExc_ValueError))
        return -1;
    PyErr_Fetch(&type, &value, &tb);
    if (value)
        s = PyObject_Str(value);
    if (s)
        text = PyUnicode_AsUTF8AndSize(s, NULL);
    PyErr_Clear();
    (void)obj;
    ferry__py_invalid("the buffer %s: %s", why, text ? text : "refused");
    Py_XDECREF(s);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return -1;
}

static int from_buffer(PyObject *obj, int keep, region_t *r)
{
    Py_buffer *v = &r->view;
    int flags = PyBUF_ANY_CONTIGUOUS | (keep ? PyBUF_WRITABLE : 0);

    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        if (keep && (PyErr_ExceptionMatches(PyExc_BufferError) ||
                     PyErr_ExceptionMatches(PyExc_ValueError))) {
            PyErr_Clear();
            if (PyObject_GetBuffer(obj, v, PyBUF_ANY_CONTIGUOUS) == 0) {
                PyBuffer_Release(v);
                return ferry__py_invalid(
                    "cannot register a read-only buffer (peers could write into it): "
                    "use a bytearray, a writable numpy array or memoryview"), -1;
            }
        }
        return buffer_error(obj, "is not contiguous");
    }
    r->desc.addr = (uint64_t)(uintptr_t)v->buf;
    r->desc.len = (uint64_t)v->len;
    r->desc.kind = FERRY_MEM_HOST;
    r->desc.device = 0;
    if (v->len <= 0) {
        PyBuffer_Release(v);
        return ferry__py_invalid("an empty buffer has no memory to describe"), -1;
    }
    if (keep)
        r->has_view = 1;
    else
        PyBuffer_Release(v);
    return 0;
}

/* Whether strides (NULL: compact) describe one row-major range; unit is
 * the stride of the last dimension's neighbours in the strides' own unit
 * (1 for DLPack's element strides, the item size for byte strides). */
static int contiguous(int32_t ndim, const int64_t *shape, const int64_t *strides,
                      int64_t unit)
{
    int64_t expect = unit;

    if (!strides)
        return 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        if (shape[i] != 1 && strides[i] != expect)
            return 0;
        expect *= shape[i];
    }
    return 1;
}

static int from_dlpack(PyObject *obj, region_t *r)
{
    PyObject *cap = PyObject_CallMethod(obj, "__dlpack__", NULL);
    dl_managed_t *m;
    dl_tensor_t *t;
    int64_t elems = 1, unit;
    int rc = -1;

    if (!cap)
        return -1;
    m = PyCapsule_GetPointer(cap, "dltensor");
    if (!m)
        goto out;
    t = &m->dl_tensor;
    unit = ((int64_t)t->dtype.bits * t->dtype.lanes + 7) / 8;
    for (int32_t i = 0; i < t->ndim; i++)
        elems *= t->shape[i];
    /* DLPack's strides count elements. */
    if (!contiguous(t->ndim, t->shape, t->strides, 1)) {
        ferry__py_invalid("a non-contiguous tensor (strides that skip memory) is not one "
                          "range of memory: make it contiguous (.contiguous()) first");
        goto out;
    }
    if (elems * unit <= 0) {
        ferry__py_invalid("an empty tensor has no memory to describe");
        goto out;
    }
    r->desc.addr = (uint64_t)(uintptr_t)t->data + t->byte_offset;
    r->desc.len = (uint64_t)(elems * unit);
    switch (t->device.device_type) {
    case DL_CPU:
    case DL_CUDA_HOST:
        r->desc.kind = FERRY_MEM_HOST;
        r->desc.device = 0;
        break;
    case DL_CUDA:
        r->desc.kind = FERRY_MEM_CUDA;
        r->desc.device = t->device.device_id;
        break;
    default:
        ferry__py_raise(FERRY_ERR_UNSUPPORTED, t->device.device_type == DL_CUDA_MANAGED
                            ? "CUDA managed memory cannot be registered"
                            : "the tensor lives on a device ferry does not serve "
                              "(only CPU and CUDA memory)");
        goto out;
    }
    rc = 0;
out:
    /* Not renamed "used_dltensor": the capsule's destructor frees the
     * managed tensor. The owner object keeps the memory itself alive. */
    Py_DECREF(cap);
    return rc;
}

static int from_cai(PyObject *obj, PyObject *cai, region_t *r)
{
    PyObject *data, *shape, *strides, *typestr;
    const char *ts;
    Py_ssize_t nd;
    int64_t sh[64], st[64], elems = 1, unit;
    unsigned long long ptr;

    (void)obj;
    if (!PyDict_Check(cai))
        return ferry__py_invalid("__cuda_array_interface__ is not a dict"), -1;
    data = PyDict_GetItemString(cai, "data");
    shape = PyDict_GetItemString(cai, "shape");
    typestr = PyDict_GetItemString(cai, "typestr");
    strides = PyDict_GetItemString(cai, "strides");
    if (!data || !PyTuple_Check(data) || PyTuple_Size(data) < 1 || !shape ||
        !PyTuple_Check(shape) || !typestr || !PyUnicode_Check(typestr))
        return ferry__py_invalid("__cuda_array_interface__ lacks data, shape or typestr"), -1;
    ptr = PyLong_AsUnsignedLongLong(PyTuple_GetItem(data, 0));
    if (ptr == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    ts = PyUnicode_AsUTF8AndSize(typestr, NULL);
    if (!ts || strlen(ts) < 3)
        return ferry__py_invalid("bad typestr in __cuda_array_interface__"), -1;
    unit = strtol(ts + 2, NULL, 10);
    nd = PyTuple_Size(shape);
    if (nd > 64)
        return ferry__py_invalid("too many dimensions"), -1;
    for (Py_ssize_t i = 0; i < nd; i++) {
        sh[i] = PyLong_AsLongLong(PyTuple_GetItem(shape, i));
        if (sh[i] == -1 && PyErr_Occurred())
            return -1;
        elems *= sh[i];
        if (strides && strides != Py_None) {
            if (!PyTuple_Check(strides) || PyTuple_Size(strides) != nd)
                return ferry__py_invalid("bad strides in __cuda_array_interface__"), -1;
            st[i] = PyLong_AsLongLong(PyTuple_GetItem(strides, i));
        }
    }
    /* CAI strides count bytes. */
    if (strides && strides != Py_None && !contiguous((int32_t)nd, sh, st, unit) && elems > 0)
        return ferry__py_invalid("a non-contiguous CUDA array is not one range of memory: "
                                 "make it contiguous first"), -1;
    if (elems * unit <= 0 || ptr == 0)
        return ferry__py_invalid("an empty CUDA array has no memory to describe"), -1;
    r->desc.addr = ptr;
    r->desc.len = (uint64_t)(elems * unit);
    /* The interface names no device: the library finds it from the pointer. */
    r->desc.kind = FERRY_MEM_AUTO;
    r->desc.device = 0;
    return 0;
}

int ferry__py_region(PyObject *obj, int keep, region_t *r)
{
    PyObject *cai;
    int rc;

    memset(r, 0, sizeof(*r));
    if (PyTuple_Check(obj))
        return from_tuple(obj, &r->desc);
    if (PyObject_TypeCheck(obj, (PyTypeObject *)ferry__py_alloc_type))
        rc = ferry__py_alloc_desc(obj, &r->desc);
    else if (PyObject_CheckBuffer(obj))
        rc = from_buffer(obj, keep, r);
    else if (PyObject_HasAttrString(obj, "__dlpack__"))
        rc = from_dlpack(obj, r);
    else if ((cai = PyObject_GetAttrString(obj, "__cuda_array_interface__")) != NULL) {
        rc = from_cai(obj, cai, r);
        Py_DECREF(cai);
    } else {
        PyObject *name;

        PyErr_Clear();
        name = PyType_GetName(Py_TYPE(obj));
        PyErr_Format(PyExc_TypeError,
                     "cannot take memory from a %S: expected the buffer protocol (numpy, "
                     "bytearray, memoryview), __dlpack__ (torch, CuPy), "
                     "__cuda_array_interface__, an Allocation or an (addr, len[, kind[, "
                     "device]]) tuple",
                     name ? name : Py_None);
        Py_XDECREF(name);
        return -1;
    }
    if (rc == 0 && keep) {
        Py_INCREF(obj);
        r->owner = obj;
    }
    return rc;
}

void ferry__py_region_clear(region_t *r)
{
    if (r->has_view)
        PyBuffer_Release(&r->view);
    r->has_view = 0;
    Py_CLEAR(r->owner);
}

PyObject *ferry__py_desc_tuple(const ferry_desc_t *d)
{
    return Py_BuildValue("(KKii)", (unsigned long long)d->addr, (unsigned long long)d->len,
                         (int)d->kind, (int)d->device);
}

/*
 * Descriptor arrays converted here live only through one prepare, and are
 * reused: freeing megabytes and allocating them again makes the allocator
 * hand pages back and fault them in anew, which costs more than the
 * conversion itself (10x the C prepare for 10^5 descriptors on a 2-core
 * VM). Two slots, local and remote, taken under the GIL; a prepare that
 * finds them taken (another thread's, with the GIL released) allocates.
 */
#define SCRATCH_SLOTS 2
#define SCRATCH_MAX ((size_t)64 << 20) /* bytes kept between calls, per slot */

static struct {
    ferry_desc_t *buf;
    size_t cap;
    int busy;
} scratch[SCRATCH_SLOTS];

/* An array of n descriptors; *owned_p says how to give it back. */
static ferry_desc_t *desc_array(size_t n, int *owned_p)
{
    ferry_desc_t *d;

    if (n == 0)
        n = 1;
    for (int k = 0; k < SCRATCH_SLOTS && n * sizeof(*d) <= SCRATCH_MAX; k++) {
        if (scratch[k].busy)
            continue;
        if (scratch[k].cap < n) {
            d = PyMem_Realloc(scratch[k].buf, n * sizeof(*d));
            if (!d)
                break;
            scratch[k].buf = d;
            scratch[k].cap = n;
        }
        scratch[k].busy = 1;
        *owned_p = 2 + k;
        return scratch[k].buf;
    }
    d = PyMem_Malloc(n * sizeof(*d));
    if (!d)
        PyErr_NoMemory();
    *owned_p = 1;
    return d;
}

void ferry__py_descs_free(ferry_desc_t *descs, int owned)
{
    if (owned == 1)
        PyMem_Free(descs);
    else if (owned >= 2)
        scratch[owned - 2].busy = 0;
}

/* ferry.desc_dtype's buffer format: "T{L:addr:L:len:i:kind:i:device:}" from
 * numpy on LP64 (Q for L elsewhere), with no padding. */
static int is_desc_format(const char *f)
{
    const char *a, *l, *k, *d;

    if (strncmp(f, "T{", 2) || strchr(f, 'x'))
        return 0;
    a = strstr(f, ":addr:");
    l = strstr(f, ":len:");
    k = strstr(f, ":kind:");
    d = strstr(f, ":device:");
    return a && l && k && d && a < l && l < k && k < d;
}

static int is_u64_format(const char *f)
{
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    return (f[0] == 'L' || f[0] == 'Q' || f[0] == 'l' || f[0] == 'q') && f[1] == 0;
}

/* Tries obj as a numpy descriptor table: 1 if it is one (outputs written),
 * 0 if it is not (nothing held), -1 on error. */
static int from_table(PyObject *obj, const char *what, ferry_desc_t **descs_p, size_t *n_p,
                      Py_buffer *v, int *has_view, int *owned_p)
{
    const char *f;
    Py_ssize_t cols;
    ferry_desc_t *out;
    const uint64_t *in;
    size_t n;

    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        return 0;
    }
    f = v->format ? v->format : "B";
    if (v->itemsize == (Py_ssize_t)sizeof(ferry_desc_t) && v->ndim == 1 && is_desc_format(f)) {
        if (!PyBuffer_IsContiguous(v, 'C')) {
            PyBuffer_Release(v);
            return ferry__py_invalid("%s: a descriptor array must be contiguous "
                                     "(numpy.ascontiguousarray)", what), -1;
        }
        *descs_p = v->buf;
        *n_p = (size_t)v->shape[0];
        *has_view = 1;
        *owned_p = 0;
        return 1;
    }
    if (v->itemsize != 8 || v->ndim != 2 || !is_u64_format(f) ||
        (v->shape[1] != 2 && v->shape[1] != 4)) {
        PyBuffer_Release(v);
        return 0;
    }
    if (!PyBuffer_IsContiguous(v, 'C')) {
        PyBuffer_Release(v);
        return ferry__py_invalid("%s: a descriptor array must be contiguous "
                                 "(numpy.ascontiguousarray)", what), -1;
    }
    n = (size_t)v->shape[0];
    cols = v->shape[1];
    in = v->buf;
    out = desc_array(n, owned_p);
    if (!out) {
        PyBuffer_Release(v);
        return -1;
    }
    if (cols == 2) {
        for (size_t i = 0; i < n; i++) {
            out[i].addr = in[2 * i];
            out[i].len = in[2 * i + 1];
            out[i].kind = FERRY_MEM_AUTO;
            out[i].device = 0;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            out[i].addr = in[4 * i];
            out[i].len = in[4 * i + 1];
            out[i].kind = (ferry_mem_kind_t)in[4 * i + 2];
            out[i].device = (int32_t)in[4 * i + 3];
        }
    }
    PyBuffer_Release(v);
    *descs_p = out;
    *n_p = n;
    return 1;
}

static int one_desc(PyObject *item, ferry_desc_t *d)
{
    region_t r;

    if (PyTuple_Check(item))
        return from_tuple(item, d);
    if (ferry__py_region(item, 0, &r))
        return -1;
    *d = r.desc;
    return 0;
}

int ferry__py_descs(PyObject *obj, const char *what, ferry_desc_t **descs_p,
                    size_t *n_p, Py_buffer *view, int *has_view, int *owned_p)
{
    PyObject *list = NULL;
    ferry_desc_t *out;
    Py_ssize_t n;
    int rc;

    *has_view = 0;
    *owned_p = 0;
    /* A single tuple (addr, len, ...) is one descriptor. */
    if (PyTuple_Check(obj) && PyTuple_Size(obj) >= 2 && PyLong_Check(PyTuple_GetItem(obj, 0)))
        goto single;
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        if (!PyBytes_Check(obj) && !PyByteArray_Check(obj) && PyObject_CheckBuffer(obj)) {
            rc = from_table(obj, what, descs_p, n_p, view, has_view, owned_p);
            if (rc)
                return rc < 0 ? -1 : 0;
        }
        if (PyObject_CheckBuffer(obj) || PyObject_HasAttrString(obj, "__dlpack__") ||
            PyObject_HasAttrString(obj, "__cuda_array_interface__") ||
            PyObject_TypeCheck(obj, (PyTypeObject *)ferry__py_alloc_type))
            goto single;
        list = PySequence_List(obj);
        if (!list) {
            PyErr_Clear();
            goto single; /* for its error message */
        }
        obj = list;
    }
    n = PyList_Check(obj) ? PyList_Size(obj) : PyTuple_Size(obj);
    if (n <= 0) {
        Py_XDECREF(list);
        return ferry__py_invalid("%s: an empty descriptor list", what), -1;
    }
    out = desc_array((size_t)n, owned_p);
    if (!out) {
        Py_XDECREF(list);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_Check(obj) ? PyList_GetItem(obj, i) : PyTuple_GetItem(obj, i);

        if (one_desc(item, &out[i])) {
            ferry__py_descs_free(out, *owned_p);
            *owned_p = 0;
            Py_XDECREF(list);
            return -1;
        }
    }
    Py_XDECREF(list);
    *descs_p = out;
    *n_p = (size_t)n;
    return 0;
single:
    out = desc_array(1, owned_p);
    if (!out)
        return -1;
    if (one_desc(obj, out)) {
        ferry__py_descs_free(out, *owned_p);
        *owned_p = 0;
        return -1;
    }
    *descs_p = out;
    *n_p = 1;
    return 0;
}
