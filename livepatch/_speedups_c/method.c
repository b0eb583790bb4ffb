/* livepatch._speedups, EngineMethod.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* EngineMethod: Engine.call and Engine.pin on the class */

/* `engine.call(...)` looks `call` up first on the type. With the dispatcher
 * stored on the instance, the instance's dict shadows the class's function,
 * and CPython cannot specialise that lookup: about a fifth of what
 * engine.call added over a direct call. So the class attribute is this
 * method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR: the lookup is specialised
 * and nothing is bound), and the call finds the engine's dispatcher in a
 * __slots__ member at a fixed offset; an engine without one (accelerate=False)
 * gets the Python method. */
enum { METHOD_CALL = 0, METHOD_PIN = 1 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *func;              /* strong: the Python method, the reference */
    PyTypeObject *owner;         /* strong: the class whose member `offset` is */
    PyTypeObject *dispatcher_type; /* strong */
    Py_ssize_t offset;           /* of the member that holds the dispatcher */
    int kind;                    /* METHOD_CALL or METHOD_PIN */
} EngineMethod;

/* The dispatcher of `engine` (borrowed), or NULL when it has none. */
static inline PyObject *
method_dispatcher(EngineMethod *m, PyObject *engine)
{
    PyObject *d;
    if (!PyObject_TypeCheck(engine, m->owner)) {
        return NULL;
    }
    d = *(PyObject **)((char *)engine + m->offset);
    return d != NULL && Py_IS_TYPE(d, m->dispatcher_type) ? d : NULL;
}

static PyObject *
method_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    EngineMethod *m = (EngineMethod *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *d = nargs >= 1 ? method_dispatcher(m, args[0]) : NULL;
    if (d != NULL) {
        if (m->kind == METHOD_CALL) {
            /* Without ARGUMENTS_OFFSET: args[0], the engine, is the caller's. */
            return dispatcher_vectorcall(d, args + 1, (size_t)(nargs - 1), kwnames);
        }
        if (nargs == 2 && kwnames == NULL) {
            return dispatcher_pin(d, args[1]);
        }
    }
    return PyObject_Vectorcall(m->func, args, nargsf, kwnames);
}

/* engine.call as a value (not called at once): the dispatcher itself, or
 * for pin its bound pin method; the Python method bound, without one. */
static PyObject *
method_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    EngineMethod *m = (EngineMethod *)op;
    PyObject *d;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    d = method_dispatcher(m, obj);
    if (d == NULL) {
        return PyMethod_New(m->func, obj);
    }
    if (m->kind == METHOD_CALL) {
        return Py_NewRef(d);
    }
    return PyObject_GetAttrString(d, "pin");
}

static PyObject *
method_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"func", "kind", "member", NULL};
    PyObject *func, *member;
    const char *kind;
    PyMemberDef *def;
    EngineMethod *self;
    speedups_state *state = PyType_GetModuleState(type);
    if (state == NULL) {
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OsO:EngineMethod", kwlist, &func, &kind,
                                     &member)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "func must be callable");
        return NULL;
    }
    if (strcmp(kind, "call") != 0 && strcmp(kind, "pin") != 0) {
        PyErr_SetString(PyExc_ValueError, "kind must be 'call' or 'pin'");
        return NULL;
    }
    /* The member must be a __slots__ object member: its offset is read raw. */
    if (!Py_IS_TYPE(member, &PyMemberDescr_Type) ||
        (def = ((PyMemberDescrObject *)member)->d_member)->type != Py_T_OBJECT_EX) {
        PyErr_SetString(PyExc_TypeError, "member must be a __slots__ member of the class");
        return NULL;
    }
    self = (EngineMethod *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = method_vectorcall;
    self->func = Py_NewRef(func);
    self->owner = (PyTypeObject *)Py_NewRef(
        (PyObject *)((PyDescrObject *)member)->d_type);
    self->dispatcher_type = (PyTypeObject *)Py_NewRef((PyObject *)state->dispatcher);
    self->offset = def->offset;
    self->kind = strcmp(kind, "call") == 0 ? METHOD_CALL : METHOD_PIN;
    return (PyObject *)self;
}

static int
method_traverse(PyObject *op, visitproc visit, void *arg)
{
    EngineMethod *self = (EngineMethod *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->func);
    Py_VISIT(self->owner);
    Py_VISIT(self->dispatcher_type);
    return 0;
}

static int
method_clear(PyObject *op)
{
    EngineMethod *self = (EngineMethod *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->dispatcher_type);
    return 0;
}

static void
method_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)method_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

/* __doc__, __name__, __qualname__, __module__ and the rest are the Python
 * method's: help(Engine.call) and inspect.signature read them. */
static PyObject *
method_getattro(PyObject *op, PyObject *name)
{
    EngineMethod *self = (EngineMethod *)op;
    PyObject *found = PyObject_GenericGetAttr(op, name);
    if (found != NULL || self->func == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return found;
    }
    PyErr_Clear();
    return PyObject_GetAttr(self->func, name);
}

static PyObject *
method_get_wrapped(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((EngineMethod *)op)->func);
}

static PyObject *
method_get_doc(PyObject *op, void *Py_UNUSED(closure))
{
    EngineMethod *self = (EngineMethod *)op;
    if (self->func == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(self->func, "__doc__");
}

static PyObject *
method_repr(PyObject *op)
{
    EngineMethod *self = (EngineMethod *)op;
    return PyUnicode_FromFormat("<accelerated %R>", self->func ? self->func : Py_None);
}

static PyGetSetDef method_getset[] = {
    {"__wrapped__", method_get_wrapped, NULL, NULL, NULL},
    {"__doc__", method_get_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef method_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(EngineMethod, vectorcall), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot method_slots[] = {
    /* No tp_doc: it would shadow the __doc__ getter, the method's doc. */
    {Py_tp_new, method_new},
    {Py_tp_dealloc, method_dealloc},
    {Py_tp_traverse, method_traverse},
    {Py_tp_clear, method_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, method_get},
    {Py_tp_getattro, method_getattro},
    {Py_tp_repr, method_repr},
    {Py_tp_getset, method_getset},
    {Py_tp_members, method_members},
    {0, NULL},
};

static PyType_Spec method_spec = {
    .name = "livepatch._speedups.EngineMethod",
    .basicsize = sizeof(EngineMethod),
    .itemsize = 0,
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
              Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_IMMUTABLETYPE),
    .slots = method_slots,
};
