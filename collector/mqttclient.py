"""paho's MQTT client, reading the socket in large chunks.

paho (2.x) reads every packet with three or more `recv` calls: one byte of command, the
remaining-length bytes one at a time, then the rest, and it handles one packet per `select`.
Each call releases and re-acquires the interpreter lock, so while the ingest worker runs, the
network thread waits for the lock several times per message (the "convoy effect"): under load
the collector spent more time there than in its own work. This subclass serves paho's small reads
from a buffer filled by one `recv` of up to 64 KiB, and lets paho handle every complete packet
in the buffer before it goes back to `select`. The packet logic itself stays paho's.

It overrides paho's `_sock_recv`, a private method: paho's version is pinned in pyproject.toml,
and tests/test_mqttclient.py checks the behaviour against a real broker.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedClient"]

_CHUNK = 65536


class BufferedClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None  # the socket the buffered bytes came from

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: bytes of the old one mean nothing
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(max(bufsize, _CHUNK))  # may raise BlockingIOError
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(len(self._rbuf), start + bufsize)
        return self._rbuf[start:self._rpos]

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet."""
        return len(self._rbuf) - self._rpos if self._rsock is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already in our buffer: handle them all before going back.
        while (rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None
               and self.buffered()):
            rc = super().loop_read(max_packets)
        return rc
