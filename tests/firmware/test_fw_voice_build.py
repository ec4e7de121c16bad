"""The voice prompts for the SD card, built with the real espeak-ng (CPython only)."""

import pathlib
import shutil
import sys
import wave

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "firmware" / "tools"))
import build_voice  # noqa: E402
from etfw import voice  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="apt-get install espeak-ng")


def _seconds(p: pathlib.Path) -> float:
    with wave.open(str(p)) as w:
        assert w.getnchannels() == 1 and w.getnframes() > 0
        return w.getnframes() / w.getframerate()


def test_every_file_the_firmware_plays_is_built(tmp_path):
    assert build_voice.main(["--out", str(tmp_path), "--lang", "zh,en"]) == 0
    played = {voice.INVITE, voice.REASON, voice.THANKS, voice.PAUSED, voice.CONFIRM,
              voice.INVITE_CONFIRM}
    played |= {voice.LEVEL1 + k for k in range(5)}
    played |= {voice.REASON1 + i for i in range(len(voice.REASONS))}
    for lang, folder in voice.FOLDERS.items():
        d = tmp_path / f"{folder:02d}"
        assert {int(p.stem) for p in d.glob("*.wav")} == played, lang
        for p in d.glob("*.wav"):
            assert _seconds(p) > 0.3, p


def test_speed_is_configurable_for_elderly_citizens(tmp_path):
    for name, speed in (("slow", "100"), ("fast", "200")):
        assert build_voice.main(["--out", str(tmp_path / name), "--lang", "zh",
                                 "--speed", speed]) == 0
    slow = _seconds(tmp_path / "slow" / "01" / "001.wav")
    fast = _seconds(tmp_path / "fast" / "01" / "001.wav")
    assert slow > fast * 1.4, (slow, fast)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert build_voice.main(["--out", str(tmp_path), "--speed", "10"]) == 2
    assert build_voice.main(["--out", str(tmp_path), "--lang", "fr"]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 2 and "--speed" in err[0] and "fr" in err[1]
