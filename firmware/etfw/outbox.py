"""The flash outbox: every rating is on flash before it is published, and leaves only after
the collector's signed receipt says it committed it (docs/protocol.md section 5.1), never on
the broker's PUBACK: a broker that acknowledges and then loses a message (crash, a client
taking the collector's place, a fake broker) cannot make a rating disappear.

The file is an append-only log of checksummed records:

    header  magic 0xE5 | type 'R', 'H' or 'A' | id u32 | topic len u8 | payload len u16 | check 4
    body    topic bytes + payload bytes (the exact signed message, so a resend is identical)

`check` is the first 4 bytes of SHA-256 over the first 9 header bytes and the body. An 'A'
(ack) record with no body retires the record with its id: confirmed by a receipt, or
discarded because the outbox was full. The pending records are a FIFO; a receipt may retire
one that is not the head (command.check; rare: the FIFO entries above it move down, so the
order of the others is kept).

Sending (link.py): records go out in FIFO order, at most 8 of them published and still
without a receipt at a time: the first `unconfirmed` of the FIFO (a receipt
retires its record, so the ones left there are those in flight). Setting `unconfirmed` to 0
(every connect, and when no receipt came for a while) sends them all again from the head.
"Sent but unconfirmed" is RAM only: on flash such a record is simply pending (no ack
record), so after a reboot it is sent again. The collector refuses a second copy as a
replay and answers it with a receipt again.

An 'H' (held) record is a 1-2 rating waiting for its reason, signed with reason "none" when
the key was pressed (`hold`). It is not sent while held. The final rating is stored as an
'R' record with the SAME id (`put(..., replace=True)`): one append, so after any power cut
the log holds either the held rating or its replacement, never both and never neither. At
boot (recover.py) an 'H' that no later 'R' replaced is an ordinary pending record: the
rating is sent once, with reason "none", as the reason prompt's timeout would have done.

Power cuts (see docs/firmware.md, failure model):
- during an append: the torn record fails its check and is skipped at recovery; only that
  record is lost, and the log is rewritten without the damage.
- during an ack append: the record is still pending and is sent again, byte-identical;
  the collector refuses the second copy as a replay of the same (dev, boot, seq) and
  confirms it again.
- during compaction: the new log is written to a temporary file and renamed over the old
  one (atomic on LittleFS and POSIX); an unfinished temporary file is deleted at boot.
Nothing is ever rewritten in place, so no power cut can turn one record into another.
"""

import hashlib
import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    const = int

MAGIC = const(0xE5)
REC = const(0x52)  # 'R'
ACK = const(0x41)  # 'A'
HELD = const(0x48)  # 'H'
FMT = "<BBIBH"
HLEN = const(13)  # 9 bytes of FMT + 4 bytes of check
MAX_PAYLOAD = const(1024)  # protocol limit of a device message


def check(head, body) -> bytes:
    h = hashlib.sha256(head)
    if body:
        h.update(body)
    return h.digest()[:4]


class Outbox:
    def __init__(self, fs, path: str, max_records: int = 200, max_bytes: int = 65536) -> None:
        self._fs = fs
        self.path = path
        self._tmp = path + ".tmp"
        self.cap = max_records
        self.max_bytes = max_bytes
        # The pending FIFO: ids, offsets in the file and record lengths, pre-allocated. Made
        # from zero bytes (an array takes them as its raw items, on CPython and MicroPython):
        # a list [0] * n would be a temporary of n words (8 bytes each on 64-bit) in one block.
        zeros = bytes(4 * max_records)
        self._ids = array("I", zeros)
        self._offs = array("I", zeros)
        zeros = None
        self._lens = array("H", bytes(2 * max_records))
        self._head = 0
        self.count = 0
        self._pending_bytes = 0
        self._size = 0
        self._next_id = 1
        self.held = 0  # id of the held record (not in the FIFO), 0 = none
        self._held_at = (0, 0)  # its offset and length
        self._hdr = bytearray(HLEN)
        # Sending (link.py; names MicroPython has built in, or shared with the heartbeat: a
        # running device interns no new ones). The first `unconfirmed` records of the FIFO
        # are published on this connection and wait for their receipt; `start` is when that
        # wait began and `wait` how long it may last (0: link._RESEND_MS; see Link.next).
        self.unconfirmed = 0
        self.start = 0
        self.wait = 0
        self.discards = 0  # records dropped because the outbox was full (this boot)
        self.damaged = 0  # damaged regions skipped at recovery (torn writes)
        self.write_errors = 0
        self.compactions = 0
        self.recovered = 0  # records still pending from before this boot
        from .recover import recover  # boot only: the app unloads it (etfw.unload)

        recover(self)

    def __len__(self) -> int:
        """Records kept: not yet confirmed by the collector (published or not)."""
        return self.count

    # --- the FIFO -------------------------------------------------------------------------

    def _push(self, rid: int, off: int, n: int) -> None:
        i = (self._head + self.count) % self.cap
        self._ids[i] = rid
        self._offs[i] = off
        self._lens[i] = n
        self.count += 1
        self._pending_bytes += n

    def _pop(self) -> None:
        self._pending_bytes -= self._lens[self._head]
        self._head = (self._head + 1) % self.cap
        self.count -= 1
        if self.unconfirmed:
            self.unconfirmed -= 1

    # --- file format ----------------------------------------------------------------------

    def _append(self, rtype: int, rid: int, topic: bytes, payload: bytes) -> None:
        """Write one record (header, then the body, which the check covers too)."""
        h = self._hdr
        struct.pack_into(FMT, h, 0, MAGIC, rtype, rid, len(topic), len(payload))
        c = hashlib.sha256(memoryview(h)[:9])
        c.update(topic)
        c.update(payload)
        h[9:13] = c.digest()[:4]
        f = self._fs.open(self.path, "ab")
        try:
            f.write(h)
            if topic:  # two writes: no copy of the record is made on the heap
                f.write(topic)
                f.write(payload)
        finally:
            f.close()  # close commits the data on LittleFS

    def _compact(self) -> None:
        """Rewrite the log with only the pending records and the held one (temp file +
        rename). Rare (a log past its bound, a failed write): the code is recover.compact,
        loaded for it and dropped again, as the boot's recovery is."""
        from . import recover, unload

        try:
            recover.compact(self)
        finally:
            unload("recover")

    # --- the API ---------------------------------------------------------------------------

    def _store(self, rtype: int, rid: int, topic: bytes, payload: bytes) -> int:
        """Append a record with a body; returns its length. Raises OSError if flash fails."""
        try:
            self._append(rtype, rid, topic, payload)
        except OSError:
            self.write_errors += 1
            self._size = max(0, self._fs.size(self.path))
            # A failed append may have left a torn tail; later appends would follow it.
            # Recovery skips damage anyway, but a clean log keeps offsets simple.
            try:
                self._compact()
            except OSError:
                self.write_errors += 1
            raise
        return HLEN + len(topic) + len(payload)

    def put(self, topic: bytes, payload: bytes, replace: bool = False) -> int:
        """Store one signed message; returns its record id. Raises OSError if flash fails.
        With `replace`, it takes the place of the held record (same id), if there is one;
        if flash fails then, the held record is sent instead (no error)."""
        if len(payload) > MAX_PAYLOAD or len(topic) > 255:
            raise ValueError("record too large")
        n = HLEN + len(topic) + len(payload)
        # Bounded: make room by discarding the oldest (counted, reported in heartbeats).
        while self.count and (self.count >= self.cap or self._pending_bytes + n > self.max_bytes):
            self._retire(0)
            self.discards += 1
        rid = self._next_id
        if replace and self.held:
            rid = self.held
            try:
                self._store(REC, rid, topic, payload)
            except OSError:
                # Flash refused the replacement: the held rating (reason "none") is sent
                # instead, once. The reason is lost, the rating is not, and no second
                # copy can appear after a reboot (that would be the same held record).
                self._push(rid, self._held_at[0], self._held_at[1])
                self.held = 0
                return rid
            self.held = 0
        else:
            self._next_id = rid + 1
            self._store(REC, rid, topic, payload)
        self._push(rid, self._size, n)
        self._size += n
        if self._size > self.max_bytes + 2048:
            self._compact()
        return rid

    def hold(self, topic: bytes, payload: bytes) -> int:
        """Store a rating that waits for its reason: on flash, not sent until replaced by
        `put(..., replace=True)` (or, after a reboot, sent as it is)."""
        if len(payload) > MAX_PAYLOAD or len(topic) > 255:
            raise ValueError("record too large")
        if self.held:  # not expected (one reason prompt at a time): send the older one
            self._push(self.held, self._held_at[0], self._held_at[1])
            self.held = 0
        rid = self._next_id
        n = self._store(HELD, rid, topic, payload)
        self._next_id = rid + 1
        self.held = rid
        self._held_at = (self._size, n)
        self._size += n
        return rid

    def peek(self, k: int = 0):
        """(id, topic, payload) of the pending record at FIFO position k (the oldest by
        default), or None. A record flash went bad under is retired, counted as damaged,
        and the next one takes its place."""
        while k < self.count:
            i = (self._head + k) % self.cap
            f = self._fs.open(self.path, "rb")
            try:
                f.seek(self._offs[i])
                rec = f.read(self._lens[i])
            finally:
                f.close()
            h = memoryview(rec)[:HLEN]
            if len(rec) == self._lens[i] and rec[0] == MAGIC:
                _, _, rid, tlen, _ = struct.unpack_from(FMT, rec, 0)
                body = memoryview(rec)[HLEN:]
                if rid == self._ids[i] and check(h[:9], body) == bytes(h[9:13]):
                    return rid, bytes(body[:tlen]), bytes(body[tlen:])
            # Flash went bad under a stored record: drop it, count it, go on.
            self.damaged += 1
            self._retire(k)
        return None

    def ack(self, rid: int) -> None:
        """Retire record `rid` if it is the head (a receipt names it: command.confirm)."""
        if not self.count or self._ids[self._head] != rid:
            return
        self._retire(0)
        if not self.count and not self.held:
            self._fs.remove(self.path)
            self._size = 0
        elif self._size > self.max_bytes:
            self._compact()

    def _retire(self, k: int) -> None:
        """Retire the record at FIFO position k: an ack record, then out of the FIFO (not
        the head: recover._drop_id, which moves the entries above it down)."""
        i = (self._head + k) % self.cap
        self._append(ACK, self._ids[i], b"", b"")  # a cut here: resend, not loss
        self._size += HLEN
        if k == 0:
            self._pop()
            return
        from . import recover, unload

        try:
            recover._drop_id(self, self._ids[i])
        finally:
            unload("recover")
