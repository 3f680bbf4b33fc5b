"""Publisher confirms of one session: sequence numbers in, outcomes out, in order.

As RabbitMQ's ``rabbit_confirms``, this is state in, state out: the vhost numbers a publish
(``begin``), settles it when its fate is known (``settle``: routed and in memory, written to
disk, refused), and the front end takes what may be told (``take``). Outcomes go out in
sequence order, so a publisher can count on "every seq up to N" once N is confirmed: runs of
acks coalesce into one ``multiple`` confirm, and a nack ends a run.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..model import Confirmed

# One publish not yet told: [seq, ok (None while open), error code, error text]. A list, not
# a class: one is made per publish, and a list is several times cheaper to make.
_Pending = list[Any]


class Confirms:
    def __init__(self) -> None:
        self._next = 1
        self._pending: deque[_Pending] = deque()

    @property
    def next_seq(self) -> int:
        """The number the next publish gets."""
        return self._next

    def __len__(self) -> int:
        """Publishes not yet told (settled or not)."""
        return len(self._pending)

    def begin(self) -> int:
        """Number the next publish."""
        seq = self._next
        self._next += 1
        self._pending.append([seq, None, None, None])
        return seq

    def settle(self, seq: int, ok: bool, code: str | None = None, text: str | None = None) -> bool:
        """Record the outcome of ``seq``. Returns whether the oldest is settled, that is,
        whether ``take`` now has something to tell."""
        pending = self._pending
        item = pending[-1] if pending and pending[-1][0] == seq else None
        if item is None:  # not the newest: rarer (a confirm after a commit), so searched
            item = next(i for i in pending if i[0] == seq)
        item[1], item[2], item[3] = ok, code, text
        return pending[0][1] is not None

    def take(self) -> list[Confirmed]:
        """Outcomes settled in order from the oldest, as confirms to send."""
        pending = self._pending
        out: list[Confirmed] = []
        last_ok = None
        while pending and pending[0][1] is not None:
            seq, ok, code, text = pending.popleft()
            if ok:
                last_ok = seq
                continue
            if last_ok is not None:
                out.append(Confirmed(seq=last_ok, multiple=True))
                last_ok = None
            out.append(
                Confirmed(seq=seq, multiple=False, ok=False, error_code=code, error_text=text)
            )
        if last_ok is not None:
            out.append(Confirmed(seq=last_ok, multiple=True))
        return out
