"""Hostile and careless AMQP clients against the real server: each ends its own connection,
and the broker, every other connection and every confirmed message carry on."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pika
import pytest
import trio
from pamqp import commands as amqp

import mqroute
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.users import Definitions

from .amqp_raw import RawAmqp, start_ok_bytes, table_bytes


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


WORKER = textwrap.dedent(
    """
    import sys, pika
    connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
    ch = connection.channel()
    ch.basic_qos(prefetch_count=50)
    def on_message(ch, method, properties, body):
        if method.delivery_tag == 1:
            print("consuming", flush=True)
        if method.delivery_tag % 2:
            ch.basic_ack(method.delivery_tag)
    ch.basic_consume("work", on_message)
    ch.start_consuming()
    """
)


async def test_a_pika_worker_killed_with_sigkill_ends_only_its_connection(
    address: ServerAddress,
) -> None:
    await fill(address, "work", 2000)
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-c", WORKER, address.amqp_url], stdout=subprocess.PIPE
    )
    assert worker.stdout is not None
    with trio.fail_after(20):
        assert b"consuming" in await worker.stdout.receive_some(100)
    os.kill(worker.pid, signal.SIGKILL)
    await worker.wait()
    await round_trip(address)
    async with mqroute.connect(address.url) as conn:
        info = await conn.declare_queue("work", passive=True)
        assert 0 < info.message_count < 2000  # what it acked is gone; the rest is ready


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
