"""Over-the-air update, the device's side (docs/firmware.md "Over-the-air updates").

Loaded only while it has work: an `update` command arrived, the running slot is on trial, or
the last trial's outcome is still to be reported (etfw.app loads it, and drops it again when
`tick()` says it is done). The slot choice at boot and the state file are otaboot's (outside
the slots).

1. A signed `update` command (docs/protocol.md §5: `id`, `ver`, `size` and `sha` of the
   manifest, `wait`) names the manifest by its SHA-256: the command's HMAC under the device
   key covers the manifest, and the manifest lists every file with its size and SHA-256.
2. The device fetches the manifest (file 0), then each file it lists, in 256-byte chunks:
   one request at a time on its `ota` topic (signed, `{"id","f","o","n"}`), the chunk comes
   back on its `cmd` topic as binary (0xE7, id u32, file u8, offset u32, data). Stop and
   wait: one chunk on the heap at a time; a lost request or chunk is asked for again.
3. Each chunk is appended to the file in the slot not running; a complete file is hashed from
   flash (what was written, not what was received) and compared with the manifest; a mismatch
   deletes it and fetches it again (3 times, then the update fails). A download cut by a reboot
   or a lost link resumes from the files on flash when the same update is sent again: a
   complete file is hashed and kept, a partial one continues at its size (hashed when done).
4. Only when every file verified is the slot named in ota.json as the trial slot; the device
   reboots into it when the terminal is idle (never during a rating). Nothing outside the slot
   is touched: the outbox, the counters and the config stay on flash as they are.
5. On trial: the first accepted signed command confirms the slot (the collector sends an
   `update` to the version the slot runs when it sees its boot event); no command within
   `wait` seconds rolls back, and so does otaboot after 3 boots that did not confirm (a
   crash loop).

Every step is reported as an `ota` event: start, progress, ready, current, confirmed, trial,
refused, failed, rolled_back.
"""

import hashlib
import os
import struct
from binascii import hexlify

import otaboot

from . import FW_VERSION

try:
    from micropython import const
except ImportError:  # CPython
    const = int

MAGIC = const(0xE7)
HDR = "<BIBI"  # magic, update id, file index, offset
HLEN = const(10)
CHUNK = const(256)
_RETRY_MS = const(3000)  # no chunk after a request: ask again
_RETRIES = const(20)  # times one chunk is asked for before the update is given up
_FILE_TRIES = const(3)  # a file that fails its hash is fetched again this often
_MAX_FILES = const(64)
_REBOOT_MS = const(2000)  # after "ready": time for the event to go out first
MANIFEST = "MANIFEST"


def _bad(name: str) -> bool:
    """A manifest path the device refuses: outside the slot, or deeper than etfw/x."""
    return not name or ".." in name or name[0] == "/" or name.count("/") > 1 \
        or name == MANIFEST


def file_sha(path: str, buf) -> str:
    """SHA-256 (hex) of a file on flash, read through `buf` (no copy of the file)."""
    h = hashlib.sha256()
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return hexlify(h.digest()).decode()


def _size(path: str) -> int:
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _wipe(d: str) -> None:
    """Delete folder `d` and what is in it (two levels: a slot holds etfw/...)."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            _wipe(p)
    try:
        os.rmdir(d)
    except OSError:
        pass


def _fields_ok(c: dict) -> bool:
    """An update command's own fields (docs/protocol.md §5); command.check did the rest."""
    sha = c.get("sha")
    for k, lo, hi in (("id", 1, 0xFFFFFFFF), ("size", 1, 8192), ("wait", 10, 86400)):
        v = c.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return False
    ver = c.get("ver")
    if not isinstance(ver, str) or not 0 < len(ver) <= 32 or " " in ver \
            or not isinstance(sha, str) or len(sha) != 64:
        return False
    for ch in sha:
        if ch not in "0123456789abcdef":
            return False
    return True


def update(dev, topic: bytes, payload: bytes, now: int) -> None:
    """A message on the cmd topic that app.Device.command hands over (b"": just load). A chunk
    goes to the download; a command is checked as any command (command.check): an accepted
    one confirms a trial slot, an update is handled here, the others go to the terminal."""
    from .message import CommandError

    o = dev.update
    if type(o) is tuple:
        o = dev.update = Ota(dev, o)
    if not payload:
        return
    if payload[0] == MAGIC:
        o.chunk(topic, payload, now)
        return
    try:
        c = dev.msgs.command(topic, payload, dev.outbox, now)
    except CommandError as e:
        dev.cmd_bad += 1
        dev.cmd_error = e.args[0]
        if b'"cmd":"update"' in payload:
            o.refused(e.args[0])  # reported; nothing changes
        return
    if c is None:  # a receipt (§5.1): its records left the outbox; it confirms nothing
        return
    confirmed = o.trial
    if confirmed:
        o.confirm()  # a signed command reached the new firmware
    if c["cmd"] != "update":
        dev.term.command(c, now)
    elif not _fields_ok(c):
        dev.cmd_bad += 1
        dev.cmd_error = "malformed"
        o.refused("malformed")
    elif not confirmed:  # (the collector confirms with an update to the running version)
        o.command(c, now)


class Ota:
    def __init__(self, dev, hw) -> None:
        """dev: the app.Device (events, link, messages, terminal state); hw: otaboot's
        (data folder, reset function, running slot, on trial, note), which the device keeps
        while this module is not loaded."""
        self._dev = dev
        self._d, self._reset, self.slot, self.trial, note = hw
        self.job = {}  # the download in progress (empty: none)
        self.stale = 0  # chunks that were not the one asked for (late copies), ignored
        self._reboot_at = -1
        self._buf = bytearray(0)
        self._topic = dev.msgs.t_cmd[:-3] + b"ota"
        st = otaboot.load(self._d)
        self._wait_ms = -1
        if self.trial:
            w = st.get("wait", 600)
            self._wait_ms = (w if isinstance(w, int) and w > 0 else 600) * 1000
            self._event("trial", FW_VERSION, tries=st.get("tries", 0))
        if note:  # "rolled_back:<why>:<version>", once
            parts = note.split(":")
            self._event("rolled_back", parts[2] if len(parts) > 2 else "",
                        why=parts[1] if len(parts) > 1 else "")
            st["note"] = ""
            otaboot.save(self._d, st)

    @property
    def hw(self):
        """What the device keeps when this module is dropped (nothing left to report)."""
        return (self._d, self._reset, self.slot, self.trial, "")

    def _event(self, state: str, ver: str, **more) -> None:
        data = {"state": state, "ver": ver}
        data.update(more)
        self._dev.event("ota", data)

    def refused(self, why: str) -> None:
        """An update command failed its checks (command.check): reported, nothing changes."""
        self._event("refused", "", why=why)

    # --- commands -----------------------------------------------------------------------------

    def command(self, c: dict, now: int) -> None:
        ver = c["ver"]
        if self.trial:  # one change at a time: the trial slot must confirm first
            self._event("refused", ver, why="trial")
            return
        if ver == FW_VERSION:
            self._event("current", ver)
            return
        now_ts = self._dev.clock.ts()
        if now_ts is not None and c["ts"] + 3600000 < now_ts:
            self._event("refused", ver, why="expired")  # older than an hour: a replay
            return
        job = self.job
        if job and job["id"] == c["id"] and job["sha"] == c["sha"]:
            job["next"] = now  # sent again: ask again for what is missing
            job["retries"] = 0
            return
        target = "fw2" if self.slot == "fw1" else "fw1"
        sd = self._d + target
        if self._man_sha(sd) != c["sha"]:
            _wipe(sd)  # another update's files, or a partial one of them
        try:
            os.mkdir(sd)
        except OSError:
            pass  # already there
        self._buf = bytearray(CHUNK)
        self.job = {"id": c["id"], "ver": ver, "sha": c["sha"], "size": c["size"],
                    "wait": c["wait"], "dir": sd, "slot": target, "f": 0, "n": 0, "path": "",
                    "fsize": 0, "fsha": "", "off": 0, "tries": 0, "retries": 0, "next": now}
        self._event("start", ver)
        self._open(0, now)

    def confirm(self) -> None:
        """A signed command reached the trial slot: it is the known-good one from now on."""
        st = otaboot.load(self._d)
        st["cur"] = self.slot
        st["new"] = ""
        st["tries"] = 0
        otaboot.save(self._d, st)
        self.trial = False
        self._event("confirmed", FW_VERSION)

    # --- the download ---------------------------------------------------------------------------

    def _man_sha(self, sd: str) -> str:
        p = sd + "/" + MANIFEST
        return file_sha(p, bytearray(CHUNK)) if _size(p) >= 0 else ""

    def _entry(self, i: int):
        """(name, size, sha) of file i: 0 is the manifest, 1.. the files it lists."""
        job = self.job
        if i == 0:
            return MANIFEST, job["size"], job["sha"]
        with open(job["dir"] + "/" + MANIFEST) as f:
            f.readline()
            f.readline()
            for _ in range(i - 1):
                f.readline()
            sha, size, name = f.readline().split()
        return name, int(size), sha

    def _check_manifest(self) -> str:
        """The manifest's head and its file count: '' when good, else why."""
        job = self.job
        n = 0
        try:
            with open(job["dir"] + "/" + MANIFEST) as f:
                if f.readline() != "evalterm-fw 1\n" or f.readline() != "ver " + job["ver"] + "\n":
                    return "manifest"
                for line in f:
                    sha, size, name = line.split()
                    if len(sha) != 64 or int(size) < 0 or _bad(name):
                        return "manifest"
                    n += 1
        except (OSError, ValueError):
            return "manifest"
        if not 0 < n <= _MAX_FILES:
            return "manifest"
        job["n"] = n
        return ""

    def _open(self, i: int, now: int) -> None:
        """Start file i (or finish after the last): skip it if it is on flash and verified,
        resume it if partial."""
        job = self.job
        while True:
            if i > job["n"] and i > 0:
                self._ready(now)
                return
            name, size, sha = self._entry(i)
            path = job["dir"] + "/" + name
            have = _size(path)
            if have > size:
                os.remove(path)
                have = 0
            job["f"], job["path"], job["fsize"], job["fsha"] = i, path, size, sha
            job["off"] = max(have, 0)
            if "/" in name:
                try:
                    os.mkdir(job["dir"] + "/" + name.split("/")[0])
                except OSError:
                    pass
            if have == size and not self._done_file(now):
                return  # failed, or the file is being fetched again
            if have < size:
                if i == 1 or (i > 0 and i % 8 == 0):
                    self._event("progress", job["ver"], file=i, of=job["n"])
                self._request(now)
                return
            i += 1

    def _done_file(self, now: int) -> bool:
        """File complete on flash: True when it verifies (go on), else deleted and fetched
        again (False), or the update failed (False)."""
        job = self.job
        if file_sha(job["path"], self._buf) == job["fsha"]:
            if job["f"] == 0:
                why = self._check_manifest()
                if why:
                    self._fail(why)
                    return False
            job["tries"] = 0
            return True
        os.remove(job["path"])
        job["tries"] += 1
        if job["tries"] >= _FILE_TRIES:
            self._fail("sha")
            return False
        job["off"] = 0
        self._request(now)
        return False

    def _request(self, now: int) -> None:
        job = self.job
        w = self._dev.msgs._w  # the device's message buffer; no seq taken (not a message)
        payload = w.begin().field("id", job["id"]).field("f", job["f"]) \
            .field("o", job["off"]).field("n", CHUNK).seal(self._topic)
        self._dev.link.send(now, self._topic, payload)  # offline: asked again when due
        job["next"] = now + _RETRY_MS

    def chunk(self, topic: bytes, payload: bytes, now: int) -> None:
        job = self.job
        if not job or topic != self._dev.msgs.t_cmd or len(payload) < HLEN:
            self.stale += 1
            return
        _, uid, f, off = struct.unpack_from(HDR, payload, 0)
        n = len(payload) - HLEN
        if uid != job["id"] or f != job["f"] or off != job["off"] or n == 0 \
                or off + n > job["fsize"]:
            self.stale += 1  # a late copy of one asked for before: ignored
            return
        with open(job["path"], "ab") as fh:
            fh.write(memoryview(payload)[HLEN:])
        job["off"] = off + n
        job["retries"] = 0
        if job["off"] < job["fsize"]:
            self._request(now)
        elif self._done_file(now):
            self._open(job["f"] + 1, now)

    def _fail(self, why: str) -> None:
        job = self.job
        self.job = {}
        self._buf = bytearray(0)
        self._event("failed", job["ver"], why=why)

    def _ready(self, now: int) -> None:
        job = self.job
        st = otaboot.load(self._d)
        st["cur"] = self.slot
        st["new"] = job["slot"]
        st["ver"] = job["ver"]
        st["tries"] = 0
        st["wait"] = job["wait"]
        st["note"] = ""
        otaboot.save(self._d, st)
        self.job = {}
        self._buf = bytearray(0)
        self._event("ready", job["ver"])
        self._reboot_at = now + _REBOOT_MS

    # --- the main loop --------------------------------------------------------------------------

    def tick(self, now: int) -> bool:
        """One main-loop step; True when nothing is left to do (the app drops the module)."""
        job = self.job
        if job and now >= job["next"] and self._dev.link.up:
            job["retries"] += 1
            if job["retries"] > _RETRIES:
                self._fail("stalled")
            else:
                self._request(now)
        if self._reboot_at >= 0 and now >= self._reboot_at \
                and self._dev.term.state in ("idle", "paused"):
            self._reset()
        if self.trial and now >= self._wait_ms:
            # Nothing signed came from the collector in time: back to the known-good slot.
            st = otaboot.load(self._d)
            st["new"] = ""
            st["tries"] = 0
            st["note"] = "rolled_back:timeout:" + FW_VERSION
            otaboot.save(self._d, st)
            self._reset()
        return not self.job and not self.trial and self._reboot_at < 0
