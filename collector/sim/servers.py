"""Private Mosquitto, InfluxDB 1.x and PostgreSQL servers for the demo, the tests and the bench.

Each server runs from the Debian package's binary (installed by scripts/setup.sh) with its own
config and data under a folder of ours, on free loopback ports, so nothing depends on or disturbs
the machine's own services. `stop()`, `kill()` and `start()` let fault tests take a server away and
bring it back on the same port with the same data.
"""

from __future__ import annotations

import getpass
import itertools
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["InfluxServer", "MosquittoServer", "PostgresServer", "free_port", "pg_bindir"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if not found:
        raise RuntimeError(f"{name} is not installed: run scripts/setup.sh")
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
               timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s; see {log}")


class _Server:
    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / f"{self.name}.log"

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        logf = self.log.open("ab")
        return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a crash or power cut would do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MosquittoServer(_Server):
    name = "mosquitto"

    def __init__(self, root: Path, port: int | None = None, extra_conf: str = "",
                 save_every_change: bool = True) -> None:
        super().__init__(root)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        # Saving on every change makes even a SIGKILL of the broker lose nothing it acknowledged
        # (the fault tests need that), but rewrites the whole file each time: far too slow for a
        # benchmark with a large backlog, which saves every 60 s instead, as in production.
        self.save_every_change = save_every_change
        self.conf = self.root / "mosquitto.conf"

    def write_conf(self) -> None:
        persist = self.root / "data"
        persist.mkdir(exist_ok=True)
        default_auth = "" if "allow_anonymous" in self.extra_conf else "allow_anonymous true\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{default_auth}"
            # Started as root, mosquitto would switch to the `mosquitto` user and could not
            # write its persistence file in our folder; stay the user who started it.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {persist}/\n"
            + ("autosave_interval 1\nautosave_on_changes true\n" if self.save_every_change
               else "autosave_interval 60\n") +
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_conf}\n"
        )

    def start(self) -> MosquittoServer:
        self.write_conf()
        binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        self.proc = self._spawn([binary, "-c", str(self.conf)])
        _wait_port(self.port, self.proc, "mosquitto", self.log, 15)
        return self


class InfluxServer(_Server):
    name = "influxd"

    def __init__(self, root: Path, port: int | None = None,
                 continuous_queries: bool = False) -> None:
        super().__init__(root)
        self.port = port or free_port()
        self.rpc_port = free_port()  # the backup and restore service (influxd backup -host)
        self.conf = self.root / "influxdb.conf"
        # Off by default (they would run in every test's database); checked every second when on.
        self.continuous_queries = continuous_queries

    @property
    def backup_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def wipe(self) -> None:
        """Stop the server and delete every database (meta, data, WAL): a lost disk."""
        self.stop()
        for sub in ("meta", "data", "wal"):
            shutil.rmtree(self.root / sub, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_conf(self) -> None:
        d = self.root
        self.conf.write_text(
            'reporting-disabled = true\n'
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
            '  query-log-enabled = false\n  wal-fsync-delay = "0s"\n'
            '[monitor]\n  store-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            '[logging]\n  level = "warn"\n'
            + ('[continuous_queries]\n  enabled = true\n  run-interval = "1s"\n'
               if self.continuous_queries else '[continuous_queries]\n  enabled = false\n')
        )

    def start(self, timeout: float = 60) -> InfluxServer:
        self.write_conf()
        binary = _binary("influxd", "/usr/bin/influxd")
        self.proc = self._spawn([binary, "-config", str(self.conf)])
        _wait_port(self.port, self.proc, "influxd", self.log, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # S310: self.url is the http:// address of the server this class started.
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:  # noqa: S310
                    if resp.status == 204:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"influxd did not answer /ping; see {self.log}")


def pg_bindir() -> Path:
    """PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup): `pg_config --bindir` names
    the client's folder on Debian, so the newest /usr/lib/postgresql/*/bin with initdb wins."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    if shutil.which("pg_config"):
        out = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                  check=True).stdout.strip())
        if (out / "initdb").exists():
            return out
    raise RuntimeError("PostgreSQL server binaries not found: run scripts/setup.sh")


class PostgresServer:
    """A private PostgreSQL cluster in its own folder, on a free loopback port, trust auth (tests
    and the bench only). initdb refuses root: as root, the cluster belongs to and runs as
    `nobody`, in a folder under /tmp (a pytest folder of root's is not reachable for nobody)."""

    def __init__(self, name: str = "pg", port: int | None = None) -> None:
        import tempfile

        self.bindir = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix=f"evalterm-{name}-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = port or free_port()
        self.name = name
        if _as_root():
            os.chown(self.root, *_nobody())

    def run(self, *argv: str, check: bool = True) -> Any:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if _as_root():
            cmd = ["runuser", "-u", "nobody", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120)
        if check and res.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}\n{log}")
        return res

    def init(self) -> PostgresServer:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "--no-locale", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = on\n"
                    f"cluster_name = '{self.name}'\nmax_connections = 60\n"
                    "shared_buffers = 16MB\nwal_keep_size = 64MB\n")
        return self

    def start(self) -> PostgresServer:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str, db: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement in autocommit mode; its rows (if any)."""
        import psycopg
        with psycopg.connect(self.url(db), autocommit=True, connect_timeout=10) as c:
            cur = c.execute(statement)  # type: ignore[call-overload]
            return list(cur.fetchall()) if cur.description else []

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{next(_PG_DB_COUNTER)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)


_PG_DB_COUNTER = itertools.count(1)


def _as_root() -> bool:
    return os.geteuid() == 0


def _nobody() -> tuple[int, int]:
    import pwd
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid
