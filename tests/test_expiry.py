"""Message TTL (per queue and per message) and queues that expire unused (x-expires)."""

from __future__ import annotations

from pathlib import Path

import trio

import mqroute
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.model import (
    Delivery,
)

from .core_helpers import declare, msg, ready
from .test_durability import running

# --- TTL ---------------------------------------------------------------------------------------


def test_queue_ttl_expires_and_dead_letters_on_time(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"x"))
    assert b.next_deadline() == b.now + 1.0
    assert b.expire(now=b.now + 0.999) == 0
    assert b.expire(now=b.now + 0.001) == 1
    assert ready(b, "q") == [] and len(b.queues["q"]) == 0
    [dead] = ready(b, "dead")
    assert (dead.properties.headers or {})["x-death"][0]["reason"] == "expired"
    assert b.next_deadline() is None


def test_expiry_is_not_only_at_the_head(b: Vhost, s: Session) -> None:
    declare(b, "q")
    b.publish(s, msg("q", b"long", expiration="60000"))
    b.publish(s, msg("q", b"short", expiration="10"))
    b.publish(s, msg("q", b"forever"))
    assert b.expire(now=b.now + 0.01) == 1
    assert [m.body for m in ready(b, "q")] == [b"long", b"forever"]
    assert len(b.queues["q"]) == 2
    d = b.get(s, "q", auto_ack=True)
    assert d is not None and d.message.body == b"long"


def test_the_smaller_of_queue_and_message_ttl_wins(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 5000})
    b.publish(s, msg("q", expiration="2000"))
    b.publish(s, msg("q", expiration="9000"))
    assert b.next_deadline() == b.now + 2.0
    assert b.expire(now=b.now + 5.0) == 2


def test_ttl_zero_delivers_to_a_waiting_consumer_or_expires(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"nobody waits"))
    assert ready(b, "q") == [] and [m.body for m in ready(b, "dead")] == [b"nobody waits"]
    b.consume(s, "q")
    b.publish(s, msg("q", b"taken"))
    assert [d.message.body for d in b.take_events(s) if isinstance(d, Delivery)] == [b"taken"]


def test_requeue_keeps_the_original_expiry(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-dead-letter-exchange": "dlx"})
    b.publish(s, msg("q", b"slow work", expiration="1000"))
    d = b.get(s, "q")
    assert d is not None
    assert b.expire(now=b.now + 2.0) == 0  # being worked on: not expired under the consumer's feet
    b.nack(s, d.delivery_tag, requeue=True)
    assert ready(b, "q") == []
    [dead] = ready(b, "dead")
    death = (dead.properties.headers or {})["x-death"][0]
    assert death["reason"] == "expired" and death["original-expiration"] == "1000"


def test_a_delivered_message_does_not_expire_until_it_comes_back(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-message-ttl": 1000})
    b.publish(s, msg("q"))
    d = b.get(s, "q")
    assert d is not None
    b.expire(now=b.now + 5)
    b.ack(s, d.delivery_tag)
    assert b.queues["q"].unacked == 0 and b.next_deadline() is None


async def test_ttl_end_to_end_with_a_mock_clock(
    autojump_clock: object, conn: mqroute.Connection
) -> None:

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
    broker = Vhost(durable=True)
    from mqroute.server.store import SqliteStore

    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)):
        [entry] = broker.queues["q"].ready_entries()
        assert entry.expires_at is not None
        assert 3590 < entry.expires_at - broker.now <= 3600
        assert broker.next_deadline() == entry.expires_at


# --- unused queues expire -----------------------------------------------------------------------


def test_unused_queue_expires_and_use_restarts_the_lease(b: Vhost, s: Session) -> None:
    declare(b, "lease", **{"x-expires": 1000})
    assert b.get(s, "lease", now=b.now + 0.8) is None  # a get is use
    b.expire(now=b.now + 0.8)
    assert "lease" in b.queues
    b.expire(now=b.now + 0.2)
    assert "lease" not in b.queues


def test_a_queue_with_consumers_does_not_expire(b: Vhost, s: Session) -> None:
    declare(b, "busy", **{"x-expires": 1000})
    tag = b.consume(s, "busy")
    b.expire(now=b.now + 10)
    assert "busy" in b.queues and b.next_deadline() is None
    b.cancel(s, tag)
    assert b.next_deadline() == b.now + 1.0
