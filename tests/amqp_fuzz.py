"""Random AMQP input for fuzzing the AMQP port without a socket (tests/test_amqp_fuzz.py, and
benchmarks/fuzz_amqp.py for a long bounded run), and ``drive``: the framing and the front end
on a real core, with the login done as the wire does it.

``random_frames`` makes well-framed frames whose arguments are anything the wire can carry:
any method a client may send (and some it may not), short strings in any UTF-8 (or none),
integers at their edges, field tables nested at and past the limit, bodies and headers out
of order, and bytes flipped at random. Frames well framed reach the front end and the core,
where plain random bytes would stop at the framing.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from pamqp import commands

from mqroute.core.access import FULL
from mqroute.core.effects import NeedBodies
from mqroute.core.vhost import Vhost
from mqroute.model import Properties
from mqroute.protocol.amqp import (
    _FRAME_HEADER,
    PROTOCOL_HEADER,
    AmqpFrames,
    BadHeader,
    FrameError,
    content_header,
    method_bytes,
    unchecked,
)
from mqroute.protocol.values import MAX_NESTING
from mqroute.server.amqp_front import AmqpFrontEnd, Authenticate, Closed, OpenVhost

# Methods a client sends, and every other (a server's method from a client is an error too).
CLIENT_METHODS = [
    commands.Channel.Open,
    commands.Channel.Close,
    commands.Channel.CloseOk,
    commands.Channel.Flow,
    commands.Exchange.Declare,
    commands.Exchange.Delete,
    commands.Exchange.Bind,
    commands.Exchange.Unbind,
    commands.Queue.Declare,
    commands.Queue.Bind,
    commands.Queue.Unbind,
    commands.Queue.Purge,
    commands.Queue.Delete,
    commands.Basic.Qos,
    commands.Basic.Consume,
    commands.Basic.Cancel,
    commands.Basic.Publish,
    commands.Basic.Get,
    commands.Basic.Ack,
    commands.Basic.Reject,
    commands.Basic.Recover,
    commands.Basic.RecoverAsync,
    commands.Basic.Nack,
    commands.Tx.Select,
    commands.Tx.Commit,
    commands.Tx.Rollback,
    commands.Confirm.Select,
    commands.Connection.Close,
    commands.Connection.CloseOk,
    commands.Connection.UpdateSecret,
]
CHANNEL_METHODS = [m for m in CLIENT_METHODS if not m.name.startswith("Connection.")]
ALL_METHODS = list(commands.INDEX_MAPPING.values())
NAMES = [
    "",
    "q",
    "q",
    "x",
    "amq.direct",
    "amq.topic",
    "amq.rabbitmq.reply-to",
    "очередь",
    "a\tb",
    "*",
    "#",
    "x" * 255,
]
EXCHANGE_TYPES = ["direct", "fanout", "topic", "headers", "x-unknown", ""]
ARGUMENTS = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delay",
    "x-match",
    "x-priority",
    "x-consumer-timeout",
    "x-delivery-limit",
    "alternate-exchange",
]


def _text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(NAMES)
    if pick < 0.8:
        return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(12)))
    text = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(40)))
    while len(text.encode()) > 255:
        text = text[:-1]
    return text.replace("\ud800", "")


def _int(rng: random.Random, bits: int, signed: bool = False) -> int:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return rng.choice([low, high, 0, 1, rng.randint(low, high), rng.randint(0, 100)])


def _value(rng: random.Random, depth: int) -> Any:
    pick = rng.random()
    if depth < MAX_NESTING + 2 and pick < 0.15:
        return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if depth < MAX_NESTING + 2 and pick < 0.25:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return rng.choice(
        [
            None,
            True,
            _int(rng, 32, signed=True),
            _int(rng, 64, signed=True),
            rng.random() * 1e6,
            _text(rng),
            bytes(rng.randrange(256) for _ in range(rng.randrange(8))),
            rng.choice([*EXCHANGE_TYPES, "reject-publish", "drop-head", "all", "any", "quorum"]),
        ]
    )


def _table_value(rng: random.Random) -> dict[str, Any]:
    table = {}
    for _ in range(rng.randrange(4)):
        key = rng.choice(ARGUMENTS) if rng.random() < 0.7 else _text(rng)
        table[key] = _value(rng, 1)
    if rng.random() < 0.02:  # past the nesting limit
        deep: Any = "bottom"
        for _ in range(MAX_NESTING + 1):
            deep = {"k": deep}
        table["deep"] = deep
    return table


def _argument(rng: random.Random, kind: str, name: str) -> Any:
    if kind == "bit":
        return rng.random() < 0.3
    if kind == "octet":
        return _int(rng, 8)
    if kind == "short":
        return _int(rng, 16) if name != "reply_code" else rng.choice([200, 320, 404, 541])
    if kind == "long":
        return _int(rng, 32)
    if kind == "longlong":
        return _int(rng, 63)
    if kind == "shortstr":
        if name == "exchange_type":
            return rng.choice(EXCHANGE_TYPES)
        return _text(rng)
    if kind == "longstr":
        return _text(rng)
    if kind == "table":
        return _table_value(rng)
    raise ValueError(kind)


def random_method(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.3:
        cls = commands.Basic.Publish
    elif pick < 0.97:
        cls = rng.choice(CHANNEL_METHODS)
    else:
        cls = rng.choice(ALL_METHODS)
    values = {name: _argument(rng, cls.amqp_type(name), name) for name in cls.__slots__}
    if cls is commands.Basic.Publish and rng.random() < 0.7:  # one that routes somewhere
        values["exchange"], values["routing_key"] = rng.choice([("", "q"), ("x", "a.b")])
    return unchecked(cls, *values.values())


def _content(rng: random.Random, channel: int) -> bytes:
    """A content header and body frames, right or wrong in size."""
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 10, 300])))
    size = len(body) if rng.random() < 0.8 else _int(rng, 32)
    headers = _table_value(rng) if rng.random() < 0.3 else None
    try:
        properties = Properties(
            headers=headers,
            persistent=rng.random() < 0.5,
            priority=rng.choice([None, 0, 9, 255]),
            expiration=rng.choice([None, "0", "100", "-1", "abc", "99999999999"]),
        )
    except (TypeError, ValueError):
        properties = Properties()
    header = content_header(size, properties)
    frames = [_FRAME_HEADER.pack(2, channel, len(header)) + header + b"\xce"]
    if body:
        frames.append(_FRAME_HEADER.pack(3, channel, len(body)) + body + b"\xce")
    return b"".join(frames)


def random_frames(rng: random.Random, count: int) -> bytes:
    """``count`` frames after a good login (see ``login_bytes``), on channels 1-3 mostly."""
    out = []
    for _ in range(count):
        channel = rng.choice([1, 2, 3]) if rng.random() < 0.97 else rng.choice([0, 4, 65535])
        pick = rng.random()
        if pick < 0.03:
            frame = _content(rng, channel)
        elif pick < 0.17:
            frame = b"\x08\x00\x00\x00\x00\x00\x00\xce"  # a heartbeat
        else:
            method = random_method(rng)
            if type(method) is commands.Channel.Open and rng.random() < 0.9:
                channel = rng.choice([1, 2, 3])
            try:
                frame = method_bytes(channel, method)
            except (ValueError, TypeError, struct.error, OverflowError):
                continue
            if type(method) is commands.Basic.Publish:
                frame += _content(rng, channel)
        if rng.random() < 0.03:  # a flipped byte
            data = bytearray(frame)
            data[rng.randrange(len(data))] = rng.randrange(256)
            frame = bytes(data)
        out.append(frame)
    return b"".join(out)


def login_frames(channel_max: int = 2047) -> list[bytes]:
    """start-ok, tune-ok, open, channels 1-3 open and a little topology (queues that random
    publishes reach, a consumer): the way in that random frames follow."""
    start_ok = commands.Connection.StartOk(
        client_properties={"product": "fuzz", "capabilities": {"connection.blocked": True}},
        mechanism="PLAIN",
        response="\x00guest\x00guest",
    )
    return [
        method_bytes(0, start_ok),
        method_bytes(0, commands.Connection.TuneOk(channel_max, 131072, 0)),
        method_bytes(0, commands.Connection.Open("/")),
        *(method_bytes(n, commands.Channel.Open()) for n in (1, 2, 3)),
        method_bytes(1, commands.Queue.Declare(queue="q")),
        method_bytes(
            1,
            unchecked(
                commands.Queue.Declare,
                0,
                "очередь",
                False,
                False,
                False,
                False,
                False,
                {"x-max-length": 5},
            ),
        ),
        method_bytes(1, commands.Exchange.Declare(exchange="x", exchange_type="topic")),
        method_bytes(1, commands.Queue.Bind(queue="q", exchange="x", routing_key="#")),
        method_bytes(2, commands.Basic.Qos(prefetch_count=3)),
        method_bytes(2, commands.Basic.Consume(queue="q", consumer_tag="c")),
    ]


def drive(data: bytes, *, vhost: Vhost | None = None, now: float = 1_700_000_000.0) -> list[bytes]:
    """Feed ``data`` (after the protocol header) to the framing and the front end of one
    connection on ``vhost``, as the wire would; return what the front end wrote. Raises
    only what is a bug: the protocol's own errors end the connection, as on a socket.

    The client is patient, as client libraries are: a channel the broker closed is answered
    with close-ok and opened again, so one bad frame does not end the run."""
    vhost = vhost or Vhost()
    frames = AmqpFrames()
    front = AmqpFrontEnd("fuzz", max_message_size=1 << 20, heartbeat=0)
    written: list[bytes] = []
    frames.receive_data(PROTOCOL_HEADER + data)
    frames.receive_data(b"")
    while True:
        try:
            item = frames.next_frame()
        except (BadHeader, FrameError):
            break  # the wire closes with 501 FRAME_ERROR: the protocol's own answer
        if item is None:
            break
        if isinstance(item, str):  # the header: the negotiation starts
            front.start()
            continue
        channel, frame = item
        try:
            action = front.handle(channel, frame, now)
        except NeedBodies:  # nothing is on disk here
            raise AssertionError("NeedBodies without a disk") from None
        frames.frame_max = front.frame_max
        if isinstance(action, Authenticate):
            front.authenticated(action.user)
        elif isinstance(action, OpenVhost):
            front.opened(vhost, FULL)
        elif isinstance(action, Closed):
            break
        written += front.out
        front.out.clear()
        written += front.output(now)
        for number in (1, 2, 3):
            ch = front.channels.get(number)
            if ch is not None and ch.closing and front.state == "open":
                front.handle(number, commands.Channel.CloseOk(), now)
                front.handle(number, commands.Channel.Open(), now)
    front.out.clear()
    if front.vhost is not None:  # the wire's release, as the socket ends
        for ch in list(front.channels.values()):
            if not ch.closing:
                vhost.close_session(ch.session, now=now)
        vhost.release_owner(front.id)
    return written
