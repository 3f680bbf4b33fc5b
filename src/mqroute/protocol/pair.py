"""Two connected state machines with no socket between them, for tests of the protocol and of
anything that speaks it: what one side sends, the other receives when asked."""

from __future__ import annotations

from typing import Any

from .connection import NEED_DATA, Connection
from .frames import DEFAULT_MAX_MESSAGE_SIZE, Frame, PeerClosed, Role, Welcome
from .handshake import hello_for, welcome_for


class ConnectionPair:
    """A client and a server ``Connection``; ``open()`` runs the handshake between them."""

    def __init__(
        self,
        *,
        max_frame_size: int = 1 << 20,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.client = Connection(Role.CLIENT)
        self.server = Connection(
            Role.SERVER, max_frame_size=max_frame_size, max_message_size=max_message_size
        )

    def open(self, *, heartbeat_ms: int = 0) -> Welcome:
        """Hello and Welcome, as a real client and server would exchange them."""
        hello = hello_for("pair", heartbeat_ms)
        self.server.receive_data(self.client.send(hello))
        assert self.server.next_event() == hello
        welcome = welcome_for(
            hello,
            server="pair",
            connection_id="pair-1",
            heartbeat_ms=heartbeat_ms,
            max_frame_size=self.server.max_frame_size,
            max_message_size=self.server.max_message_size,
        )
        self.client.receive_data(self.server.send(welcome))
        assert self.client.next_event() == welcome
        return welcome

    def to_server(self, *frames: Frame) -> list[Any]:
        """Send ``frames`` from the client; the events the server reads from them."""
        self.server.receive_data(b"".join(self.client.send(f) for f in frames))
        return drain(self.server)

    def to_client(self, *frames: Frame) -> list[Any]:
        """Send ``frames`` from the server; the events the client reads from them."""
        self.client.receive_data(b"".join(self.server.send(f) for f in frames))
        return drain(self.client)


def drain(conn: Connection) -> list[Any]:
    """Every event ``conn`` can read from what it has received, up to PeerClosed."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, PeerClosed):
            break
    return events
