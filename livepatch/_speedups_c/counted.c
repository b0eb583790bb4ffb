/* livepatch._speedups, Counted.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Counted: rules.NAME */

static PyObject *
counted_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Counted *self = (Counted *)op;
    PyObject *fn = self->fn, *result;
    /* Passed on as given: the flags (ARGUMENTS_OFFSET included) are the
     * caller's to grant to whoever it calls, and we add nothing in front. */
    Py_INCREF(fn);
    result = counted_call(fn, self->calls, self->errors, args, nargsf, kwnames);
    Py_DECREF(fn);
    return result;
}

static int
counted_traverse(PyObject *op, visitproc visit, void *arg)
{
    Counted *self = (Counted *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->fn);
    Py_VISIT(self->calls);
    Py_VISIT(self->errors);
    Py_VISIT(self->name);
    return 0;
}

static int
counted_clear(PyObject *op)
{
    Counted *self = (Counted *)op;
    Py_CLEAR(self->fn);
    Py_CLEAR(self->calls);
    Py_CLEAR(self->errors);
    Py_CLEAR(self->name);
    return 0;
}

static void
counted_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)counted_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
counted_repr(PyObject *op)
{
    Counted *self = (Counted *)op;
    return PyUnicode_FromFormat("<counted %R>", self->fn ? self->fn : Py_None);
}

static PyObject *
counted_get_doc(PyObject *op, void *Py_UNUSED(closure))
{
    Counted *self = (Counted *)op;
    PyObject *doc;
    if (self->fn == NULL) {
        Py_RETURN_NONE;
    }
    doc = PyObject_GetAttrString(self->fn, "__doc__");
    if (doc == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return doc;
}

static PyObject *
counted_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Counted *)op)->name);
}

static PyObject *
counted_get_wrapped(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Counted *)op)->fn);
}

static PyGetSetDef counted_getset[] = {
    {"__name__", counted_get_name, NULL, NULL, NULL},
    {"__doc__", counted_get_doc, NULL, NULL, NULL},
    {"__wrapped__", counted_get_wrapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef counted_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(Counted, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot counted_slots[] = {
    {Py_tp_dealloc, counted_dealloc},
    {Py_tp_traverse, counted_traverse},
    {Py_tp_clear, counted_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, counted_repr},
    {Py_tp_getset, counted_getset},
    {Py_tp_members, counted_members},
    {0, NULL},
};

static PyType_Spec counted_spec = {
    .name = "livepatch._speedups.Counted",
    .basicsize = sizeof(Counted),
    .itemsize = 0,
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
              Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION),
    .slots = counted_slots,
};
