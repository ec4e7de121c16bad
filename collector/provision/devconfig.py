"""The device's `config.json`: the hall's site settings plus the device's identity and key.

A site file (JSON, one per hall, kept by the technician) holds what every device of the hall
shares: Wi-Fi, broker address, language, board profile and any other option of
docs/firmware.md. The device's own part (device, hall, window, key) comes from the registry.
The result is checked by the firmware's own parser (firmware/etfw/config.py) before it goes
onto a board, so a config that would make the device blink red is refused here.

The bytes are deterministic (sorted keys), so an unchanged config has an unchanged hash.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from collector.provision.runner import ProvisionError
from collector.registry import Device

__all__ = ["IDENTITY_KEYS", "MQTT_PASSWORD_LABEL", "device_config", "firmware_profiles",
           "load_site", "mqtt_password"]

MQTT_PASSWORD_LABEL = b"evalterm-mqtt-password"
IDENTITY_KEYS = ("device", "hall", "window", "key")


def mqtt_password(key: bytes) -> str:
    """A device's broker password (docs/protocol.md §2); the firmware derives the same."""
    return hmac.new(key, MQTT_PASSWORD_LABEL, hashlib.sha256).hexdigest()


def load_site(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisionError(
            f"no site file {path}: it holds the hall's Wi-Fi and broker settings "
            "(docs/provisioning.md, step 1); pass --site FILE") from None
    try:
        site = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProvisionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(site, dict):
        raise ProvisionError(f"{path}: must be a JSON object")
    mine = [k for k in IDENTITY_KEYS if k in site]
    if mine:
        raise ProvisionError(f"{path}: {', '.join(mine)} come from the registry, not the site "
                             "file; remove them")
    for k in ("user", "password"):
        if k in (site.get("broker") or {}):
            raise ProvisionError(f"{path}: broker.{k} is derived per device from its key "
                                 "(docs/protocol.md §2); remove it from the site file")
    return site


_FW_PACKAGE = "_evalterm_provision_etfw"


def _firmware_config(firmware_dir: Path) -> ModuleType:
    """The firmware's config module, loaded from `firmware_dir` under a private name."""
    name = f"{_FW_PACKAGE}.config"
    if name in sys.modules and getattr(sys.modules[name], "_loaded_from", None) == firmware_dir:
        return sys.modules[name]
    for mod in [m for m in sys.modules if m == _FW_PACKAGE or m.startswith(_FW_PACKAGE + ".")]:
        del sys.modules[mod]
    init = firmware_dir / "etfw" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        _FW_PACKAGE, init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None or not init.exists():
        raise ProvisionError(f"no firmware package in {firmware_dir}; pass --firmware DIR")
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[_FW_PACKAGE] = pkg
    spec.loader.exec_module(pkg)
    module = importlib.import_module(name)
    module._loaded_from = firmware_dir  # type: ignore[attr-defined]
    return module


def firmware_profiles(firmware_dir: Path) -> list[str]:
    return sorted(_firmware_config(firmware_dir).PROFILES)


def device_config(site: dict[str, Any], dev: Device, firmware_dir: Path,
                  board: str | None = None) -> bytes:
    """config.json for `dev`, validated by the firmware's parser."""
    cfg: dict[str, Any] = dict(site)
    if board is not None:
        profiles = firmware_profiles(firmware_dir)
        if board not in profiles:
            raise ProvisionError(f"unknown board profile {board!r}: one of {', '.join(profiles)} "
                                 "(or an inline profile in the site file, docs/firmware.md)")
        cfg["board"] = board
    cfg.update(device=dev.device, hall=dev.hall, window=dev.window, key=dev.key.hex())
    text = json.dumps(cfg, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
    fwconfig = _firmware_config(firmware_dir)
    try:
        fwconfig.parse(text)
    except fwconfig.ConfigError as exc:
        # The firmware's message lists every problem; none of them contains the key.
        raise ProvisionError(f"the device would refuse this config: {exc}; fix the site "
                             "file") from None
    return text.encode()
