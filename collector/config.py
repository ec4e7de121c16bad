"""Collector configuration: a TOML file, then EVALTERM_<SECTION>__<KEY> environment overrides.

Every option, its type, default and meaning is declared once in `OPTIONS`; `docs/config.md` and
`evalterm config check` are derived from it. Validation happens up front so a bad config stops the
service at start-up with a message naming the option, never later in the middle of the night.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.errors import EvaltermError

__all__ = ["OPTIONS", "Config", "ConfigError", "Option", "load_config"]


class ConfigError(EvaltermError, ValueError):
    """A configuration problem; the message names the option and what is wrong."""


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    type: type
    default: Any
    help: str
    secret: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


def _o(section: str, key: str, typ: type, default: Any, help: str, **kw: Any) -> Option:
    return Option(section, key, typ, default, help, **kw)


OPTIONS: tuple[Option, ...] = (
    _o("collector", "data_dir", str, "./run/data", "Folder of the state database (state.db)."),
    _o("collector", "log_level", str, "INFO", "Logging level.",
       choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    _o("collector", "max_db_mb", int, 2048,
       "Largest size of the state database. When the outbox has filled it (InfluxDB away for very "
       "long), the collector stops acknowledging messages, so the broker keeps them, until it "
       "drains; nothing is dropped. 0: no limit.", minimum=0),
    _o("collector", "batch_max", int, 500, "Most inbound messages committed in one transaction.",
       minimum=1, maximum=10000),
    _o("mqtt", "host", str, "127.0.0.1", "Broker host."),
    _o("mqtt", "port", int, 1883, "Broker port.", minimum=1, maximum=65535),
    _o("mqtt", "client_id", str, "evalterm-collector",
       "Fixed client id; the persistent session belongs to it. With a username it is the "
       "username (the rendered broker binds client ids to user names); another value is "
       "refused."),
    _o("mqtt", "username", str, "", "Broker user of the collector (empty: anonymous)."),
    _o("mqtt", "password", str, "", "Broker password of the collector.", secret=True),
    _o("mqtt", "topic_prefix", str, "evalterm", "Topic prefix (docs/protocol.md §2)."),
    _o("mqtt", "keepalive_s", int, 30, "MQTT keep-alive.", minimum=5, maximum=3600),
    _o("mqtt", "session_expiry_s", int, 7 * 86400,
       "How long the broker keeps the collector's session and queued messages while it is away.",
       minimum=60),
    _o("mqtt", "receive_maximum", int, 1000,
       "Unacknowledged QoS 1 messages the broker may have in flight to the collector.",
       minimum=1, maximum=65535),
    _o("mqtt", "tls_ca_file", str, "", "CA file; set to connect with TLS."),
    _o("influx", "version", int, 1, "1 for InfluxDB 1.x (/write), 2 for 2.x/3.x (token, org, bucket).",
       choices=(1, 2)),
    _o("influx", "url", str, "http://127.0.0.1:8086", "InfluxDB base URL."),
    _o("influx", "database", str, "evalterm", "1.x: database (created if missing)."),
    _o("influx", "username", str, "", "1.x: user (empty: no authentication)."),
    _o("influx", "password", str, "", "1.x: password.", secret=True),
    _o("influx", "token", str, "", "2.x/3.x: API token.", secret=True),
    _o("influx", "org", str, "", "2.x/3.x: organisation."),
    _o("influx", "bucket", str, "evalterm", "2.x/3.x: bucket."),
    _o("influx", "batch_size", int, 5000, "Most points in one write.", minimum=1, maximum=50000),
    _o("influx", "flush_interval_ms", int, 200, "Wait this long for more points before writing.",
       minimum=0, maximum=60000),
    _o("influx", "timeout_s", float, 10.0, "HTTP timeout of one write.", minimum=0.5),
    _o("influx", "retry_max_s", float, 30.0, "Longest back-off between failed writes.", minimum=0.1),
    _o("linking", "rating_window_s", int, 600,
       "A rating counts for a transaction pressed at most this long after its completion.",
       minimum=10, maximum=7 * 86400),
    _o("linking", "grace_s", int, 30,
       "A rating whose transaction is not yet known is held this long before it is judged.",
       minimum=0, maximum=3600),
    _o("linking", "invite_ttl_s", int, 120, "How long a device shows an invitation.",
       minimum=5, maximum=3600),
    _o("linking", "unrated_default_level", str, "none",
       "Level given to a transaction whose rating window expired: none, or 1..5 (local policy).",
       choices=("none", "1", "2", "3", "4", "5")),
    _o("linking", "max_clock_skew_s", int, 300,
       "Device time more than this ahead of the collector is not trusted.", minimum=0),
    _o("linking", "max_delivery_delay_s", int, 7 * 86400,
       "Device time more than this behind the collector is not trusted (outbox after an outage).",
       minimum=0),
    _o("http", "listen", str, "127.0.0.1:8480",
       "host:port of /healthz, /metrics and the feed webhook; empty disables it."),
    _o("http", "feed_token", str, "", "Bearer token the business system sends to the webhook "
       "(required for the webhook; empty disables the webhook).", secret=True),
    # Integrity detection (docs/detection.md explains each statistic and threshold).
    _o("detection", "enabled", bool, True, "Run the integrity detector in the collector service."),
    _o("detection", "interval_s", int, 300, "How often the service recomputes today's indicators.",
       minimum=1, maximum=86400),
    _o("detection", "opening_hours", str, "08:30-12:00,13:30-17:30",
       "Local opening hours of the hall: comma-separated HH:MM-HH:MM ranges."),
    _o("detection", "business_days", str, "1-5",
       "ISO weekdays the hall is open (1 = Monday), e.g. 1-5 or 1-6 or 1,2,3,4,5."),
    _o("detection", "utc_offset", str, "+08:00", "Local time of the hall as an offset from UTC."),
    _o("detection", "lookback_days", int, 5,
       "Statistical indicators pool the last N business days (today included).",
       minimum=1, maximum=60),
    _o("detection", "history_days", int, 20,
       "Days of the window's own history used as its baseline (missing negatives).",
       minimum=0, maximum=365),
    _o("detection", "min_ratings", int, 20,
       "Statistical indicators need at least this many ratings in the period.", minimum=1),
    _o("detection", "q_strong", float, 0.001,
       "Benjamini-Hochberg q below which an indicator is strong evidence.", minimum=1e-9,
       maximum=0.5),
    _o("detection", "q_weak", float, 0.05,
       "q below which an indicator is reported as a weak signal (never flags).", minimum=1e-9,
       maximum=0.5),
    _o("detection", "combine_min_count", int, 2,
       "Least observations (too-fast ratings, presses outside an invitation, unmatched "
       "ratings, ...) a weak signal must rest on to join the combination of weak signals of "
       "independent kinds: the p-value of a single event is only the assumed base rate.",
       minimum=1),
    _o("detection", "rate_floor", float, 0.005,
       "Least per-rating rate assumed for rare honest events (unmatched, fast, out of service, "
       "uninvited), so a spotless hall does not make one accident look significant.",
       minimum=0.0, maximum=0.5),
    _o("detection", "prior_strength_max", float, 100.0,
       "Empirical-Bayes priors from peers count as at most this many ratings.", minimum=1.0),
    _o("detection", "unmatched_min", int, 3,
       "Least unmatched (or excess) ratings in a day for strong evidence.", minimum=1),
    _o("detection", "out_of_service_min", int, 2,
       "Least ratings while paused/signed off/closed in a day for strong evidence.", minimum=1),
    _o("detection", "uninvited_min", int, 5,
       "Least key presses outside an invitation in a day for strong evidence.", minimum=1),
    _o("detection", "counter_tolerance", int, 2,
       "Key presses that may go unexplained in a period (a press and its rating on either side "
       "of a heartbeat).", minimum=0),
    _o("detection", "negative_key_tolerance", int, 1,
       "Key presses, one of them on a 差评 key (1-2), that may go unexplained between two "
       "heartbeats with a restart of the device between them (or messages still in its outbox "
       "at the later one), once a 差评 awaiting its reason and the losses the device reports are "
       "accounted for; more is strong evidence of suppressed 差评. Between two heartbeats of one "
       "boot the accounting is exact: one such press is.", minimum=0),
    _o("detection", "min_human_rt_ms", int, 800,
       "An invited rating faster than this after the invitation is too fast for a citizen.",
       minimum=0),
    _o("detection", "fast_min", int, 3, "Least too-fast ratings in a day for strong evidence.",
       minimum=1),
    _o("detection", "regular_bin_ms", int, 250,
       "Width of the response-time band scanned for machine-like regularity.", minimum=10),
    _o("detection", "regular_min", int, 6,
       "Least ratings in one such band for strong evidence.", minimum=2),
    _o("detection", "shift_min", int, 5,
       "Least ratings faster than the window's own past fastest share (response_shift) for "
       "strong evidence.", minimum=1),
    _o("detection", "burst_window_s", int, 60, "Length of the window that defines a burst.",
       minimum=1),
    _o("detection", "burst_min", int, 5, "Least ratings within burst_window_s that make a burst.",
       minimum=2),
    _o("detection", "offline_gap_s", int, 600,
       "A gap in heartbeats longer than this counts as offline (set >= 3 x device heartbeat_s).",
       minimum=30),
    _o("detection", "offline_excess_min", int, 30,
       "Minutes offline per opening day beyond the hall median for strong evidence.",
       minimum=1),
    _o("detection", "offline_min_episodes", int, 2,
       "Separate offline episodes, each ending with the device restarted (unplugged), needed "
       "for strong evidence (one long outage is a fault; a network outage leaves the device "
       "running).",
       minimum=1),
    _o("detection", "coverage_gap", float, 0.15,
       "Selective invitation: coverage at least this far below the peer coverage.",
       minimum=0.0, maximum=1.0),
    _o("detection", "language", str, "zh", "Language of the primary reason text.",
       choices=("zh", "en")),
)

_BY_NAME = {(o.section, o.key): o for o in OPTIONS}
SECRET_KEYS = frozenset(f"{o.section}.{o.key}" for o in OPTIONS if o.secret)


class Config:
    """Validated options, read as `cfg.section.key` (e.g. `cfg.mqtt.port`)."""

    def __init__(self, values: Mapping[tuple[str, str], Any], source: str) -> None:
        self._values = dict(values)
        self.source = source
        for section in {s for s, _ in values}:
            ns = type(section, (), {})()
            for (s, k), v in values.items():
                if s == section:
                    setattr(ns, k, v)
            setattr(self, section, ns)

    def get(self, section: str, key: str) -> Any:
        return self._values[(section, key)]

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with `section__key=value` overrides (validated like the file)."""
        raw: dict[str, dict[str, Any]] = {}
        for (s, k), v in self._values.items():
            raw.setdefault(s, {})[k] = v
        for name, v in overrides.items():
            s, k = name.split("__", 1)
            raw.setdefault(s, {})[k] = v
        return _build(raw, {}, self.source)

    def redacted(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (s, k), v in self._values.items():
            shown = ("***" if v else "") if f"{s}.{k}" in SECRET_KEYS else v
            out.setdefault(s, {})[k] = shown
        return out

    def to_toml(self) -> str:
        """The effective values as a TOML file (secrets included: write it with care)."""
        lines: list[str] = []
        section = None
        for (s, k), v in self._values.items():
            if s != section:
                section = s
                lines.append(f"\n[{s}]")
            if isinstance(v, bool):
                shown = str(v).lower()
            elif isinstance(v, int | float):
                shown = repr(v)
            else:
                shown = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{k} = {shown}")
        return "\n".join(lines).lstrip() + "\n"

    @property
    def state_db(self) -> Path:
        return Path(self.collector.data_dir) / "state.db"

    @property
    def unrated_default(self) -> int | None:
        v = self.linking.unrated_default_level
        return None if v == "none" else int(v)


def _coerce(opt: Option, value: Any, where: str) -> Any:
    name = f"[{opt.section}] {opt.key}"
    try:
        if opt.type is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif opt.type is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            value = int(value)
        elif opt.type is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif opt.type is str:
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise ValueError
    except (ValueError, TypeError):
        raise ConfigError(
            f"{name} ({where}): expected {opt.type.__name__}, got {value!r}"
            if not opt.secret else f"{name} ({where}): expected {opt.type.__name__}"
        ) from None
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{name} ({where}): must be one of {', '.join(map(str, opt.choices))}")
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{name} ({where}): must be at least {opt.minimum}, got {value}")
    if opt.maximum is not None and value > opt.maximum:
        raise ConfigError(f"{name} ({where}): must be at most {opt.maximum}, got {value}")
    return value


def _build(file_values: Mapping[str, Any], env: Mapping[str, str], source: str) -> Config:
    values: dict[tuple[str, str], Any] = {(o.section, o.key): o.default for o in OPTIONS}
    for section, table in file_values.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] ({source}): expected a table")
        for key, v in table.items():
            opt = _BY_NAME.get((section, key))
            if opt is None:
                raise ConfigError(f"[{section}] {key} ({source}): unknown option")
            values[(section, key)] = _coerce(opt, v, source)
    for name, v in env.items():
        if not name.startswith("EVALTERM_") or "__" not in name:
            continue
        section, key = name[len("EVALTERM_"):].lower().split("__", 1)
        opt = _BY_NAME.get((section, key))
        if opt is None:
            raise ConfigError(f"{name}: unknown option [{section}] {key}")
        values[(section, key)] = _coerce(opt, v, f"environment {name}")
    _bind_client_id(values)
    cfg = Config(values, source)
    _cross_check(cfg)
    return cfg


def _bind_client_id(values: dict[tuple[str, str], Any]) -> None:
    """The broker binds every client id to its user name (`use_username_as_clientid`, so that
    nobody can take over the collector's session with other credentials): with a user name, the
    collector's client id, and so its persistent session, is that name."""
    user, cid = values[("mqtt", "username")], values[("mqtt", "client_id")]
    if not user or cid == user:
        return
    if cid == _BY_NAME[("mqtt", "client_id")].default:
        values[("mqtt", "client_id")] = user
        return
    raise ConfigError(f"[mqtt] client_id {cid!r} differs from [mqtt] username {user!r}: the "
                      "broker uses the user name as the client id (docs/security.md); remove "
                      "client_id or set it to the user name")


def _cross_check(cfg: Config) -> None:
    if not cfg.mqtt.client_id:
        raise ConfigError("[mqtt] client_id: a persistent session requires a fixed client id")
    if cfg.influx.version == 2 and not (cfg.influx.token and cfg.influx.org and cfg.influx.bucket):
        raise ConfigError("[influx] version = 2 requires token, org and bucket")
    if not cfg.influx.url.startswith(("http://", "https://")):
        raise ConfigError("[influx] url: must start with http:// or https://")
    if cfg.http.listen:
        host, sep, port = cfg.http.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"[http] listen: expected host:port, got {cfg.http.listen!r}")
    prefix = cfg.mqtt.topic_prefix
    if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("[mqtt] topic_prefix: no wildcards, no leading or trailing '/'")


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None: defaults only) and the environment, validate, return a Config."""
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        try:
            file_values = tomllib.loads(p.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
        source = str(p)
    return _build(file_values, env, source)


def sample_config() -> str:
    """A commented TOML file with every option at its default (docs and `config sample`)."""
    lines = ["# evalterm collector configuration. Every option is shown with its default.",
             "# Environment variables EVALTERM_<SECTION>__<KEY> override the file."]
    section = None
    for o in OPTIONS:
        if o.section != section:
            section = o.section
            lines += ["", f"[{section}]"]
        default = o.default
        shown = (f'"{default}"' if isinstance(default, str) else str(default).lower()
                 if isinstance(default, bool) else str(default))
        lines.append(f"# {o.help}{' (secret)' if o.secret else ''}")
        lines.append(f"# {o.key} = {shown}")
    return "\n".join(lines) + "\n"
