"""The firmware tests on a real 32-bit MicroPython: the official WebAssembly port (npm
package @micropython/micropython-webassembly-pyscript, pinned below and installed by
scripts/setup.sh into .venv/npm) under Node.js, heap 64 KiB.

The unix port of test_micropython.py is 64-bit (8-byte pointers and objects, 32-byte GC
blocks); the ESP32 and this port are 32-bit (4 bytes, 16-byte blocks, 31-bit small ints,
ticks wrapping at 2**30). Same .mpy files (mpy-cross output is bytecode: no architecture).

This port never collects garbage inside a call from JavaScript; it grows its heap instead,
and collects between calls (see wasm/run.mjs). So every test module runs here one test per
call and must pass, with its heap figures printed (after imports and between tests exact;
`uncollected`: what a test allocated with no collection at all during it); and
`test_device_steps_on_32bit` drives one whole device one event per call (wasm/fwsteps.py)
and fails if its heap ever had to grow past the 64 KiB it started with: the firmware's code,
a running device and the harness fit in 64 KiB on a 32-bit MicroPython even with
collections only between main-loop steps. Figures: docs/firmware.md.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
from test_micropython import HELPERS, MODULES, MPY_CROSS, build_test_font

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WASM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
WASM_VERSION = "1.29.0-6"  # the same pin as scripts/setup.sh
PKG = ROOT / ".venv" / "npm" / "node_modules" / WASM_PACKAGE
RUN = HERE / "wasm" / "run.mjs"
HEAP = "64K"


def _missing():
    node = shutil.which("node")
    if node is None:
        return "node (Debian package nodejs) is not installed"
    meta = PKG / "package.json"
    if not meta.exists():
        return f"{WASM_PACKAGE} is not installed in {PKG.parent.parent.parent}"
    version = json.loads(meta.read_text())["version"]
    if version != WASM_VERSION:
        return f"{WASM_PACKAGE} {version} installed, {WASM_VERSION} pinned"
    return None


@pytest.fixture(scope="module")
def node():
    why = _missing()
    if why:
        msg = f"32-bit MicroPython (WebAssembly) unavailable: {why}; run bash scripts/setup.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return shutil.which("node")


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpy32")
    sources = [(p, p.relative_to(ROOT / "firmware"))
               for p in (ROOT / "firmware" / "etfw").glob("*.py")]
    sources += [(HERE / (m + ".py"), pathlib.Path(m + ".py")) for m in MODULES + HELPERS]
    sources += [(p, pathlib.Path(p.name)) for p in (HERE / "wasm").glob("*.py")]
    for src, rel in sources:
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        name = ".".join(rel.with_suffix("").parts)  # as test_micropython.py does
        subprocess.run([str(MPY_CROSS), "-o", str(dst), "-s", name, str(src)], check=True,
                       cwd=src.parent)
    build_test_font(out / "font.etf")  # run.mjs copies it into the port's filesystem
    return out


def _run(node, mpy_dir, *args):
    r = subprocess.run([node, str(RUN), str(PKG), str(mpy_dir), str(ROOT), HEAP, *args],
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, out
    figures = dict(re.findall(r"^(\w+): (.+)$", r.stdout, re.M))
    return r, int(m.group(1)), int(m.group(2)), figures, out


def _kib(figures):
    return {k: "%.1f KiB" % (int(v) / 1024) for k, v in figures.items() if k.endswith("_bytes")}


def test_wasm_port_loads_this_mpy_format(node, mpy_dir):
    r, _passed, _failed, figures, out = _run(node, mpy_dir)
    assert r.returncode == 0, out
    abi, small_int_bits = (int(x) for x in figures["mpy_abi"].split())
    header = (mpy_dir / "etfw" / "app.mpy").read_bytes()[:4]
    # .mpy header: 'M', version, arch/sub-version (0: bytecode only), small-int bits.
    assert header[:1] == b"M" and header[2] == 0, header
    assert header[1] == abi & 0xFF, (
        f"mpy-cross writes .mpy v{header[1]}, the port reads v{abi & 0xFF}")
    assert header[3] <= small_int_bits == 31, (header, small_int_bits)  # a 32-bit port
    assert int(figures["heap_size_bytes"]) < 64 * 1024, figures


@pytest.mark.parametrize("module", MODULES)
def test_module_on_32bit(node, mpy_dir, module):
    r, passed, failed, figures, out = _run(node, mpy_dir, module)
    kib = _kib(figures)
    print(f"\n{module}: {passed} passed, {failed} failed on 32-bit MicroPython (WebAssembly), "
          f"heap {HEAP}: after imports {kib.get('heap_imported_bytes')}, between tests "
          f"{kib.get('heap_live_between_tests_bytes')}; uncollected peak "
          f"{kib.get('heap_peak_uncollected_bytes')} ({figures.get('heap_peak_uncollected_at')}), "
          f"heap grew to {kib.get('heap_grown_to_bytes')} "
          f"(first in {figures.get('heap_first_grown_in')})")
    assert r.returncode == 0 and failed == 0 and passed > 0, out


def test_device_steps_on_32bit(node, mpy_dir):
    r, passed, failed, figures, out = _run(node, mpy_dir, "--steps")
    kib = _kib(figures)
    print(f"\ndevice steps ({figures.get('steps_events')} events) on 32-bit MicroPython "
          f"(WebAssembly), heap {HEAP}: after imports {kib.get('heap_imported_bytes')}, peak "
          f"live {kib.get('heap_peak_live_bytes')} (at {figures.get('heap_peak_live_at')}), "
          f"peak uncollected {kib.get('heap_peak_uncollected_bytes')} "
          f"(at {figures.get('heap_peak_uncollected_at')}); {kib}")
    assert r.returncode == 0 and failed == 0 and passed == 1, out
    assert figures["heap_grown_to_bytes"] == figures["heap_size_bytes"], (
        "the heap had to grow past {} at event {}\n{}".format(HEAP, figures["heap_grown_at"], out))
