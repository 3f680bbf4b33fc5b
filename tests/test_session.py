"""core/session.py: one client's delivery tags, unacked deliveries, consumers and outbox."""

from __future__ import annotations

import pytest

from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.errors import InvalidArgument, PreconditionFailed, ResourceLocked
from mqroute.model import Confirmed, Delivery, DeliveryTimedOut, Message, Properties, QueueSpec

T0 = 1_700_000_000.0


def msg(body: bytes = b"x") -> Message:
    return Message(exchange="", routing_key="q", body=body, properties=Properties())


def setup(**arguments: object) -> tuple[Vhost, Session]:
    b = Vhost()
    b.declare_queue("c1", QueueSpec(name="q", arguments=dict(arguments)), now=T0)
    return b, b.open_session("c1")


def deliveries(b: Vhost, s: Session) -> list[Delivery]:
    return [e for e in b.take_events(s, now=T0) if isinstance(e, Delivery)]


def test_delivery_tags_count_from_one_per_session() -> None:
    b, s = setup()
    other = b.open_session("c2")
    b.consume(s, "q", now=T0)
    for _ in range(3):
        b.publish(other, msg(), now=T0)
    assert [d.delivery_tag for d in deliveries(b, s)] == [1, 2, 3]


def test_multiple_settles_every_tag_up_to_it_and_zero_means_all() -> None:
    b, s = setup()
    b.consume(s, "q", now=T0)
    for _ in range(4):
        b.publish(s, msg(), now=T0)
    deliveries(b, s)
    assert [u.tag for u in s.take_settled(2, multiple=True)] == [1, 2]
    assert sorted(u.tag for u in s.take_settled(0, multiple=True)) == [3, 4]
    assert not s.unacked


def test_an_unknown_tag_is_precondition_failed() -> None:
    _, s = setup()
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 9"):
        s.take_settled(9, multiple=False)
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 9"):
        s.take_settled(9, multiple=True)


def test_a_settle_that_crossed_its_timeout_is_ignored_once() -> None:
    b, s = setup(**{"x-consumer-timeout": 1000})
    b.consume(s, "q", now=T0)
    b.publish(s, msg(), now=T0)
    (d,) = deliveries(b, s)
    b.expire(now=T0 + 2)
    timed_out, again = b.take_events(s, now=T0 + 2)  # requeued, and delivered again
    assert timed_out == DeliveryTimedOut(consumer_tag=d.consumer_tag, delivery_tag=1)
    assert isinstance(again, Delivery) and again.delivery_tag == 2
    assert s.take_settled(d.delivery_tag, multiple=False) == []  # late, not an error
    with pytest.raises(PreconditionFailed):  # but only once
        s.take_settled(d.delivery_tag, multiple=False)


def test_confirms_come_after_the_deliveries_emitted_before_them() -> None:
    b, s = setup()
    b.consume(s, "q", now=T0)
    b.publish(s, msg(), now=T0)
    events = b.take_events(s, now=T0)
    assert [type(e) for e in events] == [Delivery, Confirmed]


def test_new_consumer_checks_before_it_changes_anything() -> None:
    b, s = setup()
    q = b.queues["q"]

    def new(tag: str = "", **kw: object) -> object:
        options: dict[str, object] = {
            "prefetch": 0,
            "auto_ack": False,
            "exclusive": False,
            "arguments": {},
            "limit": 2,
        }
        options.update(kw)
        return s.new_consumer(q, tag, **options)  # type: ignore[arg-type]

    with pytest.raises(InvalidArgument, match="prefetch must be from 0 to 65535"):
        new(prefetch=70000)
    with pytest.raises(PreconditionFailed, match="x-priority must be an integer"):
        new(arguments={"x-priority": "high"})
    assert not s.consumers
    new("a")
    with pytest.raises(PreconditionFailed, match="consumer tag 'a' is already in use"):
        new("a")
    b.consume(s, "q", consumer_tag="b", now=T0)
    with pytest.raises(PreconditionFailed, match=r"limit of 2 consumers per session"):
        new("c")
    other = b.open_session("c2")
    with pytest.raises(ResourceLocked, match="already has consumers"):
        other.new_consumer(
            q, "x", prefetch=0, auto_ack=False, exclusive=True, arguments={}, limit=10
        )


def test_the_outbox_is_taken_whole_and_empties() -> None:
    b, s = setup()
    b.consume(s, "q", now=T0)
    b.publish(s, msg(b"1"), now=T0)
    assert s.outbox_size() == 1
    assert b.effects.output == {s.id}
    b.take_events(s, now=T0)
    assert s.outbox_size() == 0
