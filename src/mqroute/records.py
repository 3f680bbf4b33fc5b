"""Records of changes to durable state: what the core asks a store to keep.

Plain frozen values, apart from both: the core (core/journal.py) makes them, and the store
(server/store.py) writes and reads them back, each knowing nothing of the other.
"""

from __future__ import annotations

import attrs

from .model import Binding, ExchangeSpec, Message, QueueSpec


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
