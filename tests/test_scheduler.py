"""core/scheduler.py: the core's time, taken from each call; what falls due, and when."""

from __future__ import annotations

from mqroute.core.effects import Effects
from mqroute.core.scheduler import Scheduler
from mqroute.core.vhost import Vhost
from mqroute.model import Message, Properties, QueueSpec

T0 = 1_700_000_000.0


def message(**props: object) -> Message:
    return Message(exchange="", routing_key="q", body=b"x", properties=Properties(**props))  # type: ignore[arg-type]


def test_time_is_what_the_latest_call_said() -> None:
    scheduler = Scheduler(Effects(journal=None))
    scheduler.at(T0)
    scheduler.at(None)
    assert scheduler.now == T0


def test_x_delay_of_1_to_2_32_ms_delays_and_anything_else_is_ignored() -> None:
    scheduler = Scheduler(Effects(journal=None))
    scheduler.at(T0)
    assert scheduler.ready_at(message(headers={"x-delay": 1500})) == T0 + 1.5
    for ignored in (0, -5, 2**32, "100", 1.5, True):
        assert scheduler.ready_at(message(headers={"x-delay": ignored})) is None, ignored


def test_the_smaller_of_queue_ttl_and_expiration_counts_from_ready() -> None:
    b = Vhost()
    b.declare_queue("c", QueueSpec(name="q", arguments={"x-message-ttl": 5000}), now=T0)
    q = b.queues["q"]
    scheduler = b.scheduler
    assert scheduler.expires_at(q, message(), None) == T0 + 5
    assert scheduler.expires_at(q, message(expiration="2000"), None) == T0 + 2
    assert scheduler.expires_at(q, message(), T0 + 10) == T0 + 15  # delayed: from ready


def test_a_new_earlier_deadline_reaches_the_effects() -> None:
    b = Vhost()
    b.declare_queue("c", QueueSpec(name="q", arguments={"x-message-ttl": 5000}), now=T0)
    b.effects.deadline = None
    s = b.open_session("c")
    b.publish(s, message(), now=T0)
    assert b.effects.deadline == T0 + 5
    assert b.next_deadline() == T0 + 5


def test_an_unused_queue_lapses_after_x_expires_and_use_renews_the_lease() -> None:
    b = Vhost()
    b.declare_queue("c", QueueSpec(name="q", arguments={"x-expires": 10_000}), now=T0)
    q = b.queues["q"]
    b.scheduler.at(T0 + 8)
    b.scheduler.touch(q)  # used at T0 + 8: the lease runs to T0 + 18
    b.scheduler.at(T0 + 12)
    assert b.scheduler.lapsed_leases() == []
    b.scheduler.at(T0 + 18)
    assert b.scheduler.lapsed_leases() == [q]


def test_settled_deliveries_leave_no_ack_deadline_behind() -> None:
    b = Vhost()
    b.declare_queue("c", QueueSpec(name="q", arguments={"x-consumer-timeout": 1000}), now=T0)
    s = b.open_session("c")
    b.consume(s, "q", now=T0)
    b.publish(s, message(), now=T0)
    (delivery,) = [e for e in b.take_events(s, now=T0) if hasattr(e, "delivery_tag")]
    assert b.next_deadline() == T0 + 1
    b.ack(s, delivery.delivery_tag, now=T0 + 0.5)
    assert b.next_deadline() is None
    assert b.scheduler.timed_out(b.sessions) == []
