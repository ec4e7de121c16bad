"""Device registry: which device sits at which hall and window, its key, and whether it is active.

Keys are 32 random bytes. They leave this module only through `Device.key` (for signing and
verification) and `add`'s return value (for provisioning); `Device.__repr__` and every listing show
a fingerprint instead, so a key cannot end up in a log by accident.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from collector.errors import EvaltermError
from collector.protocol import ID_PATTERN

__all__ = ["Device", "Registry", "RegistryError", "fingerprint"]


class RegistryError(EvaltermError, ValueError):
    pass


def fingerprint(key: bytes) -> str:
    """Short, non-secret identifier of a key (first 8 bytes of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Device:
    device: str
    hall: str
    window: str
    state: str
    created_ms: int
    key: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def _device(row: tuple[Any, ...]) -> Device:
    """A Device from a (device, hall, window, state, created_ms, key_hex) row."""
    return Device(row[0], row[1], row[2], row[3], row[4], key=bytes.fromhex(row[5]))


class Registry:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cache: dict[str, Device | None] = {}
        self._at: dict[tuple[str, str], list[Device]] = {}  # active devices of a window

    def invalidate(self) -> None:
        """Forget cached rows (another process may have added or revoked devices)."""
        self._cache.clear()
        self._at.clear()

    def _forget(self, device: str) -> None:
        self._cache.pop(device, None)
        self._at.clear()

    def get(self, device: str) -> Device | None:
        if device in self._cache:
            return self._cache[device]
        row = self._conn.execute(
            "SELECT device, hall, window, state, created_ms, key_hex FROM device WHERE device=?",
            (device,),
        ).fetchone()
        dev = None if row is None else _device(row)
        # Unknown devices are not cached: a newly registered one must work at once.
        if dev is not None:
            self._cache[device] = dev
        return dev

    def add(self, device: str, hall: str, window: str, now_ms: int,
            key: bytes | None = None) -> Device:
        for what, value in (("device", device), ("hall", hall), ("window", window)):
            if not ID_PATTERN.fullmatch(value):
                raise RegistryError(f"{what} id {value!r}: use 1-32 of A-Z a-z 0-9 _ -")
        if key is None:
            key = secrets.token_bytes(32)
        if len(key) != 32:
            raise RegistryError("a device key is 32 bytes")
        existing = self.get(device)
        if existing is not None:
            raise RegistryError(f"device {device} is already registered ({existing.state})")
        self._conn.execute(
            "INSERT INTO device (device, hall, window, key_hex, state, created_ms) "
            "VALUES (?, ?, ?, ?, 'active', ?)",
            (device, hall, window, key.hex(), now_ms),
        )
        self._forget(device)
        dev = self.get(device)
        assert dev is not None
        return dev

    def revoke(self, device: str, now_ms: int) -> Device:
        dev = self.get(device)
        if dev is None:
            raise RegistryError(f"device {device} is not registered")
        self._conn.execute(
            "UPDATE device SET state='revoked', revoked_ms=? WHERE device=? AND state='active'",
            (now_ms, device),
        )
        self._forget(device)
        dev = self.get(device)
        assert dev is not None
        return dev

    def stored_ratings(self, device: str) -> int:
        """How many ratings of this device the state database holds."""
        row = self._conn.execute("SELECT count(*) FROM rating WHERE device=?", (device,)).fetchone()
        return int(row[0])

    def remove(self, device: str, *, force: bool = False) -> Device:
        """Delete a device from the registry. A device with stored ratings is an identity the
        records refer to: it is revoked, not removed, unless `force` (a simulated or test device
        whose ratings are not real)."""
        dev = self.get(device)
        if dev is None:
            raise RegistryError(f"device {device} is not registered")
        n = self.stored_ratings(device)
        if n and not force:
            raise RegistryError(
                f"device {device} has {n} stored ratings: revoke it instead (`evalterm device "
                "revoke`), or add --force if its ratings are not real (a simulated device)")
        self._conn.execute("DELETE FROM device WHERE device=?", (device,))
        self._forget(device)
        return dev

    def rotate_key(self, device: str, key: bytes | None = None) -> Device:
        """Give an active device a new key (random unless given); the old key stops working."""
        if key is None:
            key = secrets.token_bytes(32)
        if len(key) != 32:
            raise RegistryError("a device key is 32 bytes")
        dev = self.get(device)
        if dev is None:
            raise RegistryError(f"device {device} is not registered")
        if dev.state != "active":
            raise RegistryError(
                f"device {device} is {dev.state}: a revoked identity gets no new key")
        self._conn.execute("UPDATE device SET key_hex=? WHERE device=? AND state='active'",
                           (key.hex(), device))
        self._forget(device)
        dev = self.get(device)
        assert dev is not None
        return dev

    def list(self) -> list[Device]:
        rows = self._conn.execute(
            "SELECT device, hall, window, state, created_ms, key_hex FROM device "
            "ORDER BY hall, window, device"
        ).fetchall()
        return [_device(r) for r in rows]

    def active_at(self, hall: str, window: str) -> builtins.list[Device]:
        cached = self._at.get((hall, window))
        if cached is not None:
            return cached
        # The rows themselves, not their names then each device: one statement per window.
        rows = self._conn.execute(
            "SELECT device, hall, window, state, created_ms, key_hex FROM device "
            "WHERE hall=? AND window=? AND state='active' ORDER BY device",
            (hall, window),
        ).fetchall()
        devices = [_device(r) for r in rows]
        self._cache.update((d.device, d) for d in devices)
        if devices:  # like unknown devices, an empty window is not cached
            self._at[(hall, window)] = devices
        return devices
