"""The outbox's rare paths: its recovery at boot (read the log back into the pending FIFO)
and compaction (rewrite the log without what was retired). Loaded only by Outbox() at boot
and by Outbox._compact, and dropped again after (etfw.unload): a running device does not
keep this code on its heap.

The scan re-synchronises byte by byte over damage (a torn or corrupted record), keeps the
records in log order, retires those an ack record names, lets an 'R' record replace the
held 'H' record with the same id, and treats a held record nothing replaced as pending
(the rating is then sent with reason "none"). The log is rewritten when damage was
skipped or records were dropped for the bound.
"""

import struct

from .outbox import ACK, FMT, HELD, HLEN, MAGIC, MAX_PAYLOAD, REC, check


def recover(ob) -> None:
    fs = ob._fs
    if fs.size(ob._tmp) >= 0:
        if fs.size(ob.path) < 0:
            # Cut between removing the old log and renaming the finished new one.
            fs.rename(ob._tmp, ob.path)
        else:
            fs.remove(ob._tmp)  # an unfinished compaction; the old log is intact
    size = fs.size(ob.path)
    if size <= 0:
        if size == 0:
            fs.remove(ob.path)
        return
    damaged = in_damage = False
    max_id = held = 0
    f = fs.open(ob.path, "rb")
    try:
        off = 0
        while off < size:
            f.seek(off)
            h = f.read(HLEN)
            ok = len(h) == HLEN and h[0] == MAGIC and h[1] in (REC, ACK, HELD)
            if ok:
                _, rtype, rid, tlen, plen = struct.unpack_from(FMT, h, 0)
                n = tlen + plen
                ok = (plen <= MAX_PAYLOAD and off + HLEN + n <= size
                      and (rtype == ACK) == (n == 0))
                body = f.read(n) if ok and n else b""
                ok = ok and len(body) == n and check(h[:9], body) == h[9:13]
            if not ok:
                # Torn or damaged: resynchronise on the next byte.
                if not in_damage:
                    ob.damaged += 1
                damaged = in_damage = True
                off += 1
                continue
            in_damage = False
            if rid > max_id:
                max_id = rid
            if rtype == ACK:
                if ob.count and ob._ids[ob._head] == rid:
                    ob._pop()
                else:
                    _drop_id(ob, rid)
            else:
                if rtype == REC and rid == held:
                    _drop_id(ob, rid)  # the held rating's replacement: the held one goes
                if rtype == HELD:
                    held = rid
                if ob.count == ob.cap:
                    ob._pop()
                    ob.discards += 1
                ob._push(rid, off, HLEN + n)
            off += HLEN + n
    finally:
        f.close()
    ob._size = size
    ob._next_id = max_id + 1
    ob.recovered = ob.count
    if damaged or ob.discards:
        compact(ob)
    elif not ob.count:
        fs.remove(ob.path)
        ob._size = 0


def _drop_id(ob, rid: int) -> None:
    # An ack that is not for the head: a receipt out of order (outbox._retire), a record
    # next to damage, or a held record replaced. Remove that id from the FIFO, keeping the
    # order of the others; the send positions past it move down with them.
    for k in range(ob.count):
        i = (ob._head + k) % ob.cap
        if ob._ids[i] == rid:
            ob._pending_bytes -= ob._lens[i]
            for m in range(k, ob.count - 1):
                a = (ob._head + m) % ob.cap
                b = (ob._head + m + 1) % ob.cap
                ob._ids[a] = ob._ids[b]
                ob._offs[a] = ob._offs[b]
                ob._lens[a] = ob._lens[b]
            ob.count -= 1
            if k < ob.unconfirmed:
                ob.unconfirmed -= 1
            return


def compact(ob) -> None:
    """Rewrite the log of Outbox `ob` with only its pending records and the held one: a
    temporary file, renamed over the log (a power cut leaves one or the other; recover()
    finishes or discards an interrupted one). Offsets in the FIFO follow."""
    fs = ob._fs
    if not ob.count and not ob.held:
        if fs.size(ob.path) >= 0:
            fs.remove(ob.path)
        ob._size = 0
        return
    new_offs = []
    off = 0
    src = fs.open(ob.path, "rb")
    try:
        dst = fs.open(ob._tmp, "wb")
        try:
            for k in range(ob.count + (1 if ob.held else 0)):
                if k < ob.count:
                    i = (ob._head + k) % ob.cap
                    src.seek(ob._offs[i])
                    rec = src.read(ob._lens[i])
                else:  # the held record goes last
                    src.seek(ob._held_at[0])
                    rec = src.read(ob._held_at[1])
                dst.write(rec)
                new_offs.append(off)
                off += len(rec)
        finally:
            dst.close()
    finally:
        src.close()
    try:
        fs.rename(ob._tmp, ob.path)
    except OSError:
        # Filesystems whose rename will not replace: recovery finishes this step.
        fs.remove(ob.path)
        fs.rename(ob._tmp, ob.path)
    for k in range(ob.count):
        ob._offs[(ob._head + k) % ob.cap] = new_offs[k]
    if ob.held:
        ob._held_at = (new_offs[-1], ob._held_at[1])
    ob._size = off
    ob.compactions += 1
