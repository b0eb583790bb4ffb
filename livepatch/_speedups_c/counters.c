/* livepatch._speedups, Counters.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

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
 * counted call (engine.call, pinned or not). */
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
