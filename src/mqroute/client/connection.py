"""The async SDK: a thin I/O layer over the sans-I/O protocol, written on anyio.

anyio runs on trio (and asyncio), so the same client serves trio programs and tests today and
asyncio applications too. One connection runs two background tasks: a reader that turns frames
into answers, confirms and deliveries, and a writer that sends whatever accumulated since its
last write in one ``send`` (so a burst of publishes or acks costs a few syscalls, not one each).

::

    async with mqroute.connect("mqroute://localhost:5680") as conn:
        await conn.declare_queue("tasks", durable=True)
        await conn.publish("", "tasks", b"hello")            # returns after the confirm
        async with conn.consume("tasks", prefetch=10) as messages:
            async for msg in messages:
                await msg.ack()
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import attrs

from .. import protocol
from ..errors import (
    BrokerError,
    ConnectionClosed,
    ConsumerCancelled,
    PreconditionFailed,
    ProtocolError,
    UsageError,
)
from ..model import EMPTY_PROPERTIES, Properties, Table
from ..protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Bind,
    Blocked,
    Cancelled,
    Close,
    Confirm,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeleteQueue,
    Deliver,
    Error,
    ExplainRoute,
    Frame,
    Get,
    GetOk,
    Heartbeat,
    Inspect,
    Ok,
    PeerClosed,
    PurgeQueue,
    Redrive,
    Return,
    Role,
    TimedOut,
    Unbind,
    Unblocked,
    Welcome,
    check_welcome,
    hello_for,
)
from .bodies import Serializer, encode_body
from .consumer import Consumer, cancelled
from .message import Confirmation, Message
from .publisher import Publisher
from .rpc import RpcCalls
from .state import ClientState
from .url import parse_url

DEFAULT_URL = "mqroute://127.0.0.1:5680"
WRITE_BUFFER_LIMIT = 1024 * 1024  # senders wait while more than this is unsent
RECEIVE_SIZE = 256 * 1024
PAGE_ROWS = 500  # rows asked for per page of an admin listing

#: bytes and str are sent as they are; any other value goes through a serializer (bodies.py).
Body = bytes | bytearray | memoryview | str | object


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class QueueInfo:
    """What ``declare_queue`` answers: the queue's name (server-named if you gave none)."""

    name: str
    message_count: int
    consumer_count: int
    arguments: Table = attrs.field(factory=dict)  # the queue's own (also from a passive declare)
    delayed_count: int = 0  # waiting for an x-delay or a retry backoff


def connect(
    url: str = DEFAULT_URL,
    *,
    client_name: str | None = None,
    heartbeat: float = 60.0,
    connect_timeout: float = 10.0,
    serializer: Serializer | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Connection:
    """A connection to use as ``async with connect(url) as conn``.

    The URL names the user, password and vhost: ``mqroute://user:password@host:5680/vhost``
    (url.py); ``mqroutes://`` connects over TLS, with ``ssl_context`` if given (else the
    system's trusted CAs). ``heartbeat`` (seconds, 0 = off) is what this side asks for; the
    broker may lower it. A broker silent for two heartbeat intervals is taken for dead.
    ``serializer`` turns bodies that are not bytes or str into bytes (``mqroute.bodies``).
    """
    return Connection(
        url,
        client_name=client_name,
        heartbeat=heartbeat,
        connect_timeout=connect_timeout,
        serializer=serializer,
        ssl_context=ssl_context,
    )


class Connection:
    """A connection to a broker. States: unopened → open → closed; each misuse says which."""

    def __init__(
        self,
        url: str,
        *,
        client_name: str | None,
        heartbeat: float,
        connect_timeout: float,
        serializer: Serializer | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._address = parse_url(url)
        self.url = self._address.shown  # never the password: it goes into errors and logs
        self.serializer = serializer
        self.host, self.port = self._address.host, self._address.port
        if ssl_context is not None and not self._address.tls:
            raise UsageError("an ssl_context needs a mqroutes:// URL")
        self._ssl_context = ssl_context
        self.client_name = client_name or f"mqroute-python pid {os.getpid()}"
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.connection_id = ""
        self.server = ""
        self.protocol_version = PROTOCOL_VERSION
        self._state = _State.UNOPENED
        self._closed_error: ConnectionClosed | None = None
        self._closing = False  # close() has begun: what follows is our doing
        self._proto = protocol.Connection(Role.CLIENT)
        self._stream: anyio.abc.ByteStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._tasks: contextlib.AsyncExitStack | None = None
        self._tracked = ClientState()  # requests, confirms, unsettled deliveries
        self._requests: dict[int, list[Any]] = {}  # rid -> [event, answer]: who waits
        self._consumers: dict[str, Consumer] = {}
        self._consumer_ids = itertools.count(1)
        self._out: list[bytes] = []
        self._out_size = 0
        self._out_ready = anyio.Event()
        self._out_drained = anyio.Event()
        self._closed_by_server = anyio.Event()
        self._rpc = RpcCalls(self)
        self._heartbeat_interval = 0.0
        self._last_received = 0.0
        self._last_sent = 0.0
        self.blocked: str | None = None  # why the broker asked us to stop publishing, if it did
        self._unblocked = anyio.Event()
        self._unblocked.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Connection:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.close(polite=not cancelled(exc_type))

    async def open(self) -> None:
        if self._state is not _State.UNOPENED:
            raise UsageError(f"connection is {self._state.value}; open it only once")
        with anyio.fail_after(self.connect_timeout):
            try:
                if self._address.tls:
                    self._stream = await anyio.connect_tcp(
                        self.host,
                        self.port,
                        tls=True,
                        ssl_context=self._ssl_context or ssl.create_default_context(),
                        tls_standard_compatible=False,
                    )
                else:
                    self._stream = await anyio.connect_tcp(self.host, self.port)
            except (OSError, ssl.SSLError) as exc:
                raise ConnectionClosed(f"cannot connect to {self.url}: {exc}") from exc
            address = self._address
            hello = hello_for(
                self.client_name,
                int(self.heartbeat * 1000),
                user=address.user,
                password=address.password,
                vhost=address.vhost,
            )
            await self._stream.send(self._proto.send(hello))
            welcome = await self._read_welcome()
        self.connection_id = welcome.connection_id
        self.protocol_version = welcome.version
        self.server = welcome.server
        self._heartbeat_interval = welcome.heartbeat_ms / 1000
        self._state = _State.OPEN
        self._last_received = self._last_sent = anyio.current_time()
        self._tasks = contextlib.AsyncExitStack()
        await self._tasks.enter_async_context(self._background())

    @contextlib.asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        """The reader, the writer and the heartbeat, for as long as the connection is open.
        A task that fails cancels what runs inside the connection's block, and its error
        comes out of the block (or ``close``)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reader)
            tg.start_soon(self._writer)
            if self._heartbeat_interval:
                tg.start_soon(self._heartbeats)
            yield
            tg.cancel_scope.cancel()

    async def _read_welcome(self) -> Welcome:
        assert self._stream is not None
        while True:
            event = self._proto.next_event()
            if event is NEED_DATA:
                try:
                    data = await self._stream.receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    data = b""
                except (anyio.BrokenResourceError, OSError, ssl.SSLError) as exc:
                    # Under TLS 1.3 a server that refuses our certificate says so here.
                    cause = exc.__cause__ or exc
                    raise ConnectionClosed(f"cannot talk to {self.url}: {cause}") from None
                self._proto.receive_data(data)
                continue
            if isinstance(event, Welcome):
                try:
                    check_welcome(event)
                except ProtocolError as exc:
                    raise ConnectionClosed(f"cannot talk to {self.url}: {exc}") from None
                return event
            if isinstance(event, Close):
                reason = BrokerError.from_code(event.code or "INTERNAL_ERROR", event.text)
                raise ConnectionClosed(f"broker refused the connection: {reason}", reason)
            raise ConnectionClosed("broker closed the connection during the handshake")

    async def close(self, *, polite: bool = True) -> None:
        """Close: the broker requeues what this connection left unacked.

        ``polite`` waits (up to 5 s) for the broker to acknowledge the close. Leaving the
        ``async with`` block because of a cancellation closes at once: the background tasks
        that would hear the answer are being cancelled too.
        """
        if self._state is _State.UNOPENED:
            self._state = _State.CLOSED
            return
        if self._tg is None or self._tasks is None:
            return
        tg, self._tg = self._tg, None
        tasks, self._tasks = self._tasks, None
        self._closing = True
        try:
            if self._state is _State.OPEN and polite:
                with anyio.move_on_after(5, shield=True):
                    await self._send(Close(code=None, text="closed by client"))
                    await self._closed_by_server.wait()
        except ConnectionClosed:
            pass
        finally:
            self._fail(self._closed_by_us())
            tg.cancel_scope.cancel()
            try:
                await tasks.aclose()  # must not be inside a newer cancel scope
            finally:  # also when that exit re-raises our own cancellation
                if self._stream is not None:
                    with anyio.CancelScope(shield=True):
                        await self._stream.aclose()

    def _closed_by_us(self) -> ConnectionClosed:
        return ConnectionClosed(f"connection to {self.url} was closed by this client")

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    async def wait_closed(self) -> None:
        """Until the connection has ended, whoever ended it (the server, the network, us)."""
        await self._closed_by_server.wait()

    def _check_open(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._state is _State.UNOPENED:
            raise UsageError("connection is not open yet; use 'async with connect(...)'")
        assert self._closed_error is not None
        raise ConnectionClosed(str(self._closed_error), self._closed_error.reason)

    def _fail(self, error: ConnectionClosed) -> None:
        """The connection is over: everything waiting on it gets ``error``."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._closed_error = error
        for slot in self._requests.values():
            slot[0].set()
        self._tracked.fail(error)
        for consumer in self._consumers.values():
            consumer._end(error)
        self._rpc.fail()
        self._out_ready.set()
        self._out_drained.set()
        self._closed_by_server.set()
        self._unblocked.set()

    # --- sending -------------------------------------------------------------------------

    async def _send(self, frame: Frame) -> None:
        self._check_open()
        await self._send_bytes(self._proto.send(frame))

    async def _send_bytes(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        self._out_ready.set()
        if self._out_size > WRITE_BUFFER_LIMIT:
            if self._out_drained.is_set():
                self._out_drained = anyio.Event()
            await self._out_drained.wait()
            self._check_open()

    async def _writer(self) -> None:
        assert self._stream is not None
        while self._state is _State.OPEN:
            await self._out_ready.wait()
            self._out_ready = anyio.Event()
            if not self._out:
                continue
            chunks, self._out, self._out_size = self._out, [], 0
            try:
                await self._stream.send(b"".join(chunks))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._fail(ConnectionClosed(f"connection to {self.url} lost: {exc}"))
                return
            self._last_sent = anyio.current_time()
            self._out_drained.set()

    async def _request(self, frame_factory: Any, **fields: Any) -> Any:
        """Send a request with a fresh rid and wait for its answer: the typed reply
        (protocol/replies.py), or GetOk."""
        self._check_open()
        rid = self._tracked.request(frame_factory)
        slot: list[Any] = [anyio.Event(), None]
        self._requests[rid] = slot
        try:
            await self._send(frame_factory(rid=rid, **fields))
            await slot[0].wait()
        finally:
            self._requests.pop(rid, None)
            self._tracked.forget_request(rid)
        answer = slot[1]
        if answer is None:
            self._check_open()
        if isinstance(answer, BrokerError):
            raise answer
        return answer

    # --- reading -------------------------------------------------------------------------

    async def _reader(self) -> None:
        assert self._stream is not None
        proto = self._proto
        try:
            while True:
                event = proto.next_event()
                if event is NEED_DATA:
                    try:
                        data = await self._stream.receive(RECEIVE_SIZE)
                    except anyio.EndOfStream:
                        data = b""
                    self._last_received = anyio.current_time()
                    proto.receive_data(data)
                    continue
                if not self._handle(event):
                    return
        except ProtocolError as exc:
            self._fail(ConnectionClosed(f"broker sent bad data: {exc}", exc))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionClosed(f"connection to {self.url} lost: {exc}"))

    def _handle(self, event: Any) -> bool:
        kind = type(event)
        if kind is Deliver:
            consumer = self._consumers.get(event.consumer_tag)
            if consumer is not None:
                consumer._deliver(self._message(event, consumer.auto_ack))
        elif kind is Confirm:
            self._tracked.confirmed(event)
        elif kind is Ok or kind is Error or kind is GetOk:
            answered = self._tracked.answer(event)
            slot = self._requests.get(event.rid)
            if answered is not None and slot is not None:
                slot[1] = answered[1]
                slot[0].set()
        elif kind is Return:
            self._tracked.returned(event)
        elif kind is Blocked:
            self.blocked = event.reason
            if self._unblocked.is_set():
                self._unblocked = anyio.Event()
        elif kind is Unblocked:
            self.blocked = None
            self._unblocked.set()
        elif kind is TimedOut:
            self._tracked.timed_out(event.delivery_tag)
        elif kind is Cancelled:
            consumer = self._consumers.pop(event.consumer_tag, None)
            if consumer is not None:
                consumer._end(
                    ConsumerCancelled(
                        f"consumer {event.consumer_tag!r} cancelled by the broker: {event.reason}"
                    )
                )
        elif kind is Close:
            if self._closing and event.code is None:  # the answer to our own Close
                error = self._closed_by_us()
            elif event.code is None:
                error = ConnectionClosed(f"broker closed the connection: {event.text}")
            else:
                reason = BrokerError.from_code(event.code, event.text)
                error = ConnectionClosed(f"broker closed the connection: {reason}", reason)
            self._fail(error)
            return False
        elif kind is PeerClosed:
            if self._closing:
                self._fail(self._closed_by_us())
            else:
                self._fail(ConnectionClosed(f"connection to {self.url} closed by the broker"))
            return False
        return True  # Heartbeat: receiving it was the point

    def _message(self, event: Deliver | GetOk, auto_ack: bool) -> Message:
        msg = Message(
            self,
            body=event.body,
            properties=event.properties,
            exchange=event.exchange,
            routing_key=event.routing_key,
            delivery_tag=event.delivery_tag,
            redelivered=event.redelivered,
            consumer_tag=getattr(event, "consumer_tag", ""),
            auto_ack=auto_ack,
        )
        self._tracked.delivered(msg)
        return msg

    def _settle_local(self, msg: Message, multiple: bool) -> None:
        """Check and record a settle before it is sent; settling twice is a UsageError."""
        if not msg.auto_ack and not msg.settled:
            self._check_open()
        self._tracked.settle(msg, multiple)

    async def _heartbeats(self) -> None:
        interval = self._heartbeat_interval
        while self._state is _State.OPEN:
            now = anyio.current_time()
            if now - self._last_received > 2 * interval:
                self._fail(
                    ConnectionClosed(
                        f"broker at {self.url} sent nothing for {now - self._last_received:.1f}s "
                        "(missed heartbeats)"
                    )
                )
                assert self._stream is not None
                await self._stream.aclose()
                return
            if now - self._last_sent >= interval / 2:
                self._last_sent = now
                await self._send(Heartbeat())
            wait = min(self._last_sent + interval / 2, self._last_received + 2 * interval) - now
            await anyio.sleep(max(wait, 0.001))

    # --- declarations --------------------------------------------------------------------

    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: Table | None = None,
    ) -> None:
        """Create an exchange, or check that an equal one exists (PreconditionFailed if not)."""
        await self._request(
            DeclareExchange,
            name=name,
            type=type,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            passive=passive,
            arguments=arguments or {},
        )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        await self._request(DeleteExchange, name=name, if_unused=if_unused)

    async def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: Table | None = None,
    ) -> QueueInfo:
        """Create a queue (server-named if ``name`` is empty) or check an equal one exists."""
        result = await self._request(
            DeclareQueue,
            name=name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            passive=passive,
            arguments=arguments or {},
        )
        return QueueInfo(
            result.queue,
            result.message_count,
            result.consumer_count,
            result.arguments,
            result.delayed_count,
        )

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        result = await self._request(DeleteQueue, name=name, if_unused=if_unused, if_empty=if_empty)
        return int(result.message_count)

    async def purge_queue(self, name: str) -> int:
        """Drop a queue's ready messages; returns how many."""
        result = await self._request(PurgeQueue, name=name)
        return int(result.message_count)

    async def redrive(
        self, queue: str, *, to_exchange: str | None = None, limit: int | None = None
    ) -> int:
        """Move messages out of dead-letter queue ``queue``: back to the queue each last died
        in, or to ``to_exchange``; at most ``limit`` of them. Returns how many moved."""
        result = await self._request(Redrive, queue=queue, exchange=to_exchange, limit=limit or 0)
        return int(result.moved)

    async def explain_route(
        self, exchange: str, routing_key: str, headers: Table | None = None
    ) -> dict[str, Any]:
        """Where a message would go — matching bindings, exchange by exchange, and the queues
        that would receive it. Nothing is published. ``{"queues": [...], "steps": [...]}``."""
        result = await self._request(
            ExplainRoute, exchange=exchange, routing_key=routing_key, headers=headers or {}
        )
        return {"queues": result.queues, "steps": result.steps}

    async def inspect(self, what: str) -> Any:
        """Admin listing: queues, exchanges, bindings, consumers, connections (rows), or
        status (a table)."""
        if what == "status":
            return (await self._request(Inspect, what=what, offset=0, limit=1)).result
        rows: list[Any] = []
        while True:  # the broker answers a page at a time
            page = await self._request(Inspect, what=what, offset=len(rows), limit=PAGE_ROWS)
            rows.extend(page.result)
            if not page.result or len(rows) >= page.total:
                return rows

    async def bind_queue(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        await self._binding(Bind, queue, exchange, routing_key, arguments, to_exchange=False)

    async def unbind_queue(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        await self._binding(Unbind, queue, exchange, routing_key, arguments, to_exchange=False)

    async def bind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        """Messages routed by ``source`` that match also go through ``destination``."""
        await self._binding(Bind, destination, source, routing_key, arguments, to_exchange=True)

    async def unbind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        await self._binding(Unbind, destination, source, routing_key, arguments, to_exchange=True)

    async def _binding(
        self,
        frame: type[Bind] | type[Unbind],
        destination: str,
        source: str,
        routing_key: str,
        arguments: Table | None,
        *,
        to_exchange: bool,
    ) -> None:
        await self._request(
            frame,
            destination=destination,
            source=source,
            routing_key=routing_key,
            arguments=arguments or {},
            to_exchange=to_exchange,
        )

    # --- publishing ----------------------------------------------------------------------

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        mandatory: bool = False,
        properties: Properties | None = None,
        **props: Any,
    ) -> None:
        """Publish and wait for the broker's confirm.

        Keyword arguments are message properties (``content_type``, ``headers``,
        ``persistent``, ``message_id``, …) or pass ``properties=Properties(...)``. Raises
        MessageReturned if ``mandatory`` and no queue matched, NotFound for a missing exchange,
        ConnectionClosed if the connection went before the confirm arrived — then the broker
        may or may not have the message, so retry with the same ``message_id``. While the
        broker has blocked publishing (flow control, or a memory or disk alarm; ``blocked``
        says why) it waits; acks and other calls go on meanwhile.
        """
        await (await self._send_publish(exchange, routing_key, body, mandatory, properties, props))

    async def _send_publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        mandatory: bool,
        properties: Properties | None,
        props: dict[str, Any],
    ) -> Confirmation:
        if properties is None:
            properties = Properties(**props) if props else EMPTY_PROPERTIES
        elif props:
            properties = attrs.evolve(properties, **props)
        body, properties = encode_body(body, properties, self.serializer)
        if self.blocked is not None:
            # Flow control or a broker alarm: publishes wait; acks and requests go on.
            await self._unblocked.wait()
        self._check_open()
        if len(body) > self._proto.max_message_size:
            raise PreconditionFailed(  # what the broker would answer, without sending it all
                f"message body of {len(body)} bytes exceeds the maximum of "
                f"{self._proto.max_message_size}"
            )
        # Encoded before it is numbered: a value the protocol cannot carry fails this call only.
        data = self._proto.send_publish(exchange, routing_key, body, properties, mandatory)
        confirmation = Confirmation(self._tracked.next_seq)
        self._tracked.published(confirmation)
        await self._send_bytes(data)
        return confirmation

    async def call(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        timeout: float = 30.0,
        **props: Any,
    ) -> Message:
        """RPC: publish a request and wait for its reply (a Message).

        Replies come over direct reply-to (``amq.rabbitmq.reply-to``): no queue is declared
        per call. Raises RequestTimeout after ``timeout`` seconds; a reply that comes later is
        dropped. The server side is ``serve_rpc``.
        """
        return await self._rpc.call(exchange, routing_key, body, timeout=timeout, **props)

    def publisher(self, *, max_in_flight: int = 1000) -> Publisher:
        """Pipelined publishing: many messages in flight, confirms awaited in bulk.

        ::

            async with conn.publisher(max_in_flight=1000) as pub:
                for order in orders:
                    await pub.publish("orders", "order.created", encode(order))
            # here every message is confirmed, or the first failure was raised
        """
        return Publisher(self, max_in_flight)

    # --- consuming -----------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = 0,
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: Table | None = None,
    ) -> Consumer:
        """A push consumer: ``async with conn.consume(q, prefetch=10) as messages``.

        ``prefetch`` bounds unacked deliveries to this consumer (0 = no limit). Leaving the
        block cancels the consumer and requeues messages that arrived but were not yet handed
        to you.
        """
        tag = consumer_tag or f"{self.connection_id}.c{next(self._consumer_ids)}"
        return Consumer(self, queue, tag, prefetch, auto_ack, exclusive, arguments or {})

    async def get(self, queue: str, *, auto_ack: bool = False) -> Message | None:
        """Pull one message, or None if the queue has none ready."""
        answer = await self._request(Get, queue=queue, auto_ack=auto_ack)
        if isinstance(answer, GetOk):
            return self._message(answer, auto_ack)
        return None
