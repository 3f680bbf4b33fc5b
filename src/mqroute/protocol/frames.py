"""The native protocol's frames: one attrs class per frame type, with its number on the wire
and the side that may send it. docs/protocol.md lists them all; a test holds the two equal."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from ..model import Properties, Table
from .values import CHECKS, ENCODERS

PROTOCOL_VERSION = 4
SUPPORTED_VERSIONS = (2, 3, 4)  # 3 adds Release, 4 the login fields of Hello
#: Before the handshake ends a peer may send only this much in one frame (RabbitMQ: 4 KiB
#: before tune), so an unknown client cannot make the server buffer more.
HANDSHAKE_FRAME_SIZE = 4096
#: The largest fragment either side sends or accepts once open, negotiated in the handshake:
#: the smaller of both wishes, never below HANDSHAKE_FRAME_SIZE (RabbitMQ's default frame_max).
DEFAULT_MAX_FRAME_SIZE = 128 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Room beside the body for the rest of a frame (names, keys, properties and headers).
ENVELOPE_SIZE = 128 * 1024


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


#: Every frame class by its number on the wire.
FRAME_TYPES: dict[int, type[Frame]] = {}


class Frame:
    """Base of every frame event. ``frame_type`` is its number on the wire."""

    __slots__ = ()
    frame_type: ClassVar[int]
    sender: ClassVar[frozenset[Role]]
    _names: ClassVar[tuple[str, ...]]
    _required: ClassVar[int]
    _defaults: ClassVar[tuple[Any, ...]]
    _checks: ClassVar[tuple[Callable[[str, Any], Any], ...]]
    _encoders: ClassVar[tuple[tuple[str, Callable[[Any], Any] | None], ...]]


def _frame(code: int, *senders: Role) -> Callable[[type[Any]], type[Any]]:
    def register(cls: type[Any]) -> type[Any]:
        fields = attrs.fields(cls)
        cls.frame_type = code
        cls.sender = frozenset(senders)
        cls._names = tuple(f.name for f in fields)
        # Fields with defaults may be left off the end (a frame grows by appending fields).
        cls._required = sum(1 for f in fields if f.default is attrs.NOTHING)
        cls._defaults = tuple(f.default for f in fields)
        cls._checks = tuple(CHECKS[f.type] for f in fields)
        cls._encoders = tuple((f.name, ENCODERS.get(f.type)) for f in fields)
        assert code not in FRAME_TYPES
        FRAME_TYPES[code] = cls
        return cls

    return register


C, S = Role.CLIENT, Role.SERVER


# Connection


@_frame(1, C)
@attrs.frozen(kw_only=True)
class Hello(Frame):
    """The client's opening. Clients before protocol version 4 send the first four fields
    only: they log in as guest to vhost ``/``, as RabbitMQ's clients do by default."""

    versions: list[int]
    client: str
    heartbeat_ms: int  # the client's wish; 0 = none
    max_frame_size: int = 0  # the client's wish; 0 = whatever the server chooses
    user: str = "guest"
    password: str = attrs.field(default="guest", repr=False)  # never in a log or traceback
    vhost: str = "/"


@_frame(2, S)
@attrs.frozen(kw_only=True)
class Welcome(Frame):
    version: int
    server: str
    heartbeat_ms: int  # what both sides use now; 0 = none
    max_frame_size: int  # the largest fragment both sides send now
    connection_id: str
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # the largest body the broker takes


@_frame(3, C, S)
@attrs.frozen(kw_only=True)
class Heartbeat(Frame):
    pass


@_frame(4, C, S)
@attrs.frozen(kw_only=True)
class Close(Frame):
    """Closing the connection; ``code`` is None for a normal close, else the error's code."""

    code: str | None
    text: str


# Requests (client → server) and their answers


@_frame(10, C)
@attrs.frozen(kw_only=True)
class DeclareExchange(Frame):
    rid: int
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    passive: bool
    arguments: Table


@_frame(11, C)
@attrs.frozen(kw_only=True)
class DeleteExchange(Frame):
    rid: int
    name: str
    if_unused: bool


@_frame(12, C)
@attrs.frozen(kw_only=True)
class DeclareQueue(Frame):
    rid: int
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    passive: bool
    arguments: Table


@_frame(13, C)
@attrs.frozen(kw_only=True)
class DeleteQueue(Frame):
    rid: int
    name: str
    if_unused: bool
    if_empty: bool


@_frame(14, C)
@attrs.frozen(kw_only=True)
class PurgeQueue(Frame):
    rid: int
    name: str


@_frame(15, C)
@attrs.frozen(kw_only=True)
class Bind(Frame):
    """Bind ``destination`` (a queue, or an exchange if ``to_exchange``) to exchange ``source``."""

    rid: int
    destination: str
    source: str
    routing_key: str
    arguments: Table
    to_exchange: bool


@_frame(16, C)
@attrs.frozen(kw_only=True)
class Unbind(Frame):
    rid: int
    destination: str
    source: str
    routing_key: str
    arguments: Table
    to_exchange: bool


@_frame(17, C)
@attrs.frozen(kw_only=True)
class Consume(Frame):
    rid: int
    queue: str
    consumer_tag: str
    prefetch: int
    auto_ack: bool
    exclusive: bool
    arguments: Table


@_frame(18, C)
@attrs.frozen(kw_only=True)
class Cancel(Frame):
    rid: int
    consumer_tag: str


@_frame(19, C)
@attrs.frozen(kw_only=True)
class Get(Frame):
    rid: int
    queue: str
    auto_ack: bool


@_frame(20, C)
@attrs.frozen(kw_only=True)
class Redrive(Frame):
    """Move up to ``limit`` (0 = all) ready messages out of a dead-letter queue: back to the
    queue each last died in, or to ``exchange`` if it is not null."""

    rid: int
    queue: str
    exchange: str | None
    limit: int


@_frame(21, C)
@attrs.frozen(kw_only=True)
class ExplainRoute(Frame):
    """Where would a message with this routing key and these headers go? Nothing is sent."""

    rid: int
    exchange: str
    routing_key: str
    headers: Table


@_frame(22, C)
@attrs.frozen(kw_only=True)
class Inspect(Frame):
    """Admin listing: ``what`` is queues, exchanges, bindings, consumers, connections or status.

    Listings are paged: at most ``limit`` rows (the server caps it) from ``offset`` on.
    """

    rid: int
    what: str
    offset: int
    limit: int


@_frame(30, S)
@attrs.frozen(kw_only=True)
class Ok(Frame):
    """Success of request ``rid``; ``result`` holds what the request returns (docs/protocol.md)."""

    rid: int
    result: Table


@_frame(31, S)
@attrs.frozen(kw_only=True)
class Error(Frame):
    """Failure of request ``rid``; the connection stays open."""

    rid: int
    code: str
    text: str


@_frame(32, S)
@attrs.frozen(kw_only=True)
class GetOk(Frame):
    rid: int
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message_count: int
    body: bytes
    properties: Properties


# Messages


@_frame(40, C)
@attrs.frozen(kw_only=True)
class Publish(Frame):
    """A message. Publishes are numbered 1, 2, … per connection; confirms use that number."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool


@_frame(41, S)
@attrs.frozen(kw_only=True)
class Deliver(Frame):
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties


@_frame(42, C)
@attrs.frozen(kw_only=True)
class Ack(Frame):
    delivery_tag: int
    multiple: bool


@_frame(43, C)
@attrs.frozen(kw_only=True)
class Nack(Frame):
    delivery_tag: int
    multiple: bool
    requeue: bool


@_frame(44, S)
@attrs.frozen(kw_only=True)
class Confirm(Frame):
    """Publish ``seq`` (and all below it if ``multiple``) is settled: ``ok`` or nacked with why."""

    seq: int
    multiple: bool
    ok: bool
    error_code: str | None
    error_text: str | None


@_frame(45, S)
@attrs.frozen(kw_only=True)
class Return(Frame):
    """A mandatory publish that reached no queue; sent before its confirm."""

    seq: int
    code: str
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties


@_frame(46, S)
@attrs.frozen(kw_only=True)
class Cancelled(Frame):
    """The broker cancelled a consumer (for example its queue was deleted)."""

    consumer_tag: str
    reason: str


@_frame(47, S)
@attrs.frozen(kw_only=True)
class TimedOut(Frame):
    """A delivery passed its ack deadline (x-consumer-timeout) and was requeued."""

    consumer_tag: str
    delivery_tag: int


@_frame(48, C)
@attrs.frozen(kw_only=True)
class Extend(Frame):
    """Move a delivery's ack deadline to ``milliseconds`` from now (still working on it)."""

    delivery_tag: int
    milliseconds: int


@_frame(51, C)
@attrs.frozen(kw_only=True)
class Release(Frame):
    """Give back deliveries the application never saw: back to their place, no attempt
    counted (AMQP 1.0's "released"). Protocol version 3."""

    delivery_tag: int
    multiple: bool


@_frame(49, S)
@attrs.frozen(kw_only=True)
class Blocked(Frame):
    """Stop publishing until Unblocked; ``reason`` says why (an alarm, or flow control).

    Everything else (acks, requests) goes on. A client that publishes anyway is not read any
    further until the block ends.
    """

    reason: str


@_frame(50, S)
@attrs.frozen(kw_only=True)
class Unblocked(Frame):
    """Publishing may go on."""


@attrs.frozen
class PeerClosed:
    """The peer closed its end of the byte stream."""


@attrs.frozen
class PublishTooLarge:
    """A Publish frame grew past the maximum payload. Its fragments were dropped as they came,
    so the connection stays in step; the server nacks it (publishes are numbered)."""

    size: int
