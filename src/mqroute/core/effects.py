"""What the core's calls leave for the shell to carry out: the one value of the contract.

The core never calls into a front end, never reads a clock and never reads a disk. Each call
on the vhost facade takes ``now`` and writes its consequences here; the shell drains them
after each round of calls (``Shell.drain`` in the server):

- ``output``: sessions whose outbox went from empty to not empty (wake their writers);
- ``commit_due``: the journal (``journal``) holds records of this round: commit them, then
  release the confirms and answers waiting on them (``Vhost.batch_committed``);
- ``deadline``: an earlier deadline than any before it: the timer must wake by then;
- ``page_ins``: paged-out bodies the core needs: read them off the event loop and hand them
  back (``Vhost.paged_in``);
- which publishers to pause or resume: ``FlowControl.take_changes`` (see flow.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .journal import Journal

if TYPE_CHECKING:
    from .queue import MessageQueue, QueueEntry


@attrs.define(eq=False, slots=True)
class PageIn:
    """Bodies of ``entries`` of ``queue`` to read back from disk.

    Without ``dead_letter`` they are the head of the queue: dispatch waits for them. With it
    they died (``dead_letter`` is RabbitMQ's reason) while paged out and go to the queue's
    dead-letter exchange once read; until then the store keeps them in ``queue``, so a crash
    in between loses nothing.
    """

    queue: MessageQueue
    entries: list[QueueEntry]
    dead_letter: str | None = None


@attrs.define(eq=False, slots=True)
class Effects:
    output: set[int] = attrs.Factory(set)
    commit_due: bool = False
    deadline: float | None = None
    page_ins: list[PageIn] = attrs.Factory(list)
    journal: Journal | None = None  # the records of this round; None: nothing is durable

    def due_at(self, when: float) -> None:
        """Something falls due at ``when``."""
        if self.deadline is None or when < self.deadline:
            self.deadline = when

    def take_page_ins(self) -> list[PageIn]:
        wanted, self.page_ins = self.page_ins, []
        return wanted


class NeedBodies(Exception):
    """A call needs paged-out bodies first. It changed nothing; ``Effects.page_ins`` holds
    the request. The shell waits for that page-in (``Vhost.paged_in``) and calls again."""

    def __init__(self, queue: MessageQueue) -> None:
        super().__init__(f"queue {queue.name!r} is reading messages back from disk")
        self.queue = queue
