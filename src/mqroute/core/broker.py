"""One virtual host: exchanges, queues, bindings, sessions, and every operation on them.

This is the broker's core. It is plain synchronous Python: no I/O, no clock, no trio, so any
front end (the native CBOR protocol today, AMQP 0-9-1 later) can drive it and tests can call it
directly. Operations either succeed completely or raise a ``BrokerError`` having changed
nothing; validation always comes before mutation.

Every call takes the time as ``now`` (the core reads no clock) and leaves its consequences in
``self.effects`` (effects.py), which the shell drains: sessions with output, records to commit,
the next deadline, bodies to read back from disk. The core holds no callback into the shell.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import (
    AccessRefused,
    BrokerError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from ..model import (
    EXCHANGE_TYPES,
    MAX_MILLISECONDS,
    MAX_SHORT_STRING,
    Binding,
    BrokerStats,
    ConsumerCancelled,
    Delivery,
    DeliveryTimedOut,
    Event,
    ExchangeSpec,
    Message,
    QueueSpec,
    Returned,
    Table,
    brief,
    utf8_length_over,
)
from . import dead_letter
from .dedup import SeenIds, window_of
from .effects import Effects, NeedBodies, PageIn
from .flow import DEFAULT_QUEUE_LIMIT, ENTRY_OVERHEAD, FlowControl, MemoryLedger
from .journal import (
    Batch,
    DropBinding,
    DropExchange,
    DropMessages,
    DropQueue,
    ForgetSeen,
    HoldMessage,
    Journal,
    MarkDelivered,
    PutBinding,
    PutExchange,
    PutMessage,
    PutQueue,
    PutSeen,
    Record,
)
from .paging import Pager
from .queue import PAGE, MessageQueue, QueueEntry
from .routing import EXCHANGE_TYPE_CLASSES, ExchangeType
from .session import TIMED_OUT_MEMORY, ConsumerState, Session, Unacked

log = logging.getLogger("mqroute.broker")

DEFAULT_EXCHANGE = ""
PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
}
REPLY_TO = "amq.rabbitmq.reply-to"  # the direct reply-to pseudo-queue, as RabbitMQ names it


class Exchange:
    def __init__(self, spec: ExchangeSpec) -> None:
        self.spec = spec
        self.router: ExchangeType = EXCHANGE_TYPE_CLASSES[spec.type]()
        self.binding_count = 0
        self.ever_bound = False  # auto-delete waits for a first binding, as RabbitMQ
        window = window_of("exchange", spec.name, spec.arguments)
        self.seen = SeenIds(window) if window else None

    @property
    def name(self) -> str:
        return self.spec.name


@attrs.frozen(kw_only=True)
class Limits:
    """How many of each thing one virtual host may hold; past a limit a declare, bind or
    consume fails with PRECONDITION_FAILED naming it (RabbitMQ's max-queues wording)."""

    queues: int = 100_000
    exchanges: int = 10_000
    bindings: int = 1_000_000
    consumers_per_session: int = 10_000


@attrs.frozen(kw_only=True)
class DeclareOk:
    queue: str
    message_count: int
    consumer_count: int
    arguments: Table  # the queue's, as declared (a passive declare learns them)
    delayed_count: int  # waiting for an x-delay or a retry backoff (not in message_count)


@attrs.frozen(kw_only=True)
class Redriven:
    moved: int
    more: bool  # it stopped at a body on disk: call again once it is read back


@attrs.frozen(kw_only=True)
class RouteStep:
    """One binding a message followed, for route explanations."""

    exchange: str
    exchange_type: str
    binding: Binding


@attrs.frozen(kw_only=True)
class RouteResult:
    queues: list[str]
    steps: list[RouteStep]


class Broker:
    """One virtual host's state. ``max_message_size`` bounds bodies in bytes.

    With ``durable=True`` the broker journals every change to durable state (``self.journal``)
    and holds back confirms of persistent messages in durable queues until the front end
    reports the batch holding them committed (``batch_committed``).
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
        self._binding_count = 0
        self.journal: Journal | None = Journal() if durable else None
        self.effects = Effects(journal=self.journal)
        self.ledger = MemoryLedger()
        self.flow = FlowControl(
            self.ledger, memory_limit=memory_limit, queue_limit=queue_flow_limit
        )
        self.pager = Pager(self.flow)
        # Set by the shell before it serves: whether it reads bodies back from disk (it has a
        # store), and whether it has a page file (and a task writing it).
        self.reads_back = False
        self.can_page = False
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, MessageQueue] = {}
        self.sessions: dict[int, Session] = {}
        # Bindings by destination, to remove them when the destination goes.
        self._bindings_to: dict[tuple[str, str], dict[tuple[Any, ...], Binding]] = {}
        self._session_ids = itertools.count(1)
        self._queue_names = itertools.count(1)
        self._published = self._delivered = self._acked = 0
        # Seconds since the epoch, as the latest call's ``now`` said; the core reads no clock.
        self.now = 0.0
        # Timers: queues holding messages that can expire, lease or become ready.
        self._expiring: dict[int, MessageQueue] = {}
        self._leased: dict[int, MessageQueue] = {}  # queues with x-expires
        self._delaying: dict[int, MessageQueue] = {}  # queues holding delayed messages
        self._reply_sessions: dict[int, Session] = {}  # sessions consuming amq.rabbitmq.reply-to
        self._ack_deadlines: list[tuple[float, int, int]] = []  # (deadline, session id, tag)
        self._last_forget = 0.0
        for name, kind in PREDECLARED.items():
            self.exchanges[name] = Exchange(ExchangeSpec(name=name, type=kind, durable=True))

    # --- sessions ------------------------------------------------------------------------

    def _at(self, now: float | None) -> None:
        """Time moves to ``now`` (None: it stays where the latest call left it)."""
        if now is not None:
            self.now = now

    def open_session(self, owner: str) -> Session:
        session = Session(next(self._session_ids), owner, self.journal, self.effects)
        session.on_timeout = self._start_deadline
        self.sessions[session.id] = session
        return session

    def close_session(self, session: Session, *, now: float | None = None) -> None:
        """Requeue everything unacked, cancel its consumers. Idempotent."""
        self._at(now)
        if session.closed:
            return
        session.closed = True
        self.flow.session_closed(session.id)
        self._reply_sessions.pop(session.id, None)
        for tag in list(session.consumers):
            self._remove_consumer(session, tag)
        self._requeue(session.take_all_unacked())
        del self.sessions[session.id]
        self.effects.output.discard(session.id)

    def release_owner(self, owner: str) -> None:
        """The connection ``owner`` is gone: delete its exclusive queues."""
        for queue in [q for q in self.queues.values() if q.spec.exclusive and q.owner == owner]:
            self._delete_queue(queue)

    def take_events(self, session: Session, *, now: float | None = None) -> list[Event]:
        """Everything ``session`` should send now. Dispatch starved by a full outbox resumes."""
        self._at(now)
        events = session.take_events()
        if session.starved:
            session.starved = False
            self._resume(session)
        return events

    def _resume(self, session: Session) -> None:
        for consumer in list(session.consumers.values()):
            consumer.queue.activate(consumer)
            self._dispatch(consumer.queue)

    # --- exchanges -----------------------------------------------------------------------

    def declare_exchange(self, spec: ExchangeSpec, *, passive: bool = False) -> None:
        if spec.name == DEFAULT_EXCHANGE:
            raise AccessRefused("operation not permitted on the default exchange")
        existing = self.exchanges.get(spec.name)
        if passive:
            if existing is None:
                _check_name("exchange", spec.name)
                raise NotFound(f"no exchange {spec.name!r}")
            return
        if existing is not None:
            if not existing.spec.equivalent(spec):
                raise PreconditionFailed(
                    f"exchange {spec.name!r} exists with different properties: "
                    f"{_describe_exchange(existing.spec)}; requested {_describe_exchange(spec)}"
                )
            return
        _check_name("exchange", spec.name)
        if spec.name.startswith("amq."):
            raise AccessRefused(f"exchange name {spec.name!r} uses the reserved prefix 'amq.'")
        if len(self.exchanges) - len(PREDECLARED) >= self.limits.exchanges:
            raise PreconditionFailed(
                f"cannot declare exchange {spec.name!r}: exchange limit "
                f"({self.limits.exchanges}) is reached"
            )
        if spec.type not in EXCHANGE_TYPES:
            raise InvalidArgument(
                f"unknown exchange type {spec.type!r}; expected one of {', '.join(EXCHANGE_TYPES)}"
            )
        self.exchanges[spec.name] = Exchange(spec)
        if spec.durable:
            self._record(PutExchange(spec))

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        if name == DEFAULT_EXCHANGE or name.startswith("amq."):
            raise AccessRefused(f"exchange {name!r} cannot be deleted")
        exchange = self._exchange(name)
        if if_unused and exchange.binding_count:
            raise PreconditionFailed(f"exchange {name!r} in use: it has bindings")
        self._delete_exchange(exchange)

    def _delete_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        if exchange.spec.durable:
            self._record(DropExchange(exchange.name))
        for binding in list(exchange.router.bindings()):
            self._forget_binding(binding, exchange)
        for binding in list(self._bindings_to.get(("exchange", exchange.name), {}).values()):
            self._remove_binding(binding)

    # --- queues --------------------------------------------------------------------------

    def declare_queue(
        self, owner: str, spec: QueueSpec, *, passive: bool = False, now: float | None = None
    ) -> DeclareOk:
        self._at(now)
        existing = self.queues.get(spec.name) if spec.name else None
        if passive:
            if existing is None:
                _check_name("queue", spec.name)
                raise NotFound(f"no queue {spec.name!r}")
            self._check_access(owner, existing)
            return self._declare_ok(existing)
        if existing is not None:
            self._check_access(owner, existing)
            if not existing.spec.equivalent(spec):
                raise PreconditionFailed(
                    f"queue {spec.name!r} exists with different properties: "
                    f"{_describe_queue(existing.spec)}; requested {_describe_queue(spec)}"
                )
            return self._declare_ok(existing)
        if spec.name:
            _check_name("queue", spec.name)
            if spec.name.startswith("amq."):
                raise AccessRefused(f"queue name {spec.name!r} uses the reserved prefix 'amq.'")
        else:
            spec = attrs.evolve(spec, name=self._server_queue_name())
        if len(self.queues) >= self.limits.queues:
            raise PreconditionFailed(
                f"cannot declare queue {spec.name!r}: queue limit ({self.limits.queues}) is reached"
            )
        queue = self._new_queue(spec, owner=owner if spec.exclusive else None)
        self.queues[spec.name] = queue
        if queue.keeps_messages:
            self._record(PutQueue(spec))
        return self._declare_ok(queue)

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
        self._at(now)
        queue = self._queue(name)
        self._check_access(owner, queue)
        if if_unused and queue.consumers:
            raise PreconditionFailed(
                f"queue {name!r} in use: it has {len(queue.consumers)} consumers"
            )
        if if_empty and len(queue):
            raise PreconditionFailed(f"queue {name!r} not empty: it has {len(queue)} messages")
        return self._delete_queue(queue)

    def purge_queue(self, owner: str, name: str) -> int:
        queue = self._queue(name)
        self._check_access(owner, queue)
        removed = queue.purge()
        self._gone(queue, removed)
        return len(removed)

    def _delete_queue(self, queue: MessageQueue) -> int:
        count = len(queue)
        queue.deleted = True
        del self.queues[queue.name]
        if queue.keeps_messages:
            self._record(DropQueue(queue.name))
        for binding in list(self._bindings_to.get(("queue", queue.name), {}).values()):
            self._remove_binding(binding)
        for consumer in list(queue.consumers.values()):
            assert isinstance(consumer, ConsumerState)
            consumer.session.consumers.pop(consumer.tag, None)
            consumer.session.emit(
                ConsumerCancelled(consumer_tag=consumer.tag, reason=f"queue {queue.name!r} deleted")
            )
        queue.consumers.clear()
        for entry in queue.purge() + queue.take_delayed():
            queue.release(entry)
        if self.can_page:
            self.pager.queue_deleted(queue)
        return count

    # --- bindings ------------------------------------------------------------------------

    def bind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
    ) -> None:
        self._bind(self._queue_binding(owner, queue, exchange, routing_key, arguments))

    def unbind_queue(
        self,
        owner: str,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Table | None = None,
    ) -> None:
        self._unbind(self._queue_binding(owner, queue, exchange, routing_key, arguments))

    def bind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._bind(self._exchange_binding(destination, source, routing_key, arguments))

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str = "", arguments: Table | None = None
    ) -> None:
        self._unbind(self._exchange_binding(destination, source, routing_key, arguments))

    def _queue_binding(
        self, owner: str, queue: str, exchange: str, routing_key: str, arguments: Table | None
    ) -> Binding:
        if queue not in self.queues and queue in self.exchanges and exchange in self.queues:
            raise NotFound(
                f"no queue {queue!r}, but there is an exchange {queue!r} and a queue "
                f"{exchange!r}: the queue and the exchange look swapped (the queue comes first)"
            )
        self._check_access(owner, self._queue(queue))
        check_short_string("routing key", routing_key)
        return Binding(
            source=exchange,
            destination=queue,
            destination_kind="queue",
            routing_key=routing_key,
            arguments=arguments or {},
        )

    def _exchange_binding(
        self, destination: str, source: str, routing_key: str, arguments: Table | None
    ) -> Binding:
        self._exchange(destination, writable=True)
        check_short_string("routing key", routing_key)
        return Binding(
            source=source,
            destination=destination,
            destination_kind="exchange",
            routing_key=routing_key,
            arguments=arguments or {},
        )

    def _bind(self, binding: Binding) -> None:
        source = self._exchange(binding.source, writable=True)
        source.router.validate_binding(binding)
        index = self._bindings_to.setdefault((binding.destination_kind, binding.destination), {})
        if binding.key in index:
            return  # binding again is a no-op, as in AMQP
        if self._binding_count >= self.limits.bindings:
            raise PreconditionFailed(
                f"cannot bind {binding.destination!r} to {binding.source!r}: binding limit "
                f"({self.limits.bindings}) is reached"
            )
        self._binding_count += 1
        index[binding.key] = binding
        if self._is_durable_binding(binding):
            self._record(PutBinding(binding))
        source.router.add_binding(binding)
        source.binding_count += 1
        source.ever_bound = True

    def _unbind(self, binding: Binding) -> None:
        self._exchange(binding.source, writable=True)  # NOT_FOUND for the exchange comes first
        index = self._bindings_to.get((binding.destination_kind, binding.destination), {})
        if binding.key not in index:
            raise NotFound(
                f"no binding from {binding.source!r} to {binding.destination_kind} "
                f"{binding.destination!r} with key {binding.routing_key!r}"
            )
        self._remove_binding(index[binding.key])

    def _remove_binding(self, binding: Binding) -> None:
        source = self.exchanges[binding.source]
        self._forget_binding(binding, source)
        if source.spec.auto_delete and source.binding_count == 0 and source.ever_bound:
            self._delete_exchange(source)

    def _forget_binding(self, binding: Binding, source: Exchange) -> None:
        if self._is_durable_binding(binding):
            self._record(DropBinding(binding))
        source.router.remove_binding(binding)
        source.binding_count -= 1
        index = self._bindings_to.get((binding.destination_kind, binding.destination))
        if index is not None and index.pop(binding.key, None) is not None:
            self._binding_count -= 1
            if not index:
                del self._bindings_to[(binding.destination_kind, binding.destination)]

    def bindings(self) -> list[Binding]:
        return [b for index in self._bindings_to.values() for b in index.values()]

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
            self.now = now
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
                message = self._with_reply_address(session, message)
            if message.exchange == DEFAULT_EXCHANGE and message.routing_key.startswith(
                REPLY_TO + "."
            ):
                return self._reply(session, seq, message, mandatory)
            queues = self._route(message)
        except BrokerError as exc:
            session.settle_publish(seq, ok=False, code=exc.code, text=exc.reason)
            raise
        self._published += 1
        exchange = self.exchanges.get(message.exchange)
        if exchange is not None and self._duplicate(exchange.seen, message):
            self._settle_duplicate(session, seq)
            return seq
        if not queues and mandatory:
            session.emit(
                Returned(
                    publish_seq=seq,
                    reply_code="NO_ROUTE",
                    reply_text="no queue matched",
                    message=message,
                )
            )
        stored, refused = self._enqueue(message, queues)
        if exchange is not None and exchange.seen is not None and refused is None:
            # Only an id the broker took is remembered: a nacked publish is retried.
            self._remember(
                exchange.seen, "exchange", exchange.name, exchange.spec.durable, message, stored
            )
        flow = self.flow
        kind = 2 if message.properties.persistent else 1
        if not session.publishes & kind:  # flow control learns of a publisher once
            session.publishes |= kind
            flow.published(session.id, kind == 2)
        limit = flow.queue_limit
        for queue in queues:
            # flow.over_limit(queue), inlined: this runs once per message and queue
            if queue.ready_bytes + queue.ready_count * ENTRY_OVERHEAD > limit and queue.consumers:
                flow.wait_for(session.id, queue)
            if (flow.memory_alarm is not None or flow.paging_behind) and flow.heavy(queue):
                flow.block_for_memory(session.id)
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

    def _enqueue(self, message: Message, queues: list[MessageQueue]) -> tuple[bool, str | None]:
        """Put ``message`` in each queue, honouring length limits; dispatch.

        Returns whether the store must keep it before it is confirmed, and the name of a queue
        that refused it (x-overflow reject-publish), if any.
        """
        stored = False
        refused = None
        keep = self.journal is not None and message.properties.persistent
        paging = self.flow.paging and self.can_page
        for queue in queues:
            if queue.seen is not None and self._duplicate(queue.seen, message):
                continue
            args = queue.args
            if args.overflow != "drop-head" and queue.would_overflow(len(message.body)):
                refused = queue.name
                if args.overflow == "reject-publish-dlx":
                    self._dead_letter_message(queue, message, "maxlen")
                continue
            ready_at = self._ready_at(message)
            expires_at = self._expires_at(queue, message, ready_at)
            entry = queue.publish(message, expires_at, ready_at)
            if queue.seen is not None:  # taken: a retry of it is a duplicate from now on
                self._remember(
                    queue.seen,
                    "queue",
                    queue.name,
                    queue.keeps_messages,
                    message,
                    keep and queue.keeps_messages,
                )
            if keep and queue.keeps_messages:
                entry.persisted = stored = True
                self._record(PutMessage(queue.name, entry.seq, message, expires_at, ready_at))
                assert self.journal is not None
                self.journal.batch.stored.append((queue, entry))
            elif paging and (ready_at is not None or queue.far()):
                self.pager.enqueued(queue, entry)  # memory is short: its body goes to disk
            if queue.consumers:
                self._dispatch(queue)
            if ready_at is not None:
                self._delaying[id(queue)] = queue
                self._due_at(ready_at)
                continue  # not ready yet: limits and TTL apply when it is
            if expires_at is not None:
                self._expiring[id(queue)] = queue
                if expires_at <= self.now:  # TTL 0: delivered just now, or expired
                    self._expire_queue(queue)
                else:
                    self._due_at(expires_at)
            while queue.over_limit():  # drop-head: the oldest ready messages make room
                head = queue.fetch(body=False)
                assert head is not None
                self._dead_letter(queue, [head], "maxlen")
        return stored, refused

    def _route(
        self, message: Message, steps: list[RouteStep] | None = None, *, from_client: bool = True
    ) -> list[MessageQueue]:
        """Queues ``message`` reaches, each once, following exchange-to-exchange bindings."""
        name = message.exchange
        if name == DEFAULT_EXCHANGE:
            queue = self.queues.get(message.routing_key)
            if steps is not None and queue is not None:
                steps.append(
                    RouteStep(
                        exchange="",
                        exchange_type="direct",
                        binding=Binding(
                            source="",
                            destination=queue.name,
                            destination_kind="queue",
                            routing_key=queue.name,
                        ),
                    )
                )
            return [queue] if queue is not None else []
        start = self.exchanges.get(name)
        if start is None:
            check_short_string("exchange name", name)
            raise NotFound(f"no exchange {name!r}")
        if start.spec.internal and from_client:
            raise AccessRefused(f"cannot publish to internal exchange {name!r}")
        found = self._follow(start, message, steps)
        tried = {name}
        exchange = start
        # Unroutable: the exchange's alternate exchange gets it (and so on, once each).
        while not found:
            alternate = exchange.spec.arguments.get("alternate-exchange")
            if not isinstance(alternate, str) or alternate in tried:
                break
            tried.add(alternate)
            nxt = self.exchanges.get(alternate)
            if nxt is None:
                break
            if steps is not None:
                steps.append(
                    RouteStep(
                        exchange=exchange.name,
                        exchange_type=exchange.spec.type,
                        binding=Binding(
                            source=exchange.name,
                            destination=alternate,
                            destination_kind="exchange",
                            routing_key="(alternate-exchange)",
                        ),
                    )
                )
            exchange = nxt
            found = self._follow(exchange, message, steps)
        return list(found.values())

    def _follow(
        self, start: Exchange, message: Message, steps: list[RouteStep] | None
    ) -> dict[str, MessageQueue]:
        """Queues reached from ``start`` through its bindings and exchange-to-exchange ones."""
        found: dict[str, MessageQueue] = {}
        seen = {start.name}
        todo = [start]
        while todo:
            exchange = todo.pop()
            for binding in exchange.router.route(message):
                if steps is not None:
                    steps.append(
                        RouteStep(
                            exchange=exchange.name,
                            exchange_type=exchange.spec.type,
                            binding=binding,
                        )
                    )
                if binding.destination_kind == "queue":
                    queue = self.queues.get(binding.destination)
                    if queue is not None:
                        found[queue.name] = queue
                elif binding.destination not in seen:
                    seen.add(binding.destination)
                    nxt = self.exchanges.get(binding.destination)
                    if nxt is not None:
                        todo.append(nxt)
        return found

    def explain_route(self, message: Message) -> RouteResult:
        """Where ``message`` would go, binding by binding; nothing is published."""
        steps: list[RouteStep] = []
        queues = self._route(message, steps)
        return RouteResult(queues=[q.name for q in queues], steps=steps)

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
        self._at(now)
        check_short_string("consumer tag", consumer_tag)
        if queue == REPLY_TO:
            return self._consume_replies(session, consumer_tag, auto_ack)
        q = self._queue(queue)
        self._check_access(session.owner, q)
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
        timeout = (arguments or {}).get("x-consumer-timeout", q.args.consumer_timeout)
        valid = type(timeout) is int and 0 < timeout <= MAX_MILLISECONDS
        if timeout is not None and not valid:
            raise PreconditionFailed(
                f"consumer argument x-consumer-timeout must be an integer from 1 to "
                f"{MAX_MILLISECONDS} (ms), not {brief(timeout)}"
            )
        priority = (arguments or {}).get("x-priority", 0)
        if type(priority) is not int:
            raise PreconditionFailed(
                f"consumer argument x-priority must be an integer, not {brief(priority)}"
            )
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
        self._touch(q)
        q.add_consumer(consumer)
        self._dispatch(q)
        return tag

    def cancel(self, session: Session, consumer_tag: str, *, now: float | None = None) -> None:
        """Stop a consumer. Its unacked messages stay unacked (ack them or close to requeue)."""
        self._at(now)
        if consumer_tag and consumer_tag == session.reply_consumer:
            session.reply_consumer = None
            self._reply_sessions.pop(session.id, None)
            return
        if consumer_tag not in session.consumers:
            raise NotFound(f"no consumer {consumer_tag!r} on this session")
        self._remove_consumer(session, consumer_tag)

    def _remove_consumer(self, session: Session, tag: str) -> None:
        consumer = session.consumers.pop(tag)
        queue = consumer.queue
        queue.remove_consumer(tag)
        self._touch(queue)
        if queue.spec.auto_delete and not queue.consumers and not queue.deleted:
            self._delete_queue(queue)

    def get(
        self, session: Session, queue: str, *, auto_ack: bool = False, now: float | None = None
    ) -> Delivery | None:
        """The next ready message, or None. Raises ``NeedBodies`` (having changed nothing) if
        its body is on disk: the shell reads it back and asks again."""
        self._at(now)
        q = self._queue(queue)
        self._check_access(session.owner, q)
        self._touch(q)
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
            self.now = now
        settled = self._take(session, delivery_tag, multiple)
        self._acked += len(settled)
        self._forget_settled(settled)
        self._release(settled)

    def nack(
        self,
        session: Session,
        delivery_tag: int,
        *,
        multiple: bool = False,
        requeue: bool = True,
        now: float | None = None,
    ) -> None:
        self._at(now)
        settled = self._take(session, delivery_tag, multiple)
        if requeue:
            self._requeue(settled, backoff=True)
        else:
            for item in settled:
                self._dead_letter_message(item.queue, item.entry.message, "rejected")
            self._forget_settled(settled)
            self._release(settled)

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
        self._at(now)
        settled = self._take(session, delivery_tag, multiple)
        for item in settled:
            entry = item.entry
            if entry.delivery_count > 0:
                entry.delivery_count -= 1
                if entry.persisted:
                    self._record(MarkDelivered(item.queue.name, entry.seq, entry.delivery_count))
        self._requeue(settled, counted=False)

    def reject(
        self, session: Session, delivery_tag: int, *, requeue: bool = True, now: float | None = None
    ) -> None:
        self.nack(session, delivery_tag, multiple=False, requeue=requeue, now=now)

    def _dead_letter(self, queue: MessageQueue, entries: list[QueueEntry], reason: str) -> None:
        """Messages leave ``queue`` unsuccessfully: republish them to the queue's DLX, if any.

        ``reason`` is RabbitMQ's: rejected, expired, maxlen or delivery_limit. Those whose
        bodies are on disk are read back first (``Effects.page_ins``); until then the store
        keeps them in ``queue``, and ``paged_in`` finishes the job.
        """
        if queue.args.dead_letter_exchange is None:
            self._gone(queue, entries)
            return
        paged = [e for e in entries if e.message is None]
        resident = [e for e in entries if e.message is not None] if paged else entries
        self._gone(queue, resident)
        for entry in resident:
            self._dead_letter_message(queue, entry.message, reason)
        if paged:
            self.effects.page_ins.append(PageIn(queue, paged, dead_letter=reason))

    def _dead_letter_message(
        self, queue: MessageQueue, message: Message | None, reason: str
    ) -> None:
        """Dead-letter one message. A failure here (a bug, or input nobody foresaw) loses
        this one message with a log line; it must never reach the caller, which is settling
        or expiring other messages too."""
        if queue.args.dead_letter_exchange is None:
            return
        try:
            assert message is not None, "a message dead-lettered has its body"
            self._dead_letter_or_raise(queue, message, reason)
        except Exception:
            log.exception(
                "could not dead-letter a message (%s) from queue %r; it is dropped",
                reason,
                queue.name,
            )

    def _dead_letter_or_raise(self, queue: MessageQueue, message: Message, reason: str) -> None:
        args = queue.args
        dlx = args.dead_letter_exchange
        if dlx != DEFAULT_EXCHANGE and dlx not in self.exchanges:
            return  # a DLX that does not exist drops the message, as RabbitMQ
        routing_key = args.dead_letter_routing_key or message.routing_key
        dead = attrs.evolve(
            message,
            exchange=dlx,
            routing_key=routing_key,
            properties=attrs.evolve(
                message.properties,
                expiration=None,
                headers=dead_letter.death_headers(message, queue.name, reason, self.now),
            ),
        )
        targets = self._route(dead, from_client=False)
        if reason != "rejected" and not dead_letter.rejected_before(dead):
            # An automatic cycle (expired / maxlen / delivery_limit back into a queue the
            # message already died in) would go on for ever: drop those targets, as RabbitMQ.
            seen = dead_letter.queues_died_in(dead)
            targets = [q for q in targets if q.name not in seen]
        self._enqueue(dead, targets)

    def _take(self, session: Session, tag: int, multiple: bool) -> list[Unacked]:
        """The deliveries a settle covers. Tags that timed out went back to the queue
        already; a settle that crossed the timeout on the wire ignores them."""
        timed_out = session.timed_out
        if not multiple:
            if tag in timed_out:
                timed_out.discard(tag)
                return []
            if tag not in session.unacked:
                raise PreconditionFailed(f"unknown delivery tag {tag}")
        covered_timed_out = False
        if multiple and timed_out:
            covered = {t for t in timed_out if t <= tag or tag == 0}
            timed_out -= covered
            covered_timed_out = bool(covered)
        settled = session.take_unacked(tag, multiple)
        if multiple and not settled and tag != 0 and not covered_timed_out:
            raise PreconditionFailed(f"unknown delivery tag {tag}")
        session.compact_order()
        return settled

    def _release(self, settled: Iterable[Unacked]) -> None:
        """Credit goes back to consumers; queues with new credit dispatch."""
        touched: dict[int, MessageQueue] = {}
        for item in settled:
            item.queue.unacked -= 1
            consumer = item.consumer
            if consumer is not None:
                consumer.unacked -= 1
                if consumer.tag in consumer.session.consumers:
                    item.queue.activate(consumer)
                    touched[id(item.queue)] = item.queue
        for queue in touched.values():
            if not queue.deleted:
                self._dispatch(queue)

    def _requeue(
        self, settled: list[Unacked], *, backoff: bool = False, counted: bool = True
    ) -> None:
        """Put deliveries back. A consumer's explicit nack (``backoff``) on a queue with
        x-delayed-retry-* holds each message back before it is redelivered; a release (not
        ``counted``) was no attempt, so the delivery limit does not apply."""
        queues: dict[int, MessageQueue] = {}
        for item in settled:
            queue, entry = item.queue, item.entry
            if queue.deleted:
                continue
            limit = queue.args.delivery_limit
            if counted and limit is not None and entry.delivery_count > limit:
                self._dead_letter(queue, [entry], "delivery_limit")
                continue
            if entry.expires_at is not None and entry.expires_at <= self.now:
                self._dead_letter(queue, [entry], "expired")  # TTL runs on while it was out
                continue
            delay = queue.args.retry_delay(entry.delivery_count) if backoff else None
            if delay is not None:
                queue.hold(entry, self.now + delay)
                if entry.persisted:
                    self._record(HoldMessage(queue.name, entry.seq, self.now + delay))
                self._delaying[id(queue)] = queue
                self._due_at(self.now + delay)
                continue
            queue.requeue(entry)
            queues[id(queue)] = queue
        self._release(settled)
        for queue in queues.values():
            self._dispatch(queue)  # other consumers may be waiting for these

    # --- direct reply-to (RPC) -----------------------------------------------------------

    def _consume_replies(self, session: Session, consumer_tag: str, auto_ack: bool) -> str:
        """Consuming the pseudo-queue amq.rabbitmq.reply-to: replies come straight to this
        session, with no queue declared (RabbitMQ's direct reply-to)."""
        if not auto_ack:
            raise PreconditionFailed(f"{REPLY_TO} must be consumed with auto_ack")
        if session.reply_consumer is not None:
            raise PreconditionFailed(f"this session already consumes {REPLY_TO}")
        tag = consumer_tag or session.new_consumer_tag()
        session.reply_consumer = tag
        self._reply_sessions[session.id] = session
        return tag

    def _with_reply_address(self, session: Session, message: Message) -> Message:
        if session.reply_consumer is None:
            raise PreconditionFailed(
                f"reply_to {REPLY_TO} needs a consumer on {REPLY_TO} in the same connection"
            )
        address = f"{REPLY_TO}.{session.id}"
        return attrs.evolve(message, properties=attrs.evolve(message.properties, reply_to=address))

    def _reply(self, session: Session, seq: int, message: Message, mandatory: bool) -> int:
        """A reply to a direct reply-to address goes to that session's reply consumer."""
        self._published += 1
        target_id = message.routing_key[len(REPLY_TO) + 1 :]
        valid = target_id.isascii() and target_id.isdigit() and len(target_id) < 20
        target = self._reply_sessions.get(int(target_id)) if valid else None
        if target is None or target.closed or target.reply_consumer is None:
            if mandatory:
                session.emit(
                    Returned(
                        publish_seq=seq,
                        reply_code="NO_ROUTE",
                        reply_text="the requester is gone",
                        message=message,
                    )
                )
        else:
            target.deliver_direct(target.reply_consumer, message)
            self._delivered += 1
        session.settle_publish(seq, ok=True)
        return seq

    # --- redrive ----------------------------------------------------------------------

    def redrive(
        self,
        owner: str,
        queue: str,
        *,
        to_exchange: str | None = None,
        limit: int = 0,
        now: float | None = None,
    ) -> Redriven:
        """Move ready messages out of a dead-letter queue.

        Each goes back to the queue it last died in (``x-last-death-queue``, through the
        default exchange), or, with ``to_exchange``, is published there with its routing key.
        Messages with nowhere to go stay. ``limit`` 0 moves them all. A persistent message's
        removal and its new copy are written in the same commit. It stops at a message whose
        body is on disk, having asked for it (``more``): the shell reads it back and calls
        again for the rest.
        """
        self._at(now)
        source = self._queue(queue)
        self._check_access(owner, source)
        if to_exchange is not None:
            self._exchange(to_exchange)  # NOT_FOUND before anything moves
        if limit < 0:
            raise InvalidArgument(f"limit must be 0 (all) or more, not {limit}")
        moved = 0
        ready = source.ready_entries()
        for i, entry in enumerate(ready):
            if limit and moved == limit:
                break
            message = entry.message
            if message is None:
                source.want([e for e in ready[i : i + PAGE * 4] if e.message is None])
                return Redriven(moved=moved, more=True)
            if to_exchange is None:
                home = (message.properties.headers or {}).get("x-last-death-queue")
                if not isinstance(home, str) or home not in self.queues or home == queue:
                    continue  # stays where it is
                message = attrs.evolve(message, exchange="", routing_key=home)
            else:
                message = attrs.evolve(message, exchange=to_exchange)
            source.take(entry)
            self._gone(source, (entry,))
            self._enqueue(message, self._route(message, from_client=False))
            moved += 1
        return Redriven(moved=moved, more=False)

    # --- reading back from disk ---------------------------------------------------------

    def paged_in(
        self, request: PageIn, bodies: dict[int, Message], *, now: float | None = None
    ) -> None:
        """The shell read back what ``request`` asked for (``bodies`` by seq; a body it could
        not find is left out). The head of a queue dispatches again; messages that died
        while on disk go to the dead-letter exchange."""
        self._at(now)
        queue = request.queue
        if request.dead_letter is None:
            queue.paging_in = False
            queue.paged_in(request.entries, bodies)
            if not queue.deleted:
                self._dispatch(queue)
            return
        self._gone(queue, request.entries)
        lost = 0
        for entry in request.entries:
            message = bodies.get(entry.seq)
            if message is None:
                lost += 1
            else:
                self._dead_letter_message(queue, message, request.dead_letter)
        if lost and not queue.deleted:
            log.error(
                "could not read %d messages to dead-letter (%s) from queue %r; they are dropped",
                lost,
                request.dead_letter,
                queue.name,
            )

    # --- deduplication -------------------------------------------------------------------

    def _duplicate(self, seen: SeenIds | None, message: Message) -> bool:
        """Whether ``message`` repeats an id ``seen`` remembers."""
        message_id = message.properties.message_id
        return seen is not None and message_id is not None and seen.seen(message_id, self.now)

    def _remember(
        self,
        seen: SeenIds,
        kind: str,
        name: str,
        durable: bool,
        message: Message,
        awaits_commit: bool,
    ) -> None:
        """``message`` was taken: remember its id for the window. If its confirm waits for the
        store (``awaits_commit``) and the write fails, ``batch_failed`` forgets it again."""
        message_id = message.properties.message_id
        if message_id is None:
            return
        until = self.now + seen.window
        seen.remember(message_id, until)
        if durable:
            self._record(PutSeen(kind, name, message_id, until))
            if self.now - self._last_forget >= 1.0:  # let the store forget old ids, now and then
                self._last_forget = self.now
                self._record(ForgetSeen(self.now))
        if awaits_commit:
            assert self.journal is not None
            self.journal.batch.remembered.append((seen, message_id))

    def _settle_duplicate(self, session: Session, seq: int) -> None:
        """Confirm a duplicate — once whatever is pending (maybe the original) is on disk."""
        if self.journal is not None and len(self.journal):
            self.journal.batch.confirms.append((session, seq))
        else:
            session.settle_publish(seq, ok=True)

    # --- time --------------------------------------------------------------------------

    def _expires_at(
        self, queue: MessageQueue, message: Message, ready_at: float | None
    ) -> float | None:
        """When this copy expires: the smaller of x-message-ttl and the message's expiration,
        counted from when it is ready."""
        ttl = queue.args.message_ttl
        expiration = message.properties.expiration
        if expiration is not None:
            ttl = int(expiration) if ttl is None else min(ttl, int(expiration))
        elif ttl is None:
            return None  # the common case, kept cheap: this runs for every message
        return (ready_at or self.now) + ttl / 1000

    def _ready_at(self, message: Message) -> float | None:
        """An ``x-delay`` header of 1 to 2^32-1 ms (as RabbitMQ's plugin) delays delivery;
        any other value is ignored: the message is ready at once."""
        headers = message.properties.headers
        delay = headers.get("x-delay") if headers else None
        if type(delay) is not int or not 0 < delay <= MAX_MILLISECONDS:
            return None
        return self.now + delay / 1000

    def _due_at(self, when: float) -> None:
        self.effects.due_at(when)

    def _touch(self, queue: MessageQueue) -> None:
        """The queue was used: its x-expires lease starts again."""
        queue.last_used = self.now
        if queue.args.expires is not None:
            self._leased[id(queue)] = queue
            end = self._lease_end(queue)
            if end is not None:
                self._due_at(end)

    def _lease_end(self, queue: MessageQueue) -> float | None:
        if queue.args.expires is None or queue.consumers or queue.deleted:
            return None
        return queue.last_used + queue.args.expires / 1000

    def _start_deadline(self, session: Session, item: Unacked, timeout_ms: int) -> None:
        item.deadline = self.now + timeout_ms / 1000
        heapq.heappush(self._ack_deadlines, (item.deadline, session.id, item.tag))
        self._due_at(item.deadline)

    def extend(
        self, session: Session, delivery_tag: int, milliseconds: int, *, now: float | None = None
    ) -> None:
        """Give an unacked delivery ``milliseconds`` more from now before it times out."""
        self._at(now)
        item = session.unacked.get(delivery_tag)
        if item is None:
            if delivery_tag in session.timed_out:
                return  # too late: it already went back; the client has been told
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        self._start_deadline(session, item, milliseconds)

    def _live_deadline(self, entry: tuple[float, int, int]) -> Unacked | None:
        deadline, session_id, tag = entry
        session = self.sessions.get(session_id)
        item = session.unacked.get(tag) if session is not None else None
        return item if item is not None and item.deadline == deadline else None

    def _time_out_deliveries(self) -> None:
        heap = self._ack_deadlines
        while heap and heap[0][0] <= self.now:
            top = heapq.heappop(heap)
            item = self._live_deadline(top)
            if item is None:
                continue  # settled or extended since
            session = self.sessions[top[1]]
            session.take_unacked(item.tag, multiple=False)
            if len(session.timed_out) >= TIMED_OUT_MEMORY:
                session.timed_out.discard(min(session.timed_out))
            session.timed_out.add(item.tag)
            consumer_tag = item.consumer.tag if item.consumer is not None else ""
            session.emit(DeliveryTimedOut(consumer_tag=consumer_tag, delivery_tag=item.tag))
            self._requeue([item])

    def next_deadline(self) -> float | None:
        """The earliest time something is due (a message or an unused queue expiring, an ack
        deadline passing, a delayed message becoming ready)."""
        deadline = None
        heap = self._ack_deadlines
        while heap and self._live_deadline(heap[0]) is None:
            heapq.heappop(heap)
        if heap:
            deadline = heap[0][0]
        for key, queue in list(self._delaying.items()):
            due = None if queue.deleted else queue.next_ready_at()
            if due is None:
                del self._delaying[key]
            elif deadline is None or due < deadline:
                deadline = due
        for key, queue in list(self._leased.items()):
            if queue.deleted:
                del self._leased[key]
            elif (due := self._lease_end(queue)) is not None and (
                deadline is None or due < deadline
            ):
                deadline = due
        for key, queue in list(self._expiring.items()):
            due = None if queue.deleted else queue.next_expiry()
            if due is None:
                del self._expiring[key]
            elif deadline is None or due < deadline:
                deadline = due
        return deadline

    def expire(self, *, now: float | None = None) -> int:
        """Expire (and dead-letter) every message due by ``now``, and delete queues unused
        for their x-expires. Returns how many messages expired."""
        self._at(now)
        self._time_out_deliveries()
        for queue in list(self._delaying.values()):
            if not queue.deleted and queue.promote(self.now):
                self._after_promotion(queue)
        for queue in list(self._leased.values()):
            due = self._lease_end(queue)
            if due is not None and due <= self.now:
                self._delete_queue(queue)
        return sum(self._expire_queue(q) for q in list(self._expiring.values()) if not q.deleted)

    def _after_promotion(self, queue: MessageQueue) -> None:
        """Delayed messages became ready: they may expire, overflow or go to consumers."""
        if queue.next_expiry() is not None:
            self._expiring[id(queue)] = queue
        self._dispatch(queue)
        while queue.over_limit():
            head = queue.fetch(body=False)
            assert head is not None
            self._dead_letter(queue, [head], "maxlen")

    def _expire_queue(self, queue: MessageQueue) -> int:
        expired = queue.expire(self.now)
        if expired:
            self._dead_letter(queue, expired, "expired")
        return len(expired)

    # --- durability --------------------------------------------------------------------

    def _record(self, record: Record) -> None:
        if self.journal is not None:
            self.journal.add(record)

    def _is_durable_binding(self, binding: Binding) -> bool:
        """Both ends durable. An end being deleted counts as not: dropping it drops its rows."""
        if self.journal is None:
            return False
        source = self.exchanges.get(binding.source)
        if source is None or not source.spec.durable:
            return False
        if binding.destination_kind == "exchange":
            exchange = self.exchanges.get(binding.destination)
            return exchange is not None and exchange.spec.durable
        queue = self.queues.get(binding.destination)
        return queue is not None and queue.keeps_messages

    def _gone(self, queue: MessageQueue, entries: Iterable[QueueEntry]) -> None:
        """``entries`` left ``queue`` for good: their memory is free, the store forgets them."""
        seqs = []
        for entry in entries:
            queue.release(entry)
            if entry.persisted:
                seqs.append(entry.seq)
        if seqs and not queue.deleted:
            self._record(DropMessages(queue.name, tuple(seqs)))

    def _forget_settled(self, settled: list[Unacked]) -> None:
        queue = settled[0].queue if settled else None
        if all(item.queue is queue for item in settled):  # the common case: one queue
            if queue is not None:
                self._gone(queue, [item.entry for item in settled])
            return
        by_queue: dict[int, list[Unacked]] = {}
        for item in settled:
            by_queue.setdefault(id(item.queue), []).append(item)
        for items in by_queue.values():
            self._gone(items[0].queue, [i.entry for i in items])

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
        """Rebuild durable state from a store snapshot (at start). Returns the message count.

        After an unclean shutdown every restored message is marked redelivered: it may have
        been delivered without the store hearing of it.
        """
        self._at(now)
        for spec in snapshot.exchanges:
            if spec.name not in self.exchanges:
                self.exchanges[spec.name] = Exchange(spec)
        for spec in snapshot.queues:
            self.queues[spec.name] = self._new_queue(spec)
        for binding in snapshot.bindings:
            source = self.exchanges.get(binding.source)
            index = self._bindings_to.setdefault(
                (binding.destination_kind, binding.destination), {}
            )
            if source is None or binding.key in index:
                continue
            index[binding.key] = binding
            self._binding_count += 1
            source.router.add_binding(binding)
            source.binding_count += 1
            source.ever_bound = True
        for kind, name, message_id, until in snapshot.seen:
            holder = self.queues.get(name) if kind == "queue" else self.exchanges.get(name)
            if holder is not None and holder.seen is not None and until > self.now:
                holder.seen.remember(message_id, until)
        count = 0
        for name, stored in snapshot.messages:
            target = self.queues.get(name)
            if target is None:
                continue
            delayed = stored.ready_at is not None and stored.ready_at > self.now
            target.restore(
                stored.seq,
                stored.size,
                stored.delivery_count,
                priority=stored.priority,
                expires_at=stored.expires_at,
                ready_at=stored.ready_at if delayed else None,  # due ones: ready in place
                maybe_delivered=not snapshot.clean_shutdown,
            )
            if stored.expires_at is not None:
                self._expiring[id(target)] = target
            if delayed:
                self._delaying[id(target)] = target
            count += 1
        return count

    # --- lookups and statistics ------------------------------------------------------------

    def _new_queue(self, spec: QueueSpec, owner: str | None = None) -> MessageQueue:
        keeps = spec.durable and not spec.exclusive
        return MessageQueue(
            spec,
            owner=owner,
            ledger=self.ledger,
            pager=self.pager,
            effects=self.effects,
            pageable=self.reads_back and (keeps or self.can_page),
        )

    def _exchange(self, name: str, *, writable: bool = False) -> Exchange:
        if name == DEFAULT_EXCHANGE and writable:
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(name)
        if exchange is None:
            check_short_string("exchange name", name)
            raise NotFound(f"no exchange {name!r}")
        return exchange

    def _queue(self, name: str) -> MessageQueue:
        queue = self.queues.get(name)
        if queue is None:
            check_short_string("queue name", name)
            raise NotFound(f"no queue {name!r}")
        return queue

    @staticmethod
    def _check_access(owner: str, queue: MessageQueue) -> None:
        if queue.spec.exclusive and queue.owner != owner:
            raise ResourceLocked(f"queue {queue.name!r} is exclusive to another connection")

    def _declare_ok(self, queue: MessageQueue) -> DeclareOk:
        self._touch(queue)
        return DeclareOk(
            queue=queue.name,
            message_count=len(queue),
            consumer_count=len(queue.consumers),
            arguments=queue.spec.arguments,
            delayed_count=queue.delayed,
        )

    def _server_queue_name(self) -> str:
        while True:
            name = f"mqr.gen-{next(self._queue_names)}"
            if name not in self.queues:
                return name

    def stats(self) -> BrokerStats:
        return BrokerStats(
            exchanges=len(self.exchanges),
            queues=len(self.queues),
            bindings=sum(len(i) for i in self._bindings_to.values()),
            sessions=len(self.sessions),
            consumers=sum(len(q.consumers) for q in self.queues.values()),
            ready=sum(len(q) for q in self.queues.values()),
            unacked=sum(q.unacked for q in self.queues.values()),
            published=self._published,
            delivered=self._delivered,
            acked=self._acked,
        )


def _check_name(kind: str, name: str) -> None:
    check_short_string(f"{kind} name", name)


def check_short_string(what: str, value: str) -> None:
    """Names, keys and tags are AMQP short strings: InvalidArgument if over 255 bytes."""
    size = utf8_length_over(value)
    if size is not None:
        raise InvalidArgument(
            f"{what} of {size} bytes is longer than the maximum of {MAX_SHORT_STRING} bytes"
        )


def _describe_exchange(spec: ExchangeSpec) -> str:
    return (
        f"type={spec.type} durable={spec.durable} auto_delete={spec.auto_delete} "
        f"internal={spec.internal} arguments={spec.arguments}"
    )


def _describe_queue(spec: QueueSpec) -> str:
    return (
        f"durable={spec.durable} exclusive={spec.exclusive} "
        f"auto_delete={spec.auto_delete} arguments={spec.arguments}"
    )
