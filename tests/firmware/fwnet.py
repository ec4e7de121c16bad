"""Network fakes (Wi-Fi, socket, MQTT client and broker) for the link and device tests."""

import json

from fwfakes import heap_sample, tmpdir


class FakeWLAN:
    def __init__(self, up=True):
        self.up = up
        self.joins = 0

    def isconnected(self):
        return self.up

    def connect(self, ssid, password):
        self.joins += 1

    def status(self, what=None):
        return -61 if what == "rssi" else 1010


class Broker:
    """What a fake broker received, shared by every FakeClient it hands out.

    Published messages go to a log file, as a broker's own storage: under MicroPython the
    firmware, the device and these fakes share 64 KiB, and keeping every payload in RAM
    would be the broker's memory counted as the device's. `each()` reads it back, one
    message at a time."""

    def __init__(self):
        self._log = tmpdir() + "published"
        self.count = 0  # messages published
        # The last connection's will and subscriptions only (the device connects with a
        # clean session): a list of every connection's would grow with every (re)boot of
        # a whole-device test, the broker's memory counted as the device's (0.5 KiB each).
        self.will = None
        self.subs = []
        self.up = True
        self.fail_after = None  # publishes accepted before the connection breaks
        self.pending_in = []  # (topic, payload) to deliver on the next check_msg
        self.clients = 0
        self.pings = 0
        self.tls = None  # the last connection's TLS context (etfw.tls.Pinned) or None

    def factory(self, client_id, server, port, user, password, keepalive, tls=None):
        self.clients += 1
        self.tls = tls
        return FakeClient(self)

    def each(self):
        """(topic bytes, payload bytes, retain) of every message published, in order."""
        if not self.count:
            return
        with open(self._log, "rb") as f:
            for _ in range(self.count):
                r, tlen, plen = [int(x) for x in f.readline().split()]
                yield f.read(tlen), f.read(plen), r == 1

    def payloads(self, kind):
        end = b"/" + kind.encode()
        return [p for t, p, r in self.each() if t.endswith(end)]

    def messages(self, kind):
        end = b"/" + kind.encode()  # one list, not a list of payloads first
        return [json.loads(p) for t, p, r in self.each() if t.endswith(end)]


class FakeClient:
    """umqtt.simple's API, and its own socket once connected (`sock`: the link sets options
    on it, wraps it and closes it): one class less on the heap."""

    def __init__(self, broker):
        self.b = broker
        self.sock = None
        self.cb = None
        self.will = None
        self.closed = False
        self.opts = []
        self.timeout = None

    def set_callback(self, cb):
        self.cb = cb

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (topic, msg, retain, qos)

    def connect(self, clean_session=True):
        if not self.b.up:
            raise OSError(111)
        self.sock = self
        self.b.will = self.will
        self.b.subs = []
        return 0

    def _check(self):
        """Raises as a dead connection does; then delivers the commands that arrived."""
        b = self.b
        raw = getattr(self.sock, "_s", self.sock)  # the link wraps the socket
        if not b.up or raw is None or raw.closed:
            raise OSError(104)
        while b.pending_in:
            t, p = b.pending_in.pop(0)
            self.cb(t, p)

    def subscribe(self, topic, qos=0):
        self._check()
        self.b.subs.append((topic, qos))

    def publish(self, topic, msg, retain=False, qos=0):
        self._check()  # commands may arrive while waiting for the PUBACK
        b = self.b
        if b.fail_after is not None:
            if b.fail_after <= 0:
                b.up = False
                raise OSError(104)
            b.fail_after -= 1
        heap_sample()
        if not retain and not topic.endswith(b"/status"):
            # The collector's part: a signed receipt for every rating and event received
            # (docs/protocol.md 5.1), delivered with the next check_msg.
            from etfw.sign import Signer
            from fwfakes import KEY

            ident = []
            for name in (b'"boot":', b',"seq":'):
                i = j = msg.find(name) + len(name)
                while j < len(msg) and 48 <= msg[j] <= 57:
                    j += 1
                ident.append(int(msg[i:j]))
            t = topic[:topic.rfind(b"/") + 1] + b"cmd"
            body = b'{"v":1,"kind":"receipt","boot":%d,"seqs":[%d],"ts":1}' % tuple(ident)
            b.pending_in.append((t, body[:-1] + b',"sig":"' + Signer(KEY).hexmac(t, body)
                                 + b'"}'))
        with open(b._log, "ab") as f:
            f.write(b"%d %d %d\n" % (1 if retain else 0, len(topic), len(msg)))
            f.write(topic)
            f.write(msg)
        b.count += 1

    def check_msg(self):
        heap_sample()
        self._check()

    def ping(self):
        self._check()
        self.b.pings += 1

    # --- the socket ---

    def setsockopt(self, level, opt, val):
        self.opts.append((level, opt, val))

    def settimeout(self, t):
        self.timeout = t

    def close(self):
        self.closed = True
