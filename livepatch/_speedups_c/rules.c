/* livepatch._speedups, Rules.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Rules: the C PinnedRules */

static PyObject *
rules_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"version", "id", "namespace", "calls", "errors", NULL};
    PyObject *version, *vid, *namespace, *calls, *errors;
    Rules *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OUO!OO:Rules", kwlist, &version, &vid,
                                     &PyDict_Type, &namespace, &calls, &errors)) {
        return NULL;
    }
    if (!PyDict_CheckExact(namespace)) {
        PyErr_SetString(PyExc_TypeError, "namespace must be a dict");
        return NULL;
    }
    if (!PyIter_Check(calls) || !PyIter_Check(errors)) {
        PyErr_SetString(PyExc_TypeError, "calls and errors must be counters (iterators)");
        return NULL;
    }
    self = (Rules *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->version = Py_NewRef(version);
    self->vid = Py_NewRef(vid);
    self->namespace = Py_NewRef(namespace);
    self->calls = Py_NewRef(calls);
    self->errors = Py_NewRef(errors);
    return (PyObject *)self;
}

/* rules.NAME: the version's own function, and one call counted.
 *
 * Handing out the function itself, not a counting wrapper, is what keeps a
 * pinned call as cheap as a direct one: CPython's specialising interpreter
 * calls a plain Python function inline, in the same evaluation loop, where
 * a wrapper written in C has to enter a new one (about 470 instructions, a
 * third of a whole pin block on the bundled rules). The version is held by
 * the open pin meanwhile, not by the call, so nothing is lost for unload's
 * in-flight figure. What moves: the call is counted when the name is looked
 * up (`rules.f(x)` counts one call, exactly), and an error when it leaves
 * the block (hook_exit). A function kept and called again is the version's
 * function: not counted again, and after the block unpinned (livepatch/pinning.py).
 *
 * The type's own attributes (version, open_pins, _v, _ns, ...) win over
 * rule functions of the same name, as in the Python class; dunders are the
 * object's, never a rule's. */
static PyObject *
rules_getattro(PyObject *op, PyObject *name)
{
    Rules *self = (Rules *)op;
    PyObject *fn;

#if LP_LOOKUP_CACHE
    /* A repeat of the last name while the namespace is unchanged (a rule
     * that rebinds a global shows on the next lookup). */
    if (name == self->last_name && dict_tag(self->namespace) == self->last_tag) {
        fn = self->last_fn;
        goto found;
    }
#endif
    if (!PyUnicode_Check(name) || _PyType_Lookup(Py_TYPE(op), name) != NULL ||
        self->namespace == NULL) {
        return PyObject_GenericGetAttr(op, name);
    }
    if (PyUnicode_GET_LENGTH(name) >= 2 && PyUnicode_READ_CHAR(name, 0) == '_' &&
        PyUnicode_READ_CHAR(name, 1) == '_') {
        goto missing;
    }
    fn = PyDict_GetItemWithError(self->namespace, name); /* borrowed */
    if (fn == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (fn == NULL || !PyCallable_Check(fn)) {
        goto missing;
    }
#if LP_LOOKUP_CACHE
    if (PyUnicode_CheckExact(name)) {
        Py_XSETREF(self->last_name, Py_NewRef(name));
        self->last_tag = dict_tag(self->namespace);
        self->last_fn = fn;
    }
#endif
#if LP_LOOKUP_CACHE
found:
#endif
    Py_INCREF(fn); /* the caller's, before anything could rebind the name */
    if (tick(self->calls) < 0) {
        Py_DECREF(fn);
        return NULL;
    }
    return fn;

missing:
    PyErr_Format(PyExc_AttributeError, "%U has no callable %R", self->vid, name);
    return NULL;
}

static PyObject *
rules_open_pins(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    Rules *self = (Rules *)op;
    speedups_state *state = PyType_GetModuleState(Py_TYPE(op));
    PyObject *counts;
    PinStack *stack;
    unsigned long *threads = NULL;
    Py_ssize_t n = 0, cap = 0, i, k;
    if (state == NULL) {
        return NULL;
    }
    /* First into a C array: creating ints and dicts may run the GC, which
     * may free a stack, and the list must stay still while it is walked. */
    for (stack = state->stacks; stack != NULL; stack = stack->next) {
        for (i = 0; i < stack->depth; i++) {
            if (stack->entries[i].rules != op || !stack->entries[i].counted) {
                continue;
            }
            if (n == cap) {
                unsigned long *grown;
                cap = cap ? cap * 2 : 8;
                grown = PyMem_Realloc(threads, (size_t)cap * sizeof(unsigned long));
                if (grown == NULL) {
                    PyMem_Free(threads);
                    return PyErr_NoMemory();
                }
                threads = grown;
            }
            threads[n++] = stack->entries[i].thread;
        }
    }
    (void)self;
    counts = PyDict_New();
    for (k = 0; counts != NULL && k < n; k++) {
        PyObject *key = PyLong_FromUnsignedLong(threads[k]);
        PyObject *old, *new;
        if (key == NULL) {
            Py_CLEAR(counts);
            break;
        }
        old = PyDict_GetItemWithError(counts, key);
        new = PyLong_FromLong((old != NULL ? PyLong_AsLong(old) : 0) + 1);
        if (new == NULL || PyDict_SetItem(counts, key, new) < 0) {
            Py_CLEAR(counts);
        }
        Py_XDECREF(new);
        Py_DECREF(key);
    }
    PyMem_Free(threads);
    return counts;
}

static int
rules_traverse(PyObject *op, visitproc visit, void *arg)
{
    Rules *self = (Rules *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->version);
    Py_VISIT(self->vid);
    Py_VISIT(self->namespace);
    Py_VISIT(self->calls);
    Py_VISIT(self->errors);
    Py_VISIT(self->sampler);
    Py_VISIT(self->last_name);
    return 0;
}

static int
rules_clear(PyObject *op)
{
    Rules *self = (Rules *)op;
    Py_CLEAR(self->version);
    self->last_fn = NULL;
    Py_CLEAR(self->last_name); /* before the namespace: the cache test reads it */
    Py_CLEAR(self->namespace);
    Py_CLEAR(self->sampler);
    /* vid and the counters hold nothing: kept for repr and open pins. */
    return 0;
}

static void
rules_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    Rules *self = (Rules *)op;
    PyObject_GC_UnTrack(op);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    /* Every open Pin holds its Rules, so none is open now. */
    (void)rules_clear(op);
    Py_CLEAR(self->vid);
    Py_CLEAR(self->calls);
    Py_CLEAR(self->errors);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
rules_repr(PyObject *op)
{
    Rules *self = (Rules *)op;
    return PyUnicode_FromFormat("<PinnedRules %U>", self->vid);
}

static PyObject *
rules_get_version(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((Rules *)op)->vid);
}

static PyObject *
rules_get_v(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Rules *)op)->version);
}

static PyObject *
rules_get_ns(PyObject *op, void *Py_UNUSED(closure))
{
    return field_or_none(((Rules *)op)->namespace);
}

static PyGetSetDef rules_getset[] = {
    {"version", rules_get_version, NULL, PyDoc_STR("The id of the pinned version."), NULL},
    /* What the Python Engine.call reads of pinned rules, C or Python. */
    {"_v", rules_get_v, NULL, NULL, NULL},
    {"_ns", rules_get_ns, NULL, NULL, NULL},
    {"_sampler", rules_get_sampler, rules_set_sampler, PyDoc_STR("A shadow run's Sampler, or None."),
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef rules_methods[] = {
    {"open_pins", rules_open_pins, METH_NOARGS,
     PyDoc_STR("open_pins()\n--\n\nOpen pin blocks of this version, by thread id.")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rules_members[] = {
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(Rules, weakreflist), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(rules_doc,
             "Rules(version, id, namespace, calls, errors)\n"
             "--\n"
             "\n"
             "The rules of one pinned version: rules.NAME is the version's function\n"
             "NAME, the call counted when it is looked up (an error when it leaves\n"
             "the pin block).");

static PyType_Slot rules_slots[] = {
    {Py_tp_doc, (void *)rules_doc},
    {Py_tp_new, rules_new},
    {Py_tp_dealloc, rules_dealloc},
    {Py_tp_traverse, rules_traverse},
    {Py_tp_clear, rules_clear},
    {Py_tp_getattro, rules_getattro},
    {Py_tp_repr, rules_repr},
    {Py_tp_getset, rules_getset},
    {Py_tp_methods, rules_methods},
    {Py_tp_members, rules_members},
    {0, NULL},
};

static PyType_Spec rules_spec = {
    .name = "livepatch._speedups.Rules",
    .basicsize = sizeof(Rules),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rules_slots,
};
