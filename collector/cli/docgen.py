"""Generates docs/config.md from the option table, so the docs cannot drift from the code."""

from __future__ import annotations

import sys
from pathlib import Path

from collector.config import OPTIONS

__all__ = ["config_markdown"]


def config_markdown() -> str:
    lines = [
        "# Collector configuration",
        "",
        "Generated from `collector/config.py` by `python -m collector.cli.docgen`; "
        "a test fails when it",
        "is out of date. The collector reads a TOML file (`evalterm -c FILE`) and then environment",
        "variables `EVALTERM_<SECTION>__<KEY>` (e.g. `EVALTERM_INFLUX__TOKEN`), which override the",
        "file; use them for secrets. `evalterm config check` validates and shows the result with",
        "secrets hidden; `evalterm config sample` prints a commented file with every default.",
    ]
    section = None
    for o in OPTIONS:
        if o.section != section:
            lines += _NOTES.get(section or "", [])
            section = o.section
            lines += ["", f"## [{section}]", "", "| option | type | default | meaning |",
                      "|---|---|---|---|"]
        extra = []
        if o.choices:
            extra.append("one of " + ", ".join(f"`{c}`" for c in o.choices))
        if o.minimum is not None:
            extra.append(f"min {o.minimum:g}")
        if o.maximum is not None:
            extra.append(f"max {o.maximum:g}")
        if o.secret:
            extra.append("secret: never logged")
        default = f"`{o.default!r}`" if o.default != "" else "(empty)"
        meaning = o.help + (f" ({'; '.join(extra)})" if extra else "")
        lines.append(f"| `{o.key}` | {o.type.__name__} | {default} | {meaning} |")
    lines += _NOTES.get(section or "", [])
    return "\n".join(lines) + "\n"


# What a section's table of options cannot show, after it.
_NOTES = {
    "influx": [
        "",
        "Several InfluxDB servers (InfluxDB OSS has no clustering) are fed the same points with",
        "`targets`: the first name is the server `[influx]` describes, each further one a table",
        "`[influx.NAME]` with any of the keys above except `targets` (the rest inherited), e.g.",
        "",
        "```toml",
        "[influx]",
        'targets = "a,b"',
        'url = "http://influx-a:8086"',
        "",
        "[influx.b]",
        'url = "http://influx-b:8086"',
        "```",
        "",
        "with `EVALTERM_INFLUX__B__PASSWORD` for b's secret. Queries, dashboards,",
        "`evalterm backup` and `restore` use the first target. Each target has a drainer process",
        "and progress of its own (docs/storage.md, \"Several InfluxDB targets\").",
    ],
    "partitions": [
        "",
        "With `count` above 1, partition k is served by an MQTT client of its own, client id and",
        "broker user `<[mqtt] client_id>-p<k>` (the broker binds client ids to user names), with",
        "the password of `[mqtt] password`; `evalterm broker render` writes these users. A process",
        "serves partition k only while it holds k's lock in the state database (a PostgreSQL",
        "advisory lock, or a lock file beside an SQLite database); the InfluxDB drainer, the",
        "detector and the manager run in the one process holding the singletons' lock. A feed",
        "posted over HTTP to a process that does not serve the hall is answered 503 (post it to",
        "the owner, or publish it on MQTT). docs/scale.md, \"Hall partitions\", has the design.",
    ],
}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/config.md")
    out.write_text(config_markdown(), encoding="utf-8")
