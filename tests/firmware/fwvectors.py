"""The protocol's test vectors (docs/protocol.md section 8), for the signature tests."""

import os

from fwfakes import heap_sample

_VECTORS = []


def vectors():
    """The ```vector blocks of docs/protocol.md as dicts (topic, payload bytes, sig).

    Read line by line: the whole document would not fit next to the tests in 64 KiB."""
    if _VECTORS:
        return _VECTORS
    cur = None
    with open(_root() + "/docs/protocol.md", "rb") as f:
        while True:
            line = f.readline()
            if not line:
                break
            line = line.rstrip(b"\n")
            if cur is None:
                if line == b"```vector":
                    cur = {}
            elif line.startswith(b"```"):
                heap_sample()
                _VECTORS.append(cur)
                cur = None
            elif b": " in line:
                k, val = line.split(b": ", 1)
                cur[k.decode()] = val if k == b"payload" else val.decode()
    return _VECTORS


def _root():
    # The repository: precompiled .mpy copies live elsewhere, and the MicroPython wrapper
    # passes it in EVALTERM_ROOT.
    root = getattr(os, "getenv", lambda k: None)("EVALTERM_ROOT")
    if root:
        return root
    here = __file__.replace("\\", "/")
    if not here.startswith("/"):
        here = os.getcwd() + "/" + here
    return here.rsplit("/", 3)[0]
