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
    return stack; /* the variable holds it; this reference is the caller's */
}

static int
stack_push(PinStack *stack, PyObject *slot, PyObject *rules, int counted)
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
    entry->thread = counted ? PyThread_get_thread_ident() : 0;
    entry->counted = counted;
    stack->depth++; /* last: a GC pass in between sees only whole entries */
    return 0;
}

static void
stack_pop(PinStack *stack)
{
    PinEntry *entry = &stack->entries[--stack->depth];
    PyObject *slot = entry->slot, *rules = entry->rules;
    entry->slot = entry->rules = NULL;
    Py_DECREF(slot);
    Py_DECREF(rules); /* may free the version: after the entry is gone */
}
