"""The hall manager's web UI (issue 17): cases, steps, appeals and the directory, in a browser.

`build_ui(db, settings) -> Starlette`: an ASGI app meant to be mounted by the collector's HTTP
server (e.g. at `/ui`); it works at any mount path. Every action goes through
`collector.manager.cases.CaseService`, which checks the roles and writes the audit log; this
package only reads for display and never decides who may do what.
"""

from __future__ import annotations

from collector.web.ui.app import UiSettings, build_ui

__all__ = ["UiSettings", "build_ui"]
