"""One queue's messages and consumers: ready order, requeue position, prefetch credit, dispatch.

Messages are numbered as they arrive (``seq``). Ready messages that were never delivered wait
in a deque; requeued ones wait in a heap by ``seq`` and always go first, because anything
delivered left the queue before everything still in the deque. That puts a requeued message
back at its original position, as RabbitMQ's classic queues do, in O(log n).

A queue's backlog need not fit in memory: once a copy of a message is on disk and it is
beyond the first ``RESIDENT`` ready ones (or ``RESIDENT_BYTES`` of them), its body is dropped
(``message = None``) and read back, a page at a time, when it comes near the head. That holds
for messages that come back (requeued) too. The queue never reads a disk: it asks for a page
(``Effects.page_ins``) ``AHEAD`` messages before the head reaches it, and the shell reads it off
the event loop and hands the bodies back (``paged_in``). Dispatch waits at a paged-out head.
The copy is the store's (``persisted``: a persistent message in a durable queue) or, under
memory pressure, the page file's (``paged``: any other message; see ``page_candidates``).
Every entry and every body a queue holds in memory is charged to the broker's
``MemoryLedger``, which paging and the memory alarm read.

Dispatch walks a ring of consumers that have credit, so a message costs the same whether the
queue has one consumer or a thousand; a consumer that runs out of credit leaves the ring and
re-enters it when an ack gives credit back.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

import attrs

from ..model import Message, QueueSpec
from .dedup import SeenIds
from .effects import Effects, PageIn
from .flow import ENTRY_OVERHEAD, PAGED_ENTRY, MemoryLedger
from .queue_args import QueueArguments


@attrs.define(eq=False, slots=True)
class QueueEntry:
    """A message in one queue, with that queue's delivery history of it."""

    seq: int
    message: Message | None  # None: paged out, the store has it
    size: int  # body bytes, known even when paged out
    delivery_count: int = 0  # how many times it has been handed out
    persisted: bool = False  # a copy is in the store (persistent message, durable queue)
    expires_at: float | None = None  # broker time after which a ready copy expires
    ready: bool = False  # waiting in the queue (not delivered, not gone)
    priority: int = 0  # its level in an x-max-priority queue
    ready_at: float | None = None  # delayed (x-delay): becomes ready then
    maybe_delivered: bool = False  # recovered after a crash: it may have gone out unrecorded
    charged: bool = False  # its body is counted in the memory ledger
    paged: bool = False  # a copy is in the page file, or being written there

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 0 or self.maybe_delivered


RESIDENT = 1024  # ready messages whose bodies stay in memory
RESIDENT_BYTES = 8 * 1024 * 1024  # ... and at most about this many bytes of them
PAGE = 256  # bodies read back from the store at once
AHEAD = PAGE // 2  # the next page is asked for while this many resident ones are left

#: What an entry costs while its body is in memory, beyond PAGED_ENTRY.
BODY_OVERHEAD = ENTRY_OVERHEAD - PAGED_ENTRY

_uids = itertools.count(1)  # names a queue in the page file: a name may be reused


class Consumer(Protocol):
    """What the queue needs from a consumer (the session implements it)."""

    tag: str
    priority: int  # x-priority: higher ones are served first while they have credit

    def has_credit(self) -> bool: ...

    def deliver(self, queue: MessageQueue, entry: QueueEntry) -> None: ...


class PageRows(Protocol):
    """Where a queue reports that a paged entry is gone (the broker's Pager)."""

    def gone(self, queue: MessageQueue, entry: QueueEntry) -> None: ...


class MessageQueue:
    def __init__(
        self,
        spec: QueueSpec,
        owner: str | None = None,
        ledger: MemoryLedger | None = None,
        pager: PageRows | None = None,
        effects: Effects | None = None,
        pageable: bool = False,
    ) -> None:
        self.spec = spec
        self.uid = next(_uids)
        self.ledger = ledger or MemoryLedger()
        self.pager = pager
        self.args = QueueArguments.from_table(spec.name, spec.arguments)  # raises if invalid
        self.ready_bytes = 0  # bodies of ready messages, for x-max-length-bytes
        self.resident = 0  # bytes of its messages in memory, ready or not (with overhead)
        self.seen = SeenIds(self.args.dedup_window) if self.args.dedup_window else None
        self.owner = owner  # the connection an exclusive queue belongs to
        # Whether a shell can read copies on disk back (a store, a page file): only then
        # may a body leave memory.
        self.pageable = pageable
        self.effects = effects or Effects()
        self.paging_in = False  # a page of its head is being read back
        self.deleted = False
        self.unacked = 0
        self.last_used = 0.0  # broker time of the last declare, get or consumer change
        self.published = self.delivered = 0  # totals, for rates
        # By the consumer itself: tags are unique per session, not per queue (AMQP's are per
        # channel), so two sessions may each consume with tag "t".
        self.consumers: dict[Consumer, Consumer] = {}
        self.exclusive_consumer = False  # one consumes exclusively: nobody else may
        # Ready messages never delivered, one deque per priority level (one level unless
        # x-max-priority); requeued ones in a heap by (-priority, seq).
        self._levels: list[deque[QueueEntry]] = [
            deque() for _ in range((self.args.max_priority or 0) + 1)
        ]
        self._requeued: list[tuple[int, int, QueueEntry]] = []
        self._delayed: list[tuple[float, int, QueueEntry]] = []  # (ready at, seq, entry)
        self._expiry: list[tuple[float, int, QueueEntry]] = []  # (expires at, seq, entry)
        self.ready_count = 0  # ready messages (len(queue); an attribute for the hot path)
        self._rings: dict[int, deque[Consumer]] = {}  # by consumer priority
        self._in_ring: set[Consumer] = set()  # consumers the rings serve; others are stale
        self._stale = 0  # removed consumers still in a ring (dropped as dispatch meets them)
        self.active: Consumer | None = None  # with x-single-active-consumer: the one served
        self._next_seq = 1

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def keeps_messages(self) -> bool:
        """Whether persistent messages in this queue go to the store (exclusive ones never)."""
        return self.spec.durable and not self.spec.exclusive

    def __len__(self) -> int:
        """Ready messages (not counting unacked ones)."""
        return self.ready_count

    # --- messages -----------------------------------------------------------------------

    def publish(
        self, message: Message, expires_at: float | None = None, ready_at: float | None = None
    ) -> QueueEntry:
        """Add a message; with ``ready_at`` it waits (delayed) until then before it is ready."""
        self.published += 1
        entry = QueueEntry(
            self._next_seq,
            message,
            len(message.body),
            expires_at=expires_at,
            priority=self._level_of(message.properties.priority),
            ready_at=ready_at,
        )
        self._next_seq += 1
        entry.charged = True  # _charge, inlined: this runs once per message
        cost = entry.size + ENTRY_OVERHEAD
        self.ledger.used += cost
        self.resident += cost
        self._place(entry)
        return entry

    def _charge(self, entry: QueueEntry) -> None:
        """Its body is in memory again (paged in)."""
        if not entry.charged:
            entry.charged = True
            cost = entry.size + BODY_OVERHEAD
            self.ledger.used += cost
            self.resident += cost

    def _uncharge(self, entry: QueueEntry) -> None:
        """Its body left memory (paged out); the entry itself stays charged."""
        if entry.charged:
            entry.charged = False
            cost = entry.size + BODY_OVERHEAD
            self.ledger.used -= cost
            self.resident -= cost

    def release(self, entry: QueueEntry) -> None:
        """``entry`` left this queue for good (acked, dropped, dead-lettered, purged)."""
        # _uncharge and the entry's own charge, inlined: this runs once per message
        cost = PAGED_ENTRY + entry.size + BODY_OVERHEAD if entry.charged else PAGED_ENTRY
        entry.charged = False
        self.ledger.used -= cost
        self.resident -= cost
        if entry.paged and self.pager is not None:
            self.pager.gone(self, entry)

    def flow_bytes(self) -> int:
        """What flow control weighs: the ready messages, with their overhead."""
        return self.ready_bytes + self.ready_count * ENTRY_OVERHEAD

    def has_consumers(self) -> bool:
        return bool(self.consumers)

    def _place(self, entry: QueueEntry) -> None:
        if entry.ready_at is not None:
            heapq.heappush(self._delayed, (entry.ready_at, entry.seq, entry))
        else:
            self._levels[entry.priority].append(entry)
            self._now_ready(entry)

    def hold(self, entry: QueueEntry, ready_at: float) -> None:
        """A delivered message comes back, but only at ``ready_at`` (retry backoff)."""
        entry.ready_at = ready_at
        heapq.heappush(self._delayed, (ready_at, entry.seq, entry))

    @property
    def delayed(self) -> int:
        """Messages waiting for their delay to pass (not counted as ready)."""
        return len(self._delayed)

    def next_ready_at(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def promote(self, now: float) -> int:
        """Delayed messages whose time has come join the queue's tail. Returns how many."""
        promoted = 0
        while self._delayed and self._delayed[0][0] <= now:
            entry = heapq.heappop(self._delayed)[2]
            entry.ready_at = None
            self._levels[entry.priority].append(entry)
            self._now_ready(entry)
            promoted += 1
        return promoted

    def restore(
        self,
        seq: int,
        size: int,
        delivery_count: int,
        *,
        priority: int | None,
        expires_at: float | None,
        ready_at: float | None,
        maybe_delivered: bool,
    ) -> None:
        """Put back a stored message, body left on disk (recovery); seqs in increasing order."""
        entry = QueueEntry(
            seq,
            None,
            size,
            delivery_count,
            persisted=True,
            maybe_delivered=maybe_delivered,
            expires_at=expires_at,
            priority=self._level_of(priority),
            ready_at=ready_at,
        )
        self.ledger.used += PAGED_ENTRY
        self.resident += PAGED_ENTRY
        self._place(entry)
        self._next_seq = seq + 1

    def _level_of(self, priority: int | None) -> int:
        """x-max-priority queues: higher first, capped at the maximum; others: one level."""
        return min(priority or 0, len(self._levels) - 1)

    def _now_ready(self, entry: QueueEntry) -> None:
        entry.ready = True
        self.ready_count += 1
        self.ready_bytes += entry.size
        if entry.expires_at is not None:
            heapq.heappush(self._expiry, (entry.expires_at, entry.seq, entry))

    def _not_ready(self, entry: QueueEntry) -> None:
        entry.ready = False
        self.ready_count -= 1
        self.ready_bytes -= entry.size

    def far(self) -> bool:
        """Whether a message joining the tail now would wait beyond the resident head."""
        return self.ready_count > RESIDENT or self.ready_bytes > RESIDENT_BYTES

    def page_out(self, entry: QueueEntry) -> None:
        """A copy of ``entry`` is on disk: drop its body if it waits far from the head."""
        if not self.pageable or entry.message is None or not (entry.persisted or entry.paged):
            return
        if entry.ready_at is not None or (entry.ready and self.far()):  # delayed, or far back
            entry.message = None
            self._uncharge(entry)

    def page_candidates(self) -> Iterator[QueueEntry]:
        """Entries whose bodies the page file could take (no copy on disk yet): delayed ones,
        then the ready ones beyond the resident head, newest first (the last to be needed).

        It walks copies of the queue's containers, so the queue may change while it is
        consumed; an entry delivered or gone by then is skipped.
        """
        if not self.pageable:
            return
        for _, _, entry in list(self._delayed):
            if entry.message is not None and not entry.persisted and not entry.paged:
                yield entry
        for level in self._levels:
            if len(level) <= RESIDENT:
                continue
            snapshot = list(level)
            for i in range(len(snapshot) - 1, RESIDENT - 1, -1):
                entry = snapshot[i]
                if (
                    entry.ready
                    and entry.message is not None
                    and not entry.persisted
                    and not entry.paged
                ):
                    yield entry

    def fetch(self, *, body: bool = True) -> QueueEntry | None:
        """Take the next ready message: highest priority first; within one, requeued ones
        first, in their original order. None if there is none, or (with ``body``) if its body
        is on disk: a page-in is asked for, and dispatch goes on once it is back.

        Entries that expired while waiting are skipped here (they were already counted out).
        """
        requeued = self._requeued
        while True:
            level = self._top_level()
            if requeued and -requeued[0][0] >= level:
                head = requeued[0][2]
                if body and head.message is None and head.ready:
                    self.want([item[2] for item in heapq.nsmallest(PAGE, self._requeued)])
                    return None
                entry = heapq.heappop(requeued)[2]
            elif level >= 0:
                waiting = self._levels[level]
                head = waiting[0]
                if body and head.message is None and head.ready:
                    self._want_from(waiting, 0)
                    return None
                entry = waiting.popleft()
                if self.pageable and not entry.seq & 31 and len(waiting) > AHEAD:
                    ahead = waiting[AHEAD]  # looked at now and then: it is on the hot path
                    if ahead.message is None and ahead.ready:
                        self._want_from(waiting, AHEAD)  # before the head gets there
            else:
                return None
            if entry.ready:
                self._not_ready(entry)
                return entry

    def head_paged_out(self) -> bool:
        """Whether the next message's body is on disk (dispatch and get wait for it)."""
        level = self._top_level()
        requeued = self._requeued
        if requeued and -requeued[0][0] >= level:
            return requeued[0][2].message is None
        return level >= 0 and self._levels[level][0].message is None

    def _top_level(self) -> int:
        levels = self._levels
        for level in range(len(levels) - 1, -1, -1):
            if levels[level]:
                return level
        return -1

    def _want_from(self, waiting: deque[QueueEntry], start: int) -> None:
        """Ask for the next page of paged-out messages of ``waiting`` from ``start`` on."""
        if self.paging_in:
            return
        wanted: list[QueueEntry] = []
        for i in range(start, len(waiting)):
            entry = waiting[i]
            if len(wanted) == PAGE:
                break
            if entry.message is None and entry.ready:
                wanted.append(entry)
        self.want(wanted)

    def want(self, entries: list[QueueEntry]) -> None:
        """Ask for the bodies of these entries (those still on disk and ready)."""
        if self.paging_in:
            return
        entries = [e for e in entries if e.message is None and e.ready]
        if entries:
            self.paging_in = True
            self.effects.page_ins.append(PageIn(self, entries))

    def paged_in(self, entries: list[QueueEntry], bodies: dict[int, Message]) -> None:
        """Bodies asked for are back (those of entries gone meanwhile are not kept)."""
        for entry in entries:
            if entry.message is None and entry.ready:
                message = bodies.get(entry.seq)
                if message is not None:
                    entry.message = message
                    self._charge(entry)

    def take(self, entry: QueueEntry) -> None:
        """Take one ready message out, wherever it is (its place is skipped later)."""
        if entry.ready:
            self._not_ready(entry)

    def requeue(self, entry: QueueEntry) -> None:
        """Put a delivered message back at its original position (paged out again if the
        store has it and the queue is long: a consumer that came and went pulls no backlog
        into memory for good)."""
        heapq.heappush(self._requeued, (-entry.priority, entry.seq, entry))
        self._now_ready(entry)
        if len(self._requeued) > RESIDENT:
            self.page_out(entry)

    def ready_entries(self) -> list[QueueEntry]:
        """Ready messages in the order they would be delivered (for inspection and tests)."""
        entries = [entry for _, _, entry in sorted(self._requeued, key=lambda r: r[:2])]
        for level in reversed(self._levels):
            entries.extend(level)
        entries.sort(key=lambda e: -e.priority)  # stable: keeps the order within a priority
        return [e for e in entries if e.ready]

    def purge(self) -> list[QueueEntry]:
        """Remove every ready message; returns them."""
        removed = self.ready_entries()
        for entry in removed:
            entry.ready = False
        for level in self._levels:
            level.clear()
        self._requeued.clear()
        self._expiry.clear()
        self.ready_count = self.ready_bytes = 0
        return removed

    def take_delayed(self) -> list[QueueEntry]:
        """Remove every delayed message (the queue is deleted); returns them."""
        delayed = [item[2] for item in self._delayed]
        self._delayed.clear()
        return delayed

    def expire(self, now: float) -> list[QueueEntry]:
        """Take out every ready message whose time has come, wherever it is in the queue.

        A heap by expiry time finds them without scanning the queue; they leave the counts at
        once and their places in the queue are skipped later.
        """
        expired = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if entry.ready:
                self._not_ready(entry)
                expired.append(entry)
        return expired

    def next_expiry(self) -> float | None:
        heap = self._expiry
        while heap and not heap[0][2].ready:
            heapq.heappop(heap)  # delivered or gone since: nothing to expire
        return heap[0][0] if heap else None

    def over_limit(self) -> bool:
        """Whether the ready messages exceed x-max-length or x-max-length-bytes."""
        args = self.args
        return (args.max_length is not None and len(self) > args.max_length) or (
            args.max_length_bytes is not None and self.ready_bytes > args.max_length_bytes
        )

    def would_overflow(self, size: int) -> bool:
        """Whether one more message of ``size`` bytes would exceed a limit."""
        args = self.args
        return (args.max_length is not None and len(self) >= args.max_length) or (
            args.max_length_bytes is not None and self.ready_bytes + size > args.max_length_bytes
        )

    # --- consumers ----------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer] = consumer
        if getattr(consumer, "exclusive", False):
            self.exclusive_consumer = True
        if self.args.single_active_consumer and self.active is None:
            self.active = consumer
        self.activate(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        """Stop serving ``consumer``. It stays in its ring until dispatch meets it (removing
        it from the middle of a deque would make 40,000 cancels quadratic); a ring more stale
        than live is rebuilt."""
        if self.consumers.pop(consumer, None) is None:
            return
        self.exclusive_consumer = False  # an exclusive consumer is the only one
        if consumer in self._in_ring:
            self._in_ring.discard(consumer)
            self._stale += 1
            if self._stale > len(self._in_ring) + 64:
                live = self._in_ring
                for priority, ring in self._rings.items():
                    self._rings[priority] = deque(c for c in ring if c in live)
                self._stale = 0
        if consumer is self.active:
            # The next active consumer: the highest priority, then the longest waiting.
            waiting = list(self.consumers.values())
            best = max(waiting, key=lambda c: c.priority, default=None)
            self.active = best
            if best is not None:
                self.activate(best)

    def activate(self, consumer: Consumer) -> None:
        """Let ``consumer`` take part in dispatch again (it may have credit now)."""
        if consumer not in self.consumers or consumer in self._in_ring:
            return
        if self.active is not None and consumer is not self.active:
            return  # single active consumer: the others wait their turn
        self._in_ring.add(consumer)
        self._rings.setdefault(consumer.priority, deque()).append(consumer)

    def dispatch(self) -> int:
        """Hand out ready messages: round robin among the highest-priority consumers that have
        credit; lower priorities get messages only while every higher one is out of credit."""
        sent = 0
        for priority in sorted(self._rings, reverse=True):
            ring = self._rings[priority]
            while ring and self.ready_count:
                consumer = ring.popleft()
                if consumer not in self._in_ring:  # removed while it waited here
                    self._stale -= 1
                    continue
                if not consumer.has_credit():
                    self._in_ring.discard(consumer)
                    continue
                entry = self.fetch()
                if entry is None:  # its body is being read back: dispatch goes on then
                    ring.appendleft(consumer)
                    return sent
                consumer.deliver(self, entry)
                sent += 1
                if consumer.has_credit():
                    ring.append(consumer)
                else:
                    self._in_ring.discard(consumer)
            if not self.ready_count:
                break
        return sent
