"""A message's way in: check it, route it, put it into every queue it reached (length
limits and overflow, TTL, delay, dedup, the journal, paging), and settle its confirm: at
once, after the commit that keeps it, or as a nack with the reason.

``Vhost.publish`` calls ``Publishing.publish``; dead letters (dead_letter.py) come back in
through ``enqueue``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..errors import BrokerError, PreconditionFailed
from ..model import MAX_SHORT_STRING, REPLY_TO, Message, Returned
from ..records import PutMessage
from .dedup import Deduplicator
from .flow import FlowControl
from .journal import Batch, Journal
from .paging import Pager
from .queue import MessageQueue
from .reply_to import REPLY_PREFIX, ReplyTo
from .scheduler import Scheduler
from .session import Session
from .topology import Topology, check_short_string
from .traversal import route

if TYPE_CHECKING:
    from .dead_letter import DeadLetters


@attrs.define
class Counts:
    """Messages published, delivered and acked since start (``mqroute status``)."""

    published: int = 0
    delivered: int = 0
    acked: int = 0


class Publishing:
    """Publishes and their confirms for one vhost."""

    dead_letters: DeadLetters  # set by the vhost once both exist (they feed each other)

    def __init__(
        self,
        *,
        topology: Topology,
        journal: Journal | None,
        flow: FlowControl,
        pager: Pager,
        scheduler: Scheduler,
        dedup: Deduplicator,
        replies: ReplyTo,
        counts: Counts,
        max_message_size: int,
        dispatch: Callable[[MessageQueue], None],
    ) -> None:
        self.topology = topology
        self.journal = journal
        self.flow = flow
        self.pager = pager
        self.scheduler = scheduler
        self.dedup = dedup
        self.replies = replies
        self.counts = counts
        self.max_message_size = max_message_size
        self.dispatch = dispatch

    def publish(
        self,
        session: Session,
        message: Message,
        *,
        mandatory: bool = False,
    ) -> int:
        """Route and enqueue ``message``; returns its publish sequence number.

        A publish that fails (no such exchange, body too large) is nacked with the reason and
        the error is raised too, so a front end can choose between reporting and closing.
        """
        scheduler = self.scheduler
        seq = session.confirms.begin()
        try:
            access = session.access
            if not access.everything:
                access.check("write", "exchange", message.exchange)
            if message.properties.user_id is not None:
                access.check_user_id(message.properties.user_id)
            if len(message.routing_key) * 4 > MAX_SHORT_STRING:  # short ones need no encoding
                check_short_string("routing key", message.routing_key)
            if len(message.body) > self.max_message_size:
                raise PreconditionFailed(
                    f"message body of {len(message.body)} bytes exceeds the maximum of "
                    f"{self.max_message_size}"
                )
            if message.properties.reply_to == REPLY_TO:
                message = self.replies.addressed(session, message)
            if message.routing_key.startswith(REPLY_PREFIX) and not message.exchange:  # is_reply
                self.counts.published += 1
                self.counts.delivered += self.replies.reply(session, seq, message, mandatory)
                return seq
            queues = route(self.topology, message)
        except BrokerError as exc:
            session.settle_publish(seq, ok=False, code=exc.code, text=exc.reason)
            raise
        self.counts.published += 1
        exchange = self.topology.exchanges.get(message.exchange)
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

    def refuse(self, session: Session, error: BrokerError) -> int:
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
                self.dispatch(queue)
            if ready_at is not None:
                scheduler.delaying(queue, ready_at)
                continue  # not ready yet: limits and TTL apply when it is
            if expires_at is not None:
                if expires_at <= now:  # TTL 0: delivered just now, or expired
                    scheduler.expiring(queue)
                    self.expire_queue(queue)
                else:
                    scheduler.expiring(queue, expires_at)
            if args.max_length is not None or args.max_length_bytes is not None:
                self.drop_head(queue)
        return stored, refused

    def drop_head(self, queue: MessageQueue) -> None:
        while queue.over_limit():  # drop-head: the oldest ready messages make room
            head = queue.fetch(body=False)
            assert head is not None
            self.dead_letters.entries(queue, [head], "maxlen")

    def expire_queue(self, queue: MessageQueue) -> int:
        expired = queue.expire(self.scheduler.now)
        if expired:
            self.dead_letters.entries(queue, expired, "expired")
        return len(expired)

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
