"""Short ways to build, declare and look at things in core tests (the broker and session
they run on are the ``b`` and ``s`` fixtures in conftest.py)."""

from __future__ import annotations

from typing import Any

from mqroute.core.session import Session
from mqroute.core.vhost import Vhost
from mqroute.model import Delivery, Message, Properties, QueueSpec


def msg(key: str, body: bytes = b"", exchange: str = "", **props: Any) -> Message:
    return Message(exchange=exchange, routing_key=key, body=body, properties=Properties(**props))


def declare(b: Vhost, name: str, **arguments: Any) -> None:
    b.declare_queue("o", QueueSpec(name=name, arguments=arguments))


def ready(b: Vhost, queue: str) -> list[Message]:
    return [e.message for e in b.queues[queue].ready_entries() if e.message is not None]


def bodies_for(b: Vhost, session: Session) -> list[bytes]:
    """The bodies of the deliveries ``session`` has to send now."""
    return [e.message.body for e in b.take_events(session) if isinstance(e, Delivery)]
