"""RPC over direct reply-to: ``Connection.call`` sends a request and waits for the reply that
carries its correlation id; ``serve_rpc`` answers requests from a queue."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import MQRouteError, RequestTimeout
from ..model import REPLY_TO
from .consumer import Consumer
from .message import Message

if TYPE_CHECKING:
    from .connection import Body, Connection


class RpcCalls:
    """One connection's calls waiting for replies, and the one consumer that brings them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._waiting: dict[str, list[Any]] = {}  # correlation id -> [event, reply]
        self._replies: Consumer | None = None
        self._lock = anyio.Lock()

    def fail(self) -> None:
        """The connection ended: every waiting call wakes (and finds it closed)."""
        for waiter in self._waiting.values():
            waiter[0].set()

    async def call(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        timeout: float = 30.0,
        **props: Any,
    ) -> Message:
        """``Connection.call``: publish with a fresh correlation id, wait for its reply."""
        await self._start()
        correlation_id = props.pop("correlation_id", None) or uuid.uuid4().hex
        waiter: list[Any] = [anyio.Event(), None]
        self._waiting[correlation_id] = waiter
        try:
            await self.conn.publish(
                exchange,
                routing_key,
                body,
                reply_to=REPLY_TO,
                correlation_id=correlation_id,
                **props,
            )
            with anyio.move_on_after(timeout) as scope:
                await waiter[0].wait()
        finally:
            self._waiting.pop(correlation_id, None)
        if scope.cancelled_caught:
            raise RequestTimeout(
                f"no reply to the request sent to {exchange!r} / {routing_key!r} within {timeout}s"
            )
        if waiter[1] is None:
            self.conn._check_open()
        reply: Message = waiter[1]
        return reply

    async def _start(self) -> None:
        async with self._lock:
            if self._replies is not None:
                return
            consumer = self.conn.consume(
                REPLY_TO, auto_ack=True, consumer_tag=f"{self.conn.connection_id}.replies"
            )
            await consumer.__aenter__()
            self._replies = consumer
            assert self.conn._tg is not None
            self.conn._tg.start_soon(self._route, consumer)

    async def _route(self, replies: Consumer) -> None:
        try:
            async for reply in replies:
                waiter = self._waiting.get(reply.correlation_id or "")
                if waiter is not None:  # else: late, or not ours; dropped
                    waiter[1] = reply
                    waiter[0].set()
        except MQRouteError:
            pass  # the connection is gone; waiting calls were woken by _fail


async def serve_rpc(
    conn: Connection,
    queue: str,
    handler: Callable[[Message], Awaitable[Body]],
    *,
    prefetch: int = 16,
    stop: anyio.Event | None = None,
) -> None:
    """Answer RPC requests arriving on ``queue`` with ``await handler(request)`` until cancelled
    (or, after finishing a request, until ``stop`` is set).

    Each reply goes to the request's ``reply_to`` with its ``correlation_id``; the request is
    acked after the reply is confirmed, or rejected (not requeued) if the handler raises.
    """
    async with conn.consume(queue, prefetch=prefetch) as requests:
        async for request in requests:
            async with request.process(requeue=False):
                reply = await handler(request)
                if request.reply_to:
                    await conn.publish(
                        "", request.reply_to, reply, correlation_id=request.correlation_id
                    )
            if stop is not None and stop.is_set():
                return
