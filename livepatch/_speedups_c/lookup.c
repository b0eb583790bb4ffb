/* livepatch._speedups, Lookup cache.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

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
    self->c_ts_id = 0;
    self->c_pins = NULL;
    self->c_rules = self->c_fn = NULL;
    Py_CLEAR(self->c_slot);
    Py_CLEAR(self->c_symbol);
    Py_CLEAR(self->c_pin_slot);
    Py_CLEAR(self->c_pinner);
}
