"""Build the voice prompts for the DFPlayer's SD card with espeak-ng, at build time.

    python firmware/tools/build_voice.py [--out build/sd] [--speed 130] [--lang zh,en]

Writes <out>/01/ (zh, espeak-ng voice `cmn`) and <out>/02/ (en) with the numbered files
etfw/voice.py plays (NNN.wav: the DFPlayer plays WAV as well as MP3 and finds a file by its
three-digit prefix). The texts are the firmware's own (etfw/i18n.py), so screen and voice
say the same words. --speed is espeak-ng's words per minute: the default 130 is slower than
espeak-ng's 175, for elderly citizens. Needs the Debian package espeak-ng.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VOICES = {"zh": ("cmn", 1), "en": ("en", 2)}
# i18n line numbers (as in etfw/indicators.py)
_INVITED, _REASON, _THANKS, _PAUSED, _LEVEL1, _REASON1, _CONFIRM = 1, 2, 3, 4, 7, 12, 19
HOW = {"zh": "请按一到五键。", "en": "Press a key from one to five."}
HOW_CONFIRM = {"zh": "按键后会读出，再按同一键确认。",
               "en": "Each key is read out; press it again to confirm."}
SEP = {"zh": "，", "en": ", "}


class BuildError(Exception):
    pass


def prompts(lang: str) -> dict[int, str]:
    """File number -> text, numbers as in etfw/voice.py."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from etfw import i18n, voice
    finally:
        sys.path.pop(0)
    lines = i18n.texts(lang).split("\n")
    sep = SEP[lang]
    out = {
        voice.INVITE: lines[_INVITED] + sep + HOW[lang],
        voice.REASON: lines[_REASON] + sep + HOW[lang],
        voice.THANKS: lines[_THANKS],
        voice.PAUSED: lines[_PAUSED],
        voice.CONFIRM: lines[_CONFIRM],
        voice.INVITE_CONFIRM: lines[_INVITED] + sep + HOW_CONFIRM[lang],
    }
    for k in range(5):
        out[voice.LEVEL1 + k] = f"{k + 1}{sep}{lines[_LEVEL1 + k]}"
    for i in range(len(voice.REASONS)):
        out[voice.REASON1 + i] = lines[_REASON1 + i]
    return out


def build(out: pathlib.Path, langs: list[str], speed: int, espeak: str) -> int:
    n = 0
    for lang in langs:
        if lang not in VOICES:
            raise BuildError(f"--lang: {lang} is not one of {', '.join(VOICES)}")
        name, folder = VOICES[lang]
        d = out / f"{folder:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for num, text in sorted(prompts(lang).items()):
            r = subprocess.run([espeak, "-v", name, "-s", str(speed), "-w",
                                str(d / f"{num:03d}.wav"), text], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"espeak-ng failed on {lang} {num:03d}: {r.stderr.strip()}")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="build/sd", type=pathlib.Path)
    ap.add_argument("--speed", default=130, type=int, help="words per minute (80-450)")
    ap.add_argument("--lang", default="zh,en")
    a = ap.parse_args(argv)
    espeak = shutil.which("espeak-ng")
    try:
        if espeak is None:
            raise BuildError("espeak-ng not found; apt-get install espeak-ng")
        if not 80 <= a.speed <= 450:
            raise BuildError("--speed: 80-450 words per minute")
        n = build(a.out, a.lang.split(","), a.speed, espeak)
    except BuildError as e:
        print(f"build_voice: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"build_voice: {a.out}: {e.strerror}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in a.out.rglob("*.wav"))
    print(f"build_voice: {n} prompts in {a.out}, {size} bytes (copy the folders to the SD card)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
