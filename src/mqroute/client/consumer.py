"""A push consumer: the messages a subscription brings, buffered between the connection's
reader and the application's ``async for``."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ..errors import BrokerError, ConnectionClosed, MQRouteError, RemoteProtocolError, UsageError
from ..model import Table
from ..protocol import Cancel, Consume
from .message import Message

if TYPE_CHECKING:
    from .connection import Connection

CANCEL_TIMEOUT = 10.0  # leaving a consume block waits at most this long for the broker
CHECKPOINT_EVERY = 64  # buffered messages handed out between two scheduler checkpoints


class Consumer:
    """An active consumer; iterate it for messages. Made by ``Connection.consume``."""

    def __init__(
        self,
        conn: Connection,
        queue: str,
        tag: str,
        prefetch: int,
        auto_ack: bool,
        exclusive: bool,
        arguments: Table,
    ) -> None:
        self.conn = conn
        self.queue = queue
        self.tag = tag
        self.prefetch = prefetch
        self.auto_ack = auto_ack
        self.exclusive = exclusive
        self.arguments = arguments
        # Never blocks the connection's reader. With manual acks the broker sends at most
        # ``prefetch`` unacked deliveries, so the buffer never holds more; more is the broker's
        # protocol error. Prefetch 0, or auto_ack, is an unbounded buffer the application chose.
        self._buffer: collections.deque[Message] = collections.deque()
        self.capacity = prefetch if prefetch and not auto_ack else None
        self._arrived = anyio.Event()
        self._ended = False
        self._error: MQRouteError | None = None
        self._active = False
        self._unyielded = 0
        self.received = 0  # messages delivered to this consumer so far

    async def __aenter__(self) -> Consumer:
        if self._active:
            raise UsageError("this consumer is already active")
        self.conn._check_open()
        self.conn._consumers[self.tag] = self
        self._active = True
        try:
            await self.conn._request(
                Consume,
                queue=self.queue,
                consumer_tag=self.tag,
                prefetch=self.prefetch,
                auto_ack=self.auto_ack,
                exclusive=self.exclusive,
                arguments=self.arguments,
            )
        except BaseException:
            self.conn._consumers.pop(self.tag, None)
            self._active = False
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if cancelled(exc_type):
            # No answer can come while we are cancelled; closing the connection (which the
            # cancellation is about to do) requeues everything this consumer held.
            self._active = False
            self.conn._consumers.pop(self.tag, None)
            self._end(None)
            return
        await self.cancel()

    async def cancel(self) -> None:
        """Stop receiving; release what arrived but was not handed out."""
        if not self._active:
            return
        self._active = False
        conn = self.conn
        if conn.is_open and self.tag in conn._consumers:
            with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                try:
                    await conn._request(Cancel, consumer_tag=self.tag)
                except (BrokerError, ConnectionClosed):
                    pass
                conn._consumers.pop(self.tag, None)
                await self._requeue_buffered()
        self._end(None)

    async def _requeue_buffered(self) -> None:
        while self._buffer:
            msg = self._buffer.popleft()
            if not msg.settled and self.conn.is_open:
                await msg.release()  # never handed out: no delivery attempt

    def _deliver(self, msg: Message) -> None:
        self.received += 1
        buffer = self._buffer
        if self.capacity is not None and len(buffer) >= self.capacity:
            # Deliveries past their ack deadline are void (the broker requeued them and no
            # longer counts them against prefetch): they make room first.
            self._buffer = buffer = collections.deque(m for m in buffer if not m.timed_out)
            if len(buffer) >= self.capacity:
                raise RemoteProtocolError(
                    f"the broker sent consumer {self.tag!r} more than its prefetch of "
                    f"{self.capacity} unacked deliveries"
                )
        buffer.append(msg)
        self._arrived.set()

    @property
    def buffered(self) -> int:
        """Messages arrived and not yet handed out."""
        return len(self._buffer)

    def _end(self, error: MQRouteError | None) -> None:
        if error is not None:
            self._error = error
        self._ended = True
        self._arrived.set()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        # Messages already buffered are handed out without a trip through the scheduler;
        # a checkpoint every CHECKPOINT_EVERY keeps the loop cancellable and fair.
        # (With none buffered, waiting for the next is the trip.)
        self._unyielded += 1
        if self._unyielded >= CHECKPOINT_EVERY and self._buffer:
            self._unyielded = 0
            await anyio.lowlevel.checkpoint()
        while True:
            buffer = self._buffer
            while buffer:
                msg = buffer.popleft()
                if not msg.timed_out:  # void: the broker requeued it, it comes again
                    return msg
            if self._ended:
                if self._error is not None and self._active:
                    raise self._error
                raise StopAsyncIteration
            self._unyielded = 0
            self._arrived = anyio.Event()
            await self._arrived.wait()


def cancelled(exc_type: type[BaseException] | None) -> bool:
    """Whether a block is being left because of a cancellation (trio's or asyncio's)."""
    if exc_type is None:
        return False
    return issubclass(exc_type, anyio.get_cancelled_exc_class())
