"""Runs the firmware test modules under the real MicroPython unix port, heap capped at
64 KiB, one fresh interpreter per module; fails if any test fails there.

Firmware and test modules are precompiled with mpy-cross first, as they are on the
device (frozen or .mpy), so the heap measures the code running, not the compiler.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = pathlib.Path(sys.executable).parent
MICROPYTHON = BIN / "micropython"
MPY_CROSS = BIN / "mpy-cross"
HEAP = "64K"
# The whole-device module holds every firmware module, its fakes (an in-RAM "flash" and a
# broker that keeps every message) and the device at once. On the 64-bit unix port every
# object and pointer is twice its ESP32 size and this does not fit in 64 KiB; it runs at
# 128 KiB and reports the device's own live heap (device_live_heap_bytes) instead.
HEAP_FOR = {"test_fw_app": "128K"}

MODULES = ["test_fw_sign", "test_fw_message", "test_fw_config", "test_fw_keys",
           "test_fw_terminal", "test_fw_store", "test_fw_outbox", "test_fw_link",
           "test_fw_app"]


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpy")
    sources = [(p, p.relative_to(ROOT / "firmware")) for p in (ROOT / "firmware" / "etfw").glob("*.py")]
    sources += [(HERE / (m + ".py"), pathlib.Path(m + ".py")) for m in MODULES + ["fwfakes", "fwnet"]]
    for src, rel in sources:
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(MPY_CROSS), "-o", str(dst), str(src)], check=True, cwd=src.parent)
    return out


def _run(mpy_dir, module):
    env = dict(os.environ, MPY_TEST_PATH=str(mpy_dir), EVALTERM_ROOT=str(ROOT))
    heap = HEAP_FOR.get(module, HEAP)
    return subprocess.run([str(MICROPYTHON), "-X", "heapsize=" + heap, str(HERE / "mprun.py"),
                           module], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("module", MODULES)
def test_module_under_micropython(mpy_dir, module):
    assert MICROPYTHON.exists(), "install the test extras: bash scripts/setup.sh"
    r = _run(mpy_dir, module)
    out = r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, out
    passed, failed = int(m.group(1)), int(m.group(2))
    high = re.search(r"heap_high_water_bytes: (\d+)", r.stdout)
    figures = dict(re.findall(r"^(\w+): (\d+)$", r.stdout, re.M))
    print(f"\n{module}: {passed} passed, {failed} failed under MicroPython, "
          f"heap {HEAP_FOR.get(module, HEAP)}, "
          f"high water {high.group(1) if high else '?'} bytes, figures {figures}")
    assert r.returncode == 0 and failed == 0 and passed > 0, out
