"""The flash outbox: every rating is on flash before it is published, and leaves only after
the broker's PUBACK.

The file is an append-only log of checksummed records:

    header  magic 0xE5 | type 'R' or 'A' | id u32 | topic len u8 | payload len u16 | check 4
    body    topic bytes + payload bytes (the exact signed message, so a resend is identical)

`check` is the first 4 bytes of SHA-256 over the first 9 header bytes and the body. An 'A'
(ack) record with no body retires the record with its id: delivered, or discarded because
the outbox was full. Records leave in order, so the pending ones are always a FIFO.

Power cuts (see docs/firmware.md, failure model):
- during an append: the torn record fails its check and is skipped at recovery; only that
  record is lost, and the log is rewritten without the damage.
- during an ack append: the record is still pending and is sent again, byte-identical;
  the collector refuses the second copy as a replay of the same (dev, boot, seq).
- during compaction: the new log is written to a temporary file and renamed over the old
  one (atomic on LittleFS and POSIX); an unfinished temporary file is deleted at boot.
Nothing is ever rewritten in place, so no power cut can turn one record into another.
"""

import hashlib
import struct
from array import array

_MAGIC = 0xE5
_REC = 0x52  # 'R'
_ACK = 0x41  # 'A'
_FMT = "<BBIBH"
_HLEN = 13  # 9 bytes of _FMT + 4 bytes of check
MAX_PAYLOAD = 1024  # protocol limit of a device message


def _check(head, body) -> bytes:
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
        # The pending FIFO: ids, offsets in the file and record lengths, pre-allocated.
        self._ids = array("I", [0] * max_records)
        self._offs = array("I", [0] * max_records)
        self._lens = array("H", [0] * max_records)
        self._head = 0
        self.count = 0
        self._pending_bytes = 0
        self._size = 0
        self._next_id = 1
        self._hdr = bytearray(_HLEN)
        self.discards = 0  # records dropped because the outbox was full (this boot)
        self.damaged = 0  # damaged regions skipped at recovery (torn writes)
        self.write_errors = 0
        self.compactions = 0
        self.recovered = 0  # records still pending from before this boot
        self._recover()

    def __len__(self) -> int:
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

    def head_id(self) -> int:
        return self._ids[self._head] if self.count else 0

    # --- file format ----------------------------------------------------------------------

    def _header(self, rtype: int, rid: int, tlen: int, plen: int, body) -> bytearray:
        h = self._hdr
        struct.pack_into(_FMT, h, 0, _MAGIC, rtype, rid, tlen, plen)
        h[9:13] = _check(memoryview(h)[:9], body)
        return h

    def _append(self, head, body) -> None:
        f = self._fs.open(self.path, "ab")
        try:
            f.write(head)
            if body:
                f.write(body)
        finally:
            f.close()  # close commits the data on LittleFS

    def _recover(self) -> None:
        fs = self._fs
        if fs.size(self._tmp) >= 0:
            if fs.size(self.path) < 0:
                # Cut between removing the old log and renaming the finished new one.
                fs.rename(self._tmp, self.path)
            else:
                fs.remove(self._tmp)  # an unfinished compaction; the old log is intact
        size = fs.size(self.path)
        if size <= 0:
            if size == 0:
                fs.remove(self.path)
            return
        damaged = in_damage = False
        max_id = 0
        f = fs.open(self.path, "rb")
        try:
            off = 0
            while off < size:
                f.seek(off)
                h = f.read(_HLEN)
                ok = len(h) == _HLEN and h[0] == _MAGIC and h[1] in (_REC, _ACK)
                if ok:
                    _, rtype, rid, tlen, plen = struct.unpack_from(_FMT, h, 0)
                    n = tlen + plen
                    ok = (plen <= MAX_PAYLOAD and off + _HLEN + n <= size
                          and (rtype == _REC) == (n > 0))
                    body = f.read(n) if ok and n else b""
                    ok = ok and len(body) == n and _check(h[:9], body) == h[9:13]
                if not ok:
                    # Torn or damaged: resynchronise on the next byte.
                    if not in_damage:
                        self.damaged += 1
                    damaged = in_damage = True
                    off += 1
                    continue
                in_damage = False
                if rid > max_id:
                    max_id = rid
                if rtype == _REC:
                    if self.count == self.cap:
                        self._pop()
                        self.discards += 1
                    self._push(rid, off, _HLEN + n)
                elif self.count and self._ids[self._head] == rid:
                    self._pop()
                else:
                    self._drop_id(rid)
                off += _HLEN + n
        finally:
            f.close()
        self._size = size
        self._next_id = max_id + 1
        self.recovered = self.count
        if damaged or self.discards:
            self._compact()
        elif not self.count:
            fs.remove(self.path)
            self._size = 0

    def _drop_id(self, rid: int) -> None:
        # An ack that is not for the head happens only next to damage: remove that id.
        for k in range(self.count):
            i = (self._head + k) % self.cap
            if self._ids[i] == rid:
                self._pending_bytes -= self._lens[i]
                for m in range(k, self.count - 1):
                    a = (self._head + m) % self.cap
                    b = (self._head + m + 1) % self.cap
                    self._ids[a] = self._ids[b]
                    self._offs[a] = self._offs[b]
                    self._lens[a] = self._lens[b]
                self.count -= 1
                return

    def _compact(self) -> None:
        """Rewrite the log with only the pending records (temp file + rename)."""
        fs = self._fs
        if not self.count:
            if fs.size(self.path) >= 0:
                fs.remove(self.path)
            self._size = 0
            return
        new_offs = []
        src = fs.open(self.path, "rb")
        try:
            dst = fs.open(self._tmp, "wb")
            try:
                off = 0
                for k in range(self.count):
                    i = (self._head + k) % self.cap
                    src.seek(self._offs[i])
                    rec = src.read(self._lens[i])
                    dst.write(rec)
                    new_offs.append(off)
                    off += len(rec)
            finally:
                dst.close()
        finally:
            src.close()
        try:
            fs.rename(self._tmp, self.path)
        except OSError:
            # Filesystems whose rename will not replace: recovery finishes this step.
            fs.remove(self.path)
            fs.rename(self._tmp, self.path)
        for k in range(self.count):
            self._offs[(self._head + k) % self.cap] = new_offs[k]
        self._size = off
        self.compactions += 1

    # --- the API ---------------------------------------------------------------------------

    def _retire_head(self) -> None:
        rid = self._ids[self._head]
        h = self._header(_ACK, rid, 0, 0, b"")
        self._append(h, b"")  # on flash first: a cut here means a resend, never a loss
        self._size += _HLEN
        self._pop()

    def put(self, topic: bytes, payload: bytes) -> int:
        """Store one signed message; returns its record id. Raises OSError if flash fails."""
        if len(payload) > MAX_PAYLOAD or len(topic) > 255:
            raise ValueError("record too large")
        n = _HLEN + len(topic) + len(payload)
        # Bounded: make room by discarding the oldest (counted, reported in heartbeats).
        while self.count and (self.count >= self.cap or self._pending_bytes + n > self.max_bytes):
            self._retire_head()
            self.discards += 1
        rid = self._next_id
        h = self._header(_REC, rid, len(topic), len(payload), None)
        # The check covers the body too: compute it over topic then payload.
        c = hashlib.sha256(memoryview(h)[:9])
        c.update(topic)
        c.update(payload)
        h[9:13] = c.digest()[:4]
        try:
            self._append(h, topic + payload)
        except OSError:
            self.write_errors += 1
            self._size = max(0, self._fs.size(self.path))
            self._compact_after_error()
            raise
        self._next_id = rid + 1
        self._push(rid, self._size, n)
        self._size += n
        if self._size > self.max_bytes + 2048:
            self._compact()
        return rid

    def _compact_after_error(self) -> None:
        # A failed append may have left a torn tail; later appends would follow it.
        # Recovery skips damage anyway, but a clean log keeps offsets simple.
        try:
            self._compact()
        except OSError:
            self.write_errors += 1

    def peek(self):
        """(id, topic, payload) of the oldest pending record, or None."""
        while self.count:
            i = self._head
            f = self._fs.open(self.path, "rb")
            try:
                f.seek(self._offs[i])
                rec = f.read(self._lens[i])
            finally:
                f.close()
            h = memoryview(rec)[:_HLEN]
            ok = len(rec) == self._lens[i] and rec[0] == _MAGIC
            if ok:
                _, _, rid, tlen, plen = struct.unpack_from(_FMT, rec, 0)
                body = memoryview(rec)[_HLEN:]
                ok = rid == self._ids[i] and _check(h[:9], body) == bytes(h[9:13])
                if ok:
                    return rid, bytes(body[:tlen]), bytes(body[tlen:])
            # Flash went bad under a stored record: drop it, count it, go on.
            self.damaged += 1
            self._retire_head()
        return None

    def ack(self, rid: int) -> None:
        """The broker acknowledged record `rid` (the head): retire it."""
        if not self.count or self._ids[self._head] != rid:
            return
        self._retire_head()
        if not self.count:
            self._fs.remove(self.path)
            self._size = 0
        elif self._size > self.max_bytes:
            self._compact()
