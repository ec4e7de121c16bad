"""Which firmware slot boots, and the small state file that says so (over-the-air updates).

This module is the fixed part of an update, like a bootloader: it lives at the top of the
filesystem next to main.py, is never written by an update, and runs before any firmware
module is imported (main.py's first lines), so a slot that fails to import cannot stop it.

Flash layout (data_dir "/" on the ESP32):

    main.py, otaboot.py, etfw/   the install made by provisioning (slot "", the factory one)
    fw1/etfw/..., fw2/etfw/...   the two update slots; an update writes the one not running
    ota.json                     this module's state (below); config.json, state.a/.b (boot
                                 and press counters) and outbox stay where they are: outside
                                 the slots, so an update never touches them

ota.json: {"cur": slot that is known good, "new": slot on trial ("" = none), "ver": the trial
version, "tries": boots of the trial slot so far, "wait": seconds the trial slot has to hear
from the collector, "note": what happened to the last trial, reported once by etfw.ota}.
Written to a temporary file and renamed over the old one (atomic on LittleFS and POSIX): a
power cut leaves the old state or the new one. A missing or unreadable file means the factory
install (a new board, or a damaged file: the one slot that is always complete).

Rollback: every boot of a trial slot counts; past TRIES boots without confirmation (a crash
loop: the slot dies before it reaches the collector) the known-good slot boots again. The
running trial slot rolls back by itself too when no signed command reached it within `wait`
seconds (etfw.ota.Ota.tick). Confirmation (etfw.ota) makes the trial slot the known-good one.
"""

import json
import os
import sys

TRIES = 3  # boots of an unconfirmed slot before it is given up
STATE = "ota.json"


def load(data_dir: str) -> dict:
    try:
        with open(data_dir + STATE) as f:
            st = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return st if isinstance(st, dict) else {}


def save(data_dir: str, st: dict) -> None:
    tmp = data_dir + STATE + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(st))
    os.rename(tmp, data_dir + STATE)


def _slot_ok(data_dir: str, slot: str) -> bool:
    if not slot:
        return True
    try:
        os.stat(data_dir + slot + "/etfw")
        return True
    except OSError:
        return False


def choose(data_dir: str):
    """(slot, on trial, note) for this boot, counting a trial slot's boots; the state file is
    updated first, so a boot that crashes has been counted."""
    st = load(data_dir)
    cur = st.get("cur", "")
    if not isinstance(cur, str) or not _slot_ok(data_dir, cur):
        cur = ""
    new = st.get("new", "")
    if new and isinstance(new, str):
        tries = st.get("tries", 0)
        tries = tries + 1 if isinstance(tries, int) else TRIES + 1
        if tries > TRIES or not _slot_ok(data_dir, new):
            st["note"] = "rolled_back:boots:" + str(st.get("ver", ""))
            st["new"] = ""
            st["tries"] = 0
            save(data_dir, st)
            return cur, False, st["note"]
        st["tries"] = tries
        save(data_dir, st)
        return new, True, ""
    note = st.get("note", "")
    return cur, False, note if isinstance(note, str) else ""


def boot(data_dir: str):
    """Choose the slot and put it first on the import path (call it before `import etfw`).
    Returns (slot, on trial, note): what the device gives etfw.app.Device as hw["ota"]."""
    slot, trial, note = choose(data_dir)
    if slot:
        sys.path.insert(0, data_dir + slot)
    return slot, trial, note
