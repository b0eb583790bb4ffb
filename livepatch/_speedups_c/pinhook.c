/* livepatch._speedups, PinHook.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* PinHook */

static int
hook_traverse(PyObject *op, visitproc visit, void *arg)
{
    PinHook *self = (PinHook *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->dispatcher);
    Py_VISIT(self->slot);
    return 0;
}

static int
hook_clear(PyObject *op)
{
    PinHook *self = (PinHook *)op;
    Py_CLEAR(self->dispatcher);
    Py_CLEAR(self->slot);
    return 0;
}

static void
hook_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)hook_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
hook_repr(PyObject *op)
{
    PinHook *self = (PinHook *)op;
    if (self->slot != NULL) {
        return PyUnicode_FromFormat("<pin %R __enter__>", self->slot);
    }
    return PyUnicode_FromString("<pin __exit__>");
}

static PyMemberDef hook_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(PinHook, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot hook_slots[] = {
    {Py_tp_dealloc, hook_dealloc},
    {Py_tp_traverse, hook_traverse},
    {Py_tp_clear, hook_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, hook_repr},
    {Py_tp_members, hook_members},
    {0, NULL},
};

static PyType_Spec hook_spec = {
    .name = "livepatch._speedups.PinHook",
    .basicsize = sizeof(PinHook),
    .itemsize = 0,
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
              Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION),
    .slots = hook_slots,
};
