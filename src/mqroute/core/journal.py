"""Records of changes to durable state, produced by the broker for a store to keep.

The core only describes what must be kept; ``store.py`` decides how. A ``Journal`` collects the
records of one scheduling round together with what waits on them (publish confirms, request
answers), so the front end can commit them as one batch and release the waiters after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..model import Binding, ExchangeSpec, Message, QueueSpec


@attrs.frozen
class PutExchange:
    spec: ExchangeSpec


@attrs.frozen
class DropExchange:
    name: str


@attrs.frozen
class PutQueue:
    spec: QueueSpec


@attrs.frozen
class DropQueue:
    """The queue and every message in it."""

    name: str


@attrs.frozen
class PutBinding:
    binding: Binding


@attrs.frozen
class DropBinding:
    binding: Binding


@attrs.frozen
class PutMessage:
    queue: str
    seq: int
    message: Message
    expires_at: float | None = None
    ready_at: float | None = None  # delayed until then


@attrs.frozen
class DropMessages:
    queue: str
    seqs: tuple[int, ...]


@attrs.frozen
class MarkDelivered:
    """The message was handed out ``delivery_count`` times (kept for redelivery after restart)."""

    queue: str
    seq: int
    delivery_count: int


@attrs.frozen
class HoldMessage:
    """A requeued message waits until ``ready_at`` before redelivery (retry backoff)."""

    queue: str
    seq: int
    ready_at: float


@attrs.frozen
class PutSeen:
    """A message id seen by a deduplicating queue or exchange, remembered until ``expires_at``."""

    kind: str  # "queue" or "exchange"
    name: str
    message_id: str
    expires_at: float


@attrs.frozen
class ForgetSeen:
    """Message ids remembered until before ``now`` may be forgotten."""

    now: float


Record = (
    PutExchange
    | DropExchange
    | PutQueue
    | DropQueue
    | PutBinding
    | DropBinding
    | PutMessage
    | DropMessages
    | MarkDelivered
    | HoldMessage
    | PutSeen
    | ForgetSeen
)


@attrs.define
class Batch:
    """One round's records and what to release once they are durable."""

    records: list[Record] = attrs.Factory(list)
    confirms: list[tuple[Any, int]] = attrs.Factory(list)  # (session, publish seq)
    stored: list[tuple[Any, Any]] = attrs.Factory(list)  # (queue, entry) written by this batch
    remembered: list[tuple[Any, str]] = attrs.Factory(list)  # (SeenIds, id) of its publishes
    after_commit: list[Callable[[], None]] = attrs.Factory(list)


class Journal:
    """The batch being filled. ``wakeup`` tells the front end a batch waits to be committed."""

    def __init__(self) -> None:
        self.batch = Batch()
        self.wakeup: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.batch.records)

    def add(self, record: Record) -> None:
        batch = self.batch
        if not batch.records and self.wakeup is not None:
            self.wakeup()
        batch.records.append(record)

    def take(self) -> Batch:
        batch, self.batch = self.batch, Batch()
        return batch

    def retry(self, batch: Batch) -> list[Callable[[], None]]:
        """A batch the store could not write goes in front of the one being filled. Its
        messages are left out: the caller nacked them (they stay queued, in memory only).

        Returns what waited on it and may be released now: if only messages were in it,
        nothing of the waiters' own is left to write.
        """
        kept = [r for r in batch.records if type(r) is not PutMessage]
        if not kept:
            return batch.after_commit
        current = self.batch
        self.batch = Batch(
            records=kept + current.records,
            confirms=current.confirms,
            stored=current.stored,
            remembered=current.remembered,
            after_commit=batch.after_commit + current.after_commit,
        )
        if not current.records and self.wakeup is not None:
            self.wakeup()
        return []
