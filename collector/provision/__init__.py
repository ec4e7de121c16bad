"""Provisioning a hall: flash MicroPython, install the firmware and each device's identity and
key, register it, and generate the broker's users and ACL (docs/provisioning.md).

    runner     the one seam through which every external tool runs (dry-run, recorded argv)
    esp        esptool: image check, chip detection, erase, write, verify
    board      mpremote: read the board back, install files
    build      the firmware compiled with mpy-cross for the board's architecture
    devconfig  the device's config.json (site file + identity + key), checked by the firmware
    device     provision, rotate-key, replace
    broker     Mosquitto password file, ACL, config snippet, reload
    report     the per-hall provisioning CSV
"""

from collector.provision.runner import ProvisionError, ToolResult, ToolRunner

__all__ = ["ProvisionError", "ToolResult", "ToolRunner"]
