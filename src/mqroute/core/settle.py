"""What happens to deliveries once they are settled, timed out or their session closes.

An ack forgets the message; a nack or reject without requeue dead-letters it; a requeue puts
it back in its place for the next consumer, unless it passed its delivery limit, expired
while it was out, or the queue holds it back first (x-delayed-retry-*). Either way the
consumer's prefetch credit comes back, and queues with new credit dispatch again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..records import HoldMessage, MarkDelivered
from .dead_letter import DeadLetters
from .queue import MessageQueue
from .scheduler import Scheduler
from .session import Session, Unacked
from .topology import Topology


class Settler:
    def __init__(
        self,
        topology: Topology,
        scheduler: Scheduler,
        dead_letters: DeadLetters,
        dispatch: Callable[[MessageQueue], None],
    ) -> None:
        self.topology = topology
        self.scheduler = scheduler
        self.dead_letters = dead_letters
        self.dispatch = dispatch

    def forget(self, settled: list[Unacked]) -> None:
        """The messages of ``settled`` are done with: acked, or dead-lettered already."""
        gone = self.topology.gone
        queue = settled[0].queue if settled else None
        if all(item.queue is queue for item in settled):  # the common case: one queue
            if queue is not None:
                gone(queue, [item.entry for item in settled])
            return
        by_queue: dict[int, list[Unacked]] = {}
        for item in settled:
            by_queue.setdefault(id(item.queue), []).append(item)
        for items in by_queue.values():
            gone(items[0].queue, [i.entry for i in items])

    def credit(self, settled: Iterable[Unacked]) -> None:
        """Credit goes back to consumers; queues with new credit dispatch."""
        touched: dict[int, MessageQueue] = {}
        shared: dict[int, Session] = {}  # sessions with a shared prefetch: all their consumers
        for item in settled:
            item.queue.unacked -= 1
            consumer = item.consumer
            if consumer is not None:
                consumer.unacked -= 1
                session = consumer.session
                session.consumer_unacked -= 1
                if session.prefetch:
                    shared[session.id] = session
                elif consumer.tag in session.consumers:
                    item.queue.activate(consumer)
                    touched[id(item.queue)] = item.queue
        for session in shared.values():
            for other in session.consumers.values():
                other.queue.activate(other)
                touched[id(other.queue)] = other.queue
        for queue in touched.values():
            if not queue.deleted:
                self.dispatch(queue)

    def reject(self, settled: list[Unacked]) -> None:
        """Settled without requeue: each goes to its queue's dead-letter exchange, if any."""
        for item in settled:
            self.dead_letters.message(item.queue, item.entry.message, "rejected")
        self.forget(settled)
        self.credit(settled)

    def uncount(self, settled: list[Unacked]) -> None:
        """Deliveries the application never saw: they were no delivery attempt."""
        for item in settled:
            entry = item.entry
            if entry.delivery_count > 0:
                entry.delivery_count -= 1
                if entry.persisted:
                    self.topology.record(
                        MarkDelivered(item.queue.name, entry.seq, entry.delivery_count)
                    )

    def requeue(
        self, settled: list[Unacked], *, backoff: bool = False, counted: bool = True
    ) -> None:
        """Put deliveries back. A consumer's explicit nack (``backoff``) on a queue with
        x-delayed-retry-* holds each message back before it is redelivered; a release (not
        ``counted``) was no attempt, so the delivery limit does not apply."""
        now = self.scheduler.now
        queues: dict[int, MessageQueue] = {}
        for item in settled:
            queue, entry = item.queue, item.entry
            if queue.deleted:
                continue
            limit = queue.args.delivery_limit
            if counted and limit is not None and entry.delivery_count > limit:
                self.dead_letters.entries(queue, [entry], "delivery_limit")
                continue
            if entry.expires_at is not None and entry.expires_at <= now:
                self.dead_letters.entries(queue, [entry], "expired")  # TTL ran on meanwhile
                continue
            delay = queue.args.retry_delay(entry.delivery_count) if backoff else None
            if delay is not None:
                queue.hold(entry, now + delay)
                if entry.persisted:
                    self.topology.record(HoldMessage(queue.name, entry.seq, now + delay))
                self.scheduler.delaying(queue, now + delay)
                continue
            queue.requeue(entry)
            queues[id(queue)] = queue
        self.credit(settled)
        for queue in queues.values():
            self.dispatch(queue)  # other consumers may be waiting for these

    def time_out(self, sessions: dict[int, Session]) -> None:
        """Deliveries past their x-consumer-timeout go back to their queues."""
        for session, item in self.scheduler.timed_out(sessions):
            session.time_out(item)
            self.requeue([item])
