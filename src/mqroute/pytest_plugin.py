"""pytest plugin (registered by mqroute's entry point): the ``mqroute_broker`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import BrokerThread


@pytest.fixture
def mqroute_broker() -> Iterator[str]:
    """The URL of a fresh, real broker for this test (in-process, in memory)."""
    thread = BrokerThread().start()
    try:
        yield thread.url
    finally:
        thread.stop()
