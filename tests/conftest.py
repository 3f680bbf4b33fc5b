"""Shared fixtures: a real broker on an ephemeral loopback port, and a connection to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import mqroute
from mqroute.core.broker import Broker
from mqroute.core.session import Session
from mqroute.model import ExchangeSpec, QueueSpec
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


@pytest.fixture
def b() -> Broker:
    """A core broker (no server) with a fanout exchange "dlx" bound to queue "dead"."""
    broker = Broker()
    broker.now = 1_700_000_000.0
    broker.declare_exchange(ExchangeSpec(name="dlx", type="fanout"))
    broker.declare_queue("o", QueueSpec(name="dead"))
    broker.bind_queue("o", "dead", "dlx")
    return broker


@pytest.fixture
def s(b: Broker) -> Session:
    """A session on ``b``, owned by "o"."""
    return b.open_session("o")
