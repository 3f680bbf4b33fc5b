"""Frames to bytes and back: a 4-byte big-endian length, then one CBOR array (the frame type,
then the fields in order). A frame longer than the frame size travels as fragments, the
length's top bit marking "more follows".

The message path (Publish, Deliver, Ack) has fast paths: decoders that skip the generic
per-field loop, and encoders that build the bytes without an event. Deliver shares its tail
(exchange, key, body, properties) between every copy of a message. Tests hold each fast path
equal to the generic one.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import cbor2

from ..errors import RemoteProtocolError
from ..model import EMPTY_PROPERTIES, Properties
from .frames import FRAME_TYPES, Ack, Deliver, Frame, Publish
from .values import MAX_INT, MAX_NESTING, check_properties, encode_properties

CONTINUED = 0x8000_0000  # top bit of the length prefix: a fragment, more of the frame follows
HEADER = struct.Struct(">I")


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
    return HEADER.pack(len(data)) + data


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
        """One frame's CBOR payload as an event, or RemoteProtocolError."""
        fp = self._fp
        fp.seek(0)
        fp.truncate()
        fp.write(data)
        fp.seek(0)
        try:
            items = self._decoder.decode()
        except Exception as exc:  # cbor2 raises several kinds for broken input
            raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
        if fp.tell() != len(data):
            raise RemoteProtocolError(
                f"{len(data) - fp.tell()} bytes after the frame's CBOR item; a frame holds one item"
            )
        return _event_of(items)


def decode_payload(data: bytes) -> Frame:
    """Decode one frame's CBOR payload into an event, or raise RemoteProtocolError."""
    return PayloadDecoder().decode(data)


def _event_of(items: Any) -> Frame:
    if type(items) is not list or not items or type(items[0]) is not int:
        raise RemoteProtocolError("a frame must be a CBOR array starting with its integer type")
    fast = _FAST_DECODERS.get(items[0])
    if fast is not None and (event := fast(items)) is not None:
        return event
    cls = FRAME_TYPES.get(items[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown frame type {items[0]}")
    names = cls._names
    given = len(items) - 1
    if given != len(names):
        if not cls._required <= given < len(names):
            raise RemoteProtocolError(
                f"{cls.__name__} frame has {given} fields; expected {len(names)}"
            )
        items = items + list(cls._defaults[given:])
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
        properties=check_properties("properties", props) if props else EMPTY_PROPERTIES,
        mandatory=mandatory,
    )


def _fast_deliver(items: list[Any]) -> Deliver | None:
    if len(items) != 8:
        return None
    _, consumer_tag, delivery_tag, redelivered, exchange, routing_key, body, props = items
    if (
        type(consumer_tag) is not str
        or type(delivery_tag) is not int
        or not 0 <= delivery_tag <= MAX_INT
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
        properties=check_properties("properties", props) if props else EMPTY_PROPERTIES,
    )


def _fast_ack(items: list[Any]) -> Ack | None:
    if len(items) != 3 or type(items[1]) is not int or type(items[2]) is not bool:
        return None
    if not 0 <= items[1] <= MAX_INT:
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
    props = encode_properties(properties)
    return b"".join([_dumps(exchange), _dumps(routing_key), _dumps(body), _dumps(props)])


def encode_deliver(consumer_tag: str, delivery_tag: int, redelivered: bool, tail: bytes) -> bytes:
    """A whole Deliver frame from its per-delivery fields and a tail from encode_deliver_tail.

    Equal to ``encode(Deliver(...))``; a test holds them to it.
    """
    head = _dumps([Deliver.frame_type, consumer_tag, delivery_tag, redelivered])
    # head is a 4-item array: rewrite its first byte as an 8-item array and append the rest.
    payload = b"".join([_ARRAY_OF_8, memoryview(head)[1:], tail])
    return HEADER.pack(len(payload)) + payload


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
            encode_properties(properties),
            mandatory,
        ]
    )
    return HEADER.pack(len(payload)) + payload


_dumps = cbor2.dumps
_ARRAY_OF_8 = b"\x88"
_PUBLISH_START = bytes([0x80 | 6, 0x18, 40])  # a 6-item array whose first item is 40


def is_publish(payload_start: bytes) -> bool:
    return payload_start[:3] == _PUBLISH_START


def fragment(frame: bytes, size: int) -> bytes:
    """One encoded frame as fragments of at most ``size`` payload bytes each."""
    payload = memoryview(frame)[4:]
    parts: list[bytes | memoryview] = []
    for start in range(0, len(payload), size):
        chunk = payload[start : start + size]
        more = start + size < len(payload)
        parts.append(HEADER.pack(len(chunk) | (CONTINUED if more else 0)))
        parts.append(chunk)
    return b"".join(parts)
