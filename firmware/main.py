"""ESP32 entry point: build the real drivers from the board profile and run the device.

Copy to the board with the etfw/ package and a config.json (see docs/firmware.md).
"""

import gc
import time

import machine
import network

from etfw import config
from etfw.app import WDT_MS, Device
from etfw.clock import epoch_offset_s
from etfw.indicators import Indicators
from etfw.link import umqtt_factory
from etfw.store import RealFS

CONFIG = "config.json"
_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


def _outputs(pins):
    return [machine.Pin(p, machine.Pin.OUT, value=0) for p in pins] if pins else None


def _console(a: str, b: str) -> None:
    print("[display]", a, "|", b)


def _ntp(host: str):
    def sync_ms() -> int:
        import ntptime

        ntptime.host = host
        ntptime.settime()  # sets the RTC; time.time() is then UTC
        return (time.time() + epoch_offset_s()) * 1000

    return sync_ms


def _rand(n: int) -> int:
    import random

    return random.getrandbits(16) % n if n > 0 else 0


def _show_config_error(detail: str) -> None:
    # No watchdog here: the device waits for a corrected config, blinking red on every
    # output the reference profile knows, and says why on the serial console.
    print("CONFIG ERROR:", detail)
    prof = config.PROFILES["devkitc-5led"]
    ui = Indicators(_outputs(prof["leds"]), None, None, _console, "zh")
    ui.show("error", 0, detail)
    t0 = time.ticks_ms()
    while True:
        ui.tick(time.ticks_diff(time.ticks_ms(), t0))
        time.sleep_ms(50)


def main() -> None:
    try:
        with open(CONFIG) as f:
            cfg = config.parse(f.read())
    except (OSError, config.ConfigError) as e:
        _show_config_error(str(e))
        return
    board = cfg.board
    pull = machine.Pin.PULL_UP if board.get("key_active_low", True) else machine.Pin.PULL_DOWN
    hw = {
        "keys": [machine.Pin(p, machine.Pin.IN, pull) for p in board["keys"]],
        "leds": _outputs(board.get("leds")),
        "rgb": _outputs(board.get("rgb")),
        "buzzer": machine.Pin(board["buzzer"], machine.Pin.OUT, value=0)
        if board.get("buzzer") is not None else None,
        "display": _console,
    }
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wdt = machine.WDT(timeout=WDT_MS)
    gc.collect()
    dev = Device(cfg, hw, RealFS(), wlan, umqtt_factory, data_dir="/",
                 rand=_rand, ntp=_ntp(cfg.ntp) if cfg.ntp else None, wdt=wdt,
                 reset_cause=_RESET_CAUSES.get(machine.reset_cause(), "unknown"))
    dev.run(time.sleep_ms)


main()
