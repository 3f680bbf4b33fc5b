"""Dead-lettering, length limits and delivery limits (RabbitMQ's queue arguments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import mqroute
from mqroute.core.broker import Broker, Redriven
from mqroute.core.session import Session
from mqroute.errors import MessageNacked, NotFound, PreconditionFailed
from mqroute.model import (
    Confirm,
    Delivery,
    DeliveryTimedOut,
    ExchangeSpec,
    Message,
    Properties,
    QueueSpec,
)

from .test_durability import running


def msg(key: str, body: bytes = b"", exchange: str = "", **props: Any) -> Message:
    return Message(exchange=exchange, routing_key=key, body=body, properties=Properties(**props))


@pytest.fixture
def b() -> Broker:
    broker = Broker()
    broker.now = 1_700_000_000.0
    broker.declare_exchange(ExchangeSpec(name="dlx", type="fanout"))
    broker.declare_queue("o", QueueSpec(name="dead"))
    broker.bind_queue("o", "dead", "dlx")
    return broker


@pytest.fixture
def s(b: Broker) -> Session:
    return b.open_session("o")


def declare(b: Broker, name: str, **arguments: Any) -> None:
    b.declare_queue("o", QueueSpec(name=name, arguments=arguments))


def ready(b: Broker, queue: str) -> list[Message]:
    return [e.message for e in b.queues[queue].ready_entries() if e.message is not None]


def test_rejected_message_goes_to_the_dlx_with_x_death(b: Broker, s: Session) -> None:
    declare(b, "work", **{"x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("work", b"job", expiration="60000", headers={"app": 1}))
    d = b.get(s, "work")
    assert d is not None
    b.reject(s, d.delivery_tag, requeue=False)
    [dead] = ready(b, "dead")
    assert dead.body == b"job" and dead.exchange == "dlx" and dead.routing_key == "work"
    assert dead.properties.expiration is None
    headers = dead.properties.headers or {}
    assert headers["app"] == 1
    assert headers["x-death"] == [
        {
            "queue": "work",
            "reason": "rejected",
            "count": 1,
            "time": 1_700_000_000,
            "exchange": "",
            "routing-keys": ["work"],
            "original-expiration": "60000",
        }
    ]
    assert headers["x-first-death-queue"] == headers["x-last-death-queue"] == "work"
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-exchange"] == ""


def test_dead_letter_routing_key_replaces_the_key(b: Broker, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="dlx-direct", type="direct"))
    declare(b, "parked")
    b.bind_queue("o", "parked", "dlx-direct", "parked")
    declare(
        b, "work", **{"x-dead-letter-exchange": "dlx-direct", "x-dead-letter-routing-key": "parked"}
    )
    b.publish(s, msg("work", b"x"))
    d = b.get(s, "work")
    assert d is not None
    b.nack(s, d.delivery_tag, requeue=False)
    assert [m.routing_key for m in ready(b, "parked")] == ["parked"]


def test_second_death_in_the_same_queue_counts_up(b: Broker, s: Session) -> None:
    # work → (rejected) → retry queue, consumed and republished to work by hand, rejected again
    b.declare_exchange(ExchangeSpec(name="to-retry", type="fanout"))
    declare(b, "retry")
    b.bind_queue("o", "retry", "to-retry")
    declare(b, "work", **{"x-dead-letter-exchange": "to-retry"})
    b.publish(s, msg("work", b"x"))
    for _ in range(2):
        d = b.get(s, "work")
        assert d is not None
        b.reject(s, d.delivery_tag, requeue=False)
        r = b.get(s, "retry", auto_ack=True)
        assert r is not None
        if _ == 0:
            b.publish(
                s,
                Message(
                    exchange="",
                    routing_key="work",
                    body=r.message.body,
                    properties=r.message.properties,
                ),
            )
    deaths = (r.message.properties.headers or {})["x-death"]
    assert [(x["queue"], x["reason"], x["count"]) for x in deaths] == [("work", "rejected", 2)]


def test_a_second_death_keeps_the_first_deaths_details_and_counts(b: Broker) -> None:
    """RabbitMQ 3.10+: the (queue, reason) entry keeps its first exchange, routing keys and
    time; only ``count`` grows, and the entry moves to the front."""
    from mqroute.core.dead_letter import death_headers

    first = msg("k1", exchange="a")
    headers = death_headers(first, "work", "rejected", now=100.0)
    headers = death_headers(msg("x", headers=headers), "other", "expired", now=150.0)
    again = msg("k2", exchange="b", headers=headers)
    deaths = death_headers(again, "work", "rejected", now=200.0)["x-death"]
    assert deaths[0] == {
        "queue": "work",
        "reason": "rejected",
        "count": 2,
        "time": 100,
        "exchange": "a",
        "routing-keys": ["k1"],
    }
    assert [(d["queue"], d["count"]) for d in deaths] == [("work", 2), ("other", 1)]


def test_automatic_dead_letter_cycle_is_dropped(b: Broker, s: Session) -> None:
    declare(b, "loop", **{"x-dead-letter-exchange": "", "x-max-length": 1})
    # drop-head dead-letters the older message back to "loop" itself: a cycle, dropped
    b.publish(s, msg("loop", b"1"))
    b.publish(s, msg("loop", b"2"))
    assert [m.body for m in ready(b, "loop")] == [b"2"]


def test_rejected_messages_may_cycle(b: Broker, s: Session) -> None:
    declare(b, "again", **{"x-dead-letter-exchange": ""})
    b.publish(s, msg("again", b"x"))
    for _ in range(3):
        d = b.get(s, "again")
        assert d is not None
        b.reject(s, d.delivery_tag, requeue=False)
    [back] = ready(b, "again")
    assert (back.properties.headers or {})["x-death"][0]["count"] == 3


def test_max_length_drop_head_dead_letters_the_oldest(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    for i in range(4):
        b.publish(s, msg("q", bytes([i])))
    assert [m.body for m in ready(b, "q")] == [b"\x02", b"\x03"]
    dead = ready(b, "dead")
    assert [m.body for m in dead] == [b"\x00", b"\x01"]
    assert (dead[0].properties.headers or {})["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes_counts_ready_bodies(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        b.publish(s, msg("q", body))
    assert [m.body for m in ready(b, "q")] == [b"bbbb", b"cccc"]
    assert b.queues["q"].ready_bytes == 8


def test_reject_publish_nacks_the_publisher(b: Broker, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-max-length": 1, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"in"))
    b.publish(s, msg("q", b"refused"))
    events = s.take_events()
    assert events[0] == Confirm(seq=1, multiple=True)
    assert events[1].ok is False and "is full" in (events[1].error_text or "")  # type: ignore[union-attr]
    assert [m.body for m in ready(b, "q")] == [b"in"] and ready(b, "dead") == []


def test_reject_publish_dlx_also_dead_letters(b: Broker, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-max-length": 0, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"refused"))
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "maxlen"


def test_delivery_limit_dead_letters_after_too_many_failures(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-delivery-limit": 2, "x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"poison"))
    counts = []
    for _ in range(3):
        d = b.get(s, "q")
        assert d is not None
        counts.append((d.message.properties.headers or {}).get("x-delivery-count"))
        b.nack(s, d.delivery_tag, requeue=True)
    assert counts == [None, 1, 2]
    assert ready(b, "q") == []
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "delivery_limit"


def test_delivery_limit_applies_when_a_consumer_dies(b: Broker) -> None:
    declare(b, "q", **{"x-delivery-limit": 0})
    worker = b.open_session("w")
    b.consume(worker, "q")
    b.publish(worker, msg("q", b"crashes the worker"))
    assert any(isinstance(e, Delivery) for e in b.take_events(worker))
    b.close_session(worker)
    assert ready(b, "q") == []  # dropped: no DLX


def test_a_released_delivery_is_no_attempt(b: Broker, s: Session) -> None:
    """Released (never seen by the application): back to its place, not counted, so neither
    the delivery limit nor x-delivery-count nor the retry backoff sees it."""
    declare(
        b,
        "q",
        **{"x-delivery-limit": 0, "x-delayed-retry-min": 1000, "x-dead-letter-exchange": "dlx"},
    )
    for body in (b"first", b"second"):
        b.publish(s, msg("q", body))
    for _ in range(3):
        d = b.get(s, "q")
        assert d is not None and d.message.body == b"first" and not d.redelivered
        assert "x-delivery-count" not in (d.message.properties.headers or {})
        b.release(s, d.delivery_tag)
    assert [m.body for m in ready(b, "q")] == [b"first", b"second"]  # not delayed, in order
    assert ready(b, "dead") == []


def test_a_multiple_release_gives_back_every_delivery_up_to_the_tag(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-delivery-limit": 0})
    b.consume(s, "q", prefetch=10)
    for body in (b"1", b"2", b"3"):
        b.publish(s, msg("q", body))
    d1, d2, d3 = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.cancel(s, d1.consumer_tag)
    b.release(s, d2.delivery_tag, multiple=True)
    assert [m.body for m in ready(b, "q")] == [b"1", b"2"]
    b.ack(s, d3.delivery_tag)
    assert b.queues["q"].unacked == 0


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"x-max-length": -1}, "x-max-length"),
        ({"x-max-length": "10"}, "x-max-length"),
        ({"x-overflow": "drop-tail"}, "x-overflow"),
        ({"x-dead-letter-exchange": 5}, "x-dead-letter-exchange"),
        ({"x-dead-letter-routing-key": "k"}, "x-dead-letter-exchange is not"),
        ({"x-delivery-limit": 1.5}, "x-delivery-limit"),
        ({"x-message-ttl": -5}, "x-message-ttl"),
        ({"x-max-priority": 256}, "x-max-priority"),
        ({"x-expires": 0}, "x-expires"),
        ({"x-single-active-consumer": 1}, "x-single-active-consumer"),
    ],
)
def test_invalid_queue_arguments_are_refused(
    b: Broker, arguments: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PreconditionFailed, match=problem):
        declare(b, "bad", **arguments)
    assert "bad" not in b.queues


async def test_dead_letters_through_the_sdk_and_across_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_exchange("dlx", "fanout", durable=True)
        await conn.declare_queue("dlq", durable=True)
        await conn.bind_queue("dlq", "dlx")
        await conn.declare_queue(
            "orders",
            durable=True,
            arguments={
                "x-dead-letter-exchange": "dlx",
                "x-max-length": 1,
                "x-overflow": "reject-publish",
            },
        )
        await conn.publish("", "orders", b"ok", persistent=True)
        with pytest.raises(MessageNacked, match="is full"):
            await conn.publish("", "orders", b"too many", persistent=True)
        msg = await conn.get("orders")
        assert msg is not None
        await msg.reject(requeue=False)
        await conn.declare_queue("dlq", durable=True, passive=True)  # the reject is handled
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        dead = await conn.get("dlq", auto_ack=True)
        assert dead is not None and dead.body == b"ok"
        assert dead.headers["x-death"][0]["reason"] == "rejected"
        assert (
            await conn.declare_queue(
                "orders",
                durable=True,
                passive=True,
                arguments={
                    "x-dead-letter-exchange": "dlx",
                    "x-max-length": 1,
                    "x-overflow": "reject-publish",
                },
            )
        ).message_count == 0


async def test_x_death_time_is_the_wall_clock(conn: mqroute.Connection) -> None:
    import time

    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dlq")
    await conn.bind_queue("dlq", "dlx")
    await conn.declare_queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    await conn.publish("", "q", b"x")
    msg = await conn.get("q")
    assert msg is not None
    await msg.reject(requeue=False)
    dead = await conn.get("dlq", auto_ack=True)  # frames are handled in order: reject first
    assert dead is not None
    assert abs(dead.headers["x-death"][0]["time"] - time.time()) < 60


# --- TTL ---------------------------------------------------------------------------------------


def test_queue_ttl_expires_and_dead_letters_on_time(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"x"))
    assert b.next_deadline() == b.now + 1.0
    b.now += 0.999
    assert b.expire() == 0
    b.now += 0.001
    assert b.expire() == 1
    assert ready(b, "q") == [] and len(b.queues["q"]) == 0
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "expired"
    assert b.next_deadline() is None


def test_expiry_is_not_only_at_the_head(b: Broker, s: Session) -> None:
    declare(b, "q")
    b.publish(s, msg("q", b"long", expiration="60000"))
    b.publish(s, msg("q", b"short", expiration="10"))
    b.publish(s, msg("q", b"forever"))
    b.now += 0.01
    assert b.expire() == 1
    assert [m.body for m in ready(b, "q")] == [b"long", b"forever"]
    assert len(b.queues["q"]) == 2
    d = b.get(s, "q", auto_ack=True)
    assert d is not None and d.message.body == b"long"


def test_the_smaller_of_queue_and_message_ttl_wins(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 5000})
    b.publish(s, msg("q", expiration="2000"))
    b.publish(s, msg("q", expiration="9000"))
    assert b.next_deadline() == b.now + 2.0
    b.now += 5.0
    assert b.expire() == 2


def test_ttl_zero_delivers_to_a_waiting_consumer_or_expires(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"nobody waits"))
    assert ready(b, "q") == [] and [m.body for m in ready(b, "dead")] == [b"nobody waits"]
    b.consume(s, "q")
    b.publish(s, msg("q", b"taken"))
    assert [d.message.body for d in b.take_events(s) if isinstance(d, Delivery)] == [b"taken"]


def test_requeue_keeps_the_original_expiry(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"slow work", expiration="1000"))
    d = b.get(s, "q")
    assert d is not None
    b.now += 2.0
    assert b.expire() == 0  # being worked on: not expired under the consumer's feet
    b.nack(s, d.delivery_tag, requeue=True)
    assert ready(b, "q") == []
    [dead] = ready(b, "dead")
    death = (dead.properties.headers or {})["x-death"][0]
    assert death["reason"] == "expired" and death["original-expiration"] == "1000"


def test_a_delivered_message_does_not_expire_until_it_comes_back(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000})
    b.publish(s, msg("q"))
    d = b.get(s, "q")
    assert d is not None
    b.now += 5
    b.expire()
    b.ack(s, d.delivery_tag)
    assert b.queues["q"].unacked == 0 and b.next_deadline() is None


async def test_ttl_end_to_end_with_a_mock_clock(
    autojump_clock: object, conn: mqroute.Connection
) -> None:
    import trio

    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("expired")
    await conn.bind_queue("expired", "dlx")
    await conn.declare_queue(
        "q", arguments={"x-message-ttl": 30_000, "x-dead-letter-exchange": "dlx"}
    )
    start = trio.current_time()
    await conn.publish("", "q", b"stale soon")
    async with conn.consume("expired") as messages:
        dead = await messages.__anext__()
        assert 30.0 <= trio.current_time() - start < 31.0
        assert dead.body == b"stale soon" and dead.headers["x-death"][0]["reason"] == "expired"
        await dead.ack()


async def test_message_expiry_survives_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
        await conn.publish("", "q", b"x", persistent=True, expiration="3600000")
    broker = Broker(durable=True)
    from mqroute.server.store import SqliteStore

    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)):
        [entry] = broker.queues["q"].ready_entries()
        assert entry.expires_at is not None
        assert 3590 < entry.expires_at - broker.now <= 3600
        assert broker.next_deadline() == entry.expires_at


# --- alternate exchange ------------------------------------------------------------------------


def test_alternate_exchange_takes_unroutable_messages(b: Broker, s: Session) -> None:
    b.declare_exchange(
        ExchangeSpec(name="orders", type="direct", arguments={"alternate-exchange": "dlx"})
    )
    declare(b, "known")
    b.bind_queue("o", "known", "orders", "known")
    b.publish(s, msg("known", b"routed", exchange="orders"), mandatory=True)
    b.publish(s, msg("unknown", b"unroutable", exchange="orders"), mandatory=True)
    assert [m.body for m in ready(b, "known")] == [b"routed"]
    assert [m.body for m in ready(b, "dead")] == [b"unroutable"]
    assert s.take_events() == [Confirm(seq=2, multiple=True)]  # not returned: it was routed
    steps = b.explain_route(msg("unknown", exchange="orders")).steps
    assert steps[0].binding.routing_key == "(alternate-exchange)"


def test_alternate_exchange_cycles_end(b: Broker, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="a", type="direct", arguments={"alternate-exchange": "b"}))
    b.declare_exchange(ExchangeSpec(name="b", type="direct", arguments={"alternate-exchange": "a"}))
    b.publish(s, msg("k", exchange="a"), mandatory=True)
    assert [type(e).__name__ for e in s.take_events()] == ["Returned", "Confirm"]


# --- competition between consumers --------------------------------------------------------------


def bodies_for(b: Broker, session: Session) -> list[bytes]:
    return [e.message.body for e in b.take_events(session) if isinstance(e, Delivery)]


def test_single_active_consumer_gets_everything_until_it_goes(b: Broker) -> None:
    declare(b, "q", **{"x-single-active-consumer": True})
    first, second = b.open_session("a"), b.open_session("b")
    b.consume(first, "q", prefetch=1)
    b.consume(second, "q", prefetch=1)
    b.publish(first, msg("q", b"1"))
    b.publish(first, msg("q", b"2"))
    assert bodies_for(b, first) == [b"1"] and bodies_for(b, second) == []
    b.close_session(first)  # its unacked "1" is requeued; the second consumer takes over
    assert bodies_for(b, second) == [b"1"]
    assert b.queues["q"].active_tag in second.consumers


def test_consumer_priority_serves_higher_first_while_it_has_credit(b: Broker) -> None:
    declare(b, "q")
    low, high = b.open_session("low"), b.open_session("high")
    b.consume(low, "q", prefetch=10)
    b.consume(high, "q", prefetch=2, arguments={"x-priority": 5})
    for i in range(4):
        b.publish(low, msg("q", bytes([i])))
    assert bodies_for(b, high) == [b"\x00", b"\x01"]  # until its credit runs out
    assert bodies_for(b, low) == [b"\x02", b"\x03"]


def test_bad_consumer_priority_is_refused(b: Broker, s: Session) -> None:
    declare(b, "q")
    with pytest.raises(PreconditionFailed, match="x-priority"):
        b.consume(s, "q", arguments={"x-priority": "high"})
    assert not b.queues["q"].consumers


# --- priority queues ---------------------------------------------------------------------------


def test_priority_queue_delivers_higher_first_fifo_within(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-max-priority": 5})
    for body, priority in [
        (b"low1", 1),
        (b"none", None),
        (b"high1", 5),
        (b"low2", 1),
        (b"capped", 200),
        (b"high2", 5),
    ]:
        b.publish(s, msg("q", body, priority=priority))
    got = []
    while (d := b.get(s, "q", auto_ack=True)) is not None:
        got.append(d.message.body)
    assert got == [b"high1", b"capped", b"high2", b"low1", b"low2", b"none"]


def test_requeued_message_returns_ahead_within_its_priority(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-max-priority": 9})
    b.publish(s, msg("q", b"a", priority=3))
    b.publish(s, msg("q", b"b", priority=3))
    b.publish(s, msg("q", b"urgent", priority=9))
    first = b.get(s, "q")
    second = b.get(s, "q")
    assert first is not None and second is not None
    assert (first.message.body, second.message.body) == (b"urgent", b"a")
    b.nack(s, second.delivery_tag, requeue=True)
    b.publish(s, msg("q", b"urgent2", priority=9))
    order = [d.message.body for d in iter(lambda: b.get(s, "q", auto_ack=True), None)]
    assert order == [b"urgent2", b"a", b"b"]


def test_priority_with_max_length_drops_from_the_head(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-max-priority": 2, "x-max-length": 2})
    b.publish(s, msg("q", b"p0", priority=0))
    b.publish(s, msg("q", b"p2", priority=2))
    b.publish(s, msg("q", b"p1", priority=1))
    assert [m.body for m in ready(b, "q")] == [b"p1", b"p0"]  # the head (p2) made room


async def test_priorities_survive_a_restart(tmp_path: Path) -> None:
    args = {"x-max-priority": 3}
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True, arguments=args)
        for body, priority in [(b"low", 0), (b"high", 3), (b"mid", 2)]:
            await conn.publish("", "q", body, persistent=True, priority=priority)
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        got = [await conn.get("q", auto_ack=True) for _ in range(3)]
        assert [m.body for m in got if m] == [b"high", b"mid", b"low"]


# --- unused queues expire -----------------------------------------------------------------------


def test_unused_queue_expires_and_use_restarts_the_lease(b: Broker, s: Session) -> None:
    declare(b, "lease", **{"x-expires": 1000})
    b.now += 0.8
    assert b.get(s, "lease") is None  # a get is use
    b.now += 0.8
    b.expire()
    assert "lease" in b.queues
    b.now += 0.2
    b.expire()
    assert "lease" not in b.queues


def test_a_queue_with_consumers_does_not_expire(b: Broker, s: Session) -> None:
    declare(b, "busy", **{"x-expires": 1000})
    tag = b.consume(s, "busy")
    b.now += 10
    b.expire()
    assert "busy" in b.queues and b.next_deadline() is None
    b.cancel(s, tag)
    assert b.next_deadline() == b.now + 1.0


# --- deduplication -----------------------------------------------------------------------------


def test_queue_dedup_window_confirms_but_skips_repeats(b: Broker, s: Session) -> None:
    declare(b, "orders", **{"x-dedup-window": 60_000})
    for _ in range(3):
        b.publish(s, msg("orders", b"order 7", message_id="order-7"))
    b.publish(s, msg("orders", b"order 8", message_id="order-8"))
    b.publish(s, msg("orders", b"no id"))
    b.publish(s, msg("orders", b"no id"))
    assert [m.body for m in ready(b, "orders")] == [b"order 7", b"order 8", b"no id", b"no id"]
    assert s.take_events() == [Confirm(seq=6, multiple=True)]  # every publish confirmed


def test_dedup_forgets_after_the_window(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-dedup-window": 1000})
    b.publish(s, msg("q", b"1", message_id="m"))
    b.now += 0.5
    b.publish(s, msg("q", b"2", message_id="m"))
    b.now += 0.6
    b.publish(s, msg("q", b"3", message_id="m"))
    assert [m.body for m in ready(b, "q")] == [b"1", b"3"]


def test_exchange_dedup_drops_the_repeat_before_routing(b: Broker, s: Session) -> None:
    b.declare_exchange(
        ExchangeSpec(name="events", type="fanout", arguments={"x-dedup-window": 60_000})
    )
    declare(b, "a")
    declare(b, "b")
    b.bind_queue("o", "a", "events")
    b.bind_queue("o", "b", "events")
    b.publish(s, msg("", b"1", exchange="events", message_id="e1"))
    b.publish(s, msg("", b"1 again", exchange="events", message_id="e1"))
    assert [m.body for m in ready(b, "a")] == [b"1"] and [m.body for m in ready(b, "b")] == [b"1"]


def test_a_refused_publish_leaves_its_id_for_the_retry(b: Broker, s: Session) -> None:
    """A nack says "not taken": remembering its id would confirm the retry and drop it."""
    declare(
        b, "orders", **{"x-dedup-window": 60_000, "x-max-length": 1, "x-overflow": "reject-publish"}
    )
    b.publish(s, msg("orders", b"order 1", message_id="o-1"))
    b.publish(s, msg("orders", b"order 2", message_id="o-2"))  # nacked: the queue is full
    b.get(b.open_session("worker"), "orders", auto_ack=True)
    b.publish(s, msg("orders", b"order 2", message_id="o-2"))  # the retry the docs advise
    assert [m.body for m in ready(b, "orders")] == [b"order 2"]
    confirms = [e for e in s.take_events() if isinstance(e, Confirm)]
    assert [(c.seq, c.ok) for c in confirms] == [(1, True), (2, False), (3, True)]


def test_an_exchange_window_remembers_no_refused_publish(b: Broker, s: Session) -> None:
    b.declare_exchange(
        ExchangeSpec(name="events", type="fanout", arguments={"x-dedup-window": 60_000})
    )
    declare(b, "q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    b.bind_queue("o", "q", "events")
    b.publish(s, msg("", b"1", exchange="events", message_id="e1"))
    b.publish(s, msg("", b"2", exchange="events", message_id="e2"))  # nacked
    b.get(b.open_session("worker"), "q", auto_ack=True)
    b.publish(s, msg("", b"2", exchange="events", message_id="e2"))
    assert [m.body for m in ready(b, "q")] == [b"2"]


def test_a_publish_the_store_could_not_write_leaves_its_id_for_the_retry() -> None:
    broker = Broker(durable=True)
    session = broker.open_session("o")
    broker.declare_queue(
        "o", QueueSpec(name="pay", durable=True, arguments={"x-dedup-window": 60_000})
    )
    assert broker.journal is not None
    broker.batch_committed(broker.journal.take())
    broker.publish(session, msg("pay", b"charge", message_id="p-1", persistent=True))
    broker.batch_failed(broker.journal.take(), "disk full")  # nacked: RESOURCE_ERROR
    broker.publish(session, msg("pay", b"charge", message_id="p-1", persistent=True))
    assert broker.journal.batch.confirms  # the retry waits for the store, not a duplicate


def test_bad_dedup_window_is_refused(b: Broker) -> None:
    with pytest.raises(PreconditionFailed, match="x-dedup-window"):
        b.declare_exchange(ExchangeSpec(name="x", type="direct", arguments={"x-dedup-window": 0}))
    with pytest.raises(PreconditionFailed, match="x-dedup-window"):
        declare(b, "q", **{"x-dedup-window": "1m"})


async def test_dedup_survives_a_restart_so_retries_stay_single(tmp_path: Path) -> None:
    args = {"x-dedup-window": 3_600_000}
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("payments", durable=True, arguments=args)
        await conn.publish("", "payments", b"charge 10", persistent=True, message_id="pay-1")
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        # The publisher lost its confirm and retries with the same id after the restart.
        await conn.publish("", "payments", b"charge 10", persistent=True, message_id="pay-1")
        info = await conn.declare_queue("payments", durable=True, arguments=args)
        assert info.message_count == 1


# --- delayed delivery --------------------------------------------------------------------------


def test_x_delay_holds_a_message_until_it_is_due(b: Broker, s: Session) -> None:
    declare(b, "q")
    b.consume(s, "q")
    b.publish(s, msg("q", b"later", headers={"x-delay": 5000}))
    b.publish(s, msg("q", b"sooner", headers={"x-delay": 1000}))
    b.publish(s, msg("q", b"now"))
    assert bodies_for(b, s) == [b"now"]
    assert b.queues["q"].delayed == 2 and len(b.queues["q"]) == 0
    assert b.next_deadline() == b.now + 1.0
    b.now += 1.0
    b.expire()
    assert bodies_for(b, s) == [b"sooner"]
    b.now += 4.0
    b.expire()
    assert bodies_for(b, s) == [b"later"] and b.next_deadline() is None


def test_ttl_counts_from_when_a_delayed_message_is_ready(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000})
    b.publish(s, msg("q", b"x", headers={"x-delay": 10_000}))
    b.now += 10.5
    b.expire()
    assert [m.body for m in ready(b, "q")] == [b"x"]
    b.now += 0.5
    b.expire()
    assert ready(b, "q") == []


def test_bad_x_delay_values_mean_no_delay(b: Broker, s: Session) -> None:
    declare(b, "q")
    for delay in (0, -5, "1000", 1.5):
        b.publish(s, msg("q", headers={"x-delay": delay}))
    assert len(b.queues["q"]) == 4 and b.queues["q"].delayed == 0


async def test_delay_end_to_end_with_a_mock_clock(
    autojump_clock: object, conn: mqroute.Connection
) -> None:
    import trio

    await conn.declare_queue("reminders")
    start = trio.current_time()
    await conn.publish("", "reminders", b"ping", headers={"x-delay": 90_000})
    async with conn.consume("reminders") as messages:
        reminder = await messages.__anext__()
        assert 90.0 <= trio.current_time() - start < 91.0
        assert reminder.body == b"ping"
        await reminder.ack()


async def test_delayed_messages_are_durable_and_kept_on_disk(tmp_path: Path) -> None:
    from mqroute.server.store import SqliteStore

    broker = Broker(durable=True)
    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q", durable=True)
            await conn.publish(
                "", "q", b"in an hour", persistent=True, headers={"x-delay": 3_600_000}
            )
            [(_, _, entry)] = broker.queues["q"]._delayed
            assert entry.message is None  # committed: its body lives on disk only
    broker = Broker(durable=True)
    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)) as address:
        q = broker.queues["q"]
        assert q.delayed == 1 and len(q) == 0
        deadline = broker.next_deadline()
        assert deadline is not None and 3590 < deadline - broker.now <= 3600
        broker.expire(now=deadline)
        [entry] = q.ready_entries()
        assert entry.message is None  # still on disk: a get reads it back
        async with mqroute.connect(address.url) as conn:
            message = await conn.get("q")
            assert message is not None and message.body == b"in an hour"


# --- retry backoff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "waits"),
    [
        ({}, [1.0, 2.0, 3.0, 3.5]),  # linear, capped by x-delayed-retry-max
        ({"x-delayed-retry-multiplier": 1}, [1.0, 1.0, 1.0, 1.0]),  # constant
        ({"x-delayed-retry-multiplier": 2}, [1.0, 2.0, 3.5, 3.5]),  # exponential, capped
    ],
)
def test_nacked_messages_wait_longer_each_time(
    b: Broker, s: Session, extra: dict[str, int], waits: list[float]
) -> None:
    declare(b, "q", **{"x-delayed-retry-min": 1000, "x-delayed-retry-max": 3500, **extra})
    b.publish(s, msg("q", b"flaky"))
    seen = []
    for _ in range(4):
        d = b.get(s, "q")
        assert d is not None
        b.nack(s, d.delivery_tag, requeue=True)
        assert b.get(s, "q") is None  # held back, not spinning
        due = b.next_deadline()
        assert due is not None
        seen.append(round(due - b.now, 3))
        b.now = due
        b.expire()
    assert seen == waits


def test_backoff_with_delivery_limit_ends_in_the_dead_letter_queue(b: Broker, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-delayed-retry-min": 100, "x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"poison"))
    for _ in range(2):
        b.now = b.next_deadline() or b.now
        b.expire()
        d = b.get(s, "q")
        assert d is not None
        b.nack(s, d.delivery_tag, requeue=True)
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "delivery_limit"


# --- ack deadlines -----------------------------------------------------------------------------


def test_an_unacked_delivery_past_its_deadline_is_requeued_and_reported(
    b: Broker, s: Session
) -> None:
    declare(b, "q", **{"x-consumer-timeout": 1000})
    other = b.open_session("other")
    b.consume(s, "q", prefetch=1)
    b.publish(s, msg("q", b"slow"))
    [first] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.consume(other, "q", prefetch=1)
    b.now += 1.0
    b.expire()
    events = b.take_events(s)
    assert (
        DeliveryTimedOut(consumer_tag=first.consumer_tag, delivery_tag=first.delivery_tag) in events
    )
    again = [e for e in b.take_events(other) + events if isinstance(e, Delivery)]
    assert [d.redelivered for d in again] == [True]
    b.ack(s, first.delivery_tag)  # crossed on the wire with the timeout: ignored, no error


def test_a_multiple_ack_across_a_timed_out_delivery_ignores_that_tag(b: Broker, s: Session) -> None:
    declare(b, "q", **{"x-consumer-timeout": 1000})
    b.consume(s, "q", prefetch=3)
    b.publish(s, msg("q", b"slow"))
    b.now += 0.5
    b.publish(s, msg("q", b"fast"))
    slow, fast = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.now += 0.5
    b.expire()  # "slow" timed out and went back to the queue; it is delivered again
    [again] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    assert again.redelivered and slow.delivery_tag < fast.delivery_tag < again.delivery_tag
    b.ack(s, slow.delivery_tag, multiple=True)  # covers only the timed-out tag: no error
    b.ack(s, fast.delivery_tag, multiple=True)
    assert b.queues["q"].unacked == 1  # "again" is still out
    b.ack(s, again.delivery_tag)
    assert b.queues["q"].unacked == 0 and not s.timed_out


def test_a_client_that_never_settles_timed_out_tags_does_not_grow_the_session(
    b: Broker, s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mqroute.core.broker as broker_module

    monkeypatch.setattr(broker_module, "TIMED_OUT_MEMORY", 3)
    declare(b, "q", **{"x-consumer-timeout": 1000})
    b.consume(s, "q", prefetch=1)
    b.publish(s, msg("q", b"never acked"))
    for _ in range(10):  # times out, is delivered again, times out again ...
        b.now += 1.0
        b.expire()
    assert len(s.timed_out) == 3 and max(s.timed_out) == 10


def test_extend_moves_the_deadline(b: Broker, s: Session) -> None:
    declare(b, "q")
    b.consume(s, "q", arguments={"x-consumer-timeout": 1000})  # a consumer argument
    b.publish(s, msg("q", b"long job"))
    [d] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.now += 0.9
    b.extend(s, d.delivery_tag, 5000)
    b.now += 1.0
    b.expire()
    assert b.queues["q"].unacked == 1
    b.now += 4.0
    b.expire()
    assert b.queues["q"].unacked == 1  # redelivered to the same consumer
    assert any(isinstance(e, DeliveryTimedOut) for e in b.take_events(s))


def test_extending_an_unknown_tag_is_precondition_failed(b: Broker, s: Session) -> None:
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 9"):
        b.extend(s, 9, 1000)


async def test_ack_deadline_through_the_sdk(
    autojump_clock: object, conn: mqroute.Connection
) -> None:
    import trio

    from mqroute.errors import UsageError

    await conn.declare_queue("jobs", arguments={"x-consumer-timeout": 10_000})
    await conn.publish("", "jobs", b"job")
    async with conn.consume("jobs", prefetch=2) as messages:
        slow = await messages.__anext__()
        await slow.extend(15)  # still working: 15 s from now
        await trio.sleep(12)
        assert not slow.timed_out
        again = await messages.__anext__()  # after 15 s more it went back, and came again
        assert again.redelivered and slow.timed_out
        with pytest.raises(UsageError, match="passed its ack deadline"):
            await slow.ack()
        await again.ack()


# --- redrive -----------------------------------------------------------------------------------


def test_redrive_sends_dead_letters_home(b: Broker, s: Session) -> None:
    for name in ("orders", "payments"):
        declare(b, name, **{"x-dead-letter-exchange": "dlx"})
        for i in range(2):
            b.publish(s, msg(name, f"{name} {i}".encode()))
            d = b.get(s, name)
            assert d is not None
            b.reject(s, d.delivery_tag, requeue=False)
    b.publish(s, msg("dead", b"no history"))
    assert b.redrive("o", "dead", limit=3) == Redriven(moved=3, more=False)
    assert [m.body for m in ready(b, "orders")] == [b"orders 0", b"orders 1"]
    assert [m.body for m in ready(b, "payments")] == [b"payments 0"]
    assert b.redrive("o", "dead") == Redriven(moved=1, more=False)
    assert [m.body for m in ready(b, "dead")] == [b"no history"]  # nowhere to go: stays


def test_redrive_to_an_exchange(b: Broker, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="retry", type="fanout"))
    declare(b, "retry-q")
    b.bind_queue("o", "retry-q", "retry")
    b.publish(s, msg("dead", b"x"))
    assert b.redrive("o", "dead", to_exchange="retry") == Redriven(moved=1, more=False)
    assert [m.body for m in ready(b, "retry-q")] == [b"x"]
    with pytest.raises(NotFound):
        b.redrive("o", "dead", to_exchange="missing")


async def test_redrive_through_the_cli(server: object, conn: mqroute.Connection) -> None:
    import sys

    import trio

    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dlq")
    await conn.bind_queue("dlq", "dlx")
    await conn.declare_queue("work", arguments={"x-dead-letter-exchange": "dlx"})
    for i in range(3):
        await conn.publish("", "work", bytes([i]))
        m = await conn.get("work")
        assert m is not None
        await m.reject(requeue=False)
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", "redrive", "dlq", "--limit", "2", "--url", server.url],  # type: ignore[attr-defined]
        capture_stdout=True,
    )
    assert result.stdout.decode().strip() == "moved 2 messages out of 'dlq'"
    assert (await conn.declare_queue("work", passive=True)).message_count == 2


def test_dead_letter_chains_follow_each_queue_dlx(b: Broker, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="dlx2", type="fanout"))
    declare(b, "final")
    b.bind_queue("o", "final", "dlx2")
    declare(b, "stage2", **{"x-dead-letter-exchange": "dlx2", "x-message-ttl": 0})
    b.declare_exchange(ExchangeSpec(name="dlx1", type="fanout"))
    b.bind_queue("o", "stage2", "dlx1")
    declare(b, "stage1", **{"x-dead-letter-exchange": "dlx1"})
    b.publish(s, msg("stage1", b"x"))
    d = b.get(s, "stage1")
    assert d is not None
    b.reject(s, d.delivery_tag, requeue=False)  # rejected → stage2 → expires at once → final
    [dead] = ready(b, "final")
    deaths = (dead.properties.headers or {})["x-death"]
    assert [(x["queue"], x["reason"]) for x in deaths] == [
        ("stage2", "expired"),
        ("stage1", "rejected"),
    ]
    assert (dead.properties.headers or {})["x-first-death-queue"] == "stage1"


async def test_queue_arguments_through_the_sdk(conn: mqroute.Connection) -> None:
    """Length limits, delivery limits, alternate exchanges and consumer competition, end to
    end: what the core tests pin, seen by a real client."""
    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dlq")
    await conn.bind_queue("dlq", "dlx")
    # drop-head
    await conn.declare_queue(
        "recent", arguments={"x-max-length": 2, "x-dead-letter-exchange": "dlx"}
    )
    async with conn.publisher() as pub:
        for i in range(3):
            await pub.publish("", "recent", bytes([i]))
    assert (await conn.declare_queue("recent", passive=True)).message_count == 2
    # delivery limit with x-delivery-count on redeliveries
    await conn.declare_queue(
        "poison", arguments={"x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"}
    )
    await conn.publish("", "poison", b"p")
    counts = []
    for _ in range(2):
        m = await conn.get("poison")
        assert m is not None
        counts.append(m.headers.get("x-delivery-count"))
        await m.nack(requeue=True)
    assert counts == [None, 1]
    assert await conn.get("poison") is None
    reasons = []
    while (dead := await conn.get("dlq", auto_ack=True)) is not None:
        reasons.append(dead.headers["x-death"][0]["reason"])
    assert reasons == ["maxlen", "delivery_limit"]
    # alternate exchange
    await conn.declare_exchange("shop", "direct", arguments={"alternate-exchange": "dlx"})
    await conn.publish("shop", "nobody-binds-this", b"caught", mandatory=True)
    caught = await conn.get("dlq", auto_ack=True)
    assert caught is not None and caught.body == b"caught"
    # single active consumer and consumer priority
    await conn.declare_queue("sac", arguments={"x-single-active-consumer": True})
    async with conn.consume("sac", prefetch=5) as first, conn.consume("sac", prefetch=5):
        await conn.publish("", "sac", b"only the first")
        got = await first.__anext__()
        assert got.consumer_tag == first.tag
        await got.ack()


async def test_unused_queue_expires_through_the_sdk(
    autojump_clock: object, conn: mqroute.Connection
) -> None:
    import trio

    from mqroute.errors import NotFound

    await conn.declare_queue("temporary", arguments={"x-expires": 60_000})
    await trio.sleep(59)
    await conn.declare_queue("temporary", passive=True)  # use: the lease starts again
    await trio.sleep(61)
    with pytest.raises(NotFound):
        await conn.declare_queue("temporary", passive=True)


async def test_a_retry_wait_survives_a_restart(tmp_path: Path) -> None:
    from mqroute.server.store import SqliteStore

    args = {"x-delayed-retry-min": 3_600_000}
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True, arguments=args)
        await conn.publish("", "q", b"flaky", persistent=True)
        m = await conn.get("q")
        assert m is not None
        await m.nack(requeue=True)
        await conn.declare_queue("q", durable=True, arguments=args)  # the nack is handled
    broker = Broker(durable=True)
    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)):
        q = broker.queues["q"]
        assert q.delayed == 1 and len(q) == 0
        due = broker.next_deadline()
        assert due is not None and 3590 < due - broker.now <= 3600


async def test_messages_a_consume_block_never_handed_out_keep_their_attempts(
    tmp_path: Path,
) -> None:
    """Ending a consume block releases its buffered messages: with x-delivery-limit 0 any
    counted attempt would drop them, even across a restart."""
    args = {"x-delivery-limit": 0}
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("tasks", durable=True, arguments=args)
        for i in range(5):
            await conn.publish("", "tasks", f"task {i}", persistent=True)
        for _ in range(2):  # like two runs of `mqroute consume tasks --count 1`
            with trio.fail_after(5):  # a counted release would have dropped them all
                async with conn.consume("tasks", prefetch=5) as messages:
                    async for first in messages:
                        await first.ack()
                        break
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        left = []
        while (m := await conn.get("tasks", auto_ack=True)) is not None:
            assert not m.redelivered and "x-delivery-count" not in m.headers
            left.append(m.body)
        assert left == [b"task 2", b"task 3", b"task 4"]
