"""Session-wide hook: install Label Studio before the first test that needs it, with visible progress.

pytest captures output while fixtures run, so installing LS inside the ``ls_server`` fixture (minutes on the
first run) would leave ``make test`` silent and looking hung. Here it happens right after collection, with
capturing off, so the progress lines of ``tests.lsserver`` reach the terminal.
"""

from __future__ import annotations

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any("ls_server" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from tests.lsserver import LabelStudioServer

    server = LabelStudioServer()
    if (server.template_dir / "TEMPLATE_OK").exists() and server._ls_installed():
        return
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        if reporter is not None:
            reporter.write_line("Label Studio is not installed for the tests yet: installing it first", bold=True)
        server.ensure_template()
