"""The contract's one value: what core calls leave for the shell, from plain calls on the core."""

from __future__ import annotations

from mqroute.core.effects import Effects
from mqroute.core.vhost import Vhost
from mqroute.model import Message, Properties, QueueSpec


def message(queue: str, **headers: object) -> Message:
    return Message(
        exchange="", routing_key=queue, body=b"x", properties=Properties(headers=headers or None)
    )


def test_the_earliest_deadline_is_kept() -> None:
    effects = Effects()
    effects.due_at(5.0)
    effects.due_at(3.0)
    effects.due_at(4.0)
    assert effects.deadline == 3.0


def test_a_delivery_notes_that_the_consumer_session_has_output() -> None:
    broker = Vhost()
    broker.declare_queue("o", QueueSpec(name="q"))
    producer, consumer = broker.open_session("p"), broker.open_session("c")
    broker.consume(consumer, "q", prefetch=10)
    broker.effects.output.clear()
    broker.publish(producer, message("q"))
    assert broker.effects.output == {producer.id, consumer.id}  # the confirm, the delivery


def test_a_delayed_message_asks_for_the_timer_at_its_time() -> None:
    broker = Vhost()
    broker.declare_queue("o", QueueSpec(name="q"), now=1000.0)
    broker.publish(broker.open_session("p"), message("q", **{"x-delay": 2500}), now=1000.0)
    assert broker.effects.deadline == 1002.5
    assert broker.next_deadline() == 1002.5


def test_time_comes_in_with_each_call() -> None:
    broker = Vhost()
    broker.declare_queue("o", QueueSpec(name="q", arguments={"x-message-ttl": 1000}), now=50.0)
    broker.publish(broker.open_session("p"), message("q"), now=50.0)
    assert broker.expire(now=50.5) == 0
    assert broker.expire(now=51.0) == 1


def test_a_closed_session_leaves_no_output_to_wake() -> None:
    broker = Vhost()
    broker.declare_queue("o", QueueSpec(name="q"))
    session = broker.open_session("p")
    broker.publish(session, message("q"))
    assert session.id in broker.effects.output
    broker.close_session(session)
    assert session.id not in broker.effects.output


def test_a_durable_broker_shares_its_journal_with_the_effects() -> None:
    broker = Vhost(durable=True)
    assert broker.effects.journal is broker.journal
    broker.declare_queue("o", QueueSpec(name="q", durable=True))
    assert len(broker.effects.journal or ()) == 1
