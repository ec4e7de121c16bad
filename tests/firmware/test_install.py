"""docs/deploy.md followed step by step in a root folder of the test's own, with a keypad (the
firmware on the MicroPython unix port) in another network namespace that reaches the broker's
TLS hall listener over a veth pair, not loopback; then a backup, a wipe of both stores, a
restore, and every rating back.

What stands in for what, and why (a debootstrap'ed Debian root with systemd inside would need
minutes of downloads and a container runtime this machine does not have):

* the root: a temporary folder `R`; every documented path `/etc/...`, `/var/...`, `/opt/...`
  becomes `R/etc/...` etc. The documented command lines are taken from docs/deploy.md itself
  (the test fails when a step it runs is no longer written there) and from the unit files
  (`ExecStart`, `User`, `EnvironmentFile`), then run with that prefix.
* the `evalterm` user: `nobody` (the test creates no user on the machine); the service and
  every `et` command run as it (runuser), so a step that needs a permission the docs do not
  grant fails here as it would on a hall's server. Mosquitto runs as root here, so
  `--file-group mosquitto` (which needs `adduser evalterm mosquitto`) is left out.
* `pip install` into /opt/evalterm: a venv made from Debian's /usr/bin/python3 that sees this
  worktree and the development venv's packages (a .pth file), and the `evalterm` console
  script (`collector.cli:main`); no download.
* systemd: the unit's ExecStart, started by the test; the units themselves are verified by
  tests/test_deploy.py (`systemd-analyze verify`).
* ports: the hall listener on the documented 8883, bound to the veth address; the loopback
  listener, InfluxDB and /healthz on free ports (this machine runs other brokers).

Skipped, with the reason, without root, iproute2, network namespaces or the MicroPython port.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import DebianLikeMosquitto, query, wait_for
from test_fw_e2e import MICROPYTHON, Sim, mpy_dir  # noqa: F401
from test_fw_tls_e2e import TLS_HEAP, der
from test_micropython import mpy_cross

from collector.config import load_config
from collector.sim.servers import InfluxServer, free_port

pytestmark = pytest.mark.servers

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = (ROOT / "docs" / "deploy.md").read_text("utf-8")
USER, GROUP = "nobody", "nogroup"
N = 6  # ratings before the backup


def _lacking() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, runuser, file owners)"
    for tool in ("ip", "runuser", "install"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not pathlib.Path("/usr/bin/python3").exists():
        return "needs Debian's /usr/bin/python3 (the service user's interpreter)"
    if not MICROPYTHON.exists():
        return "needs the MicroPython unix port (scripts/setup.sh)"
    if shutil.which("influxd") is None or shutil.which("mosquitto") is None:
        return "needs mosquitto and influxdb (scripts/setup.sh)"
    probe = f"evtprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace here ({r.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def sh(cmd: str, *, user: str | None = None, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-c", cmd]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ if env is None else env))
    if check and r.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


class Hall:
    """The documented install under a prefix, and the servers it talks to."""

    def __init__(self, root: pathlib.Path, ns: str, host_ip: str) -> None:
        self.R = root
        self.ns = ns
        self.host_ip = host_ip
        self.local_port = free_port()
        self.http_port = free_port()
        self.influx = InfluxServer(root / "srv" / "influxdb", continuous_queries=True)
        self.mosq: DebianLikeMosquitto | None = None
        self.collector: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    # -- the documented steps --
    def prefixed(self, cmd: str) -> str:
        """`cmd` with /etc, /var, /opt under the prefix and the service user for evalterm."""
        out = re.sub(r"(?<![\w./-])/(etc|var|opt)/", lambda m: f"{self.R}/{m.group(1)}/", cmd)
        out = out.replace("-o evalterm -g evalterm", f"-o {USER} -g {GROUP}")
        out = out.replace("-g evalterm", f"-g {GROUP}").replace("-o evalterm", f"-o {USER}")
        return out.replace("-g mosquitto", f"-g {GROUP}")

    def doc(self, cmd: str) -> str:
        """A command line of docs/deploy.md (asserted to be there), as run under the prefix."""
        assert cmd in DOC, f"docs/deploy.md no longer says: {cmd}"
        return self.prefixed(cmd)

    def et(self, args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docs' `et ...`: evalterm as the service user with the service's config."""
        return sh(f"{self.R}/opt/evalterm/bin/evalterm -c {self.R}/etc/evalterm/collector.toml "
                  f"{args}", user=USER, env=self.env(), check=check)

    def env(self) -> dict[str, str]:
        """The service's environment: secrets.env (as `set -a; . secrets.env`) and the prefix's
        ports and folders."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
        for line in (self.R / "etc/evalterm/secrets.env").read_text().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = v
        env.update(EVALTERM_COLLECTOR__DATA_DIR=f"{self.R}/var/lib/evalterm",
                   EVALTERM_MQTT__PORT=str(self.local_port),
                   EVALTERM_INFLUX__URL=self.influx.url,
                   EVALTERM_INFLUX__BACKUP_ADDRESS=self.influx.backup_address,
                   EVALTERM_HTTP__LISTEN=f"127.0.0.1:{self.http_port}")
        return env

    def install(self) -> None:
        R = self.R
        # "pip install" (module docstring): a venv of Debian's Python with this worktree.
        sh(f"/usr/bin/python3 -m venv --without-pip {R}/opt/evalterm")
        site = next((R / "opt/evalterm/lib").glob("python3*/site-packages"))
        (site / "evalterm-test.pth").write_text(
            f"{ROOT}\n{ROOT / '.venv/lib'}/python3.11/site-packages\n")
        exe = R / "opt/evalterm/bin/evalterm"
        exe.write_text(f"#!{R}/opt/evalterm/bin/python\nimport sys\n"
                       "from collector.cli import main\nsys.exit(main())\n")
        exe.chmod(0o755)
        for cmd in ("install -d -m 0755 /etc/evalterm",
                    "install -d -o evalterm -g evalterm -m 0750 /var/lib/evalterm",
                    "install -d -o evalterm -g mosquitto -m 0750 /etc/mosquitto/evalterm",
                    "install -d -o evalterm -g evalterm -m 0700 /var/backups/evalterm",
                    "install -m 0640 -o root -g evalterm deploy/collector.toml "
                    "/etc/evalterm/collector.toml",
                    "install -m 0600 -o root -g root deploy/secrets.env.example "
                    "/etc/evalterm/secrets.env"):
            sh(self.doc(cmd))
        sed = ('sed -i "s/^EVALTERM_MQTT__PASSWORD=.*/EVALTERM_MQTT__PASSWORD=$(openssl rand '
               '-hex 24)/" \\\n    /etc/evalterm/secrets.env')
        sh(self.doc(sed).replace("\\\n    ", ""))
        assert self.et("config check").returncode == 0
        self.influx.start()

    def broker(self) -> None:
        pki = ("/opt/evalterm/bin/evalterm pki issue server --dir /etc/evalterm/pki \\\n"
               "    --name broker.hall01.example --name 10.20.0.2 --group mosquitto")
        sh(self.doc("/opt/evalterm/bin/evalterm pki init --dir /etc/evalterm/pki"))
        sh(self.doc(pki).replace("\\\n    ", "").replace("10.20.0.2", self.host_ip))
        self.render()
        conf = self.R / "etc/mosquitto/evalterm/evalterm.conf"
        self.mosq = DebianLikeMosquitto(self.R / "srv/mosquitto", conf, self.local_port)
        self.mosq.start()
        wait_for(lambda: _listening(self.host_ip, 8883), what="hall listener on the veth address")
        listen = sh("ss -ltn").stdout
        assert f"{self.host_ip}:8883" in listen and f"127.0.0.1:{self.local_port}" in listen

    def render(self) -> None:
        cmd = self.doc("et broker render --out /etc/mosquitto/evalterm --pki /etc/evalterm/pki "
                       "--file-group mosquitto \\\n    --hall hall01")
        args = (cmd.replace("\\\n    ", "")[3:]
                + f" --hall-listen {self.host_ip}:8883 --local-port {self.local_port}")
        # The service user is not in Mosquitto's group here (the docs' `adduser evalterm
        # mosquitto`): refused in one line that says so; then without --file-group.
        refused = self.et(args, check=False)
        assert refused.returncode == 2 and "adduser" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        self.et(args.replace(" --file-group mosquitto", ""))
        if self.mosq is not None and self.mosq.proc is not None:
            self.mosq.proc.send_signal(signal.SIGHUP)  # systemctl reload mosquitto
            time.sleep(0.5)

    def unit(self, name: str) -> configparser.SectionProxy:
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(ROOT / "deploy" / name)
        svc = unit["Service"]
        assert svc["User"] == "evalterm"
        assert f"install -m 0600 -o root -g root deploy/secrets.env.example " \
               f"{svc['EnvironmentFile'].lstrip('-')}" in DOC  # the file env() reads
        return svc

    def start_collector(self) -> None:
        """What systemd does with the unit: its ExecStart, as its User, in its
        WorkingDirectory, with its EnvironmentFile."""
        svc = self.unit("evalterm-collector.service")
        argv = shlex.split(self.prefixed(svc["ExecStart"]))
        self.collector = subprocess.Popen(
            ["runuser", "-u", USER, "--", *argv], cwd=self.prefixed(svc["WorkingDirectory"] + "/"),
            env=self.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(self.collector,), daemon=True).start()
        wait_for(self._healthy, timeout=60, what="/healthz answering 200")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line.rstrip())

    def _healthy(self) -> bool:
        assert self.collector is not None and self.collector.poll() is None, self.log[-20:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop_collector(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            self.collector.terminate()  # systemctl stop: SIGTERM
            self.collector.wait(30)
        self.collector = None

    def close(self) -> None:
        self.stop_collector()
        if self.mosq is not None:
            self.mosq.stop()
        self.influx.stop()

    # -- what the tests look at --
    @property
    def cfg(self) -> Any:
        return load_config(self.R / "etc/evalterm/collector.toml", env=self.env())

    def state_ratings(self) -> set[str]:
        c = sqlite3.connect(f"file:{self.R}/var/lib/evalterm/state.db?mode=ro", uri=True)
        try:
            return {r[0] for r in c.execute("SELECT rating_id FROM rating")}
        finally:
            c.close()

    def influx_ratings(self) -> set[str]:
        return {r["rating_id"] for r in query(self.cfg, 'SELECT "rating_id", "value" FROM rating')}


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class NetnsSim(Sim):
    """The keypad process in the hall's network namespace: only the veth pair leads out."""

    def __init__(self, ns: str, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ns = ns

    def start(self) -> NetnsSim:
        env = dict(os.environ, MICROPYPATH=f".frozen:{self.mpy}")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(MICROPYTHON), "-X", "heapsize=" + self.heap,
             "-m", "sim_device", str(self.mpy), str(self.dir / "config.json"),
             str(self.dir / "data"), str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _send(self, text: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c",
                        "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                        ".sendto(sys.argv[1].encode(), ('127.0.0.1', int(sys.argv[2])))",
                        text, str(self.port)], check=True, timeout=10)

    def press(self, key: int) -> None:
        self._send(f"press {key}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._send("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def hall(mpy_dir: pathlib.Path) -> Iterator[Hall]:  # noqa: F811
    why = _lacking()
    if why:
        pytest.skip(why)
    n = os.getpid() % 250 + 1
    ns, host_if, hall_if = f"evt-hall{n}", f"evth{n}", f"evtk{n}"
    host_ip, kp_ip = f"10.231.{n}.1", f"10.231.{n}.2"
    root = pathlib.Path(tempfile.mkdtemp(prefix="evalterm-install-"))
    root.chmod(0o755)  # the service user walks into R/var/lib/evalterm
    for cmd in (f"ip netns add {ns}",
                f"ip link add {host_if} type veth peer name {hall_if}",
                f"ip link set {hall_if} netns {ns}",
                f"ip addr add {host_ip}/30 dev {host_if}", f"ip link set {host_if} up",
                f"ip netns exec {ns} ip addr add {kp_ip}/30 dev {hall_if}",
                f"ip netns exec {ns} ip link set {hall_if} up",
                f"ip netns exec {ns} ip link set lo up"):
        sh(cmd)
    h = Hall(root, ns, host_ip)
    try:
        yield h
    finally:
        h.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_documented_install_rates_backs_up_and_restores(
        hall: Hall, mpy_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:  # noqa: F811
    mpy_cross(HERE / "ussl.py", mpy_dir, pathlib.Path("ussl.py"))
    hall.install()
    hall.broker()
    hall.start_collector()
    key_file = "/var/lib/evalterm/kp-0001.key"
    add = hall.doc(f"et device add --device kp-0001 --hall hall01 --window w01 --key-file "
                   f"{key_file}")
    hall.et(add[3:])
    hall.render()
    key = bytes.fromhex((hall.R / key_file.lstrip("/")).read_text().strip())
    assert (hall.R / key_file.lstrip("/")).stat().st_uid != 0  # written by the service user

    # The keypad, in the hall's network namespace: the broker only by the veth address.
    ca = der(hall.R / "etc/evalterm/pki/ca-bundle.crt")
    site = {"device": "kp-0001", "hall": "hall01", "window": "w01", "key": key.hex(),
            "wifi": {"ssid": "hall", "password": ""}, "board": "devkitc-5led",
            "heartbeat_s": 10, "standalone": True, "min_interval_ms": 0,
            "broker": {"host": hall.host_ip, "port": 8883, "keepalive": 10, "timeout_s": 3,
                       "topic_prefix": "evalterm", "tls": {"ca": [ca]}}}
    r = sh(f"ip netns exec {hall.ns} python3 -c \"import socket; socket.create_connection("
           f"('127.0.0.1', {hall.local_port}), timeout=2)\"", check=False)
    assert r.returncode != 0, "the keypad's namespace must not reach the host's loopback"
    (tmp_path / "kp").mkdir()
    sim = NetnsSim(hall.ns, tmp_path / "kp", site, mpy_dir, TLS_HEAP).start()
    try:
        n = sim.wait_line("LINK 1", timeout=60)
        for i in range(N):
            sim.press(3 + i % 3)  # 3-5: a 1-2 (差评) would ask for its reason first
            n = sim.wait_line("STATE thanks", n, timeout=30)
            n = sim.wait_line("STATE idle", n, timeout=30)
        wait_for(lambda: len(hall.influx_ratings()) == N, timeout=90,
                 what=f"{N} ratings in InfluxDB")
        assert hall.mosq is not None
        peer = hall.host_ip.rsplit(".", 1)[0] + ".2"
        conns = sh("ss -tnH state established '( sport = :8883 )'").stdout
        assert f"{hall.host_ip}:8883" in conns and f"{peer}:" in conns, conns  # over the veth
        before = hall.state_ratings()
        assert before == hall.influx_ratings() and len(before) == N

        # The backup unit's command, as its user.
        svc = hall.unit("evalterm-backup.service")
        exec_start = shlex.split(svc["ExecStart"])
        assert exec_start[:3] == shlex.split(hall.unit("evalterm-collector.service")["ExecStart"]
                                             )[:3]  # the same evalterm and config
        hall.et(hall.prefixed(shlex.join(exec_start[3:])))
        dated = [p for p in (hall.R / "var/backups/evalterm").iterdir()]
        assert len(dated) == 1 and (dated[0] / "manifest.json").is_file(), dated

        # Lose both stores.
        hall.stop_collector()
        hall.influx.wipe()
        hall.influx.start()
        for p in (hall.R / "var/lib/evalterm").iterdir():
            if p.name.startswith(("state.db", "drained.db")):
                p.unlink()

        # Restore as documented: the service stopped, `et restore`, start.
        restore = hall.doc("et restore /var/backups/evalterm/20261202T023000Z")
        hall.et(restore[3:].replace(f"{hall.R}/var/backups/evalterm/20261202T023000Z",
                                    str(dated[0])))
        hall.start_collector()
        assert hall.state_ratings() == before
        wait_for(lambda: hall.influx_ratings() == before, what="every rating back in InfluxDB")
        # The restored registry still knows the keypad: it rates on.
        sim.press(5)
        sim.wait_line("STATE thanks", n, timeout=30)
        wait_for(lambda: len(hall.influx_ratings()) == N + 1, timeout=90,
                 what="a rating after the restore")
        assert len(hall.state_ratings()) == N + 1
        assert not [ln for ln in hall.log if "Traceback" in ln], hall.log
    finally:
        sim.stop()
