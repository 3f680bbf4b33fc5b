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

import collections
import contextlib
import enum
import itertools
import json
import math
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import anyio
import anyio.abc
import attrs

from .. import protocol
from ..errors import (
    BrokerError,
    ConnectionClosed,
    ConsumerCancelled,
    MessageNacked,
    MessageReturned,
    MQRouteError,
    PreconditionFailed,
    ProtocolError,
    PublishError,
    RequestTimeout,
    UsageError,
)
from ..model import EMPTY_PROPERTIES, REPLY_TO, Properties, Table
from ..protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Ack,
    Bind,
    Blocked,
    Cancel,
    Cancelled,
    Close,
    Confirm,
    Consume,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeleteQueue,
    Deliver,
    Error,
    ExplainRoute,
    Extend,
    Frame,
    Get,
    GetOk,
    Heartbeat,
    Inspect,
    Nack,
    Ok,
    PeerClosed,
    PurgeQueue,
    Redrive,
    Release,
    Return,
    Role,
    TimedOut,
    Unbind,
    Unblocked,
    Welcome,
    check_welcome,
    hello_for,
    read_reply,
)
from .bodies import Serializer, encode_body

DEFAULT_URL = "mqroute://127.0.0.1:5680"
WRITE_BUFFER_LIMIT = 1024 * 1024  # senders wait while more than this is unsent
RECEIVE_SIZE = 256 * 1024
CANCEL_TIMEOUT = 10.0  # leaving a consume block waits at most this long for the broker
CHECKPOINT_EVERY = 64  # buffered messages handed out between two scheduler checkpoints
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
) -> Connection:
    """A connection to use as ``async with connect(url) as conn``.

    ``heartbeat`` (seconds, 0 = off) is what this side asks for; the broker may lower it. A
    broker silent for two heartbeat intervals is taken for dead. ``serializer`` turns bodies
    that are not bytes or str into bytes (see ``mqroute.bodies``).
    """
    return Connection(
        url,
        client_name=client_name,
        heartbeat=heartbeat,
        connect_timeout=connect_timeout,
        serializer=serializer,
    )


def parse_url(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqroute":
        raise ValueError(f"expected a mqroute:// URL, not {url!r}")
    return parts.hostname or "127.0.0.1", parts.port or 5680


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
            raise UsageError(self._conn._settled_reason(self))
        await self._conn._send(
            Extend(delivery_tag=self.delivery_tag, milliseconds=max(1, int(seconds * 1000)))
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
    ) -> None:
        self.url = url
        self.serializer = serializer
        self.host, self.port = parse_url(url)
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
        self._stream: anyio.abc.SocketStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._rids = itertools.count(1)
        self._requests: dict[int, list[Any]] = {}  # rid -> [event, answer]
        self._next_seq = 1
        self._confirms: collections.OrderedDict[int, Confirmation] = collections.OrderedDict()
        self._consumers: dict[str, Consumer] = {}
        self._consumer_ids = itertools.count(1)
        self._unsettled: collections.OrderedDict[int, Message] = collections.OrderedDict()
        self._out: list[bytes] = []
        self._out_size = 0
        self._out_ready = anyio.Event()
        self._out_drained = anyio.Event()
        self._closed_by_server = anyio.Event()
        self._calls: dict[str, list[Any]] = {}  # correlation id -> [event, reply]
        self._replies: Consumer | None = None
        self._replies_lock = anyio.Lock()
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
        await self.close(polite=not _cancelled(exc_type))

    async def open(self) -> None:
        if self._state is not _State.UNOPENED:
            raise UsageError(f"connection is {self._state.value}; open it only once")
        with anyio.fail_after(self.connect_timeout):
            try:
                self._stream = await anyio.connect_tcp(self.host, self.port)
            except OSError as exc:
                raise ConnectionClosed(f"cannot connect to {self.url}: {exc}") from exc
            hello = hello_for(self.client_name, int(self.heartbeat * 1000))
            await self._stream.send(self._proto.send(hello))
            welcome = await self._read_welcome()
        self.connection_id = welcome.connection_id
        self.protocol_version = welcome.version
        self.server = welcome.server
        self._heartbeat_interval = welcome.heartbeat_ms / 1000
        self._state = _State.OPEN
        self._last_received = self._last_sent = anyio.current_time()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        self._tg.start_soon(self._writer)
        if self._heartbeat_interval:
            self._tg.start_soon(self._heartbeats)

    async def _read_welcome(self) -> Welcome:
        assert self._stream is not None
        while True:
            event = self._proto.next_event()
            if event is NEED_DATA:
                try:
                    data = await self._stream.receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    data = b""
                self._proto.receive_data(data)
                continue
            if isinstance(event, Welcome):
                try:
                    check_welcome(event)
                except ProtocolError as exc:
                    raise ConnectionClosed(f"cannot talk to {self.url}: {exc}") from None
                return event
            if isinstance(event, Close):
                raise ConnectionClosed(f"broker refused the connection: {event.code} {event.text}")
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
        if self._tg is None:
            return
        tg, self._tg = self._tg, None
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
                await tg.__aexit__(None, None, None)  # must not be inside a newer cancel scope
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
        for confirmation in self._confirms.values():
            confirmation._settle(error)
        self._confirms.clear()
        for consumer in self._consumers.values():
            consumer._end(error)
        for waiter in self._calls.values():
            waiter[0].set()
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
        rid = next(self._rids)
        slot: list[Any] = [anyio.Event(), None]
        self._requests[rid] = slot
        try:
            await self._send(frame_factory(rid=rid, **fields))
            await slot[0].wait()
        finally:
            self._requests.pop(rid, None)
        answer = slot[1]
        if answer is None:
            self._check_open()
        if isinstance(answer, Error):
            raise BrokerError.from_code(answer.code, answer.text)
        if isinstance(answer, Ok):
            return read_reply(frame_factory, answer)
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
            self._confirm(event)
        elif kind is Ok or kind is Error or kind is GetOk:
            slot = self._requests.get(event.rid)
            if slot is not None:
                slot[1] = event
                slot[0].set()
        elif kind is Return:
            confirmation = self._confirms.get(event.seq)
            if confirmation is not None:
                confirmation.error = MessageReturned(
                    event.code, event.reply_text, event.exchange, event.routing_key
                )
        elif kind is Blocked:
            self.blocked = event.reason
            if self._unblocked.is_set():
                self._unblocked = anyio.Event()
        elif kind is Unblocked:
            self.blocked = None
            self._unblocked.set()
        elif kind is TimedOut:
            late = self._unsettled.pop(event.delivery_tag, None)
            if late is not None:
                late.settled = late.timed_out = True
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
        if not auto_ack:
            self._unsettled[event.delivery_tag] = msg
        return msg

    def _settle_local(self, msg: Message, multiple: bool) -> None:
        """Check and record a settle before it is sent; settling twice is a UsageError."""
        if msg.auto_ack:
            raise UsageError("message was delivered with auto_ack; there is nothing to settle")
        if msg.settled:
            raise UsageError(self._settled_reason(msg))
        self._check_open()
        if multiple:
            while self._unsettled:
                tag, earlier = next(iter(self._unsettled.items()))
                if tag > msg.delivery_tag:
                    break
                self._unsettled.popitem(last=False)
                earlier.settled = True
        self._unsettled.pop(msg.delivery_tag, None)
        msg.settled = True

    @staticmethod
    def _settled_reason(msg: Message) -> str:
        if msg.timed_out:
            return (
                f"delivery {msg.delivery_tag} passed its ack deadline (x-consumer-timeout) "
                "and went back to the queue"
            )
        return f"message with delivery tag {msg.delivery_tag} is already settled"

    def _confirm(self, event: Confirm) -> None:
        confirms = self._confirms
        error: MQRouteError | None
        if event.ok:
            error = None
        elif event.error_code is not None:
            error = BrokerError.from_code(event.error_code, event.error_text or "")
        else:
            error = MessageNacked(f"the broker nacked the message: {event.error_text}")
        if not event.multiple:
            confirmation = confirms.pop(event.seq, None)
            if confirmation is not None:
                confirmation._settle(error)
            return
        while confirms:
            seq = next(iter(confirms))
            if seq > event.seq:
                break
            confirms.popitem(last=False)[1]._settle(error)

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
        seq = self._next_seq
        self._next_seq += 1
        confirmation = Confirmation(seq)
        self._confirms[seq] = confirmation
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
        await self._start_replies()
        correlation_id = props.pop("correlation_id", None) or uuid.uuid4().hex
        waiter: list[Any] = [anyio.Event(), None]
        self._calls[correlation_id] = waiter
        try:
            await self.publish(
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
            self._calls.pop(correlation_id, None)
        if scope.cancelled_caught:
            raise RequestTimeout(
                f"no reply to the request sent to {exchange!r} / {routing_key!r} within {timeout}s"
            )
        if waiter[1] is None:
            self._check_open()
        reply: Message = waiter[1]
        return reply

    async def _start_replies(self) -> None:
        async with self._replies_lock:
            if self._replies is not None:
                return
            consumer = self.consume(
                REPLY_TO, auto_ack=True, consumer_tag=f"{self.connection_id}.replies"
            )
            await consumer.__aenter__()
            self._replies = consumer
            assert self._tg is not None
            self._tg.start_soon(self._route_replies, consumer)

    async def _route_replies(self, replies: Consumer) -> None:
        try:
            async for reply in replies:
                waiter = self._calls.get(reply.correlation_id or "")
                if waiter is not None:  # else: late, or not ours; dropped
                    waiter[1] = reply
                    waiter[0].set()
        except MQRouteError:
            pass  # the connection is gone; waiting calls were woken by _fail

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
        # Never blocks the connection's reader: the broker's prefetch bounds it; with prefetch 0
        # the application chose an unbounded buffer.
        self._send_stream, self._receive_stream = anyio.create_memory_object_stream[Message](
            max_buffer_size=math.inf
        )
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
        if _cancelled(exc_type):
            # No answer can come while we are cancelled; closing the connection (which the
            # cancellation is about to do) requeues everything this consumer held.
            self._active = False
            self.conn._consumers.pop(self.tag, None)
            self._send_stream.close()
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
        self._send_stream.close()

    async def _requeue_buffered(self) -> None:
        while True:
            try:
                msg = self._receive_stream.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            if not msg.settled and self.conn.is_open:
                await msg.release()  # never handed out: no delivery attempt

    def _deliver(self, msg: Message) -> None:
        self.received += 1
        self._send_stream.send_nowait(msg)

    def _end(self, error: MQRouteError) -> None:
        self._error = error
        self._send_stream.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            # Messages already buffered are handed out without a trip through the scheduler;
            # a checkpoint every CHECKPOINT_EVERY keeps the loop cancellable and fair.
            self._unyielded += 1
            if self._unyielded < CHECKPOINT_EVERY:
                try:
                    return self._receive_stream.receive_nowait()
                except anyio.WouldBlock:
                    pass
            self._unyielded = 0
            return await self._receive_stream.receive()
        except anyio.EndOfStream:
            if self._error is not None and self._active:
                raise self._error from None
            raise StopAsyncIteration from None


def _cancelled(exc_type: type[BaseException] | None) -> bool:
    """Whether a block is being left because of a cancellation (trio's or asyncio's)."""
    if exc_type is None:
        return False
    return issubclass(exc_type, anyio.get_cancelled_exc_class())


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
