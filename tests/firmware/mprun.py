"""Runs the firmware test modules under MicroPython (no pytest there): every `test_*`
function of every module named on the command line, or of the default list.

    micropython -X heapsize=64K tests/firmware/mprun.py [module ...]

Prints one line per failure, the peak heap use, and a closing 'N passed, M failed' line.
"""

import gc
import sys

import os

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
# MPY_TEST_PATH: folders of precompiled .mpy modules (the pytest wrapper sets it), as on
# the device, where the firmware is frozen or precompiled and costs no compile heap.
for p in reversed((os.getenv("MPY_TEST_PATH") or (_here + ":" + _here + "/../../firmware")).split(":")):
    sys.path.insert(0, p)

MODULES = ["test_fw_sign", "test_fw_message", "test_fw_config", "test_fw_keys",
           "test_fw_terminal", "test_fw_store", "test_fw_outbox", "test_fw_link",
           "test_fw_app"]


def main():
    import fwfakes

    names = sys.argv[1:] or MODULES
    passed = failed = 0
    high = 0  # heap in use (live + garbage) right after a test, highest seen
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            gc.collect()
            try:
                fn()
                passed += 1
                used = gc.mem_alloc()
                if used > high:
                    high = used
            except Exception as e:
                failed += 1
                print("FAIL %s.%s: %s %s" % (name, attr, type(e).__name__, e))
                sys.print_exception(e)
        del sys.modules[name]
        gc.collect()
    gc.collect()
    print("heap_size_bytes: %d" % (gc.mem_alloc() + gc.mem_free()))
    print("heap_high_water_bytes: %d" % high)
    for k in sorted(fwfakes.FIGURES):
        print("%s: %d" % (k, fwfakes.FIGURES[k]))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


main()
