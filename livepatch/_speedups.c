/*
 * livepatch._speedups: the optional C accelerator of Engine.call.
 *
 * Engine.call (livepatch/engine.py) is the reference implementation and stays
 * the fallback: a Dispatcher serves only the common case -- an unpinned call
 * of a callable symbol of a slot's active version -- and hands every other
 * call, with its original arguments, to that Python method, so that errors,
 * pinned calls and anything unusual behave exactly as the Python code says.
 *
 * What the dispatcher reads (all maintained by the engine, in Python):
 *
 *   fast     dict, slot name -> record of the active version, a 3-tuple
 *            (namespace: dict, calls: itertools.count, errors: itertools.count).
 *            The engine stores a new record when it swaps (one dict store,
 *            atomic under the GIL, like its own _active dict) and removes it
 *            on close. A tuple is the cheapest record to read from C, and it
 *            is immutable, so holding the tuple keeps its three items alive.
 *   pins     the engine's contextvars.ContextVar of pinned versions
 *            (None, or a dict slot -> version).
 *   pinning  the number of pin blocks open anywhere, kept equal to
 *            Engine._pinning by _Pin under the engine's pin lock. While it is
 *            zero no call can be pinned, and the context variable is not read.
 *   fallback the bound Python Engine.call.
 *
 * The engine owns the dispatcher (as its instance attribute `call`) and the
 * dispatcher owns the bound method, which owns the engine: a reference cycle,
 * hence the GC support below.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h> /* offsetof */

#if PY_VERSION_HEX < 0x030C0000
/* Python 3.11 spells the member-type constants only in structmember.h; 3.12
 * moved them, with a Py_ prefix, into Python.h. */
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* what makes instances vectorcall-able */
    PyObject *fast;            /* strong: dict slot -> record tuple */
    PyObject *pins;            /* strong: contextvars.ContextVar */
    PyObject *fallback;        /* strong: callable, the Python Engine.call */
    Py_ssize_t pinning;        /* open pin blocks anywhere; 0 = none */
} Dispatcher;

/* Counter: the engine's per-version call and error counter when this module
 * is built. An itertools.count allocates an int on every next() (about half
 * of the dispatcher's own instructions); this one is a C integer that the
 * dispatcher bumps in place. next(counter) still works, for the Python
 * paths, and `value` reads it without advancing it. The GIL makes the
 * increment atomic, as it does for itertools.count. */
typedef struct {
    PyObject_HEAD
    unsigned long long value;
} Counter;

static PyObject *
counter_next(PyObject *op)
{
    Counter *self = (Counter *)op;
    return PyLong_FromUnsignedLongLong(self->value++);
}

/* Advance a counter: ours in place, anything else (itertools.count, on an
 * engine built without us) through the iterator protocol. Counters never
 * end; the only possible error is MemoryError, which is passed on. */
static inline int
tick(PyObject *counter)
{
    if (Py_TYPE(counter)->tp_iternext == counter_next) {
        ((Counter *)counter)->value++;
        return 0;
    }
    PyObject *value = PyIter_Next(counter);
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_DECREF(value);
    return 0;
}

/* The rule function raised: count the error without losing the pending
 * exception (type, value and traceback are put back untouched). */
static void
count_error(PyObject *errors)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    if (tick(errors) < 0) {
        /* Cannot happen with itertools.count; never let a failing counter
         * replace the rule's own exception. */
        PyErr_WriteUnraisable(errors);
    }
    PyErr_SetRaisedException(exc);
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (tick(errors) < 0) {
        PyErr_WriteUnraisable(errors);
    }
    PyErr_Restore(type, value, traceback);
#endif
}

/* The hot path: dispatcher(slot, symbol, *args, **kwargs).
 *
 * Every `goto fallback` hands the call, untouched, to the Python Engine.call.
 * Before the record is found nothing is owned; after it, `record` and then
 * `fn` are owned and released on every way out. */
static PyObject *
dispatcher_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Dispatcher *self = (Dispatcher *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *record, *namespace, *calls, *errors, *fn, *result;

    if (self->fast == NULL || self->pins == NULL) {
        goto fallback; /* being cleared by the GC (see dispatcher_clear) */
    }
    if (nargs < 2 || !PyUnicode_CheckExact(args[0]) || !PyUnicode_CheckExact(args[1])) {
        goto fallback; /* Python raises the right TypeError or lookup error */
    }

    if (self->pinning != 0) {
        /* Some pin block is open somewhere: is this call inside one for
         * this slot? PyContextVar_Get returns a new reference (the variable's
         * default, None, when this context never set it). */
        PyObject *pins;
        int pinned;
        if (PyContextVar_Get(self->pins, NULL, &pins) < 0) {
            return NULL;
        }
        if (pins == NULL || pins == Py_None) {
            pinned = 0;
        }
        else if (PyDict_CheckExact(pins)) {
            pinned = PyDict_Contains(pins, args[0]);
        }
        else {
            pinned = 1; /* not what the engine stores: let Python decide */
        }
        Py_XDECREF(pins);
        if (pinned < 0) {
            return NULL;
        }
        if (pinned) {
            goto fallback; /* pinned calls run in Python, on the pinned version */
        }
    }

    /* Borrowed from `fast`; taken strongly at once, before anything that could
     * run Python code (a swap on another thread may replace the record while
     * the rule runs, and the callee may itself swap). */
    record = PyDict_GetItemWithError(self->fast, args[0]);
    if (record == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto fallback; /* no such slot, or no active version */
    }
    if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 3) {
        goto fallback;
    }
    Py_INCREF(record);
    /* The three items are borrowed from the tuple, which we now hold. */
    namespace = PyTuple_GET_ITEM(record, 0);
    calls = PyTuple_GET_ITEM(record, 1);
    errors = PyTuple_GET_ITEM(record, 2);
    if (!PyDict_CheckExact(namespace) || !PyIter_Check(calls) || !PyIter_Check(errors)) {
        Py_DECREF(record);
        goto fallback;
    }

    /* Borrowed from the namespace, which the callee is free to mutate (a rule
     * may rebind its own globals): hold the function for the call. */
    fn = PyDict_GetItemWithError(namespace, args[1]);
    if (fn == NULL) {
        Py_DECREF(record);
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto fallback; /* Python names the version in its error */
    }
    if (!PyCallable_Check(fn)) {
        Py_DECREF(record);
        goto fallback;
    }
    Py_INCREF(fn);

    if (tick(calls) < 0) {
        result = NULL;
    }
    else {
        /* Pass the caller's array on, minus slot and symbol; keyword values
         * follow the positional ones there, so kwnames is passed unchanged.
         * PY_VECTORCALL_ARGUMENTS_OFFSET is deliberately not passed: it
         * would let the callee overwrite args[1], and the caller's array may
         * be a tuple shared with other threads (PyVectorcall_Call). */
        result = PyObject_Vectorcall(fn, args + 2, (size_t)(nargs - 2), kwnames);
        if (result == NULL) {
            count_error(errors);
        }
    }
    Py_DECREF(fn);
    Py_DECREF(record);
    return result;

fallback:
    fn = self->fallback;
    if (fn == NULL) {
        /* Only reachable from a finalizer that runs while the GC breaks the
         * engine <-> dispatcher cycle. */
        PyErr_SetString(PyExc_ReferenceError, "the engine of this dispatcher is gone");
        return NULL;
    }
    /* Same array, same flags: if the caller allowed args[-1] to be borrowed,
     * the bound method may use it to prepend the engine without allocating. */
    Py_INCREF(fn);
    result = PyObject_Vectorcall(fn, args, nargsf, kwnames);
    Py_DECREF(fn);
    return result;
}

static PyObject *
dispatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fast", "pins", "fallback", NULL};
    PyObject *fast, *pins, *fallback;
    Dispatcher *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Dispatcher", kwlist, &fast, &pins,
                                     &fallback)) {
        return NULL;
    }
    /* Exact types only: the hot path reads them with the concrete C API, which
     * would bypass a subclass's overrides. */
    if (!PyDict_CheckExact(fast)) {
        PyErr_Format(PyExc_TypeError, "fast must be a dict, not %.200s", Py_TYPE(fast)->tp_name);
        return NULL;
    }
    if (!PyContextVar_CheckExact(pins)) {
        PyErr_Format(PyExc_TypeError, "pins must be a contextvars.ContextVar, not %.200s",
                     Py_TYPE(pins)->tp_name);
        return NULL;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_Format(PyExc_TypeError, "fallback must be callable, not %.200s",
                     Py_TYPE(fallback)->tp_name);
        return NULL;
    }
    self = (Dispatcher *)type->tp_alloc(type, 0); /* zeroed, and GC-tracked */
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = dispatcher_vectorcall;
    self->fast = Py_NewRef(fast);
    self->pins = Py_NewRef(pins);
    self->fallback = Py_NewRef(fallback);
    self->pinning = 0;
    return (PyObject *)self;
}

static int
dispatcher_traverse(PyObject *op, visitproc visit, void *arg)
{
    Dispatcher *self = (Dispatcher *)op;
    Py_VISIT(Py_TYPE(op)); /* instances of heap types own their type */
    Py_VISIT(self->fast);
    Py_VISIT(self->pins);
    Py_VISIT(self->fallback);
    return 0;
}

/* Py_CLEAR sets each field to NULL before releasing it, and the order
 * matters: a finalizer run by one of these releases may still call the
 * dispatcher, which then hands the call to the fallback while there is one. */
static int
dispatcher_clear(PyObject *op)
{
    Dispatcher *self = (Dispatcher *)op;
    Py_CLEAR(self->fast);
    Py_CLEAR(self->pins);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
dispatcher_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)dispatcher_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
dispatcher_repr(PyObject *op)
{
    Dispatcher *self = (Dispatcher *)op;
    Py_ssize_t slots = self->fast != NULL ? PyDict_GET_SIZE(self->fast) : 0;
    return PyUnicode_FromFormat("<livepatch._speedups.Dispatcher active_slots=%zd pinning=%zd>",
                                slots, self->pinning);
}

static PyObject *
get_pinning(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((Dispatcher *)op)->pinning);
}

static int
set_pinning(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    Py_ssize_t n;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "pinning cannot be deleted");
        return -1;
    }
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "pinning must be an int, not %.200s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    n = PyLong_AsSsize_t(value);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "pinning cannot be negative");
        return -1;
    }
    ((Dispatcher *)op)->pinning = n;
    return 0;
}

/* Read-only views of the fields, for tests and introspection. */
static PyObject *
field_or_none(PyObject *field)
{
    return Py_NewRef(field != NULL ? field : Py_None);
}

static PyObject *
get_fast(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Dispatcher *)op)->fast);
}

static PyObject *
get_pins(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Dispatcher *)op)->pins);
}

static PyObject *
get_fallback(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Dispatcher *)op)->fallback);
}

static PyGetSetDef dispatcher_getset[] = {
    {"pinning", get_pinning, set_pinning,
     PyDoc_STR("Open pin blocks anywhere (kept equal to Engine._pinning); "
               "0 means no call can be pinned."),
     NULL},
    {"fast", get_fast, NULL, PyDoc_STR("The dict slot -> (namespace, calls, errors)."), NULL},
    {"pins", get_pins, NULL, PyDoc_STR("The engine's context variable of pinned versions."),
     NULL},
    {"fallback", get_fallback, NULL, PyDoc_STR("The Python Engine.call, bound."), NULL},
    /* inspect.signature() and help() follow __wrapped__ to the Python method. */
    {"__wrapped__", get_fallback, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef dispatcher_members[] = {
    /* How PyType_FromSpec learns where the vectorcall pointer lives. */
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(Dispatcher, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(dispatcher_doc,
             "Dispatcher(fast, pins, fallback)\n"
             "--\n"
             "\n"
             "Engine.call in C: dispatcher(slot, symbol, *args, **kwargs) calls\n"
             "symbol of the slot's active version, read from the dict fast\n"
             "(slot -> (namespace, calls, errors)), and counts the call and any\n"
             "error. Pinned calls and every unusual case are handed to fallback,\n"
             "the Python Engine.call, with the original arguments.");

static PyType_Slot dispatcher_slots[] = {
    {Py_tp_doc, (void *)dispatcher_doc},
    {Py_tp_new, dispatcher_new},
    {Py_tp_dealloc, dispatcher_dealloc},
    {Py_tp_traverse, dispatcher_traverse},
    {Py_tp_clear, dispatcher_clear},
    {Py_tp_call, PyVectorcall_Call}, /* tp_call for callers without vectorcall */
    {Py_tp_repr, dispatcher_repr},
    {Py_tp_getset, dispatcher_getset},
    {Py_tp_members, dispatcher_members},
    {0, NULL},
};

static PyType_Spec dispatcher_spec = {
    .name = "livepatch._speedups.Dispatcher",
    .basicsize = sizeof(Dispatcher),
    .itemsize = 0,
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
              Py_TPFLAGS_IMMUTABLETYPE),
    .slots = dispatcher_slots,
};

static PyObject *
counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Counter", kwlist)) {
        return NULL; /* takes no arguments */
    }
    return type->tp_alloc(type, 0); /* zeroed: value starts at 0 */
}

static void
counter_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
counter_iter(PyObject *op)
{
    return Py_NewRef(op);
}

static PyObject *
counter_repr(PyObject *op)
{
    return PyUnicode_FromFormat("Counter(%llu)", ((Counter *)op)->value);
}

static PyObject *
counter_get_value(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(((Counter *)op)->value);
}

static PyGetSetDef counter_getset[] = {
    {"value", counter_get_value, NULL, PyDoc_STR("The next value next() would return."), NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(counter_doc,
             "Counter()\n"
             "--\n"
             "\n"
             "A call counter: next(counter) returns 0, 1, 2 ...; value reads it\n"
             "without advancing it. The dispatcher advances it in place.");

static PyType_Slot counter_slots[] = {
    {Py_tp_doc, (void *)counter_doc},
    {Py_tp_new, counter_new},
    {Py_tp_dealloc, counter_dealloc},
    {Py_tp_iter, counter_iter},
    {Py_tp_iternext, counter_next},
    {Py_tp_repr, counter_repr},
    {Py_tp_getset, counter_getset},
    {0, NULL},
};

static PyType_Spec counter_spec = {
    .name = "livepatch._speedups.Counter",
    .basicsize = sizeof(Counter),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = counter_slots,
};

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    int rc;
    if (type == NULL) {
        return -1;
    }
    rc = PyModule_AddObjectRef(module, name, type);
    Py_DECREF(type);
    return rc;
}

static int
speedups_exec(PyObject *module)
{
    if (add_type(module, &dispatcher_spec, "Dispatcher") < 0) {
        return -1;
    }
    return add_type(module, &counter_spec, "Counter");
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_mod_multiple_interpreters
    /* No process-wide state: each interpreter gets its own type. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "livepatch._speedups",
    .m_doc = "Optional C accelerator of livepatch's Engine.call (the hot path).",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
