"""A raw protocol client for tests that must misbehave (garbage, silence, bad versions)."""

from __future__ import annotations

from typing import Any

import trio

from mqroute.protocol import NEED_DATA, Connection, Consume, Frame, Hello, PeerClosed, Role, Welcome
from mqroute.server import ServerAddress


def consume_frame(queue: str, consumer_tag: str, *, prefetch: int = 0) -> Consume:
    """A plain Consume request (manual ack, not exclusive, no arguments) for raw clients."""
    return Consume(
        rid=1,
        queue=queue,
        consumer_tag=consumer_tag,
        prefetch=prefetch,
        auto_ack=False,
        exclusive=False,
        arguments={},
    )


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
            await client.send(Hello(versions=[2], client="raw", heartbeat_ms=heartbeat_ms))
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


async def start_server_process(
    data_dir: object,
    *args: str,
    port: int = 0,
    env: dict[str, str] | None = None,
    kill_at: tuple[str, int] | None = None,
) -> tuple[trio.Process, str, list[str]]:
    """``mqroute server`` as a subprocess; returns it, its URL and its log up to listening.

    With ``kill_at`` (``("before-commit", n)`` or ``("after-commit", n)``) it is
    tests/crashing_server.py instead, which kills itself at the n-th batch with a message.
    """
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    if kill_at is None:
        # An ephemeral AMQP port: 5672 may be a RabbitMQ's, or another test's.
        command = [sys.executable, "-m", "mqroute", "server", "--amqp-port", "0"]
    else:
        script = Path(__file__).parent / "crashing_server.py"
        command = [sys.executable, str(script), kill_at[0], str(kill_at[1])]
    process = await trio.lowlevel.open_process(
        [*command, "--port", str(port), "--data-dir", str(data_dir), *args],
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(20):
        while True:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, f"server exited early: {buffer.decode()}"
            buffer += chunk
            match = re.search(rb"listening on (mqroute://\S+)", buffer)
            if match:
                return process, match.group(1).decode(), buffer.decode().splitlines()


class DriverRecorder:
    """Weak references to the connection drivers whose id starts with ``prefix``, and a way
    to wait until ``count`` of them have ended: to show a closed connection is freed by
    reference counting alone (run with the collector off)."""

    def __init__(self, monkeypatch: Any, prefix: str) -> None:
        import weakref

        from mqroute.server.driver import Driver

        self.made: list[weakref.ref[Driver]] = []
        self._finished = trio.Semaphore(0)
        run = Driver.run

        async def recording_run(driver: Driver) -> None:
            mine = driver.id.startswith(prefix)
            if mine:
                self.made.append(weakref.ref(driver))
            try:
                await run(driver)
            finally:
                if mine:
                    self._finished.release()

        monkeypatch.setattr(Driver, "run", recording_run)

    async def until_ended(self, count: int) -> None:
        import trio.testing

        with trio.fail_after(5):
            for _ in range(count):
                await self._finished.acquire()
        await trio.testing.wait_all_tasks_blocked()

    def alive(self) -> list[object]:
        return [ref() for ref in self.made if ref() is not None]
