"""Paging under memory pressure: which message bodies go to the page file, and which of its
rows may be forgotten.

Persistent messages in durable queues already have a copy on disk (the store's), so a queue
drops their bodies far from its head at all times. Every other message lives only in memory
until memory runs short: past ``flow.PAGING_RATIO`` of the high watermark (``flow.paging``),
the bodies of messages far from their queue's head are written to a page file and dropped from
memory, to be read back when they come near the head (``MessageQueue.fetch``). So a flood into
a queue nobody consumes costs its entries, not its bodies, and the memory alarm comes later.

The core decides and the shell does the I/O: ``take`` hands the shell a ``PageWork`` (bodies
to write, rows to delete); after writing it the shell reports ``written`` (the bodies still
waiting are dropped from memory) or ``failed`` (a full disk: they stay in memory, and the
memory alarm is what is left). The page file holds nothing across a restart: what it holds is
transient, and a restart loses transient messages anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import attrs

from .flow import FlowControl
from .queue import MessageQueue, QueueEntry

#: Bodies waiting to be written past which paging is behind: publishers into heavy queues
#: wait for the disk (flow.paging_behind).
BACKLOG_LIMIT = 32 * 1024 * 1024


@attrs.frozen
class PageWork:
    """One batch for the page file."""

    out: list[tuple[MessageQueue, QueueEntry]]  # bodies to write (each entry marked paged)
    drop: list[tuple[int, int]]  # (queue uid, seq): rows whose messages are gone
    drop_queues: list[int]  # uids of deleted queues: all their rows

    @property
    def empty(self) -> bool:
        return not (self.out or self.drop or self.drop_queues)


class Pager:
    def __init__(self, flow: FlowControl) -> None:
        self.flow = flow
        self._out: deque[tuple[MessageQueue, QueueEntry]] = deque()
        self._drop: list[tuple[int, int]] = []
        self._drop_queues: list[int] = []
        self._sweep: Iterator[tuple[MessageQueue, QueueEntry]] | None = None
        self._epoch = 0  # the flow.paging_epoch swept for
        self.backlog = 0  # bytes of bodies enqueued to be written and not yet taken

    # --- what queues and the broker report ------------------------------------------------

    def enqueued(self, queue: MessageQueue, entry: QueueEntry) -> None:
        """``entry`` joined ``queue`` far from its head while paging: write it out soon."""
        self._out.append((queue, entry))
        self.backlog += entry.size + 64
        if self.backlog > BACKLOG_LIMIT:
            self.flow.paging_behind = True

    def gone(self, queue: MessageQueue, entry: QueueEntry) -> None:
        """A paged entry left its queue for good: its row may go."""
        entry.paged = False
        if not queue.deleted:  # a deleted queue's rows go all at once
            self._drop.append((queue.uid, entry.seq))

    def queue_deleted(self, queue: MessageQueue) -> None:
        self._drop_queues.append(queue.uid)

    # --- what the shell asks and reports --------------------------------------------------

    def take(self, queues: Iterable[MessageQueue], budget: int) -> PageWork:
        """The next batch: about ``budget`` bytes of bodies, and every row to delete.

        When paging has just begun, the queues are swept for bodies already in memory (over
        as many batches as it takes); messages that arrive while it lasts come on their own.
        """
        out: list[tuple[MessageQueue, QueueEntry]] = []
        size = 0
        pending = self._out
        while pending and size < budget:
            queue, entry = pending.popleft()
            self.backlog -= entry.size + 64
            if _can_page(queue, entry):
                entry.paged = True
                out.append((queue, entry))
                size += entry.size + 64
        flow = self.flow
        if flow.paging and self._epoch != flow.paging_epoch:
            self._epoch = flow.paging_epoch
            self._sweep = _sweep(list(queues))
        if self._sweep is not None and size < budget:
            if not flow.paging:
                self._sweep = None
            else:
                for queue, entry in self._sweep:
                    entry.paged = True
                    out.append((queue, entry))
                    size += entry.size + 64
                    if size >= budget:
                        break
                else:
                    self._sweep = None
        # Behind while a sweep lasts or the backlog is large: the flood waits for the disk.
        flow.paging_behind = self._sweep is not None or self.backlog > BACKLOG_LIMIT
        drop, self._drop = self._drop, []
        drop_queues, self._drop_queues = self._drop_queues, []
        return PageWork(out=out, drop=drop, drop_queues=drop_queues)

    def written(self, work: PageWork) -> None:
        """The page file holds ``work.out``: drop the bodies of those still waiting far back."""
        for queue, entry in work.out:
            if not queue.deleted:
                queue.page_out(entry)

    def failed(self, work: PageWork) -> None:
        """The page file could not take ``work``: its bodies stay in memory. Rows to delete
        are asked for again with the next batch."""
        for _, entry in work.out:
            entry.paged = False
        self._drop.extend(work.drop)
        self._drop_queues.extend(work.drop_queues)


def _can_page(queue: MessageQueue, entry: QueueEntry) -> bool:
    """Still in memory, with no copy on disk, and waiting (not delivered, not gone)."""
    return (
        not queue.deleted
        and entry.message is not None
        and not entry.persisted
        and not entry.paged
        and (entry.ready or entry.ready_at is not None)
    )


def _sweep(queues: list[MessageQueue]) -> Iterator[tuple[MessageQueue, QueueEntry]]:
    for queue in queues:
        if queue.deleted:
            continue
        for entry in queue.page_candidates():
            if _can_page(queue, entry):
                yield queue, entry
