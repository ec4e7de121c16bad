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

import contextlib
import struct
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedClient"]

_CHUNK = 65536
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id (as paho's own)


class BufferedClient(mqtt.Client):
    _deferring: int | None = None  # the thread inside wakeups_deferred(), if any

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

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge these QoS 1 messages (manual ack) in one packet write.

        paho's `ack` queues one 4-byte PUBACK per message, each with a wake-up of the network
        thread and a `send` of its own. After a committed batch the acknowledgements go out
        together: the same PUBACKs (MQTT allows several control packets in one write), one
        queue entry, one wake-up, one `send`.
        """
        if mids:
            packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)

    # paho wakes its network thread for every packet queued from another thread: one byte written
    # to a socket pair, `_sockpairW`. That write releases the interpreter lock, and the network
    # thread, woken, takes it and sends that one packet. Within wakeups_deferred() the calling
    # thread sees no socket pair (paho then skips the byte); every other thread, paho's own
    # included, sees the real one, so a reconnect replacing it is never disturbed.
    @property  # type: ignore[override]
    def _sockpairW(self) -> Any:
        return None if self._deferring == threading.get_ident() else self._wakeup_sock

    @_sockpairW.setter
    def _sockpairW(self, sock: Any) -> None:
        self._wakeup_sock = sock

    @contextlib.contextmanager
    def wakeups_deferred(self) -> Iterator[None]:
        """Queue packets (publish, ack) from this thread with one wake-up of the network thread
        at the end instead of one per packet. One thread at a time."""
        self._deferring = threading.get_ident()
        try:
            yield
        finally:
            self._deferring = None
            sock = self._wakeup_sock
            if sock is not None:
                with contextlib.suppress(OSError):  # full: it is awake; closed: a reconnect
                    sock.send(b"0")

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet."""
        return len(self._rbuf) - self._rpos if self._rsock is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already in our buffer: handle them all before going back.
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self.buffered():
            rc = super().loop_read(max_packets)
        return rc
