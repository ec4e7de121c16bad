"""What Grafana does with a generated query before and after InfluxDB answers it, for the tests.

`interpolate` expands the macros and template variables the way Grafana's InfluxDB datasource does
(`$timeFilter`, `$__timeFilter`, `$__interval`, `$__interval_ms`, `${var:regex}`, `$var`);
`evaluate_rule` runs an alert rule's InfluxQL queries and its reduce / math / threshold
expressions (the subset of Grafana's server-side expressions the rules use).
"""

from __future__ import annotations

import re
from typing import Any

from collector.config import Config
from collector.influx import influxql

ALL = "$__all"
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


def _regex_escape(value: str) -> str:
    # Grafana's regex formatter (lodash escapeRegExp / kbn.regexEscape)
    return re.sub(r"[\\^$.*+?()[\]{}|/-]", lambda m: "\\" + m.group(0), value)


def interpolate(query: str, variables: dict[str, Any], from_ms: int, to_ms: int,
                interval: str = "1m", interval_ms: int = 60_000,
                all_values: dict[str, str] | None = None) -> str:
    """`variables`: name -> value, a list of values, or ALL (uses the custom all value `.*`)."""
    time_filter = f"time >= {from_ms}ms and time <= {to_ms}ms"
    builtins = {"timeFilter": time_filter, "__timeFilter": time_filter, "__interval": interval,
                "interval": interval, "__interval_ms": str(interval_ms)}
    all_values = all_values or {}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        fmt = m.group(2)
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"template variable ${name} is not defined")
        value = variables[name]
        if value == ALL:
            return all_values.get(name, ".*")  # custom all values are not formatted
        values = value if isinstance(value, list) else [value]
        if fmt == "regex" or (fmt is None and isinstance(value, list)):
            escaped = [_regex_escape(v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        if fmt is None or fmt in ("raw", "text"):
            return ",".join(values)
        raise ValueError(f"format {fmt} not modelled")

    out = _VAR.sub(sub, query)
    assert not re.search(r"\$[\w{]", out), f"uninterpolated macro left in {out}"
    return out


def run(cfg: Config, query: str) -> list[dict[str, Any]]:
    """Rows of all series (tags merged in), as Grafana's table format shows them."""
    rows = []
    for s in influxql(cfg.influx.url, cfg.influx.database, query):
        for values in s.get("values", []):
            row = dict(zip(s["columns"], values, strict=True))
            row.update(s.get("tags") or {})
            rows.append(row)
    return rows


def series(cfg: Config, query: str) -> dict[tuple[tuple[str, str], ...], list[float]]:
    """Time series keyed by their sorted tag set (Grafana's labels), values of the first field."""
    out: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for s in influxql(cfg.influx.url, cfg.influx.database, query):
        labels = tuple(sorted((s.get("tags") or {}).items()))
        out[labels] = [v[1] for v in s.get("values", []) if v[1] is not None]
    return out


_REDUCERS = {"last": lambda xs: xs[-1], "sum": sum, "max": max, "min": min,
             "mean": lambda xs: sum(xs) / len(xs), "count": len}


def _math(expression: str, env: dict[str, float]) -> float:
    py = re.sub(r"\$(\w+)", lambda m: f"env[{m.group(1)!r}]", expression)
    py = py.replace("&&", " and ").replace("||", " or ")
    return float(eval(py, {"__builtins__": {}}, {"env": env}))


def evaluate_rule(cfg: Config, rule: dict[str, Any], now_ms: int) -> dict[tuple, float]:
    """The rule's condition per label set; the instances whose value is non-zero are firing."""
    results: dict[str, dict[tuple, Any]] = {}
    for q in rule["data"]:
        model, ref = q["model"], q["refId"]
        if q["datasourceUid"] != "__expr__":
            span = q["relativeTimeRange"]
            query = interpolate(model["query"], {}, now_ms - span["from"] * 1000,
                                now_ms - span["to"] * 1000)
            results[ref] = series(cfg, query)
            continue
        kind = model["type"]
        if kind == "reduce":
            src = results[model["expression"]]
            results[ref] = {k: _REDUCERS[model["reducer"]](v) for k, v in src.items() if v}
        elif kind == "math":
            refs = re.findall(r"\$(\w+)", model["expression"])
            keys = set.intersection(*(set(results[r]) for r in refs))
            results[ref] = {k: _math(model["expression"], {r: results[r][k] for r in refs})
                            for k in keys}
        elif kind == "threshold":
            ev = model["conditions"][0]["evaluator"]
            limit = ev["params"][0]
            test = {"gt": lambda x, lim=limit: x > lim,
                    "lt": lambda x, lim=limit: x < lim}[ev["type"]]
            results[ref] = {k: float(test(v)) for k, v in results[model["expression"]].items()}
        else:
            raise ValueError(f"expression type {kind} not modelled")
    return results[rule["condition"]]


def firing(values: dict[tuple, float]) -> set[tuple]:
    return {k for k, v in values.items() if v}
