"""The hall manager's work (issue 17): directory, 差评 follow-up cases, appeals, audit log.

Service API for the web UI: `cases.CaseService` (every action takes the acting user's name and
checks the role inside), `audit.verify`, `deadlines.due_date`. Errors are `ManagerError` with a
machine `reason`.
"""

from __future__ import annotations

from collector.errors import EvaltermError

__all__ = ["ManagerError"]


class ManagerError(EvaltermError):
    """A refused action: `reason` is a machine code (e.g. 'forbidden', 'not_found', 'state')."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
