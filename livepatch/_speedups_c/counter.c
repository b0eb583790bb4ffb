/* livepatch._speedups, Counter.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Counter */

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
