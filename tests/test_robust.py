"""The robust connection across a real broker restart (the server as a subprocess)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

import mqroute

from .helpers import start_server_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reconnects_redeclares_and_resumes_consuming(tmp_path: Path) -> None:
    port = free_port()
    server, url, _ = await start_server_process(tmp_path / "a", port=port)
    try:
        async with mqroute.connect_robust(url, min_backoff=0.05) as conn:
            # a transient queue: only the replayed declaration brings it back after the restart
            await conn.declare_queue("jobs")
            async with conn.consume("jobs", prefetch=5) as jobs:
                await conn.publish("", "jobs", b"before")
                first = await jobs.__anext__()
                assert first.body == b"before"
                await first.ack()

                server.kill()
                await server.wait()
                server, _, _ = await start_server_process(tmp_path / "b", port=port)

                await conn.publish("", "jobs", b"after")  # waits for the reconnect
                second = await jobs.__anext__()
                assert second.body == b"after"
                await second.ack()
            assert conn.reconnects >= 1
    finally:
        server.kill()
        await server.wait()


async def test_publishes_with_an_id_are_retried_when_asked(tmp_path: Path) -> None:
    port = free_port()
    server, url, _ = await start_server_process(tmp_path, port=port)
    try:
        async with mqroute.connect_robust(url, min_backoff=0.05, retry_publishes=True) as conn:
            await conn.declare_queue("q", durable=True, arguments={"x-dedup-window": 60_000})
            server.kill()
            await server.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: conn.publish("", "q", b"once", persistent=True, message_id="m-1")
                )
                await trio.sleep(0.2)  # the publish is waiting for a connection
                server, _, _ = await start_server_process(tmp_path, port=port)
            info = await conn.declare_queue(
                "q", durable=True, passive=True, arguments={"x-dedup-window": 60_000}
            )
            assert info.message_count == 1
    finally:
        server.kill()
        await server.wait()
