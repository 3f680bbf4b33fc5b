"""AMQP 0-9-1 method arguments and field tables decoded with limits, in time linear in the bytes.

pamqp's decoder slices the rest of the frame at every field and recurses without a bound: a
128 KiB frame of small entries cost half a second of CPU, and one of nested arrays a thousand
slices alive at once (90 MB that outlived the frame). Here every value is read at an offset
into the frame, and tables and arrays nest at most ``MAX_NESTING`` deep, the native protocol's
limit, so whatever one front end accepts every front end can deliver. Values come out as
pamqp's would (its method classes, Decimal, datetime, bytearray), so the rest of the AMQP
path is unchanged. pamqp still writes every frame we send.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

from pamqp import commands

from ..errors import RemoteProtocolError
from .values import MAX_NESTING

#: Values one frame's field tables may hold in all. Real tables hold tens (a client's
#: properties, Celery's headers) to a few thousand (a long x-death history); a 128 KiB frame
#: of tiny entries holds 43,000, and decoding them held the event loop for 60 ms.
MAX_FIELD_VALUES = 8192


class FieldError(RemoteProtocolError):
    """A frame's fields cannot be read, or exceed a limit: 501 FRAME_ERROR, the connection
    ends (the text names the problem)."""


_U8 = struct.Struct(">B")
_I8 = struct.Struct(">b")
_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_FIXED: dict[int, struct.Struct] = {
    ord("b"): _I8,
    ord("B"): _U8,
    ord("s"): _I16,
    ord("u"): _U16,
    ord("I"): _I32,
    ord("i"): _U32,
    ord("l"): _I64,
    ord("L"): _I64,
    ord("f"): _F32,
    ord("d"): _F64,
}


class _Reader:
    """One frame's payload and a position in it."""

    __slots__ = ("data", "end", "left", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end
        self.left = MAX_FIELD_VALUES  # values its tables may still hold

    def take(self, n: int) -> int:
        """The position of the next ``n`` bytes, which are then passed."""
        at = self.pos
        if at + n > self.end:
            raise FieldError("a field runs past the end of its frame")
        self.pos = at + n
        return at

    def unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack_from(self.data, self.take(fmt.size))[0]

    def text(self, n: int) -> str:
        at = self.take(n)
        try:
            return bytes(self.data[at : at + n]).decode()
        except UnicodeDecodeError:
            raise FieldError("a short string is not UTF-8") from None

    def shortstr(self) -> str:
        return self.text(self.data[self.take(1)])

    def longstr(self) -> str | bytes:
        """Text when it is UTF-8, else bytes (as pamqp: a PLAIN response may be either)."""
        n = self.unpack(_U32)
        at = self.take(n)
        raw = bytes(self.data[at : at + n])
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw

    def table(self, depth: int = 0) -> dict[str, Any]:
        n = self.unpack(_U32)
        end = self.pos + n
        if end > self.end:
            raise FieldError("a field table runs past the end of its frame")
        outer, self.end = self.end, end
        out: dict[str, Any] = {}
        while self.pos < end:
            key = self.shortstr()
            out[key] = self.value(depth + 1)
        self.end = outer
        return out

    def array(self, depth: int) -> list[Any]:
        n = self.unpack(_U32)
        end = self.pos + n
        if end > self.end:
            raise FieldError("a field array runs past the end of its frame")
        outer, self.end = self.end, end
        out: list[Any] = []
        while self.pos < end:
            out.append(self.value(depth + 1))
        self.end = outer
        return out

    def value(self, depth: int) -> Any:
        """A table's or array's value, ``depth`` below the outermost table (counted as the
        native protocol counts it)."""
        if depth > MAX_NESTING:
            raise FieldError(f"a field table is nested deeper than {MAX_NESTING} levels")
        self.left -= 1
        if self.left < 0:
            raise FieldError(f"field tables hold more than {MAX_FIELD_VALUES} values in a frame")
        kind = self.data[self.take(1)]
        fixed = _FIXED.get(kind)
        if fixed is not None:
            return self.unpack(fixed)
        if kind == 0x53:  # S
            return self.longstr()
        if kind == 0x74:  # t
            return bool(self.data[self.take(1)])
        if kind == 0x46:  # F
            return self.table(depth)
        if kind == 0x41:  # A
            return self.array(depth)
        if kind == 0x56 or kind == 0:  # V (and 0, seen in the wild, as pamqp takes it)
            return None
        if kind == 0x54:  # T
            return _timestamp(self.unpack(_U64))
        if kind == 0x44:  # D
            places = self.data[self.take(1)]
            raw = self.unpack(_I32)
            return decimal.Decimal(raw) * (decimal.Decimal(10) ** -places)
        if kind == 0x78:  # x
            n = self.unpack(_U32)
            at = self.take(n)
            return bytearray(self.data[at : at + n])
        raise FieldError(f"unknown field type {bytes([kind])!r}")


def _timestamp(seconds: int) -> datetime.datetime:
    value: float = seconds
    if seconds > 0xFFFFFFFF:  # pamqp's reading: past 2106 it is milliseconds
        value = seconds / 1000.0
    try:
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise FieldError(f"timestamp {seconds} is out of range") from None


def decode_table(data: bytes | bytearray) -> dict[str, Any]:
    """A whole field table (its 4-byte length first), with the limits of method frames."""
    reader = _Reader(data, 0, len(data))
    table = reader.table()
    if reader.pos != len(data):
        raise FieldError("bytes after the field table")
    return table


_READERS: dict[str, Any] = {
    "octet": lambda r: r.data[r.take(1)],
    "short": lambda r: r.unpack(_U16),
    "long": lambda r: r.unpack(_U32),
    "longlong": lambda r: r.unpack(_U64),
    "shortstr": _Reader.shortstr,
    "longstr": _Reader.longstr,
    "table": _Reader.table,
    "timestamp": lambda r: _timestamp(r.unpack(_U64)),
}
# Each method's arguments as (name, reader or None for a bit), computed once per class.
_LAYOUTS: dict[int, tuple[Any, tuple[tuple[str, Any], ...]]] = {}


def _layout(index: int) -> tuple[Any, tuple[tuple[str, Any], ...]]:
    known = _LAYOUTS.get(index)
    if known is None:
        cls: Any = commands.INDEX_MAPPING.get(index)
        if cls is None:
            raise FieldError(f"unknown method {index >> 16}.{index & 0xFFFF}")
        fields = tuple(
            (name, None if cls.amqp_type(name) == "bit" else _READERS[cls.amqp_type(name)])
            for name in cls.__slots__
        )
        known = _LAYOUTS[index] = (cls, fields)
    return known


def decode_properties(frame: bytes | bytearray, end: int) -> tuple[int, Any]:
    """The body size and pamqp's ``Basic.Properties`` in a whole content-header frame."""
    reader = _Reader(frame, 7, end)
    class_id, _, body_size, flags = (
        reader.unpack(_U16),
        reader.unpack(_U16),
        reader.unpack(_U64),
        reader.unpack(_U16),
    )
    if class_id != commands.Basic.frame_id:
        raise FieldError(f"a content header of class {class_id}, not basic")
    more = flags
    while more & 1:  # further flag words: no basic property lives there
        more = reader.unpack(_U16)
    cls: Any = commands.Basic.Properties
    props = cls.__new__(cls)
    for name in cls.__slots__:
        value = None
        if flags & cls.flags[name]:
            value = _READERS[getattr(cls, "_" + name)](reader)
        setattr(props, name, value)
    if reader.pos != end:
        raise FieldError("bytes after the properties of a content header")
    return body_size, props


def decode_method(frame: bytes | bytearray, end: int) -> Any:
    """The method in a whole method frame (``frame[7:end]`` is its payload), as pamqp's class
    with every argument set; raises FieldError for what cannot be read or is over a limit."""
    reader = _Reader(frame, 7, end)
    cls, fields = _layout(reader.unpack(_U32))
    method = cls.__new__(cls)
    bits, bit = 0, 8
    for name, read in fields:
        if read is None:  # bits pack into octets, eight to one
            if bit == 8:
                bits, bit = reader.data[reader.take(1)], 0
            setattr(method, name, bool(bits & (1 << bit)))
            bit += 1
            continue
        bit = 8
        setattr(method, name, read(reader))
    if reader.pos != end:
        raise FieldError(f"bytes after the arguments of {cls.name}")
    return method
