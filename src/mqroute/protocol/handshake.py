"""The handshake's decisions, made once for both sides: which protocol version, which
heartbeat, which frame size. The server answers a Hello with ``welcome_for``; the client
opens with ``hello_for`` and checks the answer with ``check_welcome``."""

from __future__ import annotations

from ..errors import RemoteProtocolError
from .frames import HANDSHAKE_FRAME_SIZE, SUPPORTED_VERSIONS, Hello, Welcome


def negotiate_frame_size(wish: int, limit: int) -> int:
    """The frame size both sides use: the smaller non-zero wish, at least HANDSHAKE_FRAME_SIZE."""
    size = min(wish, limit) if wish else limit
    return max(size, HANDSHAKE_FRAME_SIZE)


def negotiate_heartbeat(client_ms: int, server_ms: int) -> int:
    """The smaller non-zero wish of both sides; 0 (none) only if both want none."""
    wanted = [ms for ms in (client_ms, server_ms) if ms]
    return min(wanted) if wanted else 0


def hello_for(
    client: str,
    heartbeat_ms: int,
    max_frame_size: int = 0,
    *,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
) -> Hello:
    return Hello(
        versions=list(SUPPORTED_VERSIONS),
        client=client,
        heartbeat_ms=heartbeat_ms,
        max_frame_size=max_frame_size,
        user=user,
        password=password,
        vhost=vhost,
    )


def welcome_for(
    hello: Hello,
    *,
    server: str,
    connection_id: str,
    heartbeat_ms: int,
    max_frame_size: int,
    max_message_size: int,
) -> Welcome:
    """The server's answer to ``hello`` given its own wishes, or RemoteProtocolError if the
    two sides share no protocol version (send it as Close, then drop the connection)."""
    common = set(hello.versions) & set(SUPPORTED_VERSIONS)
    if not common:
        raise RemoteProtocolError(
            f"no common protocol version: client offers {hello.versions}, "
            f"server speaks {list(SUPPORTED_VERSIONS)}"
        )
    return Welcome(
        version=max(common),
        server=server,
        heartbeat_ms=negotiate_heartbeat(hello.heartbeat_ms, heartbeat_ms),
        max_frame_size=negotiate_frame_size(hello.max_frame_size, max_frame_size),
        connection_id=connection_id,
        max_message_size=max_message_size,
    )


def check_welcome(welcome: Welcome) -> None:
    """A client's check that the server chose a version it offered."""
    if welcome.version not in SUPPORTED_VERSIONS:
        raise RemoteProtocolError(
            f"server chose protocol version {welcome.version}; "
            f"this client speaks {list(SUPPORTED_VERSIONS)}"
        )
