/* livepatch._speedups, Module.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

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
