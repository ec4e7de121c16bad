"""Puts firmware/ and this folder on sys.path, as the MicroPython runner does."""

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE.parents[1] / "firmware", _HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
