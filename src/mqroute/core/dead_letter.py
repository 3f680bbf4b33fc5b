"""Dead-lettering: messages that leave a queue unsuccessfully, and redrive that brings them back.

A message is dead-lettered when it is rejected without requeue, expires, overflows a length
limit or passes its delivery limit (RabbitMQ's reasons: rejected, expired, maxlen,
delivery_limit). It is republished to the queue's x-dead-letter-exchange carrying ``x-death``:
one entry per (queue, reason), newest first, with a count; ``x-first-death-*`` and
``x-last-death-*`` beside it. That history is read back to stop an automatic cycle (a message
expiring round a loop of queues for ever) and to redrive a message to where it died.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from ..errors import InvalidArgument
from ..model import Message, Table
from .access import FULL, Access
from .effects import Effects, PageIn
from .queue import PAGE, MessageQueue, QueueEntry
from .topology import DEFAULT_EXCHANGE, Topology, check_access
from .traversal import route

log = logging.getLogger("mqroute.broker")

#: Puts a message into queues (``Vhost.enqueue``): dead letters are published again.
Enqueue = Callable[[Message, list[MessageQueue]], object]


@attrs.frozen(kw_only=True)
class Redriven:
    moved: int
    more: bool  # it stopped at a body on disk: call again once it is read back


class DeadLetters:
    def __init__(
        self, topology: Topology, effects: Effects, enqueue: Enqueue, clock: Callable[[], float]
    ) -> None:
        self.topology = topology
        self.effects = effects
        self.enqueue = enqueue
        self.clock = clock

    def entries(self, queue: MessageQueue, entries: list[QueueEntry], reason: str) -> None:
        """``entries`` leave ``queue`` unsuccessfully: republish them to its DLX, if any.

        Those whose bodies are on disk are read back first (``Effects.page_ins``); until then
        the store keeps them in ``queue``, and ``paged_in`` finishes the job.
        """
        if queue.args.dead_letter_exchange is None:
            self.topology.gone(queue, entries)
            return
        paged = [e for e in entries if e.message is None]
        resident = [e for e in entries if e.message is not None] if paged else entries
        self.topology.gone(queue, resident)
        for entry in resident:
            self.message(queue, entry.message, reason)
        if paged:
            self.effects.page_ins.append(PageIn(queue, paged, dead_letter=reason))

    def message(self, queue: MessageQueue, message: Message | None, reason: str) -> None:
        """Dead-letter one message. A failure here (a bug, or input nobody foresaw) loses
        this one message with a log line; it must never reach the caller, which is settling
        or expiring other messages too."""
        if queue.args.dead_letter_exchange is None:
            return
        try:
            assert message is not None, "a message dead-lettered has its body"
            self._republish(queue, message, reason)
        except Exception:
            log.exception(
                "could not dead-letter a message (%s) from queue %r; it is dropped",
                reason,
                queue.name,
            )

    def _republish(self, queue: MessageQueue, message: Message, reason: str) -> None:
        args = queue.args
        dlx = args.dead_letter_exchange
        if dlx != DEFAULT_EXCHANGE and dlx not in self.topology.exchanges:
            return  # a DLX that does not exist drops the message, as RabbitMQ
        routing_key = args.dead_letter_routing_key or message.routing_key
        dead = attrs.evolve(
            message,
            exchange=dlx,
            routing_key=routing_key,
            properties=attrs.evolve(
                message.properties,
                expiration=None,
                headers=death_headers(message, queue.name, reason, self.clock()),
            ),
        )
        targets = route(self.topology, dead, from_client=False)
        if reason != "rejected" and not rejected_before(dead):
            # An automatic cycle (expired / maxlen / delivery_limit back into a queue the
            # message already died in) would go on for ever: drop those targets, as RabbitMQ.
            seen = queues_died_in(dead)
            targets = [q for q in targets if q.name not in seen]
        self.enqueue(dead, targets)

    def paged_in(self, request: PageIn, bodies: dict[int, Message]) -> None:
        """Bodies of messages that died on disk are back: dead-letter them now."""
        queue = request.queue
        assert request.dead_letter is not None
        self.topology.gone(queue, request.entries)
        lost = 0
        for entry in request.entries:
            message = bodies.get(entry.seq)
            if message is None:
                lost += 1
            else:
                self.message(queue, message, request.dead_letter)
        if lost and not queue.deleted:
            log.error(
                "could not read %d messages to dead-letter (%s) from queue %r; they are dropped",
                lost,
                request.dead_letter,
                queue.name,
            )

    def redrive(
        self,
        owner: str,
        queue: str,
        *,
        to_exchange: str | None = None,
        limit: int = 0,
        access: Access = FULL,
    ) -> Redriven:
        """Move ready messages out of a dead-letter queue.

        Each goes back to the queue it last died in (``x-last-death-queue``, through the
        default exchange), or, with ``to_exchange``, is published there with its routing key.
        Messages with nowhere to go stay. ``limit`` 0 moves them all. The caller must be
        allowed to write where each message goes, as a publish there would need (the default
        exchange and the queue): a header names the target, and a header is the client's, so
        every target is checked, before anything moves. A persistent message's
        removal and its new copy are written in the same commit. It stops at a message whose
        body is on disk, having asked for it (``more``): the shell reads it back and calls
        again for the rest.
        """
        topology = self.topology
        source = topology.queue(queue)
        check_access(owner, source)
        if to_exchange is not None:
            topology.exchange(to_exchange)  # NOT_FOUND before anything moves
        if limit < 0:
            raise InvalidArgument(f"limit must be 0 (all) or more, not {limit}")
        moved = 0
        ready = source.ready_entries()
        if to_exchange is None and not access.everything:
            for entry in ready[: limit or None]:
                if entry.message is None:
                    break  # read back first; checked on the call that moves it
                home = _home(entry.message, topology, queue)
                if home is not None:
                    access.check("write", "exchange", DEFAULT_EXCHANGE)
                    access.check("write", "queue", home)
        for i, entry in enumerate(ready):
            if limit and moved == limit:
                break
            message = entry.message
            if message is None:
                source.want([e for e in ready[i : i + PAGE * 4] if e.message is None])
                return Redriven(moved=moved, more=True)
            if to_exchange is None:
                home = _home(message, topology, queue)
                if home is None:
                    continue  # stays where it is
                if not access.everything:  # read back since the check above
                    access.check("write", "exchange", DEFAULT_EXCHANGE)
                    access.check("write", "queue", home)
                message = attrs.evolve(message, exchange="", routing_key=home)
            else:
                message = attrs.evolve(message, exchange=to_exchange)
            source.take(entry)
            topology.gone(source, (entry,))
            self.enqueue(message, route(topology, message, from_client=False))
            moved += 1
        return Redriven(moved=moved, more=False)


def _home(message: Message, topology: Topology, queue: str) -> str | None:
    """The queue a message last died in, if it still exists and is not ``queue``."""
    home = (message.properties.headers or {}).get("x-last-death-queue")
    if not isinstance(home, str) or home not in topology.queues or home == queue:
        return None
    return home


def death_headers(message: Message, queue: str, reason: str, now: float) -> Table:
    """The message's headers with its death in ``queue`` recorded as RabbitMQ writes it.

    ``x-death`` holds one entry per (queue, reason), most recent first, with a count; a
    repeated death keeps the entry's first exchange, routing keys and time (RabbitMQ 3.10+).
    ``x-first-death-*`` are set once, ``x-last-death-*`` every time.
    """
    headers = dict(message.properties.headers or {})
    deaths = _deaths(headers)
    previous = next(
        (d for d in deaths if d.get("queue") == queue and d.get("reason") == reason), None
    )
    entry: Table
    if previous is not None:  # the first death's details stay; only the count grows
        count = previous.get("count")
        entry = dict(previous)
        entry["count"] = count + 1 if type(count) is int and 0 <= count < 2**62 else 1
    else:
        entry = {
            "queue": queue,
            "reason": reason,
            "count": 1,
            "time": int(now),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if message.properties.expiration is not None:
            entry["original-expiration"] = message.properties.expiration
    headers["x-death"] = [entry] + [d for d in deaths if d is not previous]
    for key, value in (("queue", queue), ("reason", reason), ("exchange", message.exchange)):
        headers.setdefault(f"x-first-death-{key}", value)
        headers[f"x-last-death-{key}"] = value
    return headers


def _deaths(headers: Table) -> list[Table]:
    """The x-death entries the broker can read. A publisher may send anything under that
    name: a value that is not a list is ignored (and replaced), as RabbitMQ does, and so is
    any entry that is not a table."""
    deaths = headers.get("x-death")
    if type(deaths) is not list:
        return []
    return [d for d in deaths if type(d) is dict]


def queues_died_in(message: Message) -> set[str]:
    return {str(d.get("queue")) for d in _deaths(message.properties.headers or {})}


def rejected_before(message: Message) -> bool:
    return any(d.get("reason") == "rejected" for d in _deaths(message.properties.headers or {}))
