"""Shared fixtures: a real broker on an ephemeral loopback port, and a connection to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import mqroute
from mqroute.core.broker import Broker
from mqroute.server import ServerAddress, ServerConfig, serve


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
async def server(nursery: trio.Nursery, broker: Broker) -> ServerAddress:
    """The real server, in this test's nursery, on 127.0.0.1 and a free port."""
    return await nursery.start(
        lambda task_status: serve(ServerConfig(port=0), broker=broker, task_status=task_status)
    )


@pytest.fixture
async def conn(server: ServerAddress) -> AsyncIterator[mqroute.Connection]:
    async with mqroute.connect(server.url, client_name="test") as connection:
        yield connection
