"""`evalterm device flash`: the image is checked before the board is touched, the chip is
detected, and erase / write at the chip's offset / verify run in that order."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from provision_fakes import Bench, FakeBoard, FakeEsp32, short

from collector.cli import main
from collector.provision.esp import EspTool, flash_plan, read_image
from collector.provision.runner import ProvisionError, ToolRunner

CHIP_IDS = {"ESP32": 0, "ESP32-S3": 9, "ESP32-C3": 5}
OFFSETS = {"ESP32": 0x1000, "ESP32-S3": 0x0, "ESP32-C3": 0x0}


def image(tmp: Path, chip: str = "ESP32", app_only: bool = False, size_nibble: int = 2,
          name: str = "fw.bin") -> Path:
    """A synthetic MicroPython image: ESP image header naming the chip, and the partition
    table where the chip looks for it when the image is written at its bootloader offset."""
    data = bytearray(0x9000)
    data[0:4] = bytes([0xE9, 3, 2, (size_nibble << 4) | 0xF])
    struct.pack_into("<H", data, 12, CHIP_IDS[chip])
    if app_only:
        struct.pack_into("<I", data, 32, 0xABCD5432)
    table = 0x8000 - OFFSETS[chip]
    data[table:table + 2] = b"\xaa\x50"
    path = tmp / name
    path.write_bytes(bytes(data))
    return path


def rig(tmp: Path, esp: FakeEsp32, dry_run: bool = False) -> tuple[EspTool, list[str]]:
    printed: list[str] = []
    runner = ToolRunner(Bench(FakeBoard(tmp / "board"), esp), dry_run=dry_run,
                        echo=printed.append)
    return EspTool(runner), printed


@pytest.mark.parametrize(("chip", "offset"), [("ESP32", "0x1000"), ("ESP32-S3", "0x0"),
                                              ("ESP32-C3", "0x0")])
def test_flash_erases_writes_at_the_chips_offset_and_verifies(tmp_path: Path, chip: str,
                                                              offset: str) -> None:
    esp = FakeEsp32(chip=chip, description=chip)
    tool, _ = rig(tmp_path, esp)
    img = image(tmp_path, chip)
    flash_plan(tool, "/dev/ttyUSB0", img)
    target = chip.lower().replace("-", "")
    assert [short(c) for c in tool.runner.calls] == [
        "esptool auto --after no-reset flash-id",
        f"esptool {target} erase-flash",
        f"esptool {target} write-flash --flash-size keep {offset} fw.bin",
        f"esptool {target} verify-flash {offset} fw.bin",
    ]
    assert esp.flash == {int(offset, 16): img.read_bytes()}


def test_wrong_chip_image_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    esp = FakeEsp32(chip="ESP32")
    tool, _ = rig(tmp_path, esp)
    with pytest.raises(ProvisionError, match=r"is an ESP32 .* built for ESP32-S3"):
        flash_plan(tool, "/dev/ttyUSB0", image(tmp_path, "ESP32-S3"))
    assert [short(c) for c in tool.runner.calls] == ["esptool auto --after no-reset flash-id"]


def test_image_for_a_larger_flash_is_refused(tmp_path: Path) -> None:
    tool, _ = rig(tmp_path, FakeEsp32(flash_size="4MB"))
    with pytest.raises(ProvisionError, match=r"expects 8MB of flash but the board .* has 4MB"):
        flash_plan(tool, "/dev/ttyUSB0", image(tmp_path, size_nibble=3))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not an ESP32 firmware image"),
    (b"\x7fELF" + bytes(100), "not an ESP32 firmware image"),
    ("app_only", "application-only image"),
    ("no_table", "no partition table at flash 0x8000"),
])
def test_images_that_are_not_full_micropython_images(tmp_path: Path, content: object,
                                                     message: str) -> None:
    if content == "app_only":
        path = image(tmp_path, app_only=True)
    elif content == "no_table":
        path = image(tmp_path, "ESP32")
        data = bytearray(path.read_bytes())
        data[0x7000:0x7002] = b"\xff\xff"
        path.write_bytes(bytes(data))
    else:
        assert isinstance(content, bytes)
        path = tmp_path / "x.bin"
        path.write_bytes(content)
    with pytest.raises(ProvisionError, match=message):
        read_image(path)


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot read the image"):
        read_image(tmp_path / "nope.bin")


def test_verify_failure_is_reported(tmp_path: Path) -> None:
    esp = FakeEsp32()
    esp.corrupt_writes = True
    tool, _ = rig(tmp_path, esp)
    with pytest.raises(ProvisionError, match="does not read back as written"):
        flash_plan(tool, "/dev/ttyUSB0", image(tmp_path))


def test_no_board_answering(tmp_path: Path) -> None:
    esp = FakeEsp32()
    esp.present = False
    tool, _ = rig(tmp_path, esp)
    with pytest.raises(ProvisionError, match="no ESP32 answered on /dev/ttyUSB0: check the cable"):
        flash_plan(tool, "/dev/ttyUSB0", image(tmp_path))


def test_dry_run_detects_but_writes_nothing(tmp_path: Path) -> None:
    esp = FakeEsp32()
    tool, printed = rig(tmp_path, esp, dry_run=True)
    flash_plan(tool, "/dev/ttyUSB0", image(tmp_path))
    assert esp.flash == {}
    assert [short(c) for c in tool.runner.calls] == ["esptool auto --after no-reset flash-id"]
    assert [short(c) for c in tool.runner.skipped] == [
        "esptool esp32 erase-flash", "esptool esp32 write-flash --flash-size keep 0x1000 fw.bin",
        "esptool esp32 verify-flash 0x1000 fw.bin"]
    assert printed[0].startswith("would flash fw.bin (ESP32, 36864 bytes) at 0x1000 on ")
    assert printed[1].startswith("would run: python -m esptool --chip esp32 --port /dev/ttyUSB0")


def test_cli_real_esptool_on_a_silent_serial_port(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # The real esptool against a pty nobody answers on: what a board without power or a
    # charge-only cable looks like.
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        rc = main(["device", "flash", "--port", port, "--image", str(image(tmp_path))])
    finally:
        os.close(master)
        os.close(slave)
    assert rc == 2
    assert f"no ESP32 answered on {port}: check the cable" in capsys.readouterr().err


def test_cli_refuses_a_bad_image_before_opening_the_port(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "firmware.uf2"
    bad.write_bytes(b"UF2\n" + bytes(600))
    rc = main(["device", "flash", "--port", "/dev/ttyUSB-missing", "--image", str(bad)])
    assert rc == 2
    assert "is not an ESP32 firmware image" in capsys.readouterr().err
