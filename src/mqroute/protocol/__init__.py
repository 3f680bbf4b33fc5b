"""The native wire protocol, sans I/O: bytes in, events out; events in, bytes out.

A frame is a 4-byte big-endian length followed by that many bytes of CBOR: an array whose
first item is the frame type and whose other items are the event's fields in order
(docs/protocol.md lists them all). A frame longer than the negotiated frame size travels as
fragments: the length's top bit marks "more follows", and the receiver joins them.
``Connection`` holds the parser and the state machine for one side; it never touches a socket
and never blocks::

    conn.receive_data(data)          # b"" means the peer closed its end
    event = conn.next_event()        # an event, NEED_DATA, or PeerClosed
    data = conn.send(event)          # bytes for someone else to write

Input that breaks the protocol raises ``ProtocolError`` and moves the connection to ERROR.
"""

from __future__ import annotations

import enum
import io
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import cbor2

from ..errors import ProtocolError
from ..model import EMPTY_PROPERTIES, PROPERTY_NAMES, Properties, Table

PROTOCOL_VERSION = 3
SUPPORTED_VERSIONS = (2, 3)  # 3 adds Release
#: Before the handshake ends a peer may send only this much in one frame (RabbitMQ: 4 KiB
#: before tune), so an unknown client cannot make the server buffer more.
HANDSHAKE_FRAME_SIZE = 4096
#: The largest fragment either side sends or accepts once open, negotiated in the handshake:
#: the smaller of both wishes, never below HANDSHAKE_FRAME_SIZE (RabbitMQ's default frame_max).
DEFAULT_MAX_FRAME_SIZE = 128 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Room beside the body for the rest of a frame (names, keys, properties and headers).
ENVELOPE_SIZE = 128 * 1024
MAX_NESTING = 16
_CONTINUED = 0x8000_0000  # top bit of the length prefix: a fragment, more of the frame follows

_HEADER = struct.Struct(">I")


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when a whole frame has not arrived yet.
NEED_DATA: Any = _NeedData()


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # server: before the client's Hello; client: before sending it
    AWAIT_WELCOME = "await-welcome"
    OPEN = "open"
    ERROR = "error"


# --- events ---------------------------------------------------------------------------------

_EVENT_TYPES: dict[int, type[Frame]] = {}


class Frame:
    """Base of every frame event. ``frame_type`` is its number on the wire."""

    __slots__ = ()
    frame_type: ClassVar[int]
    sender: ClassVar[frozenset[Role]]
    _names: ClassVar[tuple[str, ...]]
    _checks: ClassVar[tuple[Callable[[str, Any], Any], ...]]
    _encoders: ClassVar[tuple[tuple[str, Callable[[Any], Any] | None], ...]]


def _frame(code: int, *senders: Role) -> Callable[[type[Any]], type[Any]]:
    def register(cls: type[Any]) -> type[Any]:
        fields = attrs.fields(cls)
        cls.frame_type = code
        cls.sender = frozenset(senders)
        cls._names = tuple(f.name for f in fields)
        cls._checks = tuple(_CHECKS[f.type] for f in fields)
        cls._encoders = tuple((f.name, _ENCODERS.get(f.type)) for f in fields)
        assert code not in _EVENT_TYPES
        _EVENT_TYPES[code] = cls
        return cls

    return register


# Field checkers: return the value as the event holds it, or raise ProtocolError.


def _fail(name: str, want: str, value: Any) -> ProtocolError:
    return ProtocolError(f"field {name!r} must be {want}, not {type(value).__name__}")


_MAX_INT = 2**63 - 1


def _check_int(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise _fail(name, "a non-negative 63-bit integer", value)
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _fail(name, "a boolean", value)
    return value


def _check_str(name: str, value: Any) -> str:
    if type(value) is not str:
        raise _fail(name, "a text string", value)
    return value


def _check_opt_str(name: str, value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise _fail(name, "a text string or null", value)
    return value


def _check_bytes(name: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise _fail(name, "a byte string", value)
    return value


def _check_versions(name: str, value: Any) -> list[int]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise _fail(name, "an array of integers", value)
    return value


def _check_table(name: str, value: Any) -> Table:
    if type(value) is not dict:
        raise _fail(name, "a map", value)
    _check_table_values(name, value, 0)
    return value


_PLAIN = (type(None), bool, int, float, str, bytes)
_MIN_TABLE_INT, _MAX_TABLE_INT = -(2**64), 2**64 - 1  # CBOR's integers without a bignum tag
_CARRIED = "str, bytes, int (64-bit), float, bool, None, list, or dict with str keys"


def check_table_values(kind: str, table: Table) -> None:
    """Raise TypeError or ValueError naming the entry (``header 'h'``) that the protocol cannot
    carry. The sending side calls this, so a bad value fails the call that holds it, not the
    connection that the broker would otherwise have to close."""
    for key, value in table.items():
        problem = _table_problem(value, 0)
        if problem is not None:
            error, text = problem
            raise error(f"{kind} {key!r} {text}; use {_CARRIED} (for example str(value))")


def _check_table_values(name: str, value: Any, depth: int) -> None:
    problem = _table_problem(value, depth)
    if problem is not None:
        raise ProtocolError(f"field {name!r} {problem[1]}")


def _table_problem(value: Any, depth: int) -> tuple[type[Exception], str] | None:
    """What makes ``value`` unfit for a table, if anything: the error to raise and why."""
    if depth > MAX_NESTING:
        return ValueError, f"is nested deeper than {MAX_NESTING} levels"
    kind = type(value)
    if kind is int:
        if not _MIN_TABLE_INT <= value <= _MAX_TABLE_INT:
            return ValueError, "holds an integer outside 64 bits"
        return None
    if kind in _PLAIN:
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return TypeError, "has a map key that is not a text string"
            problem = _table_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is list or kind is tuple:
        for item in value:
            problem = _table_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return TypeError, f"holds a value of type {kind.__name__}, which tables cannot carry"


def _check_properties(name: str, value: Any) -> Properties:
    if type(value) is not dict:
        raise _fail(name, "a map", value)
    if not value:
        return EMPTY_PROPERTIES
    for key in value:
        if key not in _PROPERTY_SET:
            raise ProtocolError(f"unknown message property {key!r}")
    headers = value.get("headers")
    if headers is not None:
        _check_table("headers", headers)
        key = None  # a dict is not hashable: no caching
    else:
        # Publishers repeat the same few property sets (persistent, a content type): building
        # and validating Properties once per set, not once per message, is the saving.
        key = tuple(value.items())
        try:
            cached = _PROPERTIES_CACHE.get(key)
        except TypeError:  # an unhashable value; Properties below names it
            key = None
        else:
            if cached is not None:
                return cached
    try:
        props = Properties(**value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad message property: {exc}") from None
    if key is not None:
        if len(_PROPERTIES_CACHE) >= _PROPERTIES_CACHE_SIZE:
            _PROPERTIES_CACHE.clear()
        _PROPERTIES_CACHE[key] = props
    return props


_PROPERTY_SET = frozenset(PROPERTY_NAMES)
_PROPERTIES_CACHE: dict[tuple[tuple[str, Any], ...], Properties] = {}
_PROPERTIES_CACHE_SIZE = 1024


def _encode_properties(props: Properties) -> dict[str, Any]:
    """Only properties that are set go on the wire (``persistent`` only when true)."""
    if props is EMPTY_PROPERTIES:
        return {}
    # A publisher usually sends one Properties object many times: encode it once. Entries
    # hold their object, so an id is not reused while it is here.
    hit = _ENCODED_PROPERTIES.get(id(props))
    if hit is not None and hit[0] is props:
        return hit[1]
    if props.headers:
        check_table_values("header", props.headers)
    wire = {
        name: value
        for name in PROPERTY_NAMES
        if (value := getattr(props, name)) is not None and value is not False
    }
    if len(_ENCODED_PROPERTIES) >= _PROPERTIES_CACHE_SIZE:
        _ENCODED_PROPERTIES.clear()
    _ENCODED_PROPERTIES[id(props)] = (props, wire)
    return wire


_ENCODED_PROPERTIES: dict[int, tuple[Properties, dict[str, Any]]] = {}


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "int": _check_int,
    "bool": _check_bool,
    "str": _check_str,
    "str | None": _check_opt_str,
    "bytes": _check_bytes,
    "Table": _check_table,
    "list[int]": _check_versions,
    "Properties": _check_properties,
}


def _encode_table(table: Table) -> Table:
    check_table_values("argument", table)
    return table


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "Properties": _encode_properties,
    "Table": _encode_table,
}

C, S = Role.CLIENT, Role.SERVER


# Connection


@_frame(1, C)
@attrs.frozen(kw_only=True)
class Hello(Frame):
    versions: list[int]
    client: str
    heartbeat_ms: int  # the client's wish; 0 = none
    max_frame_size: int = 0  # the client's wish; 0 = whatever the server chooses


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
    reply_code: str
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


def negotiate_frame_size(wish: int, limit: int) -> int:
    """The frame size both sides use: the smaller non-zero wish, at least HANDSHAKE_FRAME_SIZE."""
    size = min(wish, limit) if wish else limit
    return max(size, HANDSHAKE_FRAME_SIZE)


# --- codec ----------------------------------------------------------------------------------


def _no_tags(decoder: Any) -> Any:
    raise ValueError("CBOR tags are not allowed")


_NO_TAGS = {tag: _no_tags for tag in (*range(0, 300), 1004, 55799)}


def encode(event: Frame) -> bytes:
    """One event as one frame."""
    payload = [event.frame_type]
    for name, encoder in event._encoders:
        value = getattr(event, name)
        payload.append(encoder(value) if encoder is not None else value)
    data = cbor2.dumps(payload)
    return _HEADER.pack(len(data)) + data


class PayloadDecoder:
    """Decodes frame payloads, checking that each holds exactly one CBOR item.

    ``cbor2.loads`` would not say where the item ended, so this keeps one decoder and one
    buffer and reuses them (making a decoder per frame cost more than the whole decode).
    """

    def __init__(self) -> None:
        self._fp = io.BytesIO()
        self._decoder = cbor2.CBORDecoder(
            self._fp, semantic_decoders=_NO_TAGS, max_depth=MAX_NESTING + 4, allow_indefinite=False
        )

    def decode(self, data: bytes) -> Frame:
        """One frame's CBOR payload as an event, or ProtocolError."""
        fp = self._fp
        fp.seek(0)
        fp.truncate()
        fp.write(data)
        fp.seek(0)
        try:
            items = self._decoder.decode()
        except Exception as exc:  # cbor2 raises several kinds for broken input
            raise ProtocolError(f"undecodable CBOR: {exc}") from None
        if fp.tell() != len(data):
            raise ProtocolError(
                f"{len(data) - fp.tell()} bytes after the frame's CBOR item; a frame holds one item"
            )
        return _event_of(items)


def decode_payload(data: bytes) -> Frame:
    """Decode one frame's CBOR payload into an event, or raise ProtocolError."""
    return PayloadDecoder().decode(data)


def _event_of(items: Any) -> Frame:
    if type(items) is not list or not items or type(items[0]) is not int:
        raise ProtocolError("a frame must be a CBOR array starting with its integer type")
    fast = _FAST_DECODERS.get(items[0])
    if fast is not None and (event := fast(items)) is not None:
        return event
    cls = _EVENT_TYPES.get(items[0])
    if cls is None:
        raise ProtocolError(f"unknown frame type {items[0]}")
    names = cls._names
    if len(items) != len(names) + 1:
        raise ProtocolError(
            f"{cls.__name__} frame has {len(items) - 1} fields; expected {len(names)}"
        )
    kwargs = {
        name: check(name, value)
        for name, check, value in zip(names, cls._checks, items[1:], strict=True)
    }
    return cls(**kwargs)


# The frames of the message path, decoded without the generic per-field loop. Each returns
# None for anything unusual, and the generic path then raises the precise error.


def _fast_publish(items: list[Any]) -> Publish | None:
    if len(items) != 6:
        return None
    _, exchange, routing_key, body, props, mandatory = items
    if (
        type(exchange) is not str
        or type(routing_key) is not str
        or type(body) is not bytes
        or type(mandatory) is not bool
        or type(props) is not dict
    ):
        return None
    return Publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=_check_properties("properties", props) if props else EMPTY_PROPERTIES,
        mandatory=mandatory,
    )


def _fast_deliver(items: list[Any]) -> Deliver | None:
    if len(items) != 8:
        return None
    _, consumer_tag, delivery_tag, redelivered, exchange, routing_key, body, props = items
    if (
        type(consumer_tag) is not str
        or type(delivery_tag) is not int
        or not 0 <= delivery_tag <= _MAX_INT
        or type(redelivered) is not bool
        or type(exchange) is not str
        or type(routing_key) is not str
        or type(body) is not bytes
        or type(props) is not dict
    ):
        return None
    return Deliver(
        consumer_tag=consumer_tag,
        delivery_tag=delivery_tag,
        redelivered=redelivered,
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=_check_properties("properties", props) if props else EMPTY_PROPERTIES,
    )


def _fast_ack(items: list[Any]) -> Ack | None:
    if len(items) != 3 or type(items[1]) is not int or type(items[2]) is not bool:
        return None
    if not 0 <= items[1] <= _MAX_INT:
        return None
    return Ack(delivery_tag=items[1], multiple=items[2])


_FAST_DECODERS: dict[int, Callable[[list[Any]], Frame | None]] = {
    Publish.frame_type: _fast_publish,
    Deliver.frame_type: _fast_deliver,
    Ack.frame_type: _fast_ack,
}


def encode_deliver_tail(
    exchange: str, routing_key: str, body: bytes, properties: Properties
) -> bytes:
    """The CBOR of a Deliver frame's last four fields: the same for every copy of a message."""
    props = _encode_properties(properties)
    return b"".join([_dumps(exchange), _dumps(routing_key), _dumps(body), _dumps(props)])


def encode_deliver(consumer_tag: str, delivery_tag: int, redelivered: bool, tail: bytes) -> bytes:
    """A whole Deliver frame from its per-delivery fields and a tail from encode_deliver_tail.

    Equal to ``encode(Deliver(...))``; a test holds them to it.
    """
    head = _dumps([Deliver.frame_type, consumer_tag, delivery_tag, redelivered])
    # head is a 4-item array: rewrite its first byte as an 8-item array and append the rest.
    payload = b"".join([_ARRAY_OF_8, memoryview(head)[1:], tail])
    return _HEADER.pack(len(payload)) + payload


def encode_publish(
    exchange: str, routing_key: str, body: bytes, properties: Properties, mandatory: bool
) -> bytes:
    """A whole Publish frame; equal to ``encode(Publish(...))`` without building the event."""
    payload = _dumps(
        [
            Publish.frame_type,
            exchange,
            routing_key,
            body,
            _encode_properties(properties),
            mandatory,
        ]
    )
    return _HEADER.pack(len(payload)) + payload


_dumps = cbor2.dumps
_ARRAY_OF_8 = b"\x88"
_PUBLISH_START = bytes([0x80 | 6, 0x18, 40])  # a 6-item array whose first item is 40


def _is_publish(payload_start: bytes) -> bool:
    return payload_start[:3] == _PUBLISH_START


def _fragment(frame: bytes, size: int) -> bytes:
    """One encoded frame as fragments of at most ``size`` payload bytes each."""
    payload = memoryview(frame)[4:]
    parts: list[bytes | memoryview] = []
    for start in range(0, len(payload), size):
        chunk = payload[start : start + size]
        more = start + size < len(payload)
        parts.append(_HEADER.pack(len(chunk) | (_CONTINUED if more else 0)))
        parts.append(chunk)
    return b"".join(parts)


# --- connection state machine ---------------------------------------------------------------

# Which frames each side may send in each state. Close may always be sent.
_ALLOWED: dict[tuple[Role, State], frozenset[type[Frame]]] = {
    (C, State.AWAIT_HELLO): frozenset({Hello}),
    (S, State.AWAIT_HELLO): frozenset(),
    (C, State.AWAIT_WELCOME): frozenset(),
    (S, State.AWAIT_WELCOME): frozenset({Welcome}),
    (C, State.OPEN): frozenset(t for t in _EVENT_TYPES.values() if C in t.sender) - {Hello},
    (S, State.OPEN): frozenset(t for t in _EVENT_TYPES.values() if S in t.sender) - {Welcome},
}
_NEXT_STATE: dict[type[Frame], State] = {Hello: State.AWAIT_WELCOME, Welcome: State.OPEN}


class Connection:
    """One side of a native-protocol connection.

    Until the handshake ends, a frame may be at most HANDSHAKE_FRAME_SIZE bytes; after it,
    ``max_frame_size`` as Welcome set it, in both directions. A longer fragment is a
    ProtocolError as soon as its length prefix arrives, before its bytes are buffered.
    ``max_message_size`` (plus ENVELOPE_SIZE) bounds a whole frame once its fragments are
    joined. The server passes its own limits; a client learns them from Welcome.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.role = role
        self.peer = S if role is C else C
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self._mine: frozenset[type[Frame]] = frozenset()
        self._theirs: frozenset[type[Frame]] = frozenset()
        self._receive_limit = HANDSHAKE_FRAME_SIZE
        self._send_limit = HANDSHAKE_FRAME_SIZE
        self.state = State.AWAIT_HELLO
        self.we_closed = False
        self.they_closed = False
        self._buffer = bytearray()
        self._pos = 0
        self._eof = False
        self._fragments: list[bytes] = []  # a frame's fragments so far
        self._fragments_size = 0
        self._dropping: int | None = None  # bytes dropped of a too-large Publish
        self._decoder = PayloadDecoder()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        # What each side may send now, looked up once per change rather than once per frame.
        self._state = state
        self._mine = _ALLOWED.get((self.role, state), frozenset())
        self._theirs = _ALLOWED.get((self.peer, state), frozenset())

    # receiving

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Any:
        """The next event from the peer (a Frame), ``NEED_DATA``, ``PublishTooLarge``, or
        ``PeerClosed`` at the end.

        Typed ``Any`` so callers can dispatch on ``type(event)`` without casts.
        """
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the error state")
        while True:
            buf = self._buffer
            pos = self._pos
            available = len(buf) - pos
            if available < 4:
                return self._need_data(available)
            (length,) = _HEADER.unpack_from(buf, pos)
            continued = False
            if length > self._receive_limit:
                continued = self._fragment_header(length)
                length &= ~_CONTINUED
            if available < 4 + length:
                return self._need_data(available)
            payload = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if pos >= 65536 and pos * 2 >= len(buf):
                del buf[:pos]
                pos = 0
            self._pos = pos
            if continued or self._fragments_size or self._dropping is not None:
                joined = self._join(payload, continued)
                if joined is None:
                    continue  # more fragments to come
                if type(joined) is PublishTooLarge:
                    return joined
                payload = joined
            try:
                event = self._decoder.decode(payload)
                self._check(self.peer, event)
            except ProtocolError:
                self._error()
                raise
            if type(event) is Close:
                self.they_closed = True
            return event

    def _fragment_header(self, length: int) -> bool:
        """A length over the limit: a fragment of a longer frame, or an error."""
        size = length & ~_CONTINUED
        if not length & _CONTINUED or size > self._receive_limit:
            self._error()
            raise ProtocolError(
                f"frame of {size} bytes exceeds the maximum frame size of {self._receive_limit}"
            )
        if self.state is not State.OPEN:
            self._error()
            raise ProtocolError("a fragmented frame before the handshake ended")
        return True

    def _join(self, fragment: bytes, continued: bool) -> Any:
        """Add a fragment: None while more are to come, then the whole payload, or
        PublishTooLarge if a Publish passed the limit (the others are a ProtocolError)."""
        if self._dropping is not None:
            self._dropping += len(fragment)
        else:
            self._fragments.append(fragment)
            self._fragments_size += len(fragment)
            if self._fragments_size > self.max_message_size + ENVELOPE_SIZE:
                if self.role is S and _is_publish(self._fragments[0]):
                    self._dropping = self._fragments_size
                    self._fragments, self._fragments_size = [], 0
                else:
                    self._error()
                    raise ProtocolError(
                        f"frame of more than {self._fragments_size} bytes exceeds the maximum of "
                        f"{self.max_message_size + ENVELOPE_SIZE} (message size plus envelope)"
                    )
        if continued:
            return None
        if self._dropping is not None:
            dropped, self._dropping = self._dropping, None
            return PublishTooLarge(size=dropped)
        payload = b"".join(self._fragments)
        self._fragments, self._fragments_size = [], 0
        return payload

    def pending_bytes(self) -> int:
        """Bytes of a frame begun but not yet whole (the server times slow ones out)."""
        return len(self._buffer) - self._pos + self._fragments_size + (self._dropping or 0)

    def _need_data(self, available: int) -> Any:
        if not self._eof:
            return NEED_DATA
        if available or self._fragments_size or self._dropping is not None:
            self._error()
            raise ProtocolError("connection ended in the middle of a frame")
        return PeerClosed()

    def _error(self) -> None:
        self.state = State.ERROR

    # sending

    def send(self, event: Frame) -> bytes:
        """Bytes for ``event``. Sending what the protocol forbids raises ProtocolError."""
        self._check(self.role, event)
        if type(event) is Close:
            self.we_closed = True
        data = encode(event)
        return data if len(data) <= self._send_limit + 4 else _fragment(data, self._send_limit)

    def send_deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, tail: bytes
    ) -> bytes:
        """``send(Deliver(...))`` for the hot path; ``tail`` is from encode_deliver_tail."""
        if self.role is not Role.SERVER or self.state is not State.OPEN or self.we_closed:
            raise ProtocolError(f"{self.role.value} may not send a Deliver frame now")
        data = encode_deliver(consumer_tag, delivery_tag, redelivered, tail)
        return data if len(data) <= self._send_limit + 4 else _fragment(data, self._send_limit)

    def send_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties, mandatory: bool
    ) -> bytes:
        """``send(Publish(...))`` for the hot path."""
        if self.role is not Role.CLIENT or self.state is not State.OPEN or self.we_closed:
            raise ProtocolError(f"{self.role.value} may not send a Publish frame now")
        data = encode_publish(exchange, routing_key, body, properties, mandatory)
        return data if len(data) <= self._send_limit + 4 else _fragment(data, self._send_limit)

    def _check(self, sender: Role, event: Frame) -> None:
        kind = type(event)
        if kind is Close:
            return
        mine = sender is self.role
        if self.we_closed if mine else self.they_closed:
            raise ProtocolError(f"{kind.__name__} frame after Close")
        if kind not in (self._mine if mine else self._theirs):
            raise ProtocolError(
                f"{sender.value} may not send a {kind.__name__} frame in state {self.state.value}"
            )
        next_state = _NEXT_STATE.get(kind)
        if next_state is not None:
            self.state = next_state
            if kind is Welcome:  # both sides now use the negotiated sizes
                welcome: Any = event
                self.max_frame_size = welcome.max_frame_size
                self._receive_limit = self._send_limit = welcome.max_frame_size
                if self.role is C:
                    self.max_message_size = welcome.max_message_size
