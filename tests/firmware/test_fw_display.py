"""The display end to end (CPython only): the font build (firmware/tools/build_font.py)
against the Debian package's Unifont, and every screen of test_fw_screen.py rendered both
under CPython (etfw.fbshim) and on the MicroPython unix port (the real framebuf), compared
byte for byte and written as PNG (scaled 4x) to EVALTERM_TEST_OUT/firmware-screens
(default build/test-output/firmware-screens) for people to look at.

Figures printed (pytest -s): the font file sizes, the heap a Screen holds and the time per
screen on the unix port."""

import os
import pathlib
import re
import struct
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "firmware" / "tools"))
import build_font  # noqa: E402
import test_fw_screen  # noqa: E402
from test_micropython import MICROPYTHON, mpy_cross  # noqa: E402

HEX = pathlib.Path("/usr/share/unifont/unifont.hex")
pytestmark = pytest.mark.skipif(not HEX.exists(), reason="apt-get install unifont")
OUT = pathlib.Path(os.environ.get("EVALTERM_TEST_OUT") or ROOT / "build" / "test-output")


@pytest.fixture(scope="module")
def unifont():
    return build_font.read_hex(HEX)


@pytest.fixture(scope="module")
def font(tmp_path_factory):
    out = tmp_path_factory.mktemp("font") / "font.etf"
    assert build_font.main(["--charset", "prompts", "--extra", test_fw_screen.NAMES,
                            "--out", str(out)]) == 0
    return out


def test_font_glyphs_are_unifont_s(font, unifont):
    from etfw.font import Font

    with open(font, "rb") as f:
        ft = Font(f)
        chars = set(build_font.firmware_texts() + test_fw_screen.NAMES) - {"\n"}
        for ch in sorted(chars):
            buf, w = ft.glyph(ord(ch))
            assert bytes(buf) == unifont[ord(ch)], ch
            assert w == len(unifont[ord(ch)]) // 2
        assert ft.glyph(ord(test_fw_screen.RARE)) is None  # in Unifont, not in this build
        assert ft.glyph(0x4E00 - 1) is None


def test_full_gb2312_font_covers_every_text_and_its_size(tmp_path, unifont, capsys):
    out = tmp_path / "font.etf"
    assert build_font.main(["--out", str(out)]) == 0
    data = out.read_bytes()
    n = struct.unpack(">H", data[4:6])[0]
    assert n == 6763 + 682  # GB 2312: 6763 hanzi and 682 other characters, none ASCII
    assert len(data) == 8 + 95 * 16 + n * 34
    from etfw.font import Font

    with open(out, "rb") as f:
        ft = Font(f)
        for ch in set(build_font.firmware_texts()) - {"\n"}:
            assert ft.glyph(ord(ch)) is not None, ch
        assert ft.glyph(ord(test_fw_screen.RARE)) is None  # not in GB 2312: a box
    print(f"\nfont gb2312: {n} wide glyphs, {len(data)} bytes on flash")


def test_font_build_bad_input_is_one_line(tmp_path, capsys):
    assert build_font.main(["--hex", str(tmp_path / "none.hex"), "--out",
                            str(tmp_path / "f.etf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unifont" in err
    bad = tmp_path / "bad.hex"
    bad.write_text("0041:zz\n")
    assert build_font.main(["--hex", str(bad), "--out", str(tmp_path / "f.etf")]) == 2
    assert "bad.hex:1" in capsys.readouterr().err


def _cpython_screens(font, folder):
    os.environ["FW_FONT"] = str(font)
    os.environ["FW_SCREENS"] = str(folder)
    try:
        for name in sorted(dir(test_fw_screen)):
            if name.startswith("test_"):
                getattr(test_fw_screen, name)()
    finally:
        del os.environ["FW_FONT"], os.environ["FW_SCREENS"]


def _png(raw: bytes, path: pathlib.Path) -> None:
    from PIL import Image

    img = Image.new("L", (128, 64), 0)
    px = img.load()
    for x in range(128):
        for y in range(64):
            if raw[(y >> 3) * 128 + x] >> (y & 7) & 1:
                px[x, y] = 255
    img.resize((512, 256), Image.NEAREST).save(path)


def test_screens_match_between_cpython_and_the_unix_port(font, tmp_path):
    mp_dir = tmp_path / "mpy"
    for src in (ROOT / "firmware" / "etfw").glob("*.py"):
        mpy_cross(src, mp_dir, pathlib.Path("etfw") / (src.stem + ".py"))
    for m in ("fwrun", "fwfakes", "test_fw_screen"):
        mpy_cross(HERE / (m + ".py"), mp_dir, pathlib.Path(m + ".py"))
    mp_out = tmp_path / "mp"
    cp_out = tmp_path / "cp"
    mp_out.mkdir()
    cp_out.mkdir()
    env = dict(os.environ, MPY_TEST_PATH=".", FW_TMP=str(tmp_path), FW_FONT=str(font),
               FW_SCREENS=str(mp_out), FW_HEAP_SAMPLE="0")
    r = subprocess.run([str(MICROPYTHON), "-X", "heapsize=64K", str(HERE / "mprun.py"),
                        "test_fw_screen"], capture_output=True, text=True, timeout=300,
                       env=env, cwd=mp_dir)
    assert r.returncode == 0 and " 0 failed" in r.stdout, r.stdout + r.stderr
    figures = dict(re.findall(r"^(\w+): (\d+)$", r.stdout, re.M))
    _cpython_screens(font, cp_out)
    names = sorted(p.stem for p in mp_out.glob("*.bin"))
    assert names == sorted(p.stem for p in cp_out.glob("*.bin"))
    assert {"idle", "invited", "reason1", "reason2", "thanks1", "thanks5", "paused",
            "confirm", "rare"} <= set(names)
    shots = OUT / "firmware-screens"
    shots.mkdir(parents=True, exist_ok=True)
    for n in names:
        mp = (mp_out / (n + ".bin")).read_bytes()
        assert mp == (cp_out / (n + ".bin")).read_bytes(), n
        assert len(mp) == 1024 and any(mp), n
        _png(mp, shots / (n + ".png"))
    print(f"\nscreens: {len(names)} identical on CPython and MicroPython, PNGs in {shots}; "
          f"unix port (64-bit): a Screen holds {figures.get('display_heap_bytes')} bytes of "
          f"heap, {figures.get('display_render_us')} us per screen")
