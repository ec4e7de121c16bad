"""Two-slot persisted state: the boot counter survives any power cut."""

from etfw.store import Store
from fwmemfs import MemFS, PowerCut


def test_roundtrip_and_alternating_slots():
    fs = MemFS()
    s = Store(fs, "state")
    assert s.load() == {}
    s.save({"boot": 1})
    s.save({"boot": 2})
    assert "state.a" in fs.files and "state.b" in fs.files
    assert Store(fs, "state").load() == {"boot": 2}


def test_damaged_newest_slot_falls_back_to_previous():
    fs = MemFS()
    s = Store(fs, "state")
    s.save({"boot": 1, "keys": [1, 0, 0, 0, 0]})
    s.save({"boot": 2, "keys": [1, 1, 0, 0, 0]})
    a = fs.files["state.a"]
    newest = "state.a" if b'"g": 2' in a or b'"g":2' in a else "state.b"
    fs.files[newest][3] ^= 0x20
    s2 = Store(fs, "state")
    assert s2.load() == {"boot": 1, "keys": [1, 0, 0, 0, 0]}
    assert s2.bad_slots == 1
    s2.save({"boot": 3})
    assert Store(fs, "state").load() == {"boot": 3}


def test_power_cut_during_save_never_loses_or_reuses_a_boot():
    base = MemFS()
    s = Store(base, "state")
    for b in range(1, 4):
        s.save({"boot": b})
    snap = base.snapshot()
    n = 0
    while True:
        fs = MemFS()
        fs.restore(snap)
        fs.budget = n
        st = Store(fs, "state")
        boot = st.load()["boot"] + 1
        try:
            st.save({"boot": boot})
            done = True
        except PowerCut:
            done = False
        fs.budget = None
        after = Store(fs, "state").load()["boot"]
        assert after == (4 if done else after) and after in (3, 4), n
        if done:
            break
        n += 1
    assert n > 10
