"""The collector's own counters, exposed on /metrics in the Prometheus text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Metrics"]


class Metrics:
    """One registry per collector instance, so tests can run several side by side."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("evalterm_received", "Inbound messages by kind", ["kind"],
                                registry=r)
        self.linked = Counter("evalterm_linked", "Ratings linked to a transaction", registry=r)
        self.unlinked = Counter(
            "evalterm_unlinked", "Ratings stored unlinked, by reason", ["reason"], registry=r
        )
        self.rejected = Counter(
            "evalterm_rejected", "Inbound messages refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "evalterm_feed_duplicates", "Feed messages whose event id was already processed",
            registry=r,
        )
        self.dead_letters = Counter(
            "evalterm_dead_letters", "Messages whose processing failed unexpectedly (kept)",
            registry=r,
        )
        self.unrated = Counter(
            "evalterm_unrated", "Transactions whose rating window expired unrated", registry=r
        )
        self.invites = Counter("evalterm_invites", "Invitations queued for devices", registry=r)
        self.commands_sent = Counter(
            "evalterm_commands_acked", "Commands acknowledged by the broker", registry=r
        )
        self.receipts_sent = Counter(
            "evalterm_receipts", "Receipts published to devices (each names the committed "
            "messages of one device boot, docs/protocol.md 5.1)", registry=r,
        )
        self.held = Gauge("evalterm_held_ratings", "Ratings waiting for their transaction",
                          registry=r)
        self.stalls = Counter(
            "evalterm_ingest_stalls", "Ingest batches that could not be committed (retried, "
            "not acknowledged meanwhile), e.g. the state database is full", registry=r,
        )
        self.batches = Counter("evalterm_batches", "Committed ingest batches", registry=r)
        self.mqtt_connected = Gauge(
            "evalterm_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.feed_inflight = Gauge(
            "evalterm_http_feed_inflight", "Webhook requests in progress (reading the body or "
            "waiting for the commit)", registry=r,
        )
        self.feed_busy = Counter(
            "evalterm_http_feed_busy", "Webhook requests answered 503 because [http] "
            "max_feed_requests were in progress (the sender retries)", registry=r,
        )
