"""A session: one client's view of the broker (an AMQP channel).

It owns what is per client rather than per queue: delivery tags and the unacked messages behind
them, consumers with their prefetch credit, publish sequence numbers and their confirms, and
the outbox of events waiting to be written. Front ends drain the outbox with ``take_events``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import InvalidArgument, PreconditionFailed, ResourceLocked
from ..model import (
    MAX_MILLISECONDS,
    Delivery,
    DeliveryTimedOut,
    Event,
    Message,
    Returned,
    Table,
    brief,
)
from ..records import DropMessages, MarkDelivered
from .access import FULL, Access
from .confirms import Confirms
from .effects import Effects
from .journal import Journal
from .queue import MessageQueue, QueueEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler

#: Dispatch to a session stops while this many bytes of deliveries wait to be written (a
#: consumer that does not read its socket holds at most about this much, whatever the sizes).
OUTBOX_BYTES = 1024 * 1024
# Timed-out tags remembered per session (a client that never settles them must not grow it).
TIMED_OUT_MEMORY = 10_000


@attrs.define(eq=False, slots=True)
class Unacked:
    """A delivered message waiting for ack, nack or reject."""

    tag: int
    queue: MessageQueue
    entry: QueueEntry
    consumer: ConsumerState | None  # None for a basic.get
    deadline: float | None = None  # x-consumer-timeout: requeued if not settled by then


@attrs.define(eq=False)
class ConsumerState:
    """A push consumer on one queue. Implements ``queue.Consumer``."""

    tag: str
    session: Session
    queue: MessageQueue
    prefetch: int  # 0 = unlimited
    auto_ack: bool
    exclusive: bool
    arguments: Table
    priority: int = 0  # the x-priority consumer argument
    timeout: int | None = None  # ms: x-consumer-timeout (consumer argument, else the queue's)
    unacked: int = 0

    def has_credit(self) -> bool:
        session = self.session
        if session.closed:
            return False
        # Session.outbox_full, inlined: this runs twice per delivery.
        if len(session._outbox) >= session.outbox_limit or session._outbox_bytes >= OUTBOX_BYTES:
            session.starved = True
            return False
        if self.auto_ack:
            return True
        if session.prefetch and session.consumer_unacked >= session.prefetch:
            return False
        return self.prefetch == 0 or self.unacked < self.prefetch

    def deliver(self, queue: MessageQueue, entry: QueueEntry) -> None:
        self.session.record_delivery(queue, entry, self, track=not self.auto_ack)


class Session:
    """Per-client state. ``owner`` names the connection (for exclusive queues)."""

    def __init__(
        self,
        session_id: int,
        owner: str,
        journal: Journal | None = None,
        effects: Effects | None = None,
        scheduler: Scheduler | None = None,
        access: Access = FULL,
    ) -> None:
        self.id = session_id
        self.owner = owner
        self.access = access  # what its user may do in this vhost
        self.journal = journal  # where deliveries of stored messages are recorded
        self.effects = effects or Effects()  # where "this session has output" is noted
        self.closed = False
        # Dispatch stops while this many events wait to be written (slow reader), and resumes
        # when the front end takes them; so a session's buffered output stays bounded.
        self.outbox_limit = 1024
        self._outbox_bytes = 0  # bodies of the deliveries waiting in the outbox
        self.starved = False
        self.publishes = 0  # bits: 1 transient, 2 persistent (flow control knows of them)
        self.consumers: dict[str, ConsumerState] = {}
        # A limit shared by all the session's consumers (AMQP's basic.qos global=true), and
        # the consumers' deliveries it counts: those not yet settled (gets do not count).
        self.prefetch = 0
        self.consumer_unacked = 0
        self.unacked: dict[int, Unacked] = {}
        self._unacked_order: deque[int] = deque()
        self._next_tag = 1
        self._next_consumer = 1
        self.confirms = Confirms()
        self._outbox: list[Event] = []
        # Where a delivery's ack deadline starts, and tags that passed theirs (settling one
        # of those is a no-op, not an error: the two may cross on the wire).
        self.scheduler = scheduler
        self.timed_out: set[int] = set()
        self.reply_consumer: str | None = None  # consumer tag on amq.rabbitmq.reply-to
        self.reply_token: str | None = None  # ... and its address's random part

    # --- outbox --------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        was_idle = not self._outbox
        self._outbox.append(event)
        if type(event) is Delivery or type(event) is Returned:
            self._outbox_bytes += len(event.message.body)
        if was_idle:
            self.effects.output.add(self.id)

    def take_events(self) -> list[Event]:
        """Everything to send, in order, with settled confirms coalesced at the end."""
        if self.confirms:
            self._outbox.extend(self.confirms.take())
        events, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        return events

    def outbox_size(self) -> int:
        return len(self._outbox)

    def outbox_full(self) -> bool:
        """Whether the client is so far behind that no more deliveries should wait for it."""
        return len(self._outbox) >= self.outbox_limit or self._outbox_bytes >= OUTBOX_BYTES

    def outbox_bytes(self) -> int:
        """The bodies of the deliveries and returns waiting in the outbox."""
        return self._outbox_bytes

    # --- delivery tags -------------------------------------------------------------------

    def record_delivery(
        self, queue: MessageQueue, entry: QueueEntry, consumer: ConsumerState | None, *, track: bool
    ) -> Delivery:
        """Give ``entry`` a delivery tag, track it for ack if asked, emit it to a consumer."""
        tag = self._next_tag
        self._next_tag += 1
        redelivered = entry.redelivered
        entry.delivery_count += 1
        queue.delivered += 1
        if entry.persisted and self.journal is not None:
            if track:
                self.journal.add(MarkDelivered(queue.name, entry.seq, entry.delivery_count))
            else:  # auto-ack: delivered is done
                self.journal.add(DropMessages(queue.name, (entry.seq,)))
        if not track:
            queue.release(entry)
        if track:
            self.unacked[tag] = item = Unacked(tag, queue, entry, consumer)
            timeout = consumer.timeout if consumer is not None else queue.args.consumer_timeout
            if timeout is not None and self.scheduler is not None:
                self.scheduler.start_deadline(self, item, timeout)
            self._unacked_order.append(tag)
            queue.unacked += 1
            if consumer is not None:
                consumer.unacked += 1
                self.consumer_unacked += 1
        message = entry.message
        assert message is not None, "fetch pages bodies in before delivery"
        if entry.delivery_count > 1:  # a redelivery says how many deliveries came before
            message = with_header(message, "x-delivery-count", entry.delivery_count - 1)
        delivery = Delivery(
            consumer_tag=consumer.tag if consumer is not None else "",
            delivery_tag=tag,
            redelivered=redelivered,
            exchange=message.exchange,
            routing_key=message.routing_key,
            message=message,
            delivery_count=entry.delivery_count,
        )
        if consumer is not None:
            self.emit(delivery)
        return delivery

    def deliver_direct(self, consumer_tag: str, message: Message) -> None:
        """A delivery that passed through no queue (direct reply-to); never needs an ack."""
        tag = self._next_tag
        self._next_tag += 1
        self.emit(
            Delivery(
                consumer_tag=consumer_tag,
                delivery_tag=tag,
                redelivered=False,
                exchange=message.exchange,
                routing_key=message.routing_key,
                message=message,
                delivery_count=1,
            )
        )

    def take_unacked(self, tag: int, multiple: bool) -> list[Unacked]:
        """Remove and return the deliveries a settle of ``tag`` covers (none if unknown)."""
        if not multiple:
            found = self.unacked.pop(tag, None)
            return [found] if found is not None else []
        taken = []
        order = self._unacked_order
        while order and order[0] <= tag:
            found = self.unacked.pop(order.popleft(), None)
            if found is not None:
                taken.append(found)
        if tag == 0:  # multiple with tag 0 means "everything so far"
            taken.extend(self.unacked.values())
            self.unacked.clear()
            order.clear()
        return taken

    def take_all_unacked(self) -> list[Unacked]:
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._unacked_order.clear()
        return taken

    def compact_order(self) -> None:
        """Drop settled tags from the ordering deque so it does not grow without bound."""
        if len(self._unacked_order) > 2 * len(self.unacked) + 64:
            self._unacked_order = deque(t for t in self._unacked_order if t in self.unacked)

    def new_consumer(
        self,
        queue: MessageQueue,
        consumer_tag: str,
        *,
        prefetch: int,
        auto_ack: bool,
        exclusive: bool,
        arguments: Table,
        limit: int,
    ) -> ConsumerState:
        """A consumer of ``queue`` on this session (``limit`` consumers at most), checked
        before anything changes: prefetch range, tag in use, exclusivity, arguments."""
        name = queue.name
        if prefetch < 0 or prefetch > 65535:
            raise InvalidArgument(f"prefetch must be from 0 to 65535, not {prefetch}")
        if len(self.consumers) >= limit:
            raise PreconditionFailed(
                f"cannot consume from {name!r}: the limit of {limit} consumers per session (a "
                "native connection, an AMQP channel) is reached"
            )
        if consumer_tag and consumer_tag in self.consumers:
            raise PreconditionFailed(f"consumer tag {consumer_tag!r} is already in use")
        if queue.exclusive_consumer:
            raise ResourceLocked(f"queue {name!r} has an exclusive consumer")
        if exclusive and queue.consumers:
            raise ResourceLocked(
                f"queue {name!r} already has consumers; cannot consume exclusively"
            )
        priority, timeout = consumer_settings(arguments, queue)
        tag = consumer_tag or self.new_consumer_tag()
        consumer = ConsumerState(
            tag=tag,
            session=self,
            queue=queue,
            prefetch=prefetch,
            auto_ack=auto_ack,
            exclusive=exclusive,
            arguments=arguments,
            priority=priority,
            timeout=timeout,
        )
        self.consumers[tag] = consumer
        return consumer

    def new_consumer_tag(self) -> str:
        tag = f"ctag-{self.id}.{self._next_consumer}"
        self._next_consumer += 1
        return tag

    # --- publisher confirms ----------------------------------------------------------------

    def begin_publish(self) -> int:
        return self.confirms.begin()

    def settle_publish(
        self, seq: int, ok: bool, code: str | None = None, text: str | None = None
    ) -> None:
        """Mark one publish confirmed (ok) or nacked (with why). Confirms go out in seq order."""
        if self.confirms.settle(seq, ok, code, text) and not self._outbox:
            self.effects.output.add(self.id)

    # --- settling --------------------------------------------------------------------------

    def take_settled(self, tag: int, multiple: bool) -> list[Unacked]:
        """The deliveries a settle of ``tag`` covers. Tags that timed out went back to the
        queue already; a settle that crossed the timeout on the wire ignores them. An unknown
        tag is PRECONDITION_FAILED, as RabbitMQ's channel error."""
        timed_out = self.timed_out
        if not multiple:
            if tag in timed_out:
                timed_out.discard(tag)
                return []
            if tag not in self.unacked:
                raise PreconditionFailed(f"unknown delivery tag {tag}")
        covered_timed_out = False
        if multiple and timed_out:
            covered = {t for t in timed_out if t <= tag or tag == 0}
            timed_out -= covered
            covered_timed_out = bool(covered)
        settled = self.take_unacked(tag, multiple)
        if multiple and not settled and tag != 0 and not covered_timed_out:
            raise PreconditionFailed(f"unknown delivery tag {tag}")
        self.compact_order()
        return settled

    def time_out(self, item: Unacked) -> None:
        """``item`` passed its ack deadline: it leaves the unacked, its tag is remembered (so
        a late settle is no error) and the client is told."""
        self.take_unacked(item.tag, multiple=False)
        if len(self.timed_out) >= TIMED_OUT_MEMORY:
            self.timed_out.discard(min(self.timed_out))
        self.timed_out.add(item.tag)
        consumer_tag = item.consumer.tag if item.consumer is not None else ""
        self.emit(DeliveryTimedOut(consumer_tag=consumer_tag, delivery_tag=item.tag))


def consumer_settings(arguments: Table, queue: MessageQueue) -> tuple[int, int | None]:
    """The consumer's x-priority and x-consumer-timeout (ms; its own, else the queue's),
    validated: PRECONDITION_FAILED names a bad one."""
    timeout = arguments.get("x-consumer-timeout", queue.args.consumer_timeout)
    valid = type(timeout) is int and 0 < timeout <= MAX_MILLISECONDS
    if timeout is not None and not valid:
        raise PreconditionFailed(
            f"consumer argument x-consumer-timeout must be an integer from 1 to "
            f"{MAX_MILLISECONDS} (ms), not {brief(timeout)}"
        )
    priority = arguments.get("x-priority", 0)
    if type(priority) is not int:
        raise PreconditionFailed(
            f"consumer argument x-priority must be an integer, not {brief(priority)}"
        )
    return priority, timeout


def with_header(message: Message, name: str, value: Any) -> Message:
    headers = dict(message.properties.headers or {})
    headers[name] = value
    return attrs.evolve(message, properties=attrs.evolve(message.properties, headers=headers))
