"""Hostile and careless clients against the real server: each gets a clear answer, and nothing
else is harmed."""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import stat
import struct
import uuid
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

import mqroute
from mqroute.protocol import Close, Heartbeat, Publish
from mqroute.server import ServerAddress

from .helpers import DriverRecorder, RawClient, consume_frame
from .test_durability import running


def raw_frame(items: list[Any], trailing: bytes = b"") -> bytes:
    payload = cbor2.dumps(items) + trailing
    return struct.pack(">I", len(payload)) + payload


async def test_a_missed_heartbeat_closes_with_a_close_frame(
    autojump_clock: trio.testing.MockClock, server: ServerAddress
) -> None:
    silent = await RawClient.connect(server, heartbeat_ms=1000)
    events = await silent.until_closed()
    close = events[-1]
    assert isinstance(close, Close) and "heartbeat" in close.text


async def test_an_internal_error_closes_with_a_close_frame(
    server: ServerAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mqroute.server.native import NativeFrontEnd

    def broken(self: object, event: object, now: float) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(NativeFrontEnd, "publish", broken)
    raw = await RawClient.connect(server)
    await raw.stream.send_all(raw_frame([Publish.frame_type, "", "q", b"x", {}, False]))
    events = await raw.until_closed()
    assert isinstance(events[-1], Close) and events[-1].code == "INTERNAL_ERROR"


async def test_bytes_after_the_cbor_item_are_a_frame_error(server: ServerAddress) -> None:
    raw = await RawClient.connect(server)
    await raw.stream.send_all(raw_frame([Heartbeat.frame_type], trailing=b"\x00junk"))
    events = await raw.until_closed()
    assert isinstance(events[-1], Close) and "after the frame's CBOR item" in events[-1].text


async def test_a_client_close_text_cannot_forge_log_lines(
    server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await RawClient.connect(server)
    with caplog.at_level(logging.INFO, logger="mqroute"):
        await raw.send(Close(code="X", text="bye\n2026-01-01 ERROR forged line"))
        await raw.until_closed()
    for record in caplog.records:
        assert "\n" not in record.getMessage()


async def test_a_client_name_cannot_forge_log_lines(
    server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mqroute"):
        async with mqroute.connect(server.url, client_name="app\nERROR forged"):
            pass
    for record in caplog.records:
        assert "\n" not in record.getMessage()


async def test_bad_connections_are_logged_at_a_bounded_rate(
    server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mqroute"):
        for _ in range(50):
            stream = await trio.open_tcp_stream(server.host, server.port)
            await stream.send_all(b"\x00\x00\x00\x02\xff\xff")  # undecodable, before any Hello
            while await stream.receive_some(4096):
                pass
            await stream.aclose()
        async with mqroute.connect(server.url) as conn:  # a round trip: all 50 were handled
            await conn.declare_queue("q")
    noisy = [r for r in caplog.records if "protocol error" in r.getMessage()]
    assert 1 <= len(noisy) <= 12


async def test_the_data_directory_and_database_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for file in data.iterdir():
        assert stat.S_IMODE(os.stat(file).st_mode) == 0o600, file.name


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [
        uuid.uuid4(),
        decimal.Decimal("1.5"),
        datetime.datetime.now(datetime.UTC),
        {1, 2},
        2**64,
        -(2**64) - 1,
        Opaque(),
        {"nested": {"deeper": uuid.uuid4()}},
        [1, [2, frozenset()]],
    ],
    ids=lambda v: type(v).__name__,
)
async def test_header_values_the_protocol_cannot_carry_are_refused_in_the_sdk(
    conn: mqroute.Connection, value: Any
) -> None:
    await conn.declare_queue("q")
    with pytest.raises((TypeError, ValueError), match="header 'h'"):
        await conn.publish("", "q", b"x", headers={"h": value})
    with pytest.raises((TypeError, ValueError), match="argument 'x-note'"):
        await conn.declare_queue("other", arguments={"x-note": value})
    await conn.publish("", "q", b"still open", headers={"h": [1, "two", 3.0, None, True, b"6"]})
    assert (await conn.get("q", auto_ack=True)) is not None


async def test_a_consumer_frame_with_a_bad_table_closes_only_that_connection(
    server: ServerAddress,
) -> None:
    async with mqroute.connect(server.url) as conn:
        await conn.declare_queue("q")
        raw = await RawClient.connect(server)
        consume = consume_frame("q", "t")
        data = bytearray(raw.proto.send(consume))
        payload = cbor2.loads(bytes(data[4:]))
        payload[-1] = {"x": cbor2.CBORTag(2, b"\x01" * 9)}  # a bignum: not a table value
        await raw.stream.send_all(raw_frame(payload))
        events = await raw.until_closed()
        assert isinstance(events[-1], Close)
        await conn.declare_queue("q", passive=True)


async def test_a_closed_connection_is_freed_without_a_full_collection(
    server: ServerAddress, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    drivers = DriverRecorder(monkeypatch, "conn-")
    gc.collect()
    gc.disable()
    try:
        async with mqroute.connect(server.url) as conn:  # a whole life: consume, ack, close
            await conn.declare_queue("q")
            await conn.publish("", "q", b"x")
            async with conn.consume("q", prefetch=1) as messages:
                await (await messages.__anext__()).ack()
        partial = await RawClient.connect(server)  # leaves in the middle of a frame
        await partial.stream.send_all(struct.pack(">I", 60_000) + b"\x00" * 1000)
        await partial.stream.aclose()
        silent = await trio.open_tcp_stream(server.host, server.port)  # never says hello
        await silent.send_all(b"\x00\x00")
        await silent.aclose()
        await drivers.until_ended(3)
        assert len(drivers.made) == 3 and drivers.alive() == []
    finally:
        gc.enable()


async def small_limit_server(nursery: trio.Nursery, limit: int) -> ServerAddress:
    from mqroute.server import ServerConfig, serve

    return await nursery.start(  # type: ignore[no-any-return]
        lambda task_status: serve(
            ServerConfig(port=0, max_message_size=limit, max_frame_size=4096),
            task_status=task_status,
        )
    )


@pytest.mark.parametrize("extra", [1, 100_000, 128 * 1024 + 1, 2_000_000])
async def test_a_body_over_the_maximum_is_nacked_at_every_size(
    nursery: trio.Nursery, extra: int
) -> None:
    from mqroute.model import Properties
    from mqroute.protocol import Confirm

    limit = 64 * 1024
    address = await small_limit_server(nursery, limit)
    raw = await RawClient.connect(address)
    publish = Publish(
        exchange="",
        routing_key="q",
        body=b"x" * (limit + extra),
        properties=Properties(),
        mandatory=False,
    )
    await raw.send(publish)
    await raw.send(Heartbeat())
    confirm = await raw.next()
    assert isinstance(confirm, Confirm) and confirm.seq == 1 and not confirm.ok
    assert confirm.error_code == "PRECONDITION_FAILED"
    assert f"maximum of {limit}" in (confirm.error_text or "")
    small = attrs_evolve(publish, body=b"fits")
    await raw.send(small)  # the connection goes on, numbering in step
    confirm = await raw.next()
    assert isinstance(confirm, Confirm) and confirm.seq == 2 and confirm.ok  # unroutable: ok


def attrs_evolve(frame: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(frame, **changes)


async def test_the_sdk_refuses_a_body_over_the_maximum_without_sending_it(
    nursery: trio.Nursery,
) -> None:
    limit = 64 * 1024
    address = await small_limit_server(nursery, limit)
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("q")
        with pytest.raises(mqroute.PreconditionFailed, match=f"exceeds the maximum of {limit}"):
            await conn.publish("", "q", b"x" * (limit + 1))
        await conn.publish("", "q", b"x" * limit)  # sent in 4 KiB fragments
        msg = await conn.get("q", auto_ack=True)
        assert msg is not None and len(msg.body) == limit


async def test_an_unknown_client_cannot_make_the_server_buffer_more_than_4_kib(
    server: ServerAddress,
) -> None:
    stream = await trio.open_tcp_stream(server.host, server.port)
    await stream.send_all(struct.pack(">I", 16 * 1024 * 1024) + b"\x00" * 4096)
    raw = RawClient(stream)
    events = await raw.until_closed()
    assert isinstance(events[-1], Close) and "maximum frame size of 4096" in events[-1].text


async def test_a_client_resetting_its_socket_mid_write_is_a_lost_connection_not_an_error(
    server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    async with mqroute.connect(server.url) as conn:
        await conn.declare_queue("q")
        async with conn.publisher() as pub:
            for _ in range(200):
                await pub.publish("", "q", b"x" * 64 * 1024)
        with caplog.at_level(logging.INFO, logger="mqroute"):
            for i in range(5):
                raw = await RawClient.connect(server)
                await raw.send(consume_frame("q", f"t{i}"))
                await raw.stream.receive_some(1)  # deliveries are being written
                raw.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.stream.socket.close()  # a reset, not a goodbye
            await conn.declare_queue("q", passive=True)
            await trio.testing.wait_all_tasks_blocked()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("connection lost" in r.getMessage() for r in caplog.records)


async def test_connection_lines_are_logged_at_a_bounded_rate(
    server: ServerAddress, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mqroute"):
        for _ in range(150):
            async with mqroute.connect(server.url, heartbeat=0):
                pass
    lines = [r.getMessage() for r in caplog.records]
    assert sum(" opened from " in line for line in lines) <= 100
    assert sum(" closed (" in line for line in lines) <= 100
