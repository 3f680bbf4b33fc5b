"""Deduplication by message id, on queues and exchanges, across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

import mqroute
from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.errors import PreconditionFailed
from mqroute.model import (
    Confirmed,
    ExchangeSpec,
    QueueSpec,
)

from .core_helpers import declare, msg, ready
from .test_durability import running

# --- deduplication -----------------------------------------------------------------------------


def test_queue_dedup_window_confirms_but_skips_repeats(b: Vhost, s: Session) -> None:
    declare(b, "orders", **{"x-dedup-window": 60_000})
    for _ in range(3):
        b.publish(s, msg("orders", b"order 7", message_id="order-7"))
    b.publish(s, msg("orders", b"order 8", message_id="order-8"))
    b.publish(s, msg("orders", b"no id"))
    b.publish(s, msg("orders", b"no id"))
    assert [m.body for m in ready(b, "orders")] == [b"order 7", b"order 8", b"no id", b"no id"]
    assert s.take_events() == [Confirmed(seq=6, multiple=True)]  # every publish confirmed


def test_dedup_forgets_after_the_window(b: Vhost, s: Session) -> None:
    declare(b, "q", **{"x-dedup-window": 1000})
    b.publish(s, msg("q", b"1", message_id="m"))
    b.publish(s, msg("q", b"2", message_id="m"), now=b.now + 0.5)
    b.publish(s, msg("q", b"3", message_id="m"), now=b.now + 0.6)
    assert [m.body for m in ready(b, "q")] == [b"1", b"3"]


def test_exchange_dedup_drops_the_repeat_before_routing(b: Vhost, s: Session) -> None:
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


def test_a_refused_publish_leaves_its_id_for_the_retry(b: Vhost, s: Session) -> None:
    """A nack says "not taken": remembering its id would confirm the retry and drop it."""
    declare(
        b, "orders", **{"x-dedup-window": 60_000, "x-max-length": 1, "x-overflow": "reject-publish"}
    )
    b.publish(s, msg("orders", b"order 1", message_id="o-1"))
    b.publish(s, msg("orders", b"order 2", message_id="o-2"))  # nacked: the queue is full
    b.get(b.open_session("worker"), "orders", auto_ack=True)
    b.publish(s, msg("orders", b"order 2", message_id="o-2"))  # the retry the docs advise
    assert [m.body for m in ready(b, "orders")] == [b"order 2"]
    confirms = [e for e in s.take_events() if isinstance(e, Confirmed)]
    assert [(c.seq, c.ok) for c in confirms] == [(1, True), (2, False), (3, True)]


def test_an_exchange_window_remembers_no_refused_publish(b: Vhost, s: Session) -> None:
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
    broker = Vhost(durable=True)
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


def test_bad_dedup_window_is_refused(b: Vhost) -> None:
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
