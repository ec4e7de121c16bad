"""The errors a user of evalterm can cause and fix, as one tree.

Every error a person can act on (a wrong option, a missing file, a server that is down) derives
from `EvaltermError`; the `evalterm` command prints such an error as one line (what is wrong and
what to do) and exits with status 2. Anything else is a bug and shows as one, with its traceback.

    EvaltermError
     ├── ConfigError         the configuration file or an EVALTERM_* variable  (collector.config)
     ├── RegistryError       the device registry refused a change               (collector.registry)
     ├── ProvisionError      a board, esptool or mpremote failed        (collector.provision.runner)
     │    └── ToolTimeout
     ├── UsageError          a command-line option or argument is wrong
     ├── InputFileError      a file the user gave cannot be used (CSV, site file)
     └── ServiceUnavailable  a server the command needs (InfluxDB, Grafana, broker) is down or
                             refused the credentials

Inbound messages have their own boundary error, `collector.protocol.ProtocolError`, which carries a
machine-readable rejection reason; it is counted and logged, never shown to a user as a command
error.
"""

from __future__ import annotations

__all__ = ["EvaltermError", "InputFileError", "ServiceUnavailable", "UsageError"]


class EvaltermError(Exception):
    """Something the user can fix; `str(exc)` says what is wrong and what to do."""


class UsageError(EvaltermError, ValueError):
    """A command-line option or argument is wrong (a ValueError too: it is a wrong value)."""


class InputFileError(EvaltermError, ValueError):
    """A file the user gave cannot be used as it is."""


class ServiceUnavailable(EvaltermError):
    """A server the command needs is unreachable or refused the credentials."""
