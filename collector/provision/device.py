"""Provisioning a board as an evalterm device, rotating its key, replacing a broken one.

    provision   identity (given, already on the board, or from the board's unique id), key
                (registered, or new), config.json, firmware compiled for the board, installed
                with mpremote, read back and compared, registered. Re-running on a provisioned
                board changes nothing (same hashes) unless --force.
    rotate_key  a new key in the registry, the board's config rewritten with it.
    replace     a new board takes a broken device's hall and window; the old identity is
                revoked once the new one is installed. History in InfluxDB is tagged with the
                window, so the window's history continues.

Order of effects, chosen so that a failure half-way can be repaired by running the same command
again: the registry first (the key the board must get), then the board, then the report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.provision.board import BoardState, MpRemote
from collector.provision.build import FirmwareBuild, arch_of_mpy, build_firmware, sha256_hex
from collector.provision.devconfig import device_config
from collector.provision.report import ReportRow, append_row, iso_utc
from collector.provision.runner import ProvisionError, ToolRunner
from collector.registry import Device, Registry

__all__ = ["Outcome", "Provisioner"]


@dataclass
class Outcome:
    device: Device
    firmware: str
    changed: list[str] = field(default_factory=list)  # files written to the board
    removed_stale: list[str] = field(default_factory=list)
    registered: bool = False
    report: Path | None = None


@dataclass
class Provisioner:
    registry: Registry
    board: MpRemote
    firmware_dir: Path
    report_dir: Path
    now_ms: Callable[[], int]

    @property
    def runner(self) -> ToolRunner:
        return self.board.runner

    # -- identity -------------------------------------------------------------------------------

    def _identity(self, state: BoardState, port: str, device: str | None) -> str:
        if device:
            return device
        if state.device_id:
            return state.device_id
        if state.uid:
            return f"kp-{state.uid[-6:]}"
        raise ProvisionError(f"the board on {port} has no evalterm config and no unique id: "
                             "pass --device ID")

    def _place(self, name: str, hall: str, window: str, replacing: str | None) -> Device:
        """The registered device, or a new registration (not written in dry-run)."""
        dev = self.registry.get(name)
        if dev is not None:
            if dev.state != "active":
                raise ProvisionError(f"{name} was revoked: a revoked identity is never used "
                                     "again; pass --device with a new id")
            if (dev.hall, dev.window) != (hall, window):
                raise ProvisionError(
                    f"{name} is registered at {dev.hall}/{dev.window}, not {hall}/{window}: "
                    f"to move it, revoke it and provision the board with a new id, or use "
                    f"`evalterm device replace` at the new window")
            return dev
        others = [d.device for d in self.registry.active_at(hall, window) if d.device != replacing]
        if others:
            raise ProvisionError(
                f"window {hall}/{window} already has {', '.join(others)}: to swap a broken "
                f"device use `evalterm device replace --old {others[0]} --port PORT`")
        if self.runner.dry_run:
            self.runner.note(f"register {name} at {hall}/{window} with a new key")
            # A throw-away registration for planning; nothing is stored.
            return Device(name, hall, window, "active", self.now_ms(), key=bytes(32))
        dev = self.registry.add(name, hall, window, self.now_ms())
        self.runner.note(f"registered {name} at {hall}/{window}, key fingerprint "
                         f"{dev.fingerprint}")
        return dev

    # -- install --------------------------------------------------------------------------------

    def _install(self, port: str, state: BoardState, dev: Device, site: dict[str, Any],
                 board_profile: str | None, arch: str | None, force: bool, build_dir: Path
                 ) -> tuple[FirmwareBuild, list[str], list[str]]:
        """Bring the board to exactly this build and config; returns (build, written, stale)."""
        config_bytes = device_config(site, dev, self.firmware_dir, board_profile)
        build = build_firmware(self.runner, self.firmware_dir, arch or arch_of_mpy(state.mpy),
                               build_dir / "fw")
        config_file = build_dir / "config.json"
        config_file.write_bytes(config_bytes)
        config_file.chmod(0o600)
        want = build.hashes()
        want["config.json"] = sha256_hex(config_bytes)
        sources = {**build.files, "config.json": config_file}
        module_names = [m.split("/", 1)[1] for m in build.modules]
        stale = sorted(p for p in state.files if p.startswith("etfw/") and p not in want)
        changed = sorted(p for p in want if force or state.files.get(p) != want[p])
        if not changed and not stale:
            return build, [], []
        # Files that replace one of the same name roughly reuse its blocks; new ones need room.
        need = sum(sources[p].stat().st_size for p in changed if p not in state.files)
        if state.free is not None and need > state.free:
            raise ProvisionError(f"the board on {port} has {state.free} bytes free, the firmware "
                                 f"needs {need}: erase and reflash it (evalterm device flash)")
        parked = state.runs_firmware
        if parked:
            self.board.park(port)
            # Parking renamed main.py: it must be written back even if unchanged.
            changed = sorted({*changed, "main.py"})
        self.board.prepare(port, module_names)
        modules = [sources[p] for p in changed if p.startswith("etfw/")]
        if modules:
            self.board.copy(port, modules, ":etfw/")
        if "config.json" in changed:
            self.board.copy(port, [config_file], ":config.json")
        if "main.py" in changed:
            self.board.copy(port, [sources["main.py"]], ":main.py")  # last: see board.py
        if not self.runner.dry_run:
            after = self.board.probe(port)
            wrong = sorted(p for p in want if after.files.get(p) != want[p])
            left = sorted(p for p in after.files if p.startswith("etfw/") and p not in want)
            if wrong or left:
                raise ProvisionError(
                    f"the board on {port} does not read back as written ({', '.join(wrong + left)}"
                    "): run the same command again; if it fails twice, reflash the board")
        self.board.reset(port)
        return build, changed, stale

    def _report(self, dev: Device, action: str, build: FirmwareBuild, state: BoardState,
                port: str, replaces: str = "") -> Path | None:
        row = ReportRow(iso_utc(self.now_ms()), dev.hall, dev.window, dev.device, action,
                        build.version, dev.fingerprint, state.uid or "", port, replaces)
        if self.runner.dry_run:
            self.runner.note(f"append to the {dev.hall} provisioning report: {action} "
                             f"{dev.device} at {dev.window}")
            return None
        return append_row(self.report_dir, row)

    # -- commands -------------------------------------------------------------------------------

    def provision(self, port: str, hall: str, window: str, site: dict[str, Any], *,
                  device: str | None = None, board_profile: str | None = None,
                  arch: str | None = None, force: bool = False, replacing: str | None = None,
                  action: str = "provision") -> Outcome:
        state = self.board.probe(port)
        name = self._identity(state, port, device)
        if replacing is not None and name == replacing:
            raise ProvisionError(f"the new board must not take the identity of {replacing}: it "
                                 "is being revoked; pass --device with a new id")
        if state.device_id and state.device_id != name and not force:
            raise ProvisionError(
                f"the board on {port} is already {state.device_id} "
                f"({state.config.get('hall')}/{state.config.get('window')}) "  # type: ignore[union-attr]
                f"and would become {name}: add --force to give it the new identity")
        registered_before = self.registry.get(name) is not None
        dev = self._place(name, hall, window, replacing)
        with tempfile.TemporaryDirectory(prefix="evalterm-provision-") as tmp:
            build, changed, stale = self._install(port, state, dev, site, board_profile, arch,
                                                  force, Path(tmp))
        outcome = Outcome(dev, build.version, changed, stale,
                          registered=not registered_before and not self.runner.dry_run)
        if changed or stale or outcome.registered:
            outcome.report = self._report(dev, action, build, state, port, replacing or "")
        return outcome

    def rotate_key(self, port: str, device: str, site: dict[str, Any], *,
                   board_profile: str | None = None, arch: str | None = None) -> Outcome:
        dev = self.registry.get(device)
        if dev is None or dev.state != "active":
            raise ProvisionError(f"{device} is not an active registered device")
        state = self.board.probe(port)
        if state.device_id != device:
            raise ProvisionError(f"the board on {port} is {state.device_id or 'not provisioned'}, "
                                 f"not {device}: connect {device}'s board")
        if self.runner.dry_run:
            self.runner.note(f"give {device} a new key (now {dev.fingerprint})")
            new = Device(dev.device, dev.hall, dev.window, dev.state, dev.created_ms,
                         key=bytes(32))
        else:
            new = self.registry.rotate_key(device)
            self.runner.note(f"{device}: new key {new.fingerprint} (was {dev.fingerprint}) in "
                             "the registry; writing it to the board")
        with tempfile.TemporaryDirectory(prefix="evalterm-provision-") as tmp:
            build, changed, stale = self._install(port, state, new, site, board_profile, arch,
                                                  False, Path(tmp))
        outcome = Outcome(new, build.version, changed, stale)
        outcome.report = self._report(new, "rotate-key", build, state, port)
        return outcome

    def replace(self, port: str, old: str, site: dict[str, Any], *, device: str | None = None,
                board_profile: str | None = None, arch: str | None = None,
                force: bool = False) -> Outcome:
        old_dev = self.registry.get(old)
        if old_dev is None:
            raise ProvisionError(f"{old} is not registered: nothing to replace")
        outcome = self.provision(port, old_dev.hall, old_dev.window, site, device=device,
                                 board_profile=board_profile, arch=arch, force=force,
                                 replacing=old, action="replace")
        if old_dev.state == "active":
            if self.runner.dry_run:
                self.runner.note(f"revoke {old} ({old_dev.hall}/{old_dev.window})")
            else:
                self.registry.revoke(old, self.now_ms())
                self.runner.note(f"revoked {old}; {outcome.device.device} now serves "
                                 f"{old_dev.hall}/{old_dev.window}")
        return outcome
