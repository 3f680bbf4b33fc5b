"""What the SDK hands an application: a delivered ``Message`` with the operations that settle
it, and the ``Confirmation`` of a publish."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..errors import MQRouteError, UsageError
from ..model import Properties, Table
from ..protocol import Ack, Extend, Nack, Release
from .state import settled_reason

if TYPE_CHECKING:
    from .connection import Connection


class Confirmation:
    """The broker's answer to one publish. ``await confirmation`` raises if it was refused."""

    __slots__ = ("_done", "_event", "error", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self._done = False
        self._event: anyio.Event | None = None  # made only if someone waits before the answer
        self.error: MQRouteError | None = None

    @property
    def done(self) -> bool:
        return self._done

    def _settle(self, error: MQRouteError | None = None) -> None:
        if not self._done:
            if self.error is None:
                self.error = error
            self._done = True
            if self._event is not None:
                self._event.set()

    async def wait(self) -> None:
        if self._done:
            await anyio.lowlevel.checkpoint()
        else:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self.error is not None:
            raise self.error

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        if not self._done:
            return f"<Confirmation of publish {self.seq}: pending>"
        if self.error is None:
            return f"<Confirmation of publish {self.seq}: confirmed>"
        return f"<Confirmation of publish {self.seq}: {type(self.error).__name__}: {self.error}>"


class Message:
    """A delivered message, with the operations that settle it.

    Settle it exactly once: ``ack``, ``nack`` or ``reject``. Settling twice raises UsageError.
    """

    __slots__ = (
        "_conn",
        "auto_ack",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "properties",
        "redelivered",
        "routing_key",
        "settled",
        "timed_out",
    )

    def __init__(
        self,
        conn: Connection,
        *,
        body: bytes,
        properties: Properties,
        exchange: str,
        routing_key: str,
        delivery_tag: int,
        redelivered: bool,
        consumer_tag: str,
        auto_ack: bool,
    ) -> None:
        self._conn = conn
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.auto_ack = auto_ack
        self.settled = auto_ack
        self.timed_out = False  # passed its x-consumer-timeout; the broker requeued it

    def __repr__(self) -> str:
        return (
            f"<Message tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} body={self.body[:40]!r}>"
        )

    @property
    def headers(self) -> Table:
        return self.properties.headers or {}

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.properties.reply_to

    @property
    def content_type(self) -> str | None:
        return self.properties.content_type

    async def ack(self, *, multiple: bool = False) -> None:
        """Done with it: the broker forgets it. ``multiple`` also acks every earlier delivery."""
        self._conn._settle_local(self, multiple)
        await self._conn._send(Ack(delivery_tag=self.delivery_tag, multiple=multiple))

    async def nack(self, *, requeue: bool = True, multiple: bool = False) -> None:
        """Not done: requeue it (redelivered later) or, with ``requeue=False``, drop it."""
        self._conn._settle_local(self, multiple)
        await self._conn._send(
            Nack(delivery_tag=self.delivery_tag, multiple=multiple, requeue=requeue)
        )

    async def release(self, *, multiple: bool = False) -> None:
        """Give it back unprocessed: it returns to its place in the queue and the delivery
        does not count as an attempt (no ``x-delivery-count``, delivery limit or retry
        backoff). For a message the application never looked at; a failed one is nacked."""
        self._conn._settle_local(self, multiple)
        tag = self.delivery_tag
        if self._conn.protocol_version >= 3:
            await self._conn._send(Release(delivery_tag=tag, multiple=multiple))
        else:  # an older broker: the closest it has
            await self._conn._send(Nack(delivery_tag=tag, multiple=multiple, requeue=True))

    async def reject(self, *, requeue: bool = True) -> None:
        """``nack`` of this one message."""
        await self.nack(requeue=requeue)

    @contextlib.asynccontextmanager
    async def process(self, *, requeue: bool = False) -> AsyncIterator[Message]:
        """Ack when the block succeeds; nack (``requeue`` or not) when it raises::

            async with msg.process():
                handle(msg.body)

        The exception still propagates. A message settled inside the block is left alone.
        """
        try:
            yield self
        except BaseException:
            if not self.settled and self._conn.is_open:
                with anyio.CancelScope(shield=True):
                    await self.nack(requeue=requeue)
            raise
        if not self.settled:
            await self.ack()

    def json(self) -> Any:
        """The body decoded as JSON (whatever the content type says)."""
        return json.loads(self.body)

    async def extend(self, seconds: float) -> None:
        """Still working on it: its ack deadline (x-consumer-timeout) becomes ``seconds`` from
        now, as SQS's ChangeMessageVisibility."""
        if self.settled:
            raise UsageError(settled_reason(self))
        await self._conn._send(
            Extend(delivery_tag=self.delivery_tag, milliseconds=max(1, int(seconds * 1000)))
        )
