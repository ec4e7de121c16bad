"""The MQTT side of an update: signed commands out, chunk requests in, chunks out, the devices'
events and status in. One paho connection of its own (MQTT 3.1.1, clean session, client id
`<collector client id>-ota`), so `evalterm device update` runs next to the collector service.

Everything inbound is checked before it counts: event and status messages go through the
protocol's own checks (`open_device_message`: registry, place, signature, schema); a chunk
request must be signed by the device's key and name this update, a file of it and an offset
inside that file. Refused messages are counted (`rejected`) and logged, never answered.

Chunk (collector -> device, on the device's cmd topic, binary, not signed: every file is
checked against the signed manifest): 0xE7, update id u32, file u8, offset u32 (little
endian), then up to `n` bytes of the file.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Config
from collector.errors import ServiceUnavailable
from collector.ota import OtaError
from collector.ota.image import CHUNK_MAX, Image
from collector.protocol import (
    ProtocolError,
    command_message,
    device_topic,
    open_device_message,
    verify,
)
from collector.registry import Device

__all__ = ["CHUNK_MAGIC", "OtaServer", "chunk_payload"]

_LOG = logging.getLogger(__name__)
CHUNK_MAGIC = 0xE7
_HDR = struct.Struct("<BIBI")


def chunk_payload(update_id: int, index: int, offset: int, data: bytes) -> bytes:
    return _HDR.pack(CHUNK_MAGIC, update_id, index, offset) + data


class OtaServer:
    def __init__(self, cfg: Config, devices: list[Device], image: Image, update_id: int,
                 next_cseq: Callable[[str], int], now_ms: Callable[[], int],
                 user: str | None = None, password: str = "") -> None:
        """`user`/`password`: the broker user of the update (`ota` on a broker rendered by
        `evalterm broker render`); None: the collector's own, for a broker without users."""
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.devices = {d.device: d for d in devices}
        self.image = image
        self.update_id = update_id
        self._next_cseq = next_cseq
        self._now = now_ms
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.rejected = 0
        self._connected = threading.Event()
        m = cfg.mqtt
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"{m.client_id}-ota", clean_session=True,
                                   protocol=mqtt.MQTTv311)
        if user:
            self._client.username_pw_set(user, password or None)
        elif m.username:
            # A broker that binds client ids to user names would hand this connection the
            # collector's session and drop the collector: the update needs a user of its own.
            raise OtaError(f"the broker has users ([mqtt] username {m.username!r}): give the "
                           "update its own, --mqtt-user ota --mqtt-password-file FILE (the ota "
                           "line of `evalterm broker render`'s service-users)")
        if m.tls_ca_file:
            self._client.tls_set(ca_certs=m.tls_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # Back within seconds of a broker restart (paho's default waits up to 120 s): what
        # devices send while this clean session is away is not kept for it.
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic,
                                                                      bytes(msg.payload)))

    # --- connection ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOG.error("broker refused the update's connection: %s", reason)
            return
        subs = []
        for d in self.devices.values():
            for kind in ("ota", "event", "status"):
                subs.append((device_topic(self.prefix, d.hall, d.window, d.device, kind), 1))
        client.subscribe(subs)
        self._connected.set()

    def start(self, timeout_s: float = 10) -> None:
        m = self.cfg.mqtt
        try:
            self._client.connect(m.host, m.port, keepalive=m.keepalive_s)
        except OSError as exc:
            raise ServiceUnavailable(f"broker {m.host}:{m.port} unreachable ({exc}); start it or "
                                     "fix [mqtt] in the config") from None
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise ServiceUnavailable(f"broker {m.host}:{m.port} did not accept the update's "
                                     "connection (credentials, ACL?)")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # --- out ------------------------------------------------------------------------------------

    def _cmd_topic(self, d: Device) -> str:
        return device_topic(self.prefix, d.hall, d.window, d.device, "cmd")

    def send_update(self, d: Device, wait_s: int) -> None:
        topic = self._cmd_topic(d)
        img = self.image
        self._client.publish(topic, command_message(
            d.key, topic, cmd="update", cseq=self._next_cseq(d.device), ts=self._now(),
            id=self.update_id, ver=img.version, size=len(img.manifest), sha=img.manifest_sha,
            wait=wait_s), qos=1)

    def send_confirm(self, d: Device, wait_s: int) -> None:
        """The confirmation: any signed command confirms a slot on trial; this one is the
        same update again (to the version the device now runs, so it changes nothing)."""
        self.send_update(d, wait_s)

    # --- in -------------------------------------------------------------------------------------

    def _reject(self, topic: str, why: str) -> None:
        self.rejected += 1
        _LOG.warning("update: refused a message on %s: %s", topic, why)

    def handle(self, topic: str, payload: bytes) -> tuple[str, str, Any] | None:
        """One inbound message, checked: ("status", device, state), ("event", device, (type,
        data)) or ("request", device, bytes served); None when refused or not ours."""
        if topic.endswith("/ota"):
            return self._request(topic, payload)
        try:
            where, msg = open_device_message(self.prefix, topic, payload, self.devices.get)
        except ProtocolError as exc:
            self._reject(topic, exc.reason.value + ": " + exc.detail)
            return None
        if where.kind == "status":
            return ("status", where.device, msg["state"])
        if where.kind == "event":
            return ("event", where.device, (msg["type"], msg["data"]))
        return None

    def _request(self, topic: str, payload: bytes) -> tuple[str, str, Any] | None:
        parts = topic.split("/")
        dev = self.devices.get(parts[-2]) if len(parts) >= 5 else None
        if dev is None or topic != device_topic(self.prefix, dev.hall, dev.window, dev.device,
                                                "ota"):
            self._reject(topic, "not a device of this update")
            return None
        if len(payload) > 256 or not verify(dev.key, topic, payload):
            self._reject(topic, "bad_signature: chunk request does not verify")
            return None
        try:
            req = json.loads(payload)
            uid, f, o, n = req["id"], req["f"], req["o"], req["n"]
        except (ValueError, KeyError, TypeError):
            self._reject(topic, "malformed chunk request")
            return None
        nfiles = len(self.image.files)
        if not all(type(x) is int for x in (uid, f, o, n)) or uid != self.update_id \
                or not 0 <= f <= nfiles or not 1 <= n <= CHUNK_MAX:
            self._reject(topic, f"chunk request outside this update: {payload[:80]!r}")
            return None
        data = self.image.file(f)
        if not 0 <= o < len(data):
            self._reject(topic, f"chunk request offset {o} outside file {f}")
            return None
        piece = data[o:o + n]
        self._client.publish(self._cmd_topic(dev), chunk_payload(uid, f, o, piece), qos=0)
        return ("request", dev.device, len(piece))
