"""Time in the core: the clock the latest call brought, and everything that falls due.

Four things fall due: a message's TTL, a delayed message becoming ready (x-delay, retry
backoff), an unused queue's x-expires lease, and an unacked delivery's x-consumer-timeout.
The scheduler knows which queues hold timed messages and keeps a heap of ack deadlines; it
tells ``Effects`` of each new deadline so the shell's timer wakes in time, and hands the due
work to the vhost, which acts on it (``Vhost.expire``). It holds no clock of its own: ``now``
is whatever the latest call on the facade said.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..model import MAX_MILLISECONDS, Message
from .effects import Effects
from .queue import MessageQueue

if TYPE_CHECKING:
    from .session import Session, Unacked


class Scheduler:
    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.now = 0.0  # seconds since the epoch, as the latest call's ``now`` said
        # Queues by id(): those holding messages that can expire, lease or become ready.
        self._expiring: dict[int, MessageQueue] = {}
        self._leased: dict[int, MessageQueue] = {}  # queues with x-expires
        self._delaying: dict[int, MessageQueue] = {}  # queues holding delayed messages
        self._ack_deadlines: list[tuple[float, int, int]] = []  # (deadline, session id, tag)

    def at(self, now: float | None) -> None:
        """Time moves to ``now`` (None: it stays where the latest call left it)."""
        if now is not None:
            self.now = now

    def due_at(self, when: float) -> None:
        self.effects.due_at(when)

    # --- message times ---------------------------------------------------------------------

    def ready_at(self, message: Message) -> float | None:
        """An ``x-delay`` header of 1 to 2^32-1 ms (as RabbitMQ's plugin) delays delivery;
        any other value is ignored: the message is ready at once."""
        headers = message.properties.headers
        delay = headers.get("x-delay") if headers else None
        if type(delay) is not int or not 0 < delay <= MAX_MILLISECONDS:
            return None
        return self.now + delay / 1000

    def expires_at(
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

    def expiring(self, queue: MessageQueue, when: float | None = None) -> None:
        """``queue`` holds a message that expires (at ``when``, if known)."""
        self._expiring[id(queue)] = queue
        if when is not None:
            self.due_at(when)

    def delaying(self, queue: MessageQueue, when: float | None = None) -> None:
        """``queue`` holds a message that becomes ready (at ``when``, if known)."""
        self._delaying[id(queue)] = queue
        if when is not None:
            self.due_at(when)

    # --- queue leases (x-expires) -----------------------------------------------------------

    def touch(self, queue: MessageQueue) -> None:
        """The queue was used: its x-expires lease starts again."""
        queue.last_used = self.now
        if queue.args.expires is not None:
            self._leased[id(queue)] = queue
            end = lease_end(queue)
            if end is not None:
                self.due_at(end)

    # --- ack deadlines (x-consumer-timeout) ------------------------------------------------

    def start_deadline(self, session: Session, item: Unacked, timeout_ms: int) -> None:
        item.deadline = self.now + timeout_ms / 1000
        heapq.heappush(self._ack_deadlines, (item.deadline, session.id, item.tag))
        self.due_at(item.deadline)

    def _live(self, entry: tuple[float, int, int], sessions: dict[int, Session]) -> Unacked | None:
        deadline, session_id, tag = entry
        session = sessions.get(session_id)
        item = session.unacked.get(tag) if session is not None else None
        return item if item is not None and item.deadline == deadline else None

    # --- what is due ------------------------------------------------------------------------

    def timed_out(self, sessions: dict[int, Session]) -> list[tuple[Session, Unacked]]:
        """Deliveries past their ack deadline (settled or extended ones are skipped)."""
        due = []
        heap = self._ack_deadlines
        while heap and heap[0][0] <= self.now:
            top = heapq.heappop(heap)
            item = self._live(top, sessions)
            if item is not None:
                due.append((sessions[top[1]], item))
        return due

    def delaying_queues(self) -> list[MessageQueue]:
        return [q for q in self._delaying.values() if not q.deleted]

    def expiring_queues(self) -> list[MessageQueue]:
        return [q for q in self._expiring.values() if not q.deleted]

    def lapsed_leases(self) -> list[MessageQueue]:
        """Queues unused for their x-expires."""
        return [
            q
            for q in self._leased.values()
            if (due := lease_end(q)) is not None and due <= self.now
        ]

    def next_deadline(self, sessions: dict[int, Session]) -> float | None:
        """The earliest time something is due; forgets what can no longer fall due."""
        deadline = None
        heap = self._ack_deadlines
        while heap and self._live(heap[0], sessions) is None:
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
            elif (due := lease_end(queue)) is not None and (deadline is None or due < deadline):
                deadline = due
        for key, queue in list(self._expiring.items()):
            due = None if queue.deleted else queue.next_expiry()
            if due is None:
                del self._expiring[key]
            elif deadline is None or due < deadline:
                deadline = due
        return deadline


def lease_end(queue: MessageQueue) -> float | None:
    """When an unused queue with x-expires is deleted (None: it is in use, or has none)."""
    if queue.args.expires is None or queue.consumers or queue.deleted:
        return None
    return queue.last_used + queue.args.expires / 1000
