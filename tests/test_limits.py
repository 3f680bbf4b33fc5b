"""Limits on what one client can take: connections, objects, slow frames, descriptors."""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import mqroute
from mqroute.core.topology import Limits
from mqroute.core.vhost import Vhost
from mqroute.errors import ConnectionClosed, PreconditionFailed
from mqroute.model import ExchangeSpec, QueueSpec
from mqroute.protocol import Close, Heartbeat
from mqroute.server import ServerAddress, ServerConfig, serve

from .helpers import RawClient


@asynccontextmanager
async def server_with(**config: Any) -> AsyncIterator[ServerAddress]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve(ServerConfig(port=0, **config), task_status=task_status)
        )
        try:
            yield address
        finally:  # a failing test must not leave the server running (and the test hanging)
            nursery.cancel_scope.cancel()


async def test_connections_over_the_limit_are_refused_with_a_reason() -> None:
    async with (
        server_with(max_connections=2) as address,
        mqroute.connect(address.url) as first,
        mqroute.connect(address.url),
    ):
        with pytest.raises(ConnectionClosed, match="too many connections"):
            async with mqroute.connect(address.url):
                pass
        await first.declare_queue("q")  # the others are unharmed
    async with server_with(max_connections=2) as address, mqroute.connect(address.url):
        pass


async def test_connections_per_address_are_limited() -> None:
    async with server_with(max_connections_per_host=1) as address:
        async with mqroute.connect(address.url) as first:
            with pytest.raises(ConnectionClosed, match=r"from 127\.0\.0\.1"):
                async with mqroute.connect(address.url):
                    pass
            await first.declare_queue("q")
        async with mqroute.connect(address.url):  # its place is free again
            pass


async def test_a_frame_trickled_a_byte_at_a_time_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with server_with(heartbeat_ms=0) as address:
        raw = await RawClient.connect(address)
        await raw.stream.send_all(struct.pack(">I", 1000) + b"\x86")  # begins a frame
        start = trio.current_time()

        async def trickle() -> None:
            for _ in range(100):
                await trio.sleep(4)
                await raw.stream.send_all(b"\x00")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            events = await raw.until_closed()
            nursery.cancel_scope.cancel()
        assert isinstance(events[-1], Close) and "too slowly" in events[-1].text
        assert 10 <= trio.current_time() - start < 20


async def test_a_large_frame_at_a_fair_rate_is_not_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with server_with(heartbeat_ms=0, max_frame_size=1 << 20) as address:
        raw = await RawClient.connect(address)
        data = raw.proto.send(Heartbeat())
        padded = struct.pack(">I", 60_000) + b"\x83" + b"\x00" * 59_999  # valid length, slow
        for start in range(0, len(padded), 4096):  # 4 KiB a second: above the minimum rate
            await raw.stream.send_all(padded[start : start + 4096])
            await trio.sleep(1)
        await raw.stream.send_all(data)
        events = await raw.until_closed()
        # The frame was whole in time; it is garbage, so that is what the server says.
        assert isinstance(events[-1], Close) and "too slowly" not in events[-1].text


def test_object_counts_have_limits_that_change_nothing_when_reached() -> None:
    broker = Vhost(limits=Limits(queues=2, exchanges=1, bindings=1, consumers_per_session=1))
    session = broker.open_session("o")
    broker.declare_queue("o", QueueSpec(name="a"))
    broker.declare_queue("o", QueueSpec(name="b"))
    with pytest.raises(PreconditionFailed, match=r"queue limit \(2\) is reached"):
        broker.declare_queue("o", QueueSpec(name="c"))
    broker.declare_queue("o", QueueSpec(name="a"))  # a redeclare is not a new queue
    broker.declare_exchange(ExchangeSpec(name="x", type="fanout"))
    with pytest.raises(PreconditionFailed, match=r"exchange limit \(1\) is reached"):
        broker.declare_exchange(ExchangeSpec(name="y", type="fanout"))
    broker.bind_queue("o", "a", "x")
    with pytest.raises(PreconditionFailed, match=r"binding limit \(1\) is reached"):
        broker.bind_queue("o", "b", "x")
    broker.unbind_queue("o", "a", "x")
    broker.bind_queue("o", "b", "x")  # room again
    broker.consume(session, "a")
    with pytest.raises(PreconditionFailed, match=r"limit of 1 consumers per session"):
        broker.consume(session, "b")
    assert sorted(broker.queues) == ["a", "b"] and "y" not in broker.exchanges
    assert len(broker.queues["b"].consumers) == 0


async def test_out_of_descriptors_the_server_logs_rarely_and_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from mqroute.server.node import Node
    from mqroute.server.shell import _accept
    from mqroute.server.users import Definitions

    class Exhausted:
        """A listener that is out of descriptors 300 times, then accepts one client."""

        def __init__(self) -> None:
            self.failures = 0
            self.recovered = trio.Event()

        async def accept(self) -> object:
            await trio.lowlevel.checkpoint()
            if self.failures < 300:
                self.failures += 1
                raise OSError(errno.EMFILE, "Too many open files")
            self.recovered.set()
            await trio.sleep_forever()

    node = Node(
        config=ServerConfig(), clock=lambda: 0.0, definitions=Definitions.default(fast=True)
    )
    listener = Exhausted()
    with caplog.at_level(logging.WARNING, logger="mqroute"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_accept, node, listener, nursery, None)
            await listener.recovered.wait()
            nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert 1 <= len(lines) <= 12  # 300 failures in 30 s: a burst, then nothing for a minute


def test_the_server_process_collects_garbage_rarely_and_never_over_its_code() -> None:
    """A full collection over the loaded modules took 20-30 ms: a latency spike."""
    import gc

    from mqroute.server.startup import GC_THRESHOLD, prepare_process

    threshold = gc.get_threshold()
    try:
        prepare_process()
        assert gc.get_threshold()[0] == GC_THRESHOLD
        assert gc.get_freeze_count() > 10_000  # the modules' objects, out of reach
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
