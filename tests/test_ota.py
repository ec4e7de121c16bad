"""Over-the-air updates, the collector's pure parts: the image and its manifest, and the
staged rollout's decisions (fire and no-fire, table-driven). End to end with the firmware:
tests/firmware/test_fw_ota_e2e.py."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from collector.ota import OtaError
from collector.ota.image import load_image, parse_manifest
from collector.ota.rollout import Rollout
from collector.ota.server import chunk_payload
from collector.registry import Device


def _image(root: Path, version: str = "2.0.0", **extra: bytes) -> Path:
    (root / "etfw").mkdir(parents=True)
    (root / "etfw" / "__init__.py").write_text(f'FW_VERSION = "{version}"\n')
    (root / "etfw" / "app.py").write_bytes(b"x = 1\n")
    (root / "etfw" / "update.py").write_bytes(b"")
    for name, data in extra.items():
        (root / name).write_bytes(data)
    return root


def test_manifest_lists_every_file_with_size_and_sha(tmp_path: Path) -> None:
    img = load_image(_image(tmp_path / "i"))
    assert img.version == "2.0.0"
    ver, entries = parse_manifest(img.manifest)
    assert ver == "2.0.0"
    assert [e[0] for e in entries] == ["etfw/__init__.py", "etfw/app.py", "etfw/update.py"]
    assert entries[1] == ("etfw/app.py", 6, hashlib.sha256(b"x = 1\n").hexdigest())
    assert img.manifest.startswith(b"evalterm-fw 1\nver 2.0.0\n")
    assert img.manifest_sha == hashlib.sha256(img.manifest).hexdigest()
    assert img.file(0) == img.manifest and img.file(2) == b"x = 1\n"


def test_tar_image_equals_the_folder(tmp_path: Path) -> None:
    folder = _image(tmp_path / "i")
    tar = tmp_path / "i.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(folder, arcname=".")
    assert load_image(tar).manifest == load_image(folder).manifest


def test_version_file_wins_for_compiled_images(tmp_path: Path) -> None:
    root = tmp_path / "i"
    (root / "etfw").mkdir(parents=True)
    (root / "etfw" / "__init__.mpy").write_bytes(b"M\x06")
    (root / "etfw" / "update.mpy").write_bytes(b"M\x06")
    (root / "VERSION").write_text("2.1.0\n")
    img = load_image(root)
    assert img.version == "2.1.0"
    assert [n for n, _ in img.files] == ["etfw/__init__.mpy", "etfw/update.mpy"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda r: (r / "etfw").mkdir(parents=True), "has no version"),
    (lambda r: _image(r, "two words"), "image version 'two words'"),
    (lambda r: (_image(r), (r / "MANIFEST").write_text("")), "named MANIFEST"),
    (lambda r: (_image(r), (r / "a b").write_text("")), "paths are 1-2 levels"),
    (lambda r: ((r / "x").mkdir(parents=True), (r / "VERSION").write_text("1\n")),
     "has no etfw/__init__"),
    (lambda r: (_image(r), (r / "etfw" / "update.py").unlink()), "has no etfw/update"),
])
def test_bad_images_fail_with_one_line(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "i"
    make(root)
    with pytest.raises(OtaError, match=message) as exc:
        load_image(root)
    assert "\n" not in str(exc.value)


def test_chunk_header_is_what_the_device_unpacks() -> None:
    import struct

    p = chunk_payload(0xA1B2C3D4, 3, 70000, b"data")
    assert struct.unpack_from("<BIBI", p) == (0xE7, 0xA1B2C3D4, 3, 70000) and p[10:] == b"data"


def _dev(name: str, window: str) -> Device:
    return Device(name, "h1", window, "active", 0, key=bytes(32))


def _rollout(**kw: int) -> Rollout:
    return Rollout.plan("2.0.0", _dev("a", "w1"), [_dev("b", "w2"), _dev("c", "w3")], **kw)


def _sent(actions: list) -> list[tuple[str, str]]:
    return [(what, r.dev.device) for what, r in actions]


def test_canary_first_then_the_rest_after_it_confirmed() -> None:
    r = _rollout()
    assert _sent(r.tick(0)) == [("update", "a")]
    assert _sent(r.tick(1000)) == []  # b and c wait
    r.event("a", "ota", {"state": "start", "ver": "2.0.0"}, 1100)
    r.request("a", 1200, 256)
    r.event("a", "ota", {"state": "ready", "ver": "2.0.0"}, 2000)
    assert _sent(r.tick(2100)) == []
    assert _sent(r.event("a", "boot", {"fw": "2.0.0", "reset_cause": "soft"}, 3000)) \
        == [("confirm", "a")]
    assert _sent(r.tick(3100)) == []  # not before the confirmation
    r.event("a", "ota", {"state": "confirmed", "ver": "2.0.0"}, 3200)
    assert _sent(r.tick(3300)) == [("update", "b"), ("update", "c")]
    for d in "bc":
        r.event(d, "ota", {"state": "current", "ver": "2.0.0"}, 3400)
    assert r.done and not r.failed


@pytest.mark.parametrize(("data", "words"), [
    ({"state": "refused", "ver": "", "why": "signature"}, "signature does not verify"),
    ({"state": "failed", "ver": "2.0.0", "why": "sha"}, "SHA-256"),
    ({"state": "rolled_back", "ver": "2.0.0", "why": "boots"}, "did not start"),
    ({"state": "rolled_back", "ver": "2.0.0", "why": "timeout"}, "did not hear"),
    ({"state": "refused", "ver": "2.0.0", "why": "trial"}, "still trying out"),
])
def test_a_failed_canary_stops_the_rollout(data: dict, words: str) -> None:
    r = _rollout()
    r.tick(0)
    r.event("a", "ota", data, 100)
    assert _sent(r.tick(200)) == []
    assert r.done
    assert words in r.runs[0].detail
    assert [x.detail for x in r.runs[1:]] == ["not updated: the first window failed"] * 2


def test_quiet_download_is_sent_again_then_times_out() -> None:
    r = _rollout(stall_s=5, timeout_s=60)
    r.tick(0)
    r.request("a", 1000, 256)
    assert _sent(r.tick(5000)) == []  # no-fire: within stall_s of the last request
    assert _sent(r.tick(6100)) == [("update", "a")]
    assert _sent(r.tick(7000)) == []  # the next resend waits longer (back-off)
    assert not r.failed
    r.tick(61_001)
    assert r.failed and "no progress for 60 s" in r.runs[0].detail


def test_offline_canary_is_not_sent_anything() -> None:
    r = _rollout()
    r.status("a", "offline")
    assert _sent(r.tick(0)) == []
    assert "offline" in r.runs[0].detail
    assert _sent(r.tick(1)) == [] and r.done  # the rest is skipped


def test_old_version_booting_again_is_not_success() -> None:
    r = _rollout()
    r.tick(0)
    r.event("a", "ota", {"state": "ready", "ver": "2.0.0"}, 100)
    assert _sent(r.event("a", "boot", {"fw": "1.0.0", "reset_cause": "soft"}, 200)) == []
    assert r.runs[0].state == "ready" and not r.done


def test_a_missed_boot_event_is_asked_for_again() -> None:
    """The broker restarted as the canary rebooted: its boot and trial events never reached the
    rollout. It sends the confirmation anyway; the device on trial answers `confirmed`."""
    r = _rollout(stall_s=5, timeout_s=60)
    r.tick(0)
    r.event("a", "ota", {"state": "ready", "ver": "2.0.0"}, 1000)
    assert _sent(r.tick(6000)) == []  # no-fire: within stall_s of "ready"
    assert _sent(r.tick(6100)) == [("confirm", "a")]
    assert _sent(r.tick(7000)) == []  # the next one waits longer (back-off)
    r.event("a", "ota", {"state": "confirmed", "ver": "2.0.0"}, 8000)
    assert r.runs[0].state == "confirmed" and not r.failed
