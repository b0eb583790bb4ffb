/* livepatch._speedups, Pin stacks.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

/* ------------------------------------------------------------------------ */
/* Pin stacks */

/* Is `a` the slot `b`? Slots are nearly always the same interned str. */
static inline int
same_slot(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b)) {
        return PyUnicode_Compare(a, b) == 0;
    }
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* The Rules `stack` has pinned for `slot` (the innermost), borrowed; NULL
 * with no error when there is none, NULL with an error set on error. */
static PyObject *
stack_find(PinStack *stack, PyObject *slot)
{
    Py_ssize_t i;
    for (i = stack->depth - 1; i >= 0; i--) {
        int same = same_slot(stack->entries[i].slot, slot);
        if (same < 0) {
            return NULL;
        }
        if (same) {
            return stack->entries[i].rules;
        }
    }
    return NULL;
}

/* The running context, or NULL when this thread has none yet. The field is
 * part of CPython's (non-limited) thread state in 3.11 to 3.13. */
static inline PyObject *
current_context(void)
{
    return PyThreadState_Get()->context;
}

/* The value of the engine's `pins` variable in the running context,
 * borrowed (the context holds it; NULL for None), into *value; -1 with an
 * error set on error. Every pin block reads it twice and every engine.call
 * once: a repeat in the same thread state with the same context version
 * (which CPython advances on every switch of context and every set in it,
 * so the same context with the same contents) is two compares instead of
 * PyContextVar_Get's call, type check and reference. A set does not
 * advance the version: own_stack, the only setter, updates this cache. */
static inline int
pins_value(Dispatcher *d, PyThreadState *ts, PyObject **value)
{
    PyObject *v;
#if LP_LOOKUP_CACHE
    if (ts->id == d->c_ts_id && ts->context_ver == d->c_ts_ver) {
        *value = d->c_pins;
        return 0;
    }
#endif
    if (PyContextVar_Get(d->pins, NULL, &v) < 0) {
        return -1;
    }
    if (v != NULL) {
        Py_DECREF(v); /* held by the context (or None, by the interpreter) */
        if (v == Py_None) {
            v = NULL;
        }
    }
#if LP_LOOKUP_CACHE
    d->c_ts_id = ts->id;
    d->c_ts_ver = ts->context_ver;
    d->c_pins = v;
#endif
    *value = v;
    return 0;
}

static PinStack *stack_new(PyTypeObject *type, PinStack *inherited);

/* This context's own stack: `value` (the variable's, a new reference that is
 * consumed) when it belongs here, else a new one copying what `value` holds,
 * made this context's with one ContextVar.set. NULL with an error set. */
static PinStack *
own_stack(Dispatcher *d, PyObject *value)
{
    PyObject *token;
    PinStack *stack, *inherited = NULL;
    PyObject *ctx = current_context();
    if (value != NULL && Py_IS_TYPE(value, d->stack_type)) {
        inherited = (PinStack *)value;
        if (ctx != NULL && inherited->owner == ctx) {
            return inherited;
        }
    }
    stack = stack_new(d->stack_type, inherited);
    Py_XDECREF(value);
    if (stack == NULL) {
        return NULL;
    }
    token = PyContextVar_Set(d->pins, (PyObject *)stack);
    if (token == NULL) {
        Py_DECREF(stack);
        return NULL;
    }
    Py_DECREF(token); /* a stack is never reset: it is emptied in place */
    ctx = current_context(); /* set made one if the thread had none */
    if (ctx == NULL) {
        Py_DECREF(stack);
        PyErr_SetString(PyExc_SystemError, "no current context after ContextVar.set");
        return NULL;
    }
    stack->owner = Py_NewRef(ctx);
#if LP_LOOKUP_CACHE
    /* A set leaves the context version as it was (CPython resets only the
     * variable's own cache): pins_value's must learn the new value here.
     * Nothing else sets the variable of an engine that has a dispatcher. */
    {
        PyThreadState *ts = PyThreadState_Get();
        d->c_ts_id = ts->id;
        d->c_ts_ver = ts->context_ver;
        d->c_pins = (PyObject *)stack;
    }
#endif
    return stack; /* the variable holds it; this reference is the caller's */
}

/* Push (slot, rules); `thread` is the opener's ident, 0 for an entry
 * inherited from another context (not counted here). */
static int
stack_push(PinStack *stack, PyObject *slot, PyObject *rules, unsigned long thread)
{
    PinEntry *entry;
    if (stack->depth == stack->capacity) {
        Py_ssize_t capacity = stack->capacity ? stack->capacity * 2 : 4;
        PinEntry *entries = PyMem_Realloc(stack->entries, (size_t)capacity * sizeof(PinEntry));
        if (entries == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        stack->entries = entries;
        stack->capacity = capacity;
    }
    entry = &stack->entries[stack->depth];
    entry->slot = Py_NewRef(slot);
    entry->rules = Py_NewRef(rules);
    entry->thread = thread;
    entry->counted = thread != 0;
    entry->raised = NULL;
    stack->depth++; /* last: a GC pass in between sees only whole entries */
    return 0;
}

static void
stack_pop(PinStack *stack)
{
    PinEntry *entry = &stack->entries[--stack->depth];
    PyObject *slot = entry->slot, *rules = entry->rules, *raised = entry->raised;
    entry->slot = entry->rules = entry->raised = NULL;
    Py_DECREF(slot);
    Py_XDECREF(raised);
    Py_DECREF(rules); /* may free the version: after the entry is gone */
}

/* The slot's outermost entry on `stack` (the request's), or NULL. */
static PinEntry *
stack_outermost(PinStack *stack, PyObject *slot)
{
    Py_ssize_t i;
    for (i = 0; i < stack->depth; i++) {
        int same = same_slot(stack->entries[i].slot, slot);
        if (same < 0) {
            PyErr_Clear(); /* slots are str: not reached */
            return NULL;
        }
        if (same) {
            return &stack->entries[i];
        }
    }
    return NULL;
}

/* engine.call inside a pin of `slot` counted the error now being raised:
 * remember it on the slot's outermost entry, whose __exit__ would count it
 * again. Only on the error path; the exception is put back untouched. */
static void
note_counted_error(PyObject *pins, PyTypeObject *stack_type, PyObject *slot)
{
    PyObject *type, *value, *tb, *top = NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && PyContextVar_Get(pins, NULL, &top) == 0 && top != NULL &&
        Py_IS_TYPE(top, stack_type)) {
        PinEntry *entry = stack_outermost((PinStack *)top, slot);
        if (entry != NULL) {
            Py_XSETREF(entry->raised, Py_NewRef(value));
        }
    }
    Py_XDECREF(top);
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    PyErr_Restore(type, value, tb);
}
