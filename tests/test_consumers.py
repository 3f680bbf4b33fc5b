"""Consumers: competing for a queue, priorities, and ack deadlines (x-consumer-timeout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.errors import PreconditionFailed
from mqroute.model import (
    Delivery,
    DeliveryTimedOut,
)

from .core_helpers import bodies_for, declare, msg, ready
from .test_durability import running

# --- competition between consumers --------------------------------------------------------------


def test_single_active_consumer_gets_everything_until_it_goes(b: Vhost) -> None:
    declare(b, "q", **{"x-single-active-consumer": True})
    first, second = b.open_session("a"), b.open_session("b")
    b.consume(first, "q", prefetch=1)
    b.consume(second, "q", prefetch=1)
    b.publish(first, msg("q", b"1"))
    b.publish(first, msg("q", b"2"))
    assert bodies_for(b, first) == [b"1"] and bodies_for(b, second) == []
    b.close_session(first)  # its unacked "1" is requeued; the second consumer takes over
    assert bodies_for(b, second) == [b"1"]
    assert b.queues["q"].active in second.consumers.values()


def test_consumer_priority_serves_higher_first_while_it_has_credit(b: Vhost) -> None:
    declare(b, "q")
    low, high = b.open_session("low"), b.open_session("high")
    b.consume(low, "q", prefetch=10)
    b.consume(high, "q", prefetch=2, arguments={"x-priority": 5})
    for i in range(4):
        b.publish(low, msg("q", bytes([i])))
    assert bodies_for(b, high) == [b"\x00", b"\x01"]  # until its credit runs out
    assert bodies_for(b, low) == [b"\x02", b"\x03"]


def test_bad_consumer_priority_is_refused(b: Vhost, s: Session) -> None:
    declare(b, "q")
    with pytest.raises(PreconditionFailed, match="x-priority"):
        b.consume(s, "q", arguments={"x-priority": "high"})
    assert not b.queues["q"].consumers


# --- priority queues ---------------------------------------------------------------------------


def test_priority_queue_delivers_higher_first_fifo_within(b: Vhost, s: Session) -> None:
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


def test_requeued_message_returns_ahead_within_its_priority(b: Vhost, s: Session) -> None:
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


def test_priority_with_max_length_drops_from_the_head(b: Vhost, s: Session) -> None:
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


# --- ack deadlines -----------------------------------------------------------------------------


def test_an_unacked_delivery_past_its_deadline_is_requeued_and_reported(
    b: Vhost, s: Session
) -> None:
    declare(b, "q", **{"x-consumer-timeout": 1000})
    other = b.open_session("other")
    b.consume(s, "q", prefetch=1)
    b.publish(s, msg("q", b"slow"))
    [first] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.consume(other, "q", prefetch=1)
    b.expire(now=b.now + 1.0)
    events = b.take_events(s)
    assert (
        DeliveryTimedOut(consumer_tag=first.consumer_tag, delivery_tag=first.delivery_tag) in events
    )
    again = [e for e in b.take_events(other) + events if isinstance(e, Delivery)]
    assert [d.redelivered for d in again] == [True]
    b.ack(s, first.delivery_tag)  # crossed on the wire with the timeout: ignored, no error


def test_a_multiple_ack_across_a_timed_out_delivery_ignores_that_tag(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-consumer-timeout": 1000})
    b.consume(s, "q", prefetch=3)
    b.publish(s, msg("q", b"slow"))
    b.publish(s, msg("q", b"fast"), now=b.now + 0.5)
    slow, fast = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.expire(now=b.now + 0.5)  # "slow" timed out and went back to the queue; it is delivered again
    [again] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    assert again.redelivered and slow.delivery_tag < fast.delivery_tag < again.delivery_tag
    b.ack(s, slow.delivery_tag, multiple=True)  # covers only the timed-out tag: no error
    b.ack(s, fast.delivery_tag, multiple=True)
    assert b.queues["q"].unacked == 1  # "again" is still out
    b.ack(s, again.delivery_tag)
    assert b.queues["q"].unacked == 0 and not s.timed_out


def test_a_client_that_never_settles_timed_out_tags_does_not_grow_the_session(
    b: Vhost, s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mqroute.core.session as session_module

    monkeypatch.setattr(session_module, "TIMED_OUT_MEMORY", 3)
    declare(b, "q", **{"x-consumer-timeout": 1000})
    b.consume(s, "q", prefetch=1)
    b.publish(s, msg("q", b"never acked"))
    for _ in range(10):  # times out, is delivered again, times out again ...
        b.expire(now=b.now + 1.0)
    assert len(s.timed_out) == 3 and max(s.timed_out) == 10


def test_extend_moves_the_deadline(b: Vhost, s: Session) -> None:
    declare(b, "q")
    b.consume(s, "q", arguments={"x-consumer-timeout": 1000})  # a consumer argument
    b.publish(s, msg("q", b"long job"))
    [d] = [e for e in b.take_events(s) if isinstance(e, Delivery)]
    b.extend(s, d.delivery_tag, 5000, now=b.now + 0.9)
    b.expire(now=b.now + 1.0)
    assert b.queues["q"].unacked == 1
    b.expire(now=b.now + 4.0)
    assert b.queues["q"].unacked == 1  # redelivered to the same consumer
    assert any(isinstance(e, DeliveryTimedOut) for e in b.take_events(s))


def test_extending_an_unknown_tag_is_precondition_failed(b: Vhost, s: Session) -> None:
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 9"):
        b.extend(s, 9, 1000)


async def test_ack_deadline_through_the_sdk(
    autojump_clock: object, conn: mqroute.Connection
) -> None:

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
