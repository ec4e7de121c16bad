"""Generated dashboards: up to date, valid against Grafana's schema, stable; deploy's API calls.

No real Grafana server runs in the tests (none can run in CI): `evalterm grafana deploy` is tested
against an HTTP server that records every call and answers like Grafana's API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from collector.cli import main
from collector.grafana import alerts
from collector.grafana.export import build_all, dashboards, dump

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "provisioning"
SCHEMA = ROOT / "dashboards" / "schema" / "dashboard.schema.json"


def test_committed_provisioning_folder_is_up_to_date() -> None:
    expected = build_all()
    committed = {p.relative_to(PROVISIONING).as_posix() for p in PROVISIONING.rglob("*")
                 if p.is_file()}
    assert committed == set(expected), "run: evalterm grafana export"
    for rel, data in expected.items():
        assert (PROVISIONING / rel).read_text(encoding="utf-8") == dump(data), (
            f"{rel} is out of date: run `evalterm grafana export` and commit dashboards/")


def test_export_cli_writes_the_same_files(tmp_path: Path) -> None:
    assert main(["grafana", "export", "--out", str(tmp_path), "--lang", "en"]) == 0
    assert (tmp_path / "dashboards/evalterm-en/overview.json").read_text(encoding="utf-8") == (
        PROVISIONING / "dashboards/evalterm-en/overview.json").read_text(encoding="utf-8")
    assert not (tmp_path / "dashboards/evalterm").exists()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_dashboards_validate_against_grafana_schema(lang: str) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for name, d in dashboards(lang).items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(d)]
        assert not errors, f"{name}: {errors[:5]}"


def test_schema_catches_a_broken_dashboard() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    d = dashboards("zh")["overview"]
    d["panels"][0]["gridPos"] = {"h": "tall"}
    d["refresh"] = 60
    assert len(list(validator.iter_errors(d))) >= 2


def test_uids_tags_languages() -> None:
    zh, en = dashboards("zh"), dashboards("en")
    assert [d["uid"] for d in zh.values()] == ["evalterm-overview", "evalterm-detail",
                                               "evalterm-followup", "evalterm-integrity",
                                               "evalterm-devices"]
    assert [d["uid"] for d in en.values()] == [f"{d['uid']}-en" for d in zh.values()]
    for d in [*zh.values(), *en.values()]:
        assert "generated" in d["tags"] and d["schemaVersion"] >= 39
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            assert p.get("description"), f"{d['uid']}: panel {p['title']} has no description"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "evalterm-influxdb" and t["rawQuery"]
    assert zh["overview"]["title"] == "评价器 · 大厅总览"
    assert en["overview"]["title"] == "evalterm · Hall overview"
    assert dashboards("zh") == zh  # deterministic


def _shows_window(query: str) -> bool:
    """The query's rows have a window column: selected, or grouped by."""
    head, _, tail = query.rpartition("GROUP BY")  # the outer one of a subquery
    return ('"window"' in (head or tail).split(" FROM ")[0]) or (bool(head) and '"window"' in tail)


def test_today_names_and_links_into_the_ui() -> None:
    zh = dashboards("zh")
    # A hall manager opens these for today; integrity looks at the week, devices at 24 hours.
    assert {k: d["time"]["from"] for k, d in zh.items()} == {
        "overview": "now/d", "detail": "now/d", "followup": "now/d", "integrity": "now-7d",
        "devices": "now-24h"}
    # Every table that shows window ids maps them to the directory's names, first.
    for name, d in zh.items():
        for p in d["panels"]:
            if p["type"] != "table" or not any(_shows_window(t["query"]) for t in p["targets"]):
                continue
            first = p["transformations"][0]
            assert (first["id"], first["options"]["configRefId"]) == (
                "configFromData", "names_window"), f"{name}: {p['title']}"
            assert first["options"]["mappings"] == [
                {"fieldName": "window", "handlerKey": "mappings.value"},
                {"fieldName": "name", "handlerKey": "mappings.text"}]
            refs = [t["refId"] for t in p["targets"]]
            assert "names_window" in refs, f"{name}: {p['title']}"
    f = zh["followup"]
    ui = next(v for v in f["templating"]["list"] if v["name"] == "ui")
    assert ui["type"] == "textbox" and ui["query"] == "http://127.0.0.1:8480"
    cases = next(p for p in f["panels"] if p["title"].startswith("未办结案件"))
    link = next(o for o in cases["fieldConfig"]["overrides"]
                if o["matcher"]["options"] == "案件")["properties"][0]["value"][0]
    assert link["url"] == "${ui}/ui/cases/${__value.raw}"
    windows = next(p for p in f["panels"] if p["title"] == "各窗口整改情况")
    link = next(o for o in windows["fieldConfig"]["overrides"]
                if o["matcher"]["options"] == "窗口")["properties"][0]["value"][0]
    assert link["url"] == "${ui}/ui/cases?window=${__value.raw}"
    overdue = next(p for p in f["panels"] if p["title"] == "已逾期")
    assert overdue["links"][0]["url"] == "${ui}/ui/cases"


def test_alert_rules_and_policy() -> None:
    rules = {r["uid"]: r for r in alerts.rules()}
    surge = rules["evalterm-bad-surge"]
    assert [q["relativeTimeRange"]["from"] for q in surge["data"][:2]] == [900, 900]
    assert surge["data"][4]["model"]["expression"] == "($D >= 4) && ($C / $D >= 0.5)"
    files = build_all()
    group = files["alerting/evalterm-rules.yaml"]["groups"][0]
    assert group["folder"] == "评价器" and len(group["rules"]) == 5
    assert all("folderUID" not in r for r in group["rules"])
    mute = files["alerting/evalterm-mute-timings.yaml"]["muteTimes"][0]["time_intervals"][1]
    assert [(t["start_time"], t["end_time"]) for t in mute["times"]] == [
        ("00:00", "08:30"), ("12:00", "13:30"), ("17:30", "24:00")]
    routes = files["alerting/evalterm-policies.yaml"]["policies"][0]["routes"]
    assert routes[0]["mute_time_intervals"] == ["evalterm-closed-hours"]
    ds = files["datasources/evalterm-influxdb.yaml"]["datasources"][0]
    assert (ds["uid"], ds["jsonData"]["dbName"]) == ("evalterm-influxdb", "evalterm")


def test_datasource_for_influxdb_2_and_3() -> None:
    from collector.config import load_config
    from collector.grafana.export import datasource

    cfg = load_config(None, env={}).with_overrides(influx__version=2, influx__bucket="halls",
                                                   influx__org="o", influx__token="t")
    ds = datasource(cfg)
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["jsonData"]["dbName"] == "halls"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${EVALTERM_INFLUX_TOKEN}"


# -- deploy against a recording server --------------------------------------------------------


class _Grafana(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, Any, dict[str, str]]]
    existing: set[str]

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((method, self.path, body, dict(self.headers)))
        path = self.path.split("?")[0]
        if method == "GET" and path not in self.existing and "contact-points" not in path:
            code, out = 404, {"message": "not found"}
        elif method == "GET" and "contact-points" in path:
            code, out = 200, []
        else:
            code, out = 200, {"status": "success", "uid": "x"}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def log_message(self, *_a: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[tuple[str, type[_Grafana]]]:
    handler = type("Handler", (_Grafana,), {"calls": [], "existing": {"/api/folders/evalterm"}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def test_deploy_pushes_everything_in_order(grafana: tuple[str, type[_Grafana]],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, handler = grafana
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_test_token")
    assert main(["grafana", "deploy", "--url", url]) == 0
    calls = [(m, p) for m, p, _, _ in handler.calls]
    assert calls[:3] == [("GET", "/api/datasources/uid/evalterm-influxdb"),
                         ("POST", "/api/datasources"), ("GET", "/api/folders/evalterm")]
    assert ("PUT", "/api/folders/evalterm") in calls          # existed: updated
    assert ("POST", "/api/folders") in calls                  # evalterm-en: created
    saved = [b["dashboard"]["uid"] for m, p, b, _ in handler.calls if p == "/api/dashboards/db"]
    assert sorted(saved) == sorted(d["uid"] for lang in ("zh", "en")
                                   for d in dashboards(lang).values())
    for _m, p, b, _ in handler.calls:
        if p == "/api/dashboards/db":
            assert b["overwrite"] and b["folderUid"] in ("evalterm", "evalterm-en")
    group = next(b for m, p, b, _ in handler.calls
                 if p == "/api/v1/provisioning/folder/evalterm/rule-groups/evalterm")
    assert group["interval"] == 60 and {r["uid"] for r in group["rules"]} == {
        "evalterm-window-flagged", "evalterm-device-offline", "evalterm-bad-surge",
        "evalterm-outbox-growing", "evalterm-cases-overdue"}
    assert ("POST", "/api/v1/provisioning/contact-points") in calls
    assert ("POST", "/api/v1/provisioning/mute-timings") in calls
    assert calls[-1] == ("PUT", "/api/v1/provisioning/policies")
    # Everything that refers to the datasource or a folder comes after them.
    assert calls.index(("POST", "/api/datasources")) < calls.index(("POST", "/api/dashboards/db"))
    assert all(h.get("Authorization") == "Bearer glsa_test_token" for *_, h in handler.calls)
    assert "notification policy tree: saved" in capsys.readouterr().out


def test_deploy_reports_a_refusing_grafana(grafana: tuple[str, type[_Grafana]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    from collector.grafana.deploy import deploy

    url, handler = grafana
    handler.existing = {"/api/datasources/uid/evalterm-influxdb"}
    handler.do_PUT = lambda self: self._answer("GET")  # type: ignore[method-assign]  # PUT -> 404
    with pytest.raises(GrafanaClientError):
        deploy(GrafanaApi.from_url(url), report=lambda _m: None)
