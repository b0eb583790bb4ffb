/* livepatch._speedups, Pin.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Pin: with engine.pin(slot) as rules */

/* __enter__ of engine.pin(slot): push the slot's version on this context's
 * stack (a nested pin of the slot keeps the outer one's); returns its Rules. */
static PyObject *
hook_enter(PyObject *op, PyObject *const *Py_UNUSED(args), size_t nargsf,
           PyObject *kwnames)
{
    PinHook *hook = (PinHook *)op;
    Dispatcher *d = (Dispatcher *)hook->dispatcher;
    PyThreadState *ts = PyThreadState_Get();
    PyObject *value, *rules;
    PinStack *stack;

    /* pin.__enter__() passes nothing; type(pin).__enter__(pin), as
     * contextlib.ExitStack calls it, passes the manager, which is ignored:
     * the hook knows its slot. */
    if (PyVectorcall_NARGS(nargsf) > 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
        return NULL;
    }
    if (d->pins == NULL || d->fast == NULL || d->stack_type == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "the engine of this pin is gone");
        return NULL;
    }
    if (pins_value(d, ts, &value) < 0) {
        return NULL;
    }
    /* The common case, inline: this context's own stack (borrowed). */
    if (value != NULL && Py_IS_TYPE(value, d->stack_type) &&
        ((PinStack *)value)->owner == ts->context) {
        stack = (PinStack *)value;
        Py_INCREF(stack);
    }
    else {
        if (value != NULL && !Py_IS_TYPE(value, d->stack_type)) {
            value = NULL; /* not ours (a Python Pin's dict): nothing to inherit */
        }
        stack = own_stack(d, Py_XNewRef(value));
        if (stack == NULL) {
            return NULL;
        }
    }
    rules = stack_find(stack, hook->slot);
    if (rules == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(stack);
            return NULL;
        }
        rules = active_rules(d, hook->slot);
        if (rules == NULL) {
            Py_DECREF(stack);
            if (!PyErr_Occurred()) {
                /* The engine words it: unknown slot, or nothing active. */
                PyObject *exc = PyObject_CallOneArg(d->no_active, hook->slot);
                if (exc != NULL) {
                    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                    Py_DECREF(exc);
                }
            }
            return NULL;
        }
    }
    /* Between reading `fast` and the push nothing runs Python code, so an
     * unload on another thread either sees this pin or ran before it. */
    Py_INCREF(rules);
    if (stack_push(stack, hook->slot, rules, (unsigned long)ts->thread_id) < 0) {
        Py_DECREF(rules);
        Py_DECREF(stack);
        return NULL;
    }
    Py_DECREF(stack);
    return rules; /* our reference */
}

/* Does the traceback pass through code of the namespace `ns`? */
static int
raised_in(PyObject *exc, PyObject *ns)
{
    PyObject *tb = PyException_GetTraceback(exc);
    PyTracebackObject *t;
    int found = 0;
    for (t = (PyTracebackObject *)tb; t != NULL && !found; t = t->tb_next) {
        if (!PyTraceBack_Check((PyObject *)t) || t->tb_frame == NULL) {
            break;
        }
        PyObject *globals = PyFrame_GetGlobals(t->tb_frame);
        found = globals == ns;
        Py_XDECREF(globals);
    }
    Py_XDECREF(tb);
    return found;
}

/* The block ends with `exc`: count it as an error of the pinned version when
 * the version's code raised it and this is the request's block, the slot's
 * outermost on the stack (an exception leaving nested blocks counts once),
 * unless engine.call inside the block counted it already. rules.f calls
 * raise through no wrapper of ours: this is where their errors count. */
static void
count_block_error(PinStack *stack, PyObject *exc)
{
    PinEntry *top = &stack->entries[stack->depth - 1];
    Rules *rules = (Rules *)top->rules;
    if (!top->counted || !PyExceptionInstance_Check(exc) || top->raised == exc ||
        stack_outermost(stack, top->slot) != top || rules->namespace == NULL ||
        !raised_in(exc, rules->namespace)) {
        return;
    }
    if (tick(rules->errors) < 0) {
        PyErr_WriteUnraisable(rules->errors); /* never replaces the block's exception */
    }
}

/* __exit__ of engine.pin(slot): pop this context's innermost pin, the one
 * this block pushed (`with` blocks nest within a context), counting the
 * error it ends with (count_block_error). Called as __exit__(type, value,
 * traceback) by `with`, or with the manager first by an ExitStack. */
static PyObject *
hook_exit(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *Py_UNUSED(kwnames))
{
    PinHook *hook = (PinHook *)op;
    Dispatcher *d = (Dispatcher *)hook->dispatcher;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *value, *exc = nargs == 3 ? args[1] : nargs == 4 ? args[2] : Py_None;
    PyThreadState *ts = PyThreadState_Get();
    if (d->pins == NULL || d->stack_type == NULL) {
        Py_RETURN_NONE;
    }
    if (pins_value(d, ts, &value) < 0) {
        return NULL;
    }
    if (value != NULL && Py_IS_TYPE(value, d->stack_type)) {
        PinStack *stack = (PinStack *)value;
        if (stack->depth > 0 && stack->owner == ts->context) {
            /* Held across the pop, whose releases may run finalizers. */
            Py_INCREF(stack);
            if (exc != Py_None) {
                count_block_error(stack, exc);
            }
            stack_pop(stack);
            Py_DECREF(stack);
        }
    }
    Py_RETURN_NONE; /* never swallows the block's exception */
}

static PinStack *
stack_new(PyTypeObject *type, PinStack *inherited)
{
    speedups_state *state = PyType_GetModuleState(type);
    PinStack *self;
    Py_ssize_t i;
    if (state == NULL) {
        return NULL;
    }
    self = PyObject_GC_New(PinStack, type);
    if (self == NULL) {
        return NULL;
    }
    self->owner = NULL;
    self->depth = self->capacity = 0;
    self->entries = NULL;
    self->state = state;
    self->prev = NULL;
    self->next = state->stacks;
    if (state->stacks != NULL) {
        state->stacks->prev = self;
    }
    state->stacks = self;
    PyObject_GC_Track((PyObject *)self);
    /* What the other context had open is visible here too, but counted
     * there: its blocks are the ones in flight. */
    for (i = 0; inherited != NULL && i < inherited->depth; i++) {
        if (stack_push(self, inherited->entries[i].slot, inherited->entries[i].rules, 0) < 0) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return self;
}

static int
stack_traverse(PyObject *op, visitproc visit, void *arg)
{
    PinStack *self = (PinStack *)op;
    Py_ssize_t i;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->owner);
    for (i = 0; i < self->depth; i++) {
        Py_VISIT(self->entries[i].slot);
        Py_VISIT(self->entries[i].rules);
        Py_VISIT(self->entries[i].raised);
    }
    return 0;
}

static int
stack_clear(PyObject *op)
{
    PinStack *self = (PinStack *)op;
    /* An abandoned context (garbage with pins still open): its pins end. */
    while (self->depth > 0) {
        stack_pop(self);
    }
    Py_CLEAR(self->owner);
    return 0;
}

static void
stack_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PinStack *self = (PinStack *)op;
    PyObject_GC_UnTrack(op);
    (void)stack_clear(op);
    if (self->prev != NULL) {
        self->prev->next = self->next;
    }
    else if (self->state->stacks == self) {
        self->state->stacks = self->next;
    }
    if (self->next != NULL) {
        self->next->prev = self->prev;
    }
    PyMem_Free(self->entries);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
stack_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<PinStack depth=%zd>", ((PinStack *)op)->depth);
}

static Py_ssize_t
stack_len(PyObject *op)
{
    return ((PinStack *)op)->depth;
}

/* pins.get(slot): what the Python Engine.call asks of the variable's value,
 * a dict on the Python path and a PinStack here: the pinned rules, or None. */
static PyObject *
stack_get(PyObject *op, PyObject *slot)
{
    PyObject *rules = stack_find((PinStack *)op, slot);
    if (rules == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return Py_NewRef(rules);
}

static PyMethodDef pin_methods[] = {
    {"get", stack_get, METH_O,
     PyDoc_STR("get(slot)\n--\n\nThe rules this context has pinned for slot, or None.")},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(pin_doc, "The open pins of one context (the engine's context variable's value); "
                      "len() is how many.");

static PyType_Slot pin_slots[] = {
    {Py_tp_doc, (void *)pin_doc},
    {Py_tp_dealloc, stack_dealloc},
    {Py_tp_traverse, stack_traverse},
    {Py_tp_clear, stack_clear},
    {Py_tp_repr, stack_repr},
    {Py_sq_length, stack_len},
    {Py_tp_methods, pin_methods},
    {0, NULL},
};

static PyType_Spec pin_spec = {
    .name = "livepatch._speedups.PinStack",
    .basicsize = sizeof(PinStack),
    .itemsize = 0,
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
              Py_TPFLAGS_DISALLOW_INSTANTIATION),
    .slots = pin_slots,
};
