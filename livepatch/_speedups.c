/*
 * livepatch._speedups: the optional C accelerator of the engine's hot path.
 *
 * Engine.call and Engine.pin (livepatch/engine.py, livepatch/pinning.py) are
 * the reference implementations and stay the fallback. This module serves
 * the common cases in C with the same semantics:
 *
 *   Dispatcher  engine.call(slot, symbol, *args, **kwargs): the slot's pinned
 *               version if this context has a pin of the slot open, else its
 *               active one; every error case is handed, with the original
 *               arguments, to the Python Engine.call, so errors read exactly
 *               as the Python code words them.
 *   Pin         what engine.pin(slot) returns (dispatcher.pin): one context
 *               manager per slot, of a class made for it whose __enter__ and
 *               __exit__ are PinHook objects; __enter__ pins the slot's active
 *               version (or, nested, keeps the outer pin's) on this context's
 *               PinStack and returns its Rules.
 *   Rules       the bound rules of one version (the C PinnedRules):
 *               rules.f(...) calls f of that version, counted.
 *   Counted     what rules.f is: f with the version's counters around it.
 *   Counter     a call counter advanced in place.
 *   Sampler     a shadow run's sampler (livepatch/shadow.py): set on the
 *               active version's Rules (`_sampler`), it counts calls down and
 *               queues a sample of them, timed, for the run's thread. Unset,
 *               it costs the dispatcher one compare.
 *
 * What the dispatcher reads (all maintained by the engine, in Python):
 *
 *   fast       dict, slot name -> the Rules of its active version. The engine
 *              stores a new one when it swaps (one dict store, atomic under
 *              the GIL, like its own _active dict) and removes it on close.
 *   pins       the engine's contextvars.ContextVar: None, or the PinStack of
 *              this context: its open pins, innermost last. A context gets
 *              its own stack once, by its first pin (one ContextVar.set);
 *              after that opening and closing a pin pushes and pops in place,
 *              which is what makes a pin cheap (a set and a reset per block
 *              cost a third of it: two immutable-map updates, a token, four
 *              allocations). A stack knows the context it belongs to (it
 *              holds it), so a context that inherited another's stack (an
 *              asyncio task, copy_context) never changes it: it takes its own
 *              copy at its first pin or pinned call. Threads and tasks so
 *              each see their own pins, across await.
 *   fallback   the bound Python Engine.call.
 *   no_active  the engine's _no_active(slot): the exception a pin of a slot
 *              without an active version raises.
 *
 * Pin counts: every stack entry a context pushed itself records the thread
 * that opened it, and every live stack is on one list (the module's);
 * Rules.open_pins() walks them for the engine's in-flight figure, which is
 * rare (unload, status), so that opening a pin keeps no other count. All of
 * it runs under the GIL, which makes every push and pop atomic for others.
 *
 * Reference cycles: the engine owns the dispatcher, which owns the bound
 * method, which owns the engine; a Version owns its Rules, which own the
 * Version; a PinStack owns its context, which owns the stack (through the
 * variable). Hence the GC support of every container type below.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h> /* offsetof */
#include <math.h>   /* log, log1p: the gaps between a shadow run's samples */
#include <time.h>   /* clock_gettime: the sampled calls' latency */

#if PY_VERSION_HEX < 0x030C0000
/* Python 3.11 spells the member-type constants only in structmember.h; 3.12
 * moved them, with a Py_ prefix, into Python.h. */
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

typedef struct PinStack PinStack;

/* Lookup caches (see "Lookup cache" below) read a dict's version tag, which
 * every change to the dict replaces with a value no dict had before: an
 * unchanged tag means the same dict with the same contents. CPython 3.12
 * deprecated the field (it stays through 3.13); later versions go without
 * the caches. */
#if PY_VERSION_HEX < 0x030E0000
#define LP_LOOKUP_CACHE 1
static inline uint64_t
dict_tag(PyObject *dict)
{
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    return ((PyDictObject *)dict)->ma_version_tag;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}
#else
#define LP_LOOKUP_CACHE 0
#endif

/* The module's types, found from any of their instances' types. */
typedef struct {
    PyTypeObject *dispatcher;
    PyTypeObject *counter;
    PyTypeObject *rules;
    PyTypeObject *counted;
    PyTypeObject *pin;
    PyTypeObject *hook;
    PyTypeObject *sampler;
    PyTypeObject *method;
    PinStack *stacks; /* borrowed: every live PinStack, for open_pins */
} speedups_state;


typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* what makes instances vectorcall-able */
    PyObject *fast;            /* strong: dict slot -> Rules */
    PyObject *pins;            /* strong: contextvars.ContextVar */
    PyObject *fallback;        /* strong: callable, the Python Engine.call */
    PyObject *no_active;       /* strong: callable slot -> exception */
    PyTypeObject *rules_type;  /* strong: exact-type checks on the hot path */
    PyTypeObject *stack_type;  /* strong */
    PyTypeObject *hook_type;   /* strong */
    PyObject *pinners;         /* strong: dict slot -> what pin(slot) returns */
    /* Lookup cache: the last slot -> Rules answer of `fast` and the last
     * symbol -> function answer of a namespace, each valid while the dict's
     * tag is unchanged (the dict then still holds what was borrowed). The
     * keys are held: a freed str's address may be reused by another. */
    PyObject *c_slot;          /* strong, or NULL */
    uint64_t c_fast_tag;
    PyObject *c_rules;         /* borrowed from fast */
    PyObject *c_symbol;        /* strong, or NULL */
    uint64_t c_ns_tag;
    PyObject *c_fn;            /* borrowed from the namespace */
    PyObject *c_pin_slot;      /* strong, or NULL: the last pin(slot) answered */
    PyObject *c_pinner;        /* strong */
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

/* Rules: one version's functions, as `pin` hands them out. One per version
 * (the engine makes it when it first publishes the version), so the
 * Counted wrappers are built once per name. */
typedef struct {
    PyObject_HEAD
    PyObject *version;   /* strong: the engine's Version record (`_v`) */
    PyObject *vid;       /* strong: str, "slot@N" */
    PyObject *namespace; /* strong: dict, the version's globals (`_ns`) */
    PyObject *calls;     /* strong: counter */
    PyObject *errors;    /* strong: counter */
    PyObject *cache;     /* strong: dict name -> Counted */
    PyObject *last_name; /* strong, or NULL: the last name looked up in cache */
    PyObject *last_counted; /* strong: what cache holds for it */
    PyObject *weakreflist;
    PyObject *sampler;   /* strong or NULL: a shadow run's Sampler (see sampled_call) */
} Rules;

/* Counted: rules.NAME, the function with its version's counters. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fn;     /* strong */
    PyObject *calls;  /* strong */
    PyObject *errors; /* strong */
    PyObject *name;   /* strong: str */
} Counted;

/* One open pin block of a context. */
typedef struct {
    PyObject *slot;       /* strong */
    PyObject *rules;      /* strong: the pinned Rules */
    unsigned long thread; /* threading.get_ident() of the opener */
    int counted;          /* pushed here (1), or inherited from another context (0) */
} PinEntry;

/* PinStack: the open pins of one context, innermost last. */
struct PinStack {
    PyObject_HEAD
    PyObject *owner;       /* strong: the context it belongs to, or NULL */
    Py_ssize_t depth;
    Py_ssize_t capacity;
    PinEntry *entries;     /* PyMem */
    speedups_state *state; /* the module's, for the list of stacks */
    PinStack *prev;        /* borrowed: neighbours on state->stacks */
    PinStack *next;
};

/* PinHook: the __enter__ (slot set) or __exit__ (slot NULL) of what
 * engine.pin(slot) returns. See dispatcher_pin for why these are not
 * methods. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dispatcher; /* strong */
    PyObject *slot;       /* strong, or NULL for __exit__ */
} PinHook;

/* ------------------------------------------------------------------------ */
/* Counters */

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

/* Call fn with the version's counters around it: the one body of every
 * counted call (engine.call, pinned or not, and rules.NAME). */
static inline PyObject *
counted_call(PyObject *fn, PyObject *calls, PyObject *errors, PyObject *const *args,
             size_t nargsf, PyObject *kwnames)
{
    PyObject *result;
    if (tick(calls) < 0) {
        return NULL;
    }
    if (Py_IS_TYPE(fn, &PyFunction_Type)) {
        /* A rule function: its own vectorcall at once. PyObject_Vectorcall
         * would find the same pointer and then check the result's
         * consistency with the error indicator, which a Python function
         * always keeps. */
        result = ((PyFunctionObject *)fn)->vectorcall(fn, args, nargsf, kwnames);
    }
    else {
        result = PyObject_Vectorcall(fn, args, nargsf, kwnames);
    }
    if (result == NULL) {
        count_error(errors);
    }
    return result;
}

/* ------------------------------------------------------------------------ */
/* Shadow sampling (livepatch/shadow.py)
 *
 * A shadow run sets a Sampler on the Rules of the slot's active version. Its
 * countdown is decremented on every call the dispatcher makes on them; the
 * call that brings it to zero is timed, and its inputs and outcome are
 * appended to the run's queue (a collections.deque, which the run's own
 * thread drains) as one tuple, or counted as dropped when the queue is full.
 * No Python code runs on the caller's thread for it, and nothing waits. The
 * next countdown is drawn from a geometric distribution (mean 1 / sample),
 * so a traffic pattern that repeats cannot line up with the sampling.
 * Without a sampler this costs the dispatcher one compare. */

typedef struct {
    PyObject_HEAD
    PyObject *queue;         /* strong: the run's deque */
    PyObject *append;        /* strong: queue.append */
    Py_ssize_t capacity;     /* at most this many items queued */
    Py_ssize_t countdown;    /* calls until the next sample (>= 1 between calls) */
    double log_keep;         /* log(1 - sample); 0.0: every call */
    unsigned long long rng;  /* xorshift64 state, never 0 */
    unsigned long long sampled;
    unsigned long long dropped;
} Sampler;

static inline long long
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Calls until the next sample: 1 + floor(log(U) / log(1 - p)), U in (0, 1]. */
static Py_ssize_t
sampler_gap(Sampler *s)
{
    double u, gap;
    if (s->log_keep == 0.0) {
        return 1;
    }
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    u = ((double)(s->rng >> 11) + 1.0) / 9007199254740992.0; /* (0, 1] */
    gap = 1.0 + floor(log(u) / s->log_keep);
    return gap >= (double)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)gap;
}

/* Queue one finished call: (symbol, args, kwargs or None, result or None,
 * error or None, elapsed_ns). Never raises: a failure (memory) is
 * reported as unraisable and the caller gets its own outcome untouched. */
static void
sample_queue(Sampler *s, PyObject *symbol, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames, PyObject *result, PyObject *error, long long elapsed)
{
    PyObject *tuple = NULL, *kwargs = NULL, *item = NULL, *done;
    Py_ssize_t i, length, nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    s->sampled++;
    length = PyObject_Size(s->queue);
    if (length < 0) {
        goto failed;
    }
    if (length >= s->capacity) {
        s->dropped++;
        return;
    }
    tuple = PyTuple_New(nargs);
    if (tuple == NULL) {
        goto failed;
    }
    for (i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    }
    if (nkw > 0) {
        kwargs = PyDict_New();
        if (kwargs == NULL) {
            goto failed;
        }
        for (i = 0; i < nkw; i++) {
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                goto failed;
            }
        }
    }
    item = Py_BuildValue("(OOOOOL)", symbol, tuple, kwargs != NULL ? kwargs : Py_None,
                         result != NULL ? result : Py_None, error != NULL ? error : Py_None,
                         elapsed);
    if (item == NULL) {
        goto failed;
    }
    done = PyObject_CallOneArg(s->append, item); /* deque.append: C, never blocks */
    if (done == NULL) {
        goto failed;
    }
    Py_DECREF(done);
    Py_DECREF(item);
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return;
failed:
    Py_XDECREF(item);
    Py_XDECREF(tuple);
    Py_XDECREF(kwargs);
    PyErr_WriteUnraisable((PyObject *)s);
}

/* counted_call with a shadow run's sampler: off the sampled calls, a
 * decrement and a compare more; on them, the timing and the queueing. */
static Py_NO_INLINE PyObject *
sampled_call(PyObject *sampler, PyObject *fn, PyObject *calls, PyObject *errors, PyObject *symbol,
             PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Sampler *s = (Sampler *)sampler;
    PyObject *result;
    long long started;
    if (--s->countdown > 0) {
        return counted_call(fn, calls, errors, args, (size_t)nargs, kwnames);
    }
    s->countdown = sampler_gap(s);
    Py_INCREF(sampler); /* the callee may take it off the Rules (a swap ends the run) */
    started = monotonic_ns();
    result = counted_call(fn, calls, errors, args, (size_t)nargs, kwnames);
    started = monotonic_ns() - started;
    if (result != NULL) {
        sample_queue(s, symbol, args, nargs, kwnames, result, NULL, started);
    }
    else {
        /* The active version raised: the run sees the exception, and the
         * caller gets it back exactly as it was. */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        if (traceback != NULL && value != NULL) {
            PyException_SetTraceback(value, traceback);
        }
        sample_queue(s, symbol, args, nargs, kwnames, NULL, value, started);
        PyErr_Restore(type, value, traceback);
    }
    Py_DECREF(sampler);
    return result;
}

static PyObject *
sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"queue", "capacity", "sample", "seed", NULL};
    PyObject *queue, *append;
    Py_ssize_t capacity;
    double sample;
    unsigned long long seed;
    Sampler *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OndK:Sampler", kwlist, &queue, &capacity,
                                     &sample, &seed)) {
        return NULL;
    }
    if (capacity < 1 || !(sample > 0.0 && sample <= 1.0)) {
        PyErr_SetString(PyExc_ValueError,
                        "Sampler(queue, capacity, sample, seed): capacity >= 1, 0 < sample <= 1");
        return NULL;
    }
    append = PyObject_GetAttrString(queue, "append");
    if (append == NULL) {
        return NULL;
    }
    self = (Sampler *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(append);
        return NULL;
    }
    self->queue = Py_NewRef(queue);
    self->append = append;
    self->capacity = capacity;
    self->log_keep = sample < 1.0 ? log1p(-sample) : 0.0;
    self->rng = seed != 0 ? seed : 0x9E3779B97F4A7C15ULL;
    self->countdown = sampler_gap(self);
    return (PyObject *)self;
}

static int
sampler_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((Sampler *)op)->queue);
    Py_VISIT(((Sampler *)op)->append);
    return 0;
}

static int
sampler_clear(PyObject *op)
{
    Py_CLEAR(((Sampler *)op)->queue);
    Py_CLEAR(((Sampler *)op)->append);
    return 0;
}

static void
sampler_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)sampler_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
sampler_get_sampled(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(((Sampler *)op)->sampled);
}

static PyObject *
sampler_get_dropped(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(((Sampler *)op)->dropped);
}

static PyGetSetDef sampler_getset[] = {
    {"sampled", sampler_get_sampled, NULL, PyDoc_STR("Calls sampled so far."), NULL},
    {"dropped", sampler_get_dropped, NULL, PyDoc_STR("Sampled calls the full queue refused."),
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sampler_members[] = {
    {"countdown", Py_T_PYSSIZET, offsetof(Sampler, countdown), 0,
     PyDoc_STR("Calls until the next sample.")},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(sampler_doc,
             "Sampler(queue, capacity, sample, seed)\n"
             "--\n"
             "\n"
             "A shadow run's sampler, set as rules._sampler on the active version's\n"
             "Rules: about `sample` of the engine.call calls on them are timed and\n"
             "appended to `queue` as (symbol, args, kwargs, result, error, elapsed_ns),\n"
             "or counted as dropped while it holds `capacity` items.");

static PyType_Slot sampler_slots[] = {
    {Py_tp_doc, (void *)sampler_doc},
    {Py_tp_new, sampler_new},
    {Py_tp_dealloc, sampler_dealloc},
    {Py_tp_traverse, sampler_traverse},
    {Py_tp_clear, sampler_clear},
    {Py_tp_getset, sampler_getset},
    {Py_tp_members, sampler_members},
    {0, NULL},
};

static PyType_Spec sampler_spec = {
    .name = "livepatch._speedups.Sampler",
    .basicsize = sizeof(Sampler),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sampler_slots,
};

/* rules._sampler: the Sampler, or None. */
static PyObject *
rules_get_sampler(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *sampler = ((Rules *)op)->sampler;
    return Py_NewRef(sampler != NULL ? sampler : Py_None);
}

static int
rules_set_sampler(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    speedups_state *state = PyType_GetModuleState(Py_TYPE(op));
    if (state == NULL) {
        return -1;
    }
    if (value == Py_None) {
        value = NULL;
    }
    if (value != NULL && !Py_IS_TYPE(value, state->sampler)) {
        PyErr_SetString(PyExc_TypeError, "_sampler must be a Sampler or None");
        return -1;
    }
    Py_XSETREF(((Rules *)op)->sampler, Py_XNewRef(value));
    return 0;
}

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

/* ------------------------------------------------------------------------ */
/* Lookup cache */

/* The Rules of the slot's active version, borrowed from `fast`: NULL with no
 * error when the slot has none (or `fast` holds something else), NULL with
 * an error on error. A repeat of the last slot while `fast` is unchanged is
 * two compares instead of a dict lookup. */
static inline PyObject *
active_rules(Dispatcher *self, PyObject *slot)
{
    PyObject *rules;
#if LP_LOOKUP_CACHE
    if (slot == self->c_slot && dict_tag(self->fast) == self->c_fast_tag) {
        return self->c_rules;
    }
#endif
    rules = PyDict_GetItemWithError(self->fast, slot);
    if (rules == NULL || !Py_IS_TYPE(rules, self->rules_type)) {
        return NULL;
    }
#if LP_LOOKUP_CACHE
    if (PyUnicode_CheckExact(slot)) {
        Py_XSETREF(self->c_slot, Py_NewRef(slot));
        self->c_fast_tag = dict_tag(self->fast);
        self->c_rules = rules;
    }
#endif
    return rules;
}

/* The callable `symbol` of the namespace `ns`, borrowed: NULL with no error
 * when there is none, NULL with an error on error. Cached like active_rules:
 * the namespace's tag names the version too (no other dict has it). */
static inline PyObject *
namespace_fn(Dispatcher *self, PyObject *ns, PyObject *symbol)
{
    PyObject *fn;
#if LP_LOOKUP_CACHE
    if (symbol == self->c_symbol && dict_tag(ns) == self->c_ns_tag) {
        return self->c_fn;
    }
#endif
    fn = PyDict_GetItemWithError(ns, symbol);
    if (fn == NULL || !PyCallable_Check(fn)) {
        return NULL;
    }
#if LP_LOOKUP_CACHE
    if (PyUnicode_CheckExact(symbol)) {
        Py_XSETREF(self->c_symbol, Py_NewRef(symbol));
        self->c_ns_tag = dict_tag(ns);
        self->c_fn = fn;
    }
#endif
    return fn;
}

static void
cache_clear(Dispatcher *self)
{
    self->c_rules = self->c_fn = NULL;
    Py_CLEAR(self->c_slot);
    Py_CLEAR(self->c_symbol);
    Py_CLEAR(self->c_pin_slot);
    Py_CLEAR(self->c_pinner);
}

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
    if (PyContextVar_Get(self->pins, NULL, &top) < 0) {
        return NULL;
    }
    if (top == NULL || top == Py_None) {
        Py_XDECREF(top);
        return NULL;
    }
    if (!Py_IS_TYPE(top, self->stack_type)) {
        Py_DECREF(top);
        *fallback = 1;
        return NULL;
    }
    stack = (PinStack *)top;
    if (stack->depth == 0) {
        Py_DECREF(top);
        return NULL;
    }
    if (stack->owner != current_context()) {
        /* Inherited pins: from the first pinned call on, this context keeps
         * its own copy, so its calls never change version when the context
         * it came from closes its pins. */
        stack = own_stack(self, top);
        if (stack == NULL) {
            return NULL;
        }
    }
    rules = stack_find(stack, slot);
    Py_XINCREF(rules); /* before the stack, which holds it, may go */
    Py_DECREF(stack);
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
    int fallback = 0;

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
             "Engine.call, with the original arguments. pin(slot) is Engine.pin.");

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
    self->cache = PyDict_New();
    if (self->cache == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->version = Py_NewRef(version);
    self->vid = Py_NewRef(vid);
    self->namespace = Py_NewRef(namespace);
    self->calls = Py_NewRef(calls);
    self->errors = Py_NewRef(errors);
    return (PyObject *)self;
}

/* rules.NAME: the cached Counted first (the hot case: one dict lookup);
 * then the type's own attributes (version, open_pins, _v, _ns, ...), which
 * win over rule functions of the same name, as in the Python class; then a
 * callable of the namespace, wrapped once and cached. */
static PyObject *
rules_getattro(PyObject *op, PyObject *name)
{
    Rules *self = (Rules *)op;
    PyObject *found, *fn;
    Counted *counted;
    speedups_state *state;

    if (name == self->last_name) {
        return Py_NewRef(self->last_counted); /* cache entries are never replaced */
    }
    if (self->cache != NULL && PyUnicode_CheckExact(name)) {
        found = PyDict_GetItemWithError(self->cache, name);
        if (found != NULL) {
            Py_XSETREF(self->last_name, Py_NewRef(name));
            Py_XSETREF(self->last_counted, Py_NewRef(found));
            return Py_NewRef(found);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    if (!PyUnicode_Check(name) || _PyType_Lookup(Py_TYPE(op), name) != NULL ||
        self->namespace == NULL) {
        return PyObject_GenericGetAttr(op, name);
    }
    fn = PyDict_GetItemWithError(self->namespace, name); /* borrowed */
    if (fn == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (fn == NULL || !PyCallable_Check(fn)) {
        goto missing;
    }
    if (PyUnicode_GET_LENGTH(name) >= 2 && PyUnicode_READ_CHAR(name, 0) == '_' &&
        PyUnicode_READ_CHAR(name, 1) == '_') {
        goto missing; /* dunders are the object's, never a rule's */
    }
    state = PyType_GetModuleState(Py_TYPE(op));
    if (state == NULL) {
        return NULL;
    }
    counted = PyObject_GC_New(Counted, state->counted);
    if (counted == NULL) {
        return NULL;
    }
    counted->vectorcall = counted_vectorcall;
    counted->fn = Py_NewRef(fn);
    counted->calls = Py_NewRef(self->calls);
    counted->errors = Py_NewRef(self->errors);
    counted->name = Py_NewRef(name);
    PyObject_GC_Track((PyObject *)counted);
    if (PyUnicode_CheckExact(name) && PyDict_SetItem(self->cache, name, (PyObject *)counted) < 0) {
        Py_DECREF(counted);
        return NULL;
    }
    return (PyObject *)counted;

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
    Py_VISIT(self->cache);
    Py_VISIT(self->sampler);
    Py_VISIT(self->last_name);
    Py_VISIT(self->last_counted);
    return 0;
}

static int
rules_clear(PyObject *op)
{
    Rules *self = (Rules *)op;
    Py_CLEAR(self->version);
    Py_CLEAR(self->namespace);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->sampler);
    Py_CLEAR(self->last_name);
    Py_CLEAR(self->last_counted);
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
             "The rules of one pinned version: rules.NAME(...) calls NAME of the\n"
             "version's namespace and counts the call (and any error).");

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
    if (PyContextVar_Get(d->pins, NULL, &value) < 0) {
        return NULL;
    }
    if (value == Py_None) {
        Py_CLEAR(value);
    }
    /* The common case, inline: this context's own stack. */
    if (value != NULL && Py_IS_TYPE(value, d->stack_type) &&
        ((PinStack *)value)->owner == current_context()) {
        stack = (PinStack *)value;
    }
    else {
        if (value != NULL && !Py_IS_TYPE(value, d->stack_type)) {
            Py_CLEAR(value); /* not ours (a Python Pin's dict): nothing to inherit */
        }
        stack = own_stack(d, value);
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
    if (stack_push(stack, hook->slot, rules, 1) < 0) {
        Py_DECREF(rules);
        Py_DECREF(stack);
        return NULL;
    }
    Py_DECREF(stack);
    return rules; /* our reference */
}

/* __exit__ of engine.pin(slot): pop this context's innermost pin, the one
 * this block pushed (`with` blocks nest within a context). */
static PyObject *
hook_exit(PyObject *op, PyObject *const *Py_UNUSED(args), size_t Py_UNUSED(nargsf),
          PyObject *Py_UNUSED(kwnames))
{
    PinHook *hook = (PinHook *)op;
    Dispatcher *d = (Dispatcher *)hook->dispatcher;
    PyObject *value;
    if (d->pins == NULL || d->stack_type == NULL) {
        Py_RETURN_NONE;
    }
    if (PyContextVar_Get(d->pins, NULL, &value) < 0) {
        return NULL;
    }
    if (value != NULL && Py_IS_TYPE(value, d->stack_type)) {
        PinStack *stack = (PinStack *)value;
        if (stack->depth > 0 && stack->owner == current_context()) {
            stack_pop(stack);
        }
    }
    Py_XDECREF(value);
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


/* ------------------------------------------------------------------------ */
/* Module */

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name, PyTypeObject **slot)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    *slot = (PyTypeObject *)Py_NewRef(type);
    if (PyModule_AddObjectRef(module, name, type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    Py_DECREF(type);
    return 0;
}

static int
speedups_exec(PyObject *module)
{
    speedups_state *state = PyModule_GetState(module);
    if (add_type(module, &rules_spec, "Rules", &state->rules) < 0 ||
        add_type(module, &counted_spec, "Counted", &state->counted) < 0 ||
        add_type(module, &pin_spec, "PinStack", &state->pin) < 0 ||
        add_type(module, &hook_spec, "PinHook", &state->hook) < 0 ||
        add_type(module, &counter_spec, "Counter", &state->counter) < 0 ||
        add_type(module, &sampler_spec, "Sampler", &state->sampler) < 0 ||
        add_type(module, &dispatcher_spec, "Dispatcher", &state->dispatcher) < 0 ||
        add_type(module, &method_spec, "EngineMethod", &state->method) < 0) {
        return -1;
    }
    return 0;
}

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    speedups_state *state = PyModule_GetState(module);
    Py_VISIT(state->dispatcher);
    Py_VISIT(state->counter);
    Py_VISIT(state->rules);
    Py_VISIT(state->counted);
    Py_VISIT(state->pin);
    Py_VISIT(state->hook);
    Py_VISIT(state->sampler);
    Py_VISIT(state->method);
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    speedups_state *state = PyModule_GetState(module);
    Py_CLEAR(state->dispatcher);
    Py_CLEAR(state->counter);
    Py_CLEAR(state->rules);
    Py_CLEAR(state->counted);
    Py_CLEAR(state->pin);
    Py_CLEAR(state->hook);
    Py_CLEAR(state->sampler);
    Py_CLEAR(state->method);
    return 0;
}

static void
speedups_free(void *module)
{
    (void)speedups_clear((PyObject *)module);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_mod_multiple_interpreters
    /* No process-wide state: each interpreter gets its own types. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "livepatch._speedups",
    .m_doc = "Optional C accelerator of livepatch's hot path: Engine.call and Engine.pin.",
    .m_size = sizeof(speedups_state),
    .m_slots = speedups_slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
