"""Collector configuration: a TOML file, then EVALTERM_<SECTION>__<KEY> environment overrides.

Every option is declared once, as a field of its section's dataclass below (type, default, help,
limits); `OPTIONS`, `docs/config.md`, `sample_config()` and `evalterm config check` are derived
from those fields, and a type checker follows `cfg.section.key` like any attribute. Validation
happens up front and reports every problem at once (`ConfigError.problems`), so a bad config stops
the service at start-up with a message naming each option, never later in the middle of the night.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any, get_type_hints

from collector.errors import EvaltermError
from collector.partition import parse_own

__all__ = [
    "OPTIONS",
    "SECTIONS",
    "CollectorConfig",
    "Config",
    "ConfigError",
    "DetectionConfig",
    "FeedToken",
    "HttpConfig",
    "InfluxConfig",
    "LinkingConfig",
    "ManagerConfig",
    "MqttConfig",
    "Option",
    "PartitionsConfig",
    "StateConfig",
    "check_data_dir",
    "config_warnings",
    "feed_tokens",
    "load_config",
    "parse_config",
    "parse_days_per_hall",
    "sample_config",
    "state_url_problem",
    "target_names",
]


class ConfigError(EvaltermError, ValueError):
    """One or more configuration problems; each names the option, the value and what is expected.

    `problems` lists them all (one line each); `str(exc)` joins them with newlines."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


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


def _opt(default: Any, *, help: str, secret: bool = False, choices: tuple[Any, ...] | None = None,
         minimum: float | None = None, maximum: float | None = None) -> Any:
    """A section field: its default, and what `Option` says about it (kept in the metadata)."""
    return field(default=default, metadata={"help": help, "secret": secret, "choices": choices,
                                            "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class CollectorConfig:
    """The [collector] section."""

    data_dir: str = _opt("./run/data",
        help="Folder of the state database (state.db).")
    log_level: str = _opt("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="Logging level.")
    max_db_mb: int = _opt(2048, minimum=0,
        help="Largest size of the state database. When the outbox has filled it (InfluxDB away for"
             " very long), the collector stops acknowledging messages, so the broker keeps them, "
             "until it drains; nothing is dropped. 0: no limit.")
    batch_max: int = _opt(500, minimum=1, maximum=10000,
        help="Most inbound messages committed in one transaction.")


@dataclass(frozen=True)
class MqttConfig:
    """The [mqtt] section."""

    host: str = _opt("127.0.0.1",
        help="Broker host.")
    port: int = _opt(1883, minimum=1, maximum=65535,
        help="Broker port.")
    client_id: str = _opt("evalterm-collector",
        help="Fixed client id; the persistent session belongs to it. With a username it is the "
             "username (the rendered broker binds client ids to user names); another value is "
             "refused.")
    username: str = _opt("",
        help="Broker user of the collector (empty: anonymous).")
    password: str = _opt("", secret=True,
        help="Broker password of the collector.")
    topic_prefix: str = _opt("evalterm",
        help="Topic prefix (docs/protocol.md §2).")
    keepalive_s: int = _opt(30, minimum=5, maximum=3600,
        help="MQTT keep-alive.")
    session_expiry_s: int = _opt(7 * 86400, minimum=60,
        help="How long the broker keeps the collector's session and queued messages while it is "
             "away.")
    receive_maximum: int = _opt(1000, minimum=1, maximum=65535,
        help="Unacknowledged QoS 1 messages the broker may have in flight to the collector.")
    tls_ca_file: str = _opt("",
        help="CA file; set to connect with TLS.")


@dataclass(frozen=True)
class InfluxConfig:
    """The [influx] section."""

    targets: str = _opt("main",
        help="Names of the InfluxDB servers fed the same points, comma-separated (lower-case "
             "letters, digits, single _). The first is the server this section describes (queries,"
             " dashboards, backups use it); each further NAME is an [influx.NAME] table with any "
             "of this section's keys, the rest taken from here (EVALTERM_INFLUX__NAME__KEY "
             "overrides). Each has its own drainer and progress; the outbox keeps a point until "
             "every target has it (docs/storage.md).")
    version: int = _opt(1, choices=(1, 2),
        help="1 for InfluxDB 1.x (/write), 2 for 2.x/3.x (token, org, bucket).")
    url: str = _opt("http://127.0.0.1:8086",
        help="InfluxDB base URL.")
    database: str = _opt("evalterm",
        help="1.x: database (created if missing).")
    username: str = _opt("",
        help="1.x: user (empty: no authentication).")
    password: str = _opt("", secret=True,
        help="1.x: password.")
    token: str = _opt("", secret=True,
        help="2.x/3.x: API token.")
    org: str = _opt("",
        help="2.x/3.x: organisation.")
    bucket: str = _opt("evalterm",
        help="2.x/3.x: bucket.")
    batch_size: int = _opt(5000, minimum=1, maximum=50000,
        help="Most points in one write.")
    flush_interval_ms: int = _opt(50, minimum=0, maximum=60000,
        help="Wait this long for more points before writing.")
    timeout_s: float = _opt(10.0, minimum=0.5,
        help="HTTP timeout of one write.")
    retry_max_s: float = _opt(30.0, minimum=0.1,
        help="Longest back-off between failed writes.")
    retention_days: int = _opt(1830, minimum=0, maximum=36600,
        help="1.x: days InfluxDB keeps every point (the database's default retention policy); 0 "
             "keeps them forever. The default, five years, covers the assessment year, the "
             "previous year for the annual assessment, and three more for appeals, disciplinary "
             "inquiries and year-on-year comparison (docs/deploy.md, \"Retention\").")
    rollup_days: int = _opt(0, minimum=0, maximum=36600,
        help="1.x: days InfluxDB keeps the hourly rollups (retention policy \"rollup\": counts "
             "of ratings, 差评 and transactions per window, staff and service); 0 keeps them "
             "forever.")
    rollup_every_s: int = _opt(600, minimum=1, maximum=3600,
        help="1.x: how often InfluxDB's continuous queries recompute the hourly rollups of the "
             "last two hours (`evalterm influx rollup` recomputes older days, for late ratings).")
    manage_retention: bool = _opt(True,
        help="1.x: set the retention policies and continuous queries when the drainer creates or "
             "first writes the database (false: the database administrator manages them; "
             "`evalterm influx setup` applies them by hand).")
    backup_address: str = _opt("127.0.0.1:8088",
        help="1.x: host:port of InfluxDB's backup and restore service (`bind-address` at the top "
             "of influxdb.conf), used by `evalterm backup` and `evalterm restore`.")


@dataclass(frozen=True)
class LinkingConfig:
    """The [linking] section."""

    rating_window_s: int = _opt(600, minimum=10, maximum=7 * 86400,
        help="A rating counts for a transaction pressed at most this long after its completion.")
    grace_s: int = _opt(30, minimum=0, maximum=3600,
        help="A rating whose transaction is not yet known is held this long before it is judged.")
    invite_ttl_s: int = _opt(120, minimum=5, maximum=3600,
        help="How long a device shows an invitation.")
    unrated_default_level: str = _opt("none", choices=("none", "1", "2", "3", "4", "5"),
        help="Level given to a transaction whose rating window expired: none, or 1..5 (local "
             "policy).")
    max_clock_skew_s: int = _opt(300, minimum=0,
        help="Device time more than this ahead of the collector is not trusted.")
    max_delivery_delay_s: int = _opt(7 * 86400, minimum=0,
        help="Device time more than this behind the collector is not trusted (outbox after an "
             "outage).")


@dataclass(frozen=True)
class HttpConfig:
    """The [http] section."""

    listen: str = _opt("127.0.0.1:8480",
        help="host:port of /healthz, /metrics and the feed webhook; empty disables it.")
    feed_token: str = _opt("", secret=True,
        help="A bearer token of the webhook valid for EVERY hall (what older versions had; "
             "`config check` warns): prefer feed_tokens, which scopes each token to its halls.")
    feed_tokens: str = _opt("", secret=True,
        help="Webhook bearer tokens, each scoped to the halls its business system serves: "
             "'HALL[,HALL...]=TOKEN' entries separated by ';', e.g. 'hall01,hall02=T1;hall03=T2' "
             "(a token of at least 16 characters, no spaces; '*' for every hall). A token posting"
             " another hall's feed is refused (403). No token at all: the webhook refuses every "
             "request (401).")
    tls_certfile: str = _opt("",
        help="Serve HTTPS with this certificate chain (PEM), e.g. server.crt of `evalterm pki "
             "issue server`; plain HTTP is then refused on the port. Empty: plain HTTP (keep it on"
             " loopback, or put a TLS reverse proxy in front: docs/deploy.md).")
    tls_keyfile: str = _opt("",
        help="The private key of tls_certfile (PEM, readable by the collector's user only).")
    header_timeout_s: float = _opt(10.0, minimum=0.1, maximum=300,
        help="A connection must send a request's complete headers within this long (from the "
             "connection, or from the first byte of a next request on it), or it is closed.")
    body_timeout_s: float = _opt(10.0, minimum=0.1, maximum=300,
        help="A webhook request must send its whole body within this long after its headers, or "
             "it is answered 408 and closed.")
    keepalive_s: int = _opt(5, minimum=1, maximum=300,
        help="An idle keep-alive connection is closed after this long.")
    max_connections: int = _opt(100, minimum=1, maximum=10000,
        help="Open connections served at once; a request on a connection beyond them is answered "
             "503.")
    max_feed_requests: int = _opt(64, minimum=1, maximum=1000,
        help="Webhook requests in progress at once (reading the body or waiting for the commit); "
             "one more is answered 503 {\"error\": \"busy\"} with Retry-After.")
    backlog: int = _opt(1024, minimum=1, maximum=65535,
        help="Listen backlog: connections the kernel queues before the server accepts them, for "
             "bursts (Linux caps it at net.core.somaxconn).")


@dataclass(frozen=True)
class DetectionConfig:
    """The [detection] section: integrity detection (docs/detection.md explains each statistic
    and threshold)."""

    enabled: bool = _opt(True,
        help="Run the integrity detector in the collector service.")
    interval_s: int = _opt(300, minimum=1, maximum=86400,
        help="How often the service recomputes today's indicators.")
    opening_hours: str = _opt("08:30-12:00,13:30-17:30",
        help="Local opening hours of the hall: comma-separated HH:MM-HH:MM ranges.")
    business_days: str = _opt("1-5",
        help="ISO weekdays the hall is open (1 = Monday), e.g. 1-5 or 1-6 or 1,2,3,4,5.")
    utc_offset: str = _opt("+08:00",
        help="Local time of the hall as an offset from UTC.")
    lookback_days: int = _opt(5, minimum=1, maximum=60,
        help="Statistical indicators pool the last N business days (today included).")
    history_days: int = _opt(20, minimum=0, maximum=365,
        help="Days of the window's own history used as its baseline (missing negatives).")
    min_ratings: int = _opt(20, minimum=1,
        help="Statistical indicators need at least this many ratings in the period.")
    q_strong: float = _opt(0.001, minimum=1e-9, maximum=0.5,
        help="Benjamini-Hochberg q below which an indicator is strong evidence.")
    q_weak: float = _opt(0.05, minimum=1e-9, maximum=0.5,
        help="q below which an indicator is reported as a weak signal (never flags).")
    combine_min_count: int = _opt(2, minimum=1,
        help="Least observations (too-fast ratings, presses outside an invitation, unmatched "
             "ratings, ...) a weak signal must rest on to join the combination of weak signals of "
             "independent kinds: the p-value of a single event is only the assumed base rate.")
    rate_floor: float = _opt(0.005, minimum=0.0, maximum=0.5,
        help="Least per-rating rate assumed for rare honest events (unmatched, fast, out of "
             "service, uninvited), so a spotless hall does not make one accident look significant.")
    prior_strength_max: float = _opt(100.0, minimum=1.0,
        help="Empirical-Bayes priors from peers count as at most this many ratings.")
    unmatched_min: int = _opt(3, minimum=1,
        help="Least unmatched (or excess) ratings in a day for strong evidence.")
    out_of_service_min: int = _opt(2, minimum=1,
        help="Least ratings while paused/signed off/closed in a day for strong evidence.")
    uninvited_min: int = _opt(5, minimum=1,
        help="Least key presses outside an invitation in a day for strong evidence.")
    counter_tolerance: int = _opt(2, minimum=0,
        help="Key presses that may go unexplained in a period (a press and its rating on either "
             "side of a heartbeat).")
    negative_key_tolerance: int = _opt(1, minimum=0,
        help="Key presses, one of them on a 差评 key (1-2), that may go unexplained between two "
             "heartbeats with a restart of the device between them (or messages still in its "
             "outbox at the later one), once a 差评 awaiting its reason and the losses the device "
             "reports are accounted for; more is strong evidence of suppressed 差评. Between two "
             "heartbeats of one boot the accounting is exact: one such press is.")
    min_human_rt_ms: int = _opt(800, minimum=0,
        help="An invited rating faster than this after the invitation is too fast for a citizen.")
    fast_min: int = _opt(3, minimum=1,
        help="Least too-fast ratings in a day for strong evidence.")
    regular_bin_ms: int = _opt(250, minimum=10,
        help="Width of the response-time band scanned for machine-like regularity.")
    regular_min: int = _opt(6, minimum=2,
        help="Least ratings in one such band for strong evidence.")
    shift_min: int = _opt(5, minimum=1,
        help="Least ratings faster than the window's own past fastest share (response_shift) for "
             "strong evidence.")
    burst_window_s: int = _opt(60, minimum=1,
        help="Length of the window that defines a burst.")
    burst_min: int = _opt(5, minimum=2,
        help="Least ratings within burst_window_s that make a burst.")
    offline_gap_s: int = _opt(600, minimum=30,
        help="A gap in heartbeats longer than this counts as offline (set >= 3 x device "
             "heartbeat_s).")
    offline_excess_min: int = _opt(30, minimum=1,
        help="Minutes offline per opening day beyond the hall median for strong evidence.")
    offline_min_episodes: int = _opt(2, minimum=1,
        help="Separate offline episodes, each ending with the device restarted (unplugged), needed"
             " for strong evidence (one long outage is a fault; a network outage leaves the device"
             " running).")
    coverage_gap: float = _opt(0.15, minimum=0.0, maximum=1.0,
        help="Selective invitation: coverage at least this far below the peer coverage.")
    language: str = _opt("zh", choices=("zh", "en"),
        help="Language of the primary reason text.")


@dataclass(frozen=True)
class ManagerConfig:
    """The [manager] section: 差评 follow-up cases and the monthly report (docs/manager.md)."""

    enabled: bool = _opt(True,
        help="Open a follow-up case for every 差评 in the collector service, and write the "
             "follow-up figures and the directory's names to InfluxDB.")
    interval_s: int = _opt(60, minimum=1, maximum=86400,
        help="How often the service opens cases and rewrites the follow-up figures.")
    followup_days: int = _opt(5, minimum=1, maximum=60,
        help="Working days a 差评's case has until its deadline (local rule, usually 1-15).")
    followup_days_per_hall: str = _opt("",
        help="Per-hall overrides of followup_days: comma-separated hall=days, e.g. h1=3,h2=10.")
    holidays_file: str = _opt("",
        help="Holiday calendar for the deadlines: CSV lines YYYY-MM-DD,off or YYYY-MM-DD,work "
             "(法定节假日 and 调休 make-up working days); empty: Monday-Friday.")
    monthly_report_dir: str = _opt("",
        help="Folder where the service writes last month's report (PDF and XLSX) of each hall "
             "once the month has ended in the hall's time ([detection] utc_offset); empty: off.")


@dataclass(frozen=True)
class StateConfig:
    """The [state] section: where the state database is (docs/storage.md)."""

    url: str = _opt("",
        help="Empty: the embedded SQLite database in [collector] data_dir (state.db). Else a "
             "PostgreSQL URL, e.g. postgresql://evalterm@db1:5432,db2:5432/evalterm?"
             "target_session_attrs=read-write (several hosts: the writable one is used). No "
             "password in it: libpq takes it from PGPASSWORD or the PGPASSFILE file.")


@dataclass(frozen=True)
class PartitionsConfig:
    """The [partitions] section: hall partitions served by several collector processes
    (docs/scale.md, "Hall partitions")."""

    count: int = _opt(1, minimum=1, maximum=4096,
        help="Fixed number of partitions P; a hall's partition is crc32(hall) mod P. 1: one "
             "process serves every hall, as without this section. Every process of a deployment "
             "has the same count; changing it moves halls between partitions (stop them all).")
    own: str = _opt("",
        help="The partitions this process prefers, e.g. \"0,1\" or \"2-3\"; empty: all. It "
             "serves one only while it holds the partition's lock in the state database, "
             "waiting for the lock if a peer has it.")
    takeover: bool = _opt(True,
        help="Also serve the other partitions whose lock is free (a peer died), until this "
             "process stops.")
    takeover_delay_s: float = _opt(5.0, minimum=0, maximum=3600,
        help="After start-up and after reconnecting to the state database, how long to leave "
             "the other partitions to their preferring process before taking them over.")
    lock_interval_s: float = _opt(1.0, minimum=0.1, maximum=60,
        help="How often the locks are checked and free ones tried: a dead peer's partitions "
             "are taken over within about this long after its database session ends.")


# The sections in file order: (name in the file and in `cfg.<name>`, dataclass).
SECTIONS: tuple[tuple[str, type], ...] = (
    ("collector", CollectorConfig),
    ("mqtt", MqttConfig),
    ("influx", InfluxConfig),
    ("linking", LinkingConfig),
    ("http", HttpConfig),
    ("detection", DetectionConfig),
    ("manager", ManagerConfig),
    ("state", StateConfig),
    ("partitions", PartitionsConfig),
)


def _options() -> tuple[Option, ...]:
    out: list[Option] = []
    for section, cls in SECTIONS:
        hints = get_type_hints(cls)
        for f in fields(cls):
            assert f.default is not MISSING, f"{cls.__name__}.{f.name} needs a default"
            m = f.metadata
            out.append(Option(section, f.name, hints[f.name], f.default, m["help"], m["secret"],
                              m["choices"], m["minimum"], m["maximum"]))
    return tuple(out)


OPTIONS: tuple[Option, ...] = _options()
_BY_NAME = {(o.section, o.key): o for o in OPTIONS}
SECRET_KEYS = frozenset(f"{o.section}.{o.key}" for o in OPTIONS if o.secret)


@dataclass(frozen=True)
class Config:
    """Validated options, read as `cfg.section.key` (e.g. `cfg.mqtt.port`). Built by
    `load_config`/`parse_config`, which validate; constructing it directly validates nothing."""

    collector: CollectorConfig = field(default_factory=CollectorConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    linking: LinkingConfig = field(default_factory=LinkingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    partitions: PartitionsConfig = field(default_factory=PartitionsConfig)
    source: str = "defaults"
    # The further InfluxDB targets ([influx] targets after the first), each with its
    # [influx.NAME] settings resolved over [influx]'s.
    influx_more: tuple[tuple[str, InfluxConfig], ...] = ()

    @property
    def influx_targets(self) -> tuple[tuple[str, InfluxConfig], ...]:
        """Every InfluxDB target as (name, settings), the first (`[influx]` itself) first."""
        first = (target_names(self.influx.targets) or [""])[0]
        return ((first, self.influx), *self.influx_more)

    def for_influx_target(self, name: str) -> Config:
        """This config with [influx] replaced by target `name`'s settings (its drainer's)."""
        from dataclasses import replace

        settings = dict(self.influx_targets)[name]
        return replace(self, influx=replace(settings, targets=name), influx_more=())

    def _target_tables(self, secrets: bool) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, i in self.influx_more:
            table = {}
            for o in OPTIONS:
                if o.section == "influx" and o.key != "targets":
                    v = getattr(i, o.key)
                    table[o.key] = v if secrets or not o.secret else ("***" if v else "")
            out[name] = table
        return out

    @property
    def _values(self) -> dict[tuple[str, str], Any]:
        """Every option's value by (section, key), in `OPTIONS` order."""
        return {(o.section, o.key): self.get(o.section, o.key) for o in OPTIONS}

    def get(self, section: str, key: str) -> Any:
        return getattr(getattr(self, section), key)

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with `section__key=value` overrides (validated like the file)."""
        raw: dict[str, dict[str, Any]] = {}
        for (s, k), v in self._values.items():
            raw.setdefault(s, {})[k] = v
        raw["influx"].update(self._target_tables(secrets=True))
        for name, v in overrides.items():
            s, _, k = name.partition("__")
            target, sep, tkey = k.partition("__")
            if s == "influx" and sep:
                raw["influx"].setdefault(target, {})[tkey] = v
            else:
                raw.setdefault(s, {})[k] = v
        listed = set(target_names(str(raw["influx"].get("targets", ""))))
        for name in [k for k, v in raw["influx"].items() if isinstance(v, dict)]:
            if name not in listed:  # a target the overrides removed
                del raw["influx"][name]
        return _build(raw, {}, self.source)

    def redacted(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (s, k), v in self._values.items():
            shown = ("***" if v else "") if f"{s}.{k}" in SECRET_KEYS else v
            out.setdefault(s, {})[k] = shown
        out["influx"].update(self._target_tables(secrets=False))
        return out

    def to_toml(self) -> str:
        """The effective values as a TOML file (secrets included: write it with care)."""
        lines: list[str] = []
        section = None
        for (s, k), v in self._values.items():
            if s != section:
                section = s
                lines.append(f"\n[{s}]")
            lines.append(f"{k} = {_toml_value(v)}")
        for name, table in self._target_tables(secrets=True).items():
            lines.append(f"\n[influx.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines).lstrip() + "\n"

    @property
    def state_db(self) -> Path:
        """The SQLite state database's file (with [state] url set: its drainer's drained.db and
        the partition lock files still live beside it)."""
        return Path(self.collector.data_dir) / "state.db"

    @property
    def state_target(self) -> str | Path:
        """What collector.db.connect opens: [state] url, or else the SQLite file."""
        return self.state.url or self.state_db

    @property
    def unrated_default(self) -> int | None:
        v = self.linking.unrated_default_level
        return None if v == "none" else int(v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


_TARGET_NAME = re.compile(r"[a-z](?:_?[a-z0-9])*")


def target_names(text: str) -> list[str]:
    """`[influx] targets` as a list of names (validated by `_check_targets`)."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _coerce(opt: Option, value: Any, where: str) -> Any:
    """`value` as the option's type, within its limits; ConfigError naming option, value and
    what is expected (a secret's value is never shown)."""
    name = f"[{opt.section}] {opt.key}"
    shown = "" if opt.secret else f" = {value!r}"
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
        if opt.secret:
            raise ConfigError(f"{name} ({where}): expected {opt.type.__name__}") from None
        raise ConfigError(
            f"{name} ({where}): expected {opt.type.__name__}, got {value!r}") from None
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{name}{shown} ({where}): must be one of "
                          f"{', '.join(map(str, opt.choices))}")
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{name} ({where}): must be at least {opt.minimum}, got {value}")
    if opt.maximum is not None and value > opt.maximum:
        raise ConfigError(f"{name} ({where}): must be at most {opt.maximum}, got {value}")
    return value


def _build(file_values: Mapping[str, Any], env: Mapping[str, str], source: str) -> Config:
    values: dict[tuple[str, str], Any] = {(o.section, o.key): o.default for o in OPTIONS}
    problems: list[str] = []
    tables: dict[str, dict[str, tuple[Any, str]]] = {}  # [influx.NAME]: key -> (value, where)
    for section, table in file_values.items():
        if not isinstance(table, dict):
            problems.append(f"[{section}] ({source}): expected a table")
            continue
        for key, v in table.items():
            if section == "influx" and isinstance(v, dict):
                tables.setdefault(key, {}).update({k: (x, source) for k, x in v.items()})
                continue
            opt = _BY_NAME.get((section, key))
            if opt is None:
                problems.append(f"[{section}] {key} ({source}): unknown option")
                continue
            try:
                values[(section, key)] = _coerce(opt, v, source)
            except ConfigError as exc:
                problems.extend(exc.problems)
    for name, v in env.items():
        if not name.startswith("EVALTERM_") or "__" not in name:
            continue
        section, key = name[len("EVALTERM_"):].lower().split("__", 1)
        target, sep, tkey = key.partition("__")
        if section == "influx" and sep:
            tables.setdefault(target, {})[tkey] = (v, f"environment {name}")
            continue
        opt = _BY_NAME.get((section, key))
        if opt is None:
            problems.append(f"{name}: unknown option [{section}] {key}")
            continue
        try:
            values[(section, key)] = _coerce(opt, v, f"environment {name}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems += _bind_client_id(values)
    problems += _check_state_url(values)
    kwargs: dict[str, Any] = {"source": source}
    for section, cls in SECTIONS:
        kwargs[section] = cls(**{k: v for (s, k), v in values.items() if s == section})
    more, target_problems = _influx_targets(kwargs["influx"], tables)
    problems += target_problems
    cfg = Config(**kwargs, influx_more=more)
    problems += _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _influx_targets(base: InfluxConfig, tables: dict[str, dict[str, tuple[Any, str]]]
                    ) -> tuple[tuple[tuple[str, InfluxConfig], ...], list[str]]:
    """The further targets of `[influx] targets`, each [influx.NAME] resolved over `base`."""
    from dataclasses import replace

    problems: list[str] = []
    names = target_names(base.targets)
    keys = {o.key for o in OPTIONS if o.section == "influx"}
    if not names:
        problems.append("[influx] targets: name at least one target (e.g. \"main\")")
    for n in names:
        if not _TARGET_NAME.fullmatch(n) or len(n) > 32 or n in keys:
            problems.append(f"[influx] targets: {n!r} is not a target name (lower-case letters, "
                            "digits and single _, at most 32, not an [influx] key)")
    if len(set(names)) != len(names):
        problems.append("[influx] targets: a name is listed twice")
    for n in tables:
        if n not in names[1:]:
            problems.append(f"[influx.{n}]: not a further target of [influx] targets"
                            + (" (the first target's settings are [influx]'s own)"
                               if names and n == names[0] else ""))
    more: list[tuple[str, InfluxConfig]] = []
    for n in dict.fromkeys(names[1:]):
        changes: dict[str, Any] = {}
        for key, (v, where) in tables.get(n, {}).items():
            opt = _BY_NAME.get(("influx", key))
            if opt is None or key == "targets":
                problems.append(f"[influx.{n}] {key} ({where}): unknown option")
                continue
            try:
                changes[key] = _coerce(replace(opt, section=f"influx.{n}"), v, where)
            except ConfigError as exc:
                problems.extend(exc.problems)
        more.append((n, replace(base, **changes)))
    seen: dict[tuple[str, str], str] = {}
    for n, i in ((names[0] if names else "", base), *more):
        place = (i.url.rstrip("/"), i.database if i.version == 1 else i.bucket)
        if place in seen:
            problems.append(f"[influx] targets: {seen[place]!r} and {n!r} are the same InfluxDB "
                            f"database ({place[0]}, {place[1]})")
        seen.setdefault(place, n)
    return tuple(more), problems


def _bind_client_id(values: dict[tuple[str, str], Any]) -> list[str]:
    """The broker binds every client id to its user name (`use_username_as_clientid`, so that
    nobody can take over the collector's session with other credentials): with a user name, the
    collector's client id, and so its persistent session, is that name."""
    user, cid = values[("mqtt", "username")], values[("mqtt", "client_id")]
    if not user or cid == user:
        return []
    if cid == _BY_NAME[("mqtt", "client_id")].default:
        values[("mqtt", "client_id")] = user
        return []
    return [f"[mqtt] client_id {cid!r} differs from [mqtt] username {user!r}: the broker uses "
            "the user name as the client id (docs/security.md); remove client_id or set it to "
            "the user name"]


def _cross_check(cfg: Config) -> list[str]:
    """Problems no single option's type and limits can see: formats, and options together."""
    from urllib.parse import urlsplit

    # The detection settings parse these three; imported here, where they are needed, because

    out: list[str] = []
    if not cfg.mqtt.client_id:
        out.append("[mqtt] client_id: a persistent session requires a fixed client id")
    for n, (name, influx) in enumerate(cfg.influx_targets):
        sec = "influx" if n == 0 else f"influx.{name}"
        if influx.version == 2 and not (influx.token and influx.org and influx.bucket):
            out.append(f"[{sec}] version = 2 requires token, org and bucket")
        url = urlsplit(influx.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.append(f"[{sec}] url = {influx.url!r}: must be http:// or https:// and a host")
        else:
            try:
                url.port  # noqa: B018  raises ValueError for a port out of range or not a number
            except ValueError:
                out.append(f"[{sec}] url = {influx.url!r}: the port must be 1-65535")
        host, sep, port = influx.backup_address.rpartition(":")
        if (not sep or not host or not (port.isascii() and port.isdigit())
                or not 0 < int(port) < 65536):
            out.append(f"[{sec}] backup_address: expected host:port, got "
                       f"{influx.backup_address!r}")
    if cfg.http.listen:
        _host, sep, port = cfg.http.listen.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            out.append(f"[http] listen: expected host:port, got {cfg.http.listen!r}")
    out += _check_http(cfg.http)
    prefix = cfg.mqtt.topic_prefix
    if (not prefix or any(c in prefix for c in "+#") or prefix.startswith("/")
            or prefix.endswith("/")):
        out.append(f"[mqtt] topic_prefix = {prefix!r}: no wildcards, no leading or trailing '/'")
    if not cfg.mqtt.host.strip():
        out.append("[mqtt] host = '': expected the broker's host name or address")
    if cfg.mqtt.tls_ca_file and not Path(cfg.mqtt.tls_ca_file).is_file():
        out.append(f"[mqtt] tls_ca_file = {cfg.mqtt.tls_ca_file!r}: no such file")
    for key, parse in (("opening_hours", parse_opening_hours), ("business_days", parse_weekdays),
                       ("utc_offset", parse_offset)):
        try:
            parse(getattr(cfg.detection, key))
        except ConfigError as exc:
            out.extend(exc.problems)
    try:
        parse_days_per_hall(cfg.manager.followup_days_per_hall)
    except ConfigError as exc:
        out.extend(exc.problems)
    if cfg.manager.holidays_file and not Path(cfg.manager.holidays_file).is_file():
        out.append(f"[manager] holidays_file = {cfg.manager.holidays_file!r}: no such file")
    try:
        parse_own(cfg.partitions.own, cfg.partitions.count)
    except ValueError as exc:
        out.append(f"[partitions] own = {cfg.partitions.own!r}: {exc}")
    if cfg.detection.q_weak < cfg.detection.q_strong:
        out.append(f"[detection] q_weak = {cfg.detection.q_weak}: must be at least q_strong "
                   f"({cfg.detection.q_strong})")
    return out


@dataclass(frozen=True)
class FeedToken:
    """A webhook bearer token and the halls it may post (None: every hall)."""

    token: str
    halls: frozenset[str] | None

    def allows(self, hall: str) -> bool:
        return self.halls is None or hall in self.halls


_MIN_TOKEN = 16


def _parse_feed_tokens(text: str) -> tuple[list[FeedToken], list[str]]:
    """`[http] feed_tokens` as tokens with their halls, and its problems (never showing a token:
    an entry is named by its position and its halls)."""
    from collector.protocol import ID_PATTERN

    out: list[FeedToken] = []
    problems: list[str] = []
    for n, entry in enumerate((e.strip() for e in text.split(";")), 1):
        if not entry:
            continue
        halls_text, sep, token = entry.partition("=")
        token = token.strip()
        where = f"[http] feed_tokens, entry {n}"
        halls = [h.strip() for h in halls_text.split(",")]
        if not sep or not halls_text.strip():
            problems.append(f"{where}: expected HALL[,HALL...]=TOKEN")
            continue
        where += f" ({halls_text.strip()})"
        bad = [h for h in halls if h != "*" and not ID_PATTERN.fullmatch(h)]
        if bad:
            problems.append(f"{where}: {', '.join(map(repr, bad))} is not a hall id "
                            "(letters, digits, _ and -, at most 32) or *")
        if "*" in halls and len(halls) > 1:
            problems.append(f"{where}: * (every hall) cannot be listed with other halls")
        if len(token) < _MIN_TOKEN or any(c.isspace() for c in token):
            problems.append(f"{where}: the token must be at least {_MIN_TOKEN} characters without"
                            " spaces (e.g. `openssl rand -hex 24`)")
        if not bad:
            out.append(FeedToken(token, None if "*" in halls else frozenset(halls)))
    return out, problems


def feed_tokens(http: HttpConfig) -> tuple[FeedToken, ...]:
    """Every webhook token of a validated config: `feed_token` (every hall) and `feed_tokens`."""
    scoped, _problems = _parse_feed_tokens(http.feed_tokens)
    legacy = [FeedToken(http.feed_token, None)] if http.feed_token else []
    return tuple(legacy + scoped)


def _check_http(http: HttpConfig) -> list[str]:
    scoped, out = _parse_feed_tokens(http.feed_tokens)
    tokens = [t.token for t in scoped] + ([http.feed_token] if http.feed_token else [])
    if len(set(tokens)) != len(tokens):
        out.append("[http] feed_tokens: a token is given twice (in feed_tokens or as feed_token): "
                   "give each business system a token of its own, with all its halls")
    if bool(http.tls_certfile) != bool(http.tls_keyfile):
        out.append("[http] tls_certfile and tls_keyfile: set both (HTTPS) or neither (plain HTTP)")
    for key in ("tls_certfile", "tls_keyfile"):
        value = getattr(http, key)
        if value and not Path(value).is_file():
            out.append(f"[http] {key} = {value!r}: no such file")
    return out


def state_url_problem(url: str, what: str = "[state] url") -> str | None:
    """What is wrong with `url` as the PostgreSQL state database's URL (None: nothing). Never
    repeats the URL: it may hold a password."""
    if not url.startswith(("postgresql://", "postgres://")):
        return f"{what}: expected empty (SQLite) or a postgresql:// URL"
    if re.match(r"^[a-z]+://[^/@]*:[^/@]*@", url) or re.search(r"[?&]password=", url):
        return (f"{what} holds a password: remove it, and give it in PGPASSWORD or a "
                "PGPASSFILE file (docs/config.md)")
    return None


def _check_state_url(values: Mapping[tuple[str, str], Any]) -> list[str]:
    url = str(values[("state", "url")])
    problem = state_url_problem(url) if url else None
    return [problem] if problem else []


def config_warnings(cfg: Config) -> list[str]:
    """Settings that work but are probably not what was meant (shown by `config check`)."""
    out: list[str] = []
    if cfg.mqtt.username and not cfg.mqtt.password:
        out.append("[mqtt] username is set but password is empty: the broker will likely refuse "
                   "the collector (set EVALTERM_MQTT__PASSWORD)")
    if cfg.influx.version == 1 and cfg.influx.username and not cfg.influx.password:
        out.append("[influx] username is set but password is empty (set EVALTERM_INFLUX__PASSWORD)")
    if cfg.influx.version == 1 and 0 < cfg.influx.retention_days < 731:
        out.append(f"[influx] retention_days = {cfg.influx.retention_days}: InfluxDB deletes "
                   "ratings before the next annual assessment can use the previous year's "
                   "(docs/deploy.md, \"Retention\"); 1830 or 0 (forever) keeps them")
    if cfg.mqtt.password and not cfg.mqtt.username:
        out.append("[mqtt] password is set but username is empty: the password is not used")
    if cfg.http.feed_token:
        out.append("[http] feed_token is valid for every hall: a business system's token should "
                   "post only its own halls; move it to feed_tokens = 'HALL[,HALL...]=TOKEN'")
    host = cfg.http.listen.rpartition(":")[0].strip("[]")
    if (cfg.http.listen and (cfg.http.feed_token or cfg.http.feed_tokens)
            and not cfg.http.tls_certfile and host not in ("127.0.0.1", "localhost", "::1")):
        out.append(f"[http] listen = {cfg.http.listen!r} serves the webhook in plain HTTP beyond "
                   "this host: its tokens cross the network readable; set tls_certfile and "
                   "tls_keyfile, or listen on 127.0.0.1 behind a TLS reverse proxy "
                   "(docs/deploy.md)")
    return out


def check_data_dir(cfg: Config) -> list[str]:
    """Problems with `[collector] data_dir` for a service that is to run with it: it must be (or
    become) a folder this process can write in. Creates the folder, as the service would."""
    d = Path(cfg.collector.data_dir)
    where = f"[collector] data_dir = {cfg.collector.data_dir!r}"
    if not d.is_absolute():
        hint = f" (relative: {d.resolve()}; an absolute path is safer for a service)"
    else:
        hint = ""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"{where}: cannot create the folder ({exc.strerror}){hint}"]
    if not d.is_dir():
        return [f"{where}: not a folder{hint}"]
    if not os.access(d, os.W_OK | os.X_OK):
        return [f"{where}: this user ({os.getuid()}) cannot write in it{hint}"]
    return []


def parse_config(text: str, source: str) -> Config:
    """A Config from TOML text alone (no environment), validated like a file."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return _build(values, {}, source)


def load_config(path: str | os.PathLike[str] | None,
                env: Mapping[str, str] | None = None) -> Config:
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
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p}: cannot be read ({exc})") from None
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


# -- the hall's calendar options, parsed here (collector.detection.settings uses them) -----

_RANGE = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")
_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")


def parse_opening_hours(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        m = _RANGE.fullmatch(part)
        if not m:
            raise ConfigError(f"[detection] opening_hours: {part.strip()!r} is not HH:MM-HH:MM")
        h1, m1, h2, m2 = map(int, m.groups())
        a, b = h1 * 60 + m1, h2 * 60 + m2
        if not (0 <= a < b <= 24 * 60) or m1 > 59 or m2 > 59:
            raise ConfigError(f"[detection] opening_hours: {part.strip()!r} is not a valid range")
        out.append((a, b))
    out.sort()
    for (_, b), (a, _) in pairwise(out):
        if a < b:
            raise ConfigError("[detection] opening_hours: ranges overlap")
    return tuple(out)


def parse_weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ConfigError(f"[detection] business_days: {part!r} is not a weekday or range"
                              ) from None
        if not 1 <= a <= b <= 7:
            raise ConfigError(f"[detection] business_days: {part!r} outside 1-7")
        days.update(range(a, b + 1))
    return frozenset(days)


def parse_offset(text: str) -> int:
    m = _OFFSET.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"[detection] utc_offset: expected +HH:MM, got {text!r}")
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 60 + int(m.group(3)))


def parse_days_per_hall(text: str) -> dict[str, int]:
    """`[manager] followup_days_per_hall`: 'h1=3,h2=10' -> {'h1': 3, 'h2': 10}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        hall, sep, days = part.partition("=")
        if not sep or not hall.strip() or not days.strip().isdigit() or int(days) < 1:
            raise ConfigError(f"[manager] followup_days_per_hall: {part!r} is not hall=days "
                              "(days a whole number of at least 1)")
        out[hall.strip()] = int(days)
    return out
