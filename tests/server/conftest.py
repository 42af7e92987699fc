"""The session's server: a real uvicorn on loopback, in a background thread, over the shared engine."""

from __future__ import annotations

import pytest

from .support import ServerThread


@pytest.fixture(scope="session")
def server(engine):
    from leapdecode.server import create_app

    with ServerThread(create_app(engine, max_queue=128)) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    return server.client()
