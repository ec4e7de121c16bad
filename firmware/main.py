"""ESP32 entry point: build the real drivers from the board profile and run the device.

Copy to the board with the etfw/ package and a config.json (see docs/firmware.md).
"""

import gc
import time

import machine
import network
import otaboot

# The firmware slot of this boot (over-the-air updates: otaboot.py), chosen before the first
# import of etfw so that the chosen slot's package is the one imported.
_OTA = otaboot.boot("/")

from etfw import WDT_MS  # noqa: E402  the package only (small): etfw.config comes first

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


def _epoch_offset_s() -> int:
    # Ports with a 2000 epoch (older ESP32 builds) report gmtime(0) as 2000-01-01.
    return 946684800 if time.gmtime(0)[0] == 2000 else 0


def _ntp(hosts: list):
    """Tries the configured servers in order (config `ntp`; a hall on an isolated network
    lists its own, there is no public fallback); raises if none answers."""

    def sync_ms() -> int:
        import ntptime

        err = None
        for host in hosts:
            try:
                ntptime.host = host
                ntptime.settime()  # sets the RTC; time.time() is then UTC
                return (time.time() + _epoch_offset_s()) * 1000
            except Exception as e:  # unreachable or no answer: the next one
                err = e
        raise OSError(f"ntp: no server answered: {err!r}")

    return sync_ms


def _rand(n: int) -> int:
    import random

    return random.getrandbits(16) % n if n > 0 else 0


def _load_config():
    """(config, None, None, error LED pins) or (None, detail, link, error LED pins).

    The config module is the largest one and is needed once per boot: it is loaded before
    any other firmware module (the boot's heap peak is then the config or the running
    device, not both) and dropped again here. A Config keeps no reference to it
    (config.Config has no methods), nor do the values returned on error (the ConfigError
    itself would)."""
    import etfw
    from etfw import config

    leds = config.PROFILES["devkitc-5led"]["leds"]
    try:
        try:
            with open(CONFIG) as f:
                return config.parse(f.read()), None, None, leds
        except config.ConfigError as e:
            return None, str(e), e.link, leds
        except OSError as e:
            return None, f"{CONFIG}: {e}", None, leds
    finally:
        etfw.unload("config")


def _wlan():
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    return wlan


def _config_error(detail: str, link, leds) -> None:
    # Fast red blinking on every output the reference profile knows, and why on the serial
    # console. With a usable link part the device also connects and publishes a signed
    # config_error event (etfw.fault); without one it just waits for a corrected config.
    from etfw.indicators import Indicators
    from etfw.link import umqtt_factory
    from etfw.store import RealFS

    print("CONFIG ERROR:", detail)
    ui = Indicators(_outputs(leds), None, None, _console, "zh")
    if link is not None:
        from etfw.fault import ConfigFault

        gc.collect()
        dev = ConfigFault(link, detail, ui, RealFS(), _wlan(), umqtt_factory, data_dir="/",
                          rand=_rand, wdt=machine.WDT(timeout=WDT_MS))
        dev.run(time.sleep_ms)
        return
    ui.show("error", 0, detail)
    t0 = time.ticks_ms()
    while True:
        ui.tick(time.ticks_diff(time.ticks_ms(), t0))
        time.sleep_ms(50)


def _panels(cfg, board: dict, hw: dict) -> None:
    """The optional display (SSD1306 over I2C, micropython-lib's driver: `mip install
    ssd1306`) and voice module (a DFPlayer on UART1), when the config asks for them."""
    if cfg.display is not None and board.get("i2c"):
        import ssd1306  # pyright: ignore[reportMissingImports]

        sda, scl = board["i2c"]
        i2c = machine.I2C(0, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=400000)
        hw["screen"] = ssd1306.SSD1306_I2C(128, 64, i2c)
        hw["font"] = open(cfg.display.get("font", "font.etf"), "rb")
    if cfg.voice is not None and board.get("audio_tx") is not None:
        hw["voice"] = machine.UART(1, baudrate=9600, tx=board["audio_tx"])


def _tamper(cfg, board: dict, hw: dict) -> None:
    """The fitted tamper inputs (config `tamper`): the lid switch and the supply sense as
    plain inputs (34 and 39 are input-only, with external pull-ups), the key ladder on ADC1
    at 11 dB (0-3.1 V, read calibrated with read_uv)."""
    if "enclosure" in cfg.tamper:
        hw["enclosure"] = machine.Pin(board["enclosure"], machine.Pin.IN)
    if "power" in cfg.tamper:
        hw["power"] = machine.Pin(board["power_sense"], machine.Pin.IN)
    if "ladder" in cfg.tamper:
        hw["ladder"] = machine.ADC(machine.Pin(board["ladder"]), atten=machine.ADC.ATTN_11DB)


def _device(cfg):
    from etfw.app import Device
    from etfw.link import umqtt_factory
    from etfw.store import RealFS

    board = cfg.board
    pull = machine.Pin.PULL_UP if board.get("key_active_low", True) else machine.Pin.PULL_DOWN
    hw = {
        "keys": [machine.Pin(p, machine.Pin.IN, pull) for p in board["keys"]],
        "leds": _outputs(board.get("leds")),
        "rgb": _outputs(board.get("rgb")),
        "buzzer": machine.Pin(board["buzzer"], machine.Pin.OUT, value=0)
        if board.get("buzzer") is not None else None,
        "display": _console,
        # MicroPython has no starred tuple display: concatenation.
        "update": ("/", machine.reset) + _OTA,  # noqa: RUF005  (etfw/update.py)
    }
    _panels(cfg, board, hw)
    _tamper(cfg, board, hw)
    wlan = _wlan()
    wdt = machine.WDT(timeout=WDT_MS)
    gc.collect()
    return Device(cfg, hw, RealFS(), wlan, umqtt_factory, data_dir="/",
                  rand=_rand, ntp=_ntp(cfg.ntp) if cfg.ntp else None, wdt=wdt,
                  reset_cause=_RESET_CAUSES.get(machine.reset_cause(), "unknown"))


def main() -> None:
    cfg, detail, link, leds = _load_config()
    if cfg is None:
        _config_error(detail or "", link, leds)
        return
    dev = _device(cfg)
    cfg = None  # the device keeps only what it uses; the Config itself can go
    gc.collect()
    dev.run(time.sleep_ms)  # starts with the boot event, the boot's heap peak: no Config then


try:
    main()
except Exception as e:  # a slot that fails to run: reboot, otaboot counts the boot
    import sys

    sys.print_exception(e)  # pyright: ignore[reportAttributeAccessIssue]
    time.sleep_ms(1000)
    machine.reset()
