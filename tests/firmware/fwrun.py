"""The body of mprun.py: runs every `test_*` function of every module named on the command
line (or of MODULES), under MicroPython, where there is no pytest; `module:test_name` runs
that one test only (one test in a fresh interpreter: what it needs on its own).

    micropython -X heapsize=64K tests/firmware/mprun.py [module[:test_name] ...]

A module of its own so that it runs precompiled (mpy-cross) like everything else: compiling
it on the device's heap would count too. Prints one line per failure, the heap figures, and
a closing 'N passed, M failed' line.

Heap figures (bytes; see docs/firmware.md, "Memory budget"):
  heap_size_bytes       the GC heap (what -X heapsize gives, less the allocation table)
  heap_imported_bytes   live after importing the test module: firmware, fakes and test code
  heap_peak_live_bytes  the highest live heap seen: gc.collect() then gc.mem_alloc(), sampled
                        before and after every test and, inside tests, whenever the firmware
                        reads the (fake) clock, opens a (fake) flash file or talks to the
                        (fake) broker (fwfakes.heap_sample). Garbage is not counted; a
                        temporary that lives only between two samples is not seen either, so
                        this is a lower bound of the true peak, and passing under the heap
                        cap is the upper bound.
  heap_samples          how many samples that peak is the maximum of
FW_HEAP_SAMPLE=0 turns the sampling inside tests off (the collections it forces change how
the heap fragments): the module must pass both ways.
"""

import gc
import sys

import fwfakes

# One string (one object on the heap, not eighteen), split only when no module is named.
MODULES = ("test_fw_sign test_fw_message test_fw_config test_fw_keys test_fw_terminal "
           "test_fw_voice test_fw_screen test_fw_store test_fw_outbox test_fw_link "
           "test_fw_receipts test_fw_fault test_fw_app test_fw_app_cmd test_fw_app_ops "
           "test_fw_app_keys test_fw_app_hold test_fw_app_av")


def main(names):
    sample = fwfakes.heap_sample
    passed = failed = 0
    imported = 0
    for name in names or MODULES.split():
        name, _, only = name.partition(":")
        gc.collect()
        mod = __import__(name)
        gc.collect()
        imported = max(imported, gc.mem_alloc())
        sample()
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_") or (only and attr != only):
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
                print(f"FAIL {name}.{attr}: {type(e).__name__} {e}")
                sys.print_exception(e)
            fn = None
            sample()
        mod = None
        del sys.modules[name]
        gc.collect()
    fwfakes.cleanup()
    gc.collect()
    print(f"heap_size_bytes: {gc.mem_alloc() + gc.mem_free():d}")
    print(f"heap_imported_bytes: {imported:d}")
    print(f"heap_peak_live_bytes: {fwfakes.HEAP[0]:d}")
    print(f"heap_samples: {fwfakes.HEAP[1]:d}")
    for k in sorted(fwfakes.FIGURES):
        print(f"{k}: {fwfakes.FIGURES[k]:d}")
    print(f"{passed:d} passed, {failed:d} failed")
    return failed
