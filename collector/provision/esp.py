"""Flashing MicroPython onto an ESP32 with esptool: check the image, detect the chip, erase,
write at the chip's offset, verify.

The image is checked before the board is touched: a MicroPython `.bin` for ESP32 boards is the
bootloader, the partition table and the application in one file, written at the chip's
bootloader offset. Its first bytes are an ESP image header that names the chip it was built for,
and its partition table must sit where the chip will look for it (flash 0x8000). An image for
another chip, an application-only `.app-bin`, or anything else is refused with the reason.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from collector.provision.runner import (
    ProvisionError,
    ToolResult,
    ToolRunner,
    ToolTimeout,
    python_tool,
)

__all__ = ["BOOTLOADER_OFFSET", "ChipInfo", "EspTool", "ImageInfo", "flash_plan", "read_image"]

_IMAGE_MAGIC = 0xE9
_APP_DESC_MAGIC = 0xABCD5432  # esp_app_desc_t, first thing in an application image
_PARTITION_MAGIC = b"\xaa\x50"
_PARTITION_TABLE_AT = 0x8000

# esp_chip_id_t in the image header -> the name esptool prints.
_CHIP_IDS = {0x0000: "ESP32", 0x0002: "ESP32-S2", 0x0005: "ESP32-C3", 0x0009: "ESP32-S3",
             0x000C: "ESP32-C2", 0x000D: "ESP32-C6", 0x0010: "ESP32-H2", 0x0012: "ESP32-P4",
             0x0014: "ESP32-C61", 0x0017: "ESP32-C5"}

# Where the second-stage bootloader (and so a MicroPython .bin) starts, per chip.
BOOTLOADER_OFFSET = {"ESP32": 0x1000, "ESP32-S2": 0x1000, "ESP32-S3": 0x0, "ESP32-C3": 0x0,
                     "ESP32-C2": 0x0, "ESP32-C6": 0x0, "ESP32-H2": 0x0, "ESP32-C61": 0x0,
                     "ESP32-P4": 0x2000, "ESP32-C5": 0x2000}

_FLASH_SIZES = {0: "1MB", 1: "2MB", 2: "4MB", 3: "8MB", 4: "16MB", 5: "32MB", 6: "64MB",
                7: "128MB"}


def _mb(size: str) -> int:
    return int(size.removesuffix("MB"))


def esptool_chip(name: str) -> str:
    """esptool's --chip argument for a chip name ("ESP32-S3" -> "esp32s3")."""
    return name.lower().replace("-", "")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    path: Path
    chip: str
    flash_size: str
    size: int

    @property
    def offset(self) -> int:
        return BOOTLOADER_OFFSET[self.chip]


def read_image(path: Path) -> ImageInfo:
    """Check that `path` is a full MicroPython image for an ESP32-family chip."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ProvisionError(f"cannot read the image {path}: {exc.strerror}") from None
    if len(data) < 64 or data[0] != _IMAGE_MAGIC:
        raise ProvisionError(
            f"{path} is not an ESP32 firmware image (no ESP image header); download the "
            "MicroPython .bin for your board (e.g. ESP32_GENERIC-*.bin), not a .uf2, .elf or .zip")
    (app_magic,) = struct.unpack_from("<I", data, 32)
    if app_magic == _APP_DESC_MAGIC:
        raise ProvisionError(
            f"{path} is an application-only image (.app-bin, for over-the-air updates); "
            "flash the full .bin that starts with the bootloader")
    (chip_id,) = struct.unpack_from("<H", data, 12)
    chip = _CHIP_IDS.get(chip_id)
    if chip is None:
        raise ProvisionError(f"{path}: image header names chip id {chip_id:#06x}, not an "
                             "ESP32-family chip evalterm knows")
    table = _PARTITION_TABLE_AT - BOOTLOADER_OFFSET[chip]
    if data[table:table + 2] != _PARTITION_MAGIC:
        raise ProvisionError(
            f"{path}: no partition table at flash {_PARTITION_TABLE_AT:#x} when written at "
            f"{BOOTLOADER_OFFSET[chip]:#x} for {chip}; this is not a full MicroPython image")
    flash_size = _FLASH_SIZES.get(data[3] >> 4, "unknown")
    return ImageInfo(Path(path), chip, flash_size, len(data))


@dataclass(frozen=True, slots=True)
class ChipInfo:
    chip: str          # esptool's CHIP_NAME: "ESP32", "ESP32-S3", ...
    description: str   # "ESP32-D0WD-V3 (revision v3.1)"
    mac: str
    flash_size: str    # "4MB", or "" when esptool could not tell


def parse_chip_info(output: str) -> ChipInfo:
    chip = re.search(r"^Connected to (\S+) on ", output, re.M)
    if chip is None:
        raise ProvisionError("esptool connected but did not name the chip:\n" + output[-500:])
    desc = re.search(r"^Chip type:\s+(.+)$", output, re.M)
    mac = re.search(r"^MAC:\s+([0-9a-f:]{17})", output, re.M)
    size = re.search(r"^Detected flash size:\s+(\d+MB)", output, re.M)
    return ChipInfo(chip.group(1), desc.group(1).strip() if desc else chip.group(1),
                    mac.group(1) if mac else "", size.group(1) if size else "")


def _explain(port: str, result: ToolResult) -> ProvisionError:
    """Turn esptool's failure into what the technician should check."""
    out = result.output
    if "No such file or directory" in out:
        return ProvisionError(f"{port} does not exist: is the cable plugged in? List serial "
                              "ports with `ls /dev/ttyUSB* /dev/ttyACM*`")
    if "Permission denied" in out:
        return ProvisionError(f"no permission to open {port}: add yourself to the `dialout` "
                              "group (sudo usermod -aG dialout $USER), then log in again")
    if "Device or resource busy" in out or "Resource temporarily unavailable" in out:
        return ProvisionError(f"{port} is busy: close other serial programs (screen, minicom, "
                              "Thonny, an mpremote REPL) and try again")
    if "No serial data received" in out or "Failed to connect" in out:
        return ProvisionError(
            f"no ESP32 answered on {port}: check the cable (a data cable, not a charge-only "
            "one) and the port; if it still fails, hold BOOT, press and release EN, release "
            "BOOT, and run the command again")
    if "Verification failed" in out or "verify failed" in out:
        return ProvisionError(f"the flash of the board on {port} does not read back as written: "
                              "run flash again; if it fails twice, the board is faulty")
    tail = "\n".join(out.strip().splitlines()[-6:])
    return ProvisionError(f"esptool failed on {port} (exit {result.returncode}):\n{tail}")


class EspTool:
    """esptool as a subprocess, through the runner."""

    def __init__(self, runner: ToolRunner, *, connect_attempts: int = 3,
                 timeout_s: float = 300.0) -> None:
        self.runner = runner
        self.connect_attempts = connect_attempts
        self.timeout_s = timeout_s

    def _argv(self, port: str, chip: str, *command: str) -> list[str]:
        return [*python_tool("esptool"), "--chip", chip, "--port", port,
                "--connect-attempts", str(self.connect_attempts), *command]

    def _run(self, port: str, argv: list[str], changes: bool, timeout: float) -> ToolResult:
        try:
            result = self.runner.run(argv, changes=changes, timeout=timeout)
        except ToolTimeout:
            raise ProvisionError(f"esptool did not finish on {port} within {timeout:g} s: "
                                 "unplug and replug the board, then try again") from None
        if result.returncode != 0:
            raise _explain(port, result)
        return result

    def detect(self, port: str) -> ChipInfo:
        """Which chip is on `port` (read-only: runs in dry-run too)."""
        argv = self._argv(port, "auto", "--after", "no-reset", "flash-id")
        return parse_chip_info(self._run(port, argv, changes=False, timeout=60).output)

    def flash(self, port: str, image: ImageInfo, chip: ChipInfo | None) -> None:
        """Erase, write at the chip's offset, verify. `chip` is None only in dry-run without
        a board: the plan then follows the image."""
        target = esptool_chip(chip.chip if chip else image.chip)
        offset = f"{image.offset:#x}"
        self._run(port, self._argv(port, target, "erase-flash"), True, self.timeout_s)
        self._run(port, self._argv(port, target, "write-flash", "--flash-size", "keep",
                                    offset, str(image.path)), True, self.timeout_s)
        self._run(port, self._argv(port, target, "verify-flash", offset, str(image.path)),
                  True, self.timeout_s)


def check_image_fits(image: ImageInfo, chip: ChipInfo, port: str) -> None:
    if chip.chip != image.chip:
        raise ProvisionError(
            f"the board on {port} is an {chip.chip} ({chip.description}) but {image.path.name} "
            f"is built for {image.chip}: download the MicroPython image for {chip.chip}")
    if chip.flash_size and image.flash_size != "unknown" and \
            _mb(image.flash_size) > _mb(chip.flash_size):
        raise ProvisionError(
            f"{image.path.name} expects {image.flash_size} of flash but the board on {port} has "
            f"{chip.flash_size}: use the image variant for {chip.flash_size} boards")


def flash_plan(esp: EspTool, port: str, image_path: Path) -> tuple[ImageInfo, ChipInfo]:
    """Check the image, detect the chip, refuse a mismatch, then erase, write and verify."""
    image = read_image(image_path)
    chip = esp.detect(port)
    check_image_fits(image, chip, port)
    esp.runner.note(f"flash {image.path.name} ({image.chip}, {image.size} bytes) at "
                    f"{image.offset:#x} on {chip.description} {chip.mac} ({port})")
    esp.flash(port, image, chip)
    return image, chip
