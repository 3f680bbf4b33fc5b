"""One virtual host: the facade every front end calls, and the only thing it calls.

It is plain synchronous Python: no I/O, no clock, no trio, so any front end (the native CBOR
protocol, AMQP 0-9-1) can drive it and tests can call it directly. Operations either succeed
completely or raise a ``BrokerError`` having changed nothing; validation comes first.

Every call takes the time as ``now`` (the core reads no clock) and leaves its consequences in
``self.effects`` (effects.py), which the shell drains: sessions with output, records to commit,
the next deadline, bodies to read back from disk. The core holds no callback into the shell.

The work is done by one module per concern, which this class wires together:
topology.py (exchanges, queues, bindings), traversal.py (where a message goes), queue.py,
session.py and confirms.py, settle.py, dead_letter.py, scheduler.py (time), reply_to.py,
dedup.py, flow.py and paging.py (memory), journal.py (what must be kept).
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs

from ..errors import BrokerError, InvalidArgument, NotFound, PreconditionFailed
from ..model import (
    REPLY_TO,
    Binding,
    BrokerStats,
    Delivery,
    Event,
    ExchangeSpec,
    Message,
    QueueSpec,
    Table,
)
from .access import FULL, MANAGEMENT_TAGS, REDRIVE_TAGS, Access
from .dead_letter import DeadLetters, Redriven
from .dedup import Deduplicator
from .effects import Effects, NeedBodies, PageIn
from .flow import DEFAULT_QUEUE_LIMIT, FlowControl, MemoryLedger
from .journal import Batch, Journal
from .paging import Pager
from .publishing import Counts, Publishing
from .queue import MessageQueue
from .reply_to import ReplyTo
from .scheduler import Scheduler
from .session import Session
from .settle import Settler
from .topology import (
    SERVER_NAMED_PREFIX,
    DeclareOk,
    Limits,
    Topology,
    check_access,
    check_short_string,
)
from .traversal import RouteResult, explain


class Vhost:
    """One virtual host's state. ``max_message_size`` bounds bodies in bytes.

    With ``durable=True`` it journals every change to durable state (``self.journal``) and
    holds back confirms of persistent messages in durable queues until the front end reports
    the batch holding them committed (``batch_committed``).
    """

    def __init__(
        self,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        durable: bool = False,
        memory_limit: int | None = None,
        queue_flow_limit: int = DEFAULT_QUEUE_LIMIT,
        limits: Limits = Limits(),
    ) -> None:
        self.max_message_size = max_message_size
        self.limits = limits
        self.journal: Journal | None = Journal() if durable else None
        self.effects = Effects(journal=self.journal)
        self.ledger = MemoryLedger()
        self.flow = FlowControl(
            self.ledger, memory_limit=memory_limit, queue_limit=queue_flow_limit
        )
        self.pager = Pager(self.flow)
        self.scheduler = Scheduler(self.effects)
        self.topology = Topology(
            limits=limits,
            journal=self.journal,
            effects=self.effects,
            ledger=self.ledger,
            pager=self.pager,
            scheduler=self.scheduler,
        )
        self.replies = ReplyTo()
        self.dedup = Deduplicator(self.journal)
        self.counts = Counts()
        self.publishing = Publishing(
            topology=self.topology,
            journal=self.journal,
            flow=self.flow,
            pager=self.pager,
            scheduler=self.scheduler,
            dedup=self.dedup,
            replies=self.replies,
            counts=self.counts,
            max_message_size=max_message_size,
            dispatch=self._dispatch,
        )
        self.dead_letters = self.publishing.dead_letters = DeadLetters(
            self.topology, self.effects, self.publishing.enqueue, lambda: self.scheduler.now
        )
        self.settler = Settler(self.topology, self.scheduler, self.dead_letters, self._dispatch)
        self.exchanges = self.topology.exchanges  # the same dicts, for reading
        self.queues = self.topology.queues
        self.sessions: dict[int, Session] = {}
        self._session_ids = itertools.count(1)
        self.counts.published = self.counts.delivered = self.counts.acked = 0

    @property
    def now(self) -> float:
        """The time the latest call brought."""
        return self.scheduler.now

    def serve_from_disk(self, *, reads_back: bool, can_page: bool) -> None:
        """Before serving, the shell says whether it reads bodies back from disk (it has a
        store), and whether it has a page file and a task writing it."""
        self.topology.reads_back = reads_back
        self.topology.can_page = can_page

    # --- sessions ------------------------------------------------------------------------

    def open_session(self, owner: str, access: Access = FULL) -> Session:
        """A client's session; ``access`` is what its user may do here (permissions.py)."""
        session = Session(
            next(self._session_ids), owner, self.journal, self.effects, self.scheduler, access
        )
        self.sessions[session.id] = session
        return session

    def close_session(self, session: Session, *, now: float | None = None) -> None:
        """Requeue everything unacked, cancel its consumers. Idempotent."""
        self.scheduler.at(now)
        if session.closed:
            return
        session.closed = True
        self.flow.session_closed(session.id)
        self.replies.cancel(session)
        for tag in list(session.consumers):
            self._remove_consumer(session, tag)
        self.settler.requeue(session.take_all_unacked())
        del self.sessions[session.id]
        self.effects.output.discard(session.id)

    def release_owner(self, owner: str) -> None:
        """The connection ``owner`` is gone: delete its exclusive queues."""
        self.topology.remove_owned_by(owner)

    def take_events(self, session: Session, *, now: float | None = None) -> list[Event]:
        """Everything ``session`` should send now. Dispatch starved by a full outbox resumes."""
        self.scheduler.at(now)
        events = session.take_events()
        if session.starved:
            session.starved = False
            for consumer in list(session.consumers.values()):
                consumer.queue.activate(consumer)
                self._dispatch(consumer.queue)
        return events

    # --- topology ------------------------------------------------------------------------

    def declare_exchange(
        self, spec: ExchangeSpec, *, passive: bool = False, access: Access = FULL
    ) -> None:
        if not passive:  # RabbitMQ's table: configure; with an AE, write it and read this
            access.check("configure", "exchange", spec.name)
            alternate = spec.arguments.get("alternate-exchange")
            if isinstance(alternate, str):
                access.check("write", "exchange", alternate)
                access.check("read", "exchange", spec.name)
        self.topology.declare_exchange(spec, passive=passive)

    def delete_exchange(self, name: str, *, if_unused: bool = False, access: Access = FULL) -> None:
        access.check("configure", "exchange", name)
        self.topology.delete_exchange(name, if_unused=if_unused)

    def declare_queue(
        self,
        owner: str,
        spec: QueueSpec,
        *,
        passive: bool = False,
        now: float | None = None,
        access: Access = FULL,
    ) -> DeclareOk:
        self.scheduler.at(now)
        if passive and spec.name == REPLY_TO:  # the pseudo-queue "exists", as in RabbitMQ
            return DeclareOk(
                queue=REPLY_TO, message_count=0, consumer_count=0, arguments={}, delayed_count=0
            )
        if not passive:  # configure; with a DLX, write it and read this queue
            name = spec.name or SERVER_NAMED_PREFIX
            access.check("configure", "queue", name)
            dlx = spec.arguments.get("x-dead-letter-exchange")
            if isinstance(dlx, str):
                access.check("write", "exchange", dlx)
                access.check("read", "queue", name)
        return self.topology.declare_queue(owner, spec, passive=passive)

    def delete_queue(
        self,
        owner: str,
        name: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        now: float | None = None,
        access: Access = FULL,
    ) -> int:
        """Delete a queue; returns how many ready messages it held."""
        self.scheduler.at(now)
        access.check("configure", "queue", name)
        return self.topology.delete_queue(owner, name, if_unused=if_unused, if_empty=if_empty)

    def purge_queue(self, owner: str, name: str, *, access: Access = FULL) -> int:
        access.check("read", "queue", name)
        return self.topology.purge_queue(owner, name)

    def bind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
        *,
        access: Access = FULL,
    ) -> None:
        self.topology.bind(
            self._queue_binding(owner, queue, exchange, routing_key, arguments, access)
        )

    def unbind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
        *,
        access: Access = FULL,
    ) -> None:
        self.topology.unbind(
            self._queue_binding(owner, queue, exchange, routing_key, arguments, access)
        )

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Table | None = None,
        *,
        access: Access = FULL,
    ) -> None:
        self.topology.bind(
            self._exchange_binding(destination, source, routing_key, arguments, access)
        )

    def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Table | None = None,
        *,
        access: Access = FULL,
    ) -> None:
        self.topology.unbind(
            self._exchange_binding(destination, source, routing_key, arguments, access)
        )

    def _queue_binding(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: Table | None,
        access: Access,
    ) -> Binding:
        """The binding, checked: write on the queue, read on the exchange (RabbitMQ's table)."""
        access.check("write", "queue", queue)
        access.check("read", "exchange", exchange)
        return self.topology.queue_binding(owner, queue, exchange, routing_key, arguments)

    def _exchange_binding(
        self,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Table | None,
        access: Access,
    ) -> Binding:
        """The binding, checked: write on the destination, read on the source."""
        access.check("write", "exchange", destination)
        access.check("read", "exchange", source)
        return self.topology.exchange_binding(destination, source, routing_key, arguments)

    def bindings(self) -> list[Binding]:
        return self.topology.bindings()

    def explain_route(self, message: Message, *, access: Access = FULL) -> RouteResult:
        """Where ``message`` would go, binding by binding; nothing is published."""
        access.check_tags(MANAGEMENT_TAGS, "route explain")
        return explain(self.topology, message)

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self,
        session: Session,
        message: Message,
        *,
        mandatory: bool = False,
        now: float | None = None,
    ) -> int:
        """Route and enqueue ``message``; returns its publish sequence number.

        A publish that fails (no such exchange, body too large) is nacked with the reason and
        the error is raised too, so a front end can choose between reporting and closing.
        """
        if now is not None:
            self.scheduler.now = now
        return self.publishing.publish(session, message, mandatory=mandatory)

    def refuse_publish(self, session: Session, error: BrokerError) -> int:
        """A publish the front end could not read whole (too large): numbered, then nacked."""
        return self.publishing.refuse(session, error)

    # --- consuming -----------------------------------------------------------------------

    def consume(
        self,
        session: Session,
        queue: str,
        *,
        consumer_tag: str = "",
        prefetch: int = 0,
        auto_ack: bool = False,
        exclusive: bool = False,
        arguments: Table | None = None,
        now: float | None = None,
    ) -> str:
        self.scheduler.at(now)
        check_short_string("consumer tag", consumer_tag)
        if queue == REPLY_TO:
            return self.replies.consume(session, consumer_tag, auto_ack)
        session.access.check("read", "queue", queue)
        q = self.topology.queue(queue)
        check_access(session.owner, q)
        consumer = session.new_consumer(
            q,
            consumer_tag,
            prefetch=prefetch,
            auto_ack=auto_ack,
            exclusive=exclusive,
            arguments=arguments or {},
            limit=self.limits.consumers_per_session,
        )
        self.scheduler.touch(q)
        q.add_consumer(consumer)
        self._dispatch(q)
        return consumer.tag

    def share_prefetch(self, session: Session, count: int, *, now: float | None = None) -> None:
        """A limit of ``count`` unacked deliveries (0: none) shared by all of ``session``'s
        consumers, beside each one's own: AMQP's basic.qos with global=true, as RabbitMQ
        means it. A higher limit lets them take more at once."""
        self.scheduler.at(now)
        if not 0 <= count <= 65535:
            raise InvalidArgument(f"prefetch must be from 0 to 65535, not {count}")
        session.prefetch = count
        for consumer in list(session.consumers.values()):
            consumer.queue.activate(consumer)
            self._dispatch(consumer.queue)

    def cancel(self, session: Session, consumer_tag: str, *, now: float | None = None) -> None:
        """Stop a consumer. Its unacked messages stay unacked (ack them or close to requeue)."""
        self.scheduler.at(now)
        if consumer_tag and consumer_tag == session.reply_consumer:
            self.replies.cancel(session)
            return
        if consumer_tag not in session.consumers:
            raise NotFound(f"no consumer {consumer_tag!r} on this session")
        self._remove_consumer(session, consumer_tag)

    def _remove_consumer(self, session: Session, tag: str) -> None:
        consumer = session.consumers.pop(tag)
        queue = consumer.queue
        queue.remove_consumer(consumer)
        self.scheduler.touch(queue)
        if queue.spec.auto_delete and not queue.consumers and not queue.deleted:
            self.topology.remove_queue(queue)

    def get(
        self, session: Session, queue: str, *, auto_ack: bool = False, now: float | None = None
    ) -> Delivery | None:
        """The next ready message, or None. Raises ``NeedBodies`` (having changed nothing) if
        its body is on disk: the shell reads it back and asks again."""
        self.scheduler.at(now)
        session.access.check("read", "queue", queue)
        q = self.topology.queue(queue)
        check_access(session.owner, q)
        self.scheduler.touch(q)
        entry = q.fetch()
        if entry is None:
            if len(q):
                raise NeedBodies(q)
            return None
        self.counts.delivered += 1
        delivery = session.record_delivery(q, entry, None, track=not auto_ack)
        return attrs.evolve(delivery, message_count=len(q))

    def _dispatch(self, queue: MessageQueue) -> None:
        self.counts.delivered += queue.dispatch()

    # --- settling ------------------------------------------------------------------------

    def ack(
        self,
        session: Session,
        delivery_tag: int,
        *,
        multiple: bool = False,
        now: float | None = None,
    ) -> None:
        if now is not None:
            self.scheduler.now = now
        settled = session.take_settled(delivery_tag, multiple)
        self.counts.acked += len(settled)
        self.settler.forget(settled)
        self.settler.credit(settled)

    def nack(
        self,
        session: Session,
        delivery_tag: int,
        *,
        multiple: bool = False,
        requeue: bool = True,
        now: float | None = None,
    ) -> None:
        self.scheduler.at(now)
        settled = session.take_settled(delivery_tag, multiple)
        if requeue:
            self.settler.requeue(settled, backoff=True)
        else:
            self.settler.reject(settled)

    def reject(
        self, session: Session, delivery_tag: int, *, requeue: bool = True, now: float | None = None
    ) -> None:
        self.nack(session, delivery_tag, multiple=False, requeue=requeue, now=now)

    def release(
        self,
        session: Session,
        delivery_tag: int,
        *,
        multiple: bool = False,
        now: float | None = None,
    ) -> None:
        """Give back deliveries the application never saw (AMQP 1.0's "released"): each goes
        back to its place as if it had not been handed out. Unlike a nack, it is no delivery
        attempt: no ``x-delivery-count``, no delivery limit, no retry backoff."""
        self.scheduler.at(now)
        settled = session.take_settled(delivery_tag, multiple)
        self.settler.uncount(settled)
        self.settler.requeue(settled, counted=False)

    def extend(
        self, session: Session, delivery_tag: int, milliseconds: int, *, now: float | None = None
    ) -> None:
        """Give an unacked delivery ``milliseconds`` more from now before it times out."""
        self.scheduler.at(now)
        item = session.unacked.get(delivery_tag)
        if item is None:
            if delivery_tag in session.timed_out:
                return  # too late: it already went back; the client has been told
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        self.scheduler.start_deadline(session, item, milliseconds)

    # --- dead letters, disk ----------------------------------------------------------------

    def redrive(
        self,
        owner: str,
        queue: str,
        *,
        to_exchange: str | None = None,
        limit: int = 0,
        now: float | None = None,
        access: Access = FULL,
    ) -> Redriven:
        """Move ready messages out of a dead-letter queue (see ``DeadLetters.redrive``)."""
        self.scheduler.at(now)
        access.check_tags(REDRIVE_TAGS, "redrive")
        access.check("read", "queue", queue)
        if to_exchange is not None:
            access.check("write", "exchange", to_exchange)
        return self.dead_letters.redrive(
            owner, queue, to_exchange=to_exchange, limit=limit, access=access
        )

    def paged_in(
        self, request: PageIn, bodies: dict[int, Message], *, now: float | None = None
    ) -> None:
        """The shell read back what ``request`` asked for (``bodies`` by seq; a body it could
        not find is left out). The head of a queue dispatches again; messages that died
        while on disk go to the dead-letter exchange."""
        self.scheduler.at(now)
        if request.dead_letter is not None:
            self.dead_letters.paged_in(request, bodies)
            return
        queue = request.queue
        queue.paging_in = False
        queue.paged_in(request.entries, bodies)
        if not queue.deleted:
            self._dispatch(queue)

    # --- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time something is due (a message or an unused queue expiring, an ack
        deadline passing, a delayed message becoming ready)."""
        return self.scheduler.next_deadline(self.sessions)

    def expire(self, *, now: float | None = None) -> int:
        """Expire (and dead-letter) every message due by ``now``, and delete queues unused
        for their x-expires. Returns how many messages expired."""
        scheduler = self.scheduler
        scheduler.at(now)
        self.settler.time_out(self.sessions)
        for queue in scheduler.delaying_queues():
            if queue.promote(scheduler.now):  # delayed messages became ready
                if queue.next_expiry() is not None:
                    scheduler.expiring(queue)
                self._dispatch(queue)
                self.publishing.drop_head(queue)
        for queue in scheduler.lapsed_leases():
            self.topology.remove_queue(queue)
        return sum(self.publishing.expire_queue(q) for q in scheduler.expiring_queues())

    # --- durability --------------------------------------------------------------------

    def batch_committed(self, batch: Batch) -> None:
        """The store holds ``batch``: confirm its publishes, page out far-from-head bodies."""
        self.publishing.batch_committed(batch)

    def batch_failed(self, batch: Batch, reason: str) -> bool:
        """The store could not write ``batch`` (see ``Publishing.batch_failed``)."""
        return self.publishing.batch_failed(batch, reason)

    def restore(self, snapshot: Any, *, now: float | None = None) -> int:
        """Rebuild durable state from a store snapshot (see ``Topology.restore``)."""
        self.scheduler.at(now)
        return self.topology.restore(snapshot)

    def stats(self) -> BrokerStats:
        queues = self.queues.values()
        return BrokerStats(
            exchanges=len(self.exchanges),
            queues=len(self.queues),
            bindings=self.topology.binding_count,
            sessions=len(self.sessions),
            consumers=sum(len(q.consumers) for q in queues),
            ready=sum(len(q) for q in queues),
            unacked=sum(q.unacked for q in queues),
            published=self.counts.published,
            delivered=self.counts.delivered,
            acked=self.counts.acked,
        )
