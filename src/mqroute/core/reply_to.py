"""Direct reply-to (RPC without a reply queue), as RabbitMQ's ``amq.rabbitmq.reply-to``.

A requester consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (auto-ack) and publishes a
request with ``reply_to`` set to that name; the broker rewrites it into an address naming the
requester's session (``amq.rabbitmq.reply-to.<token>``). A reply published to that address
through the default exchange goes straight to the requester: no queue, no storage. A
requester that is gone makes a mandatory reply come back as returned.

The token is 128 random bits, new for each reply consumer, as RabbitMQ's addresses carry: an
address cannot be guessed, so nobody but the requester's responders can answer it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import attrs

from ..errors import PreconditionFailed
from ..model import REPLY_TO, Message, Returned
from .session import Session


def new_token() -> str:
    """128 random bits, URL-safe: 22 characters."""
    return secrets.token_urlsafe(16)


class ReplyTo:
    def __init__(self, tokens: Callable[[], str] = new_token) -> None:
        self._tokens = tokens
        self._sessions: dict[str, Session] = {}  # sessions consuming REPLY_TO, by token

    def consume(self, session: Session, consumer_tag: str, auto_ack: bool) -> str:
        if not auto_ack:
            raise PreconditionFailed(f"{REPLY_TO} must be consumed with auto_ack")
        if session.reply_consumer is not None:
            raise PreconditionFailed(f"this session already consumes {REPLY_TO}")
        tag = consumer_tag or session.new_consumer_tag()
        session.reply_consumer = tag
        session.reply_token = self._tokens()
        self._sessions[session.reply_token] = session
        return tag

    def cancel(self, session: Session) -> None:
        session.reply_consumer = None
        if session.reply_token is not None:
            self._sessions.pop(session.reply_token, None)
            session.reply_token = None

    def addressed(self, session: Session, message: Message) -> Message:
        """``message`` with ``reply_to`` naming ``session``'s reply consumer."""
        if session.reply_consumer is None:
            raise PreconditionFailed(
                f"reply_to {REPLY_TO} needs a consumer on {REPLY_TO} in the same connection"
            )
        address = f"{REPLY_TO}.{session.reply_token}"
        return attrs.evolve(message, properties=attrs.evolve(message.properties, reply_to=address))

    def reply(self, session: Session, seq: int, message: Message, mandatory: bool) -> bool:
        """Hand a reply to the requester its routing key names; returns whether it got it."""
        target = self._sessions.get(message.routing_key[len(REPLY_PREFIX) :])
        gone = target is None or target.closed or target.reply_consumer is None
        # A requester that does not read its replies gets no more than its outbox holds:
        # they pass through no queue, so nothing else would bound them.
        delivered = target is not None and not gone and not target.outbox_full()
        if delivered:
            assert target is not None and target.reply_consumer is not None
            target.deliver_direct(target.reply_consumer, message)
        elif mandatory:
            why = "the requester is gone" if gone else "the requester is not reading its replies"
            session.emit(
                Returned(publish_seq=seq, code="NO_ROUTE", reply_text=why, message=message)
            )
        session.settle_publish(seq, ok=True)
        return delivered


#: Every direct reply-to address starts so (the pseudo-queue's name and a dot).
REPLY_PREFIX = REPLY_TO + "."
