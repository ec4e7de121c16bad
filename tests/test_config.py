"""Configuration: validation with clear messages, environment overrides, secrets, docs in sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli.docgen import config_markdown
from collector.config import (
    ConfigError,
    check_data_dir,
    config_warnings,
    feed_tokens,
    load_config,
    sample_config,
)


def test_defaults_are_valid() -> None:
    cfg = load_config(None, env={})
    assert cfg.mqtt.topic_prefix == "evalterm" and cfg.linking.rating_window_s == 600
    assert cfg.unrated_default is None


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\nport = 1884\n[linking]\nunrated_default_level = "3"\n')
    cfg = load_config(f, env={"EVALTERM_MQTT__PORT": "1999", "EVALTERM_INFLUX__TOKEN": "t0k",
                              "OTHER": "x"})
    assert cfg.mqtt.port == 1999 and cfg.influx.token == "t0k" and cfg.unrated_default == 3


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[mqtt]\nport = 0\n", {}, "[mqtt] port"),
        ("[mqtt]\nport = \"x\"\n", {}, "expected int"),
        ("[mqtt]\nprot = 1\n", {}, "unknown option"),
        ("[mqtt]\nclient_id = \"\"\n", {}, "persistent session requires a fixed client id"),
        ("[influx]\nversion = 2\n", {}, "requires token, org and bucket"),
        ("[influx]\nversion = 3\n", {}, "must be one of 1, 2"),
        ("[linking]\nunrated_default_level = \"6\"\n", {}, "unrated_default_level"),
        ("[http]\nlisten = \"nowhere\"\n", {}, "expected host:port"),
        ("[mqtt]\ntopic_prefix = \"a/#\"\n", {}, "no wildcards"),
        ("", {"EVALTERM_LINKING__GRACE_S": "-1"}, "at least 0"),
        ("", {"EVALTERM_NOPE__X": "1"}, "unknown option"),
        ("[mqtt\n", {}, "not valid TOML"),
    ],
)
def test_invalid_configs_name_the_option(tmp_path: Path, text: str, env: dict[str, str],
                                         message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, env=env)
    assert message in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/c.toml", env={})


def test_secrets_redacted_and_not_in_errors() -> None:
    cfg = load_config(None, env={"EVALTERM_MQTT__PASSWORD": "hunter2",
                                 "EVALTERM_HTTP__FEED_TOKEN": ""})
    red = cfg.redacted()
    assert red["mqtt"]["password"] == "***" and red["http"]["feed_token"] == ""
    assert "hunter2" not in repr(red)


def test_sample_config_loads_and_docs_are_current(tmp_path: Path) -> None:
    f = tmp_path / "sample.toml"
    f.write_text(sample_config())
    assert load_config(f, env={})._values == load_config(None, env={})._values
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text("utf-8") == config_markdown(), "run: python -m collector.cli.docgen"


# -- every option of every section is validated, and all problems are listed at once -------------

@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("detection", "opening_hours", "garbage", "is not HH:MM-HH:MM"),
        ("detection", "opening_hours", "12:00-08:00", "is not a valid range"),
        ("detection", "opening_hours", "08:00-12:00,11:00-13:00", "ranges overlap"),
        ("detection", "utc_offset", "CST", "expected +HH:MM, got 'CST'"),
        ("detection", "business_days", "1-8", "outside 1-7"),
        ("detection", "business_days", "mon", "is not a weekday or range"),
        ("detection", "q_weak", 0.0001, "must be at least q_strong"),
        ("detection", "language", "fr", "must be one of zh, en"),
        ("mqtt", "port", 70000, "must be at most 65535"),
        ("mqtt", "host", " ", "broker's host name"),
        ("mqtt", "tls_ca_file", "/nonexistent/ca.pem", "no such file"),
        ("influx", "url", "ftp://db:8086", "must be http:// or https://"),
        ("influx", "url", "http://", "must be http:// or https:// and a host"),
        ("influx", "url", "http://db:99999", "the port must be 1-65535"),
        ("http", "listen", "127.0.0.1:99999", "expected host:port"),
        ("collector", "log_level", "LOUD", "must be one of DEBUG"),
        ("collector", "batch_max", 0, "must be at least 1"),
        ("linking", "invite_ttl_s", "soon", "expected int, got 'soon'"),
    ],
)
def test_each_option_is_validated(section: str, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}).with_overrides(**{f"{section}__{key}": value})
    assert len(err.value.problems) == 1, err.value.problems
    assert f"[{section}] {key}" in err.value.problems[0] and message in err.value.problems[0]


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[detection]\nopening_hours = "garbage"\nutc_offset = "CST"\n'
                 'business_days = "1-8"\n[mqtt]\nport = 0\nprot = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(f, env={"EVALTERM_INFLUX__URL": "nowhere"})
    found = err.value.problems
    for expected in ("opening_hours", "utc_offset", "business_days", "[mqtt] port", "prot",
                     "[influx] url"):
        assert sum(expected in p for p in found) == 1, (expected, found)
    assert len(found) == 6 and str(err.value).count("\n") == 5


def test_secret_values_are_never_shown_in_problems(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\npassword = ["hunter2"]\nkeepalive_s = "hunter3"\n')
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert len(err.value.problems) == 2 and "[mqtt] password" in str(err.value)
    assert "hunter2" not in str(err.value) and "hunter3" in str(err.value)  # only secrets hidden


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"mqtt__username": "collector"}, "[mqtt] username is set but password is empty"),
        ({"mqtt__password": "pw"}, "[mqtt] password is set but username is empty"),
        ({"influx__username": "u"}, "[influx] username is set but password is empty"),
        ({"mqtt__username": "collector", "mqtt__password": "pw"}, None),
        ({"http__feed_token": "x" * 20}, "[http] feed_token is valid for every hall"),
        ({"http__feed_tokens": "h1=" + "x" * 20, "http__listen": "0.0.0.0:8480"},
         "serves the webhook in plain HTTP beyond this host"),
        ({"http__feed_tokens": "h1=" + "x" * 20}, None),  # on loopback
    ],
)
def test_warnings(overrides: dict[str, str], warned: str | None) -> None:
    got = config_warnings(load_config(None, env={}).with_overrides(**overrides))
    if warned is None:
        assert got == []
    else:
        assert len(got) == 1 and warned in got[0]


def test_data_dir_must_be_usable(tmp_path: Path) -> None:
    ok = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "d"))
    assert check_data_dir(ok) == [] and (tmp_path / "d").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = ok.with_overrides(collector__data_dir=str(blocker / "d"))
    problems = check_data_dir(bad)
    assert len(problems) == 1 and "[collector] data_dir" in problems[0]


def test_config_check_command_lists_every_problem_and_fails(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[detection]\nopening_hours = "garbage"\nutc_offset = "CST"\n'
                 f'[collector]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALTERM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-m", "collector.cli", "-c", str(f), "config", "check"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(x.startswith("evalterm: error: [detection] ") for x in lines)
    f.write_text(f'[mqtt]\nusername = "c"\n[collector]\ndata_dir = "{tmp_path / "data"}"\n')
    r = subprocess.run([sys.executable, "-m", "collector.cli", "-c", str(f), "config", "check"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr
    assert "warning: [mqtt] username is set but password is empty" in r.stderr
def test_the_collectors_client_id_is_its_broker_user_name() -> None:
    # The rendered broker replaces every client id by the user name (docs/security.md): the
    # collector's persistent session is under its user name, so the config says so.
    cfg = load_config(None, env={"EVALTERM_MQTT__USERNAME": "evalterm-collector2"})
    assert cfg.mqtt.client_id == "evalterm-collector2"
    assert cfg.with_overrides(mqtt__port=1884).mqtt.client_id == "evalterm-collector2"
    same = {"EVALTERM_MQTT__USERNAME": "c1", "EVALTERM_MQTT__CLIENT_ID": "c1"}
    assert load_config(None, env=same).mqtt.client_id == "c1"
    with pytest.raises(ConfigError, match="differs from \\[mqtt\\] username"):
        load_config(None, env={"EVALTERM_MQTT__USERNAME": "c1", "EVALTERM_MQTT__CLIENT_ID": "x"})
    assert load_config(None, env={}).mqtt.client_id == "evalterm-collector"  # anonymous


_TOKEN_A = "token-of-hall-a-0123456789"
_TOKEN_B = "token-of-halls-b-c-987654321"


def test_the_token_scope_is_validated_without_showing_a_token() -> None:
    base = load_config(None, env={})
    cases = [
        ("h1", "expected HALL[,HALL...]=TOKEN"),
        (f"h.1={_TOKEN_A}", "is not a hall id"),
        ("h1=short", "at least 16 characters"),
        (f"*,h1={_TOKEN_A}", "cannot be listed with other halls"),
        (f"h1={_TOKEN_A};h2={_TOKEN_A}", "a token is given twice"),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError) as err:
            base.with_overrides(http__feed_tokens=value)
        assert message in str(err.value), (value, err.value.problems)
        assert _TOKEN_A not in str(err.value) and "short" not in str(err.value)
    with pytest.raises(ConfigError, match="set both"):
        base.with_overrides(http__tls_certfile="/etc/hostname")
    cfg = base.with_overrides(http__feed_tokens=f" h1 , h2 = {_TOKEN_A} ;; *={_TOKEN_B};")
    scopes = {t.token: t.halls for t in feed_tokens(cfg.http)}
    assert scopes == {_TOKEN_A: frozenset({"h1", "h2"}), _TOKEN_B: None}
