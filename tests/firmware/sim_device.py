"""The firmware on the MicroPython unix port: fake pins, real sockets, a real broker.

    micropython sim_device.py FIRMWARE_DIR CONFIG_JSON DATA_DIR CONTROL_UDP_PORT

Key presses come in as UDP datagrams on 127.0.0.1:CONTROL_UDP_PORT ("press 5"; "quit").
State changes are printed as "STATE <state>" and "LINK <0|1>" lines for the test to follow.
"""

import socket
import sys
import time

sys.path.insert(0, sys.argv[1])

from etfw import config  # noqa: E402
from etfw.app import Device  # noqa: E402
from etfw.link import umqtt_factory  # noqa: E402
from etfw.store import RealFS  # noqa: E402
from fwfakes import FakePin as Pin  # noqa: E402  (this script's folder is on sys.path)


class WLAN:
    def isconnected(self):
        return True

    def connect(self, ssid, password):
        pass

    def status(self, what=None):
        raise OSError("no radio")


def main():
    with open(sys.argv[2]) as f:
        cfg = config.parse(f.read())
    keys = [Pin(1) for _ in range(5)]
    hw = {"keys": keys, "leds": [Pin(0) for _ in range(5)], "rgb": None, "buzzer": Pin(0),
          "display": lambda a, b: print("DISPLAY", a, "|", b)}
    dev = Device(cfg, hw, RealFS(), WLAN(), umqtt_factory, data_dir=sys.argv[3] + "/",
                 rand=lambda n: time.ticks_us() % n if n > 0 else 0,
                 ntp=lambda: time.time_ns() // 1000000, reset_cause="power_on")
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(socket.getaddrinfo("127.0.0.1", int(sys.argv[4]))[0][-1])
    ctl.setblocking(False)
    release = [None] * 5
    state = link = None
    pubs = fails = 0
    print("BOOT", dev.boot)
    dev.start()  # what dev.run() does first; this loop steps the device itself
    while True:
        dev.step()
        now = time.ticks_ms()
        try:
            data = ctl.recv(64)
        except OSError:
            data = None
        if data == b"quit":
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
        if dev.term.state != state:
            state = dev.term.state
            print("STATE", state)
        if dev.link.up != link:
            link = dev.link.up
            print("LINK", 1 if link else 0, "outbox", len(dev.outbox))
        if dev.link.published != pubs:
            pubs = dev.link.published
            print("PUBLISHED", pubs, "outbox", len(dev.outbox))
        if dev.link.failures != fails:
            fails = dev.link.failures
            print("LINKFAIL", fails, dev.link.last_error)
        time.sleep_ms(5)


main()
