"""Hostile and careless AMQP clients against the real server: each ends its own connection,
and the broker, every other connection and every confirmed message carry on."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pika
import pytest
import trio
import trio.testing
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

import mqroute
from mqroute.errors import MQRouteError
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.driver import ITEM_COST, PENDING_OUTPUT_BYTES
from mqroute.server.users import Definitions

from .amqp_raw import PIKA_WORKER, RawAmqp, start_ok_bytes, table_bytes
from .helpers import DriverRecorder


@pytest.fixture
async def address(nursery: trio.Nursery) -> AsyncIterator[ServerAddress]:
    config = ServerConfig(
        port=0,
        amqp_port=0,
        definitions=Definitions.default(fast=True),
        login_failure_delay=0,
    )
    yield await nursery.start(functools.partial(serve, config))


async def round_trip(address: ServerAddress) -> None:
    """Another client's declare and get, on each port: the broker serves."""
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("still-here")
        assert await conn.get("still-here") is None
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Queue.Declare(queue="still-here"))
    assert isinstance(await raw.method(), amqp.Queue.DeclareOk)
    await raw.stream.aclose()


async def fill(address: ServerAddress, queue: str, count: int, size: int = 2048) -> None:
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue(queue)
        async with conn.publisher() as pub:
            for i in range(count):
                await pub.publish("", queue, str(i).encode().ljust(size, b"."))


async def ready_and_redelivered(address: ServerAddress, queue: str, count: int) -> int:
    """Take every message of ``queue``; how many came back marked redelivered."""
    redelivered = 0
    async with mqroute.connect(address.url) as conn:
        for _ in range(count):
            msg = await conn.get(queue, auto_ack=True)
            assert msg is not None
            redelivered += msg.redelivered
        assert await conn.get(queue) is None
    return redelivered


async def test_a_reset_while_idle_ends_only_that_connection(address: ServerAddress) -> None:
    for _ in range(3):
        raw = await RawAmqp.connect(address)
        await raw.open_channel()
        raw.reset()
    await round_trip(address)


async def test_a_reset_with_deliveries_in_flight_requeues_them(address: ServerAddress) -> None:
    await fill(address, "work", 500)
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Basic.Qos(prefetch_count=50))
    assert isinstance(await raw.method(), amqp.Basic.QosOk)
    await raw.send(1, amqp.Basic.Consume(queue="work", consumer_tag="w"))
    assert isinstance(await raw.method(), amqp.Basic.ConsumeOk)
    assert isinstance(await raw.method(), amqp.Basic.Deliver)  # deliveries are being written
    raw.reset()
    await round_trip(address)
    assert await ready_and_redelivered(address, "work", 500) == 50


async def test_a_pika_worker_killed_with_sigkill_ends_only_its_connection(
    address: ServerAddress,
) -> None:
    await fill(address, "work", 2000)
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-c", PIKA_WORKER, address.amqp_url, "work", "ack-odd"],
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    with trio.fail_after(20):
        assert b"consuming" in await worker.stdout.receive_some(100)
    os.kill(worker.pid, signal.SIGKILL)
    await worker.wait()
    await round_trip(address)
    async with mqroute.connect(address.url) as conn:
        left = (await conn.declare_queue("work", passive=True)).message_count
    assert 2000 - 50 <= left <= 2000  # what it acked may be gone; all else is ready again
    assert await ready_and_redelivered(address, "work", left) >= 1


async def test_a_plain_response_that_is_not_utf8_is_refused_and_a_reset_harms_nothing(
    address: ServerAddress,
) -> None:
    raw = await RawAmqp.connect(address, login=False)
    await raw.send_raw(start_ok_bytes(b"\x00\x00\x00\x00", b"PLAIN", b"\x00\xff\xfe\x00\xff"))
    close = await raw.method()
    assert isinstance(close, amqp.Connection.Close) and close.reply_code == 403
    raw.reset()
    await round_trip(address)


@pytest.mark.parametrize("kind", ["F", "A"])
async def test_client_properties_nested_500_deep_are_a_frame_error_naming_the_limit(
    address: ServerAddress, kind: str
) -> None:
    raw = await RawAmqp.connect(address, login=False)
    response = b"\x00guest\x00guest"
    await raw.send_raw(start_ok_bytes(table_bytes(500, kind=kind), b"PLAIN", response))
    close = await raw.method()
    assert isinstance(close, amqp.Connection.Close) and close.reply_code == 501
    assert "nested deeper than 16 levels" in close.reply_text
    raw.reset()
    await round_trip(address)


def publish_with_headers(address: ServerAddress, headers: dict[str, Any]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(address.amqp_url))
    ch = connection.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "deep", b"x", pika.BasicProperties(headers=headers))
    connection.close()


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_headers_at_the_nesting_limit_reach_every_front_end(address: ServerAddress) -> None:
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("deep")
        await trio.to_thread.run_sync(publish_with_headers, address, {"h": nested(15)})
        msg = await conn.get("deep", auto_ack=True)
        assert msg is not None and msg.properties.headers == {"h": nested(15)}


async def test_headers_past_the_nesting_limit_are_refused_at_publish(
    address: ServerAddress,
) -> None:
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("deep")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker, match="nested deeper"):
            await trio.to_thread.run_sync(publish_with_headers, address, {"h": nested(16)})
        assert await conn.get("deep") is None  # nothing was taken that cannot be delivered
    await round_trip(address)


# --- what waits to be written is bounded -----------------------------------------------------


async def connection_row(address: ServerAddress, prefix: str = "amqp-") -> dict[str, Any]:
    """The listing's row of the one AMQP connection (the SDK's own is native)."""
    async with mqroute.connect(address.url) as conn:
        rows = [r for r in await conn.inspect("connections") if r["id"].startswith(prefix)]
    assert len(rows) == 1, rows
    return rows[0]


# The driver's bound, a turn's worth of 16 KiB frames past it, and the frames' overhead.
OUTPUT_BOUND = PENDING_OUTPUT_BYTES + 16 * (16 * 1024 + ITEM_COST) + 64 * 1024


async def flood(raw: RawAmqp, frames: bytes, nursery: trio.Nursery) -> None:
    """Send ``frames`` without ever reading, until the server stops reading too."""

    async def send() -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await raw.send_raw(frames)

    nursery.start_soon(send)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


async def test_a_get_loop_that_never_reads_is_not_read_past_a_bound(
    address: ServerAddress, nursery: trio.Nursery
) -> None:
    await fill(address, "big", 2000, size=16 * 1024)
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    get = amqp_frame.marshal(amqp.Basic.Get(queue="big"), 1)
    await flood(raw, get * 2000, nursery)
    assert (await connection_row(address))["send_pend"] <= OUTPUT_BOUND
    async with mqroute.connect(address.url) as conn:
        left = (await conn.declare_queue("big", passive=True)).message_count
    assert left >= 1000  # the kernel's socket buffers hold some; the broker no more
    raw.reset()
    await round_trip(address)
    assert await ready_and_redelivered(address, "big", 2000) == 2000 - left


async def test_returns_to_a_publisher_that_never_reads_are_bounded(
    address: ServerAddress, nursery: trio.Nursery
) -> None:
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    publish = b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp.Basic.Publish(exchange="", routing_key="nowhere", mandatory=True),
            amqp_header.ContentHeader(0, 16 * 1024, amqp.Basic.Properties()),
            ContentBody(b"r" * 16 * 1024),
        )
    )
    await flood(raw, publish * 2000, nursery)
    assert (await connection_row(address))["send_pend"] <= OUTPUT_BOUND
    raw.reset()
    await round_trip(address)


async def test_direct_replies_to_a_requester_that_never_reads_are_bounded(
    address: ServerAddress,
) -> None:
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Basic.Consume(queue="amq.rabbitmq.reply-to", no_ack=True))
    assert isinstance(await raw.method(), amqp.Basic.ConsumeOk)
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("requests")
        await raw.send_raw(
            b"".join(
                amqp_frame.marshal(m, 1)
                for m in (
                    amqp.Basic.Publish(exchange="", routing_key="requests"),
                    amqp_header.ContentHeader(
                        0, 1, amqp.Basic.Properties(reply_to="amq.rabbitmq.reply-to")
                    ),
                    ContentBody(b"?"),
                )
            )
        )
        with trio.fail_after(5):
            while (request := await conn.get("requests", auto_ack=True)) is None:
                await trio.sleep(0.01)
        address_to = request.properties.reply_to
        assert address_to is not None
        async with conn.publisher() as pub:  # every reply is confirmed: nobody waits for ever
            for _ in range(2000):
                await pub.publish("", address_to, b"a" * 16 * 1024)
    assert (await connection_row(address))["send_pend"] <= OUTPUT_BOUND
    raw.reset()
    await round_trip(address)


# --- names, tags, transactions -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["очередь", "日本", "a!b", "tab\there", "é" * 127])
async def test_any_utf8_short_string_names_a_queue(address: ServerAddress, name: str) -> None:
    def work() -> tuple[str, bytes]:
        connection = pika.BlockingConnection(pika.URLParameters(address.amqp_url))
        ch = connection.channel()
        declared = ch.queue_declare(name).method.queue
        ch.basic_publish("", name, b"named")
        _, _, body = ch.basic_get(name, auto_ack=True)
        connection.close()
        return declared, body

    assert await trio.to_thread.run_sync(work) == (name, b"named")


async def test_two_channels_may_consume_one_queue_with_the_same_tag(
    address: ServerAddress,
) -> None:
    def work() -> list[int]:
        connection = pika.BlockingConnection(pika.URLParameters(address.amqp_url))
        first, second = connection.channel(), connection.channel()
        first.queue_declare("shared")
        got = [0, 0]
        for i, ch in enumerate((first, second)):
            ch.basic_qos(prefetch_count=1)

            def on_message(c: Any, method: Any, props: Any, body: bytes, i: int = i) -> None:
                got[i] += 1
                c.basic_ack(method.delivery_tag)

            ch.basic_consume("shared", on_message, consumer_tag="t")
        for _ in range(10):
            first.basic_publish("", "shared", b"x")
        deadline = time.monotonic() + 10
        while sum(got) < 10 and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        second.basic_cancel("t")
        connection.close()  # the other consumer with tag "t" goes with it
        return got

    got = await trio.to_thread.run_sync(work)
    assert sum(got) == 10 and min(got) >= 3  # round robin between the two
    await round_trip(address)


async def test_uncommitted_publishes_are_bounded_in_bytes(nursery: trio.Nursery) -> None:
    config = ServerConfig(port=0, amqp_port=0, max_uncommitted_bytes=1024 * 1024)
    address = await nursery.start(functools.partial(serve, config))
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Tx.Select())
    assert isinstance(await raw.method(), amqp.Tx.SelectOk)
    body = b"t" * 64 * 1024
    publish = b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp.Basic.Publish(exchange="", routing_key="q"),
            amqp_header.ContentHeader(0, len(body), amqp.Basic.Properties()),
            ContentBody(body),
        )
    )
    await raw.send_raw(publish * 17)
    close = await raw.method()
    assert isinstance(close, amqp.Channel.Close) and close.reply_code == 406
    assert "uncommitted" in close.reply_text and "1048576" in close.reply_text
    await raw.send(1, amqp.Channel.CloseOk())
    await raw.open_channel(2)  # the connection goes on
    await round_trip(address)


async def test_closed_channels_give_their_sessions_back(address: ServerAddress) -> None:
    async with mqroute.connect(address.url) as conn:
        before = (await conn.inspect("status"))["channels"]
    raw = await RawAmqp.connect(address)
    for n in range(1, 501):
        await raw.send(n, amqp.Channel.Open())
    for _ in range(500):
        assert isinstance(await raw.method(), amqp.Channel.OpenOk)
    for n in range(1, 501):
        await raw.send(n, amqp.Channel.Close(200, "bye", 0, 0))
    for _ in range(500):
        assert isinstance(await raw.method(), amqp.Channel.CloseOk)
    async with mqroute.connect(address.url) as conn:
        assert (await conn.inspect("status"))["channels"] == before  # each listing has one
    await raw.stream.aclose()


# --- time: slow frames, noisy clients ----------------------------------------------------------


async def test_a_frame_trickled_slowly_on_the_amqp_port_is_closed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    config = ServerConfig(port=0, amqp_port=0, heartbeat_ms=0)
    address = await nursery.start(functools.partial(serve, config))
    raw = await RawAmqp.connect(address)
    await raw.send_raw(b"\x01\x00\x01\x00\x00\x03\xe8")  # a method frame of 1000 bytes begins
    start = trio.current_time()

    async def trickle() -> None:
        for _ in range(100):
            await trio.sleep(4)
            await raw.send_raw(b"\x00")

    async with trio.open_nursery() as inner:
        inner.start_soon(trickle)
        methods = await raw.until_closed()
        inner.cancel_scope.cancel()
    close = methods[-1]
    assert isinstance(close, amqp.Connection.Close) and "too slowly" in close.reply_text
    assert 10 <= trio.current_time() - start < 20


async def test_an_amqp_client_silent_in_the_handshake_is_closed_at_its_deadline(
    autojump_clock: trio.testing.MockClock, address: ServerAddress
) -> None:
    raw = await RawAmqp.connect(address, login=False)  # the header, and start: then nothing
    start = trio.current_time()
    close = await raw.method()
    assert isinstance(close, amqp.Connection.Close) and close.reply_code == 501
    assert "handshake" in close.reply_text
    assert 10 <= trio.current_time() - start < 11


async def test_missed_heartbeats_close_an_amqp_connection(
    autojump_clock: trio.testing.MockClock, address: ServerAddress
) -> None:
    raw = await RawAmqp.connect(address, heartbeat=2)
    await raw.open_channel()
    start = trio.current_time()
    methods = await raw.until_closed()  # it never sends a heartbeat
    assert isinstance(methods[-1], amqp.Connection.Close) and "heartbeat" in methods[-1].reply_text
    assert 4 <= trio.current_time() - start < 6
    await round_trip(address)


async def test_amqp_connections_per_address_are_limited(nursery: trio.Nursery) -> None:
    config = ServerConfig(port=0, amqp_port=0, max_connections_per_host=2)
    address = await nursery.start(functools.partial(serve, config))
    first = await RawAmqp.connect(address)
    async with mqroute.connect(address.url):
        assert address.amqp_port is not None
        over = await trio.open_tcp_stream("127.0.0.1", address.amqp_port)
        with trio.fail_after(5):
            assert await over.receive_some(100) == b""  # closed at once, before any header
    await first.open_channel()  # the ones admitted go on


async def test_bad_amqp_connections_are_logged_at_a_bounded_rate(
    address: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mqroute"):
        for _ in range(50):
            raw = await RawAmqp.connect(address, login=False)
            await raw.send_raw(b"\x09\x00\x00\x00\x00\x00\x00\xce")  # no such frame type
            await raw.until_closed()
        await round_trip(address)
    noisy = [r for r in caplog.records if "frame error" in r.getMessage()]
    assert 1 <= len(noisy) <= 12


# --- flow control is per session ---------------------------------------------------------------


async def test_resuming_one_channel_leaves_another_channels_pause(nursery: trio.Nursery) -> None:
    from mqroute.core.flow import Pause
    from mqroute.server.amqp_wire import AmqpWire
    from mqroute.server.driver import Driver
    from mqroute.server.node import Node

    node = Node(config=ServerConfig(), clock=trio.current_time, definitions=Definitions.default())
    left, _ = trio.testing.memory_stream_pair()
    driver = Driver(node, left, "amqp-1", "127.0.0.1", AmqpWire)
    driver.set_blocked(1, Pause("queue a over its limit", credit=True))
    driver.set_blocked(2, Pause("queue b over its limit", credit=True))
    driver.set_blocked(2, None)
    assert driver.publishing_paused
    driver.set_blocked(1, None)
    assert not driver.publishing_paused


# --- the boundary: a failure anywhere in one connection ends only that connection ------------

FAULTS = [
    (port, module, cls, method)
    for port, module, cls in [
        ("native", "native_wire", "NativeWire"),
        ("amqp", "amqp_wire", "AmqpWire"),
    ]
    for method in ("handshake", "handle", "output", "release")
] + [
    (port, "driver", "Driver", method)
    for port in ("native", "amqp")
    for method in ("_receive_some", "_write", "attach", "wake", "_pending_output")
]


@pytest.mark.parametrize(("port", "module", "cls", "method"), FAULTS, ids=str)
async def test_a_fault_anywhere_in_a_connection_ends_only_that_connection(
    address: ServerAddress,
    monkeypatch: pytest.MonkeyPatch,
    port: str,
    module: str,
    cls: str,
    method: str,
) -> None:
    import importlib

    target = getattr(importlib.import_module(f"mqroute.server.{module}"), cls)
    original = getattr(target, method)
    armed = [True]

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        if armed[0]:
            armed[0] = False
            raise RuntimeError(f"injected fault in {cls}.{method}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, method, fail_once)

    async def victim() -> None:
        if port == "native":
            async with mqroute.connect(address.url) as conn:
                await conn.declare_queue("v")
                await conn.publish("", "v", b"x")
                async with conn.consume("v") as messages:
                    await (await messages.__anext__()).ack()
        else:
            raw = await RawAmqp.connect(address)
            await raw.open_channel()
            await raw.send(1, amqp.Queue.Declare(queue="v"))
            await raw.method()
            await raw.stream.aclose()

    with trio.fail_after(10):
        try:
            await victim()
        except (MQRouteError, AssertionError, trio.BrokenResourceError):
            pass  # the faulty connection ended: that is all it may do
        await trio.testing.wait_all_tasks_blocked()  # the server saw the victim go
        assert not armed[0], "the fault was not reached"
        await round_trip(address)


# --- values the broker reads later, sent through the AMQP port ---------------------------------

POISON: list[Any] = [1, "text", {"not": "a list"}, [1, "x", None], [{"count": "many"}], -5]


@pytest.mark.parametrize("value", POISON, ids=repr)
async def test_poison_x_death_from_pika_is_dead_lettered_with_a_fresh_history(
    address: ServerAddress, value: Any
) -> None:
    def work() -> tuple[Any, Any]:
        connection = pika.BlockingConnection(pika.URLParameters(address.amqp_url))
        ch = connection.channel()
        ch.exchange_declare("dlx", "fanout")
        ch.queue_declare("dead")
        ch.queue_bind("dead", "dlx")
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
        headers = {"x-death": value}
        ch.basic_publish("", "work", b"poison", pika.BasicProperties(headers=headers))
        method, _, _ = ch.basic_get("work")
        ch.basic_nack(method.delivery_tag, requeue=False)
        _, props, _ = ch.basic_get("dead", auto_ack=True)
        connection.close()
        return props.headers["x-death"][0]["reason"], props.headers["x-death"][0]["queue"]

    assert await trio.to_thread.run_sync(work) == ("rejected", "work")
    await round_trip(address)


async def test_a_consume_with_arguments_past_the_nesting_limit_closes_only_that_connection(
    address: ServerAddress,
) -> None:
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Queue.Declare(queue="q"))
    assert isinstance(await raw.method(), amqp.Queue.DeclareOk)
    consume = amqp_frame.marshal(amqp.Basic.Consume(queue="q", consumer_tag="c"), 1)
    # Its arguments table is the frame's last field: the empty one becomes a deep one.
    payload = consume[7:-5] + table_bytes(20)
    await raw.send_raw(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    close = await raw.method()
    assert isinstance(close, amqp.Connection.Close) and close.reply_code == 501
    assert "nested deeper than 16" in close.reply_text
    await round_trip(address)


async def test_a_closed_amqp_connection_is_freed_without_a_full_collection(
    address: ServerAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    drivers = DriverRecorder(monkeypatch, "amqp-")
    gc.collect()
    gc.disable()
    try:
        await trio.to_thread.run_sync(publish_and_get, address)  # a whole life, with pika
        partial = await RawAmqp.connect(address)  # leaves in the middle of a frame
        await partial.send_raw(b"\x01\x00\x01\x00\x00\x03\xe8" + b"\x00" * 100)
        await partial.stream.aclose()
        raw = await RawAmqp.connect(address, login=False)  # never logs in
        await raw.stream.aclose()
        await drivers.until_ended(3)
        assert len(drivers.made) == 3 and drivers.alive() == []
    finally:
        gc.enable()


def publish_and_get(address: ServerAddress) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(address.amqp_url))
    ch = connection.channel()
    ch.queue_declare("life")
    ch.basic_publish("", "life", b"x")
    method, _, _ = ch.basic_get("life")
    ch.basic_ack(method.delivery_tag)
    connection.close()


# --- counts ------------------------------------------------------------------------------------


async def test_a_channel_past_channel_max_closes_the_connection(address: ServerAddress) -> None:
    raw = await RawAmqp.connect(address)
    await raw.send(2048, amqp.Channel.Open())
    close = await raw.method()
    assert isinstance(close, amqp.Connection.Close) and close.reply_code == 530
    assert "channel_max is 2047" in close.reply_text
    await round_trip(address)


async def test_consumers_per_channel_are_limited(nursery: trio.Nursery) -> None:
    from mqroute.core.topology import Limits

    config = ServerConfig(port=0, amqp_port=0, limits=Limits(consumers_per_session=3))
    address = await nursery.start(functools.partial(serve, config))
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Queue.Declare(queue="q"))
    await raw.method()
    for n in range(3):
        await raw.send(1, amqp.Basic.Consume(queue="q", consumer_tag=f"c{n}"))
        assert isinstance(await raw.method(), amqp.Basic.ConsumeOk)
    await raw.send(1, amqp.Basic.Consume(queue="q", consumer_tag="c3"))
    close = await raw.method()
    assert isinstance(close, amqp.Channel.Close) and close.reply_code == 406
    assert "limit of 3 consumers per session" in close.reply_text
    await raw.send(1, amqp.Channel.CloseOk())
    await raw.open_channel(2)  # another channel has its own
    await raw.send(2, amqp.Basic.Consume(queue="q", consumer_tag="c0"))
    assert isinstance(await raw.method(), amqp.Basic.ConsumeOk)


def test_decoding_a_frame_holds_no_more_memory_than_a_few_frames() -> None:
    """pamqp kept a slice of the rest of the frame alive at every level of nesting (90 MB
    for one frame of nested arrays); ours reads at offsets, within the nesting limit."""
    import tracemalloc

    from mqroute.protocol.amqp_fields import decode_table

    wide = b"\x01kA" + struct.pack(">I", 0)  # an empty array per entry
    tables = [
        table_bytes(16, kind="A"),  # at the limit, nested
        struct.pack(">I", len(wide) * 8000) + wide * 8000,  # 8,000 entries: 56 KiB
    ]
    for data in tables:
        tracemalloc.start()
        decode_table(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * 1024 * 1024  # the values it returns; no copies of the frame


def test_a_frame_of_more_table_values_than_the_limit_is_a_frame_error() -> None:
    from mqroute.protocol.amqp_fields import MAX_FIELD_VALUES, FieldError, decode_table

    def table(count: int) -> bytes:
        entries = b"\x01kV" * count
        return struct.pack(">I", len(entries)) + entries

    assert len(decode_table(table(MAX_FIELD_VALUES))) == 1  # one key, written again and again
    with pytest.raises(FieldError, match=f"more than {MAX_FIELD_VALUES} values"):
        decode_table(table(MAX_FIELD_VALUES + 1))
