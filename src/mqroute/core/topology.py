"""What a vhost is made of: exchanges, queues and the bindings between them.

Declaring, deleting, binding and unbinding live here, with their rules as RabbitMQ has them:
equivalence of a redeclare, the reserved ``amq.`` prefix, exclusive queues, auto-delete
exchanges (once their last binding goes) and limits on how many of each a vhost holds. Every
operation validates before it changes anything, and journals changes to durable things. The
topology is rebuilt from a store snapshot at start (``restore``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import AccessRefused, InvalidArgument, NotFound, PreconditionFailed, ResourceLocked
from ..model import (
    EXCHANGE_TYPES,
    MAX_SHORT_STRING,
    Binding,
    CancelledByBroker,
    ExchangeSpec,
    QueueSpec,
    Table,
    utf8_length_over,
)
from ..records import (
    DropBinding,
    DropExchange,
    DropMessages,
    DropQueue,
    PutBinding,
    PutExchange,
    PutQueue,
    Record,
)
from .dedup import SeenIds, window_of
from .effects import Effects
from .flow import MemoryLedger
from .journal import Journal
from .paging import Pager
from .queue import MessageQueue, QueueEntry
from .routing import EXCHANGE_TYPE_CLASSES, ExchangeType
from .scheduler import Scheduler
from .session import ConsumerState

DEFAULT_EXCHANGE = ""
#: Names of server-named queues start so (RabbitMQ: amq.gen-).
SERVER_NAMED_PREFIX = "mqr.gen-"
PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
}


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


class Topology:
    def __init__(
        self,
        *,
        limits: Limits,
        journal: Journal | None,
        effects: Effects,
        ledger: MemoryLedger,
        pager: Pager,
        scheduler: Scheduler,
    ) -> None:
        self.limits = limits
        self.journal = journal
        self.effects = effects
        self.ledger = ledger
        self.pager = pager
        self.scheduler = scheduler
        # Set by the shell before it serves: whether it reads bodies back from disk (it has a
        # store), and whether it has a page file (and a task writing it).
        self.reads_back = False
        self.can_page = False
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, MessageQueue] = {}
        # Bindings by destination, to remove them when the destination goes.
        self._bindings_to: dict[tuple[str, str], dict[tuple[Any, ...], Binding]] = {}
        self.binding_count = 0
        self._queue_names = itertools.count(1)
        for name, kind in PREDECLARED.items():
            self.exchanges[name] = Exchange(ExchangeSpec(name=name, type=kind, durable=True))

    def record(self, record: Record) -> None:
        if self.journal is not None:
            self.journal.add(record)

    # --- exchanges -----------------------------------------------------------------------

    def declare_exchange(self, spec: ExchangeSpec, *, passive: bool = False) -> None:
        if spec.name == DEFAULT_EXCHANGE:
            raise AccessRefused("operation not permitted on the default exchange")
        existing = self.exchanges.get(spec.name)
        if passive:
            if existing is None:
                check_short_string("exchange name", spec.name)
                raise NotFound(f"no exchange {spec.name!r}")
            return
        if existing is not None:
            if not existing.spec.equivalent(spec):
                raise PreconditionFailed(
                    f"exchange {spec.name!r} exists with different properties: "
                    f"{_describe_exchange(existing.spec)}; requested {_describe_exchange(spec)}"
                )
            return
        check_short_string("exchange name", spec.name)
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
            self.record(PutExchange(spec))

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        if name == DEFAULT_EXCHANGE or name.startswith("amq."):
            raise AccessRefused(f"exchange {name!r} cannot be deleted")
        exchange = self.exchange(name)
        if if_unused and exchange.binding_count:
            raise PreconditionFailed(f"exchange {name!r} in use: it has bindings")
        self._delete_exchange(exchange)

    def _delete_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        if exchange.spec.durable:
            self.record(DropExchange(exchange.name))
        for binding in list(exchange.router.bindings()):
            self._forget_binding(binding, exchange)
        for binding in list(self._bindings_to.get(("exchange", exchange.name), {}).values()):
            self._remove_binding(binding)

    # --- queues --------------------------------------------------------------------------

    def declare_queue(self, owner: str, spec: QueueSpec, *, passive: bool = False) -> DeclareOk:
        existing = self.queues.get(spec.name) if spec.name else None
        if passive:
            if existing is None:
                check_short_string("queue name", spec.name)
                raise NotFound(f"no queue {spec.name!r}")
            check_access(owner, existing)
            return self._declare_ok(existing)
        if existing is not None:
            check_access(owner, existing)
            if not existing.spec.equivalent(spec):
                raise PreconditionFailed(
                    f"queue {spec.name!r} exists with different properties: "
                    f"{_describe_queue(existing.spec)}; requested {_describe_queue(spec)}"
                )
            return self._declare_ok(existing)
        if spec.name:
            check_short_string("queue name", spec.name)
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
            self.record(PutQueue(spec))
        return self._declare_ok(queue)

    def delete_queue(
        self, owner: str, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many ready messages it held."""
        queue = self.queue(name)
        check_access(owner, queue)
        if if_unused and queue.consumers:
            raise PreconditionFailed(
                f"queue {name!r} in use: it has {len(queue.consumers)} consumers"
            )
        if if_empty and len(queue):
            raise PreconditionFailed(f"queue {name!r} not empty: it has {len(queue)} messages")
        return self.remove_queue(queue)

    def purge_queue(self, owner: str, name: str) -> int:
        queue = self.queue(name)
        check_access(owner, queue)
        removed = queue.purge()
        self.gone(queue, removed)
        return len(removed)

    def remove_queue(self, queue: MessageQueue) -> int:
        """Delete ``queue`` (checked already, or by the broker's own decision: x-expires,
        auto-delete, its exclusive owner gone). Its consumers are told."""
        count = len(queue)
        queue.deleted = True
        del self.queues[queue.name]
        if queue.keeps_messages:
            self.record(DropQueue(queue.name))
        for binding in list(self._bindings_to.get(("queue", queue.name), {}).values()):
            self._remove_binding(binding)
        for consumer in list(queue.consumers.values()):
            assert isinstance(consumer, ConsumerState)
            consumer.session.consumers.pop(consumer.tag, None)
            consumer.session.emit(
                CancelledByBroker(consumer_tag=consumer.tag, reason=f"queue {queue.name!r} deleted")
            )
        queue.consumers.clear()
        for entry in queue.purge() + queue.take_delayed():
            queue.release(entry)
        if self.can_page:
            self.pager.queue_deleted(queue)
        return count

    def remove_owned_by(self, owner: str) -> None:
        """The connection ``owner`` is gone: delete its exclusive queues."""
        for queue in [q for q in self.queues.values() if q.spec.exclusive and q.owner == owner]:
            self.remove_queue(queue)

    def gone(self, queue: MessageQueue, entries: Iterable[QueueEntry]) -> None:
        """``entries`` left ``queue`` for good: their memory is free, the store forgets them."""
        seqs = []
        for entry in entries:
            queue.release(entry)
            if entry.persisted:
                seqs.append(entry.seq)
        if seqs and not queue.deleted:
            self.record(DropMessages(queue.name, tuple(seqs)))

    # --- bindings ------------------------------------------------------------------------

    def queue_binding(
        self, owner: str, queue: str, exchange: str, routing_key: str, arguments: Table | None
    ) -> Binding:
        if queue not in self.queues and queue in self.exchanges and exchange in self.queues:
            raise NotFound(
                f"no queue {queue!r}, but there is an exchange {queue!r} and a queue "
                f"{exchange!r}: the queue and the exchange look swapped (the queue comes first)"
            )
        check_access(owner, self.queue(queue))
        check_short_string("routing key", routing_key)
        return Binding(
            source=exchange,
            destination=queue,
            destination_kind="queue",
            routing_key=routing_key,
            arguments=arguments or {},
        )

    def exchange_binding(
        self, destination: str, source: str, routing_key: str, arguments: Table | None
    ) -> Binding:
        self.exchange(destination, writable=True)
        check_short_string("routing key", routing_key)
        return Binding(
            source=source,
            destination=destination,
            destination_kind="exchange",
            routing_key=routing_key,
            arguments=arguments or {},
        )

    def bind(self, binding: Binding) -> None:
        source = self.exchange(binding.source, writable=True)
        source.router.validate_binding(binding)
        index = self._bindings_to.setdefault((binding.destination_kind, binding.destination), {})
        if binding.key in index:
            return  # binding again is a no-op, as in AMQP
        if self.binding_count >= self.limits.bindings:
            raise PreconditionFailed(
                f"cannot bind {binding.destination!r} to {binding.source!r}: binding limit "
                f"({self.limits.bindings}) is reached"
            )
        if self._is_durable_binding(binding):
            self.record(PutBinding(binding))
        self._add_binding(binding, source, index)

    def _add_binding(
        self, binding: Binding, source: Exchange, index: dict[tuple[Any, ...], Binding]
    ) -> None:
        self.binding_count += 1
        index[binding.key] = binding
        source.router.add_binding(binding)
        source.binding_count += 1
        source.ever_bound = True

    def unbind(self, binding: Binding) -> None:
        self.exchange(binding.source, writable=True)  # NOT_FOUND for the exchange comes first
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
            self.record(DropBinding(binding))
        source.router.remove_binding(binding)
        source.binding_count -= 1
        index = self._bindings_to.get((binding.destination_kind, binding.destination))
        if index is not None and index.pop(binding.key, None) is not None:
            self.binding_count -= 1
            if not index:
                del self._bindings_to[(binding.destination_kind, binding.destination)]

    def bindings(self) -> list[Binding]:
        return [b for index in self._bindings_to.values() for b in index.values()]

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

    # --- restore -------------------------------------------------------------------------

    def restore(self, snapshot: Any) -> int:
        """Rebuild durable state from a store snapshot (at start). Returns the message count.

        After an unclean shutdown every restored message is marked redelivered: it may have
        been delivered without the store hearing of it.
        """
        now = self.scheduler.now
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
            if source is not None and binding.key not in index:
                self._add_binding(binding, source, index)
        for kind, name, message_id, until in snapshot.seen:
            holder = self.queues.get(name) if kind == "queue" else self.exchanges.get(name)
            if holder is not None and holder.seen is not None and until > now:
                holder.seen.remember(message_id, until)
        count = 0
        for name, stored in snapshot.messages:
            target = self.queues.get(name)
            if target is None:
                continue
            delayed = stored.ready_at is not None and stored.ready_at > now
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
                self.scheduler.expiring(target)
            if delayed:
                self.scheduler.delaying(target)
            count += 1
        return count

    # --- lookups -------------------------------------------------------------------------

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

    def exchange(self, name: str, *, writable: bool = False) -> Exchange:
        """The exchange ``name`` (NOT_FOUND if none); ``writable``: not the default one."""
        if name == DEFAULT_EXCHANGE and writable:
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(name)
        if exchange is None:
            check_short_string("exchange name", name)
            raise NotFound(f"no exchange {name!r}")
        return exchange

    def queue(self, name: str) -> MessageQueue:
        """The queue ``name`` (NOT_FOUND if none)."""
        queue = self.queues.get(name)
        if queue is None:
            check_short_string("queue name", name)
            raise NotFound(f"no queue {name!r}")
        return queue

    def _declare_ok(self, queue: MessageQueue) -> DeclareOk:
        self.scheduler.touch(queue)
        return DeclareOk(
            queue=queue.name,
            message_count=len(queue),
            consumer_count=len(queue.consumers),
            arguments=queue.spec.arguments,
            delayed_count=queue.delayed,
        )

    def _server_queue_name(self) -> str:
        while True:
            name = f"{SERVER_NAMED_PREFIX}{next(self._queue_names)}"
            if name not in self.queues:
                return name


def check_access(owner: str, queue: MessageQueue) -> None:
    """An exclusive queue is its owner's alone: RESOURCE_LOCKED for anyone else."""
    if queue.spec.exclusive and queue.owner != owner:
        raise ResourceLocked(f"queue {queue.name!r} is exclusive to another connection")


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
