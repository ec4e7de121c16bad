"""Over-the-air firmware updates, the collector's side (docs/firmware.md "Over-the-air updates").

    image     an update image (a folder or a tar file) and its manifest (pure)
    rollout   the staged rollout's decisions: one window first, then the rest (pure)
    server    the MQTT adapter: commands out, chunk requests in, chunks out, progress in

`evalterm device update` (collector/cli/device.py) runs a rollout with its own MQTT connection;
the running collector only ingests the devices' `ota` events like any other event.
"""

from __future__ import annotations

from collector.errors import EvaltermError

__all__ = ["OtaError"]


class OtaError(EvaltermError):
    """An update that cannot start (a bad image, no device to update, the broker down)."""
