"""Publisher deduplication: message ids seen within a window (``x-dedup-window``, ms).

A queue or exchange with a window remembers each ``message_id`` it accepted for that long; a
message with an id it remembers is confirmed to its publisher but not enqueued again. Only
accepted ids are remembered: a publish that was nacked (a full queue, a failed write) was not
taken, and its retry must be. With
confirms this lets a publisher retry after a lost connection without creating duplicates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from ..errors import PreconditionFailed
from ..model import Message, Table
from ..records import ForgetSeen, PutSeen
from .journal import Journal

if TYPE_CHECKING:
    from .session import Session


def window_of(kind: str, name: str, arguments: Table) -> int | None:
    """The ``x-dedup-window`` argument in ms, validated (PRECONDITION_FAILED if bad)."""
    value = arguments.get("x-dedup-window")
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise PreconditionFailed(
            f"invalid argument 'x-dedup-window' for {kind} {name!r}: {value!r}; "
            "expected a positive integer (milliseconds)"
        )
    return value


class SeenIds:
    """Ids accepted within the window, oldest first (so forgetting is cheap)."""

    def __init__(self, window_ms: int) -> None:
        self.window = window_ms / 1000
        self._seen: OrderedDict[str, float] = OrderedDict()  # id → forget after

    def __len__(self) -> int:
        return len(self._seen)

    def forget_before(self, now: float) -> int:
        seen = self._seen
        forgotten = 0
        while seen:
            if next(iter(seen.values())) > now:
                break
            seen.popitem(last=False)
            forgotten += 1
        return forgotten

    def seen(self, message_id: str, now: float) -> bool:
        self.forget_before(now)
        return message_id in self._seen

    def forget(self, message_id: str) -> None:
        """A publish with this id was refused after all: its retry must be taken."""
        self._seen.pop(message_id, None)

    def remember(self, message_id: str, until: float) -> None:
        self._seen[message_id] = until
        self._seen.move_to_end(message_id)


class Deduplicator:
    """Checks and remembers ids for the queues and exchanges that deduplicate, and journals
    the durable ones' ids so a restart remembers them too."""

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal
        self._last_forget = 0.0

    @staticmethod
    def duplicate(seen: SeenIds | None, message: Message, now: float) -> bool:
        """Whether ``message`` repeats an id ``seen`` remembers."""
        message_id = message.properties.message_id
        return seen is not None and message_id is not None and seen.seen(message_id, now)

    def remember(
        self,
        seen: SeenIds,
        holder: tuple[str, str, bool],
        message: Message,
        now: float,
        *,
        awaits_commit: bool,
    ) -> None:
        """``message`` was taken by ``holder`` (kind, name, durable): remember its id for the
        window. If its confirm waits for the store (``awaits_commit``) and the write fails,
        ``Vhost.batch_failed`` forgets it again."""
        message_id = message.properties.message_id
        if message_id is None:
            return
        until = now + seen.window
        seen.remember(message_id, until)
        kind, name, durable = holder
        journal = self.journal
        if journal is None:
            return
        if durable:
            journal.add(PutSeen(kind, name, message_id, until))
            if now - self._last_forget >= 1.0:  # let the store forget old ids, now and then
                self._last_forget = now
                journal.add(ForgetSeen(now))
        if awaits_commit:
            journal.batch.remembered.append((seen, message_id))

    def settle_duplicate(self, session: Session, seq: int) -> None:
        """Confirm a duplicate — once whatever is pending (maybe the original) is on disk."""
        if self.journal is not None and len(self.journal):
            self.journal.batch.confirms.append((session, seq))
        else:
            session.settle_publish(seq, ok=True)
