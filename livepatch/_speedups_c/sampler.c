/* livepatch._speedups, Shadow sampling.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

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
