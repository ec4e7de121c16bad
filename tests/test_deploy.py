"""deploy/ and docs/deploy.md agree with themselves and with the code: the systemd units pass
`systemd-analyze verify`, the sample configs load, every `evalterm` command in docs/deploy.md
parses with the real argument parser, and the container files refer to one another correctly.

(The container stack is not built or run here: no container engine runs on this machine.)"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from collector.cli import build_parser
from collector.config import config_warnings, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOC = (ROOT / "docs" / "deploy.md").read_text("utf-8")
UNITS = ("evalterm-collector.service", "evalterm-backup.service", "evalterm-backup.timer",
         "evalterm-rollup.service", "evalterm-rollup.timer")


def _unit(name: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(DEPLOY / name, encoding="utf-8")
    return p


@pytest.mark.skipif(shutil.which("systemd-analyze") is None
                    or not Path("/lib/systemd/system/multi-user.target").exists(),
                    reason="needs systemd-analyze and the system's own units (systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified in a root of the test's own: the units where the docs install them, the
    system's units beside them, and an executable at /opt/evalterm/bin/evalterm (verify checks
    that every Exec= command exists)."""
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNITS:
        shutil.copy(DEPLOY / name, root / "etc/systemd/system" / name)
    exe = root / "opt/evalterm/bin/evalterm"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *UNITS],
                       capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings: any word about our units fails.
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "evalterm" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_the_units_paths_are_the_configs_and_the_docs() -> None:
    svc = _unit("evalterm-collector.service")["Service"]
    state = f"/var/lib/{svc['StateDirectory']}"
    conf_dir = f"/etc/{svc['ConfigurationDirectory']}"
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/evalterm/bin/evalterm" and argv[-1] == "run"
    config = argv[argv.index("-c") + 1]
    assert config == f"{conf_dir}/collector.toml"
    assert svc["WorkingDirectory"] == state
    # The unit's secrets.env gives the password.
    cfg = load_config(DEPLOY / "collector.toml", env={"EVALTERM_MQTT__PASSWORD": "x"})
    assert cfg.collector.data_dir == state  # absolute: the unit has no other working directory
    assert config_warnings(cfg) == []
    assert svc["EnvironmentFile"].lstrip("-") == f"{conf_dir}/secrets.env"
    # The backup unit writes where the docs create the folder, with the same config.
    bk = _unit("evalterm-backup.service")["Service"]
    bargv = shlex.split(bk["ExecStart"])
    assert bargv[:3] == argv[:3] and bargv[3] == "backup"
    assert bargv[-1] == bk["ReadWritePaths"]
    assert f"install -d -o evalterm -g evalterm -m 0700 {bargv[-1]}" in DOC
    assert bk["StateDirectory"] == svc["StateDirectory"]  # the live database's -shm
    for timer in ("evalterm-backup", "evalterm-rollup"):
        assert _unit(f"{timer}.timer")["Timer"]["OnCalendar"]
        assert f"{timer}.timer" in DOC
    # What the docs install is what is here.
    for path in ("deploy/collector.toml", "deploy/secrets.env.example"):
        assert (ROOT / path).is_file() and path in DOC
    assert f"install -d -o evalterm -g evalterm -m 0750 {state}" in DOC


def _doc_commands() -> list[list[str]]:
    """Every `evalterm` command of the shell blocks in docs/deploy.md, as argv."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            try:
                tokens = list(lex)
            except ValueError:  # not shell (a heredoc's content)
                assert not line.lstrip().startswith(("et ", "run ", "/opt/evalterm")), line
                continue
            words: list[str] = []
            for tok in [*tokens, ";"]:
                if not all(c in "();<>|&{}" for c in tok):
                    words.append(tok)
                    continue
                if words[:1] in (["et"], ["run"]) and len(words) > 1 and words[1] != "$@":
                    out.append(["-c", "/etc/evalterm/collector.toml", *words[1:]])
                elif words[:1] == ["/opt/evalterm/bin/evalterm"]:
                    out.append(words[1:])
                words = []
    # Inline ones written as commands to type: `et backup /some/new/folder`.
    for code in re.findall(r"`(et [^`]+)`", DOC):
        if "…" not in code:
            out.append(["-c", "/etc/evalterm/collector.toml", *shlex.split(code)[1:]])
    return out


def test_every_evalterm_command_in_the_docs_parses() -> None:
    commands = _doc_commands()
    assert len(commands) >= 17, commands  # the extraction found the commands
    names = {c[2] if c[0] == "-c" else c[0] for c in commands}
    assert {"pki", "broker", "backup", "restore", "influx", "device", "grafana", "config"} <= names
    parser = build_parser()
    for argv in commands:
        argv = [w.replace("…", "x") for w in argv]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/deploy.md: `evalterm {' '.join(argv)}` does not parse")


def test_the_container_files_fit_together() -> None:
    d = DEPLOY / "docker"
    compose = yaml.safe_load((d / "docker-compose.yml").read_text("utf-8"))
    services = compose["services"]
    assert set(services) == {"mosquitto", "influxdb", "collector", "grafana"}
    declared = set(compose["volumes"])
    mounts: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        mounts[name] = {}
        for v in svc.get("volumes", []):
            src, target = v.split(":")[:2]
            if src.startswith("."):
                assert (d / src).is_file(), f"{name}: {src} missing"
            else:
                assert src in declared, f"{name}: volume {src} not declared"
            mounts[name][target] = src
    docker = (d / "Dockerfile").read_text("utf-8")
    entry = re.search(r'ENTRYPOINT \[(.*)\]', docker)
    assert entry is not None
    argv = [a.strip().strip('"') for a in entry.group(1).split(",")]
    config_path = argv[argv.index("-c") + 1]
    col = mounts["collector"]
    assert col[config_path] == "./collector.toml"
    cfg = load_config(d / "collector.toml", env={})
    assert col[cfg.collector.data_dir] == "state"
    assert cfg.influx.backup_address.split(":")[0] == "influxdb"
    assert cfg.influx.url == "http://influxdb:8086"
    assert services["collector"]["network_mode"] == "service:mosquitto"
    assert cfg.mqtt.host == "127.0.0.1"
    # influxd for backups comes from the image the stack runs.
    assert f"FROM {services['influxdb']['image']} AS influxdb" in docker
    # The broker includes the folder the collector renders into, with the PKI at the same path.
    mosq = (d / "mosquitto.conf").read_text("utf-8")
    include = re.search(r"^include_dir (\S+)", mosq, re.M)
    assert include is not None
    broker_dir = include.group(1)
    assert mounts["mosquitto"][broker_dir] == col[broker_dir] == "broker"
    assert mounts["mosquitto"]["/etc/evalterm/pki"] == col["/etc/evalterm/pki"] == "pki"
    assert "1883" in docker and "--gid 1883 mosquitto" in docker  # eclipse-mosquitto's gid
    # Grafana reads what `grafana export --out /etc/evalterm/grafana` writes.
    assert mounts["grafana"]["/etc/grafana/provisioning"] == col["/etc/evalterm/grafana"]
    assert "grafana export --out /etc/evalterm/grafana" in DOC
    assert (d / "grafana.env.example").is_file() and (d / "secrets.env.example").is_file()
    # The image gets what the wheel is built from.
    ignored = (d / "Dockerfile.dockerignore").read_text("utf-8").split()
    for needed in ("collector", "firmware/etfw", "README.md", "pyproject.toml"):
        assert needed not in ignored
    assert services["collector"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (d / services["collector"]["build"]["context"] / "pyproject.toml").is_file()


@pytest.mark.skipif(not Path("/etc/influxdb/influxdb.conf").is_file()
                    or shutil.which("influxd") is None,
                    reason="needs Debian's influxdb package (its influxdb.conf and influxd)")
def test_the_documented_influxdb_edit_binds_http_locally_and_turns_ifql_off(
        tmp_path: Path) -> None:
    """The docs' sed on a copy of Debian's own influxdb.conf, read back by influxd itself."""
    m = re.search(r"```sh\n(sed -i -e '/\^\\\[http\\\]/.*?influxdb\.conf)\n", DOC, re.S)
    assert m, "docs/deploy.md: the influxdb.conf edit is gone"
    conf = tmp_path / "influxdb.conf"
    shutil.copy("/etc/influxdb/influxdb.conf", conf)
    cmd = m.group(1).replace("/etc/influxdb/influxdb.conf", str(conf))
    subprocess.run(["bash", "-c", cmd], check=True, timeout=30)
    shown = subprocess.run(["influxd", "config", "-config", str(conf)], capture_output=True,
                           text=True, timeout=30).stdout
    sections = dict(re.findall(r"^\[(\w+)\]\n((?:  .*\n)*)", shown, re.M))
    assert 'bind-address = "127.0.0.1:8086"' in sections["http"]
    assert "enabled = false" in sections["ifql"]
    assert re.search(r'^bind-address = "127\.0\.0\.1:8088"', shown, re.M)  # backups: loopback


def test_the_partition_template_unit_is_the_plain_unit_with_its_partitions() -> None:
    """deploy/evalterm-collector@.service: the plain unit's service, plus the instance name as
    [partitions] own (a number or a range: a unit name has no commas)."""
    plain, tmpl = _unit("evalterm-collector.service"), _unit("evalterm-collector@.service")
    assert tmpl["Service"]["Environment"] == "EVALTERM_PARTITIONS__OWN=%i"
    assert tmpl["Unit"]["Conflicts"] == "evalterm-collector.service"
    same = set(plain["Service"]) - {"EnvironmentFile"}
    assert {k: tmpl["Service"][k] for k in same} == {k: plain["Service"][k] for k in same}
    for own in ("0-1", "3"):
        cfg = load_config(DEPLOY / "collector.toml", env={
            "EVALTERM_MQTT__PASSWORD": "x", "EVALTERM_PARTITIONS__COUNT": "4",
            "EVALTERM_PARTITIONS__OWN": own})
        assert cfg.partitions.own == own
    assert "evalterm-collector@" in DOC


@pytest.mark.skipif(shutil.which("systemd-analyze") is None
                    or not Path("/lib/systemd/system/multi-user.target").exists(),
                    reason="needs systemd-analyze and the system's own units (systemd)")
def test_the_partition_template_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in ("evalterm-collector@.service", "evalterm-collector.service"):
        shutil.copy(DEPLOY / name, root / "etc/systemd/system" / name)
    exe = root / "opt/evalterm/bin/evalterm"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                        "evalterm-collector@0-1.service"],
                       capture_output=True, text=True, timeout=60)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "evalterm" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
