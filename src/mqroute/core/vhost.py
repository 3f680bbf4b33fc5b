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

from ..errors import BrokerError, InvalidArgument, NotFound, PreconditionFailed, ResourceLocked
from ..model import (
    MAX_SHORT_STRING,
    REPLY_TO,
    Binding,
    BrokerStats,
    Delivery,
    Event,
    ExchangeSpec,
    Message,
    QueueSpec,
    Returned,
    Table,
)
from .dead_letter import DeadLetters, Redriven
from .dedup import Deduplicator
from .effects import Effects, NeedBodies, PageIn
from .flow import DEFAULT_QUEUE_LIMIT, FlowControl, MemoryLedger
from .journal import Batch, Journal, PutMessage
from .paging import Pager
from .queue import MessageQueue
from .reply_to import ReplyTo, is_reply
from .scheduler import Scheduler
from .session import ConsumerState, Session, consumer_settings
from .settle import Settler
from .topology import DeclareOk, Limits, Topology, check_access, check_short_string
from .traversal import RouteResult, explain, route


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
        self.dead_letters = DeadLetters(
            self.topology, self.effects, self.enqueue, lambda: self.scheduler.now
        )
        self.settler = Settler(self.topology, self.scheduler, self.dead_letters, self._dispatch)
        self.replies = ReplyTo()
        self.dedup = Deduplicator(self.journal)
        self.exchanges = self.topology.exchanges  # the same dicts, for reading
        self.queues = self.topology.queues
        self.sessions: dict[int, Session] = {}
        self._session_ids = itertools.count(1)
        self._published = self._delivered = self._acked = 0

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

    def open_session(self, owner: str) -> Session:
        session = Session(
            next(self._session_ids), owner, self.journal, self.effects, self.scheduler
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

    def declare_exchange(self, spec: ExchangeSpec, *, passive: bool = False) -> None:
        self.topology.declare_exchange(spec, passive=passive)

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        self.topology.delete_exchange(name, if_unused=if_unused)

    def declare_queue(
        self, owner: str, spec: QueueSpec, *, passive: bool = False, now: float | None = None
    ) -> DeclareOk:
        self.scheduler.at(now)
        return self.topology.declare_queue(owner, spec, passive=passive)

    def delete_queue(
        self,
        owner: str,
        name: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        now: float | None = None,
    ) -> int:
        """Delete a queue; returns how many ready messages it held."""
        self.scheduler.at(now)
        return self.topology.delete_queue(owner, name, if_unused=if_unused, if_empty=if_empty)

    def purge_queue(self, owner: str, name: str) -> int:
        return self.topology.purge_queue(owner, name)

    def bind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
    ) -> None:
        topology = self.topology
        topology.bind(topology.queue_binding(owner, queue, exchange, routing_key, arguments))

    def unbind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
    ) -> None:
        topology = self.topology
        topology.unbind(topology.queue_binding(owner, queue, exchange, routing_key, arguments))

    def bind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        topology = self.topology
        topology.bind(topology.exchange_binding(destination, source, routing_key, arguments))

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        topology = self.topology
        topology.unbind(topology.exchange_binding(destination, source, routing_key, arguments))

    def bindings(self) -> list[Binding]:
        return self.topology.bindings()

    def explain_route(self, message: Message) -> RouteResult:
        """Where ``message`` would go, binding by binding; nothing is published."""
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
        scheduler = self.scheduler
        if now is not None:
            scheduler.now = now
        seq = session.begin_publish()
        try:
            if len(message.routing_key) * 4 > MAX_SHORT_STRING:  # short ones need no encoding
                check_short_string("routing key", message.routing_key)
            if len(message.body) > self.max_message_size:
                raise PreconditionFailed(
                    f"message body of {len(message.body)} bytes exceeds the maximum of "
                    f"{self.max_message_size}"
                )
            if message.properties.reply_to == REPLY_TO:
                message = self.replies.addressed(session, message)
            if is_reply(message):
                self._published += 1
                self._delivered += self.replies.reply(session, seq, message, mandatory)
                return seq
            queues = route(self.topology, message)
        except BrokerError as exc:
            session.settle_publish(seq, ok=False, code=exc.code, text=exc.reason)
            raise
        self._published += 1
        exchange = self.exchanges.get(message.exchange)
        seen = exchange.seen if exchange is not None else None
        if seen is not None and self.dedup.duplicate(seen, message, scheduler.now):
            self.dedup.settle_duplicate(session, seq)
            return seq
        if not queues and mandatory:
            session.emit(
                Returned(
                    publish_seq=seq,
                    code="NO_ROUTE",
                    reply_text="no queue matched",
                    message=message,
                )
            )
        stored, refused = self.enqueue(message, queues)
        if seen is not None and exchange is not None and refused is None:
            # Only an id the broker took is remembered: a nacked publish is retried.
            holder = ("exchange", exchange.name, exchange.spec.durable)
            self.dedup.remember(seen, holder, message, scheduler.now, awaits_commit=stored)
        self.flow.after_publish(session, message.properties.persistent, queues)
        if refused:
            session.settle_publish(seq, ok=False, text=f"queue {refused!r} is full (x-overflow)")
        elif stored:
            assert self.journal is not None
            self.journal.batch.confirms.append((session, seq))  # confirmed after the commit
        else:
            session.settle_publish(seq, ok=True)
        return seq

    def refuse_publish(self, session: Session, error: BrokerError) -> int:
        """A publish the front end could not read whole (too large): numbered, then nacked."""
        seq = session.begin_publish()
        session.settle_publish(seq, ok=False, code=error.code, text=error.reason)
        return seq

    def enqueue(self, message: Message, queues: list[MessageQueue]) -> tuple[bool, str | None]:
        """Put ``message`` in each queue, honouring length limits; dispatch.

        Returns whether the store must keep it before it is confirmed, and the name of a queue
        that refused it (x-overflow reject-publish), if any.
        """
        stored = False
        refused = None
        keep = self.journal is not None and message.properties.persistent
        paging = self.flow.paging and self.topology.can_page
        scheduler = self.scheduler
        now = scheduler.now
        for queue in queues:
            seen = queue.seen
            if seen is not None and self.dedup.duplicate(seen, message, now):
                continue
            args = queue.args
            if args.overflow != "drop-head" and queue.would_overflow(len(message.body)):
                refused = queue.name
                if args.overflow == "reject-publish-dlx":
                    self.dead_letters.message(queue, message, "maxlen")
                continue
            ready_at = scheduler.ready_at(message)
            expires_at = scheduler.expires_at(queue, message, ready_at)
            entry = queue.publish(message, expires_at, ready_at)
            durable = keep and queue.keeps_messages
            if seen is not None:  # taken: a retry of it is a duplicate from now on
                holder = ("queue", queue.name, queue.keeps_messages)
                self.dedup.remember(seen, holder, message, now, awaits_commit=durable)
            if durable:
                entry.persisted = stored = True
                assert self.journal is not None
                self.journal.add(PutMessage(queue.name, entry.seq, message, expires_at, ready_at))
                self.journal.batch.stored.append((queue, entry))
            elif paging and (ready_at is not None or queue.far()):
                self.pager.enqueued(queue, entry)  # memory is short: its body goes to disk
            if queue.consumers:
                self._dispatch(queue)
            if ready_at is not None:
                scheduler.delaying(queue, ready_at)
                continue  # not ready yet: limits and TTL apply when it is
            if expires_at is not None:
                if expires_at <= now:  # TTL 0: delivered just now, or expired
                    scheduler.expiring(queue)
                    self._expire_queue(queue)
                else:
                    scheduler.expiring(queue, expires_at)
            self._drop_head(queue)
        return stored, refused

    def _drop_head(self, queue: MessageQueue) -> None:
        while queue.over_limit():  # drop-head: the oldest ready messages make room
            head = queue.fetch(body=False)
            assert head is not None
            self.dead_letters.entries(queue, [head], "maxlen")

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
        q = self.topology.queue(queue)
        check_access(session.owner, q)
        if prefetch < 0 or prefetch > 65535:
            raise InvalidArgument(f"prefetch must be from 0 to 65535, not {prefetch}")
        if len(session.consumers) >= self.limits.consumers_per_session:
            raise PreconditionFailed(
                f"cannot consume from {queue!r}: consumer limit per connection "
                f"({self.limits.consumers_per_session}) is reached"
            )
        if consumer_tag and consumer_tag in session.consumers:
            raise PreconditionFailed(f"consumer tag {consumer_tag!r} is already in use")
        if any(c.exclusive for c in q.consumers.values() if isinstance(c, ConsumerState)):
            raise ResourceLocked(f"queue {queue!r} has an exclusive consumer")
        if exclusive and q.consumers:
            raise ResourceLocked(
                f"queue {queue!r} already has consumers; cannot consume exclusively"
            )
        priority, timeout = consumer_settings(arguments or {}, q)
        tag = consumer_tag or session.new_consumer_tag()
        consumer = ConsumerState(
            tag=tag,
            session=session,
            queue=q,
            prefetch=prefetch,
            auto_ack=auto_ack,
            exclusive=exclusive,
            arguments=arguments or {},
            priority=priority,
            timeout=timeout,
        )
        session.consumers[tag] = consumer
        self.scheduler.touch(q)
        q.add_consumer(consumer)
        self._dispatch(q)
        return tag

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
        queue.remove_consumer(tag)
        self.scheduler.touch(queue)
        if queue.spec.auto_delete and not queue.consumers and not queue.deleted:
            self.topology.remove_queue(queue)

    def get(
        self, session: Session, queue: str, *, auto_ack: bool = False, now: float | None = None
    ) -> Delivery | None:
        """The next ready message, or None. Raises ``NeedBodies`` (having changed nothing) if
        its body is on disk: the shell reads it back and asks again."""
        self.scheduler.at(now)
        q = self.topology.queue(queue)
        check_access(session.owner, q)
        self.scheduler.touch(q)
        entry = q.fetch()
        if entry is None:
            if len(q):
                raise NeedBodies(q)
            return None
        self._delivered += 1
        delivery = session.record_delivery(q, entry, None, track=not auto_ack)
        return attrs.evolve(delivery, message_count=len(q))

    def _dispatch(self, queue: MessageQueue) -> None:
        self._delivered += queue.dispatch()

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
        self._acked += len(settled)
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
    ) -> Redriven:
        """Move ready messages out of a dead-letter queue (see ``DeadLetters.redrive``)."""
        self.scheduler.at(now)
        return self.dead_letters.redrive(owner, queue, to_exchange=to_exchange, limit=limit)

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
                self._drop_head(queue)
        for queue in scheduler.lapsed_leases():
            self.topology.remove_queue(queue)
        return sum(self._expire_queue(q) for q in scheduler.expiring_queues())

    def _expire_queue(self, queue: MessageQueue) -> int:
        expired = queue.expire(self.scheduler.now)
        if expired:
            self.dead_letters.entries(queue, expired, "expired")
        return len(expired)

    # --- durability --------------------------------------------------------------------

    def batch_committed(self, batch: Batch) -> None:
        """The store holds ``batch``: confirm its publishes, page out far-from-head bodies."""
        for session, seq in batch.confirms:
            if not session.closed:
                session.settle_publish(seq, ok=True)
        for queue, entry in batch.stored:
            if not queue.deleted:
                queue.page_out(entry)

    def batch_failed(self, batch: Batch, reason: str) -> bool:
        """The store could not write ``batch`` (a full disk): its publishes are nacked, and
        their messages stay queued in memory only; everything else is written again with the
        next batch (declarations are answered once they are on disk). Returns whether what
        else waited on ``batch`` may be released now (``Journal.retry``)."""
        for session, seq in batch.confirms:
            if not session.closed:
                session.settle_publish(seq, ok=False, code="RESOURCE_ERROR", text=reason)
        for _, entry in batch.stored:
            entry.persisted = False
        for seen, message_id in batch.remembered:  # nacked, so not taken: a retry is welcome
            seen.forget(message_id)
        assert self.journal is not None
        return self.journal.retry(batch)

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
            published=self._published,
            delivered=self._delivered,
            acked=self._acked,
        )
