"""The board's filesystem over the serial REPL, with mpremote: read it back, install files.

Reading back is one small script run on the board (`PROBE`): MicroPython version and .mpy
architecture, the board's unique id, free space, the SHA-256 of every file evalterm owns, and the
identity in its config.json (the key itself never leaves the board: only its fingerprint).

Installing on a board that runs the firmware: the firmware starts the hardware watchdog (30 s),
which nothing can stop once started, and mpremote's Ctrl-C leaves nobody to feed it. So the
board is "parked" first: main.py is renamed and the board reset, so it boots to a plain REPL
without a watchdog. main.py is copied last, after everything else, so a board whose installation
was interrupted never starts a half-installed firmware.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.provision.runner import (
    ProvisionError,
    ToolResult,
    ToolRunner,
    ToolTimeout,
    python_tool,
)

__all__ = ["BoardState", "MpRemote"]

_MARK = "EVALTERM-PROBE "

# Runs on the board (MicroPython); also runs under the unix port in the tests. Paths are
# relative: the board's working directory is its filesystem root "/". A %-template: the script is
# full of braces, which str.format would need doubled.
PROBE = """\
import os, sys, json, hashlib, binascii
def _h(p):
    d = hashlib.sha256()
    try:
        with open(p, 'rb') as f:
            while True:
                b = f.read(512)
                if not b:
                    break
                d.update(b)
    except OSError:
        return None
    return binascii.hexlify(d.digest()).decode()
def _files(top):
    out = {}
    try:
        entries = list(os.ilistdir() if top == '.' else os.ilistdir(top))
    except OSError:
        return out
    for e in entries:
        if e[1] & 0x8000:
            p = e[0] if top == '.' else top + '/' + e[0]
            out[p] = _h(p)
    return out
files = _files('.')
files.update(_files('etfw'))
ident = None
try:
    with open('config.json') as f:
        c = json.load(f)
    k = binascii.unhexlify(c.get('key', ''))
    ident = {'device': c.get('device'), 'hall': c.get('hall'), 'window': c.get('window'),
             'key_fp': binascii.hexlify(hashlib.sha256(k).digest()).decode()[:16]}
except Exception:
    pass
uid = None
try:
    import machine
    uid = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    pass
try:
    st = os.statvfs('.')
    free = st[0] * st[4]
except Exception:
    free = None
print('%s' + json.dumps({'mpy': getattr(sys.implementation, '_mpy', 0),
    'version': '.'.join(str(v) for v in sys.implementation.version[:3]),
    'machine': getattr(sys.implementation, '_machine', sys.platform),
    'uid': uid, 'free': free, 'files': files, 'config': ident}))
""" % _MARK  # noqa: UP031

PARK = """\
import os
try:
    os.rename('main.py', 'main.py.off')
except OSError:
    pass
"""

# %r: the etfw files the new build has; anything else in etfw/ would shadow or confuse it
# (a stale .py is imported before a .mpy of the same name).
PREPARE = """\
import os
try:
    os.mkdir('etfw')
except OSError:
    pass
keep = %r
for n in os.listdir('etfw'):
    if n not in keep:
        os.remove('etfw/' + n)
        print('removed etfw/' + n)
try:
    os.remove('main.py.off')
except OSError:
    pass
"""


@dataclass(frozen=True)
class BoardState:
    mpy: int
    version: str
    machine: str
    uid: str | None
    free: int | None
    files: dict[str, str | None]  # path -> sha256 hex
    config: dict[str, Any] | None  # device, hall, window, key_fp of the config.json on it

    @property
    def device_id(self) -> str | None:
        return None if self.config is None else self.config.get("device")

    @property
    def runs_firmware(self) -> bool:
        return "main.py" in self.files


def parse_probe(output: str) -> BoardState:
    for line in output.splitlines():
        if line.startswith(_MARK):
            d = json.loads(line[len(_MARK):])
            return BoardState(int(d["mpy"]), d["version"], d["machine"], d.get("uid"),
                              d.get("free"), dict(d["files"]), d.get("config"))
    raise ProvisionError("the board answered, but not with the probe's result:\n"
                         + output.strip()[-400:])


class MpRemote:
    """mpremote as a subprocess, through the runner."""

    def __init__(self, runner: ToolRunner, *, timeout_s: float = 20.0,
                 copy_timeout_s: float = 180.0, reconnect_tries: int = 5,
                 reconnect_wait_s: float = 1.0, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        self.runner = runner
        self.timeout_s = timeout_s
        self.copy_timeout_s = copy_timeout_s
        self.reconnect_tries = reconnect_tries
        self.reconnect_wait_s = reconnect_wait_s
        self.sleep = sleep

    def _run(self, port: str, args: Sequence[str], *, changes: bool, timeout: float | None = None,
             after_reset: bool = False) -> ToolResult:
        argv = [*python_tool("mpremote"), "connect", port, *args]
        limit = timeout or self.timeout_s
        tries = self.reconnect_tries if after_reset else 1
        for attempt in range(tries):
            try:
                result = self.runner.run(argv, changes=changes, timeout=limit)
            except ToolTimeout:
                raise ProvisionError(
                    f"no MicroPython prompt answered on {port} within {limit:g} s: is MicroPython "
                    "flashed (evalterm device flash)? Is another program (screen, Thonny) using "
                    "the port? Press EN on the board and try again") from None
            # A board with native USB disappears for a moment after a reset.
            if "failed to access" in result.output and attempt + 1 < tries:
                self.sleep(self.reconnect_wait_s)
                continue
            break
        if result.returncode != 0 or "Traceback (most recent call last)" in result.output:
            raise _explain(port, result)
        return result

    def probe(self, port: str, *, after_reset: bool = False) -> BoardState:
        """Read the board back (read-only: runs in dry-run too)."""
        out = self._run(port, ["exec", PROBE], changes=False, after_reset=after_reset)
        return parse_probe(out.stdout)

    def park(self, port: str) -> None:
        self._run(port, ["exec", PARK, "+", "reset"], changes=True)

    def prepare(self, port: str, keep_modules: Sequence[str]) -> None:
        self._run(port, ["exec", PREPARE % (sorted(keep_modules),)], changes=True,
                  after_reset=True)

    def copy(self, port: str, sources: Sequence[Path], dest: str) -> None:
        """Copy local files to `dest` on the board (":etfw/" for a folder, ":x.json")."""
        self._run(port, ["fs", "cp", *[str(s) for s in sources], dest], changes=True,
                  timeout=self.copy_timeout_s)

    def reset(self, port: str) -> None:
        self._run(port, ["reset"], changes=True)


def _explain(port: str, result: ToolResult) -> ProvisionError:
    out = result.output
    if "failed to access" in out:
        return ProvisionError(f"cannot open {port}: it does not exist or another program uses it "
                              "(close screen, Thonny, esptool); list ports with `python -m "
                              "mpremote devs`")
    if "no device found" in out:
        return ProvisionError("no MicroPython board found: connect one and pass --port")
    if "could not enter raw repl" in out:
        return ProvisionError(f"the board on {port} does not give a MicroPython prompt: flash "
                              "MicroPython first (evalterm device flash), or press EN and retry")
    if "ENOSPC" in out or "No space" in out or "[Errno 28]" in out:
        return ProvisionError(f"the board's filesystem on {port} is full: erase and reflash it "
                              "(evalterm device flash), then provision again")
    tail = "\n".join(out.strip().splitlines()[-6:])
    return ProvisionError(f"mpremote failed on {port} (exit {result.returncode}):\n{tail}")
