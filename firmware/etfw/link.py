"""Wi-Fi + MQTT with the umqtt.simple API, and ONE reconnect path.

Every network fault, whatever its type (OSError from the socket, MQTTException, the
assertions and IndexErrors umqtt.simple raises on a short read), ends in `_drop()`, which
is safe to call twice: it closes the socket and schedules the next attempt with exponential
back-off and jitter. `poll()` is called from the main loop and never blocks for longer than
the socket timeout; the watchdog period must be larger than that (see app.py).

The outbox drains in order, one record per poll, each published with QoS 1; the PUBACK only
paces the sending. A record is retired when the collector's receipt for it arrives (a
command-topic message the app hands to the outbox), at most _WINDOW wait for theirs at a
time, and every connect sends the unconfirmed ones again from the oldest (a long wait
without a receipt on one connection does the same, `next`). Commands and receipts
arriving while umqtt waits for a PUBACK are only queued here; the app handles them between
polls, so nothing re-enters the client.
"""

import gc

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)  # the same value on Linux and lwIP
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_INBOX = const(4)  # commands queued between polls; more are dropped (and counted)
_WINDOW = const(8)  # outbox records published and waiting for their receipt, at most
_RESEND_MS = const(30000)  # no receipt for this long: send the unconfirmed ones again...
_RESEND_MAX_MS = const(480000)  # ...doubling the wait up to this while none comes
# (a receipt dropped here costs a resend, not a rating: the record stays until one comes)


class _TimedSocket:
    """umqtt.simple turns the socket fully blocking after every read; a dead peer would then
    hang a PUBACK wait forever. This wrapper turns "blocking" into "blocking with timeout"."""

    def __init__(self, sock, timeout_s: int, raw=None) -> None:
        """`raw`: the TCP socket under a TLS socket `sock` (which has no settimeout)."""
        self._s = sock
        self._raw = raw or sock
        self._t = timeout_s
        self._raw.settimeout(timeout_s)

    def setblocking(self, flag: bool) -> None:
        if flag:
            self._raw.settimeout(self._t)
        else:
            self._raw.setblocking(False)

    def read(self, n: int):
        return self._s.read(n)

    def write(self, buf, n: int = -1):
        if n < 0:
            return self._s.write(buf)
        return self._s.write(buf, n)

    def close(self) -> None:
        self._s.close()


def umqtt_factory(client_id, server, port, user, password, keepalive, tls=None):
    """The real client: umqtt.simple, frozen into the stock ESP32 image. `tls`: the pinned
    context (etfw.tls.Pinned) or None for plain TCP. The current umqtt.simple (the ESP32 image's)
    wraps its socket with ssl.wrap_socket(sock, server_hostname=server); the old one on PyPI
    (1.3.x) calls the `ussl` module's wrap_socket(sock, **ssl_params) instead, which is given
    the context and the host name here."""
    from umqtt.simple import MQTTClient

    if tls is None:
        return MQTTClient(client_id, server, port=port, user=user, password=password,
                          keepalive=keepalive)
    c = MQTTClient(client_id, server, port=port, user=user, password=password,
                   keepalive=keepalive, ssl=tls)
    if hasattr(c, "ssl_params"):  # umqtt.simple 1.3.x
        c.ssl_params = {"context": tls, "server_hostname": server}
    return c


class Link:
    def __init__(self, broker: dict, wifi: dict, client_id: str, topics, wlan,
                 factory, status, rand) -> None:
        """topics: (status, cmd) as bytes; status(state) -> signed status payload;
        rand(n) -> int in [0, n) for the jitter."""
        self._b = broker
        self._wifi = wifi
        self._id = client_id
        self._t_status, self._t_cmd = topics
        self._wlan = wlan
        self._factory = factory
        self._status = status
        self._rand = rand
        self.client = None
        self.up = False  # connected: client set and the connect sequence done
        self._attempt = 0
        self._next_try = 0
        self._last_tx = 0
        self._joining = False
        self.inbox = []
        self.connects = 0
        self.reconnects = 0  # connects after the first
        self.failures = 0
        self.drops_inbox = 0
        self.published = 0
        self.last_error = ""
        self.tls_failures = 0  # connects that failed in TLS (certificate refused, CA file)
        self._tls_note = ""  # why the TLS part of this connect failed, for last_error

    def backoff_ms(self, attempt: int) -> int:
        """Exponential back-off with "equal jitter": half fixed, half random."""
        d = _BACKOFF_MIN_MS << min(attempt, 6)
        if d > _BACKOFF_MAX_MS:
            d = _BACKOFF_MAX_MS
        half = d // 2
        return half + self._rand(half + 1)

    def _on_msg(self, topic, msg) -> None:
        # Called from inside umqtt (possibly during a publish): queue only.
        if len(self.inbox) < _INBOX:
            self.inbox.append((bytes(topic), bytes(msg)))
        else:
            self.drops_inbox += 1

    def _drop(self, now: int, err) -> None:
        """THE reconnect path. Safe to call twice."""
        c = self.client
        self.client = None
        self.up = False
        if c is not None:
            try:
                c.sock.close()
            except Exception:  # already closed or never opened
                pass
        self.failures += 1
        self.last_error = self._tls_note or repr(err)[:60]
        self._tls_note = ""
        self._next_try = now + self.backoff_ms(self._attempt)
        self._attempt += 1

    def _connect(self, now: int) -> None:
        w = self._wlan
        if not w.isconnected():
            if not self._joining:
                self._joining = True
                w.connect(self._wifi["ssid"], self._wifi["password"])
            raise OSError("wifi not connected")
        self._joining = False
        b = self._b
        cas = b.get("tls")
        tls = None
        if cas:
            # A TLS connect needs a few contiguous KiB (mbedTLS's buffers and the parsed CAs,
            # on the MicroPython heap of the unix port): collect first so that what the last
            # failed attempt left is freed and merged, not fragmenting the next one.
            gc.collect()
            tls = self._tls(cas)
            c = self._factory(self._id, b["host"], b["port"], b["user"], b["password"],
                              b["keepalive"], tls)
        else:
            c = self._factory(self._id, b["host"], b["port"], b["user"], b["password"],
                              b["keepalive"])
        self.client = c  # so that _drop() closes it if anything below fails
        c.set_callback(self._on_msg)
        # The last will is signed now, with its own seq (protocol §4.3).
        c.set_last_will(self._t_status, self._status("offline"), True, 1)
        try:
            c.connect(True)
        except ValueError as e:
            # mbedTLS reports a refused certificate (wrong CA, wrong host name, expired) as
            # ValueError with its reason; the plain socket errors are OSError.
            if cas:
                self.tls_failures += 1
                self._tls_note = ("tls: " + str(e).strip())[:80]
            raise
        raw = c.sock if tls is None or tls.raw is None else tls.raw
        try:
            raw.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)  # small messages, no Nagle delay
        except (OSError, AttributeError, TypeError):
            pass  # not every lwIP build has it; latency only
        c.sock = _TimedSocket(c.sock, b["timeout_s"], raw)
        c.subscribe(self._t_cmd, 1)
        c.publish(self._t_status, self._status("online"), True, 1)
        self._attempt = 0
        self._last_tx = now
        self.connects += 1
        self.reconnects = self.connects - 1
        self.up = True

    def _tls(self, cas):
        """The context pinning the CAs `cas` (file names), made for this connect."""
        from .tls import Pinned

        try:
            return Pinned(cas)
        except (OSError, ValueError) as e:
            self.tls_failures += 1
            self._tls_note = ("tls: CA file: " + str(e))[:80]
            raise

    def poll(self, now: int, outbox) -> None:
        """One step: connect when due, else read commands, send one record, keep alive."""
        if self.client is None:
            if now < self._next_try:
                return
            try:
                self._connect(now)
            except Exception as e:  # every failure takes the one path
                self._drop(now, e)
                return
            outbox.unconfirmed = 0  # what has no receipt yet goes again, oldest first
            return
        c = self.client
        try:
            if not self._wlan.isconnected():
                raise OSError("wifi lost")
            c.check_msg()
            rec = self.next(now, outbox)
            if rec is not None:
                c.publish(rec[1], rec[2], False, 1)  # returns after the PUBACK, and the
                self.published += 1  # record stays until the collector's receipt
                self._last_tx = now
            elif now - self._last_tx >= self._b["keepalive"] * 500:
                c.ping()
                self._last_tx = now
        except Exception as e:
            self._drop(now, e)

    def next(self, now: int, ob):
        """(id, topic, payload) of the next record of outbox `ob` to publish, or None: none
        left, or _WINDOW records wait for their receipt (ob.unconfirmed: the first ones of
        its FIFO). The record counts as published from now (if publishing fails, the
        connection is gone, and every connect sets ob.unconfirmed to 0: all go again).

        ob.start is when the wait for a receipt began: the first publish into an empty
        window, or the last receipt (receipt.check, which also sets ob.wait back to 0). No
        receipt for ob.wait: all are sent again, and the next wait is twice as long (up to
        _RESEND_MAX_MS)."""
        wait = ob.wait or _RESEND_MS
        if ob.unconfirmed and now - ob.start >= wait:
            ob.wait = min(2 * wait, _RESEND_MAX_MS)
            ob.unconfirmed = 0
        if ob.unconfirmed >= _WINDOW:
            return None
        rec = ob.peek(ob.unconfirmed)
        if rec is not None:
            if not ob.unconfirmed:
                ob.start = now
            ob.unconfirmed += 1
        return rec

    def send(self, now: int, topic: bytes, payload: bytes) -> bool:
        """Publish a message that is not kept on flash (heartbeats); False if offline."""
        c = self.client
        if c is None:
            return False
        try:
            c.publish(topic, payload, False, 1)
            self._last_tx = now
            return True
        except Exception as e:
            self._drop(now, e)
            return False
