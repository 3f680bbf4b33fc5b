"""The SDK's bookkeeping without a socket (client/state.py): request ids and typed answers,
confirms in order, returns, and deliveries settled once; then the consumer's buffer, bounded
by prefetch, against a fake broker that breaks it."""

from __future__ import annotations

import functools

import attrs
import pytest
import trio

from mqroute.client.state import ClientState
from mqroute.errors import (
    ConnectionClosed,
    MessageNacked,
    MessageReturned,
    MQRouteError,
    NotFound,
    UsageError,
)
from mqroute.model import Properties
from mqroute.protocol import (
    Confirm,
    DeclareQueue,
    DeclareQueueOk,
    Error,
    Ok,
    Return,
)


class Waiter:
    def __init__(self) -> None:
        self.error: MQRouteError | None = None
        self.settled = 0

    def _settle(self, error: MQRouteError | None = None) -> None:
        self.settled += 1
        if self.error is None:
            self.error = error


@attrs.define
class Delivery:
    delivery_tag: int
    auto_ack: bool = False
    settled: bool = False
    timed_out: bool = False


def confirm(seq: int, *, multiple: bool, ok: bool = True, code: str | None = None) -> Confirm:
    return Confirm(seq=seq, multiple=multiple, ok=ok, error_code=code, error_text="why")


def test_an_answer_is_the_typed_reply_of_the_request_it_answers() -> None:
    state = ClientState()
    rid = state.request(DeclareQueue)
    ok = Ok(rid=rid, result={"queue": "q", "message_count": 1, "consumer_count": 0})
    assert state.answer(ok) == (rid, DeclareQueueOk(queue="q", message_count=1, consumer_count=0))
    assert state.answer(ok) is None  # answered once; a second answer is no one's
    assert state.waiting_requests == 0


def test_an_error_answer_is_the_broker_error_to_raise() -> None:
    state = ClientState()
    rid = state.request(DeclareQueue)
    _, error = state.answer(Error(rid=rid, code="NOT_FOUND", text="no queue 'q'"))  # type: ignore[misc]
    assert isinstance(error, NotFound) and error.reason == "no queue 'q'"


def test_a_forgotten_request_ignores_its_late_answer() -> None:
    state = ClientState()
    rid = state.request(DeclareQueue)
    state.forget_request(rid)
    assert state.answer(Ok(rid=rid, result={})) is None


def test_publishes_are_numbered_and_a_multiple_confirm_settles_all_below() -> None:
    state = ClientState()
    waiters = [Waiter() for _ in range(4)]
    assert [state.published(w) for w in waiters] == [1, 2, 3, 4]
    state.confirmed(confirm(3, multiple=True))
    assert [w.settled for w in waiters] == [1, 1, 1, 0]
    assert state.unconfirmed == 1
    state.confirmed(confirm(4, multiple=False, ok=False))
    assert isinstance(waiters[3].error, MessageNacked)


def test_a_nack_with_a_code_is_that_broker_error() -> None:
    state = ClientState()
    waiter = Waiter()
    state.published(waiter)
    state.confirmed(confirm(1, multiple=False, ok=False, code="NOT_FOUND"))
    assert isinstance(waiter.error, NotFound)


def test_a_return_is_the_error_of_the_confirm_that_follows() -> None:
    state = ClientState()
    waiter = Waiter()
    seq = state.published(waiter)
    state.returned(
        Return(
            seq=seq,
            code="NO_ROUTE",
            reply_text="no queue",
            exchange="x",
            routing_key="k",
            body=b"",
            properties=Properties(),
        )
    )
    state.confirmed(confirm(seq, multiple=True))
    assert isinstance(waiter.error, MessageReturned) and waiter.error.reply_code == 312


def test_the_end_fails_every_unconfirmed_publish() -> None:
    state = ClientState()
    waiter = Waiter()
    state.published(waiter)
    state.fail(ConnectionClosed("gone"))
    assert isinstance(waiter.error, ConnectionClosed) and state.unconfirmed == 0


def test_a_delivery_is_settled_once_and_multiple_settles_the_earlier_ones() -> None:
    state = ClientState()
    d1, d2, d3 = Delivery(1), Delivery(2), Delivery(3)
    for d in (d1, d2, d3):
        state.delivered(d)
    state.settle(d2, multiple=True)
    assert d1.settled and d2.settled and not d3.settled and state.unsettled == 1
    with pytest.raises(UsageError, match="delivery tag 1 is already settled"):
        state.settle(d1, multiple=False)


def test_an_auto_ack_delivery_has_nothing_to_settle() -> None:
    state = ClientState()
    d = Delivery(1, auto_ack=True)
    state.delivered(d)
    assert state.unsettled == 0
    with pytest.raises(UsageError, match="auto_ack"):
        state.settle(d, multiple=False)


def test_a_timed_out_delivery_can_no_longer_be_settled() -> None:
    state = ClientState()
    d = Delivery(7)
    state.delivered(d)
    state.timed_out(7)
    with pytest.raises(UsageError, match="passed its ack deadline"):
        state.settle(d, multiple=False)


# --- the consumer's buffer against a broker that breaks prefetch ---------------------------


async def test_a_broker_that_exceeds_prefetch_is_a_protocol_error_not_a_growing_buffer() -> None:
    import mqroute
    from mqroute.protocol import (
        NEED_DATA,
        Connection,
        Consume,
        ConsumeOk,
        Deliver,
        Hello,
        Role,
        ok_frame,
        welcome_for,
    )

    async def flooding_broker(stream: trio.SocketStream) -> None:
        proto = Connection(Role.SERVER)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            proto.receive_data(data)
            while (ev := proto.next_event()) is not NEED_DATA:
                if isinstance(ev, Hello):
                    welcome = welcome_for(
                        ev,
                        server="flood",
                        connection_id="f1",
                        heartbeat_ms=0,
                        max_frame_size=1 << 20,
                        max_message_size=1 << 20,
                    )
                    await stream.send_all(proto.send(welcome))
                elif isinstance(ev, Consume):
                    out = [proto.send(ok_frame(ev.rid, ConsumeOk(consumer_tag=ev.consumer_tag)))]
                    for tag in range(1, ev.prefetch + 2):  # one more than allowed
                        out.append(
                            proto.send(
                                Deliver(
                                    consumer_tag=ev.consumer_tag,
                                    delivery_tag=tag,
                                    redelivered=False,
                                    exchange="",
                                    routing_key="q",
                                    body=b"x",
                                    properties=Properties(),
                                )
                            )
                        )
                    await stream.send_all(b"".join(out))

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, flooding_broker, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        with trio.fail_after(10):
            async with mqroute.connect(f"mqroute://127.0.0.1:{port}", heartbeat=0) as conn:
                with pytest.raises(ConnectionClosed, match="more than its prefetch of 3"):
                    async with conn.consume("q", prefetch=3) as messages:
                        async for _ in messages:
                            pass  # never acks
        nursery.cancel_scope.cancel()


async def test_a_consumers_buffer_never_holds_more_than_its_prefetch(
    conn: object,
) -> None:
    import mqroute

    assert isinstance(conn, mqroute.Connection)
    await conn.declare_queue("bounded")
    async with conn.publisher() as pub:
        for i in range(50):
            await pub.publish("", "bounded", str(i))
    async with conn.consume("bounded", prefetch=5) as messages:
        assert messages.capacity == 5
        seen = 0
        async for msg in messages:
            assert messages.buffered <= 4  # this one is out of the buffer
            await msg.ack()
            seen += 1
            if seen == 50:
                break


async def test_deliveries_past_their_deadline_make_room_in_a_full_buffer_first() -> None:
    from mqroute.client.consumer import Consumer

    consumer = Consumer(None, "q", "c1", 2, False, False, {})  # type: ignore[arg-type]
    late, kept = Delivery(1), Delivery(2)
    consumer._deliver(late)  # type: ignore[arg-type]
    consumer._deliver(kept)  # type: ignore[arg-type]
    late.timed_out = True  # the broker requeued it; it no longer counts against prefetch
    consumer._deliver(Delivery(3))  # type: ignore[arg-type]
    assert consumer.buffered == 2
    assert (await consumer.__anext__()) is kept  # the void one is never handed out
