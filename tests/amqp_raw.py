"""A raw AMQP 0-9-1 client for tests that must misbehave: bytes it chooses, resets, silence.

pamqp marshals the frames a well-formed client would send; a test writes anything else by
hand (``send_raw``)."""

from __future__ import annotations

import socket
import struct
import textwrap
from typing import Any

import trio
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import heartbeat as amqp_heartbeat

from mqroute.protocol.amqp import PROTOCOL_HEADER
from mqroute.server import ServerAddress

FRAME_HEADER = struct.Struct(">BHI")

#: A pika worker process: ``python -c PIKA_WORKER URL QUEUE MODE``. It prints "consuming" at
#: its first delivery; MODE "ack-odd" acks every other delivery, "hold" acks none.
PIKA_WORKER = textwrap.dedent(
    """
    import sys, pika
    url, queue, mode = sys.argv[1:4]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    ch.basic_qos(prefetch_count=50)
    def on_message(ch, method, properties, body):
        if method.delivery_tag == 1:
            print("consuming", flush=True)
        if mode == "ack-odd" and method.delivery_tag % 2:
            ch.basic_ack(method.delivery_tag)
    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    """
)


def plain(user: str, password: str) -> str:
    return f"\x00{user}\x00{password}"


class RawAmqp:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    async def connect(
        cls,
        address: ServerAddress,
        *,
        login: bool = True,
        user: str = "guest",
        password: str = "guest",
        client_properties: dict[str, Any] | None = None,
        heartbeat: int = 0,
    ) -> RawAmqp:
        """Connected; with ``login``, through connection.open-ok."""
        assert address.amqp_port is not None
        client = cls(await trio.open_tcp_stream("127.0.0.1", address.amqp_port))
        await client.stream.send_all(PROTOCOL_HEADER)
        assert isinstance(await client.method(), amqp.Connection.Start)
        if not login:
            return client
        await client.send(
            0,
            amqp.Connection.StartOk(
                client_properties=client_properties or {"product": "raw"},
                mechanism="PLAIN",
                response=plain(user, password),
            ),
        )
        tune = await client.method()
        assert isinstance(tune, amqp.Connection.Tune), tune
        await client.send(0, amqp.Connection.TuneOk(tune.channel_max, tune.frame_max, heartbeat))
        await client.send(0, amqp.Connection.Open("/"))
        assert isinstance(await client.method(), amqp.Connection.OpenOk)
        return client

    async def send(self, channel: int, *methods: Any) -> None:
        await self.stream.send_all(b"".join(amqp_frame.marshal(m, channel) for m in methods))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def open_channel(self, channel: int = 1) -> None:
        await self.send(channel, amqp.Channel.Open())
        assert isinstance(await self.method(), amqp.Channel.OpenOk)

    async def frame(self) -> tuple[int, Any] | None:
        """The next ``(channel, frame)`` from the server, or None once it closed."""
        while True:
            if len(self._buffer) >= 7:
                size = FRAME_HEADER.unpack_from(self._buffer)[2]
                if len(self._buffer) >= size + 8:
                    data, self._buffer = self._buffer[: size + 8], self._buffer[size + 8 :]
                    _, channel, value = amqp_frame.unmarshal(data)
                    return channel, value
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return None
            self._buffer += chunk

    async def method(self) -> Any:
        """The next method frame (heartbeats skipped), or None once the server closed."""
        while True:
            item = await self.frame()
            if item is None:
                return None
            if not isinstance(item[1], amqp_heartbeat.Heartbeat):
                return item[1]

    async def until_closed(self) -> list[Any]:
        """Every method until the server ends the connection."""
        got = []
        while (m := await self.method()) is not None:
            got.append(m)
        return got

    def reset(self) -> None:
        """Close with SO_LINGER 0: a TCP reset, as a killed process's kernel may send."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def table_bytes(depth: int, *, kind: str = "F") -> bytes:
    """An AMQP field table whose one entry nests ``depth`` tables (F) or arrays (A) deep."""
    inner = b""
    for _ in range(depth):
        if kind == "F":
            body = b"\x01k" + b"F" + inner if inner else b""
            inner = struct.pack(">I", len(body)) + body
        else:
            body = b"A" + inner if inner else b""
            inner = struct.pack(">I", len(body)) + body
    return struct.pack(">I", len(inner) + 3) + b"\x01k" + kind.encode() + inner


def start_ok_bytes(client_properties: bytes, mechanism: bytes, response: bytes) -> bytes:
    """connection.start-ok written by hand: any table, any response bytes."""
    payload = (
        struct.pack(">HH", 10, 11)
        + client_properties
        + bytes([len(mechanism)])
        + mechanism
        + struct.pack(">I", len(response))
        + response
        + b"\x05en_US"
    )
    return FRAME_HEADER.pack(1, 0, len(payload)) + payload + b"\xce"
