"""The body of mprun.py (see there), a module of its own so that it runs precompiled
(mpy-cross) like everything else: compiling it on the device's heap would count too."""

import gc
import sys

import fwfakes


def main(names):
    sample = fwfakes.heap_sample
    passed = failed = 0
    imported = 0
    for name in names:
        mod = __import__(name)
        gc.collect()
        imported = max(imported, gc.mem_alloc())
        sample()
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            # Every test starts on a collected heap, as every boot starts on an empty one;
            # without it, the previous test's garbage can be held by stale words on the C
            # stack (the GC scans it conservatively) when this test first needs room.
            gc.collect()
            sample()
            try:
                fn()
                passed += 1
            except Exception as e:
                failed += 1
                print("FAIL %s.%s: %s %s" % (name, attr, type(e).__name__, e))
                sys.print_exception(e)
            fn = None
            sample()
        mod = None
        del sys.modules[name]
        gc.collect()
    fwfakes.cleanup()
    gc.collect()
    print("heap_size_bytes: %d" % (gc.mem_alloc() + gc.mem_free()))
    print("heap_imported_bytes: %d" % imported)
    print("heap_peak_live_bytes: %d" % fwfakes.HEAP[0])
    print("heap_samples: %d" % fwfakes.HEAP[1])
    for k in sorted(fwfakes.FIGURES):
        print("%s: %d" % (k, fwfakes.FIGURES[k]))
    print("%d passed, %d failed" % (passed, failed))
    return failed
