"""What a client connection keeps track of, sans I/O: the requests waiting for an answer,
the publishes waiting for a confirm, and the deliveries not yet settled.

``Connection`` (connection.py) is the anyio shell around it: it sends what this says to send
and wakes who this says to wake. Every rule lives here, where tests drive it without a
socket: confirms settle in order and ``multiple`` covers everything below, a Return is the
error of its publish's confirm, a delivery is settled once, ``multiple`` settles every
earlier one, and a delivery past its ack deadline can no longer be settled.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Protocol

from ..errors import BrokerError, MessageNacked, MessageReturned, MQRouteError, UsageError
from ..protocol import Confirm, Error, Frame, GetOk, Ok, Return, read_reply


class Waiter(Protocol):
    """A publish's confirmation as the state sees it (``message.Confirmation``)."""

    error: MQRouteError | None

    def _settle(self, error: MQRouteError | None = None) -> None: ...


class Settleable(Protocol):
    """A delivery as the state sees it (``message.Message``)."""

    delivery_tag: int
    auto_ack: bool
    settled: bool
    timed_out: bool


class ClientState:
    """Request ids, publish sequence numbers and unsettled deliveries of one connection."""

    def __init__(self) -> None:
        self._rids = itertools.count(1)
        self._requests: dict[int, type[Frame]] = {}  # rid -> the request's type
        self.next_seq = 1
        self._confirms: OrderedDict[int, Waiter] = OrderedDict()
        self._unsettled: OrderedDict[int, Settleable] = OrderedDict()

    # --- requests ------------------------------------------------------------------------

    def request(self, kind: type[Frame]) -> int:
        """A fresh request id for a request of type ``kind``."""
        rid = next(self._rids)
        self._requests[rid] = kind
        return rid

    def forget_request(self, rid: int) -> None:
        """The caller stopped waiting (cancelled, or the connection ended)."""
        self._requests.pop(rid, None)

    def answer(self, event: Ok | Error | GetOk) -> tuple[int, Any] | None:
        """The rid an answer belongs to and what it means: the typed reply, a GetOk, or the
        BrokerError to raise. None for an answer to no request we are waiting on."""
        kind = self._requests.pop(event.rid, None)
        if kind is None:
            return None
        if type(event) is Error:
            return event.rid, BrokerError.from_code(event.code, event.text)
        if type(event) is Ok:
            return event.rid, read_reply(kind, event)
        return event.rid, event

    @property
    def waiting_requests(self) -> int:
        return len(self._requests)

    # --- publishes -------------------------------------------------------------------------

    def published(self, waiter: Waiter) -> int:
        """Number the next publish (1, 2, … as the broker counts them); ``waiter`` hears its
        confirm."""
        seq = self.next_seq
        self.next_seq += 1
        self._confirms[seq] = waiter
        return seq

    def returned(self, event: Return) -> None:
        """A mandatory publish matched no queue: its confirm (which follows) carries this."""
        waiter = self._confirms.get(event.seq)
        if waiter is not None:
            waiter.error = MessageReturned(
                event.code, event.reply_text, event.exchange, event.routing_key
            )

    def confirmed(self, event: Confirm) -> None:
        """Settle the publish ``event.seq`` names, and with ``multiple`` every earlier one."""
        confirms = self._confirms
        error: MQRouteError | None
        if event.ok:
            error = None
        elif event.error_code is not None:
            error = BrokerError.from_code(event.error_code, event.error_text or "")
        else:
            error = MessageNacked(f"the broker nacked the message: {event.error_text}")
        if not event.multiple:
            waiter = confirms.pop(event.seq, None)
            if waiter is not None:
                waiter._settle(error)
            return
        while confirms:
            seq = next(iter(confirms))
            if seq > event.seq:
                break
            confirms.popitem(last=False)[1]._settle(error)

    @property
    def unconfirmed(self) -> int:
        return len(self._confirms)

    # --- deliveries ------------------------------------------------------------------------

    def delivered(self, delivery: Settleable) -> None:
        if not delivery.auto_ack:
            self._unsettled[delivery.delivery_tag] = delivery

    def settle(self, delivery: Settleable, multiple: bool) -> None:
        """Check and record a settle before it is sent; settling twice is a UsageError."""
        if delivery.auto_ack:
            raise UsageError("message was delivered with auto_ack; there is nothing to settle")
        if delivery.settled:
            raise UsageError(settled_reason(delivery))
        if multiple:
            unsettled = self._unsettled
            while unsettled:
                tag, earlier = next(iter(unsettled.items()))
                if tag > delivery.delivery_tag:
                    break
                unsettled.popitem(last=False)
                earlier.settled = True
        self._unsettled.pop(delivery.delivery_tag, None)
        delivery.settled = True

    def timed_out(self, delivery_tag: int) -> None:
        """The broker requeued this delivery (x-consumer-timeout): its tag is void."""
        late = self._unsettled.pop(delivery_tag, None)
        if late is not None:
            late.settled = late.timed_out = True

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    # --- the end ---------------------------------------------------------------------------

    def fail(self, error: MQRouteError) -> None:
        """The connection ended: every publish waiting for a confirm gets ``error``."""
        for waiter in self._confirms.values():
            waiter._settle(error)
        self._confirms.clear()
        self._requests.clear()


def settled_reason(delivery: Settleable) -> str:
    if delivery.timed_out:
        return (
            f"delivery {delivery.delivery_tag} passed its ack deadline (x-consumer-timeout) "
            "and went back to the queue"
        )
    return f"message with delivery tag {delivery.delivery_tag} is already settled"
