/* livepatch._speedups, Dispatcher.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Dispatcher */

/* The Rules this context has pinned for `slot`, a new reference; NULL with
 * no error when it has none, NULL with an error on error. Reading the
 * variable costs a few compares while no variable of this thread changed
 * since the last read (CPython caches the last value per variable); the
 * value is None until this context opens a pin, so pins elsewhere, or long
 * closed, cost nothing here. *fallback is set when the variable holds
 * something the C pin does not store: Python decides then. */
static inline PyObject *
pinned_rules(Dispatcher *self, PyObject *slot, int *fallback)
{
    PyObject *top, *rules;
    PinStack *stack;
    PyThreadState *ts = PyThreadState_Get();
    if (pins_value(self, ts, &top) < 0) {
        return NULL;
    }
    if (top == NULL) {
        return NULL;
    }
    if (!Py_IS_TYPE(top, self->stack_type)) {
        *fallback = 1;
        return NULL;
    }
    stack = (PinStack *)top;
    if (stack->depth == 0) {
        return NULL;
    }
    if (stack->owner != ts->context) {
        /* Inherited pins: from the first pinned call on, this context keeps
         * its own copy, so its calls never change version when the context
         * it came from closes its pins. */
        stack = own_stack(self, Py_NewRef(top));
        if (stack == NULL) {
            return NULL;
        }
        rules = stack_find(stack, slot);
        Py_XINCREF(rules); /* before the stack, which holds it, may go */
        Py_DECREF(stack);
        return rules;
    }
    rules = stack_find(stack, slot);
    Py_XINCREF(rules);
    return rules;
}

/* The hot path: dispatcher(slot, symbol, *args, **kwargs).
 *
 * Every `goto fallback` hands the call, untouched, to the Python Engine.call.
 * Before the Rules are found nothing is owned; after, `rules` and then `fn`
 * are owned and released on every way out. */
static PyObject *
dispatcher_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Dispatcher *self = (Dispatcher *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *rules, *fn, *result;
    Rules *r;
    int fallback = 0, pinned = 1;

    if (self->fast == NULL || self->pins == NULL) {
        goto fallback; /* being cleared by the GC (see dispatcher_clear) */
    }
    if (nargs < 2 || !PyUnicode_CheckExact(args[0]) || !PyUnicode_CheckExact(args[1])) {
        goto fallback; /* Python raises the right TypeError or lookup error */
    }

    /* Inside a pin of its slot, the pinned version; else the active one. */
    rules = pinned_rules(self, args[0], &fallback);
    if (rules == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (fallback) {
            goto fallback;
        }
        pinned = 0;
        /* Borrowed from `fast`; taken strongly at once, before anything that
         * could run Python code (a swap on another thread may replace it
         * while the rule runs, and the callee may itself swap). */
        rules = active_rules(self, args[0]);
        if (rules == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            goto fallback; /* no such slot, or no active version */
        }
        Py_INCREF(rules);
    }
    r = (Rules *)rules;

    /* Borrowed from the namespace, which the callee is free to mutate (a rule
     * may rebind its own globals): hold the function for the call. */
    fn = r->namespace != NULL ? namespace_fn(self, r->namespace, args[1]) : NULL;
    if (fn == NULL) {
        Py_DECREF(rules);
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto fallback; /* Python names the version in its error */
    }
    Py_INCREF(fn);

    /* A shadow run's sampler, if any, sees the call after it returned
     * (sampled_call); without one this is a single pointer test. */
    /* Pass the caller's array on, minus slot and symbol; keyword values
     * follow the positional ones there, so kwnames is passed unchanged.
     * PY_VECTORCALL_ARGUMENTS_OFFSET is deliberately not passed: it would
     * let the callee overwrite args[1], and the caller's array may be a
     * tuple shared with other threads (PyVectorcall_Call). */
    if (r->sampler == NULL) {
        result = counted_call(fn, r->calls, r->errors, args + 2, (size_t)(nargs - 2), kwnames);
    }
    else {
        result = sampled_call(r->sampler, fn, r->calls, r->errors, args[1], args + 2, nargs - 2,
                              kwnames);
    }
    if (result == NULL && pinned) {
        note_counted_error(self->pins, self->stack_type, args[0]);
    }
    Py_DECREF(fn);
    Py_DECREF(rules);
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
    static char *kwlist[] = {"fast", "pins", "fallback", "no_active", NULL};
    PyObject *fast, *pins, *fallback, *no_active;
    speedups_state *state = PyType_GetModuleState(type);
    Dispatcher *self;

    if (state == NULL) {
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:Dispatcher", kwlist, &fast, &pins,
                                     &fallback, &no_active)) {
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
    if (!PyCallable_Check(fallback) || !PyCallable_Check(no_active)) {
        PyErr_SetString(PyExc_TypeError, "fallback and no_active must be callable");
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
    self->no_active = Py_NewRef(no_active);
    self->rules_type = (PyTypeObject *)Py_NewRef((PyObject *)state->rules);
    self->stack_type = (PyTypeObject *)Py_NewRef((PyObject *)state->pin);
    self->hook_type = (PyTypeObject *)Py_NewRef((PyObject *)state->hook);
    self->pinners = PyDict_New();
    if (self->pinners == NULL) {
        Py_DECREF(self);
        return NULL;
    }
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
    Py_VISIT(self->no_active);
    Py_VISIT(self->rules_type);
    Py_VISIT(self->stack_type);
    Py_VISIT(self->hook_type);
    Py_VISIT(self->pinners);
    Py_VISIT(self->c_slot);
    Py_VISIT(self->c_symbol);
    Py_VISIT(self->c_pin_slot);
    Py_VISIT(self->c_pinner);
    return 0;
}

/* Py_CLEAR sets each field to NULL before releasing it, and the order
 * matters: a finalizer run by one of these releases may still call the
 * dispatcher, which then hands the call to the fallback while there is one. */
static int
dispatcher_clear(PyObject *op)
{
    Dispatcher *self = (Dispatcher *)op;
    cache_clear(self);
    Py_CLEAR(self->fast);
    Py_CLEAR(self->pins);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->no_active);
    Py_CLEAR(self->rules_type);
    Py_CLEAR(self->stack_type);
    Py_CLEAR(self->hook_type);
    Py_CLEAR(self->pinners);
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
    return PyUnicode_FromFormat("<livepatch._speedups.Dispatcher active_slots=%zd>", slots);
}

static PyObject *hook_enter(PyObject *, PyObject *const *, size_t, PyObject *);
static PyObject *hook_exit(PyObject *, PyObject *const *, size_t, PyObject *);

static PyObject *
new_hook(Dispatcher *self, PyObject *slot)
{
    PinHook *hook = PyObject_GC_New(PinHook, self->hook_type);
    if (hook == NULL) {
        return NULL;
    }
    hook->vectorcall = slot != NULL ? hook_enter : hook_exit;
    hook->dispatcher = Py_NewRef((PyObject *)self);
    hook->slot = Py_XNewRef(slot);
    PyObject_GC_Track((PyObject *)hook);
    return (PyObject *)hook;
}

/* dispatcher.pin(slot), i.e. engine.pin(slot): the context manager.
 *
 * A `with` statement looks __enter__ and __exit__ up on the manager's type
 * and binds them to the manager: for methods, two bound-method objects made
 * and freed per block, about a sixth of a pin block's instructions. So the
 * manager is one object per slot, of a class of its own whose __enter__ and
 * __exit__ are PinHook objects, which are not descriptors: the lookup
 * returns them as they are, and no binding is made. It holds no state (what
 * a block opens lives in the context variable), so one serves every block
 * of its slot in every thread. Made on the first pin of a slot that has an
 * active version; a slot without one raises here, as __enter__ would. */
static PyObject *
dispatcher_pin(PyObject *op, PyObject *slot)
{
    Dispatcher *self = (Dispatcher *)op;
    PyObject *pinner, *enter = NULL, *exit = NULL, *ns = NULL, *cls = NULL;

    if (self->pinners == NULL || self->fast == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "the engine of this dispatcher is gone");
        return NULL;
    }
    if (slot == self->c_pin_slot) {
        return Py_NewRef(self->c_pinner); /* pinners are never replaced */
    }
    pinner = PyDict_GetItemWithError(self->pinners, slot);
    if (pinner != NULL) {
        if (PyUnicode_CheckExact(slot)) {
            Py_XSETREF(self->c_pin_slot, Py_NewRef(slot));
            Py_XSETREF(self->c_pinner, Py_NewRef(pinner));
        }
        return Py_NewRef(pinner);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyUnicode_CheckExact(slot) || PyDict_GetItemWithError(self->fast, slot) == NULL) {
        if (!PyErr_Occurred()) {
            PyObject *exc = PyObject_CallOneArg(self->no_active, slot);
            if (exc != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                Py_DECREF(exc);
            }
        }
        return NULL;
    }
    enter = new_hook(self, slot);
    exit = new_hook(self, NULL);
    if (enter == NULL || exit == NULL) {
        goto done;
    }
    ns = Py_BuildValue("{sOsOs()sssssO}", "__enter__", enter, "__exit__", exit, "__slots__",
                       "__module__", "livepatch._speedups", "__doc__",
                       "with engine.pin(slot) as rules: one version for the whole block.",
                       "slot", slot);
    if (ns == NULL) {
        goto done;
    }
    cls = PyObject_CallFunction((PyObject *)&PyType_Type, "s()O", "Pin", ns);
    if (cls == NULL) {
        goto done;
    }
    pinner = PyObject_CallNoArgs(cls);
    if (pinner != NULL && PyDict_SetItem(self->pinners, slot, pinner) < 0) {
        Py_CLEAR(pinner);
    }
done:
    Py_XDECREF(enter);
    Py_XDECREF(exit);
    Py_XDECREF(ns);
    Py_XDECREF(cls);
    return pinner;
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
    {"fast", get_fast, NULL, PyDoc_STR("The dict slot -> Rules of the active version."), NULL},
    {"pins", get_pins, NULL, PyDoc_STR("The engine's context variable of open pins."), NULL},
    {"fallback", get_fallback, NULL, PyDoc_STR("The Python Engine.call, bound."), NULL},
    /* inspect.signature() and help() follow __wrapped__ to the Python method. */
    {"__wrapped__", get_fallback, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef dispatcher_methods[] = {
    {"pin", dispatcher_pin, METH_O,
     PyDoc_STR("pin(slot)\n--\n\nA context manager that runs a block on one version of slot "
               "(Engine.pin in C).")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef dispatcher_members[] = {
    /* How PyType_FromSpec learns where the vectorcall pointer lives. */
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(Dispatcher, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(dispatcher_doc,
             "Dispatcher(fast, pins, fallback, no_active)\n"
             "--\n"
             "\n"
             "Engine.call in C: dispatcher(slot, symbol, *args, **kwargs) calls\n"
             "symbol of the slot's version pinned in this context (pins), else\n"
             "of its active one (fast: slot -> Rules), and counts the call and\n"
             "any error. Every unusual case is handed to fallback, the Python\n"
             "Engine.call, with the original arguments. pin(slot) is Engine.pin.\n"
             "Once made, the dispatcher is the only setter of pins.");

static PyType_Slot dispatcher_slots[] = {
    {Py_tp_doc, (void *)dispatcher_doc},
    {Py_tp_new, dispatcher_new},
    {Py_tp_dealloc, dispatcher_dealloc},
    {Py_tp_traverse, dispatcher_traverse},
    {Py_tp_clear, dispatcher_clear},
    {Py_tp_call, PyVectorcall_Call}, /* tp_call for callers without vectorcall */
    {Py_tp_repr, dispatcher_repr},
    {Py_tp_getset, dispatcher_getset},
    {Py_tp_methods, dispatcher_methods},
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
