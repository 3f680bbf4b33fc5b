"""pytest plugin (registered by mqroute's entry point): the ``mqroute_broker`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import BrokerThread, BrokerUrl


@pytest.fixture
def mqroute_broker() -> Iterator[BrokerUrl]:
    """The URL of a fresh, real broker for this test (in-process, in memory). Its
    ``amqp_url`` (``amqp://guest:guest@127.0.0.1:PORT/``) is for pika, kombu or Celery code."""
    thread = BrokerThread().start()
    try:
        yield thread.url
    finally:
        thread.stop()
