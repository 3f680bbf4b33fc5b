"""The journal: the records of changes to durable state (records.py) that one round of
calls made, for a store to keep.

The core only describes what must be kept; ``server/store.py`` decides how. A ``Journal``
collects the records of one scheduling round together with the publish confirms that wait on
them, so the shell can commit them as one batch and release the confirms after it. Batches are
numbered: a front end that holds other answers until "what is pending now" is durable (a
durable declare) waits for the number of the batch being filled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ..records import PutMessage, Record

if TYPE_CHECKING:
    from .dedup import SeenIds
    from .queue import MessageQueue, QueueEntry
    from .session import Session


@attrs.define
class Batch:
    """One round's records and what to release once they are durable."""

    number: int = 1
    records: list[Record] = attrs.Factory(list)
    confirms: list[tuple[Session, int]] = attrs.Factory(list)  # (session, publish seq)
    stored: list[tuple[MessageQueue, QueueEntry]] = attrs.Factory(list)  # written by it
    remembered: list[tuple[SeenIds, str]] = attrs.Factory(list)  # message ids of its publishes


class Journal:
    """The batch being filled; the shell commits it when it is not empty."""

    def __init__(self) -> None:
        self.batch = Batch()

    def __len__(self) -> int:
        return len(self.batch.records)

    @property
    def number(self) -> int:
        """The batch being filled: what is journaled now is durable once it is committed."""
        return self.batch.number

    def add(self, record: Record) -> None:
        self.batch.records.append(record)

    def take(self) -> Batch:
        batch, self.batch = self.batch, Batch(self.batch.number + 1)
        return batch

    def retry(self, batch: Batch) -> bool:
        """A batch the store could not write goes in front of the one being filled. Its
        messages are left out: the caller nacked them (they stay queued, in memory only).

        Returns whether what waited on ``batch`` may be released now: true if only messages
        were in it, as nothing of the waiters' own is left to write. Otherwise they wait for
        the batch being filled, which now holds their records.
        """
        kept = [r for r in batch.records if type(r) is not PutMessage]
        if not kept:
            return True
        self.batch.records[:0] = kept
        return False
