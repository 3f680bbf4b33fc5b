"""The blocking client, for scripts, Flask/Django views and thread pools.

It runs the async SDK on a trio loop in a background thread; every method hands its work to
that loop and waits for the answer, so callers need to know nothing of trio. It may be used
from several threads at once (publishes from many threads are safe)::

    with mqroute.connect_blocking("mqroute://127.0.0.1:5680") as conn:
        conn.declare_queue("tasks", durable=True)
        conn.publish("", "tasks", b"resize image 42", persistent=True)
        for msg in conn.consume("tasks", prefetch=1):
            handle(msg.body)
            msg.ack()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import trio

from ..errors import MQRouteError
from ..model import Properties, Table
from .connection import Body, Connection, QueueInfo, connect
from .consumer import Consumer
from .loop_thread import LoopThread
from .message import Confirmation, Message
from .publisher import Publisher


class BlockingMessage:
    """A delivered message; ``ack``, ``nack``, ``reject``, ``release`` and ``extend`` block
    until sent. Its data (``body``, ``headers``, ``json()``, …) is the async ``Message``'s."""

    def __init__(self, conn: BlockingConnection, message: Message) -> None:
        self._conn = conn
        self.message = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)  # body, properties, headers, routing_key, …

    def __repr__(self) -> str:
        return repr(self.message)

    def ack(self, *, multiple: bool = False) -> None:
        self._conn._call(self.message.ack, multiple=multiple)

    def nack(self, *, requeue: bool = True, multiple: bool = False) -> None:
        self._conn._call(self.message.nack, requeue=requeue, multiple=multiple)

    def reject(self, *, requeue: bool = True) -> None:
        self._conn._call(self.message.reject, requeue=requeue)

    def release(self, *, multiple: bool = False) -> None:
        self._conn._call(self.message.release, multiple=multiple)

    def extend(self, seconds: float) -> None:
        self._conn._call(self.message.extend, seconds)

    @contextlib.contextmanager
    def process(self, *, requeue: bool = False) -> Iterator[BlockingMessage]:
        """Ack when the block succeeds; nack (``requeue`` or not) when it raises."""
        try:
            yield self
        except BaseException:
            if not self.message.settled:
                self.nack(requeue=requeue)
            raise
        if not self.message.settled:
            self.ack()


class BlockingConfirmation:
    """The broker's answer to one pipelined publish; ``wait()`` blocks for it."""

    def __init__(self, conn: BlockingConnection, confirmation: Confirmation) -> None:
        self._conn = conn
        self.confirmation = confirmation

    @property
    def done(self) -> bool:
        return self.confirmation.done

    @property
    def error(self) -> MQRouteError | None:
        return self.confirmation.error

    def wait(self) -> None:
        """Block until the broker answered; raise if it refused the message."""
        self._conn._call(self.confirmation.wait)

    def __repr__(self) -> str:
        return repr(self.confirmation)


class BlockingPublisher:
    """Pipelined publishing; see ``Connection.publisher``. Leaving the ``with`` block waits
    for every confirm and raises the first failure (all are in ``failures``)."""

    def __init__(self, conn: BlockingConnection, publisher: Publisher) -> None:
        self._conn = conn
        self.publisher = publisher

    def __enter__(self) -> BlockingPublisher:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.flush()

    @property
    def failures(self) -> list[Confirmation]:
        return self.publisher.failures

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        mandatory: bool = False,
        properties: Properties | None = None,
        **props: Any,
    ) -> BlockingConfirmation:
        """Send one message; blocks only while ``max_in_flight`` are unconfirmed."""
        confirmation = self._conn._call(
            self.publisher.publish,
            exchange,
            routing_key,
            body,
            mandatory=mandatory,
            properties=properties,
            **props,
        )
        return BlockingConfirmation(self._conn, confirmation)

    def flush(self) -> None:
        self._conn._call(self.publisher.flush)


class BlockingConnection:
    """A connection whose methods block. Made by ``connect_blocking``."""

    def __init__(self, url: str, **options: Any) -> None:
        self._conn: Connection = connect(url, **options)
        self._loop = LoopThread("mqroute-blocking")
        self._stop: trio.Event

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> BlockingConnection:
        async def main(ready: Callable[[], None]) -> None:
            self._stop = trio.Event()
            async with self._conn:  # opened and closed (politely) in this one task
                ready()
                await self._stop.wait()

        self._loop.start(main)
        return self

    def close(self) -> None:
        """Close the connection and stop its thread (what was unacked is requeued)."""
        if self._loop.alive:

            async def stop() -> None:
                self._stop.set()

            self._loop.run(stop)
            self._loop.join()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(fn, *args, **kwargs)

    @property
    def is_open(self) -> bool:
        return self._conn.is_open

    @property
    def blocked(self) -> str | None:
        """Why the broker asked this connection to stop publishing, if it did."""
        return self._conn.blocked

    @property
    def connection_id(self) -> str:
        return self._conn.connection_id

    @property
    def url(self) -> str:
        return self._conn.url

    # The same names as the async SDK.

    def wait_closed(self) -> None:
        """Block until the connection has ended, whoever ended it."""
        self._call(self._conn.wait_closed)

    def declare_exchange(self, name: str, type: str = "direct", **options: Any) -> None:
        self._call(self._conn.declare_exchange, name, type, **options)

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        self._call(self._conn.delete_exchange, name, if_unused=if_unused)

    def declare_queue(self, name: str = "", **options: Any) -> QueueInfo:
        result: QueueInfo = self._call(self._conn.declare_queue, name, **options)
        return result

    def delete_queue(self, name: str, **options: Any) -> int:
        return int(self._call(self._conn.delete_queue, name, **options))

    def purge_queue(self, name: str) -> int:
        return int(self._call(self._conn.purge_queue, name))

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._call(self._conn.bind_queue, queue, exchange, routing_key, arguments)

    def unbind_queue(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._call(self._conn.unbind_queue, queue, exchange, routing_key, arguments)

    def bind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._call(self._conn.bind_exchange, destination, source, routing_key, arguments)

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._call(self._conn.unbind_exchange, destination, source, routing_key, arguments)

    def redrive(self, queue: str, **options: Any) -> int:
        return int(self._call(self._conn.redrive, queue, **options))

    def explain_route(
        self, exchange: str, routing_key: str, headers: Table | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            self._conn.explain_route, exchange, routing_key, headers
        )
        return result

    def inspect(self, what: str) -> Any:
        return self._call(self._conn.inspect, what)

    def publisher(self, *, max_in_flight: int = 1000) -> BlockingPublisher:
        return BlockingPublisher(self, self._conn.publisher(max_in_flight=max_in_flight))

    def call(
        self, exchange: str, routing_key: str, body: Body, *, timeout: float = 30.0, **props: Any
    ) -> BlockingMessage:
        """RPC: publish a request and block for its reply (raises RequestTimeout)."""
        reply = self._call(self._conn.call, exchange, routing_key, body, timeout=timeout, **props)
        return BlockingMessage(self, reply)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        mandatory: bool = False,
        properties: Properties | None = None,
        **props: Any,
    ) -> None:
        """Publish and wait for the broker's confirm (raises as the async ``publish``)."""
        self._call(
            self._conn.publish,
            exchange,
            routing_key,
            body,
            mandatory=mandatory,
            properties=properties,
            **props,
        )

    def get(self, queue: str, *, auto_ack: bool = False) -> BlockingMessage | None:
        message = self._call(self._conn.get, queue, auto_ack=auto_ack)
        return BlockingMessage(self, message) if message is not None else None

    def consume(
        self, queue: str, *, prefetch: int = 0, auto_ack: bool = False, **options: Any
    ) -> Iterator[BlockingMessage]:
        """Messages as they come, until the loop is left (which cancels the consumer)."""
        consumer: Consumer = self._conn.consume(
            queue, prefetch=prefetch, auto_ack=auto_ack, **options
        )
        self._call(consumer.__aenter__)
        try:
            while True:
                try:
                    message = self._call(consumer.__anext__)
                except StopAsyncIteration:
                    return
                yield BlockingMessage(self, message)
        finally:
            if self._loop.alive:
                self._call(consumer.cancel)


def connect_blocking(url: str = "mqroute://127.0.0.1:5680", **options: Any) -> BlockingConnection:
    """An open blocking connection (use it in a ``with`` block to close it)."""
    return BlockingConnection(url, **options).open()
