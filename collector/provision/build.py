"""The firmware as it goes onto a board: `main.py` as source (MicroPython runs only `main.py`
at boot), every module of the `etfw` package compiled with `mpy-cross` for the board's
architecture (no compilation on the device, smaller and faster imports).

Bytecode-only .mpy files record no architecture (header flags 0): what the board must match is
the .mpy version, checked in `arch_of_mpy`; -march matters once native/viper code is added.
mpy-cross output is deterministic for the same source, name and architecture, so the SHA-256
of each file says whether a board already has exactly this build (provisioning is idempotent).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from collector.provision.runner import ProvisionError, ToolRunner, python_tool

__all__ = ["ARCHS", "FirmwareBuild", "arch_of_mpy", "build_firmware", "default_firmware_dir",
           "firmware_version", "sha256_hex"]

# sys.implementation._mpy >> 10 & 0xF -> mpy-cross -march (py/persistentcode.h).
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc")
MPY_VERSION = 6  # what mpy-cross 1.2x writes; the board must read the same


def arch_of_mpy(mpy: int) -> str:
    """The mpy-cross architecture of a board from its sys.implementation._mpy."""
    if mpy & 0xFF != MPY_VERSION:
        raise ProvisionError(
            f"the board's MicroPython reads .mpy version {mpy & 0xFF}, this build makes "
            f"{MPY_VERSION}: flash a current MicroPython image (evalterm device flash)")
    index = (mpy >> 10) & 0x0F
    arch = ARCHS[index] if index < len(ARCHS) else None
    if arch is None:
        raise ProvisionError("the board's MicroPython does not say its architecture "
                             f"(_mpy={mpy}); pass --arch")
    return arch


def default_firmware_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "firmware"


def firmware_version(firmware_dir: Path) -> str:
    init = firmware_dir / "etfw" / "__init__.py"
    try:
        found = re.search(r'^FW_VERSION = "([^"]+)"', init.read_text(), re.M)
    except OSError:
        found = None
    if found is None:
        raise ProvisionError(f"{firmware_dir} is not the evalterm firmware folder (no FW_VERSION "
                             "in etfw/__init__.py); pass --firmware DIR")
    return found.group(1)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FirmwareBuild:
    version: str
    arch: str
    files: dict[str, Path]  # path on the board -> built file on this machine

    def hashes(self) -> dict[str, str]:
        return {dest: sha256_hex(src.read_bytes()) for dest, src in self.files.items()}

    @property
    def modules(self) -> list[str]:
        return sorted(d for d in self.files if d.startswith("etfw/"))


def build_firmware(runner: ToolRunner, firmware_dir: Path, arch: str, out_dir: Path
                   ) -> FirmwareBuild:
    """Compile etfw/*.py for `arch` into `out_dir` (local only: runs in dry-run too)."""
    version = firmware_version(firmware_dir)
    if arch not in ARCHS[1:]:
        raise ProvisionError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS[1:])}")
    (out_dir / "etfw").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for src in sorted((firmware_dir / "etfw").glob("*.py")):
        name = f"etfw/{src.stem}.mpy"
        dest = out_dir / name
        # -s: the name tracebacks show on the device.
        result = runner.run([*python_tool("mpy_cross"), f"-march={arch}", "-s", f"etfw/{src.name}",
                             "-o", dest, src], changes=False, timeout=60)
        if result.returncode != 0:
            raise ProvisionError(f"mpy-cross could not compile {src}:\n{result.output.strip()}")
        files[name] = dest
    shutil.copyfile(firmware_dir / "main.py", out_dir / "main.py")
    files["main.py"] = out_dir / "main.py"
    return FirmwareBuild(version, arch, files)
