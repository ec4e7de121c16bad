"""Configuration: validation with clear messages, environment overrides, secrets, docs in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli.docgen import config_markdown
from collector.config import ConfigError, load_config, sample_config


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
