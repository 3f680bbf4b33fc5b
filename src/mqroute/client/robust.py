"""An opt-in robust connection: it reconnects with backoff, re-declares what it declared and
resumes its consumers.

::

    async with mqroute.connect_robust(url) as conn:
        await conn.declare_queue("tasks", durable=True)      # re-declared after a reconnect
        async with conn.consume("tasks", prefetch=10) as messages:
            async for msg in messages:                      # goes on across broker restarts
                await msg.ack()

Calls made while the broker is away wait for the next connection. What it cannot hide: a
publish whose confirm was lost with the connection raises
ConnectionClosed (the broker may or may not have it) unless ``retry_publishes=True`` and the
message has a ``message_id``, in which case it is sent again after the reconnect (pair it with
``x-dedup-window`` to keep it single). Messages delivered on the old connection can no longer
be acked; the broker redelivers them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc

from ..errors import ConnectionClosed, UsageError
from .connection import Body, Connection, QueueInfo, connect
from .message import Message

log = logging.getLogger("mqroute.robust")


class RobustConnection:
    """Made by ``connect_robust``; the same methods as ``Connection`` for declaring, binding,
    publishing, getting and consuming."""

    def __init__(
        self,
        url: str,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        retry_publishes: bool = False,
        **options: Any,
    ) -> None:
        self.url = url
        self.options = options
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retry_publishes = retry_publishes
        self.reconnects = 0
        self._conn: Connection | None = None
        self._connected = anyio.Event()
        self._replay: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._consumers: list[RobustConsumer] = []
        self._tasks: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None  # consumers' first pumps run here
        self._closing = False

    async def __aenter__(self) -> RobustConnection:
        self._tasks = contextlib.AsyncExitStack()
        await self._tasks.enter_async_context(self._supervising())
        if self._conn is None:
            await self.__aexit__(None, None, None)
            raise ConnectionClosed(f"cannot connect to {self.url}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.aclose()

    @contextlib.asynccontextmanager
    async def _supervising(self) -> AsyncIterator[None]:
        """The supervisor task for the life of the block, from its first connection on."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            first = anyio.Event()
            tg.start_soon(self._supervise, first)
            await first.wait()
            yield
            tg.cancel_scope.cancel()

    async def _supervise(self, first: anyio.Event) -> None:
        """Keep one connection open; on loss, wait, reconnect, replay, resume consumers."""
        delay = self.min_backoff
        while not self._closing:
            try:
                async with connect(self.url, **self.options) as conn:
                    for method, args, kwargs in self._replay:
                        await getattr(conn, method)(*args, **kwargs)
                    self._conn = conn
                    self._connected.set()
                    first.set()
                    delay = self.min_backoff
                    async with anyio.create_task_group() as pumps:
                        for consumer in self._consumers:
                            pumps.start_soon(consumer._pump, conn)
                        await conn.wait_closed()
                        pumps.cancel_scope.cancel()
            except ConnectionClosed as exc:
                if not first.is_set():
                    first.set()
                    return  # the first connection failed: __aenter__ reports it
                log.warning(
                    "connection to %s lost (%s); reconnecting in %.1fs", self.url, exc, delay
                )
            self._conn = None
            if self._connected.is_set():  # waiters on the current event stay valid until then
                self._connected = anyio.Event()
            if self._closing:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            self.reconnects += 1

    async def _current(self) -> Connection:
        while self._conn is None or not self._conn.is_open:
            if self._closing:
                raise UsageError("the robust connection is closed")
            await self._connected.wait()
        return self._conn

    async def _call(self, method: str, *args: Any, replay: bool = False, **kwargs: Any) -> Any:
        """Run a request on the current connection; idempotent ones retry across reconnects."""
        while True:
            conn = await self._current()
            try:
                result = await getattr(conn, method)(*args, **kwargs)
            except ConnectionClosed:
                if not replay:
                    raise
                continue  # declarations are idempotent: again on the next connection
            if replay:
                self._replay.append((method, args, kwargs))
            return result

    # --- the Connection interface --------------------------------------------------------

    async def declare_exchange(self, *args: Any, **kwargs: Any) -> None:
        await self._call("declare_exchange", *args, replay=True, **kwargs)

    async def declare_queue(self, *args: Any, **kwargs: Any) -> QueueInfo:
        result: QueueInfo = await self._call("declare_queue", *args, replay=True, **kwargs)
        return result

    async def bind_queue(self, *args: Any, **kwargs: Any) -> None:
        await self._call("bind_queue", *args, replay=True, **kwargs)

    async def bind_exchange(self, *args: Any, **kwargs: Any) -> None:
        await self._call("bind_exchange", *args, replay=True, **kwargs)

    async def get(self, queue: str, **kwargs: Any) -> Message | None:
        result: Message | None = await self._call("get", queue, **kwargs)
        return result

    async def publish(self, exchange: str, routing_key: str, body: Body, **props: Any) -> None:
        """Publish and wait for the confirm; see the module docstring for what a lost
        connection does to it."""
        retry = self.retry_publishes and props.get("message_id") is not None
        while True:
            conn = await self._current()
            try:
                await conn.publish(exchange, routing_key, body, **props)
                return
            except ConnectionClosed:
                if not retry:
                    raise
                log.info("publishing %s again after a reconnect", props["message_id"])

    def consume(self, queue: str, **options: Any) -> RobustConsumer:
        return RobustConsumer(self, queue, options)


class RobustConsumer:
    """Messages from ``queue`` across reconnects; leave the ``async with`` to stop."""

    def __init__(self, owner: RobustConnection, queue: str, options: dict[str, Any]) -> None:
        self.owner = owner
        self.queue = queue
        self.options = options
        # A hand-over, no buffer: what waits is in the current consumer's, bounded by prefetch.
        self._send, self._receive = anyio.create_memory_object_stream[Message](0)
        self._stopped = False

    async def __aenter__(self) -> RobustConsumer:
        conn = await self.owner._current()
        assert self.owner._tg is not None
        self._first = anyio.Event()
        self.owner._tg.start_soon(self._pump_first, conn)
        await self._first.wait()
        self.owner._consumers.append(self)  # from now on, resumed on every new connection
        return self

    async def _pump_first(self, conn: Connection) -> None:
        try:
            await self._pump(conn, self._first)
        except ConnectionClosed:
            pass  # the supervisor resumes us on the next connection

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopped = True
        if self in self.owner._consumers:
            self.owner._consumers.remove(self)
        self._send.close()

    async def _pump(self, conn: Connection, started: anyio.Event | None = None) -> None:
        """Copy one connection's deliveries into this consumer, until either ends."""
        try:
            async with conn.consume(self.queue, **self.options) as messages:
                if started is not None:
                    started.set()
                async for msg in messages:
                    if self._stopped:
                        return
                    await self._send.send(msg)
        except (ConnectionClosed, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            if started is not None:
                started.set()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


def connect_robust(url: str = "mqroute://127.0.0.1:5680", **options: Any) -> RobustConnection:
    """A connection that survives broker restarts; ``async with connect_robust(url) as conn``."""
    return RobustConnection(url, **options)
