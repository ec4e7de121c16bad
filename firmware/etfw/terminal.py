"""The rating state machine. Pure: times come in as arguments (uptime ms), decisions go out
through two injected objects, so every transition is testable without hardware.

    sink.hold(level, txn, rt, mode)             a 1-2 rating now waiting for its reason: kept
                                                on flash (as if its reason were "none") so
                                                that a power cut cannot lose it
    sink.rating(level, txn, reason, rt, mode)   a rating to sign and store (for a 1-2 rating,
                                                in place of the one held)
    sink.event(type, data)                      a protocol event
    ui.show(state, now, info)                   what the citizen sees
    ui.preview(key, now, reason)                confirm mode: the key pressed, read out and
                                                shown before it counts

Confirm mode (confirm_ms > 0, for windows serving visually impaired citizens): the first
press of a key during an invitation or the reason step only reads it out (ui.preview); the
same key again within confirm_ms commits it, another key is read out instead, and silence
for confirm_ms forgets it (the invitation or the reason step goes on as before).

States: idle -> invited -> (reason ->) thanks -> idle, and paused. A key press outside an
invitation is never a rating (stand-alone mode excepted): it is counted and reported.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = int

IDLE = "idle"
INVITED = "invited"
REASON = "reason"
THANKS = "thanks"
PAUSED = "paused"

# How often a key_uninvited event may be stored: a key hammered outside an invitation
# must not fill the outbox and push real ratings out. Every press is still counted.
_UNINVITED_EVENT_GAP_MS = const(1000)


class Terminal:
    def __init__(self, sink, ui, standalone: bool = False, min_interval_ms: int = 5000,
                 reason_ms: int = 20000, thanks_ms: int = 3000,
                 reason_keys=("attitude", "efficiency", "notice", "wait", "other"),
                 confirm_ms: int = 0) -> None:
        self._sink = sink
        self._ui = ui
        self.standalone = standalone
        self.min_interval_ms = min_interval_ms
        self.reason_ms = reason_ms
        self.thanks_ms = thanks_ms
        self.reason_keys = tuple(reason_keys)
        self.state = IDLE
        self.invite = None  # the invite command being shown
        self._shown_at = 0
        self._expires_at = 0
        self._pending = None  # (level, txn, rt, mode) waiting for a reason tag
        self._until = 0  # end of the reason prompt or of the thanks screen
        self._last_accept = None
        self._last_uninvited_event = None
        self.uninvited = 0
        self.filtered = 0  # stand-alone presses inside the repeat interval
        self.refused_invites = 0  # invites while paused
        self.confirm_ms = confirm_ms
        self._armed = 0  # confirm mode: the key read out, waiting for its second press
        self._armed_until = 0

    def start(self, now: int) -> None:
        self._ui.show(IDLE, now, None)

    def _go(self, state: str, now: int, info=None) -> None:
        self.state = state
        self._armed = 0
        self._ui.show(state, now, info)

    def _rate(self, level: int, txn, reason, rt, mode: str, now: int) -> None:
        self._sink.rating(level, txn, reason, rt, mode)
        self._last_accept = now
        self._until = now + self.thanks_ms
        self._go(THANKS, now, level)

    def _flush_pending(self, now: int) -> None:
        # A 1-2 rating waiting for its reason is never lost to a command: it is stored with
        # "none" now (and a power cut meanwhile cannot lose it either: see sink.hold).
        p = self._pending
        if p is not None:
            self._pending = None
            self._sink.rating(p[0], p[1], "none", p[2], p[3])
            self._last_accept = now

    def _uninvited(self, key: int, now: int) -> None:
        self.uninvited += 1
        last = self._last_uninvited_event
        if last is None or now - last >= _UNINVITED_EVENT_GAP_MS:
            self._last_uninvited_event = now
            self._sink.event("key_uninvited", {"key": key, "state": self.state})

    def _accept_level(self, level: int, txn, rt, mode: str, now: int) -> None:
        if level <= 2:
            self._pending = (level, txn, rt, mode)
            self._sink.hold(level, txn, rt, mode)
            self._until = now + self.reason_ms
            self._go(REASON, now, self.reason_keys)
        else:
            self._rate(level, txn, None, rt, mode, now)

    # --- inputs ---------------------------------------------------------------------------

    def press(self, key: int, now: int) -> None:
        """A debounced key press (1..5)."""
        st = self.state
        if self.confirm_ms and st in (INVITED, REASON) and key != self._armed:
            self._armed = key
            self._armed_until = now + self.confirm_ms
            self._ui.preview(key, now, self.reason_keys[key - 1] if st == REASON else None)
            return
        if st == INVITED:
            inv = self.invite
            self.invite = None
            txn = inv["txn"] if inv else None
            self._accept_level(key, txn, now - self._shown_at, "invited", now)
        elif st == REASON:
            p = self._pending
            self._pending = None
            if p is not None:
                self._rate(p[0], p[1], self.reason_keys[key - 1], p[2], p[3], now)
        elif self.standalone and st in (IDLE, THANKS):
            last = self._last_accept
            if last is not None and now - last < self.min_interval_ms:
                self.filtered += 1
                return
            self._accept_level(key, None, None, "standalone", now)
        else:
            self._uninvited(key, now)

    def tick(self, now: int) -> None:
        st = self.state
        if self._armed and now >= self._armed_until:
            self._armed = 0  # not confirmed: the prompt again, nothing counted
            self._ui.show(st, now, self.invite if st == INVITED else self.reason_keys)
        if st == INVITED and now >= self._expires_at:
            inv = self.invite
            self.invite = None
            if inv:
                self._sink.event("invite_expired", {"txn": inv["txn"]})
            self._go(IDLE, now)
        elif st == REASON and now >= self._until:
            p = self._pending
            self._pending = None
            if p is not None:
                self._rate(p[0], p[1], "none", p[2], p[3], now)
        elif st == THANKS and now >= self._until:
            self._go(IDLE, now)

    def command(self, c: dict, now: int) -> None:
        """A verified command (see message.Messages.command)."""
        name = c["cmd"]
        if name == "invite":
            if self.state == PAUSED:
                self.refused_invites += 1
                return
            self._flush_pending(now)
            self.invite = c
            self._shown_at = now
            self._expires_at = now + c["ttl"] * 1000
            self._go(INVITED, now, c)
        elif name == "cancel":
            inv = self.invite
            if self.state == INVITED and inv and inv["txn"] == c["txn"]:
                self.invite = None
                self._go(IDLE, now)
        elif name == "pause":
            self._flush_pending(now)
            self.invite = None
            self._go(PAUSED, now)
        elif name == "resume":
            if self.state == PAUSED:
                self._go(IDLE, now)
        elif name == "display":
            self._ui.message(c["text"])
