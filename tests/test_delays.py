"""Delayed delivery (x-delay) and the retry backoff of nacked messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost

from .core_helpers import bodies_for, declare, msg, ready
from .test_durability import running

# --- delayed delivery --------------------------------------------------------------------------


def test_x_delay_holds_a_message_until_it_is_due(b: Vhost, s: Session) -> None:
    declare(b, "q")
    b.consume(s, "q")
    b.publish(s, msg("q", b"later", headers={"x-delay": 5000}))
    b.publish(s, msg("q", b"sooner", headers={"x-delay": 1000}))
    b.publish(s, msg("q", b"now"))
    assert bodies_for(b, s) == [b"now"]
    assert b.queues["q"].delayed == 2 and len(b.queues["q"]) == 0
    assert b.next_deadline() == b.now + 1.0
    b.expire(now=b.now + 1.0)
    assert bodies_for(b, s) == [b"sooner"]
    b.expire(now=b.now + 4.0)
    assert bodies_for(b, s) == [b"later"] and b.next_deadline() is None


def test_ttl_counts_from_when_a_delayed_message_is_ready(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000})
    b.publish(s, msg("q", b"x", headers={"x-delay": 10_000}))
    b.expire(now=b.now + 10.5)
    assert [m.body for m in ready(b, "q")] == [b"x"]
    b.expire(now=b.now + 0.5)
    assert ready(b, "q") == []


def test_bad_x_delay_values_mean_no_delay(b: Vhost, s: Session) -> None:
    declare(b, "q")
    for delay in (0, -5, "1000", 1.5):
        b.publish(s, msg("q", headers={"x-delay": delay}))
    assert len(b.queues["q"]) == 4 and b.queues["q"].delayed == 0


async def test_delay_end_to_end_with_a_mock_clock(
    autojump_clock: object, conn: mqroute.Connection
) -> None:

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

    broker = Vhost(durable=True)
    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q", durable=True)
            await conn.publish(
                "", "q", b"in an hour", persistent=True, headers={"x-delay": 3_600_000}
            )
            [(_, _, entry)] = broker.queues["q"]._delayed
            assert entry.message is None  # committed: its body lives on disk only
    broker = Vhost(durable=True)
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
    b: Vhost, s: Session, extra: dict[str, int], waits: list[float]
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
        b.expire(now=due)
    assert seen == waits


def test_backoff_with_delivery_limit_ends_in_the_dead_letter_queue(b: Vhost, s: Session) -> None:
    declare(
        b,
        "q",
        **{"x-delayed-retry-min": 100, "x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"},
    )
    b.publish(s, msg("q", b"poison"))
    for _ in range(2):
        b.expire(now=b.next_deadline() or b.now)
        d = b.get(s, "q")
        assert d is not None
        b.nack(s, d.delivery_tag, requeue=True)
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "delivery_limit"
