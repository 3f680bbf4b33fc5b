"""The AMQP 0-9-1 listener with pika, the client most Python teams already have, on a real
server; and the framing alone, fed split at every byte and fed garbage."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import pika
import pika.exceptions
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as amqp_commands
from pamqp import frame as amqp_frame

import mqroute
from mqroute.core.access import Permissions
from mqroute.errors import ServerError
from mqroute.protocol.amqp import (
    HEADER_RECEIVED,
    NEED_DATA,
    PROTOCOL_HEADER,
    AmqpFrames,
    BadHeader,
    FrameError,
)
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.users import Definitions

T = TypeVar("T")


@pytest.fixture
async def address(nursery: trio.Nursery) -> AsyncIterator[ServerAddress]:
    definitions = Definitions.default(fast=True)
    definitions.add_user("narrow", "pw", fast=True)
    definitions.set_permissions("narrow", "/", Permissions("^$", "^$", "^$"))
    config = ServerConfig(port=0, amqp_port=0, definitions=definitions, login_failure_delay=0)
    yield await nursery.start(functools.partial(serve, config))


async def in_thread(fn: Callable[[], T]) -> T:
    """pika's blocking client, off the event loop the broker runs on."""
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(fn)


def channel(address: ServerAddress, url: str | None = None) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(url or address.amqp_url))
    return connection, connection.channel()


async def test_pika_publishes_consumes_and_acks(address: ServerAddress) -> None:
    def work() -> list[bytes]:
        connection, ch = channel(address)
        ch.queue_declare("work", durable=True)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", "work", f"job {i}".encode(), pika.BasicProperties(delivery_mode=2))
        got = []
        for method, _, body in ch.consume("work", inactivity_timeout=2):
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 3:
                break
        ch.cancel()
        connection.close()
        return got

    assert await in_thread(work) == [b"job 0", b"job 1", b"job 2"]


async def test_a_message_crosses_from_pika_to_the_sdk_intact(address: ServerAddress) -> None:
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("cross")

        def publish() -> None:
            connection, ch = channel(address)
            props = pika.BasicProperties(
                content_type="application/json",
                headers={"tenant": "acme", "attempt": 2, "flags": [True, None], "n": {"x": -1}},
                correlation_id="c-1",
                message_id="m-1",
                priority=3,
                delivery_mode=2,
            )
            ch.basic_publish("", "cross", b'{"order": 1}', props)
            connection.close()

        await in_thread(publish)
        msg = await conn.get("cross")
        assert msg is not None and msg.body == b'{"order": 1}'
        p = msg.properties
        assert (p.content_type, p.correlation_id, p.message_id, p.priority, p.persistent) == (
            "application/json",
            "c-1",
            "m-1",
            3,
            True,
        )
        assert p.headers == {"tenant": "acme", "attempt": 2, "flags": [True, None], "n": {"x": -1}}


async def test_a_message_crosses_from_the_sdk_to_pika_intact(address: ServerAddress) -> None:
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("back")
        await conn.publish("", "back", b"from sdk", headers={"k": "v"}, reply_to="r", timestamp=7)

    def get() -> Any:
        connection, ch = channel(address)
        _, props, body = ch.basic_get("back", auto_ack=True)
        connection.close()
        return props, body

    props, body = await in_thread(get)
    assert body == b"from sdk" and props.headers == {"k": "v"} and props.reply_to == "r"
    assert props.timestamp == 7


async def test_errors_close_the_channel_with_rabbitmqs_codes(address: ServerAddress) -> None:
    def work() -> list[tuple[int, str]]:
        connection, ch = channel(address)
        seen = []
        for attempt in (
            lambda c: c.queue_declare("missing", passive=True),
            lambda c: c.basic_publish("no-such-exchange", "k", b"x"),
            lambda c: (c.queue_declare("q1"), c.queue_declare("q1", durable=True)),
        ):
            ch = connection.channel()
            ch.confirm_delivery()
            try:
                attempt(ch)
            except pika.exceptions.ChannelClosedByBroker as exc:
                seen.append((exc.reply_code, exc.reply_text.split(" - ")[0]))
        connection.close()
        return seen

    assert await in_thread(work) == [
        (404, "NOT_FOUND"),
        (404, "NOT_FOUND"),
        (406, "PRECONDITION_FAILED"),
    ]


async def test_a_mandatory_publish_nobody_takes_comes_back(address: ServerAddress) -> None:
    def work() -> type[Exception] | None:
        connection, ch = channel(address)
        ch.confirm_delivery()
        try:
            ch.basic_publish("", "nobody-here", b"x", mandatory=True)
        except pika.exceptions.UnroutableError as exc:
            return type(exc)
        finally:
            connection.close()
        return None

    assert await in_thread(work) is pika.exceptions.UnroutableError


async def test_basic_qos_bounds_the_unacked_deliveries(address: ServerAddress) -> None:
    def work() -> int:
        connection, ch = channel(address)
        ch.queue_declare("qos")
        for i in range(10):
            ch.basic_publish("", "qos", str(i).encode())
        ch.basic_qos(prefetch_count=2)
        held = []
        ch.basic_consume("qos", lambda c, m, p, b: held.append(m.delivery_tag))
        ch.queue_declare("qos", passive=True)  # a round trip: what was dispatched came first
        connection.process_data_events(time_limit=0)  # pika hands those to the callback
        connection.close()
        return len(held)

    assert await in_thread(work) == 2


async def test_basic_qos_global_is_shared_by_the_channels_consumers(
    address: ServerAddress,
) -> None:
    """RabbitMQ's meaning of global=true: one limit for all the channel's consumers."""

    def work() -> tuple[int, int]:
        connection, ch = channel(address)
        held: list[int] = []
        for name in ("g1", "g2"):
            ch.queue_declare(name)
            for i in range(5):
                ch.basic_publish("", name, str(i).encode())
        ch.basic_qos(prefetch_count=3, global_qos=True)
        for name in ("g1", "g2"):
            ch.basic_consume(name, lambda c, m, p, b: held.append(m.delivery_tag))
        ch.queue_declare("g1", passive=True)  # a round trip
        connection.process_data_events(time_limit=0)
        first = len(held)
        ch.basic_ack(held[0])
        ch.queue_declare("g1", passive=True)
        connection.process_data_events(time_limit=0)
        connection.close()
        return first, len(held)

    assert await in_thread(work) == (3, 4)


async def test_channel_flow_off_is_not_implemented_as_in_rabbitmq(
    address: ServerAddress,
) -> None:
    def work() -> tuple[int, str]:
        _, ch = channel(address)
        assert ch.flow(True) is True
        try:
            ch.flow(False)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        raise AssertionError("channel.flow(active=false) was accepted")

    assert await in_thread(work) == (540, "NOT_IMPLEMENTED - active=false")


async def test_a_prefetch_size_is_not_implemented_as_in_rabbitmq(address: ServerAddress) -> None:
    def work() -> tuple[int, str]:
        _, ch = channel(address)
        try:
            ch.basic_qos(prefetch_size=1024)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        raise AssertionError("a prefetch_size was accepted")

    assert await in_thread(work) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1024)")


@contextlib.asynccontextmanager
async def server_with(**vhost_options: Any) -> AsyncIterator[ServerAddress]:
    from mqroute.core.vhost import Vhost

    async with trio.open_nursery() as nursery:
        config = ServerConfig(port=0, amqp_port=0)
        yield await nursery.start(functools.partial(serve, config, broker=Vhost(**vhost_options)))
        nursery.cancel_scope.cancel()


def pump(*connections: Any, until: Callable[[], bool]) -> bool:
    """Let pika's blocking connections take what the broker sent, until ``until()``."""
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        for connection in connections:
            connection.process_data_events(time_limit=0.02)
    return until()


def acking_consumer(ch: Any, queue: str, prefetch: int) -> list[int]:
    """Declare ``queue`` and consume it on ``ch``, acking each delivery; the tags seen."""
    ch.queue_declare(queue)
    ch.basic_qos(prefetch_count=prefetch)
    taken: list[int] = []

    def on_message(c: Any, method: Any, properties: Any, body: bytes) -> None:
        taken.append(method.delivery_tag)
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message)
    return taken


async def test_a_connection_that_publishes_and_consumes_is_not_stalled_by_credit(
    nursery: trio.Nursery,
) -> None:
    """One connection publishes to a queue it also consumes from, faster than it acks. The
    queue passes its credit limit, but the broker goes on reading the connection: the acks
    behind the publishes are what drain the queue (stopping there would wait forever)."""
    config = ServerConfig(port=0, amqp_port=0, queue_flow_limit=16 * 1024)
    address = await nursery.start(functools.partial(serve, config))
    count = 200

    def work() -> int:
        connection, publisher = channel(address)
        taken = acking_consumer(connection.channel(), "both", prefetch=5)
        for _ in range(count):
            publisher.basic_publish("", "both", b"x" * 1024)
        done = pump(connection, until=lambda: len(taken) == count)
        if done:  # else a close would wait behind the unread publishes
            connection.close()
        return len(taken)

    assert await in_thread(work) == count


async def test_the_memory_alarm_is_told_with_connection_blocked_and_unblocked() -> None:
    from mqroute.core.flow import ENTRY_OVERHEAD

    async with server_with(memory_limit=50 * (1024 + ENTRY_OVERHEAD)) as address:

        def work() -> tuple[list[str], int]:
            told: list[str] = []
            producer, pub = channel(address)
            producer.add_on_connection_blocked_callback(
                lambda _, frame: told.append(f"blocked: {frame.method.reason}")
            )
            producer.add_on_connection_unblocked_callback(lambda *_: told.append("unblocked"))
            pub.queue_declare("heavy")
            for _ in range(200):
                pub.basic_publish("", "heavy", b"x" * 1024)
            assert pump(producer, until=lambda: bool(told))
            consumer, sub = channel(address)
            drained = 0
            while drained < 200 or told[-1] != "unblocked":
                method, _, _ = sub.basic_get("heavy", auto_ack=True)
                if method is None:
                    if not pump(producer, consumer, until=lambda: told[-1] == "unblocked"):
                        break
                    continue
                drained += 1
            producer.close()
            consumer.close()
            return told, drained

        told, drained = await in_thread(work)
    # Blocked and unblocked by turns (reading resumes, the next publishes raise it again),
    # each block naming the alarm; the last word is unblocked.
    assert all("memory alarm" in t for t in told[0::2]) and set(told[1::2]) == {"unblocked"}
    assert len(told) % 2 == 0
    assert drained == 200  # the publishes not read while blocked were taken after


async def test_a_queue_over_its_credit_limit_pauses_its_publisher_without_a_word() -> None:
    """RabbitMQ's silent flow state: no connection.blocked, and nothing lost."""
    async with server_with(queue_flow_limit=8 * 1024) as address:

        def work() -> tuple[list[str], int]:
            told: list[str] = []
            producer, pub = channel(address)
            producer.add_on_connection_blocked_callback(lambda *_: told.append("blocked"))
            consumer, sub = channel(address)
            taken = acking_consumer(sub, "paced", prefetch=5)
            for _ in range(100):
                pub.basic_publish("", "paced", b"x" * 1024)
            pump(producer, consumer, until=lambda: len(taken) == 100)
            producer.close()
            consumer.close()
            return told, len(taken)

        assert await in_thread(work) == ([], 100)


async def test_the_broker_cancels_consumers_of_a_deleted_queue(address: ServerAddress) -> None:
    def work() -> bool:
        connection, ch = channel(address)
        ch.queue_declare("doomed")
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
        ch.basic_consume("doomed", lambda *a: None)
        other = connection.channel()
        other.queue_delete("doomed")
        connection.process_data_events(time_limit=0.5)
        connection.close()
        return bool(cancelled)

    assert await in_thread(work)


async def test_a_wrong_password_is_an_authentication_error(address: ServerAddress) -> None:
    url = address.amqp_url.replace("guest:guest", "guest:wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError, match="ACCESS_REFUSED"):
        await in_thread(lambda: pika.BlockingConnection(pika.URLParameters(url)))


async def test_permissions_hold_over_amqp(address: ServerAddress) -> None:
    url = address.amqp_url.replace("guest:guest", "narrow:pw")

    def work() -> tuple[int, str]:
        connection, ch = channel(address, url)
        try:
            ch.queue_declare("not-mine")
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        finally:
            connection.close()
        return 0, ""

    code, text = await in_thread(work)
    assert code == 403
    assert text == (
        "ACCESS_REFUSED - access to queue 'not-mine' in vhost '/' refused for user 'narrow': "
        "configure permission needed"
    )


async def raw_exchange(address: ServerAddress, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", address.amqp_port or 0)
    await stream.send_all(data)
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def test_a_client_that_speaks_another_protocol_gets_amqps_header(
    address: ServerAddress,
) -> None:
    assert await raw_exchange(address, b"GET / HTTP/1.1\r\n\r\n") == PROTOCOL_HEADER


async def test_a_frame_over_frame_max_is_a_frame_error(address: ServerAddress) -> None:
    big = struct.pack(">BHI", 1, 0, 1 << 20) + b"\x00" * 16  # far over the 4096 of start
    received = await raw_exchange(address, PROTOCOL_HEADER + big)
    frames = AmqpFrames()
    frames.receive_data(PROTOCOL_HEADER + received)
    frames.frame_max = 1 << 20
    assert frames.next_frame() == HEADER_RECEIVED
    _, start = frames.next_frame()
    _, close = frames.next_frame()
    assert isinstance(start, amqp_commands.Connection.Start)
    assert isinstance(close, amqp_commands.Connection.Close) and close.reply_code == 501


async def test_a_busy_amqp_port_is_a_start_up_error_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match="--amqp-port, or turn it off with --no-amqp"):
            await serve(ServerConfig(port=0, amqp_port=port))


def test_the_embedded_broker_gives_an_amqp_url() -> None:
    from mqroute.testing import running_broker

    with running_broker() as url:
        connection = pika.BlockingConnection(pika.URLParameters(url.amqp_url))
        connection.channel().queue_declare("from-a-test")
        connection.close()


# --- the framing alone ---------------------------------------------------------------------------


def method_frames() -> bytes:
    """Methods, a publish with its content (read whole when it is all there), and one with
    an empty body (no body frame at all)."""
    from pamqp import header as amqp_header
    from pamqp.body import ContentBody

    props = amqp_commands.Basic.Properties(delivery_mode=2, message_id="m")
    return b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp_commands.Queue.Declare(queue="a"),
            amqp_commands.Basic.Publish(exchange="", routing_key="a"),
            amqp_header.ContentHeader(0, 5, props),
            ContentBody(b"hello"),
            amqp_commands.Basic.Publish(exchange="", routing_key="a"),
            amqp_header.ContentHeader(0, 0, props),
            amqp_commands.Basic.Ack(delivery_tag=7, multiple=True),
        )
    )


def drain(frames: AmqpFrames) -> list[Any]:
    out = []
    while (item := frames.next_frame()) is not NEED_DATA and item is not None:
        out.append(item)
    return out


def shown(item: Any) -> Any:
    """A frame as comparable values (pamqp's frames compare by identity)."""
    if isinstance(item, str):
        return item
    channel, frame = item
    names = getattr(frame, "__slots__", None) or list(vars(frame))
    return channel, type(frame).__name__, [getattr(frame, a) for a in names]


def flat(items: list[Any]) -> list[Any]:
    """A publish read whole as the frames it came in."""
    from pamqp.body import ContentBody

    from mqroute.protocol.amqp import Content

    out = []
    for item in items:
        if isinstance(item, tuple) and type(item[1]) is Content:
            channel, content = item
            out += [(channel, content.publish), (channel, content.header)]
            if content.body:
                out.append((channel, ContentBody(content.body)))
        else:
            out.append(item)
    return out


def test_frames_split_at_every_byte_decode_the_same() -> None:
    data = PROTOCOL_HEADER + method_frames()
    whole = AmqpFrames()
    whole.frame_max = 131072
    whole.receive_data(data)
    expected = drain(whole)
    from mqroute.protocol.amqp import Content

    assert sum(type(e[1]) is Content for e in expected if isinstance(e, tuple)) == 2
    for cut in range(len(data) + 1):
        frames = AmqpFrames()
        frames.frame_max = 131072
        got = []
        for part in (data[:cut], data[cut:]):
            frames.receive_data(part)
            got += drain(frames)
        assert [shown(g) for g in flat(got)] == [shown(e) for e in flat(expected)], cut


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_the_protocols_own_errors(data: bytes) -> None:
    frames = AmqpFrames()
    frames.frame_max = 131072
    frames.receive_data(PROTOCOL_HEADER + data)
    try:
        drain(frames)
    except (FrameError, BadHeader):
        pass


NATIVE_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=10),
        st.binary(max_size=10),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def through_amqp(headers: dict[str, Any]) -> dict[str, Any] | None:
    """Headers as the broker sends them to an AMQP client, and read back as it takes them."""
    from mqroute.model import Properties
    from mqroute.protocol.amqp import content_header, from_amqp_properties

    payload = content_header(0, Properties(headers=headers or None))
    wire = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
    _, _, decoded = amqp_frame.unmarshal(wire)
    return from_amqp_properties(decoded.properties).headers


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), NATIVE_VALUES, max_size=5))
def test_native_headers_round_trip_through_amqp(headers: dict[str, Any]) -> None:
    """Every value the native protocol carries survives AMQP: doubles stay doubles (not
    pamqp's 32-bit floats), bytes are byte arrays, integers keep their sign and width."""
    assert (through_amqp(headers) or {}) == headers


def test_amqp_only_field_types_map_to_native_values() -> None:
    """What AMQP has and the native protocol does not (docs/amqp.md): a decimal becomes its
    exact text, a timestamp whole seconds since the epoch."""
    import pika.data

    table = {
        "price": decimal.Decimal("12.50"),
        "at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "nested": {"deep": [1, "two", {"three": -3}]},
    }
    encoded: list[bytes] = []
    pika.data.encode_table(encoded, table)
    from mqroute.protocol.amqp import to_table

    _, decoded = __import__("pamqp.decode", fromlist=["field_table"]).field_table(b"".join(encoded))
    assert to_table(decoded) == {
        "price": "12.5",  # pika normalises the decimal it sends
        "at": 1767323045,
        "nested": {"deep": [1, "two", {"three": -3}]},
    }


async def test_amqps_with_the_servers_certificate(tmp_path: Any) -> None:
    import ssl

    import trustme

    from mqroute.server.config import TlsConfig

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    tls = TlsConfig(cert=tmp_path / "server.pem", key=tmp_path / "server.pem")
    async with trio.open_nursery() as nursery:
        config = ServerConfig(port=0, amqp_port=0, tls=tls)
        address = await nursery.start(functools.partial(serve, config))

        def work() -> bytes:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            params = pika.ConnectionParameters(
                "127.0.0.1",
                address.amqp_port,
                credentials=pika.PlainCredentials("guest", "guest"),
                ssl_options=pika.SSLOptions(context, "127.0.0.1"),
            )
            connection = pika.BlockingConnection(params)
            ch = connection.channel()
            ch.queue_declare("secure")
            ch.basic_publish("", "secure", b"over amqps")
            _, _, body = ch.basic_get("secure", auto_ack=True)
            connection.close()
            return body

        assert await in_thread(work) == b"over amqps"
        nursery.cancel_scope.cancel()


# --- the fast paths, held to pamqp's own output ------------------------------------------------

SHORT = st.text(max_size=40).filter(lambda t: len(t.encode()) <= 255)
NAME = st.from_regex(r"[a-zA-Z0-9_.:-]{0,40}", fullmatch=True)  # what pamqp lets us build


def slots(frame: Any) -> list[Any]:
    return [type(frame).__name__, *(getattr(frame, a) for a in frame.__slots__)]


@given(NAME, SHORT, st.booleans(), st.booleans())
def test_the_fast_publish_decoder_agrees_with_pamqp(
    exchange: str, key: str, mandatory: bool, immediate: bool
) -> None:
    from mqroute.protocol.amqp import _fast_decode

    method = amqp_commands.Basic.Publish(
        exchange=exchange, routing_key=key, mandatory=mandatory, immediate=immediate
    )
    wire = amqp_frame.marshal(method, 3)
    assert slots(_fast_decode(1, wire)) == slots(amqp_frame.unmarshal(wire)[2])


@given(st.integers(0, 2**63 - 1), st.booleans())  # pamqp writes signed 64-bit
def test_the_fast_ack_decoder_agrees_with_pamqp(tag: int, multiple: bool) -> None:
    from mqroute.protocol.amqp import _fast_decode

    wire = amqp_frame.marshal(amqp_commands.Basic.Ack(delivery_tag=tag, multiple=multiple), 1)
    assert slots(_fast_decode(1, wire)) == slots(amqp_frame.unmarshal(wire)[2])


def pamqp_properties(props: Any) -> amqp_commands.Basic.Properties:
    """The broker's properties as pamqp would hold them: the reference for the encoder."""
    return amqp_commands.Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=dict(props.headers) if props.headers else None,
        delivery_mode=2 if props.persistent else None,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=props.expiration,
        message_id=props.message_id,
        timestamp=(
            datetime.datetime.fromtimestamp(props.timestamp, datetime.UTC)
            if props.timestamp is not None
            else None
        ),
        message_type=props.type,
        user_id=props.user_id,
        app_id=props.app_id,
    )


OPTIONAL_SHORT = st.none() | SHORT
BROKER_PROPERTIES = st.builds(
    __import__("mqroute.model", fromlist=["Properties"]).Properties,
    content_type=OPTIONAL_SHORT,
    content_encoding=OPTIONAL_SHORT,
    persistent=st.booleans(),
    priority=st.none() | st.integers(0, 255),
    correlation_id=OPTIONAL_SHORT,
    reply_to=OPTIONAL_SHORT,
    expiration=st.none() | st.integers(0, 2**32 - 1).map(str),
    message_id=OPTIONAL_SHORT,
    timestamp=st.none() | st.integers(0, 2**32 - 1),
    type=OPTIONAL_SHORT,
    user_id=OPTIONAL_SHORT,
    app_id=OPTIONAL_SHORT,
)


def header_frame(channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", 2, channel, len(payload)) + payload + b"\xce"


@settings(max_examples=300)
@given(st.integers(0, 2**40), BROKER_PROPERTIES)
def test_the_content_header_encoder_agrees_with_pamqp(size: int, props: Any) -> None:
    from pamqp import header as amqp_header

    from mqroute.protocol.amqp import content_header

    """pamqp reads back what was meant; and the bytes are pamqp's own, but that an empty
    string is sent as one (pamqp leaves it out; RabbitMQ and pika keep it)."""
    reference = pamqp_properties(props)
    ours = header_frame(1, content_header(size, props))
    decoded = amqp_frame.unmarshal(ours)[2]
    assert (decoded.body_size, slots(decoded.properties)) == (size, slots(reference))
    if "" not in attrs.astuple(props):
        marshalled = amqp_frame.marshal(amqp_header.ContentHeader(0, size, reference), 1)
        assert ours == marshalled


PAMQP_PROPERTIES = st.builds(
    amqp_commands.Basic.Properties,
    content_type=OPTIONAL_SHORT,
    content_encoding=OPTIONAL_SHORT,
    headers=st.none() | st.just({}) | st.dictionaries(NAME.filter(bool), SHORT, max_size=3),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=OPTIONAL_SHORT,
    reply_to=OPTIONAL_SHORT,
    expiration=st.none() | st.integers(0, 2**32 - 1).map(str) | SHORT,
    message_id=OPTIONAL_SHORT,
    timestamp=st.none()
    | st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC)),
    message_type=OPTIONAL_SHORT,
    user_id=OPTIONAL_SHORT,
    app_id=OPTIONAL_SHORT,
    cluster_id=st.just(""),  # pamqp refuses any other
)


@settings(max_examples=300)
@given(st.integers(0, 2**40), PAMQP_PROPERTIES)
def test_the_fast_content_header_decoder_agrees_with_pamqp(size: int, props: Any) -> None:
    """The fast path gives what pamqp's decoder and the mapping give, or leaves it to them;
    properties the broker refuses (an expiration that is not milliseconds) are an error
    either way, with the same text."""
    from pamqp import header as amqp_header

    from mqroute.protocol.amqp import Header, _broker_header, _fast_decode, from_amqp_properties

    wire = amqp_frame.marshal(amqp_header.ContentHeader(0, size, props), 1)
    slow = amqp_frame.unmarshal(wire)[2]
    expected = _broker_header(slow.body_size, from_amqp_properties, slow.properties)
    fast = _fast_decode(2, wire)
    if props.headers:
        assert fast is None  # a table with fields: pamqp decodes it
        return
    assert type(fast) is Header
    assert (fast.body_size, fast.properties, fast.error) == (
        expected.body_size,
        expected.properties,
        expected.error,
    )


def test_properties_a_publisher_repeats_are_decoded_once_and_shared() -> None:
    from pamqp import header as amqp_header

    from mqroute.protocol.amqp import _fast_decode

    def header(props: Any) -> Any:
        return _fast_decode(2, amqp_frame.marshal(amqp_header.ContentHeader(0, 5, props), 1))

    plain = amqp_commands.Basic.Properties(delivery_mode=2, content_type="text/plain")
    assert header(plain).properties is header(plain).properties
    one, two = (amqp_commands.Basic.Properties(message_id=m) for m in ("1", "2"))
    assert header(one).properties.message_id == "1"  # per message: not cached
    assert header(two).properties.message_id == "2"


def test_a_header_the_broker_refuses_is_named_whichever_decoder_read_it() -> None:
    frames = AmqpFrames()
    frames.frame_max = 131072
    properties = amqp_commands.Basic.Properties(expiration="soon", headers={"a": 1})
    from pamqp import header as amqp_header

    wire = amqp_frame.marshal(amqp_header.ContentHeader(0, 3, properties), 1)
    frames.receive_data(PROTOCOL_HEADER + wire)
    assert frames.next_frame() == HEADER_RECEIVED
    _, header = frames.next_frame()
    assert header.properties is None
    assert "expiration must be a string of milliseconds" in header.error


@given(SHORT, st.integers(0, 2**63 - 1), st.booleans(), NAME, SHORT)
def test_the_fast_deliver_encoder_agrees_with_pamqp(
    consumer_tag: str, tag: int, redelivered: bool, exchange: str, key: str
) -> None:
    from mqroute.protocol.amqp import deliver_bytes

    method = amqp_commands.Basic.Deliver(consumer_tag, tag, redelivered, exchange, key)
    assert deliver_bytes(5, consumer_tag, tag, redelivered, exchange, key) == (
        amqp_frame.marshal(method, 5)
    )


async def test_a_publish_to_a_name_pamqp_would_refuse_is_not_found(
    address: ServerAddress,
) -> None:
    """pamqp's constructor refuses an exchange named '*'; RabbitMQ answers NOT_FOUND, and so
    does mqroute: the decoder passes the name and the broker answers for it."""

    def work() -> tuple[int, str]:
        connection, ch = channel(address)
        ch.confirm_delivery()
        try:
            ch.basic_publish("*", "k", b"x")
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        finally:
            connection.close()
        raise AssertionError("published to an exchange that does not exist")

    code, text = await in_thread(work)
    assert code == 404
    assert "'*'" in text


# --- the front end alone: a publish read whole takes the same answers as one read in parts ---


def front_end(max_message_size: int = 1 << 20) -> Any:
    from mqroute.core.access import FULL
    from mqroute.core.vhost import Vhost
    from mqroute.server.amqp_front import AmqpFrontEnd

    vhost = Vhost()
    front = AmqpFrontEnd("c", max_message_size=max_message_size, heartbeat=0)
    front.opened(vhost, FULL)
    front.handle(1, amqp_commands.Channel.Open(), 0.0)
    front.handle(1, amqp_commands.Queue.Declare(queue="q"), 0.0)
    front.out.clear()
    return vhost, front


def answers(front: Any, *methods: Any, body: bytes = b"hello") -> list[Any]:
    """Each publish in ``methods`` sent with a header and ``body``: what the front end says."""
    from pamqp import header as amqp_header
    from pamqp.body import ContentBody

    wire = []
    for m in methods:
        wire.append(amqp_frame.marshal(m, 1))
        if isinstance(m, amqp_commands.Basic.Publish):
            props = amqp_commands.Basic.Properties(delivery_mode=1)
            wire.append(amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), props), 1))
            wire.append(amqp_frame.marshal(ContentBody(body), 1))
    frames = AmqpFrames()
    frames.frame_max = 131072
    frames.receive_data(PROTOCOL_HEADER + b"".join(wire))
    for channel, frame in drain(frames)[1:]:
        front.handle(channel, frame, 0.0)
    out = b"".join(front.out)
    front.out.clear()
    said = []
    while out:
        size = struct.unpack_from(">I", out, 3)[0]
        said.append(amqp_frame.unmarshal(out[: size + 8])[2])
        out = out[size + 8 :]
    return said


def test_a_publish_over_the_size_limit_closes_its_channel_however_it_was_read() -> None:
    vhost, front = front_end(max_message_size=4)
    (close,) = answers(front, amqp_commands.Basic.Publish(routing_key="q"))
    assert (close.reply_code, close.reply_text) == (
        406,
        "PRECONDITION_FAILED - message size 5 is larger than the maximum of 4",
    )
    assert len(vhost.queues["q"]) == 0


def test_an_immediate_publish_is_not_implemented_however_it_was_read() -> None:
    vhost, front = front_end()
    (close,) = answers(front, amqp_commands.Basic.Publish(routing_key="q", immediate=True))
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    assert len(vhost.queues["q"]) == 0


def test_a_publish_in_a_transaction_waits_for_the_commit_however_it_was_read() -> None:
    vhost, front = front_end()
    answers(front, amqp_commands.Tx.Select(), amqp_commands.Basic.Publish(routing_key="q"))
    assert len(vhost.queues["q"]) == 0
    assert [type(m).__name__ for m in answers(front, amqp_commands.Tx.Commit())] == ["CommitOk"]
    assert len(vhost.queues["q"]) == 1


# Methods either side sends, built by pamqp (with its checks): the reference for our codec.
TABLE = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.one_of(st.booleans(), st.integers(-(2**31), 2**31 - 1), st.text(max_size=20)),
    max_size=4,
)
METHODS = st.one_of(
    st.builds(amqp_commands.Queue.Declare, queue=NAME, durable=st.booleans(), arguments=TABLE),
    st.builds(
        amqp_commands.Queue.DeclareOk,
        queue=NAME,
        message_count=st.integers(0, 2**32 - 1),
        consumer_count=st.integers(0, 2**32 - 1),
    ),
    st.builds(
        amqp_commands.Basic.Consume,
        queue=NAME,
        consumer_tag=NAME,
        no_ack=st.booleans(),
        exclusive=st.booleans(),
        arguments=TABLE,
    ),
    st.builds(amqp_commands.Basic.ConsumeOk, consumer_tag=NAME),
    st.builds(
        amqp_commands.Exchange.Bind,
        destination=NAME,
        source=NAME,
        routing_key=NAME,
        arguments=TABLE,
    ),
    st.builds(
        amqp_commands.Connection.Close,
        reply_code=st.integers(200, 599),
        reply_text=SHORT,
        class_id=st.integers(0, 90),
        method_id=st.integers(0, 100),
    ),
    st.builds(amqp_commands.Basic.Qos, prefetch_count=st.integers(0, 65535), global_=st.booleans()),
    st.builds(
        amqp_commands.Basic.Nack,
        delivery_tag=st.integers(0, 2**63 - 1),
        multiple=st.booleans(),
        requeue=st.booleans(),
    ),
)


@given(METHODS, st.integers(0, 65535))
def test_our_method_codec_agrees_with_pamqp(method: Any, channel: int) -> None:
    from mqroute.protocol.amqp import method_bytes
    from mqroute.protocol.amqp_fields import decode_method

    wire = amqp_frame.marshal(method, channel)
    reference = slots(amqp_frame.unmarshal(wire)[2])
    ours = method_bytes(channel, method)  # tables' integers as RabbitMQ writes them: 'I'
    assert slots(amqp_frame.unmarshal(ours)[2]) == reference
    assert slots(decode_method(wire, len(wire) - 1)) == reference


def test_the_heartbeat_frame_is_what_pamqp_writes() -> None:
    from pamqp.heartbeat import Heartbeat

    from mqroute.protocol.amqp import HEARTBEAT_FRAME

    assert HEARTBEAT_FRAME == amqp_frame.marshal(Heartbeat(), 0)
