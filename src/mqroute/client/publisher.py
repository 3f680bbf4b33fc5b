"""Pipelined publishing: many publishes in flight, their confirms awaited in bulk."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from ..errors import MQRouteError, PublishError
from ..model import Properties
from .message import Confirmation

if TYPE_CHECKING:
    from .connection import Body, Connection


class Publisher:
    """Keeps up to ``max_in_flight`` publishes unconfirmed; see ``Connection.publisher``."""

    def __init__(self, conn: Connection, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.conn = conn
        self.max_in_flight = max_in_flight
        self.failures: list[Confirmation] = []
        self._in_flight: collections.deque[Confirmation] = collections.deque()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            await self.flush()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        mandatory: bool = False,
        properties: Properties | None = None,
        **props: Any,
    ) -> Confirmation:
        """Send one message; waits only while ``max_in_flight`` are unconfirmed."""
        in_flight = self._in_flight
        if len(in_flight) >= self.max_in_flight:
            await self._retire(in_flight.popleft())
            # One confirm usually settles many (multiple=True): retire those without waiting,
            # so the next publishes go out in a batch instead of one per wake-up.
            while in_flight and in_flight[0].done:
                self._note(in_flight.popleft())
        confirmation = await self.conn._send_publish(
            exchange, routing_key, body, mandatory, properties, props
        )
        in_flight.append(confirmation)
        return confirmation

    async def flush(self) -> None:
        """Wait for every confirm; raise the first failure (all are in ``failures``)."""
        while self._in_flight:
            await self._retire(self._in_flight.popleft())
        if self.failures:
            first = self.failures[0].error
            assert first is not None
            if len(self.failures) > 1 and isinstance(first, PublishError):
                first.add_note(f"{len(self.failures)} publishes failed; see Publisher.failures")
            raise first

    async def _retire(self, confirmation: Confirmation) -> None:
        try:
            await confirmation
        except MQRouteError:
            self.failures.append(confirmation)

    def _note(self, confirmation: Confirmation) -> None:
        """Retire a confirmation that is already settled."""
        if confirmation.error is not None:
            self.failures.append(confirmation)
