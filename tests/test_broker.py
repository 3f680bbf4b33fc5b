"""The broker core through plain calls: declarations, routing, consuming, settling."""

from __future__ import annotations

from typing import Any

import pytest

from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.errors import (
    AccessRefused,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from mqroute.model import (
    CancelledByBroker,
    Confirmed,
    Delivery,
    ExchangeSpec,
    Message,
    Properties,
    QueueSpec,
    Returned,
)


def msg(exchange: str, key: str, body: bytes = b"", **props: Any) -> Message:
    return Message(exchange=exchange, routing_key=key, body=body, properties=Properties(**props))


def deliveries(broker: Vhost, session: Session) -> list[Delivery]:
    return [e for e in broker.take_events(session) if isinstance(e, Delivery)]


def bodies(broker: Vhost, session: Session) -> list[bytes]:
    return [d.message.body for d in deliveries(broker, session)]


@pytest.fixture
def b() -> Vhost:
    return Vhost()


@pytest.fixture
def s(b: Vhost) -> Session:
    return b.open_session("c1")


def queue(b: Vhost, name: str, owner: str = "c1", **kw: Any) -> str:
    return b.declare_queue(owner, QueueSpec(name=name, **kw)).queue


# --- declarations ----------------------------------------------------------------------------


def test_predeclared_exchanges_exist(b: Vhost) -> None:
    for name, kind in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
    ]:
        assert b.exchanges[name].spec.type == kind


def test_redeclare_same_exchange_is_idempotent(b: Vhost) -> None:
    b.declare_exchange(ExchangeSpec(name="x", type="topic", durable=True))
    b.declare_exchange(ExchangeSpec(name="x", type="topic", durable=True))
    assert len(b.exchanges) == 5


@pytest.mark.parametrize(
    "change",
    [{"type": "direct"}, {"durable": False}, {"auto_delete": True}, {"arguments": {"a": 1}}],
)
def test_redeclare_with_other_properties_fails(b: Vhost, change: dict[str, Any]) -> None:
    b.declare_exchange(ExchangeSpec(name="x", type="topic", durable=True))
    spec = dict(name="x", type="topic", durable=True) | change
    with pytest.raises(PreconditionFailed, match="exists with different properties"):
        b.declare_exchange(ExchangeSpec(**spec))
    assert b.exchanges["x"].spec == ExchangeSpec(name="x", type="topic", durable=True)


def test_passive_exchange_declare(b: Vhost) -> None:
    with pytest.raises(NotFound):
        b.declare_exchange(ExchangeSpec(name="nope", type="direct"), passive=True)
    b.declare_exchange(ExchangeSpec(name="amq.topic", type="fanout"), passive=True)  # type ignored


def test_unknown_exchange_type(b: Vhost) -> None:
    with pytest.raises(InvalidArgument, match="unknown exchange type 'x-weird'"):
        b.declare_exchange(ExchangeSpec(name="x", type="x-weird"))
    assert "x" not in b.exchanges


def test_reserved_names(b: Vhost) -> None:
    with pytest.raises(AccessRefused):
        b.declare_exchange(ExchangeSpec(name="amq.mine", type="direct"))
    with pytest.raises(AccessRefused):
        b.declare_exchange(ExchangeSpec(name="", type="direct"))
    with pytest.raises(AccessRefused):
        b.delete_exchange("amq.direct")
    with pytest.raises(AccessRefused):
        queue(b, "amq.q")
    queue(b, "q")
    with pytest.raises(AccessRefused):
        b.bind_queue("c1", "q", "", "q")


def test_delete_exchange_if_unused(b: Vhost) -> None:
    b.declare_exchange(ExchangeSpec(name="x", type="fanout"))
    queue(b, "q")
    b.bind_queue("c1", "q", "x")
    with pytest.raises(PreconditionFailed, match="in use"):
        b.delete_exchange("x", if_unused=True)
    b.delete_exchange("x")
    assert "x" not in b.exchanges and b.bindings() == []
    with pytest.raises(NotFound):
        b.delete_exchange("x")


def test_server_named_queue(b: Vhost) -> None:
    name = queue(b, "")
    assert name.startswith("mqr.gen-") and name in b.queues
    assert queue(b, "") != name


def test_redeclare_queue_mismatch(b: Vhost) -> None:
    queue(b, "q", durable=True)
    with pytest.raises(PreconditionFailed, match="durable=True"):
        queue(b, "q", durable=False)
    assert b.declare_queue("c1", QueueSpec(name="q", durable=True)).queue == "q"


def test_passive_queue_declare_reports_counts(b: Vhost, s: Session) -> None:
    with pytest.raises(NotFound):
        b.declare_queue("c1", QueueSpec(name="q"), passive=True)
    queue(b, "q")
    b.publish(s, msg("", "q"))
    ok = b.declare_queue("c1", QueueSpec(name="q", durable=True), passive=True)
    assert (ok.message_count, ok.consumer_count) == (1, 0)


def test_delete_queue_conditions_and_count(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.publish(s, msg("", "q"))
    with pytest.raises(PreconditionFailed, match="not empty"):
        b.delete_queue("c1", "q", if_empty=True)
    b.consume(s, "q", prefetch=0, auto_ack=False)
    with pytest.raises(PreconditionFailed, match="in use"):
        b.delete_queue("c1", "q", if_unused=True)
    b.publish(s, msg("", "q"))
    assert b.delete_queue("c1", "q") == 0  # both are out with the consumer, unacked
    assert [e for e in s.take_events() if isinstance(e, CancelledByBroker)]


def test_purge_returns_ready_count(b: Vhost, s: Session) -> None:
    queue(b, "q")
    for _ in range(3):
        b.publish(s, msg("", "q"))
    assert b.purge_queue("c1", "q") == 3
    assert len(b.queues["q"]) == 0


# --- exclusive and auto-delete -----------------------------------------------------------------


def test_exclusive_queue_is_locked_to_its_connection(b: Vhost) -> None:
    queue(b, "mine", exclusive=True)
    other = b.open_session("c2")
    with pytest.raises(ResourceLocked):
        b.declare_queue("c2", QueueSpec(name="mine", exclusive=True))
    with pytest.raises(ResourceLocked):
        b.declare_queue("c2", QueueSpec(name="mine"), passive=True)
    with pytest.raises(ResourceLocked):
        b.consume(other, "mine")
    with pytest.raises(ResourceLocked):
        b.delete_queue("c2", "mine")
    with pytest.raises(ResourceLocked):
        b.get(other, "mine")
    b.publish(other, msg("", "mine"))  # publishing to it is fine
    assert len(b.queues["mine"]) == 1


def test_exclusive_queue_goes_with_its_connection(b: Vhost) -> None:
    queue(b, "mine", exclusive=True)
    queue(b, "shared")
    b.release_owner("c1")
    assert list(b.queues) == ["shared"]


def test_auto_delete_queue_goes_with_its_last_consumer(b: Vhost, s: Session) -> None:
    queue(b, "q", auto_delete=True)
    t1 = b.consume(s, "q")
    t2 = b.consume(s, "q")
    b.cancel(s, t1)
    assert "q" in b.queues
    b.cancel(s, t2)
    assert "q" not in b.queues


def test_auto_delete_queue_without_consumers_stays(b: Vhost, s: Session) -> None:
    queue(b, "q", auto_delete=True)
    b.close_session(s)
    assert "q" in b.queues


def test_auto_delete_exchange_goes_with_its_last_binding(b: Vhost) -> None:
    b.declare_exchange(ExchangeSpec(name="x", type="fanout", auto_delete=True))
    queue(b, "q1")
    queue(b, "q2")
    b.bind_queue("c1", "q1", "x")
    b.bind_queue("c1", "q2", "x")
    b.unbind_queue("c1", "q1", "x")
    assert "x" in b.exchanges
    b.delete_queue("c1", "q2")
    assert "x" not in b.exchanges


# --- routing -------------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(b: Vhost, s: Session) -> None:
    queue(b, "tasks")
    b.publish(s, msg("", "tasks", b"1"))
    b.publish(s, msg("", "nothing", b"2"))
    assert len(b.queues["tasks"]) == 1


def test_topic_exchange_routes_to_matching_queues(b: Vhost, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="shop", type="topic"))
    for q, key in [("inventory", "order.*"), ("audit", "#"), ("mail", "*.created")]:
        queue(b, q)
        b.bind_queue("c1", q, "shop", key)
    b.publish(s, msg("shop", "order.created"))
    b.publish(s, msg("shop", "order.paid"))
    b.publish(s, msg("shop", "user.created"))
    assert {n: len(q) for n, q in b.queues.items()} == {"inventory": 2, "audit": 3, "mail": 2}


def test_a_queue_gets_one_copy_even_through_many_bindings(b: Vhost, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="t", type="topic"))
    queue(b, "q")
    for key in ["a.*", "*.b", "#", "a.b"]:
        b.bind_queue("c1", "q", "t", key)
    b.publish(s, msg("t", "a.b"))
    assert len(b.queues["q"]) == 1


def test_exchange_to_exchange_with_cycle(b: Vhost, s: Session) -> None:
    for name in ("x1", "x2", "x3"):
        b.declare_exchange(ExchangeSpec(name=name, type="fanout"))
    b.bind_exchange("x2", "x1")
    b.bind_exchange("x3", "x2")
    b.bind_exchange("x1", "x3")  # a cycle
    queue(b, "q")
    b.bind_queue("c1", "q", "x3")
    b.bind_queue("c1", "q", "x1")
    b.publish(s, msg("x1", "k"))
    assert len(b.queues["q"]) == 1
    result = b.explain_route(msg("x1", "k"))
    assert result.queues == ["q"]
    assert {step.exchange for step in result.steps} == {"x1", "x2", "x3"}


def test_exchange_binding_removed_with_either_end(b: Vhost, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="up", type="fanout"))
    b.declare_exchange(ExchangeSpec(name="down", type="fanout"))
    b.bind_exchange("down", "up")
    b.delete_exchange("down")
    assert b.bindings() == []


def test_unbind_missing_binding_is_not_found(b: Vhost) -> None:
    queue(b, "q")
    with pytest.raises(NotFound, match="no binding"):
        b.unbind_queue("c1", "q", "amq.direct", "k")
    with pytest.raises(NotFound, match="no exchange"):
        b.bind_queue("c1", "q", "missing", "k")
    with pytest.raises(NotFound, match="no queue"):
        b.bind_queue("c1", "missing", "amq.direct", "k")


def test_invalid_headers_binding_changes_nothing(b: Vhost) -> None:
    queue(b, "q")
    with pytest.raises(PreconditionFailed):
        b.bind_queue("c1", "q", "amq.headers", "", {"x-match": "some"})
    assert b.bindings() == []


# --- publishing ------------------------------------------------------------------------------


def test_confirms_coalesce_into_one_multiple_ack(b: Vhost, s: Session) -> None:
    queue(b, "q")
    for _ in range(5):
        b.publish(s, msg("", "q"))
    assert s.take_events() == [Confirmed(seq=5, multiple=True)]


def test_publish_to_missing_exchange_is_nacked_with_reason(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.publish(s, msg("", "q"))
    with pytest.raises(NotFound):
        b.publish(s, msg("missing", "k"))
    b.publish(s, msg("", "q"))
    assert s.take_events() == [
        Confirmed(seq=1, multiple=True),
        Confirmed(
            seq=2,
            multiple=False,
            ok=False,
            error_code="NOT_FOUND",
            error_text="no exchange 'missing'",
        ),
        Confirmed(seq=3, multiple=True),
    ]


def test_mandatory_unroutable_is_returned_before_confirm(b: Vhost, s: Session) -> None:
    b.publish(s, msg("amq.direct", "nowhere", b"x"), mandatory=True)
    b.publish(s, msg("amq.direct", "nowhere", b"y"))  # not mandatory: silently dropped
    events = s.take_events()
    assert isinstance(events[0], Returned) and events[0].publish_seq == 1
    assert events[0].code == "NO_ROUTE" and events[0].message.body == b"x"
    assert events[1:] == [Confirmed(seq=2, multiple=True)]


def test_body_over_the_limit_is_refused() -> None:
    b = Vhost(max_message_size=10)
    s = b.open_session("c1")
    queue(b, "q")
    with pytest.raises(PreconditionFailed, match="exceeds the maximum"):
        b.publish(s, msg("", "q", b"x" * 11))
    assert len(b.queues["q"]) == 0


def test_internal_exchange_refuses_direct_publish(b: Vhost, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="inner", type="fanout", internal=True))
    with pytest.raises(AccessRefused):
        b.publish(s, msg("inner", ""))


# --- consuming -------------------------------------------------------------------------------


def test_round_robin_between_consumers(b: Vhost) -> None:
    queue(b, "q")
    s1, s2 = b.open_session("c1"), b.open_session("c2")
    b.consume(s1, "q")
    b.consume(s2, "q")
    for i in range(6):
        b.publish(s1, msg("", "q", bytes([i])))
    assert bodies(b, s1) == [b"\x00", b"\x02", b"\x04"]
    assert bodies(b, s2) == [b"\x01", b"\x03", b"\x05"]


def test_prefetch_limits_unacked_deliveries(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.consume(s, "q", prefetch=2)
    for i in range(5):
        b.publish(s, msg("", "q", bytes([i])))
    got = deliveries(b, s)
    assert len(got) == 2
    b.ack(s, got[0].delivery_tag)
    got += deliveries(b, s)
    assert len(got) == 3
    b.ack(s, got[2].delivery_tag, multiple=True)
    assert len(deliveries(b, s)) == 2
    assert len(b.queues["q"]) == 0


def test_a_shared_prefetch_bounds_all_of_a_sessions_consumers_together(
    b: Vhost, s: Session
) -> None:
    """AMQP's basic.qos global=true as RabbitMQ means it: one limit across the channel's
    consumers, on top of each consumer's own."""
    queue(b, "a")
    queue(b, "b")
    b.share_prefetch(s, 3)
    b.consume(s, "a", prefetch=2)
    b.consume(s, "b")
    for i in range(4):
        b.publish(s, msg("", "a", b"a%d" % i))
        b.publish(s, msg("", "b", b"b%d" % i))
    got = deliveries(b, s)
    assert len(got) == 3
    assert sum(d.message.body.startswith(b"a") for d in got) <= 2  # a's own limit holds
    b.ack(s, got[0].delivery_tag)
    more = deliveries(b, s)
    assert len(more) == 1  # one settled, one more from either queue
    b.share_prefetch(s, 0)  # lifted: each consumer's own limit alone
    rest = deliveries(b, s)
    unacked_a = sum(d.message.body.startswith(b"a") for d in got[1:] + more + rest)
    assert unacked_a == 2 and len(b.queues["b"]) == 0


def test_a_shared_prefetch_is_a_count_from_0_to_65535(b: Vhost, s: Session) -> None:
    with pytest.raises(InvalidArgument, match="prefetch must be from 0 to 65535"):
        b.share_prefetch(s, 65536)
    assert s.prefetch == 0


def test_fair_dispatch_with_prefetch_one(b: Vhost) -> None:
    queue(b, "q")
    busy, idle = b.open_session("busy"), b.open_session("idle")
    b.consume(busy, "q", prefetch=1)
    b.consume(idle, "q", prefetch=1)
    for i in range(4):
        b.publish(busy, msg("", "q", bytes([i])))
    first_busy, first_idle = deliveries(b, busy), deliveries(b, idle)
    b.ack(idle, first_idle[0].delivery_tag)
    b.ack(idle, deliveries(b, idle)[0].delivery_tag)
    assert len(first_busy) == 1 and deliveries(b, busy) == []
    assert len(deliveries(b, idle)) == 1  # the idle worker took the rest


def test_nack_requeue_puts_messages_back_in_original_order(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.consume(s, "q", prefetch=3)
    for i in range(5):
        b.publish(s, msg("", "q", bytes([i])))
    got = deliveries(b, s)
    b.nack(s, got[2].delivery_tag, multiple=True, requeue=True)
    again = deliveries(b, s)
    assert [d.message.body for d in again] == [b"\x00", b"\x01", b"\x02"]
    assert all(d.redelivered for d in again)
    assert [d.delivery_count for d in again] == [2, 2, 2]


def test_reject_without_requeue_drops(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.publish(s, msg("", "q"))
    d = b.get(s, "q")
    assert d is not None
    b.reject(s, d.delivery_tag, requeue=False)
    assert len(b.queues["q"]) == 0 and b.queues["q"].unacked == 0


def test_closing_a_session_requeues_its_unacked(b: Vhost) -> None:
    queue(b, "q")
    worker = b.open_session("w1")
    b.consume(worker, "q", prefetch=10)
    for i in range(3):
        b.publish(worker, msg("", "q", bytes([i])))
    assert len(deliveries(b, worker)) == 3
    b.close_session(worker)
    other = b.open_session("w2")
    b.consume(other, "q")
    got = deliveries(b, other)
    assert [d.message.body for d in got] == [b"\x00", b"\x01", b"\x02"]
    assert all(d.redelivered for d in got)


def test_unknown_delivery_tag_is_precondition_failed(b: Vhost, s: Session) -> None:
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 42"):
        b.ack(s, 42)
    queue(b, "q")
    b.publish(s, msg("", "q"))
    d = b.get(s, "q")
    assert d is not None
    b.ack(s, d.delivery_tag)
    with pytest.raises(PreconditionFailed, match="unknown delivery tag"):
        b.ack(s, d.delivery_tag)


def test_auto_ack_consumer_needs_no_acks(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.consume(s, "q", auto_ack=True, prefetch=1)  # prefetch does not apply to auto-ack
    for _ in range(3):
        b.publish(s, msg("", "q"))
    assert len(deliveries(b, s)) == 3
    assert b.queues["q"].unacked == 0


def test_get_reports_remaining_count(b: Vhost, s: Session) -> None:
    queue(b, "q")
    assert b.get(s, "q") is None
    b.publish(s, msg("", "q", b"a"))
    b.publish(s, msg("", "q", b"b"))
    d = b.get(s, "q", auto_ack=True)
    assert d is not None and d.message.body == b"a" and d.message_count == 1
    assert s.unacked == {}


def test_cancel_keeps_unacked_messages_ackable(b: Vhost, s: Session) -> None:
    queue(b, "q")
    tag = b.consume(s, "q")
    b.publish(s, msg("", "q"))
    d = deliveries(b, s)[0]
    b.cancel(s, tag)
    b.ack(s, d.delivery_tag)
    assert b.queues["q"].unacked == 0


def test_exclusive_consumer(b: Vhost, s: Session) -> None:
    queue(b, "q")
    b.consume(s, "q", exclusive=True)
    with pytest.raises(ResourceLocked, match="exclusive consumer"):
        b.consume(b.open_session("c2"), "q")


def test_full_outbox_stops_dispatch_until_taken(b: Vhost, s: Session) -> None:
    s.outbox_limit = 3
    queue(b, "q")
    b.consume(s, "q", auto_ack=True)
    for _ in range(10):
        b.publish(s, msg("", "q"))
    first = deliveries(b, s)
    assert len(first) == 3
    assert len(deliveries(b, s)) == 3  # taking the events let dispatch go on


def test_requeued_messages_go_to_other_waiting_consumers(b: Vhost) -> None:
    queue(b, "q")
    first, second = b.open_session("a"), b.open_session("b")
    b.consume(first, "q", prefetch=1)
    b.publish(first, msg("", "q", b"job"))
    b.consume(second, "q", prefetch=1)
    b.close_session(first)
    [d] = deliveries(b, second)
    assert d.message.body == b"job" and d.redelivered


def test_a_passive_declare_of_direct_reply_to_succeeds(b: Vhost) -> None:
    """Clients (aio-pika, FastStream) check the pseudo-queue exists before they use it."""
    ok = b.declare_queue("c1", QueueSpec(name="amq.rabbitmq.reply-to"), passive=True)
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("amq.rabbitmq.reply-to", 0, 0)
