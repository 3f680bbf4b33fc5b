"""A client that dies in any phase of its life, on either port, ends only its own connection:
the broker serves, another client's round trip works, and what the dead client had unacked is
ready again, marked redelivered. Resets are SO_LINGER 0 closes (a kernel's reset); deaths are
real client processes killed with SIGKILL."""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

import mqroute
from mqroute.model import Properties
from mqroute.protocol import Hello, Publish
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.config import TlsConfig
from mqroute.server.users import Definitions

from .amqp_raw import PIKA_WORKER, RawAmqp
from .helpers import RawClient, consume_frame
from .test_amqp_hostile import fill, ready_and_redelivered, round_trip


@pytest.fixture
async def address(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[ServerAddress]:
    """A broker with a data directory: persistent publishes wait for the disk."""
    config = ServerConfig(
        port=0,
        amqp_port=0,
        data_dir=tmp_path / "data",
        definitions=Definitions.default(fast=True),
        login_failure_delay=0,
    )
    yield await nursery.start(functools.partial(serve, config))


def reset(stream: trio.SocketStream) -> None:
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def amqp_publishes(count: int, *, persistent: bool = False, size: int = 1024) -> bytes:
    props = amqp.Basic.Properties(delivery_mode=2 if persistent else None)
    one = b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp.Basic.Publish(exchange="", routing_key="work"),
            amqp_header.ContentHeader(0, size, props),
            ContentBody(b"p" * size),
        )
    )
    return one * count


def native_publishes(raw: RawClient, count: int, *, persistent: bool = False) -> bytes:
    props = Properties(persistent=persistent)
    publish = Publish(
        exchange="", routing_key="work", body=b"p" * 1024, properties=props, mandatory=False
    )
    return b"".join(raw.proto.send(publish) for _ in range(count))


async def die_amqp(address: ServerAddress, phase: str) -> int:
    """Drive an AMQP client to ``phase`` and reset it; how many deliveries it held."""
    if phase == "handshake":
        raw = await RawAmqp.connect(address, login=False)
        await raw.send(0, amqp.Connection.StartOk({"product": "dying"}, "PLAIN", "\0guest\0guest"))
        reset(raw.stream)
        return 0
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    held = 0
    if phase == "publishing":
        await raw.send_raw(amqp_publishes(300))
    elif phase == "confirms":
        await raw.send(1, amqp.Confirm.Select())
        assert isinstance(await raw.method(), amqp.Confirm.SelectOk)
        await raw.send_raw(amqp_publishes(200, persistent=True))
    elif phase == "consuming":
        await raw.send(1, amqp.Basic.Qos(prefetch_count=20), amqp.Basic.Consume(queue="work"))
        assert isinstance(await raw.method(), amqp.Basic.QosOk)
        assert isinstance(await raw.method(), amqp.Basic.ConsumeOk)
        assert isinstance(await raw.method(), amqp.Basic.Deliver)
        held = 20
    elif phase == "transaction":
        await raw.send(1, amqp.Basic.Qos(prefetch_count=20), amqp.Basic.Consume(queue="work"))
        await raw.send(1, amqp.Tx.Select())
        await raw.send_raw(amqp_publishes(50))
        await raw.send(1, amqp.Basic.Ack(delivery_tag=10, multiple=True))  # held, uncommitted
        with trio.fail_after(5):  # deliveries come between the answers
            while not isinstance(await raw.method(), amqp.Tx.SelectOk):
                pass
        held = 20
    reset(raw.stream)
    return held


async def die_native(address: ServerAddress, phase: str) -> int:
    """Drive a native client to ``phase`` and reset it; how many deliveries it held."""
    if phase == "handshake":
        raw = await RawClient.connect(address, handshake=False)
        hello = raw.proto.send(Hello(versions=[2], client="dying", heartbeat_ms=0))
        await raw.stream.send_all(hello[: len(hello) // 2])
        reset(raw.stream)
        return 0
    raw = await RawClient.connect(address)
    held = 0
    if phase in ("publishing", "confirms"):
        await raw.stream.send_all(native_publishes(raw, 200, persistent=phase == "confirms"))
    elif phase == "consuming":
        await raw.send(consume_frame("work", "w", prefetch=20))
        await raw.next()  # its answer, or a first delivery: deliveries are on their way
        held = 20
    reset(raw.stream)
    return held


PHASES = [
    ("native", "handshake"),
    ("native", "publishing"),
    ("native", "confirms"),
    ("native", "consuming"),
    ("amqp", "handshake"),
    ("amqp", "publishing"),
    ("amqp", "confirms"),
    ("amqp", "consuming"),
    ("amqp", "transaction"),  # the native protocol has no transactions
]


@pytest.mark.parametrize(("port", "phase"), PHASES, ids=lambda v: str(v))
async def test_a_reset_in_any_phase_ends_only_that_client(
    address: ServerAddress, port: str, phase: str
) -> None:
    await fill(address, "work", 100)
    die = die_native if port == "native" else die_amqp
    held = 0
    for _ in range(3):
        held = await die(address, phase)
        await round_trip(address)
    await trio.testing.wait_all_tasks_blocked()
    async with mqroute.connect(address.url) as conn:
        ready = (await conn.declare_queue("work", passive=True)).message_count
    assert ready >= 100  # what it consumed is back; what it published may be there too
    if held:
        assert await ready_and_redelivered(address, "work", ready) >= held


@pytest.mark.parametrize("port", ["native", "amqp"])
async def test_a_reset_in_the_tls_handshake_ends_only_that_client(
    nursery: trio.Nursery, tmp_path: Path, port: str
) -> None:
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    tls = TlsConfig(cert=tmp_path / "server.pem", key=tmp_path / "server.pem")
    config = ServerConfig(port=0, amqp_port=0, tls=tls)
    address = await nursery.start(functools.partial(serve, config))
    target = address.port if port == "native" else address.amqp_port
    assert target is not None
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", target)
        await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a hello begins
        reset(stream)
    import ssl

    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with mqroute.connect(f"mqroutes://127.0.0.1:{address.port}", ssl_context=context) as c:
        await c.declare_queue("after-tls-resets")


SDK_WORKER = textwrap.dedent(
    """
    import sys, trio, mqroute
    async def main():
        async with mqroute.connect(sys.argv[1]) as conn:
            async with conn.consume("work", prefetch=50) as messages:
                async for message in messages:
                    print("consuming", flush=True)
                    await trio.sleep_forever()
    trio.run(main)
    """
)


@pytest.mark.parametrize("port", ["native", "amqp"])
async def test_a_worker_process_killed_with_sigkill_gives_back_its_deliveries(
    address: ServerAddress, port: str
) -> None:
    await fill(address, "work", 500)
    if port == "native":
        command = [sys.executable, "-c", SDK_WORKER, address.url]
    else:
        command = [sys.executable, "-c", PIKA_WORKER, address.amqp_url, "work", "hold"]
    worker = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert worker.stdout is not None
    with trio.fail_after(20):
        assert b"consuming" in await worker.stdout.receive_some(100)
    os.kill(worker.pid, signal.SIGKILL)
    await worker.wait()
    await worker.stdout.aclose()
    await trio.testing.wait_all_tasks_blocked()  # the broker has read the dead socket's end
    await round_trip(address)
    assert await ready_and_redelivered(address, "work", 500) == 50
