"""The running service's parts and their health: one rule for /healthz and for the metric.

The service (collector/service.py) says, for each part it runs, whether it works and, when it
does not, why; this module turns that list into the /healthz document and the Prometheus gauge
`evalterm_part_up{part=...}`, so the two can never disagree. A part that is switched off by the
configuration (the detector with `[detection] enabled = false`) is reported as "off" and does not
make the service degraded; it has no `evalterm_part_up` series.

The rule: the service is "ok" when every part that is on is up, else "degraded". /healthz answers
200 when ok and 503 when degraded (a load balancer or systemd watchdog reads the code; a person or
Prometheus reads the document), with each part's state and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as MetricsCollector

__all__ = ["Part", "PartsMetrics", "health_document"]


@dataclass(frozen=True)
class Part:
    """One part of the service: `up` when it works; `reason` says why not (safe to show)."""

    name: str
    up: bool
    reason: str = ""
    on: bool = True  # False: switched off by the configuration

    @property
    def state(self) -> str:
        return "off" if not self.on else "up" if self.up else "down"


def health_document(parts: Sequence[Part], details: Mapping[str, Any]) -> dict[str, Any]:
    """{"status": "ok" | "degraded", "parts": {name: {"state", "reason"}}, **details}."""
    degraded = [p for p in parts if p.on and not p.up]
    return {
        "status": "degraded" if degraded else "ok",
        "parts": {p.name: {"state": p.state, "reason": p.reason} for p in parts},
        **details,
    }


class PartsMetrics(MetricsCollector):
    """`evalterm_part_up{part}` (1 up, 0 down) read from the service at scrape time."""

    def __init__(self, parts: Callable[[], Sequence[Part]]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("evalterm_part_up", "1 while a part of the service works, 0 "
                                  "while it does not (/healthz says why)", labels=["part"])
        for p in self._parts():
            if p.on:
                gauge.add_metric([p.name], 1.0 if p.up else 0.0)
        yield gauge
