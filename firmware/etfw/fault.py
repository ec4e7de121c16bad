"""A device whose config is invalid but whose link part is usable (config.ConfigError.link:
identity, key, Wi-Fi and broker all valid): it connects, publishes a signed `config_error`
event (docs/protocol.md section 4.2) after every connect, shows the error, and rates
nothing. Loaded only on that path: a working device never imports this module.

The boot counter is advanced and stored first, as in app.Device: these messages are signed
with (dev, boot, seq) too. Commands are read (so the broker does not queue them) and dropped.
"""

from . import FW_VERSION
from .clock import Clock, ticks_ms
from .link import Link
from .message import Messages
from .store import Store

DETAIL_MAX = 400  # characters of the problem list in the event (a message is <= 1024 bytes)


def clean_detail(detail: str) -> str:
    """At most DETAIL_MAX characters of printable ASCII, anything else as '?' (a config value
    quoted in a problem may be anything). JSON then writes it byte for byte, so the event's
    size is known in advance: well under the 1024-byte limit, no retry."""
    n = min(len(detail), DETAIL_MAX)
    out = bytearray(n)  # no copy of the (possibly long) detail is made
    i = 0
    for ch in detail:
        if i == n:
            break
        c = ord(ch)
        out[i] = c if 32 <= c < 127 and c != 34 and c != 92 else 63  # not '"' nor '\\'
        i += 1
    return str(out, "ascii")


class _NoOutbox:
    """Nothing is kept on flash in this mode: the event is sent again after a reconnect."""

    unconfirmed = start = wait = 0

    def peek(self, k: int = 0):
        return None


class ConfigFault:
    def __init__(self, link: dict, detail: str, ui, fs, wlan, factory, data_dir: str = "",
                 rand=None, wdt=None, ticks=ticks_ms) -> None:
        self.clock = Clock(ticks)
        self._wdt = wdt
        self.store = Store(fs, data_dir + "state")
        st = self.store.load()
        self.boot = st.get("boot", 0) + 1
        st["boot"] = self.boot  # press counters and discards stay as they were
        self.store.save(st)
        b = link["broker"]
        self.msgs = Messages(b["topic_prefix"], link["hall"], link["window"], link["device"],
                             link["key_bytes"], self.boot, self.clock)
        self.link = Link(b, link["wifi"], link["device"], (self.msgs.t_status, self.msgs.t_cmd),
                         wlan, factory, self._status, rand or (lambda n: 0))
        self.detail = clean_detail(detail)
        self.ui = ui
        self.sent = 0  # config_error events published
        self._sent_at = 0  # link.connects when the last one went out
        self._none = _NoOutbox()
        if ui is not None:
            ui.show("error", 0, detail)

    def _status(self, state: str) -> bytes:
        return self.msgs.status(state, FW_VERSION)

    def event(self) -> bytes:
        """The signed config_error event."""
        return self.msgs.event("config_error", {"detail": self.detail})

    def step(self) -> None:
        now = self.clock.up()
        if self._wdt is not None:
            self._wdt.feed()
        ln = self.link
        ln.poll(now, self._none)
        ln.inbox.clear()  # no commands while misconfigured
        if ln.up and self._sent_at != ln.connects:
            if ln.send(now, self.msgs.t_event, self.event()):
                self._sent_at = ln.connects
                self.sent += 1
        if self.ui is not None:
            self.ui.tick(now)

    def run(self, sleep_ms, should_stop=None) -> None:
        while should_stop is None or not should_stop():
            self.step()
            sleep_ms(50)
