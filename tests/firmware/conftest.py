"""Puts firmware/ and this folder on sys.path, as the MicroPython runner does; the folders
the tests make on the real filesystem (fwfakes.tmpdir) go below pytest's temporary folder."""

import os
import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for p in (_HERE.parents[1] / "firmware", _HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture(autouse=True, scope="session")
def _fw_tmp(tmp_path_factory):
    old = os.environ.get("FW_TMP")
    os.environ["FW_TMP"] = str(tmp_path_factory.mktemp("fw"))
    yield
    import fwfakes

    fwfakes.cleanup()
    if old is None:
        del os.environ["FW_TMP"]
    else:
        os.environ["FW_TMP"] = old
