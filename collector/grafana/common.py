"""Shared defaults of every generated dashboard: datasource, texts, variables, filters, panels.

Dashboards are built with grafana-foundation-sdk (builders generated for Grafana v11.6.x). The SDK
has no InfluxDB query type, so `InfluxQuery` is one: a raw InfluxQL target (`rawQuery: true`) as the
Grafana InfluxDB datasource stores it, whichever InfluxDB version serves it (1.x natively, 2.x and
3.x through their InfluxQL endpoints).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from collector.errors import UsageError
from collector.reasons import REASON_LABELS

__all__ = [
    "DS",
    "DS_UID",
    "GRAFANA_VERSION",
    "LEVELS",
    "REASONS",
    "TAGS",
    "Influx",
    "InfluxQuery",
    "T",
    "base_dashboard",
    "device_where",
    "level_mappings",
    "names",
    "rating_where",
    "reason_mappings",
    "to_dict",
    "txn_where",
    "variables",
]

GRAFANA_VERSION = "11.6"           # the SDK's target; schemaVersion comes with it
DS_UID = "evalterm-influxdb"       # the provisioned datasource (provisioning/datasources)
DS = dm.DataSourceRef(type_val="influxdb", uid=DS_UID)
TAGS = ["evalterm", "generated"]
FOLDER_UID = "evalterm"

# Level and reason texts (docs/protocol.md §4.1).
LEVELS = {5: ("非常满意", "very satisfied"), 4: ("满意", "satisfied"),
          3: ("基本满意", "fairly satisfied"), 2: ("不满意", "dissatisfied"),
          1: ("非常不满意", "very dissatisfied")}
LEVEL_COLORS = {5: "dark-green", 4: "green", 3: "yellow", 2: "orange", 1: "red"}
REASONS = REASON_LABELS


class T:
    """Texts of one language: `t("满意率", "Satisfaction")` picks the variant."""

    def __init__(self, lang: str = "zh") -> None:
        if lang not in ("zh", "en"):
            raise UsageError(f"language {lang!r}: expected zh or en")
        self.lang = lang

    def __call__(self, zh: str, en: str) -> str:
        return zh if self.lang == "zh" else en

    def uid(self, base: str) -> str:
        """Stable dashboard UID; the English variant is a separate dashboard."""
        return base if self.lang == "zh" else f"{base}-en"

    @property
    def reason_field(self) -> str:
        return "reasons_zh" if self.lang == "zh" else "reasons_en"

    @property
    def indicator_reason_field(self) -> str:
        return "reason_zh" if self.lang == "zh" else "reason_en"


# -- queries ------------------------------------------------------------------------------------


class InfluxQuery(cogvariants.Dataquery):
    """A raw InfluxQL target of the Grafana InfluxDB datasource."""

    def __init__(self, query: str, ref_id: str = "A", result_format: str = "time_series",
                 alias: str | None = None, hide: bool = False) -> None:
        self.query, self.ref_id, self.result_format = query, ref_id, result_format
        self.alias, self.hide = alias, hide

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"datasource": {"type": "influxdb", "uid": DS_UID},
                                  "query": self.query, "rawQuery": True, "refId": self.ref_id,
                                  "resultFormat": self.result_format}
        if self.alias:
            out["alias"] = self.alias
        if self.hide:
            out["hide"] = True
        return out


class Influx(cogbuilder.Builder[InfluxQuery]):
    def __init__(self, query: str, ref_id: str = "A", *, table: bool = False,
                 alias: str | None = None) -> None:
        self._q = InfluxQuery(" ".join(query.split()), ref_id, "table" if table else "time_series",
                              alias)

    def build(self) -> InfluxQuery:
        return self._q


# Grafana interpolates `${var:regex}` into an escaped alternation `(a|b)`; the "All" option uses
# the custom all value `.*` unescaped. A regex match on a tag is served by every InfluxDB version.
def _match(tag: str, var: str | None = None) -> str:
    return f'"{tag}" =~ /^${{{var or tag}:regex}}$/'


def rating_where(*extra: str) -> str:
    """WHERE clause of a `rating` query: time range and the four template variables."""
    parts = ["$timeFilter", _match("hall"), _match("window"), _match("staff"), _match("service"),
             *extra]
    return "WHERE " + " AND ".join(parts)


def txn_where(*extra: str) -> str:
    return rating_where(*extra)  # `transaction` has the same four tags


def device_where(*extra: str) -> str:
    return "WHERE " + " AND ".join(["$timeFilter", _match("hall"), _match("window"), *extra])


# -- variables ----------------------------------------------------------------------------------


def _query_var(name: str, label: str, query: str) -> db.QueryVariable:
    return (db.QueryVariable(name).label(label).query(" ".join(query.split())).datasource(DS)
            .multi(True).include_all(True).all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def variables(t: T, names: tuple[str, ...] = ("hall", "window", "staff", "service")
              ) -> list[db.QueryVariable]:
    """Hall, window, staff and service selectors, each narrowed by the ones before it."""
    defs = {
        "hall": (t("大厅", "Hall"), 'SHOW TAG VALUES FROM "transaction" WITH KEY = "hall"'),
        "window": (t("窗口", "Window"), 'SHOW TAG VALUES FROM "rating" WITH KEY = "window" '
                   'WHERE "hall" =~ /^${hall:regex}$/'),
        "staff": (t("工作人员", "Staff"), 'SHOW TAG VALUES FROM "transaction" WITH KEY = "staff" '
                  'WHERE "hall" =~ /^${hall:regex}$/ AND "window" =~ /^${window:regex}$/'),
        "service": (t("事项", "Service"), 'SHOW TAG VALUES FROM "transaction" WITH KEY = "service" '
                    'WHERE "hall" =~ /^${hall:regex}$/'),
    }
    return [_query_var(n, *defs[n]) for n in names]


# -- mappings and panels ------------------------------------------------------------------------


def _value_map(pairs: dict[str, tuple[str, str | None]]) -> dm.ValueMap:
    return dm.ValueMap(options={k: dm.ValueMappingResult(text=text, color=color, index=i)
                                for i, (k, (text, color)) in enumerate(pairs.items())})


def level_mappings(t: T) -> list[dm.ValueMapping]:
    return [_value_map({str(k): (f"{k} {t(*v)}", LEVEL_COLORS[k]) for k, v in LEVELS.items()})]


def reason_mappings(t: T) -> list[dm.ValueMapping]:
    return [_value_map({k: (t(*v), None) for k, v in REASONS.items()})]


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


TODAY = ("now/d", "now")  # the default range of the dashboards a hall manager opens each day


def base_dashboard(t: T, uid: str, title: str, description: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(t.uid(uid)).description(description).tags(TAGS)
            .timezone("browser").time(*TODAY).refresh("1m")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink(t("评价器", "evalterm")).type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(["evalterm"]).as_dropdown(True).include_vars(True).keep_time(True)))


def transformation(kind: str, options: dict[str, Any] | None = None) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=kind, options=options or {})


def organize(rename: dict[str, str], exclude: tuple[str, ...] = ("Time",),
             order: list[str] | None = None) -> dm.DataTransformerConfig:
    opts: dict[str, Any] = {"renameByName": rename,
                            "excludeByName": dict.fromkeys(exclude, True)}
    if order:
        opts["indexByName"] = {name: i for i, name in enumerate(order)}
    return transformation("organize", opts)


# -- names from the directory ---------------------------------------------------------------------
# The service writes the directory (collector/manager/run.py) as `directory` points: tag `kind`
# (window, staff, service), the id under the tag the other measurements use, field `name`. A
# table panel gets one query per id column and Grafana's "Config from query results"
# transformation (`configFromData`) turns its rows into value mappings id -> name on that
# column: the table shows names, filters and links still use the ids.


def names_query(column: str) -> str:
    """The names of one kind (`window`, `staff`, `service`), as rows (id, name)."""
    where = f'"kind" = \'{column}\''
    if column == "window":
        where += ' AND "hall" =~ /^${hall:regex}$/'
    return f'SELECT last("name") AS "name" FROM "directory" WHERE {where} GROUP BY "{column}"'


P = TypeVar("P", bound=cogbuilder.Builder[dm.Panel])


def names(panel: P, *columns: str) -> P:
    """Show the directory's names in place of the ids of `columns` (before the panel's other
    transformations, which must not see the names' frames)."""
    internal = panel._internal  # type: ignore[attr-defined]
    maps = []
    for col in columns:
        ref = f"names_{col}"
        internal.targets = [*(internal.targets or []), InfluxQuery(
            " ".join(names_query(col).split()), ref, "table")]
        maps.append(transformation("configFromData", {
            "configRefId": ref,
            "mappings": [{"fieldName": col, "handlerKey": "mappings.value"},
                         {"fieldName": "name", "handlerKey": "mappings.text"}],
            "applyTo": {"id": "byName", "options": col}}))
    internal.transformations = [*maps, *(internal.transformations or [])]
    return panel


def to_dict(built: Any) -> Any:
    """A built SDK object as plain JSON data."""
    return json.loads(json.dumps(built, cls=JSONEncoder))


PanelFn = Callable[[T], cogbuilder.Builder[dm.Panel]]
