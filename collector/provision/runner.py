"""The one place where provisioning runs external tools (esptool, mpremote, mpy-cross,
mosquitto_passwd).

Every call goes through `ToolRunner.run`, which records the argv, and in dry-run mode prints the
commands that would change something instead of running them. Tests replace the transport (the
function that actually starts a process) with one that answers like the tools do; nothing is
monkey-patched.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collector.errors import EvaltermError

__all__ = ["ProvisionError", "ToolResult", "ToolRunner", "Transport", "python_tool",
           "subprocess_transport"]


class ProvisionError(EvaltermError, ValueError):
    """A step failed; the message says what is wrong and what to do (the CLI prints it)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class ToolTimeout(ProvisionError):
    pass


# (argv, timeout_s) -> result; raises ToolTimeout when the tool does not finish in time.
Transport = Callable[[Sequence[str], float], ToolResult]


def subprocess_transport(argv: Sequence[str], timeout: float) -> ToolResult:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise ToolTimeout(f"{shlex.join(argv)} did not finish within {timeout:g} s") from None
    except FileNotFoundError:
        raise ProvisionError(f"{argv[0]} is not installed: run scripts/setup.sh") from None
    return ToolResult(tuple(argv), done.returncode, done.stdout, done.stderr)


def python_tool(module: str) -> list[str]:
    """argv prefix of a tool installed as a Python package in this environment."""
    return [sys.executable, "-m", module]


@dataclass
class ToolRunner:
    """Runs tools, records every argv in `calls`; in dry-run, commands that change something
    (`changes=True`) are printed and skipped, read-only ones still run (so that a dry run can
    say what would change on this very board)."""

    transport: Transport = subprocess_transport
    dry_run: bool = False
    echo: Callable[[str], None] = print
    calls: list[tuple[str, ...]] = field(default_factory=list)
    skipped: list[tuple[str, ...]] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, changes: bool, timeout: float = 120.0) -> ToolResult:
        argv = tuple(str(a) for a in argv)
        if self.dry_run and changes:
            self.skipped.append(argv)
            self.echo(f"would run: {_show(argv)}")
            return ToolResult(argv, 0, "", "")
        self.calls.append(argv)
        return self.transport(argv, timeout)

    def note(self, text: str) -> None:
        """A step that is not a tool call (registry, files), said the same way in dry-run."""
        self.echo(f"would {text}" if self.dry_run else text)


def _show(argv: Sequence[str]) -> str:
    # Scripts passed to `mpremote exec` are long; show their first line only.
    shown = [a.splitlines()[0] + " ..." if "\n" in a else a for a in argv]
    if shown[:2] == [sys.executable, "-m"]:
        shown = ["python", "-m", *shown[2:]]
    return shlex.join(shown)
