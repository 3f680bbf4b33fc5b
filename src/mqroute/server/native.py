"""The native protocol's front end, sans I/O: a frame from the client becomes a call on the
vhost facade, the call's result a reply frame, and the session's events frames again.

It owns no task and no socket; ``connection.py`` is the trio shell that reads, writes and
waits. An AMQP 0-9-1 front end sits beside this one and drives the same facade the same way.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from ..core.access import MANAGEMENT_TAGS, MONITORING_TAGS
from ..core.dead_letter import Redriven
from ..core.session import Session
from ..core.vhost import Vhost
from ..errors import BrokerError, PreconditionFailed
from ..model import (
    CancelledByBroker,
    Confirmed,
    Delivery,
    DeliveryTimedOut,
    Event,
    ExchangeSpec,
    Message,
    Properties,
    QueueSpec,
    Returned,
)
from ..protocol import (
    Ack,
    Bind,
    Cancel,
    Cancelled,
    Close,
    Confirm,
    Connection,
    Consume,
    ConsumeOk,
    DeclareExchange,
    DeclareQueue,
    DeclareQueueOk,
    DeleteExchange,
    DeleteQueue,
    DeleteQueueOk,
    Done,
    Error,
    ExplainRoute,
    ExplainRouteOk,
    Frame,
    Get,
    GetOk,
    Inspect,
    InspectOk,
    Nack,
    Publish,
    PublishTooLarge,
    PurgeQueue,
    PurgeQueueOk,
    Redrive,
    Release,
    Return,
    TimedOut,
    Unbind,
    encode_deliver_tail,
    ok_frame,
)

#: What answers an admin listing: (what, offset, limit) -> (rows, total). The shell gives it,
#: so this front end knows nothing of the registry of live connections.
Listings = Callable[[str, int, int], tuple[Any, int]]

log = logging.getLogger("mqroute.server")


class NativeFrontEnd:
    """One client connection's translation between frames and the facade."""

    def __init__(
        self, vhost: Vhost, session: Session, conn_id: str, listings: Listings, max_message: int
    ) -> None:
        self.vhost = vhost
        self.session = session
        self.id = conn_id
        self.listings = listings
        self.max_message_size = max_message
        self.access = session.access  # what this client's user may do here

    # --- messages and settlements: no reply ------------------------------------------------

    def publish(self, event: Publish, now: float) -> None:
        message = Message(
            exchange=event.exchange,
            routing_key=event.routing_key,
            body=event.body,
            properties=event.properties,
        )
        try:
            self.vhost.publish(self.session, message, mandatory=event.mandatory, now=now)
        except BrokerError:
            pass  # the publish was nacked with the reason; the connection goes on

    def too_large(self, event: PublishTooLarge) -> None:
        """A publish the protocol dropped as it came: nack it (publishes are numbered)."""
        self.vhost.refuse_publish(
            self.session,
            PreconditionFailed(
                f"message of {event.size} bytes exceeds the maximum of "
                f"{self.max_message_size} bytes"
            ),
        )

    def settle(self, event: Any, now: float) -> Close | None:
        """Ack, nack, release or extend; a Close if the client's view of its deliveries is
        wrong (an unknown tag), as RabbitMQ closes the channel."""
        vhost, session = self.vhost, self.session
        try:
            kind = type(event)
            if kind is Ack:
                vhost.ack(session, event.delivery_tag, multiple=event.multiple, now=now)
            elif kind is Nack:
                vhost.nack(
                    session,
                    event.delivery_tag,
                    multiple=event.multiple,
                    requeue=event.requeue,
                    now=now,
                )
            elif kind is Release:
                vhost.release(session, event.delivery_tag, multiple=event.multiple, now=now)
            else:
                vhost.extend(session, event.delivery_tag, event.milliseconds, now=now)
        except BrokerError as exc:
            log.warning("%s: %s", self.id, exc)
            return Close(code=exc.code, text=exc.reason)
        return None

    # --- requests: one reply each ----------------------------------------------------------

    def request(self, event: Any, now: float) -> Any:
        """The reply frame to request ``event``, or a ``Redriven`` that asks for more bodies.

        Raises ``NeedBodies`` when nothing changed and bodies must be read back first: the
        shell reads them off the event loop and asks again.
        """
        try:
            result = _REQUEST_HANDLERS[type(event)](self, event, now)
        except BrokerError as exc:
            return Error(rid=event.rid, code=exc.code, text=exc.reason)
        if isinstance(result, (Frame, Redriven)):
            return result
        return ok_frame(event.rid, result)

    def _declare_exchange(self, ev: DeclareExchange, now: float) -> Done:
        spec = ExchangeSpec(
            name=ev.name,
            type=ev.type,
            durable=ev.durable,
            auto_delete=ev.auto_delete,
            internal=ev.internal,
            arguments=ev.arguments,
        )
        self.vhost.declare_exchange(spec, passive=ev.passive, access=self.access)
        return Done()

    def _delete_exchange(self, ev: DeleteExchange, now: float) -> Done:
        self.vhost.delete_exchange(ev.name, if_unused=ev.if_unused, access=self.access)
        return Done()

    def _declare_queue(self, ev: DeclareQueue, now: float) -> DeclareQueueOk:
        spec = QueueSpec(
            name=ev.name,
            durable=ev.durable,
            exclusive=ev.exclusive,
            auto_delete=ev.auto_delete,
            arguments=ev.arguments,
        )
        ok = self.vhost.declare_queue(
            self.id, spec, passive=ev.passive, now=now, access=self.access
        )
        return DeclareQueueOk(
            queue=ok.queue,
            message_count=ok.message_count,
            consumer_count=ok.consumer_count,
            arguments=ok.arguments,
            delayed_count=ok.delayed_count,
        )

    def _delete_queue(self, ev: DeleteQueue, now: float) -> DeleteQueueOk:
        count = self.vhost.delete_queue(
            self.id, ev.name, if_unused=ev.if_unused, if_empty=ev.if_empty, access=self.access
        )
        return DeleteQueueOk(message_count=count)

    def _purge_queue(self, ev: PurgeQueue, now: float) -> PurgeQueueOk:
        return PurgeQueueOk(
            message_count=self.vhost.purge_queue(self.id, ev.name, access=self.access)
        )

    def _bind(self, ev: Bind, now: float) -> Done:
        args = (ev.destination, ev.source, ev.routing_key, ev.arguments)
        if ev.to_exchange:
            self.vhost.bind_exchange(*args, access=self.access)
        else:
            self.vhost.bind_queue(self.id, *args, access=self.access)
        return Done()

    def _unbind(self, ev: Unbind, now: float) -> Done:
        args = (ev.destination, ev.source, ev.routing_key, ev.arguments)
        if ev.to_exchange:
            self.vhost.unbind_exchange(*args, access=self.access)
        else:
            self.vhost.unbind_queue(self.id, *args, access=self.access)
        return Done()

    def _consume(self, ev: Consume, now: float) -> ConsumeOk:
        tag = self.vhost.consume(
            self.session,
            ev.queue,
            consumer_tag=ev.consumer_tag,
            prefetch=ev.prefetch,
            auto_ack=ev.auto_ack,
            exclusive=ev.exclusive,
            arguments=ev.arguments,
            now=now,
        )
        return ConsumeOk(consumer_tag=tag)

    def _cancel(self, ev: Cancel, now: float) -> Done:
        self.vhost.cancel(self.session, ev.consumer_tag, now=now)
        return Done()

    def _get(self, ev: Get, now: float) -> Frame | Done:
        d = self.vhost.get(self.session, ev.queue, auto_ack=ev.auto_ack, now=now)
        if d is None:
            return Done()  # GetEmpty: an Ok with nothing in it
        return GetOk(
            rid=ev.rid,
            delivery_tag=d.delivery_tag,
            redelivered=d.redelivered,
            exchange=d.exchange,
            routing_key=d.routing_key,
            message_count=d.message_count or 0,
            body=d.message.body,
            properties=d.message.properties,
        )

    def _redrive(self, ev: Redrive, now: float) -> Redriven:
        return self.vhost.redrive(
            self.id, ev.queue, to_exchange=ev.exchange, limit=ev.limit, now=now, access=self.access
        )

    def _explain_route(self, ev: ExplainRoute, now: float) -> ExplainRouteOk:
        message = Message(
            exchange=ev.exchange,
            routing_key=ev.routing_key,
            body=b"",
            properties=Properties(headers=ev.headers or None),
        )
        result = self.vhost.explain_route(message, access=self.access)
        steps = [
            {
                "exchange": step.exchange,
                "type": step.exchange_type,
                "destination": step.binding.destination,
                "destination_kind": step.binding.destination_kind,
                "routing_key": step.binding.routing_key,
                "arguments": step.binding.arguments,
            }
            for step in result.steps
        ]
        return ExplainRouteOk(queues=list(result.queues), steps=steps)

    def _inspect(self, ev: Inspect, now: float) -> InspectOk:
        tags = MONITORING_TAGS if ev.what in ("connections", "status") else MANAGEMENT_TAGS
        self.access.check_tags(tags, f"listing {ev.what}")
        rows, total = self.listings(ev.what, ev.offset, ev.limit)
        return InspectOk(result=rows, total=total)

    # --- output ------------------------------------------------------------------------------

    def output(self, proto: Connection, now: float | None = None) -> list[bytes]:
        """The session's events as encoded frames, in order. Without ``now`` the core's time
        stays where the latest call left it (at most a round old)."""
        events = self.vhost.take_events(self.session, now=now)
        send, send_deliver = proto.send, proto.send_deliver
        chunks: list[bytes] = []
        for e in events:
            if type(e) is Delivery:
                chunks.append(
                    send_deliver(e.consumer_tag, e.delivery_tag, e.redelivered, _deliver_tail(e))
                )
            else:
                chunks.append(send(to_frame(e)))
        return chunks


# Unbound, so that no front end refers to itself through its own table.
_REQUEST_HANDLERS: dict[type[Frame], Callable[[NativeFrontEnd, Any, float], Any]] = {
    DeclareExchange: NativeFrontEnd._declare_exchange,
    DeleteExchange: NativeFrontEnd._delete_exchange,
    DeclareQueue: NativeFrontEnd._declare_queue,
    DeleteQueue: NativeFrontEnd._delete_queue,
    PurgeQueue: NativeFrontEnd._purge_queue,
    Bind: NativeFrontEnd._bind,
    Unbind: NativeFrontEnd._unbind,
    Consume: NativeFrontEnd._consume,
    Cancel: NativeFrontEnd._cancel,
    Get: NativeFrontEnd._get,
    Redrive: NativeFrontEnd._redrive,
    ExplainRoute: NativeFrontEnd._explain_route,
    Inspect: NativeFrontEnd._inspect,
}


# Encoded Deliver tails by id(message): the copies of a fanned-out message share one encoding.
# An entry lives only as long as its message: a weak reference's callback drops it when the
# message is gone (settled everywhere), so settled messages hold no memory here.
class _TailRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference that knows its cache key, so one callback serves every entry."""

    __slots__ = ("key",)
    key: int


def _drop_tail(ref: _TailRef) -> None:
    _TAILS.pop(ref.key, None)


_TAILS: dict[int, tuple[_TailRef, str, str, bytes]] = {}
_TAILS_SIZE = 4096


def _deliver_tail(event: Delivery) -> bytes:
    m = event.message
    key = id(m)
    hit = _TAILS.get(key)
    if (
        hit is not None
        and hit[0]() is m
        and hit[1] == event.exchange
        and hit[2] == event.routing_key
    ):
        return hit[3]
    tail = encode_deliver_tail(event.exchange, event.routing_key, m.body, m.properties)
    if len(_TAILS) >= _TAILS_SIZE:
        _TAILS.clear()
    ref = _TailRef(m, _drop_tail)
    ref.key = key
    _TAILS[key] = (ref, event.exchange, event.routing_key, tail)
    return tail


def to_frame(event: Event) -> Frame:
    """Every event but a Delivery (which ``send_deliver`` encodes faster) as its frame."""
    if isinstance(event, Confirmed):
        return Confirm(
            seq=event.seq,
            multiple=event.multiple,
            ok=event.ok,
            error_code=event.error_code,
            error_text=event.error_text,
        )
    if isinstance(event, Returned):
        m = event.message
        return Return(
            seq=event.publish_seq,
            code=event.code,
            reply_text=event.reply_text,
            exchange=m.exchange,
            routing_key=m.routing_key,
            body=m.body,
            properties=m.properties,
        )
    if isinstance(event, DeliveryTimedOut):
        return TimedOut(consumer_tag=event.consumer_tag, delivery_tag=event.delivery_tag)
    assert isinstance(event, CancelledByBroker), event
    return Cancelled(consumer_tag=event.consumer_tag, reason=event.reason)
