"""Build the display font file (font.etf) from GNU Unifont, at build time under CPython.

    python firmware/tools/build_font.py [--hex /usr/share/unifont/unifont.hex]
                                        [--charset gb2312|prompts] [--out build/font.etf]

Source: Debian package `unifont` (/usr/share/unifont/unifont.hex, GPL-2+ with the GNU font
embedding exception upstream; the generated file is a subset of it and keeps that licence:
ship the notice with the image, see docs/firmware.md). Unifont is a bitmap font drawn on a
16-pixel grid (8x16 for Latin, 16x16 for CJK), so glyphs go to the 1-bit display exactly as
drawn: no rasteriser and no hinting on the build machine or on the device.

The file (read per glyph on the device by etfw/font.py; nothing of it is held in RAM):

    0   b"ETF1"
    4   u16 BE  n, the number of wide glyphs
    6   u16 BE  0 (reserved)
    8   95 narrow glyphs, U+0020..U+007E, 16 bytes each (8x16, MONO_HLSB: a byte per row)
    1528  n u16 BE code points, sorted (binary-searched on flash)
    1528+2n  n wide glyphs, 32 bytes each (16x16, MONO_HLSB: two bytes per row)

Charsets: `gb2312` (default) is every character of GB 2312 (6763 hanzi and 682 symbols, the
set every Chinese name system must at least cover) plus whatever the firmware's texts use;
`prompts` is only the firmware's own texts (etfw/i18n.py), for a board without room for the
full set (staff names then show a box per missing character).
"""

from __future__ import annotations

import argparse
import pathlib
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
FIRMWARE = HERE.parent
NARROW_FIRST = 0x20
NARROW_COUNT = 95
HEADER = 8
MAGIC = b"ETF1"


class BuildError(Exception):
    """A problem with the inputs: one line for the user."""


def read_hex(path: pathlib.Path) -> dict[int, bytes]:
    """Unifont .hex: `XXXX:` then 32 hex digits (8x16) or 64 (16x16) per line."""
    glyphs: dict[int, bytes] = {}
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise BuildError(f"{path}: {e.strerror}; install the Debian package unifont") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cp, _, bits = line.partition(":")
        try:
            glyphs[int(cp, 16)] = bytes.fromhex(bits)
        except ValueError as e:
            raise BuildError(f"{path}:{n}: not a Unifont .hex line") from e
    return glyphs


def firmware_texts() -> str:
    """Every user-facing text of the firmware, both languages."""
    sys.path.insert(0, str(FIRMWARE))
    try:
        from etfw import i18n
    finally:
        sys.path.pop(0)
    return i18n.texts("zh") + i18n.texts("en")


def gb2312_chars() -> set[str]:
    chars = set()
    for row in range(0xA1, 0xF8):
        for cell in range(0xA1, 0xFF):
            try:
                chars.add(bytes((row, cell)).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return chars


def build(glyphs: dict[int, bytes], chars: set[str]) -> bytes:
    narrow = bytearray()
    for cp in range(NARROW_FIRST, NARROW_FIRST + NARROW_COUNT):
        g = glyphs.get(cp)
        if g is None or len(g) != 16:
            raise BuildError(f"font: no 8x16 glyph for U+{cp:04X}")
        narrow += g
    wide = sorted(ord(c) for c in chars if ord(c) > 0x7E and ord(c) <= 0xFFFF)
    missing = [cp for cp in wide if cp not in glyphs]
    if missing:
        raise BuildError("font: no glyph for " + " ".join(f"U+{cp:04X}" for cp in missing[:8]))
    body = bytearray()
    for cp in wide:
        g = glyphs[cp]
        if len(g) == 16:  # a narrow glyph outside ASCII: centred in the 16-pixel cell
            g = b"".join(bytes((b >> 4, (b << 4) & 0xFF)) for b in g)
        body += g
    index = b"".join(struct.pack(">H", cp) for cp in wide)
    return MAGIC + struct.pack(">HH", len(wide), 0) + bytes(narrow) + index + bytes(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hex", default="/usr/share/unifont/unifont.hex", type=pathlib.Path)
    ap.add_argument("--charset", choices=("gb2312", "prompts"), default="gb2312")
    ap.add_argument("--extra", default="", help="more characters to include (rare names)")
    ap.add_argument("--out", default="build/font.etf", type=pathlib.Path)
    a = ap.parse_args(argv)
    try:
        chars = set(firmware_texts()) | set(a.extra)
        if a.charset == "gb2312":
            chars |= gb2312_chars()
        data = build(read_hex(a.hex), chars)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_bytes(data)
    except BuildError as e:
        print(f"build_font: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"build_font: {a.out}: {e.strerror}", file=sys.stderr)
        return 2
    n = struct.unpack(">H", data[4:6])[0]
    print(f"build_font: {a.out}: {n} wide + {NARROW_COUNT} narrow glyphs, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
