/* livepatch._speedups, the includes and the object layouts.
 * Included by livepatch/_speedups.c, never compiled alone: one translation
 * unit, so the hot path's static functions still inline. */

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
    /* The last value read of `pins` (see pins_value): valid while the same
     * thread state runs with the same context version, the key CPython's
     * own per-variable cache uses. c_ts_id 0 (no thread has it): empty. */
    uint64_t c_ts_id;
    uint64_t c_ts_ver;
    PyObject *c_pins;          /* borrowed from the context, or NULL for None */
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
 * (the engine makes it when it first publishes the version). rules.NAME is
 * the version's own function, the call counted when the name is looked up
 * (see rules_getattro). */
typedef struct {
    PyObject_HEAD
    PyObject *version;   /* strong: the engine's Version record (`_v`) */
    PyObject *vid;       /* strong: str, "slot@N" */
    PyObject *namespace; /* strong: dict, the version's globals (`_ns`) */
    PyObject *calls;     /* strong: counter */
    PyObject *errors;    /* strong: counter */
    /* The last rules.NAME answered, valid while the namespace's tag is
     * unchanged (the namespace then still holds last_fn). */
    PyObject *last_name; /* strong, or NULL */
    uint64_t last_tag;
    PyObject *last_fn;   /* borrowed from the namespace */
    PyObject *weakreflist;
    PyObject *sampler;   /* strong or NULL: a shadow run's Sampler (see sampled_call) */
} Rules;

/* One open pin block of a context. */
typedef struct {
    PyObject *slot;       /* strong */
    PyObject *rules;      /* strong: the pinned Rules */
    unsigned long thread; /* threading.get_ident() of the opener */
    int counted;          /* pushed here (1), or inherited from another context (0) */
    /* strong, or NULL: the exception that engine.call inside the block
     * counted as an error, so that __exit__ does not count it again (kept
     * on the slot's outermost entry, see hook_exit) */
    PyObject *raised;
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
