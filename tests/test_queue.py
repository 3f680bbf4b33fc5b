"""Queue invariants under random operations: every message is ready, unacked or gone — never two."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mqroute.core.queue import MessageQueue
from mqroute.core.vhost import Vhost
from mqroute.model import Delivery, Message, QueueSpec

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 0)),
        st.tuples(st.just("consume"), st.integers(0, 3)),  # prefetch
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("ack"), st.integers(0, 30)),
        st.tuples(st.just("ack_multiple"), st.integers(0, 30)),
        st.tuples(st.just("nack_requeue"), st.integers(0, 30)),
        st.tuples(st.just("reject"), st.integers(0, 30)),
        st.tuples(st.just("get"), st.integers(0, 1)),
        st.tuples(st.just("close"), st.integers(0, 1)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_every_message_is_in_exactly_one_place(ops: list[tuple[str, int]]) -> None:
    b = Vhost()
    b.declare_queue("o", QueueSpec(name="q"))
    sessions = [b.open_session("a"), b.open_session("b")]
    seen: list[Delivery] = []
    published = 0
    gone: set[bytes] = set()
    turn = 0
    for op, arg in ops:
        turn += 1
        s = sessions[turn % 2]
        if s.closed:
            s = sessions[turn % 2] = b.open_session("again")
        if op == "publish":
            b.publish(s, Message(exchange="", routing_key="q", body=str(published).encode()))
            published += 1
        elif op == "consume":
            b.consume(s, "q", prefetch=arg)
        elif op == "cancel" and s.consumers:
            b.cancel(s, sorted(s.consumers)[arg % len(s.consumers)])
        elif op in ("ack", "ack_multiple", "nack_requeue", "reject") and s.unacked:
            tag = sorted(s.unacked)[arg % len(s.unacked)]
            if op == "ack":
                gone.add(s.unacked[tag].entry.message.body)
                b.ack(s, tag)
            elif op == "ack_multiple":
                gone.update(u.entry.message.body for t, u in s.unacked.items() if t <= tag)
                b.ack(s, tag, multiple=True)
            elif op == "nack_requeue":
                b.nack(s, tag, requeue=True)
            else:
                gone.add(s.unacked[tag].entry.message.body)
                b.reject(s, tag, requeue=False)
        elif op == "get":
            d = b.get(s, "q", auto_ack=bool(arg))
            if d is not None and arg:
                gone.add(d.message.body)
        elif op == "close":
            b.close_session(s)
        for sess in sessions:
            if not sess.closed:
                events = b.take_events(sess)
                seen += [e for e in events if isinstance(e, Delivery)]
                for c in sess.consumers.values():
                    if c.prefetch and not c.auto_ack:
                        assert c.unacked <= c.prefetch
        q = b.queues["q"]
        ready = [e.message.body for e in q.ready_entries() if e.message is not None]
        unacked = [u.entry.message.body for sess in sessions for u in sess.unacked.values()]
        places = Counter(ready) + Counter(unacked) + Counter(gone)
        assert all(n == 1 for n in places.values()), places
        assert len(places) == published
        assert q.unacked == len(unacked)


def test_requeued_messages_come_back_before_newer_ones_in_original_order() -> None:
    q = MessageQueue(QueueSpec(name="q"))
    for i in range(6):
        q.publish(Message(exchange="", routing_key="q", body=bytes([i])))
    taken = [q.fetch() for _ in range(4)]
    for entry in (taken[3], taken[0], taken[2]):  # requeued in scrambled order
        assert entry is not None
        q.requeue(entry)
    order = []
    while (entry := q.fetch()) is not None:
        order.append(entry.message.body[0])
    assert order == [0, 2, 3, 4, 5]  # 1 is still out with its consumer
