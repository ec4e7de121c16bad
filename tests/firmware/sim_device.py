"""The firmware on the MicroPython unix port: fake pins, real sockets, a real broker.

    micropython sim_device.py FIRMWARE_DIR CONFIG_JSON DATA_DIR CONTROL_UDP_PORT

Key presses come in as UDP datagrams on 127.0.0.1:CONTROL_UDP_PORT ("press 5"; "quit").
State changes are printed as "STATE <state>", "LINK <0|1>" and "OUTBOX <records kept>" lines
for the test to follow;
at "quit", "HEAP <peak> <size>": the highest live heap (bytes, after a collection) seen at
those changes, and the heap's size.
"""

import gc
import socket
import sys
import time

sys.path.insert(0, sys.argv[1])
import otaboot  # as main.py: the firmware slot is chosen before etfw is imported

OTA = otaboot.boot(sys.argv[3] + "/")


def load_config():
    """As main.py boots: the config module (the largest) is loaded first and dropped after the
    parse, before the rest of the firmware is imported."""
    import etfw
    from etfw import config

    try:
        with open(sys.argv[2]) as f:
            return config.parse(f.read())
    finally:
        etfw.unload("config")


class WLAN:
    def isconnected(self):
        return True

    def connect(self, ssid, password):
        pass

    def status(self, what=None):
        raise OSError("no radio")


DEV = []  # the running device, for reset()


def reset():
    """machine.reset(): the test starts the process again (tests/firmware/test_fw_ota_e2e.py).
    Says how many records wait in the outbox on flash."""
    print("RESET outbox", len(DEV[0].outbox) if DEV else -1)
    sys.exit(3)


def main():
    cfg = load_config()
    gc.collect()
    import umqtt.simple  # noqa: F401  frozen in the ESP32 image (no heap there); here, first
    from etfw.app import Device
    from etfw.link import umqtt_factory
    from etfw.store import RealFS
    from fwfakes import FakePin as Pin  # this script's folder is on sys.path

    keys = [Pin(1) for _ in range(5)]
    hw = {"keys": keys, "leds": [Pin(0) for _ in range(5)], "rgb": None, "buzzer": Pin(0),
          "display": lambda a, b: print("DISPLAY", a, "|", b),
          "update": (sys.argv[3] + "/", reset) + OTA}  # noqa: RUF005  (no starred display)
    dev = Device(cfg, hw, RealFS(), WLAN(), umqtt_factory, data_dir=sys.argv[3] + "/",
                 rand=lambda n: time.ticks_us() % n if n > 0 else 0,
                 ntp=lambda: time.time_ns() // 1000000, reset_cause="power_on")
    cfg = None  # as main.py does: the device keeps what it uses, not the Config
    DEV.append(dev)
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(socket.getaddrinfo("127.0.0.1", int(sys.argv[4]))[0][-1])
    ctl.setblocking(False)
    release = [None] * 5
    state = link = None
    pubs = fails = peak = 0
    kept = -1
    from etfw import FW_VERSION

    print("BOOT", dev.boot, "fw", FW_VERSION, "slot", OTA[0] or "-", "trial", int(OTA[1]))
    dev.start()  # what dev.run() does first; this loop steps the device itself
    while True:
        dev.step()
        now = time.ticks_ms()
        try:
            data = ctl.recv(64)
        except OSError:
            data = None
        if data == b"quit":
            print("HEAP", peak, gc.mem_alloc() + gc.mem_free())
            break
        if data and data.startswith(b"press "):
            k = int(data[6:]) - 1
            keys[k].set(0)
            release[k] = time.ticks_add(now, 80)
        for k in range(5):
            r = release[k]
            if r is not None and time.ticks_diff(now, r) >= 0:
                keys[k].set(1)
                release[k] = None
        changed = bool(data)
        if dev.term.state != state:
            state = dev.term.state
            print("STATE", state)
            changed = True
        if dev.link.up != link:
            link = dev.link.up
            gc.collect()
            print("LINK", 1 if link else 0, "outbox", len(dev.outbox), "heap", gc.mem_alloc())
            changed = True
        if dev.link.published != pubs:
            pubs = dev.link.published
            print("PUBLISHED", pubs, "outbox", len(dev.outbox))
            changed = True
        if len(dev.outbox) != kept:
            kept = len(dev.outbox)
            print("OUTBOX", kept)
            changed = True
        if dev.link.failures != fails:
            fails = dev.link.failures
            print("LINKFAIL", fails, dev.link.last_error)
        if changed:
            gc.collect()
            peak = max(peak, gc.mem_alloc())
        time.sleep_ms(5)


main()
