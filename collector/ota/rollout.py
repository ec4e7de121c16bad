"""The staged rollout's decisions (pure: what the devices said and the time in, commands and
progress lines out; the MQTT side is collector/ota/server.py).

Stage 1 is one window (the canary); stage 2, the rest of the hall, starts only when the canary
runs the new version and confirmed it (its `ota` event `confirmed`, signed by the new firmware
once the collector confirmed it with an `update` to the version it runs). A canary that fails
stops the rollout: the rest is not touched. Within a stage the devices update at the same time.

Per device: update sent -> downloading (chunk requests, `progress` events) -> ready (verified,
rebooting) -> the boot event with the new version (on trial) -> confirm sent -> confirmed.
A device that goes quiet while downloading is sent the same update again (it resumes from the
files on flash); one that says `refused`, `failed` or `rolled_back`, or makes no progress in
`timeout_s`, has failed, with a one-line reason saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.registry import Device

__all__ = ["DONE_OK", "DeviceRun", "Rollout", "explain"]

DONE_OK = ("confirmed", "current")
_FINAL = ("confirmed", "current", "failed", "skipped")

_REASONS = {
    ("refused", "signature"): "refused the update: its signature does not verify with the "
    "device's key (the board's key differs from the registry's: `evalterm device rotate-key`)",
    ("refused", "malformed"): "refused the update as malformed (its firmware may predate this "
    "update format)",
    ("refused", "trial"): "is still trying out a previous update: wait until it confirms or "
    "rolls back (a few minutes), then run again",
    ("refused", "expired"): "refused the update as older than an hour (check the collector's "
    "and the device's clocks)",
    ("refused", "cseq"): "refused the update's command counter; run again",
    ("failed", "sha"): "a file failed its SHA-256 check three times (a flash or transfer "
    "fault); nothing was switched; run again, replace the board if it repeats",
    ("failed", "manifest"): "the manifest did not check (format, version or paths); nothing "
    "was switched (rebuild the image)",
    ("failed", "stalled"): "the download stalled (no chunk for a minute); nothing was switched; "
    "run again",
    ("rolled_back", "boots"): "the new version did not start (3 boots without reaching the "
    "collector) and the device went back to its old version: fix the image",
    ("rolled_back", "timeout"): "the new version did not hear from the collector in time and "
    "the device went back to its old version: check the image's link code",
}


def explain(state: str, why: str) -> str:
    return _REASONS.get((state, why), f"{state} ({why or 'no reason given'})")


@dataclass
class DeviceRun:
    dev: Device
    stage: int
    state: str = "waiting"  # waiting, sent, downloading, ready, trial, confirmed, current, ...
    detail: str = ""
    started_ms: int = 0
    seen_ms: int = 0  # last sign of progress
    resends: int = 0
    confirm_ms: int = 0
    online: bool | None = None
    requests: int = 0
    served: int = 0  # bytes sent in chunks

    @property
    def name(self) -> str:
        return f"{self.dev.device} ({self.dev.hall}/{self.dev.window})"


@dataclass
class Rollout:
    version: str
    runs: list[DeviceRun]
    timeout_s: int = 600
    stall_s: int = 15
    max_resends: int = 10
    lines: list[str] = field(default_factory=list)  # progress for the user, taken by the caller
    stage: int = 0

    @classmethod
    def plan(cls, version: str, canary: Device, rest: list[Device], **kw: Any) -> Rollout:
        runs = [DeviceRun(canary, 1)] + [DeviceRun(d, 2) for d in rest]
        return cls(version, runs, **kw)

    def run_of(self, device: str) -> DeviceRun | None:
        return next((r for r in self.runs if r.dev.device == device), None)

    @property
    def done(self) -> bool:
        return all(r.state in _FINAL for r in self.runs)

    @property
    def failed(self) -> list[DeviceRun]:
        return [r for r in self.runs if r.state in ("failed", "skipped")]

    def _say(self, r: DeviceRun, text: str) -> None:
        self.lines.append(f"{r.name}: {text}")

    def _fail(self, r: DeviceRun, why: str) -> None:
        r.state, r.detail = "failed", why
        self._say(r, "FAILED: " + why)

    # --- decisions ------------------------------------------------------------------------------

    def tick(self, now: int) -> list[tuple[str, DeviceRun]]:
        """What to send now: ("update" | "confirm", run)."""
        out: list[tuple[str, DeviceRun]] = []
        if self.stage == 0 or (self.stage == 1 and self._stage_over(1)):
            self.stage += 1
            if self.stage == 2 and any(r.stage == 1 and r.state not in DONE_OK
                                       for r in self.runs):
                for r in self.runs:
                    if r.stage == 2:
                        r.state, r.detail = "skipped", "not updated: the first window failed"
                        self._say(r, r.detail)
                self.stage = 3
            elif self.stage <= 2:
                for r in self.runs:
                    if r.stage == self.stage:
                        if r.online is False:
                            self._fail(r, "offline (its last status): not updated; run again "
                                       "when it is online")
                            continue
                        r.state, r.started_ms, r.seen_ms = "sent", now, now
                        self._say(r, f"update to {self.version} sent")
                        out.append(("update", r))
        for r in self.runs:
            if r.state in _FINAL or r.state == "waiting":
                continue
            if now - r.seen_ms > self.timeout_s * 1000:
                self._fail(r, f"no progress for {self.timeout_s} s (offline, or its firmware "
                           "has no over-the-air update): nothing was switched unless it said so")
            elif r.state in ("sent", "downloading") and now - r.seen_ms > self.stall_s * 1000 \
                    * (r.resends + 1):
                if r.resends < self.max_resends:
                    r.resends += 1
                    self._say(r, "no request for a while: update sent again (it resumes)")
                    out.append(("update", r))
            elif r.state == "ready" and now - r.seen_ms > self.stall_s * 1000 * (r.resends + 1):
                # Its boot event never came: the broker or this connection may have restarted
                # as it rebooted (a clean session hears nothing meanwhile). Ask: a slot on trial
                # takes the command as its confirmation, a confirmed one answers "current".
                if r.resends < self.max_resends:
                    r.resends += 1
                    self._say(r, "no word since it rebooted: confirmation sent (in case it "
                              "runs the new version)")
                    out.append(("confirm", r))
            elif r.state == "trial" and now - r.confirm_ms > self.stall_s * 1000:
                r.confirm_ms = now
                out.append(("confirm", r))
        return out

    def _stage_over(self, stage: int) -> bool:
        return all(r.state in _FINAL for r in self.runs if r.stage == stage)

    def status(self, device: str, state: str) -> None:
        r = self.run_of(device)
        if r is not None:
            r.online = state == "online"

    def request(self, device: str, now: int, nbytes: int) -> None:
        r = self.run_of(device)
        if r is not None and r.state in ("sent", "downloading"):
            if r.state == "sent":
                r.state = "downloading"
            r.requests += 1
            r.served += nbytes
            r.seen_ms = now

    def event(self, device: str, etype: str, data: dict[str, Any], now: int
              ) -> list[tuple[str, DeviceRun]]:
        """A verified event of a device in the rollout; returns commands to send."""
        r = self.run_of(device)
        if r is None or r.state in _FINAL or r.state == "waiting":
            return []
        if etype == "boot":
            if data.get("fw") == self.version and r.state in ("ready", "downloading", "sent"):
                r.state, r.seen_ms, r.confirm_ms = "trial", now, now
                self._say(r, f"booted {self.version} (on trial): confirm sent")
                return [("confirm", r)]
            if r.state == "ready":
                r.seen_ms = now
                self._say(r, f"booted {data.get('fw')} (the old version)")
            return []
        if etype != "ota":
            return []
        state, ver, why = data.get("state"), data.get("ver", ""), data.get("why", "")
        r.seen_ms = now
        if state == "start":
            r.state = "downloading"
            self._say(r, "download started")
        elif state == "progress":
            self._say(r, f"downloading: file {data.get('file')} of {data.get('of')}")
        elif state == "ready" and ver == self.version:
            r.state = "ready"
            self._say(r, f"all files verified ({r.served} bytes sent); rebooting into {ver}")
        elif state == "trial" and ver == self.version and r.state != "trial":
            r.state, r.confirm_ms = "trial", now
            self._say(r, f"running {ver} on trial: confirm sent")
            return [("confirm", r)]
        elif state == "confirmed" and ver == self.version:
            r.state = "confirmed"
            self._say(r, f"runs {ver}, confirmed: done")
        elif state == "current" and ver == self.version:
            r.state = "current"
            self._say(r, f"already runs {ver}: nothing to do")
        elif state in ("refused", "failed", "rolled_back"):
            self._fail(r, explain(str(state), str(why)))
        return []
