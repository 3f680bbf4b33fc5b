"""Publisher flow control: the core decides which publishing sessions must pause; the shell
carries it out (it tells the client, and stops reading a client that publishes anyway).

A session is blocked for one of three reasons, checked in this order:

- **memory alarm**: the memory that queued messages take (``MemoryLedger``), plus what the
  process held before any message (``memory_baseline``), is over the high watermark. While it
  is, a session that publishes into a *heavy* queue (one holding at least 1 % of the
  watermark) is blocked: the flood's source, not everyone. If memory still climbs past 110 %
  of the watermark (many light queues), every publishing session is blocked, as RabbitMQ
  does. Both end when memory is back under 90 % of the watermark; consumers go on throughout,
  and their acks are what frees the memory.
- **paging**: past ``PAGING_RATIO`` of the watermark, ``paging`` is set and queues move the
  bodies of messages far from their heads to disk, so the memory alarm is the second line, not
  the first. It ends under 90 % of that mark. While the page file lags behind
  (``paging_behind``: the pager says so), publishers into heavy queues are paused as for
  credit, so a flood waits for the disk instead of filling memory while it writes.
- **disk alarm**: the disk holding the store has less free space than its limit. Sessions that
  publish persistent messages are blocked until there is room again.
- **credit**: a queue it published to holds more than ``queue_limit`` bytes of ready messages
  while consumers are taking from it. The publisher then runs no further ahead of them than
  that (this is what bounds end-to-end latency); it resumes when the queue is under half the
  limit, or has no consumers left. A queue nobody consumes is a buffer and blocks nobody by
  itself: the memory alarm bounds it.

State in, state out: the broker reports publishes and the shell reports alarms and asks for a
``check`` each round; ``take_changes`` then says which sessions to pause (a ``Pause``, with why)
or resume (None). Nothing here calls back into the shell.

How the shell pauses follows RabbitMQ: for an alarm it tells the client (AMQP's
connection.blocked), whose SDK holds its publishes. For credit alone (``Pause.credit``) it
stops reading the connection without a word, RabbitMQ's ``flow`` state: the publishes already
in the socket buffers are taken the moment it resumes, so the queue never runs dry waiting
for a round trip. A connection that also consumes is told instead, since not reading it would
also stop the acks its queue waits for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs

#: What one queued message costs beyond its body (entry, message and property objects):
#: 370-410 bytes of RSS measured with 16 B and 1 KiB bodies (docs/performance.md).
ENTRY_OVERHEAD = 400
#: What a queued message whose body is on disk still holds (its entry, seq and place in the
#: queue): 200 bytes measured with tracemalloc. Part of ENTRY_OVERHEAD, never freed by paging.
PAGED_ENTRY = 200

#: Past this share of the high watermark, queues page the bodies of messages far from their
#: heads to disk, transient ones included (RabbitMQ's vm_memory_high_watermark_paging_ratio).
PAGING_RATIO = 0.5

#: How far a queue may run ahead of its consumers before its publishers wait: about 1,600
#: messages of 256 B, which keeps `mqroute bench`'s end-to-end p99 near 75 ms at full rate
#: (docs/performance.md). Raise it where a queue with busy workers must absorb larger bursts.
DEFAULT_QUEUE_LIMIT = 1024 * 1024


@attrs.frozen
class Pause:
    """Why a session may not publish now."""

    reason: str
    credit: bool = False  # only a queue over its credit limit (no alarm) holds it back


@attrs.frozen
class PausePolicy:
    """How one connection is paused: what its client is told (an alarm's or credit's
    reason; None: nothing), and whether the publishes it sends wait unread."""

    tell: str | None = None
    wait: bool = False


def pause_policy(pauses: Iterable[Pause], *, consuming: bool, holds_when_told: bool) -> PausePolicy:
    """Decide how a connection whose sessions hold ``pauses`` is paused (RabbitMQ's ``flow``
    state, shared by every front end; the driver carries it out).

    - An alarm (memory, disk) is told, and publishes wait (after those already on their way).
    - Credit alone, on a connection that does not consume: not a word; its publishes wait
      unread, and are taken the moment the queue drains (no round trip lost).
    - Credit alone, on a connection that also consumes: not reading it would stop the acks
      behind its publishes, which are what drain the queue. A client that holds its
      publishes when told (the native SDK) is told and then waits; one that cannot be told
      of credit (AMQP has no word for it) is not paused.
    """
    credit: str | None = None
    for pause in pauses:
        if not pause.credit:
            return PausePolicy(tell=pause.reason, wait=True)
        credit = credit or pause.reason
    if credit is None:
        return PausePolicy()
    if not consuming:
        return PausePolicy(wait=True)
    if holds_when_told:
        return PausePolicy(tell=credit, wait=True)
    return PausePolicy()


@attrs.define
class MemoryLedger:
    """Bytes held in memory by queued messages (bodies plus ENTRY_OVERHEAD each)."""

    used: int = 0


class FlowQueue(Protocol):
    """What flow control reads of a queue."""

    deleted: bool
    resident: int  # bytes of its messages held in memory (bodies and overhead)
    ready_bytes: int
    ready_count: int

    @property
    def consumers(self) -> Mapping[Any, object]: ...

    @property
    def name(self) -> str: ...

    def flow_bytes(self) -> int: ...

    def has_consumers(self) -> bool: ...


class Publisher(Protocol):
    """What flow control reads of a publishing session."""

    id: int
    publishes: int  # bits: 1 transient, 2 persistent (flow control knows of them)


class FlowControl:
    def __init__(
        self,
        ledger: MemoryLedger,
        *,
        memory_limit: int | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.ledger = ledger
        self.memory_limit = memory_limit
        self.memory_baseline = 0  # bytes the process uses without messages; the shell sets it
        self.queue_limit = queue_limit
        self.memory_alarm: str | None = None  # publishers into heavy queues are blocked
        self.memory_alarm_everyone = False  # ... and past 110 %, every publisher
        self.paging = False  # over PAGING_RATIO of the watermark: bodies go to disk
        self.paging_behind = False  # ... faster than they are written (set by the Pager)
        self.paging_epoch = 0  # counts the times paging began (each begins with a sweep)
        self.disk_alarm: str | None = None
        self._publishers: set[int] = set()
        self._persistent_publishers: set[int] = set()
        self._heavy_publishers: set[int] = set()  # blocked by the memory alarm or paging
        self._waiting: dict[int, tuple[FlowQueue, set[int]]] = {}  # queue id -> sessions
        self._waits_on: dict[int, set[int]] = {}  # session -> queue ids
        self._blocked: dict[int, Pause] = {}  # session -> why, as last reported
        self._changes: dict[int, Pause | None] = {}
        self.changed = False  # take_changes has something (cheap to look at per publish)

    # --- what the broker reports ----------------------------------------------------------

    def published(self, session: int, persistent: bool) -> None:
        """A session published; the first publish makes it a publisher (alarms apply)."""
        if persistent:
            if session not in self._persistent_publishers:
                self._persistent_publishers.add(session)
                self._publishers.add(session)
                self._update(session)
        elif session not in self._publishers:
            self._publishers.add(session)
            self._update(session)

    def after_publish(
        self, publisher: Publisher, persistent: bool, queues: Iterable[FlowQueue]
    ) -> None:
        """``publisher`` put a message into ``queues``: it may have to wait for them. This
        runs once per message, so the credit check of ``over_limit`` is inlined."""
        kind = 2 if persistent else 1
        if not publisher.publishes & kind:  # flow control learns of a publisher once
            publisher.publishes |= kind
            self.published(publisher.id, persistent)
        limit = self.queue_limit
        for queue in queues:
            if queue.ready_bytes + queue.ready_count * ENTRY_OVERHEAD > limit and queue.consumers:
                self.wait_for(publisher.id, queue)
            if (self.memory_alarm is not None or self.paging_behind) and self.heavy(queue):
                self.block_for_memory(publisher.id)

    def heavy(self, queue: FlowQueue) -> bool:
        """Whether the memory alarm (or paging that lags) blocks those who publish into
        ``queue`` (ask only while ``memory_alarm`` or ``paging_behind`` is set)."""
        return self.memory_limit is not None and queue.resident * 100 >= self.memory_limit

    def block_for_memory(self, session: int) -> None:
        """``session`` published into a heavy queue during the memory alarm."""
        if session not in self._heavy_publishers:
            self._heavy_publishers.add(session)
            self._update(session)

    def over_limit(self, queue: FlowQueue) -> bool:
        """Whether ``queue`` is past the credit limit (the broker asks after enqueueing)."""
        return queue.flow_bytes() > self.queue_limit and queue.has_consumers()

    def wait_for(self, session: int, queue: FlowQueue) -> None:
        """``session`` published into ``queue``, which is over its limit: it waits for it."""
        entry = self._waiting.get(id(queue))
        if entry is None:
            entry = self._waiting[id(queue)] = (queue, set())
        elif session in entry[1]:
            return  # already waits for it (publishes taken meanwhile ask again)
        entry[1].add(session)
        self._waits_on.setdefault(session, set()).add(id(queue))
        self._update(session)

    def session_closed(self, session: int) -> None:
        self._publishers.discard(session)
        self._persistent_publishers.discard(session)
        self._heavy_publishers.discard(session)
        for key in self._waits_on.pop(session, ()):
            entry = self._waiting.get(key)
            if entry is not None:
                entry[1].discard(session)
                if not entry[1]:
                    del self._waiting[key]
        self._blocked.pop(session, None)
        self._changes.pop(session, None)

    # --- what the shell reports and asks --------------------------------------------------

    def set_disk_alarm(self, reason: str | None) -> None:
        if reason == self.disk_alarm:
            return
        self.disk_alarm = reason
        for session in self._persistent_publishers:
            self._update(session)

    def check(self) -> None:
        """Release sessions whose queues drained, and raise or clear the memory alarm."""
        if self._waiting:
            self._release_drained()
        limit = self.memory_limit
        if limit is not None and (
            self.paging or self.ledger.used + self.memory_baseline > limit * PAGING_RATIO
        ):  # else the common case, kept cheap: the shell calls this every round
            self._check_paging(limit * PAGING_RATIO)
            self._check_memory(limit)
        if self._heavy_publishers and self.memory_alarm is None and not self.paging_behind:
            heavy, self._heavy_publishers = self._heavy_publishers, set()
            for session in heavy:
                self._update(session)

    def _check_paging(self, mark: float) -> None:
        used = self.ledger.used + self.memory_baseline
        if not self.paging and used > mark:
            self.paging = True
            self.paging_epoch += 1
        elif self.paging and used < mark * 0.9:
            self.paging = False

    def _release_drained(self) -> None:
        for key, (queue, sessions) in list(self._waiting.items()):
            if (
                queue.deleted
                or not queue.has_consumers()
                or queue.flow_bytes() <= self.queue_limit // 2
            ):
                del self._waiting[key]
                for session in sessions:
                    waits = self._waits_on.get(session)
                    if waits is not None:
                        waits.discard(key)
                        if not waits:
                            del self._waits_on[session]
                    self._update(session)

    def _check_memory(self, limit: int) -> None:
        used = self.ledger.used + self.memory_baseline
        if self.memory_alarm is None:
            if used <= limit:
                return
            self.memory_alarm = (
                f"memory alarm: {used} bytes in use (queued messages and the process), over the "
                f"high watermark of {limit}; publishers into the queues that hold it wait"
            )
            return  # each is blocked as it next publishes into a heavy queue
        if used < limit * 0.9:
            self.memory_alarm = None
            self.memory_alarm_everyone = False
            for session in self._heavy_publishers | self._publishers:
                self._update(session)  # heavy ones may still wait for paging
        elif not self.memory_alarm_everyone and used > limit * 1.1:
            self.memory_alarm_everyone = True
            self.memory_alarm = (
                f"memory alarm: {used} bytes in use, over 110% of the high watermark of {limit}; "
                "every publisher waits"
            )
            for session in self._publishers:
                self._update(session)

    def take_changes(self) -> dict[int, Pause | None]:
        """Sessions to pause (with why) or resume (None) since the last call."""
        changes = self._changes
        if changes:
            self._changes = {}
            self.changed = False
        return changes

    def blocked(self, session: int) -> Pause | None:
        return self._blocked.get(session)

    # --- internals ------------------------------------------------------------------------

    def _reason(self, session: int) -> Pause | None:
        if self.memory_alarm is not None and (
            session in self._heavy_publishers
            or (self.memory_alarm_everyone and session in self._publishers)
        ):
            return Pause(self.memory_alarm)
        if self.paging_behind and session in self._heavy_publishers:
            return Pause(
                "paging: memory is short and messages arrive faster than their bodies are "
                "written to disk; publishing resumes as the disk catches up",
                credit=True,
            )
        if self.disk_alarm is not None and session in self._persistent_publishers:
            return Pause(self.disk_alarm)
        waits = self._waits_on.get(session)
        if waits:
            queue = self._waiting[next(iter(waits))][0]
            return Pause(
                f"flow control: queue {queue.name!r} holds more than {self.queue_limit} bytes "
                "of ready messages; publishing resumes as its consumers catch up",
                credit=True,
            )
        return None

    def _update(self, session: int) -> None:
        reason = self._reason(session)
        if reason != self._blocked.get(session):
            if reason is None:
                del self._blocked[session]
            else:
                self._blocked[session] = reason
            self._changes[session] = reason
            self.changed = True
