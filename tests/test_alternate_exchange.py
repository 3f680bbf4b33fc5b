"""The alternate exchange: where a message no binding matched goes."""

from __future__ import annotations

from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.model import (
    Confirmed,
    ExchangeSpec,
)

from .core_helpers import declare, msg, ready

# --- alternate exchange ------------------------------------------------------------------------


def test_alternate_exchange_takes_unroutable_messages(b: Vhost, s: Session) -> None:
    b.declare_exchange(
        ExchangeSpec(name="orders", type="direct", arguments={"alternate-exchange": "dlx"})
    )
    declare(b, "known")
    b.bind_queue("o", "known", "orders", "known")
    b.publish(s, msg("known", b"routed", exchange="orders"), mandatory=True)
    b.publish(s, msg("unknown", b"unroutable", exchange="orders"), mandatory=True)
    assert [m.body for m in ready(b, "known")] == [b"routed"]
    assert [m.body for m in ready(b, "dead")] == [b"unroutable"]
    assert s.take_events() == [Confirmed(seq=2, multiple=True)]  # not returned: it was routed
    steps = b.explain_route(msg("unknown", exchange="orders")).steps
    assert steps[0].binding.routing_key == "(alternate-exchange)"


def test_alternate_exchange_cycles_end(b: Vhost, s: Session) -> None:
    b.declare_exchange(ExchangeSpec(name="a", type="direct", arguments={"alternate-exchange": "b"}))
    b.declare_exchange(ExchangeSpec(name="b", type="direct", arguments={"alternate-exchange": "a"}))
    b.publish(s, msg("k", exchange="a"), mandatory=True)
    assert [type(e).__name__ for e in s.take_events()] == ["Returned", "Confirmed"]
