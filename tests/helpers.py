"""A raw protocol client for tests that must misbehave (garbage, silence, bad versions)."""

from __future__ import annotations

import trio

from mqroute.protocol import NEED_DATA, Connection, Frame, Hello, PeerClosed, Role, Welcome
from mqroute.server import ServerAddress


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = Connection(Role.CLIENT)

    @classmethod
    async def connect(
        cls, address: ServerAddress, *, heartbeat_ms: int = 0, handshake: bool = True
    ) -> RawClient:
        client = cls(await trio.open_tcp_stream(address.host, address.port))
        if handshake:
            await client.send(Hello(versions=[1], client="raw", heartbeat_ms=heartbeat_ms))
            assert isinstance(await client.next(), Welcome)
        return client

    async def send(self, frame: Frame) -> None:
        await self.stream.send_all(self.proto.send(frame))

    async def next(self) -> object:
        """The next frame from the server, or PeerClosed."""
        while (event := self.proto.next_event()) is NEED_DATA:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.proto.receive_data(data)
        return event

    async def until_closed(self) -> list[object]:
        events = []
        while not isinstance(event := await self.next(), PeerClosed):
            events.append(event)
        return events
