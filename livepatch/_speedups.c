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
 *               rules.f is f of that version itself, the call counted at
 *               the lookup (a plain function is called inline by the
 *               interpreter, a C wrapper could not be); an error raised in
 *               the version's code counts when it leaves the pin block.
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
 *              each see their own pins, across await. The dispatcher is
 *              the variable's only setter (see pins_value, which caches the
 *              value it read until the thread switches context).
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

/* One translation unit, split by concept into livepatch/_speedups_c/: the
 * parts are included in dependency order (each uses only what comes before
 * it), so static functions stay static and the hot path inlines as before. */
#include "_speedups_c/types.h"
#include "_speedups_c/counters.c"
#include "_speedups_c/sampler.c"
#include "_speedups_c/pinstack.c"
#include "_speedups_c/lookup.c"
#include "_speedups_c/dispatcher.c"
#include "_speedups_c/method.c"
#include "_speedups_c/rules.c"
#include "_speedups_c/pin.c"
#include "_speedups_c/pinhook.c"
#include "_speedups_c/counter.c"
#include "_speedups_c/module.c"
