"""The real server on an ephemeral port with the real SDK."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import mqroute
from mqroute.core.vhost import Vhost
from mqroute.errors import (
    ConnectionClosed,
    ConsumerCancelled,
    MessageReturned,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
    UsageError,
)
from mqroute.protocol import Ack, Close, Consume, Deliver, Hello
from mqroute.server import ServerAddress

from .helpers import RawClient


async def take(consumer: mqroute.Consumer, n: int) -> list[mqroute.Message]:
    got = []
    async for msg in consumer:
        got.append(msg)
        if len(got) == n:
            break
    return got


async def test_publish_consume_ack_round_trip(conn: mqroute.Connection, broker: Vhost) -> None:
    await conn.declare_queue("tasks")
    await conn.publish(
        "",
        "tasks",
        b'{"n": 1}',
        content_type="application/json",
        headers={"attempt": 1},
        message_id="m-1",
        persistent=True,
    )
    async with conn.consume("tasks", prefetch=1) as messages:
        [msg] = await take(messages, 1)
        assert msg.body == b'{"n": 1}'
        assert (msg.content_type, msg.headers, msg.message_id) == (
            "application/json",
            {"attempt": 1},
            "m-1",
        )
        assert msg.properties.persistent and not msg.redelivered
        assert (msg.exchange, msg.routing_key) == ("", "tasks")
        await msg.ack()
    await conn.declare_queue("tasks", passive=True)  # a round trip: the ack has been handled
    assert broker.queues["tasks"].unacked == 0 and len(broker.queues["tasks"]) == 0


async def test_topic_routing_through_the_sdk(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("shop", "topic", durable=True)
    await conn.declare_queue("inventory")
    await conn.declare_queue("mail")
    await conn.bind_queue("inventory", "shop", "order.*")
    await conn.bind_queue("mail", "shop", "*.created")
    for key in ["order.created", "order.paid", "user.created", "user.deleted"]:
        await conn.publish("shop", key, key.encode())
    inventory = [(await conn.get("inventory", auto_ack=True)) for _ in range(3)]
    mail = [(await conn.get("mail", auto_ack=True)) for _ in range(3)]
    assert [m.body for m in inventory if m] == [b"order.created", b"order.paid"]
    assert [m.body for m in mail if m] == [b"order.created", b"user.created"]


async def test_competing_consumers_share_the_work(server: ServerAddress) -> None:
    async with (
        mqroute.connect(server.url) as producer,
        mqroute.connect(server.url) as w1,
        mqroute.connect(server.url) as w2,
    ):
        await producer.declare_queue("work")
        async with w1.consume("work", prefetch=1) as c1, w2.consume("work", prefetch=1) as c2:
            async with producer.publisher() as pub:
                for i in range(10):
                    await pub.publish("", "work", str(i).encode())
            seen = []
            for _ in range(5):
                for consumer in (c1, c2):
                    [msg] = await take(consumer, 1)
                    seen.append((consumer is c1, int(msg.body)))
                    await msg.ack()
        assert sorted(n for _, n in seen) == list(range(10))
        assert sum(1 for first, _ in seen if first) == 5


async def test_fanout_reaches_every_queue(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("news", "fanout")
    names = [(await conn.declare_queue("", exclusive=True)).name for _ in range(3)]
    for name in names:
        await conn.bind_queue(name, "news")
    await conn.publish("news", "ignored", b"hello")
    for name in names:
        msg = await conn.get(name, auto_ack=True)
        assert msg is not None and msg.body == b"hello"


async def test_prefetch_is_respected(conn: mqroute.Connection, broker: Vhost) -> None:
    await conn.declare_queue("q")
    async with conn.publisher() as pub:
        for i in range(5):
            await pub.publish("", "q", bytes([i]))
    async with conn.consume("q", prefetch=2) as messages:
        await conn.declare_queue("q", passive=True)  # the consume has been dispatched
        assert broker.queues["q"].unacked == 2 and len(broker.queues["q"]) == 3
        first = await take(messages, 1)
        await first[0].ack()
        await conn.declare_queue("q", passive=True)
        assert broker.queues["q"].unacked == 2 and len(broker.queues["q"]) == 2


async def test_unacked_messages_return_redelivered_when_the_consumer_dies(
    server: ServerAddress, broker: Vhost
) -> None:
    async with mqroute.connect(server.url) as producer:
        await producer.declare_queue("jobs")
        async with producer.publisher() as pub:
            for i in range(3):
                await pub.publish("", "jobs", bytes([i]))
        worker = RawClient(await trio.open_tcp_stream(server.host, server.port))
        await worker.send(Hello(versions=[2], client="doomed", heartbeat_ms=0))
        await worker.next()
        await worker.send(
            Consume(
                rid=1,
                queue="jobs",
                consumer_tag="w",
                prefetch=10,
                auto_ack=False,
                exclusive=False,
                arguments={},
            )
        )
        frames = [await worker.next() for _ in range(4)]
        assert sum(isinstance(f, Deliver) for f in frames) == 3
        await worker.stream.aclose()  # the worker dies without acking
        async with producer.consume("jobs", prefetch=10) as messages:
            again = await take(messages, 3)
        assert [m.body for m in again] == [b"\x00", b"\x01", b"\x02"]
        assert all(m.redelivered for m in again)


async def test_mandatory_unroutable_publish_is_returned(conn: mqroute.Connection) -> None:
    with pytest.raises(MessageReturned, match="NO_ROUTE") as info:
        await conn.publish("amq.direct", "nobody", b"x", mandatory=True)
    assert info.value.routing_key == "nobody"
    await conn.publish("amq.direct", "nobody", b"x")  # not mandatory: dropped quietly


async def test_exclusive_queue_is_locked_then_removed_with_its_connection(
    server: ServerAddress,
) -> None:
    async with mqroute.connect(server.url) as other:
        async with mqroute.connect(server.url) as owner:
            await owner.declare_queue("private", exclusive=True)
            with pytest.raises(ResourceLocked):
                await other.declare_queue("private", passive=True)
        with pytest.raises(NotFound):
            await other.declare_queue("private", passive=True)


async def test_mismatched_redeclare_fails_and_the_connection_goes_on(
    conn: mqroute.Connection,
) -> None:
    await conn.declare_exchange("orders", "topic", durable=True)
    with pytest.raises(PreconditionFailed, match="type=topic"):
        await conn.declare_exchange("orders", "direct", durable=True)
    await conn.declare_exchange("orders", "topic", durable=True)


async def test_publish_to_missing_exchange_raises_not_found(conn: mqroute.Connection) -> None:
    with pytest.raises(NotFound, match="no exchange 'ghost'"):
        await conn.publish("ghost", "k", b"")
    await conn.declare_queue("still-works")


async def test_pipelined_publishing_confirms_everything(
    conn: mqroute.Connection, broker: Vhost
) -> None:
    await conn.declare_queue("bulk")
    async with conn.publisher(max_in_flight=100) as pub:
        confirmations = [await pub.publish("", "bulk", b"x" * 100) for _ in range(2000)]
    assert all(c.done and c.error is None for c in confirmations)
    assert len(broker.queues["bulk"]) == 2000


async def test_publisher_reports_failures_after_the_block(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    with pytest.raises(NotFound):
        async with conn.publisher() as pub:
            await pub.publish("", "q", b"fine")
            await pub.publish("ghost", "q", b"lost")
            await pub.publish("", "q", b"fine")
    assert len(pub.failures) == 1


async def test_settling_twice_is_a_usage_error(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"x")
    msg = await conn.get("q")
    assert msg is not None
    await msg.ack()
    with pytest.raises(UsageError, match="already settled"):
        await msg.nack()
    await conn.declare_queue("q", passive=True)


async def test_unknown_delivery_tag_closes_the_connection_with_the_reason(
    conn: mqroute.Connection,
) -> None:
    await conn._send(Ack(delivery_tag=999, multiple=False))
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(100):
            await conn.declare_queue("", exclusive=True)
    assert isinstance(info.value.reason, PreconditionFailed)
    assert "unknown delivery tag 999" in str(info.value)


async def test_leaving_a_consumer_requeues_what_it_never_handed_out(
    conn: mqroute.Connection, broker: Vhost
) -> None:
    await conn.declare_queue("q")
    async with conn.publisher() as pub:
        for i in range(5):
            await pub.publish("", "q", bytes([i]))
    async with conn.consume("q", prefetch=10) as messages:
        [first] = await take(messages, 1)
    await conn.declare_queue("q", passive=True)
    assert len(broker.queues["q"]) == 4 and broker.queues["q"].unacked == 1
    await first.ack()
    msg = await conn.get("q", auto_ack=True)
    assert msg is not None and msg.body == b"\x01"


async def test_deleting_a_queue_cancels_its_consumers(server: ServerAddress) -> None:
    async with mqroute.connect(server.url) as a, mqroute.connect(server.url) as b:
        await a.declare_queue("doomed")
        async with a.consume("doomed") as messages:
            assert await b.delete_queue("doomed") == 0
            with pytest.raises(ConsumerCancelled, match="queue 'doomed' deleted"):
                await take(messages, 1)


async def test_garbage_closes_only_the_offending_connection(
    conn: mqroute.Connection, server: ServerAddress
) -> None:
    await conn.declare_queue("q")
    bad = await RawClient.connect(server)
    await bad.stream.send_all(b"\x00\x00\x00\x04\xff\xfe\xfd\xfc")
    events = await bad.until_closed()
    assert len(events) == 1 and isinstance(events[0], Close)
    assert events[0].code == "FRAME_ERROR" and "undecodable CBOR" in events[0].text
    await conn.publish("", "q", b"unharmed")
    msg = await conn.get("q", auto_ack=True)
    assert msg is not None and msg.body == b"unharmed"


async def test_garbage_before_the_handshake_is_refused(server: ServerAddress) -> None:
    bad = await RawClient.connect(server, handshake=False)
    await bad.stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
    events = await bad.until_closed()
    assert isinstance(events[0], Close) and "exceeds the maximum frame size" in events[0].text


async def test_unsupported_version_is_refused(server: ServerAddress) -> None:
    raw = await RawClient.connect(server, handshake=False)
    await raw.send(Hello(versions=[7, 8], client="future", heartbeat_ms=0))
    [close] = await raw.until_closed()
    assert isinstance(close, Close) and "no common protocol version" in close.text


async def test_silent_peer_is_dropped_and_its_deliveries_requeued(
    autojump_clock: trio.testing.MockClock, server: ServerAddress, broker: Vhost
) -> None:
    async with mqroute.connect(server.url, heartbeat=0) as conn:
        await conn.declare_queue("q")
        await conn.publish("", "q", b"x")
        silent = await RawClient.connect(server, heartbeat_ms=1000)
        await silent.send(
            Consume(
                rid=1,
                queue="q",
                consumer_tag="s",
                prefetch=1,
                auto_ack=False,
                exclusive=False,
                arguments={},
            )
        )
        # It never answers heartbeats; after two intervals the broker gives up on it.
        events = await silent.until_closed()
        assert any(isinstance(e, Deliver) for e in events)
        assert trio.current_time() >= 2.0
        await conn.declare_queue("q", passive=True)
        assert len(broker.queues["q"]) == 1 and broker.queues["q"].unacked == 0


async def test_using_a_closed_connection_says_so(server: ServerAddress) -> None:
    conn = mqroute.connect(server.url)
    with pytest.raises(UsageError, match="not open yet"):
        await conn.declare_queue("q")
    async with conn:
        pass
    with pytest.raises(ConnectionClosed):
        await conn.declare_queue("q")


async def test_connect_to_nothing_is_a_clear_error() -> None:
    with pytest.raises(ConnectionClosed, match="cannot connect"):
        async with mqroute.connect("mqroute://127.0.0.1:1"):
            pass
