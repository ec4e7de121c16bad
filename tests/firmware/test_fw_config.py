"""Config validation at boot: every problem listed, link part kept when usable."""

import json

import etfw.config as cfgmod
from fwfakes import KEY, config, config_dict, config_error


def _errors(d):
    try:
        cfgmod.parse(json.dumps(d))
    except cfgmod.ConfigError as e:
        return e
    return None


def test_valid_with_defaults_and_profile():
    c = config()
    assert c.device == "kp-0007" and c.key == KEY
    assert c.board["keys"] == [32, 33, 25, 26, 27]
    assert c.lang == "zh" and c.standalone is False and c.min_interval_ms == 5000
    assert c.broker["topic_prefix"] == "evalterm" and c.broker["port"] == 1883
    assert config(board="devkitc-rgb", lang="en").board["rgb"] == [21, 22, 13]


def test_every_problem_is_listed():
    d = config_dict(device="bad id!", key="00", lang="fr", reason_ms=5)
    e = _errors(d)
    assert e is not None
    msg = e.args[0]
    for part in ("device:", "key:", "lang:", "reason_ms:"):
        assert part in msg, part
    assert e.link is None  # identity and key broken: cannot even report


def test_board_errors_keep_link_for_reporting():
    bad = {"keys": [32, 33, 25, 26], "leds": None, "rgb": None, "buzzer": 23}
    e = _errors(config_dict(board=bad))
    assert e is not None
    assert "board.keys" in e.args[0] and "needs leds or rgb" in e.args[0]
    assert e.link is not None and e.link["device"] == "kp-0007"


def test_pin_conflicts_and_unknown_profile():
    b = {"keys": [32, 33, 25, 26, 27], "leds": [19, 18, 17, 16, 32], "buzzer": 23}
    assert "used twice" in _errors(config_dict(board=b)).args[0]
    assert "unknown profile" in _errors(config_dict(board="nope")).args[0]


def test_not_json():
    try:
        cfgmod.parse("{oops")
        raise AssertionError("accepted")
    except cfgmod.ConfigError as e:
        assert "JSON" in e.args[0]


def test_broker_limits():
    e = _errors(config_dict(broker={"host": "b", "port": 70000, "keepalive": 1}))
    assert "broker.port" in e.args[0] and "broker.keepalive" in e.args[0]
    assert _errors(config_dict(broker={"port": 1883})).args[0].startswith("broker: needs host")


def test_broker_credentials_derived_from_identity_and_key():
    # The same derivation as collector/provision/devconfig.py and `evalterm broker render`:
    # user = device id, password = hex HMAC-SHA256(key, "evalterm-mqtt-password").
    c = config()
    assert c.broker["user"] == "kp-0007"
    assert c.broker["password"] == (
        "f4a83141001887eca2a7663ab4a459e4e06479aee5412f61dee017a8936ae7d5")


def test_explicit_broker_credentials_win_and_null_means_none():
    c = config(broker={"host": "b", "user": "u1", "password": "p1"})
    assert c.broker["user"] == "u1" and c.broker["password"] == "p1"
    c = config(broker={"host": "b", "user": None, "password": None})
    assert c.broker["user"] is None and c.broker["password"] is None


def test_tls_and_ntp_lists():
    c = config()
    assert c.broker["tls"] is None and c.ntp == ["pool.ntp.org"]  # a string is a list of one
    b = {"host": "mq.hall", "tls": {"ca": ["ca-2026.der", "ca-2027.der"]}}
    c = config(broker=b, ntp=["10.0.0.1", "ntp.hall.gov"])
    assert c.broker["tls"] == ["ca-2026.der", "ca-2027.der"] and c.broker["port"] == 8883
    assert c.ntp == ["10.0.0.1", "ntp.hall.gov"]
    assert config(broker={"host": "h", "port": 9883, "tls": {"ca": ["a"]}}).broker["port"] == 9883
    assert config(ntp=None).ntp is None


def test_tls_and_ntp_errors():
    e = _errors(config_dict(broker={"host": "h", "tls": {"ca": []}}, ntp=[""]))
    assert e is not None and "broker.tls:" in e.args[0] and "ntp:" in e.args[0]
    e = _errors(config_dict(broker={"host": "h", "tls": "ca.der"}))
    assert e is not None and "broker.tls:" in e.args[0]


def test_display_voice_and_confirm_mode():
    c = config()
    assert c.display is None and c.voice is None and c.confirm_ms == 0
    c = config(display={"font": "font.etf", "page_ms": 8000}, voice={"volume": 25},
               confirm_ms=6000)
    assert c.display["page_ms"] == 8000 and c.voice["volume"] == 25 and c.confirm_ms == 6000
    assert c.board["i2c"] == [21, 22] and c.board["audio_tx"] == 13
    detail, _ = config_error(display={"page_ms": 100}, voice={"volume": 31}, confirm_ms=500)
    assert "display:" in detail and "voice:" in detail and "confirm_ms:" in detail
    board = dict(cfgmod.PROFILES["devkitc-5led"])
    board["audio_tx"] = 32  # key 1's pin
    detail, _ = config_error(board=board)
    assert "GPIO 32 used twice" in detail


def test_config_checks_the_tamper_option():
    detail, _ = config_error(tamper=["lid"])
    assert "tamper: a list of enclosure, power, ladder" in detail
    board = {"keys": [32, 33, 25, 26, 27], "leds": [19, 18, 17, 16, 4], "buzzer": 23}
    detail, _ = config_error(board=board, tamper=["ladder"])
    assert "tamper: ladder needs board.ladder" in detail
    board["ladder_mv"] = [300, 200, 1000, 1600, 2200, 3100]
    board["ladder"] = 36
    detail, _ = config_error(board=board, tamper=["ladder"])
    assert "board.ladder_mv" in detail
