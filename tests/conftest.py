"""Shared fixtures: a real broker on an ephemeral loopback port, and a connection to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import mqroute
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.model import ExchangeSpec, QueueSpec
from mqroute.server import ServerAddress, ServerConfig, serve


@pytest.fixture
def broker() -> Vhost:
    return Vhost()


@pytest.fixture
async def server(nursery: trio.Nursery, broker: Vhost) -> ServerAddress:
    """The real server, in this test's nursery, on 127.0.0.1 and a free port."""
    return await nursery.start(
        lambda task_status: serve(ServerConfig(port=0), broker=broker, task_status=task_status)
    )


@pytest.fixture
async def conn(server: ServerAddress) -> AsyncIterator[mqroute.Connection]:
    async with mqroute.connect(server.url, client_name="test") as connection:
        yield connection


@pytest.fixture
def b() -> Vhost:
    """A core broker (no server) with a fanout exchange "dlx" bound to queue "dead"."""
    broker = Vhost()
    broker.declare_exchange(ExchangeSpec(name="dlx", type="fanout"))
    broker.declare_queue("o", QueueSpec(name="dead"), now=1_700_000_000.0)
    broker.bind_queue("o", "dead", "dlx")
    return broker


@pytest.fixture
def s(b: Vhost) -> Session:
    """A session on ``b``, owned by "o"."""
    return b.open_session("o")
