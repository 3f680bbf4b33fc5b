"""AMQP 0-9-1 framing, sans I/O, on pamqp's marshalling of methods and properties.

pamqp (RabbitMQ-focused, well kept) turns each frame's bytes into a method, a content header
or a body and back. What it does not do is here: buffering partial frames, the protocol
header (a wrong one is answered with ``AMQP\\x00\\x00\\x09\\x01``, then the connection ends),
``frame_max`` (a longer frame is a FRAME_ERROR as soon as its size arrives), splitting
bodies into frames, and the mapping between AMQP's basic properties and the broker's.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import attrs
from pamqp import body as amqp_body
from pamqp import commands
from pamqp import encode as amqp_encode
from pamqp import heartbeat as amqp_heartbeat

from ..errors import RemoteProtocolError
from ..model import EMPTY_PROPERTIES, Properties, Table
from .amqp_fields import FieldError, decode_method, decode_properties

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MIN_SIZE = 4096  # the spec's frame-min-size: what either side may always send
DEFAULT_FRAME_MAX = 131072  # RabbitMQ's
FRAME_END = 0xCE
_FRAME_HEADER = struct.Struct(">BHI")
HEARTBEAT = amqp_heartbeat.Heartbeat()
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"  # type 8, channel 0, empty

Method = Any  # a pamqp command instance (commands.Basic.Publish, …)


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = NeedData()
#: What ``next_frame`` returns once the client's protocol header has arrived.
HEADER_RECEIVED = "header"


class BadHeader(RemoteProtocolError):
    """The peer did not open with AMQP 0-9-1's protocol header: answer with ours, then close."""


class FrameError(RemoteProtocolError):
    """A frame AMQP calls malformed, or one over a limit: 501 FRAME_ERROR, the connection
    ends."""


class AmqpFrames:
    """Bytes in, ``(channel, frame)`` out, for the server side of one connection."""

    def __init__(self) -> None:
        self.frame_max = FRAME_MIN_SIZE  # until tune-ok
        self._buffer = bytearray()
        self._pos = 0
        self._header_seen = False
        self.eof = False

    def receive_data(self, data: bytes | bytearray) -> None:
        if not data:
            self.eof = True
        else:
            self._buffer += data

    def pending_bytes(self) -> int:
        """Bytes received and not yet part of a whole frame."""
        return len(self._buffer) - self._pos

    def next_frame(self) -> Any:
        """``(channel, frame)``, NEED_DATA, HEADER_RECEIVED (once, first), or None at the
        end of the stream."""
        buf, pos = self._buffer, self._pos
        available = len(buf) - pos
        if not self._header_seen:
            if available < 8:
                if self.eof:
                    return None
                if bytes(buf[pos : pos + available]) != PROTOCOL_HEADER[:available]:
                    raise BadHeader("not an AMQP 0-9-1 protocol header")
                return NEED_DATA
            if bytes(buf[pos : pos + 8]) != PROTOCOL_HEADER:
                raise BadHeader(f"protocol header {bytes(buf[pos : pos + 8])!r} is not AMQP 0-9-1")
            self._header_seen = True
            self._consume(8)
            return HEADER_RECEIVED
        if available < 7:
            return None if self.eof else NEED_DATA
        kind, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        if size + 8 > self.frame_max:
            raise FrameError(f"frame of {size + 8} bytes exceeds frame_max of {self.frame_max}")
        if available < 8 + size:
            return None if self.eof else NEED_DATA
        if buf[pos + 7 + size] != FRAME_END:
            raise FrameError(f"frame on channel {channel} does not end with 0xCE")
        if kind == 3:  # a body: its bytes as they are (pamqp would copy them twice)
            content = amqp_body.ContentBody(bytes(buf[pos + 7 : pos + 7 + size]))
            self._consume(8 + size)
            return channel, content
        data = buf[pos : pos + 8 + size]
        self._consume(8 + size)
        if kind == 8:
            if channel != 0:
                raise FrameError("a heartbeat frame on a channel other than 0")
            return channel, HEARTBEAT
        fast = _fast_decode(kind, data)
        if fast is not None:
            if type(fast) is commands.Basic.Publish:
                whole = self._rest_of_content(channel, fast)
                if whole is not None:
                    return channel, whole
            return channel, fast
        try:
            if kind == 1:
                return channel, decode_method(data, 7 + size)
            if kind == 2:
                body_size, props = decode_properties(data, 7 + size)
                return channel, _broker_header(body_size, from_amqp_properties, props)
        except FieldError as exc:
            raise FrameError(f"frame on channel {channel}: {exc}") from None
        raise FrameError(f"unknown frame type {kind} on channel {channel}")

    def _rest_of_content(self, channel: int, publish: Any) -> Content | None:
        """A publish's header and body, when both are already here, in one frame each, and
        fast to decode: the publish goes to the front end whole. Anything else (a body in
        parts, a frame still on its way, one to refuse) is left to be read frame by frame."""
        buf, pos = self._buffer, self._pos
        available = len(buf) - pos
        if available < 8:
            return None
        kind, on, size = _FRAME_HEADER.unpack_from(buf, pos)
        end = pos + 8 + size
        if kind != 2 or on != channel or size + 8 > self.frame_max or available < 8 + size:
            return None
        if buf[end - 1] != FRAME_END:
            return None
        header = _fast_decode(2, buf[pos:end])
        if header is None or header.error is not None:
            return None
        if header.body_size == 0:
            self._consume(8 + size)
            return Content(publish, header, b"")
        if available - 8 - size < 7:
            return None
        kind, on, body_size = _FRAME_HEADER.unpack_from(buf, end)
        if kind != 3 or on != channel or body_size != header.body_size:
            return None
        if body_size + 8 > self.frame_max or len(buf) < end + 8 + body_size:
            return None
        if buf[end + 7 + body_size] != FRAME_END:
            return None
        body = bytes(buf[end + 7 : end + 7 + body_size])
        self._consume(8 + size + 8 + body_size)
        return Content(publish, header, body)

    def _consume(self, n: int) -> None:
        self._pos += n
        if self._pos >= 65536 and self._pos * 2 >= len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0


# --- the message path, without pamqp's generic loop --------------------------------------------
# Each decoder returns None for anything unusual (and pamqp then decodes it, or names the
# error); tests hold each to pamqp's own output.

_PUBLISH = struct.pack(">HH", 60, 40)
_ACK = struct.pack(">HH", 60, 80)
_ACK_BODY = struct.Struct(">QB")
_HEADER_START = struct.Struct(">HHQH")  # class, weight, body size, property flags


class Header:
    """A content header as the broker takes it: the body's size and the broker's properties,
    or why the properties are refused (a channel error, named to the publisher)."""

    __slots__ = ("body_size", "error", "properties")

    def __init__(self, body_size: int, properties: Properties | None, error: str | None) -> None:
        self.body_size, self.properties, self.error = body_size, properties, error

    def __repr__(self) -> str:
        return f"Header({self.body_size}, {self.properties!r}, {self.error!r})"


class Content:
    """A basic.publish with its header and its whole body, read at once (the usual case):
    the front end takes it as it would take the three frames one after another."""

    __slots__ = ("body", "header", "publish")

    def __init__(self, publish: Any, header: Header, body: bytes) -> None:
        self.publish, self.header, self.body = publish, header, body

    def __repr__(self) -> str:
        return f"Content({self.publish!r}, {self.header!r}, {len(self.body)} bytes)"


def _broker_header(body_size: int, make: Any, *args: Any) -> Header:
    try:
        return Header(body_size, make(*args), None)
    except (TypeError, ValueError) as exc:
        return Header(body_size, None, str(exc))


def _fast_decode(kind: int, frame: bytes | bytearray) -> Any:
    """A whole frame's method or content header, or None for pamqp to decode."""
    if kind == 1:
        start = frame[7:11]
        if start == _PUBLISH:
            return _publish(frame)
        if start == _ACK and len(frame) == 21:
            tag, bits = _ACK_BODY.unpack_from(frame, 11)
            ack = _new(commands.Basic.Ack)
            ack.delivery_tag, ack.multiple = tag, bool(bits & 1)
            return ack
    elif kind == 2 and len(frame) >= 22:
        class_id, weight, size, flags = _HEADER_START.unpack_from(frame, 7)
        if class_id == 60 and weight == 0 and not flags & _FLAGS_OTHER:
            shared = not flags & _PER_MESSAGE
            if shared:  # properties a publisher repeats: decoded once, the object shared
                key = bytes(frame[19:-1])
                known = _KNOWN.get(key)
                if known is not None:
                    return Header(size, known, None)
            try:
                properties = _properties(frame, flags)
            except (IndexError, UnicodeDecodeError, struct.error):
                return None
            except ValueError as exc:  # decoded, and refused by the broker
                return Header(size, None, str(exc))
            if properties is not None:
                if shared:
                    if len(_KNOWN) >= _KNOWN_SIZE:
                        _KNOWN.clear()
                    _KNOWN[key] = properties
                return Header(size, properties, None)
    return None


def _new(cls: Any) -> Any:
    """A pamqp method without its constructor's checks: the fast decoders set every slot,
    with values the wire format already bounds."""
    return cls.__new__(cls)


# Basic's property flags, high bit first, as AMQP orders the fields.
_FLAG = commands.Basic.Properties.flags
_CONTENT_TYPE, _CONTENT_ENCODING = _FLAG["content_type"], _FLAG["content_encoding"]
_HEADERS, _DELIVERY_MODE, _PRIORITY = _FLAG["headers"], _FLAG["delivery_mode"], _FLAG["priority"]
_CORRELATION_ID, _REPLY_TO = _FLAG["correlation_id"], _FLAG["reply_to"]
_EXPIRATION, _MESSAGE_ID, _TIMESTAMP = _FLAG["expiration"], _FLAG["message_id"], _FLAG["timestamp"]
_TYPE, _USER_ID, _APP_ID = _FLAG["message_type"], _FLAG["user_id"], _FLAG["app_id"]
_CLUSTER_ID = _FLAG["cluster_id"]
_FLAGS_OTHER = 0b11  # reserved, and "more flags follow": pamqp decides
# Fields that differ from message to message: a header with none of them is worth caching.
_PER_MESSAGE = _MESSAGE_ID | _CORRELATION_ID | _TIMESTAMP | _HEADERS
_KNOWN: dict[bytes, Properties] = {}  # the flags and fields of a header: its properties
_KNOWN_SIZE = 1024
_SHORT_STRINGS = (
    (_CORRELATION_ID, "correlation_id"),
    (_REPLY_TO, "reply_to"),
    (_EXPIRATION, "expiration"),
    (_MESSAGE_ID, "message_id"),
)
_LATE_STRINGS = ((_TYPE, "type"), (_USER_ID, "user_id"), (_APP_ID, "app_id"))
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _properties(frame: bytes | bytearray, flags: int) -> Properties | None:
    """The properties after a content header's flags; None where pamqp should decide (a
    table's values, a timestamp in milliseconds, bytes left over). Raises ValueError for
    properties the broker refuses, with the model's own text."""
    if not flags:
        return EMPTY_PROPERTIES
    p = _blank()
    at, end = 21, len(frame) - 1  # after the frame's and the header's fixed fields
    for flag, setter in _FIELDS:
        if not flags & flag:
            continue
        if flag == _HEADERS:
            if _U32.unpack_from(frame, at)[0] != 0:
                return None  # a table with fields: pamqp's decoder
            at += 4
        elif flag == _DELIVERY_MODE:
            setter(p, frame[at] == 2)
            at += 1
        elif flag == _PRIORITY:
            setter(p, frame[at])
            at += 1
        elif flag == _TIMESTAMP:
            timestamp = _U64.unpack_from(frame, at)[0]
            if timestamp > 0xFFFFFFFF:
                return None  # pamqp reads it as milliseconds
            setter(p, timestamp)
            at += 8
        else:  # a short string
            length = frame[at]
            if at + 1 + length > end:
                raise IndexError("a short string beyond the frame")
            text = frame[at + 1 : at + 1 + length].decode()
            at += 1 + length
            if setter is not None:  # cluster_id is dropped, as RabbitMQ drops it
                setter(p, text)
    if at != end:
        return None
    if p.expiration is not None:
        _EXPIRATION_FIELD.validator(p, _EXPIRATION_FIELD, p.expiration)  # type: ignore[misc]
    return p


# Properties are built slot by slot: their constructor's checks cost more than decoding, and
# what they check the wire already bounds (short strings, octets, 64-bit integers) but for
# the expiration, which is checked as the model checks it.
_ATTRIBUTES = attrs.fields(Properties)
_EXPIRATION_FIELD = _ATTRIBUTES.expiration
_DEFAULTS = [(getattr(Properties, a.name).__set__, a.default) for a in _ATTRIBUTES]


def _setter(name: str) -> Any:
    return getattr(Properties, name).__set__


def _blank() -> Properties:
    p = object.__new__(Properties)
    for setter, default in _DEFAULTS:
        setter(p, default)
    return p


_FIELDS: tuple[tuple[int, Any], ...] = (
    (_CONTENT_TYPE, _setter("content_type")),
    (_CONTENT_ENCODING, _setter("content_encoding")),
    (_HEADERS, None),
    (_DELIVERY_MODE, _setter("persistent")),
    (_PRIORITY, _setter("priority")),
    (_CORRELATION_ID, _setter("correlation_id")),
    (_REPLY_TO, _setter("reply_to")),
    (_EXPIRATION, _setter("expiration")),
    (_MESSAGE_ID, _setter("message_id")),
    (_TIMESTAMP, _setter("timestamp")),
    (_TYPE, _setter("type")),
    (_USER_ID, _setter("user_id")),
    (_APP_ID, _setter("app_id")),
    (_CLUSTER_ID, None),
)


def _publish(frame: bytes | bytearray) -> Any:
    """basic.publish. Names pamqp's constructor would refuse pass: the broker answers for
    them (an exchange that does not exist is NOT_FOUND), as RabbitMQ does."""
    end = len(frame) - 1
    try:
        at = 13  # the frame's header, class, method, ticket
        length = frame[at]
        exchange = frame[at + 1 : at + 1 + length].decode()
        at += 1 + length
        length = frame[at]
        routing_key = frame[at + 1 : at + 1 + length].decode()
        at += 1 + length
        if at + 1 != end:
            return None
        bits = frame[at]
    except (IndexError, UnicodeDecodeError):
        return None
    publish = _new(commands.Basic.Publish)
    publish.ticket, publish.exchange, publish.routing_key = 0, exchange, routing_key
    publish.mandatory, publish.immediate = bool(bits & 1), bool(bits & 2)
    return publish


_DELIVER_HEAD = struct.pack(">HH", 60, 60)


def deliver_bytes(
    channel: int, consumer_tag: str, tag: int, redelivered: bool, exchange: str, key: str
) -> bytes:
    """``method_bytes(channel, Basic.Deliver(...))``, without pamqp's generic marshal."""
    payload = b"".join(
        (
            _DELIVER_HEAD,
            _shortstr(consumer_tag),
            struct.pack(">QB", tag, 1 if redelivered else 0),
            _shortstr(exchange),
            _shortstr(key),
        )
    )
    return _FRAME_HEADER.pack(1, channel, len(payload)) + payload + b"\xce"


def short_text(text: str) -> str:
    """``text`` cut to fit a short string (255 bytes), on a character's boundary."""
    data = text.encode()
    if len(data) <= 255:
        return text
    return data[:255].decode(errors="ignore")


def _shortstr(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"short string of {len(data)} bytes")
    return bytes([len(data)]) + data


def unchecked(cls: Any, *values: Any) -> Any:
    """A pamqp method whose arguments are ``values`` in order, without its constructor's
    checks of names (see ``method_bytes``)."""
    method = cls.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        setattr(method, name, value)
    return method


def method_bytes(channel: int, method: Method) -> bytes:
    """A method frame, as pamqp marshals it but without its checks of names: a queue or
    exchange name is whatever UTF-8 short string the client chose (RabbitMQ's rule), and
    pamqp's pattern would refuse ``очередь`` in our own answer."""
    parts = [_U32.pack(method.index)]
    bits = offset = 0
    in_bits = False
    for name in method.__slots__:
        kind = method.amqp_type(name)
        value = getattr(method, name, 0)
        if kind == "bit":
            if not in_bits:
                bits, offset, in_bits = 0, 0, True
            if value:
                bits |= 1 << offset
            offset += 1
            if offset == 8:
                parts.append(bytes((bits,)))
                in_bits = False
            continue
        if in_bits:
            parts.append(bytes((bits,)))
            in_bits = False
        parts.append(_encode_by_type(value, kind))
    if in_bits:
        parts.append(bytes((bits,)))
    payload = b"".join(parts)
    return _FRAME_HEADER.pack(1, channel, len(payload)) + payload + b"\xce"


def _encode_by_type(value: Any, kind: str) -> bytes:
    if kind == "shortstr":
        return _shortstr(value or "")
    if kind == "table":
        return _table(value or {})
    return amqp_encode.by_type(value, kind)


def content_bytes(
    channel: int, method: Method | bytes, properties: Properties, body: bytes, frame_max: int
) -> bytes:
    """A method that carries content (deliver, get-ok, return) — a pamqp method, or its frame
    already encoded (``deliver_bytes``) — then its header and its body, the body split to fit
    ``frame_max``."""
    header = content_header(len(body), properties)
    parts = [
        method if isinstance(method, bytes) else method_bytes(channel, method),
        _FRAME_HEADER.pack(2, channel, len(header)),
        header,
        b"\xce",
    ]
    room = frame_max - 8
    for start in range(0, len(body), room):
        chunk = body[start : start + room]
        parts += (_FRAME_HEADER.pack(3, channel, len(chunk)), chunk, b"\xce")
    return b"".join(parts)


def content_header(body_size: int, properties: Properties) -> bytes:
    """A content header's payload, written here rather than by pamqp: pamqp would write
    floats in the headers table as 32-bit (AMQP's 'f') and refuse bytes; this writes doubles
    as 'd' and bytes as a byte array, as RabbitMQ does (and costs a fifth of pamqp's time)."""
    flags = 0
    parts = [b""]
    p = properties
    if p.content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(_shortstr(p.content_type))
    if p.content_encoding is not None:
        flags |= _CONTENT_ENCODING
        parts.append(_shortstr(p.content_encoding))
    if p.headers:
        flags |= _HEADERS
        parts.append(_table(p.headers))
    if p.persistent:
        flags |= _DELIVERY_MODE
        parts.append(b"\x02")
    if p.priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((p.priority,)))
    for flag, name in _SHORT_STRINGS:
        value = getattr(p, name)
        if value is not None:
            flags |= flag
            parts.append(_shortstr(value))
    if p.timestamp is not None:
        flags |= _TIMESTAMP
        parts.append(_U64.pack(p.timestamp))
    for flag, name in _LATE_STRINGS:
        value = getattr(p, name)
        if value is not None:
            flags |= flag
            parts.append(_shortstr(value))
    parts[0] = _HEADER_START.pack(commands.Basic.frame_id, 0, body_size, flags)
    return b"".join(parts)


def _table(table: Table) -> bytes:
    body = b"".join(_short(key) + _field(value) for key, value in table.items())
    return struct.pack(">I", len(body)) + body


def _short(text: str) -> bytes:
    data = short_text(text).encode()
    return bytes([len(data)]) + data


def _field(value: Any) -> bytes:
    if value is None:
        return b"V"
    if value is True or value is False:
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        if -(2**63) <= value < 2**63:
            return b"l" + struct.pack(">q", value)
        return _field(str(value))  # beyond AMQP's widest integer: as its digits
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"S" + struct.pack(">I", len(data)) + data
    if isinstance(value, bytes | bytearray):
        return b"x" + struct.pack(">I", len(value)) + bytes(value)
    if isinstance(value, dict):
        return b"F" + _table(value)
    if isinstance(value, list | tuple):
        body = b"".join(_field(v) for v in value)
        return b"A" + struct.pack(">I", len(body)) + body
    return _field(str(value))


# --- properties and field tables ----------------------------------------------------------------


def from_amqp_properties(props: commands.Basic.Properties) -> Properties:
    """AMQP's basic properties as the broker's. Field-table values the native protocol
    cannot carry become ones it can (docs/amqp.md has the table)."""
    timestamp = props.timestamp
    return Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=to_table(props.headers) if props.headers else None,
        persistent=props.delivery_mode == 2,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=props.expiration,
        message_id=props.message_id,
        timestamp=int(timestamp.timestamp()) if timestamp is not None else None,
        type=props.message_type,
        user_id=props.user_id,
        app_id=props.app_id,
    )


def to_table(table: dict[str, Any]) -> Table:
    return {str(k): _value(v) for k, v in table.items()}


def _value(value: Any) -> Any:
    if isinstance(value, dict):
        return to_table(value)
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, where a float would round
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())  # AMQP timestamps are whole seconds
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value
