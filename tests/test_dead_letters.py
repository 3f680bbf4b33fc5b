"""Dead-lettering: x-death, the DLX and its routing key, cycles, and redrive out of a
dead-letter queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import mqroute
from mqroute.core.dead_letter import Redriven
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.errors import MessageNacked, NotFound, PreconditionFailed
from mqroute.model import (
    Confirmed,
    Delivery,
    ExchangeSpec,
    Message,
)

from .core_helpers import declare, msg, ready
from .test_durability import running


def test_rejected_message_goes_to_the_dlx_with_x_death(b: Vhost, s: Session) -> None:
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


def test_dead_letter_routing_key_replaces_the_key(b: Vhost, s: Session) -> None:
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


def test_second_death_in_the_same_queue_counts_up(b: Vhost, s: Session) -> None:
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


def test_a_second_death_keeps_the_first_deaths_details_and_counts(b: Vhost) -> None:
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


def test_automatic_dead_letter_cycle_is_dropped(b: Vhost, s: Session) -> None:
    declare(b, "loop", **{"x-dead-letter-exchange": "", "x-max-length": 1})
    # drop-head dead-letters the older message back to "loop" itself: a cycle, dropped
    b.publish(s, msg("loop", b"1"))
    b.publish(s, msg("loop", b"2"))
    assert [m.body for m in ready(b, "loop")] == [b"2"]


def test_rejected_messages_may_cycle(b: Vhost, s: Session) -> None:
    declare(b, "again", **{"x-dead-letter-exchange": ""})
    b.publish(s, msg("again", b"x"))
    for _ in range(3):
        d = b.get(s, "again")
        assert d is not None
        b.reject(s, d.delivery_tag, requeue=False)
    [back] = ready(b, "again")
    assert (back.properties.headers or {})["x-death"][0]["count"] == 3


def test_max_length_drop_head_dead_letters_the_oldest(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    for i in range(4):
        b.publish(s, msg("q", bytes([i])))
    assert [m.body for m in ready(b, "q")] == [b"\x02", b"\x03"]
    dead = ready(b, "dead")
    assert [m.body for m in dead] == [b"\x00", b"\x01"]
    assert (dead[0].properties.headers or {})["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes_counts_ready_bodies(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        b.publish(s, msg("q", body))
    assert [m.body for m in ready(b, "q")] == [b"bbbb", b"cccc"]
    assert b.queues["q"].ready_bytes == 8


def test_reject_publish_nacks_the_publisher(b: Vhost, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-max-length": 1, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"in"))
    b.publish(s, msg("q", b"refused"))
    events = s.take_events()
    assert events[0] == Confirmed(seq=1, multiple=True)
    assert events[1].ok is False and "is full" in (events[1].error_text or "")  # type: ignore[union-attr]
    assert [m.body for m in ready(b, "q")] == [b"in"] and ready(b, "dead") == []


def test_reject_publish_dlx_also_dead_letters(b: Vhost, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-max-length": 0, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"refused"))
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "maxlen"


def test_delivery_limit_dead_letters_after_too_many_failures(b: Vhost, s: Session) -> None:
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


def test_delivery_limit_applies_when_a_consumer_dies(b: Vhost) -> None:
    declare(b, "q", **{"x-delivery-limit": 0})
    worker = b.open_session("w")
    b.consume(worker, "q")
    b.publish(worker, msg("q", b"crashes the worker"))
    assert any(isinstance(e, Delivery) for e in b.take_events(worker))
    b.close_session(worker)
    assert ready(b, "q") == []  # dropped: no DLX


def test_a_released_delivery_is_no_attempt(b: Vhost, s: Session) -> None:
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


def test_a_multiple_release_gives_back_every_delivery_up_to_the_tag(b: Vhost, s: Session) -> None:
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
    b: Vhost, arguments: dict[str, Any], problem: str
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


# --- redrive -----------------------------------------------------------------------------------


def test_redrive_sends_dead_letters_home(b: Vhost, s: Session) -> None:
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


def test_redrive_to_an_exchange(b: Vhost, s: Session) -> None:
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


def test_dead_letter_chains_follow_each_queue_dlx(b: Vhost, s: Session) -> None:
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
    broker = Vhost(durable=True)
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
