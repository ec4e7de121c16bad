"""Over-the-air updates end to end: the firmware on the MicroPython unix port (sim_device.py,
heap capped, slots on its data folder, `otaboot` choosing the slot at every start) against a
real Mosquitto, the real collector service (which ingests the `ota` events like any event) and
the real rollout of `evalterm device update` (collector/ota).

The device process is supervised as a board is by its reset circuit: when it exits (RESET, the
firmware's machine.reset(); or a crash at boot) it is started again on the same data folder."""

from __future__ import annotations

import json
import os
import pathlib
import tarfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import query, wait_for
from test_fw_e2e import Sim, collector_for, device_config, mpy_dir, register  # noqa: F401
from test_micropython import mpy_cross

from collector.cli import main as cli_main
from collector.config import Config
from collector.db import connect
from collector.ota import OtaError
from collector.ota.image import load_image
from collector.ota.rollout import Rollout
from collector.ota.run import plan_update, run_update
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import MosquittoServer

pytestmark = pytest.mark.servers

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NEW = "1.1.0-ota"
# The device's heap cap in these tests (FW_OTA_HEAP tries another). A download needs 84K on
# this 64-bit port (80K fails: the ota module and a chunk on top of the running device, whose
# own cap is 80K); the cap keeps the usual 8 KiB above that (docs/firmware.md, "Memory budget").
OTA_HEAP = os.environ.get("FW_OTA_HEAP", "92K")


def build_image(out: pathlib.Path, version: str = NEW, *, crash: bool = False) -> pathlib.Path:
    """The firmware package as .mpy files with FW_VERSION = version (and, with `crash`, an
    app module that raises when imported: a build that dies at every boot)."""
    src = out / "src"
    src.mkdir(parents=True)
    for p in sorted((ROOT / "firmware" / "etfw").glob("*.py")):
        text = p.read_text(encoding="utf-8")
        if p.name == "__init__.py":
            assert 'FW_VERSION = "1.0.0"' in text
            text = text.replace('FW_VERSION = "1.0.0"', f'FW_VERSION = "{version}"')
        if crash and p.name == "app.py":
            text = 'raise RuntimeError("this build crashes at boot")\n' + text
        (src / p.name).write_text(text, encoding="utf-8")
        mpy_cross(src / p.name, out / "image", pathlib.Path("etfw") / p.name)
    (out / "image" / "VERSION").write_text(version + "\n")
    return out / "image"


class Board(Sim):
    """A Sim that starts again whenever its process ends, until stopped."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.starts = 0
        self._stopping = False
        self._watch: threading.Thread | None = None

    def start(self) -> Board:
        super().start()
        self.starts += 1
        if self._watch is None:
            self._watch = threading.Thread(target=self._supervise, daemon=True)
            self._watch.start()
        return self

    def _supervise(self) -> None:
        while not self._stopping:
            proc = self.proc
            if proc is not None and proc.poll() is not None:
                time.sleep(0.3)  # let the reader thread take the last lines
                if self._stopping:
                    return
                self.lines.append(f"EXIT {proc.returncode}")
                super().start()
                self.starts += 1
            time.sleep(0.1)

    def wait_line(self, prefix: str, after: int = 0, timeout: float = 20) -> int:
        def find() -> int | None:
            for i in range(after, len(self.lines)):
                if self.lines[i].startswith(prefix):
                    return i + 1
            return None

        return wait_for(find, timeout=timeout, what=f"device line {prefix!r}\n"
                        + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        self._stopping = True
        super().stop()
        print(f"--- {self.dir.name}: last lines\n" + "\n".join(self.lines[-25:]))

    def boots(self) -> list[list[str]]:
        return [line.split() for line in self.lines if line.startswith("BOOT ")]


@pytest.fixture
def boards(tmp_path: pathlib.Path, mpy_dir: pathlib.Path  # noqa: F811
           ) -> Iterator[Callable[..., Board]]:
    started: list[Board] = []

    def make(cfg: dict, heap: str = OTA_HEAP) -> Board:
        d = tmp_path / f"board{len(started)}"
        d.mkdir()
        b = Board(d, cfg, mpy_dir, heap).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def _plan(cfg: Config, image: pathlib.Path, window: str | None = None) -> object:
    conn = connect(cfg.state_db)
    try:
        return plan_update(conn, "h1", window, image)
    finally:
        conn.close()


def _rollout(cfg: Config, image: pathlib.Path, window: str | None = None,
             out: Callable[[str], None] | None = None, **kw: object
             ) -> tuple[Rollout, list[str]]:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print("ROLLOUT", line)
        if out is not None:
            out(line)

    kw.setdefault("timeout_s", 60)
    rollout = run_update(cfg, _plan(cfg, image, window), out=say, **kw)  # type: ignore[arg-type]
    return rollout, lines


def _register(cfg: Config, device: str, window: str) -> bytes:
    conn = connect(cfg.state_db)
    dev = Registry(conn).add(device, "h1", window, int(time.time() * 1000))
    conn.close()
    return dev.key


def _log(cfg: Config, device: str, kind: str) -> list[dict]:
    conn = connect(cfg.state_db)
    try:
        rows = conn.execute("SELECT data FROM device_log WHERE device=? AND kind=? ORDER BY id",
                            (device, kind)).fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def _states_until(cfg: Config, device: str, last: str) -> list[str]:
    """The device's `ota` states as the collector stored them, once `last` is the last."""
    states = [e["state"] for e in _log(cfg, device, "ota")]
    return states if states[-1:] == [last] else []


def _rejections(c: Collector) -> float:
    return sum(s.value for m in c.metrics.registry.collect() if m.name == "evalterm_rejected"
               for s in m.samples if s.name.endswith("_total"))


def test_good_update_canary_then_hall(tmp_path: pathlib.Path, make_config: Callable[..., Config],
                                      broker: MosquittoServer,
                                      collector_for: Callable[[Config], Collector],  # noqa: F811
                                      boards: Callable[..., Board]) -> None:
    cfg = make_config()
    image = build_image(tmp_path / "img")
    keys = {w: _register(cfg, f"kp-ota-{w}", w) for w in ("w1", "w2")}
    col = collector_for(cfg)
    devs = {w: boards(device_config(cfg, f"kp-ota-{w}", keys[w], broker.port, window=w,
                                    heartbeat_s=10))
            for w in keys}
    for b in devs.values():
        b.wait_line("LINK 1")
    rollout, lines = _rollout(cfg, image)
    assert not rollout.failed, lines
    # The canary confirmed before the second window was sent anything.
    first = next(i for i, s in enumerate(lines) if "kp-ota-w1" in s and "confirmed" in s)
    sent2 = next(i for i, s in enumerate(lines) if "kp-ota-w2" in s and "sent" in s)
    assert first < sent2, lines
    for w, b in devs.items():
        boots = b.boots()
        assert boots[0][3] == "1.0.0" and boots[-1][3] == NEW, boots
        assert boots[-1][5] == "fw1" and boots[-1][7] == "1", boots  # the trial boot
        # The new version's heartbeat reaches the collector, and its boot event.
        wait_for(lambda w=w: any(h["fw"] == NEW for h in _log(cfg, f"kp-ota-{w}",
                                                               "heartbeat")),
                 timeout=30, what="a heartbeat of the new version")
        assert any(e["fw"] == NEW for e in _log(cfg, f"kp-ota-{w}", "boot"))
        # The collector ingests the same events (it may be a moment behind the rollout).
        states = wait_for(lambda w=w: _states_until(cfg, f"kp-ota-{w}", "confirmed"),
                          what="the confirmation ingested")
        assert states[0] == "start" and "ready" in states and "trial" in states, states
        state = json.loads((b.dir / "data" / "ota.json").read_text())
        assert (state["cur"], state["new"]) == ("fw1", ""), state
    assert _rejections(col) == 0
    # A confirmed slot stays: a power cycle boots it again, not on trial.
    b = devs["w1"]
    n = len(b.lines)
    assert b.proc is not None
    b.proc.kill()
    b.wait_line("BOOT", n)
    assert b.boots()[-1][3] == NEW and b.boots()[-1][7] == "0"
    # Sending the same version again: nothing to do.
    again, lines = _rollout(cfg, image, "w1")
    assert not again.failed and again.runs[0].state == "current", lines


def test_interrupted_download_resumes_and_never_boots_a_partial_slot(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    cfg = make_config()
    image = build_image(tmp_path / "img")
    key = register(cfg, "kp-sim1")
    collector_for(cfg)
    b = boards(device_config(cfg, "kp-sim1", key, broker.port))
    b.wait_line("LINK 1")
    cut = {"done": False}

    def power_cut(line: str) -> None:
        # At the first progress line past file 8: the board loses power mid-download.
        if not cut["done"] and "downloading: file 8" in line:
            cut["done"] = True
            slot = b.dir / "data" / "fw1" / "etfw"
            assert b.proc is not None
            b.proc.kill()
            partial = sorted(p.name for p in slot.iterdir())
            assert partial and len(partial) < len(load_image(image).files), partial

    rollout, lines = _rollout(cfg, image, out=power_cut, stall_s=4)
    assert cut["done"], lines
    assert not rollout.failed, lines
    boots = b.boots()
    # After the cut the old version booted (the partial slot was never chosen), then the
    # download resumed and the new version booted once it was complete.
    assert [x[3] for x in boots] == ["1.0.0", "1.0.0", NEW], boots
    assert any("sent again" in s for s in lines), lines


def test_file_not_matching_the_manifest_is_refused_old_version_keeps_running(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    """The command is signed but a file on the way does not match the manifest: the device
    fetches it three times, then reports the failure; nothing is switched."""
    cfg = make_config()
    image = build_image(tmp_path / "img")
    key = register(cfg, "kp-sim1")
    collector_for(cfg)
    b = boards(device_config(cfg, "kp-sim1", key, broker.port))
    b.wait_line("LINK 1")
    conn = connect(cfg.state_db)
    plan = plan_update(conn, "h1", None, image)
    conn.close()
    # Serve other bytes for one file than the signed manifest lists.
    name, data = plan.image.files[3]
    files = list(plan.image.files)
    files[3] = (name, bytes(len(data)))
    object.__setattr__(plan.image, "files", tuple(files))
    rollout = run_update(cfg, plan, timeout_s=60, out=lambda s: print("ROLLOUT", s))
    assert len(rollout.failed) == 1 and "SHA-256" in rollout.failed[0].detail
    wait_for(lambda: _states_until(cfg, "kp-sim1", "failed"), what="the failure ingested")
    assert all(x[3] == "1.0.0" for x in b.boots()) and b.starts == 1
    state = json.loads((b.dir / "data" / "ota.json").read_text()) \
        if (b.dir / "data" / "ota.json").exists() else {}
    assert not state.get("new"), state


def test_unsigned_update_command_is_refused_and_reported(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    """An update command that does not verify under the device's key (forged, or signed with
    another key): refused, reported in a signed `ota` event, the old version keeps running."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from collector.protocol import command_message, device_topic

    cfg = make_config()
    image = load_image(build_image(tmp_path / "img"))
    key = register(cfg, "kp-sim1")
    collector_for(cfg)
    b = boards(device_config(cfg, "kp-sim1", key, broker.port))
    n = b.wait_line("LINK 1")
    topic = device_topic(cfg.mqtt.topic_prefix, "h1", "w1", "kp-sim1", "cmd")
    forged = command_message(bytes(range(32)), topic, cmd="update", cseq=1,
                             ts=int(time.time() * 1000), id=7, ver=NEW,
                             size=len(image.manifest), sha=image.manifest_sha, wait=60)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish(topic, forged, qos=1).wait_for_publish(5)
    refused = wait_for(lambda: [e for e in _log(cfg, "kp-sim1", "ota")
                                if e["state"] == "refused"], what="the refusal reported")
    assert refused[0]["why"] == "signature"
    pub.loop_stop()
    pub.disconnect()
    time.sleep(1)
    assert b.boots()[-1][3] == "1.0.0" and b.starts == 1
    assert not (b.dir / "data" / "fw1").exists()
    assert b.wait_line("LINK", n - 1)


def test_build_that_crashes_at_boot_is_rolled_back(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    cfg = make_config()
    image = build_image(tmp_path / "img", "1.1.0-crash", crash=True)
    key = register(cfg, "kp-sim1")
    collector_for(cfg)
    b = boards(device_config(cfg, "kp-sim1", key, broker.port))
    b.wait_line("LINK 1")
    rollout, lines = _rollout(cfg, image)
    assert len(rollout.failed) == 1, lines
    assert "did not start" in rollout.failed[0].detail, lines
    # Three boots of the new slot died (counted by otaboot before the import), then the old
    # version booted again and said so.
    assert sum("this build crashes at boot" in s for s in b.lines) == 3, b.lines[-40:]
    assert b.boots()[-1][3] == "1.0.0" and b.boots()[-1][5] == "-"
    wait_for(lambda: _states_until(cfg, "kp-sim1", "rolled_back"), what="rollback ingested")
    rolled = [e for e in _log(cfg, "kp-sim1", "ota") if e["state"] == "rolled_back"]
    assert rolled == [{"state": "rolled_back", "ver": "1.1.0-crash", "why": "boots"}]


def test_new_version_that_never_hears_from_the_collector_rolls_back(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    """The rollout stops as the device reboots (no confirmation is ever sent): the new version
    runs, hears nothing signed within `wait` seconds, and goes back to the old one."""
    cfg = make_config()
    image = build_image(tmp_path / "img")
    key = register(cfg, "kp-sim1")
    collector_for(cfg)
    b = boards(device_config(cfg, "kp-sim1", key, broker.port))
    b.wait_line("LINK 1")
    gone: list[bool] = []
    rollout, lines = _rollout(cfg, image, wait_s=12,
                              out=lambda s: gone.append(True) if "rebooting" in s else None,
                              should_stop=lambda: bool(gone))
    assert gone and not rollout.done, lines
    wait_for(lambda: _states_until(cfg, "kp-sim1", "rolled_back"), timeout=60,
             what="the rollback reported")
    rolled = [e for e in _log(cfg, "kp-sim1", "ota") if e["state"] == "rolled_back"]
    assert rolled == [{"state": "rolled_back", "ver": NEW, "why": "timeout"}]
    boots = [(x[3], x[7]) for x in b.boots()]
    assert boots == [("1.0.0", "0"), (NEW, "1"), ("1.0.0", "0")], boots
    state = json.loads((b.dir / "data" / "ota.json").read_text())
    assert (state["cur"], state["new"]) == ("", ""), state


def test_update_while_ratings_wait_in_the_outbox_loses_none(
        tmp_path: pathlib.Path, make_config: Callable[..., Config],
        collector_for: Callable[[Config], Collector], boards: Callable[..., Board]  # noqa: F811
        ) -> None:
    mq = MosquittoServer(tmp_path / "mq").start()
    try:
        cfg = make_config(mqtt__port=mq.port)
        image = build_image(tmp_path / "img")
        key = register(cfg, "kp-sim1")
        collector_for(cfg)
        b = boards(device_config(cfg, "kp-sim1", key, mq.port, standalone=True,
                                 min_interval_ms=0, thanks_ms=500))
        b.wait_line("LINK 1")
        levels = [5, 4]
        for lv in levels:
            b.press(lv)
            time.sleep(0.7)
        late = [3, 5]

        once: list[bool] = []

        def at_ready(line: str) -> None:
            # The device verified the slot and reboots within 2 s (once idle): the broker
            # dies now and ratings are pressed, so they wait in the outbox across the switch.
            # Once: the `ready` event may come again (its PUBACK died with the broker).
            if "rebooting into" in line and not once:
                once.append(True)
                mq.kill()
                for lv in late:
                    b.press(lv)
                    time.sleep(0.6)
                threading.Timer(4, mq.start).start()

        # The broker is down a while: the keypad's reconnect back-off grows to 60 s
        # (etfw/link.py, _BACKOFF_MAX_MS), so "no progress" must allow more than that (the
        # CLI's default is 600 s); 60 s failed once on a loaded machine.
        rollout, lines = _rollout(cfg, image, out=at_ready, timeout_s=150)
        assert not rollout.failed, lines
        resets = [s for s in b.lines if s.startswith("RESET")]
        assert resets and int(resets[0].split()[2]) >= 1, resets  # records waited on flash

        def rows() -> list[dict]:
            got = query(cfg, 'SELECT * FROM "rating" ORDER BY time')
            return got if len(got) >= len(levels + late) else []

        wait_for(rows, timeout=60, what="every rating in InfluxDB")
        time.sleep(2)
        got = query(cfg, 'SELECT * FROM "rating" ORDER BY time')
        assert sorted(int(r["level"]) for r in got) == sorted(levels + late), got
        assert b.boots()[-1][3] == NEW
    finally:
        mq.stop()


def test_cli_dry_run_and_one_line_errors(tmp_path: pathlib.Path,
                                         make_config: Callable[..., Config],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config()
    image = build_image(tmp_path / "img")
    _register(cfg, "kp-a", "w2")
    _register(cfg, "kp-b", "w1")
    conf = tmp_path / "evalterm.toml"
    conf.write_text(f'[collector]\ndata_dir = "{cfg.collector.data_dir}"\n'
                    f'[mqtt]\nport = {cfg.mqtt.port}\ntopic_prefix = "{cfg.mqtt.topic_prefix}"\n')
    tar = tmp_path / "image.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(image, arcname=".")
    for img in (image, tar):
        assert cli_main(["-c", str(conf), "device", "update", "--hall", "h1", "--image",
                         str(img), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"image {NEW}:" in out and "dry run: nothing was sent; 2 device(s)" in out
        assert out.index("first (canary): kp-b at h1/w1") < out.index("then: kp-a at h1/w2")
    bad = tmp_path / "bad"
    (bad / "etfw").mkdir(parents=True)
    (bad / "etfw" / "app.py").write_text("")
    cases = [
        (["--hall", "h9", "--image", str(image)], "no active device in hall h9"),
        (["--hall", "h1", "--window", "w7", "--image", str(image)], "no active device at h1/w7"),
        (["--hall", "h1", "--image", str(tmp_path / "nothing")], "does not exist"),
        (["--hall", "h1", "--image", str(bad)], "has no version"),
    ]
    for args, want in cases:
        assert cli_main(["-c", str(conf), "device", "update", *args, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], err
    with pytest.raises(OtaError, match="paths are 1-2 levels"):
        deep = tmp_path / "deep" / "etfw" / "a" / "b"
        deep.mkdir(parents=True)
        (deep / "x.py").write_text("")
        (tmp_path / "deep" / "VERSION").write_text("2\n")
        (tmp_path / "deep" / "etfw" / "__init__.py").write_text("")
        (tmp_path / "deep" / "etfw" / "update.py").write_text("")
        load_image(tmp_path / "deep")


def test_cli_reports_each_failed_device_in_one_line(
        tmp_path: pathlib.Path, make_config: Callable[..., Config], broker: MosquittoServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No device answers (none is running): the canary fails with one line, the rest is
    skipped with one line each, the exit status is 1."""
    cfg = make_config()
    image = build_image(tmp_path / "img")
    _register(cfg, "kp-a", "w1")
    _register(cfg, "kp-b", "w2")
    conf = tmp_path / "evalterm.toml"
    conf.write_text(f'[collector]\ndata_dir = "{cfg.collector.data_dir}"\n'
                    f'[mqtt]\nport = {cfg.mqtt.port}\ntopic_prefix = "{cfg.mqtt.topic_prefix}"\n')
    assert cli_main(["-c", str(conf), "device", "update", "--hall", "h1", "--image", str(image),
                     "--timeout", "3"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("evalterm: error: kp-a (h1/w1): no progress for 3 s"), err
    assert err[1] == ("evalterm: error: kp-b (h1/w2): not updated: the first window failed")
    assert "0 of 2 device(s) run" in captured.out
    # The broker down: one line.
    conf.write_text(f'[collector]\ndata_dir = "{cfg.collector.data_dir}"\n'
                    f'[mqtt]\nport = 1\ntopic_prefix = "{cfg.mqtt.topic_prefix}"\n')
    assert cli_main(["-c", str(conf), "device", "update", "--hall", "h1", "--image",
                     str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0], err

