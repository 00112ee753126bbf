"""Shared by every test: torch on one thread, and Label Studio installed before the first test needs it.

Torch: on two shared cores a second torch thread makes a small fit up to 30x slower whenever another process holds
a core (measured: 40 s instead of 1.4 s for one head fit while a simulation ran), so tests would time out on a busy
machine for reasons that have nothing to do with the code under test. One thread is how the worker and the
simulator run.

Label Studio: pytest captures output while fixtures run, so installing LS inside the ``ls_server`` fixture
(minutes on the first run) would leave ``make test`` silent and looking hung. Here it happens right after
collection, with capturing off, so the progress lines of ``tests.lsserver`` reach the terminal.
"""

from __future__ import annotations

import pytest

from ml_backend.models.encoders import configure_threads

configure_threads(1)


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
