"""Runs the firmware test modules under MicroPython (no pytest there): every `test_*`
function of every module named on the command line, or of the default list.

    micropython -X heapsize=64K tests/firmware/mprun.py [module ...]

Prints one line per failure, the heap figures, and a closing 'N passed, M failed' line.
The runner's body is fwrun.py, precompiled by the pytest wrapper like the rest; this file
is only what the interpreter must compile itself, so it is kept tiny.

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

import os
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
# MPY_TEST_PATH: folders of precompiled .mpy modules (the pytest wrapper sets it), as on
# the device, where the firmware is frozen or precompiled and costs no compile heap.
for _p in reversed((os.getenv("MPY_TEST_PATH") or (_here + ":" + _here + "/../../firmware")).split(":")):
    sys.path.insert(0, _p)

from fwrun import main  # noqa: E402

sys.exit(1 if main(sys.argv[1:] or [
    "test_fw_sign", "test_fw_message", "test_fw_config", "test_fw_keys", "test_fw_terminal",
    "test_fw_store", "test_fw_outbox", "test_fw_link", "test_fw_fault", "test_fw_app",
    "test_fw_app_cmd", "test_fw_app_ops", "test_fw_app_keys", "test_fw_app_hold"]) else 0)
