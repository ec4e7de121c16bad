"""The device config: one JSON file per device, checked completely at boot.

Every problem is collected, so one boot shows all of them (serial console, indicators, and
a config_error event when the link part is usable). Defaults live in DEFAULTS; a board
profile is either the name of a reference profile below or a full dict.
"""

import json

# Reference boards (ESP32-DevKitC). Keys use pins with internal pull-ups and no boot-strap
# role; input-only pins 34-39 have no pull-up and 6-11 belong to the flash.
PROFILES = {
    "devkitc-5led": {
        "keys": [32, 33, 25, 26, 27],  # key 1 (非常不满意) .. key 5 (非常满意)
        "key_active_low": True,
        "leds": [19, 18, 17, 16, 4],  # one LED above each key
        "rgb": None,
        "led_active_high": True,
        "buzzer": 23,
        # Optional parts (docs/firmware.md, reference board), used when the config asks.
        "i2c": [21, 22],  # display SDA, SCL
        "audio_tx": 13,  # to the DFPlayer's RX (UART1, 9600 baud)
        "audio_busy": 35,  # the DFPlayer's BUSY (input only pin)
        # The tamper inputs (config `tamper` lists the fitted ones): input-only pins.
        "enclosure": 34,  # lid switch, normally closed to GND, 10 k pull-up
        "power_sense": 39,  # the 5 V input through a 10 k/20 k divider
        "ladder": 36,  # ADC1_CH0: the keys' resistor ladder
    },
    "devkitc-rgb": {
        "keys": [32, 33, 25, 26, 27],
        "key_active_low": True,
        "leds": None,
        "rgb": [21, 22, 13],  # one common-cathode RGB LED: red, green, blue
        "led_active_high": True,
        "buzzer": 23,
        "i2c": [18, 19],
        "audio_tx": 17,
        "audio_busy": 35,
        "enclosure": 34,
        "power_sense": 39,
        "ladder": 36,
    },
}

REASONS = ("attitude", "efficiency", "notice", "wait", "facility", "other")

DEFAULTS = {
    "lang": "zh",
    "standalone": False,
    "min_interval_ms": 5000,  # stand-alone repeat filter, like commercial terminals
    "reason_keys": ["attitude", "efficiency", "notice", "wait", "other"],
    "reason_ms": 20000,
    "thanks_ms": 3000,
    "debounce_ms": 30,
    "stuck_ms": 10000,
    "heartbeat_s": 60,
    "ntp": "pool.ntp.org",
    "outbox_records": 200,
    "outbox_bytes": 65536,
    "confirm_ms": 0,  # > 0: confirm mode, each key read out before it counts (terminal.py)
    "display": None,  # {"font": "font.etf", "page_ms": 5000}: an SSD1306 on board.i2c
    "voice": None,  # {"volume": 20, "lang": "zh"}: a DFPlayer on board.audio_tx
    "tamper": [],  # the fitted tamper inputs: "enclosure", "power", "ladder" (etfw/tamper.py)
}
TAMPER_PINS = {"enclosure": "enclosure", "power": "power_sense", "ladder": "ladder"}

BROKER_DEFAULTS = {"port": 1883, "user": None, "password": None, "keepalive": 30,
                   "topic_prefix": "evalterm", "timeout_s": 5, "tls": None}

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
_HEX = "0123456789abcdef"


class ConfigError(ValueError):
    """args[0] lists every problem. `link` holds identity, key, Wi-Fi and broker when those
    were valid, so the device can still connect and report a config_error event."""

    def __init__(self, msg: str, link=None) -> None:
        super().__init__(msg)
        self.link = link


def _is_id(v) -> bool:
    if not isinstance(v, str) or not 1 <= len(v) <= 32:
        return False
    for ch in v:
        if ch not in _ID_CHARS:
            return False
    return True


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _pins(v, n: int) -> bool:
    if not isinstance(v, list) or len(v) != n:
        return False
    for p in v:
        if not _is_int(p, 0, 48):
            return False
    return True


class Config:
    """Validated settings; attribute names follow the JSON keys (`key` holds the 32 bytes).

    No methods on purpose: a method would keep this whole module (its code) alive for as
    long as any Config lives. Without one, main.py drops the module after parsing
    (docs/firmware.md, memory budget)."""

    device: str
    hall: str
    window: str
    key: bytes
    wifi: dict
    broker: dict
    board: dict
    lang: str
    standalone: bool
    min_interval_ms: int
    reason_keys: list
    reason_ms: int
    thanks_ms: int
    debounce_ms: int
    stuck_ms: int
    heartbeat_s: int
    ntp: "list | None"
    outbox_records: int
    outbox_bytes: int
    confirm_ms: int
    display: "dict | None"
    voice: "dict | None"
    tamper: list


def mqtt_password(key: bytes) -> str:
    """The device's broker password, derived from its key (docs/protocol.md section 2):
    lowercase hex HMAC-SHA256(key, "evalterm-mqtt-password"). No second secret to store.
    Needed only here, at boot (so it is not in sign.py, which stays loaded)."""
    from binascii import hexlify

    from .sign import Signer

    return hexlify(Signer(key).mac((b"evalterm-mqtt-password",))).decode()


def _broker(b, d: dict, errs: list) -> dict:
    """The broker part (`b` as in the file), checked; credentials derived when absent."""
    broker = {}
    if not isinstance(b, dict) or not isinstance(b.get("host"), str) or not b["host"]:
        errs.append("broker: needs host")
        b = {}
    broker["host"] = b.get("host", "")
    for k in BROKER_DEFAULTS:
        broker[k] = b.get(k, BROKER_DEFAULTS[k])
    _tls(broker, "port" in b, errs)
    if not _is_int(broker["port"], 1, 65535):
        errs.append("broker.port: 1-65535")
    if not _is_int(broker["keepalive"], 10, 600):
        errs.append("broker.keepalive: 10-600 s")
    if not _is_int(broker["timeout_s"], 1, 30):
        errs.append("broker.timeout_s: 1-30 s")
    for k in ("user", "password"):
        if broker[k] is not None and not isinstance(broker[k], str):
            errs.append(f"broker.{k}: string or null")
    p = broker["topic_prefix"]
    if not isinstance(p, str) or not p or "+" in p or "#" in p:
        errs.append("broker.topic_prefix: non-empty, no wildcards")
    # Absent credentials are derived: the user is the device id, the password comes from the
    # key (mqtt_password), as `evalterm broker render` writes them. An explicit null
    # means "no credentials" (a broker that allows anonymous clients).
    if "user" not in b and _is_id(d["device"]):
        broker["user"] = d["device"]
    if "password" not in b and d["key_bytes"]:
        broker["password"] = mqtt_password(d["key_bytes"])
    return broker


def _names(v, n: int, longest: int = 64) -> bool:
    """A list of 1-`n` non-empty strings of at most `longest` characters."""
    if not isinstance(v, list) or not 1 <= len(v) <= n:
        return False
    for x in v:
        if not isinstance(x, str) or not 1 <= len(x) <= longest:
            return False
    return True


def _tls(broker: dict, port_given: bool, errs: list) -> None:
    """broker.tls: null (plain MQTT, loopback or lab only) or {"ca": [DER files in flash]},
    kept as the list of CA files; the port is then 8883 unless given."""
    t = broker["tls"]
    if t is None:
        return
    if not isinstance(t, dict) or not _names(t.get("ca"), 4, 160):
        errs.append("broker.tls: null or {\"ca\": [1-4 CA files (DER) in flash]}")
        broker["tls"] = None
        return
    broker["tls"] = list(t["ca"])
    if not port_given:
        broker["port"] = 8883


def _board(board, errs: list) -> dict:
    """The board profile (a reference profile's name or a full dict), checked."""
    if isinstance(board, str):
        if board in PROFILES:
            board = PROFILES[board]
        else:
            errs.append(f"board: unknown profile {board}")
            board = {}
    if not isinstance(board, dict):
        errs.append("board: profile name or object")
        board = {}
    used = []
    if not _pins(board.get("keys"), 5):
        errs.append("board.keys: 5 GPIO numbers, key 1 first")
    else:
        used += board["keys"]
    leds = board.get("leds")
    rgb = board.get("rgb")
    if leds is not None:
        if _pins(leds, 5):
            used += leds
        else:
            errs.append("board.leds: 5 GPIO numbers or null")
    if rgb is not None:
        if _pins(rgb, 3):
            used += rgb
        else:
            errs.append("board.rgb: 3 GPIO numbers (r, g, b) or null")
    if leds is None and rgb is None:
        errs.append("board: needs leds or rgb")
    for k in ("audio_tx", "audio_busy", "enclosure", "power_sense", "ladder"):
        p = board.get(k)
        if p is not None:
            if _is_int(p, 0, 48):
                used.append(p)
            else:
                errs.append(f"board.{k}: GPIO number or null")
    i2c = board.get("i2c")
    if i2c is not None:
        if _pins(i2c, 2):
            used += i2c
        else:
            errs.append("board.i2c: 2 GPIO numbers (sda, scl) or null")
    bz = board.get("buzzer")
    if bz is not None:
        if _is_int(bz, 0, 48):
            used.append(bz)
        else:
            errs.append("board.buzzer: GPIO number or null")
    lv = board.get("ladder_mv")
    if lv is not None and not (isinstance(lv, list) and len(lv) == 6
                               and all(_is_int(x, 0, 3300) for x in lv)
                               and all(lv[i] < lv[i + 1] for i in range(5))):
        errs.append("board.ladder_mv: 6 rising mV levels (keys 1-5, no key) or null")
    for i, pin in enumerate(used):
        if pin in used[i + 1:]:
            errs.append(f"board: GPIO {pin:d} used twice")
            break
    return board


def parse(text) -> Config:
    """Parse and check a config document; raise ConfigError listing every problem."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError("config: not valid JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError("config: not a JSON object")
    errs = []
    d = {}
    for k in DEFAULTS:
        d[k] = raw.get(k, DEFAULTS[k])
    for k in ("device", "hall", "window"):
        d[k] = raw.get(k)
        if not _is_id(d[k]):
            errs.append(f"{k}: 1-32 of A-Z a-z 0-9 _ -")
    key = raw.get("key")
    if isinstance(key, str) and len(key) == 64 and all(c in _HEX for c in key):
        d["key_bytes"] = bytes(int(key[i:i + 2], 16) for i in range(0, 64, 2))
    else:
        d["key_bytes"] = b""
        errs.append("key: 64 lowercase hex digits (32 bytes)")

    wifi = raw.get("wifi")
    if not (isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str)
            and 1 <= len(wifi["ssid"]) <= 32 and isinstance(wifi.get("password", ""), str)):
        errs.append("wifi: needs ssid (1-32 chars) and password")
        wifi = {"ssid": "", "password": ""}
    d["wifi"] = {"ssid": wifi["ssid"], "password": wifi.get("password", "")}

    d["broker"] = _broker(raw.get("broker"), d, errs)
    link_ok = not errs

    d["board"] = _board(raw.get("board", "devkitc-5led"), errs)

    if d["lang"] not in ("zh", "en"):
        errs.append("lang: zh or en")
    if not isinstance(d["standalone"], bool):
        errs.append("standalone: true or false")
    rk = d["reason_keys"]
    if not (isinstance(rk, list) and len(rk) == 5 and all(r in REASONS for r in rk)):
        errs.append("reason_keys: 5 of {}".format(", ".join(REASONS)))
    for k, lo, hi in (("min_interval_ms", 0, 600000), ("reason_ms", 3000, 120000),
                      ("thanks_ms", 500, 30000), ("debounce_ms", 5, 200),
                      ("stuck_ms", 2000, 600000), ("heartbeat_s", 10, 3600),
                      ("outbox_records", 4, 2000), ("outbox_bytes", 4096, 1048576)):
        if not _is_int(d[k], lo, hi):
            errs.append(f"{k}: integer {lo:d}-{hi:d}")
    ntp = d["ntp"]
    if isinstance(ntp, str):
        ntp = d["ntp"] = [ntp]
    if ntp is not None and not _names(ntp, 4):
        errs.append("ntp: 1-4 server names, or null (no NTP)")
    if not _is_int(d["confirm_ms"], 0, 30000) or 0 < d["confirm_ms"] < 2000:
        errs.append("confirm_ms: 0 (off) or 2000-30000")
    dp = d["display"]
    if dp is not None and not (isinstance(dp, dict) and isinstance(dp.get("font", ""), str)
                               and _is_int(dp.get("page_ms", 5000), 2000, 30000)):
        errs.append("display: null or {font, page_ms 2000-30000}")
    vc = d["voice"]
    if vc is not None and not (isinstance(vc, dict) and _is_int(vc.get("volume", 20), 0, 30)
                               and vc.get("lang", "zh") in ("zh", "en")):
        errs.append("voice: null or {volume 0-30, lang zh|en}")
    tp = d["tamper"]
    if not (isinstance(tp, list) and all(x in TAMPER_PINS for x in tp)):
        errs.append("tamper: a list of enclosure, power, ladder")
    else:
        for x in tp:
            if d["board"].get(TAMPER_PINS[x]) is None:
                errs.append(f"tamper: {x} needs board.{TAMPER_PINS[x]}")
    if errs:
        raise ConfigError("; ".join(errs), d if link_ok else None)
    c = Config()
    for k in d:
        setattr(c, "key" if k == "key_bytes" else k, d[k])
    return c
