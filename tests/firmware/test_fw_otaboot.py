"""The slot choice at boot (firmware/otaboot.py) and the device's manifest path rule
(etfw/ota.py), on CPython against a real folder: the trial slot's boots are counted, a crash
loop and a missing slot fall back to the known-good one, a damaged state file means the
factory install."""

import json
import pathlib
import sys

import otaboot
import pytest
from etfw import update as ota


def _state(d: pathlib.Path) -> dict:
    return json.loads((d / "ota.json").read_text())


def _slot(d: pathlib.Path, name: str) -> None:
    (d / name / "etfw").mkdir(parents=True)


def test_no_state_is_the_factory_install(tmp_path: pathlib.Path) -> None:
    assert otaboot.choose(str(tmp_path) + "/") == ("", False, "")
    (tmp_path / "ota.json").write_text("{not json")
    assert otaboot.choose(str(tmp_path) + "/") == ("", False, "")


def test_trial_slot_boots_three_times_then_the_good_one(tmp_path: pathlib.Path) -> None:
    d = str(tmp_path) + "/"
    _slot(tmp_path, "fw1")
    otaboot.save(d, {"cur": "", "new": "fw1", "ver": "2", "tries": 0, "wait": 60, "note": ""})
    for n in (1, 2, 3):
        assert otaboot.choose(d) == ("fw1", True, "")
        assert _state(tmp_path)["tries"] == n  # counted before the slot's code runs
    assert otaboot.choose(d) == ("", False, "rolled_back:boots:2")
    st = _state(tmp_path)
    assert (st["cur"], st["new"]) == ("", "")
    assert otaboot.choose(d) == ("", False, "rolled_back:boots:2")  # until etfw.ota reports it


def test_confirmed_slot_stays_and_a_missing_one_is_not_chosen(tmp_path: pathlib.Path) -> None:
    d = str(tmp_path) + "/"
    _slot(tmp_path, "fw2")
    otaboot.save(d, {"cur": "fw2", "new": ""})
    assert otaboot.choose(d) == ("fw2", False, "")
    otaboot.save(d, {"cur": "fw2", "new": "fw1", "ver": "3", "tries": 0})  # fw1 never written
    assert otaboot.choose(d) == ("fw2", False, "rolled_back:boots:3")
    otaboot.save(d, {"cur": "fw1", "new": ""})  # a known-good slot that is gone: the factory
    assert otaboot.choose(d) == ("", False, "")


def test_boot_puts_the_slot_first_on_the_import_path(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path) + "/"
    _slot(tmp_path, "fw1")
    otaboot.save(d, {"cur": "fw1", "new": ""})
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert otaboot.boot(d) == ("fw1", False, "")
    assert sys.path[0] == d + "fw1"


@pytest.mark.parametrize(("name", "bad"), [
    ("etfw/app.mpy", False), ("VERSION", False), ("etfw/../../config.json", True),
    ("/etc/x", True), ("a/b/c", True), ("", True), ("MANIFEST", True),
])
def test_manifest_paths_stay_in_the_slot(name: str, bad: bool) -> None:
    assert ota._bad(name) is bad
