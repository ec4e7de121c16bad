# Runs the firmware test modules under MicroPython (no pytest there); see fwrun.py, the
# runner's body, for what it prints:
#
#     micropython -X heapsize=64K tests/firmware/mprun.py [module ...]
#
# This file is all the interpreter compiles itself, so it is kept to a few lines and has no
# docstring or long string constant: whatever the compiler makes while its parse tree fills
# the heap (a string constant, say) stays in the middle of the 64 KiB heap afterwards and
# splits it (seen: the whole-device tests needed 4-8 KiB more heap with the module list and
# the documentation here). MPY_TEST_PATH: folders of precompiled .mpy modules (the pytest
# wrapper sets it), as on the device; without it, this folder and the firmware's sources.
import os
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_path = os.getenv("MPY_TEST_PATH") or (_here + ":" + _here + "/../../firmware")
for _p in reversed(_path.split(":")):
    sys.path.insert(0, _p)

from fwrun import main  # noqa: E402

sys.exit(1 if main(sys.argv[1:]) else 0)
