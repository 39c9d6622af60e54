/* SPDX-License-Identifier: Apache-2.0 */
/*
 * module.c: the extension module ferry._ferry. It creates the types of the
 * other files, maps every ferry_status_t to its exception class (the classes
 * live in ferry/_errors.py, where they are easier to document and pickle),
 * and holds the helpers that every type uses: raising a status with
 * ferry_last_error()'s text, converting timeouts, calling into ferry._aio.
 */
#include "ferry_py.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

PyObject *ferry__py_agent_type, *ferry__py_peer_type, *ferry__py_mem_type,
    *ferry__py_xfer_type, *ferry__py_alloc_type, *ferry__py_store_type,
    *ferry__py_server_type, *ferry__py_comm_type;

/* ferry._errors.error_class(status) and the module ferry._aio, looked up once. */
static PyObject *error_class_fn;
static PyObject *aio_module;

PyObject *ferry__py_raise(ferry_status_t st, const char *text)
{
    const char *detail = text ? text : ferry_last_error();
    PyObject *cls, *exc;

    if (!error_class_fn) {
        PyErr_Format(PyExc_RuntimeError, "ferry: %s: %s", ferry_status_str(st), detail);
        return NULL;
    }
    cls = PyObject_CallFunction(error_class_fn, "i", (int)st);
    if (!cls)
        return NULL;
    exc = PyObject_CallFunction(cls, "sis", detail, (int)st, ferry_status_str(st));
    if (exc) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(cls);
    return NULL;
}

PyObject *ferry__py_invalid(const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    return ferry__py_raise(FERRY_ERR_INVALID, text);
}

PyObject *ferry__py_aio_call(const char *name, PyObject *args)
{
    PyObject *fn, *res = NULL;

    if (!args)
        return NULL;
    if (!aio_module)
        aio_module = PyImport_ImportModule("ferry._aio");
    fn = aio_module ? PyObject_GetAttrString(aio_module, name) : NULL;
    if (fn)
        res = PyObject_CallObject(fn, args);
    Py_XDECREF(fn);
    Py_DECREF(args);
    return res;
}

int ferry__py_timeout(PyObject *obj, int64_t *ns_p)
{
    double s;

    if (!obj || obj == Py_None) {
        *ns_p = -1;
        return 0;
    }
    s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (!(s >= 0)) {
        ferry__py_invalid("a timeout is a number of seconds >= 0 or None, not %g", s);
        return -1;
    }
    *ns_p = s >= 9.2e9 ? -1 : (int64_t)(s * 1e9);
    return 0;
}

static PyObject *mod_status_str(PyObject *self, PyObject *arg)
{
    long st = PyLong_AsLong(arg);

    (void)self;
    if (st == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(ferry_status_str((ferry_status_t)st));
}

static PyObject *mod_version(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyUnicode_FromString(ferry_version());
}

static PyObject *mod_info(PyObject *self, PyObject *args)
{
    unsigned long long what = FERRY_INFO_DEFAULT;
    ferry_status_t st;
    char *text = NULL;
    size_t len = 0;
    FILE *out;
    PyObject *res;

    (void)self;
    if (!PyArg_ParseTuple(args, "|K:info", &what))
        return NULL;
    out = open_memstream(&text, &len);
    if (!out)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    st = ferry_info_print(out, what);
    Py_END_ALLOW_THREADS
    fclose(out);
    if (st != FERRY_OK) {
        free(text);
        return ferry__py_raise(st, NULL);
    }
    res = PyUnicode_DecodeUTF8(text, (Py_ssize_t)len, "replace");
    free(text);
    return res;
}

static PyObject *mod_describe(PyObject *self, PyObject *obj)
{
    region_t r;

    (void)self;
    if (ferry__py_region(obj, 0, &r))
        return NULL;
    return ferry__py_desc_tuple(&r.desc);
}

static PyMethodDef module_methods[] = {
    {"describe", mod_describe, METH_O,
     "describe(obj) -> (addr, len, kind, device)\n\nThe descriptor of a memory object "
     "(buffer protocol, __dlpack__, __cuda_array_interface__, Allocation or tuple): "
     "what a peer needs, with the blob, to address this memory."},
    {"status_str", mod_status_str, METH_O,
     "status_str(status) -> str\n\nThe library's text for a status code "
     "(ferry_status_str)."},
    {"version", mod_version, METH_NOARGS,
     "version() -> str\n\nThe loaded libferry's version, \"major.minor.patch\"."},
    {"info", mod_info, METH_VARARGS,
     "info(what=INFO_DEFAULT) -> str\n\nThe report that ferry-info prints "
     "(ferry_info_print), from the libferry this module loaded."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ferry._ferry",
    "The C extension under the ferry package: types over libferry's public API.\n"
    "Import ferry instead; it re-exports everything with documentation.",
    -1, module_methods, NULL, NULL, NULL, NULL};

static int add_type(PyObject *m, const char *name, PyType_Spec *spec, PyObject **type_p)
{
    PyObject *t = PyType_FromSpec(spec);

    if (!t)
        return -1;
    *type_p = t;
    Py_INCREF(t);
    return PyModule_AddObject(m, name, t) < 0 ? (Py_DECREF(t), -1) : 0;
}

static int add_int(PyObject *m, const char *name, long v)
{
    return PyModule_AddIntConstant(m, name, v);
}

PyMODINIT_FUNC PyInit__ferry(void);

PyMODINIT_FUNC PyInit__ferry(void)
{
    PyObject *m = PyModule_Create(&module_def), *errors;

    if (!m)
        return NULL;
    errors = PyImport_ImportModule("ferry._errors");
    if (!errors)
        goto fail;
    error_class_fn = PyObject_GetAttrString(errors, "error_class");
    Py_DECREF(errors);
    if (!error_class_fn)
        goto fail;
    if (add_type(m, "Agent", &ferry__py_agent_spec, &ferry__py_agent_type) ||
        add_type(m, "Peer", &ferry__py_peer_spec, &ferry__py_peer_type) ||
        add_type(m, "Mem", &ferry__py_mem_spec, &ferry__py_mem_type) ||
        add_type(m, "Xfer", &ferry__py_xfer_spec, &ferry__py_xfer_type) ||
        add_type(m, "Allocation", &ferry__py_alloc_spec, &ferry__py_alloc_type) ||
        add_type(m, "Store", &ferry__py_store_spec, &ferry__py_store_type) ||
        add_type(m, "StoreServer", &ferry__py_server_spec, &ferry__py_server_type) ||
        add_type(m, "Comm", &ferry__py_comm_spec, &ferry__py_comm_type))
        goto fail;
#define FERRY_PY_STATUS_(name, value, text) \
    if (add_int(m, "STATUS_" #name, value)) \
        goto fail;
    FERRY_STATUS_MAP(FERRY_PY_STATUS_)
#undef FERRY_PY_STATUS_
    if (add_int(m, "MEM_AUTO", FERRY_MEM_AUTO) || add_int(m, "MEM_HOST", FERRY_MEM_HOST) ||
        add_int(m, "MEM_CUDA", FERRY_MEM_CUDA) || add_int(m, "OP_WRITE", FERRY_OP_WRITE) ||
        add_int(m, "OP_READ", FERRY_OP_READ) || add_int(m, "BACKEND_ANY", FERRY_BACKEND_ANY) ||
        add_int(m, "BACKEND_UCX", FERRY_BACKEND_UCX) ||
        add_int(m, "BACKEND_CUDA_IPC", FERRY_BACKEND_CUDA_IPC) ||
        add_int(m, "BACKEND_STAGED", FERRY_BACKEND_STAGED) ||
        add_int(m, "INFO_VERSION", FERRY_INFO_VERSION) ||
        add_int(m, "INFO_BACKENDS", FERRY_INFO_BACKENDS) ||
        add_int(m, "INFO_UCX", FERRY_INFO_UCX) || add_int(m, "INFO_CUDA", FERRY_INFO_CUDA) ||
        add_int(m, "INFO_CONFIG", FERRY_INFO_CONFIG) ||
        add_int(m, "INFO_DEFAULT", FERRY_INFO_DEFAULT) ||
        add_int(m, "DESC_SIZE", (long)sizeof(ferry_desc_t)))
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
