"""The AMQP 0-9-1 front end, sans I/O: methods become calls on the vhost facade, and the
sessions' events become methods again. Each channel is a core session (delivery tags,
prefetch and confirms per channel, as RabbitMQ has them); the connection is the owner of
exclusive queues. ``amqp_connection.py`` is its trio shell, as ``connection.py`` is
``native.py``'s; docs/amqp.md lists what is supported and how it differs.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable
from typing import Any

import attrs
from pamqp import commands as amqp
from pamqp import heartbeat as amqp_heartbeat
from pamqp.body import ContentBody

from .. import __version__
from ..core.access import Access
from ..core.session import Session
from ..core.vhost import Vhost
from ..errors import (
    REPLY_CODES,
    BrokerError,
    NotFound,
    PreconditionFailed,
    RemoteProtocolError,
)
from ..model import (
    CancelledByBroker,
    Confirmed,
    Delivery,
    DeliveryTimedOut,
    ExchangeSpec,
    Message,
    Properties,
    QueueSpec,
    Returned,
)
from ..protocol.amqp import (
    DEFAULT_FRAME_MAX,
    FRAME_MIN_SIZE,
    Content,
    Header,
    content_bytes,
    deliver_bytes,
    method_bytes,
    short_text,
    to_table,
    unchecked,
)
from ..protocol.amqp_fields import decode_table

log = logging.getLogger("mqroute.amqp")

CHANNEL_MAX = 2047  # RabbitMQ's default
#: The capabilities clients look for before they use a feature (RabbitMQ's list).
CAPABILITIES: dict[str, Any] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}
# Channel exceptions by the broker's error codes and their AMQP reply codes; a code not here
# (an internal error) closes the connection. A value the broker cannot take is 406, as a
# newer RabbitMQ answers an unknown exchange type.
_CHANNEL_CODES = {
    "ACCESS_REFUSED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_LOCKED": 405,
    "PRECONDITION_FAILED": 406,
    "INVALID_ARGUMENT": 406,
    "RESOURCE_ERROR": 406,
}


@attrs.frozen
class Authenticate:
    """start-ok came: the shell checks these credentials, then calls ``authenticated``."""

    user: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class OpenVhost:
    """connection.open came: the shell finds the vhost, then calls ``opened``."""

    name: str


@attrs.frozen
class Closed:
    """The connection is over (close-ok sent or received): the shell flushes and ends."""


#: What a transactional channel holds until tx.commit (publishes are held as content).
_TX_HELD = (amqp.Basic.Ack, amqp.Basic.Nack, amqp.Basic.Reject)
TX_ITEM_COST = 256  # bytes a held publish or settlement counts for beyond its body


class ConnState(enum.StrEnum):
    """An AMQP connection's states, from the server's side."""

    START = "start"  # connection.start sent: start-ok (the login) comes next
    TUNE = "tune"  # tune sent: tune-ok next
    OPEN_WAIT = "open-wait"  # connection.open next (the vhost)
    OPEN = "open"  # channels may open
    CLOSING = "closing"  # a close sent or received: only close-ok counts now


class ChannelState(enum.StrEnum):
    """A channel's states. A publish's content travels as a header and body frames, which
    must follow the basic.publish on its channel, nothing between."""

    OPEN = "open"  # methods, or a publish read whole
    HEADER = "header"  # basic.publish came: its content header next
    BODY = "body"  # the header came: body frames until its size
    CLOSING = "closing"  # we sent channel.close: only close-ok counts now


# The states as module names: the frame path compares them per frame, and looking a member
# up on its enum class costs 140 ns in Python 3.11.
C_START, C_TUNE, C_OPEN_WAIT, C_OPEN, C_CLOSING = ConnState
CH_OPEN, CH_HEADER, CH_BODY, CH_CLOSING = ChannelState


class ConnectionError_(Exception):
    """An AMQP connection exception: Connection.Close with this code, then the end."""

    def __init__(self, code: int, text: str, method: Any = None) -> None:
        super().__init__(text)
        self.code, self.text, self.method = code, text, method


@attrs.define(eq=False)
class Channel:
    number: int
    session: Session
    confirming: bool = False
    confirm_offset: int = 0  # publishes numbered before confirm.select
    prefetch: int = 0  # basic.qos: for consumers started after it
    state: ChannelState = CH_OPEN
    publish: amqp.Basic.Publish | None = None  # content being assembled
    body_size: int = 0
    properties: Properties | None = None
    parts: list[bytes] = attrs.Factory(list)
    received: int = 0
    tx: list[tuple[Any, Any]] | None = None  # tx.select: (method or publish, message) to commit
    tx_bytes: int = 0  # what ``tx`` holds: bodies, and TX_ITEM_COST an item

    @property
    def closing(self) -> bool:
        return self.state is CH_CLOSING


class AmqpFrontEnd:
    """One AMQP connection's translation between frames and the facade."""

    def __init__(
        self,
        conn_id: str,
        *,
        max_message_size: int,
        heartbeat: int,
        max_uncommitted: int = 64 * 1024 * 1024,
    ) -> None:
        self.id = conn_id
        self.max_message_size = max_message_size
        self.max_uncommitted = max_uncommitted  # bytes one channel's transaction may hold
        self.heartbeat = heartbeat  # seconds, the server's wish; tune-ok settles it
        self.frame_max = FRAME_MIN_SIZE
        self.out: list[bytes] = []
        self.channels: dict[int, Channel] = {}
        self.vhost: Vhost | None = None
        self.access: Access | None = None
        self.user = ""
        self.client_properties: dict[str, Any] = {}
        self.state = C_START
        self.sessions_opened: list[Session] = []
        self.sessions_closed: list[Session] = []

    # --- connection ------------------------------------------------------------------------

    def start(self) -> None:
        self._send(
            0,
            amqp.Connection.Start(
                server_properties={
                    "product": "mqroute",
                    "version": __version__,
                    "platform": "Python",
                    "capabilities": CAPABILITIES,
                    "information": "https://github.com/mqroute (AMQP 0-9-1 listener)",
                },
                mechanisms="PLAIN AMQPLAIN",
                locales="en_US",
            ),
        )

    def authenticated(self, user: str) -> None:
        self.user = user
        self.state = C_TUNE
        self._send(
            0,
            amqp.Connection.Tune(
                channel_max=CHANNEL_MAX, frame_max=DEFAULT_FRAME_MAX, heartbeat=self.heartbeat
            ),
        )

    def refused(self, text: str) -> None:
        """A login that failed: authentication_failure_close, as RabbitMQ does it."""
        self.close_connection(403, f"ACCESS_REFUSED - {text}")

    def opened(self, vhost: Vhost, access: Access) -> None:
        self.vhost, self.access = vhost, access
        self.state = C_OPEN
        self._send(0, amqp.Connection.OpenOk())

    def close_connection(self, code: int, text: str, method: Any = None) -> None:
        if self.state is C_CLOSING:
            return
        class_id, method_id = _ids(method)
        self._send(0, amqp.Connection.Close(code, short_text(text), class_id, method_id))
        self.state = C_CLOSING

    # --- frames in --------------------------------------------------------------------------

    def handle(self, channel: int, frame: Any, now: float) -> Any:
        """Act on one frame. Returns an action for the shell (Authenticate, OpenVhost,
        Closed) or None; raises NeedBodies (nothing changed) for a get whose body is on disk."""
        if isinstance(frame, amqp_heartbeat.Heartbeat):
            return None
        try:
            if channel == 0:
                return self._connection_frame(frame)
            if self.state is C_CLOSING:
                return None  # only close / close-ok count now
            if self.state is not C_OPEN:
                raise ConnectionError_(504, "CHANNEL_ERROR - a channel before connection.open")
            return self._channel_frame(channel, frame, now)
        except ConnectionError_ as exc:
            self.close_connection(exc.code, exc.text, exc.method)
            return None

    def _connection_frame(self, frame: Any) -> Any:
        """A frame on channel 0, by the state table (``_CONNECTION_METHODS``). A close is
        taken in any state; closing, only close-ok counts."""
        kind = type(frame)
        if kind is amqp.Connection.Close:
            self._send(0, amqp.Connection.CloseOk())
            self.state = C_CLOSING
            return Closed()
        if self.state is C_CLOSING:
            return Closed() if kind is amqp.Connection.CloseOk else None
        handler = _CONNECTION_METHODS[self.state].get(kind)
        if handler is not None:
            return handler(self, frame)
        if not hasattr(frame, "index"):  # a content header or body on channel 0
            raise ConnectionError_(505, f"UNEXPECTED_FRAME - {type(frame).__name__} on channel 0")
        raise ConnectionError_(
            503, f"COMMAND_INVALID - {frame.name} is not expected in state {self.state}", frame
        )

    def _start_ok(self, frame: Any) -> Authenticate:
        properties = frame.client_properties
        self.client_properties = dict(properties) if isinstance(properties, dict) else {}
        user, password = _credentials(frame)
        return Authenticate(user, password)

    def _tune_ok(self, frame: Any) -> None:
        if frame.frame_max and frame.frame_max < FRAME_MIN_SIZE:
            raise ConnectionError_(530, "NOT_ALLOWED - frame_max below 4096", frame)
        self.frame_max = min(frame.frame_max or DEFAULT_FRAME_MAX, DEFAULT_FRAME_MAX)
        self.heartbeat = frame.heartbeat
        self.state = C_OPEN_WAIT

    def _open(self, frame: Any) -> OpenVhost:
        return OpenVhost(frame.virtual_host or "/")

    def _update_secret(self, frame: Any) -> None:
        self._send(0, amqp.Connection.UpdateSecretOk())  # passwords do not expire here

    def capability(self, name: str) -> bool:
        """Whether the client said it takes ``name`` (its capabilities table)."""
        capabilities = self.client_properties.get("capabilities")
        return isinstance(capabilities, dict) and bool(capabilities.get(name))

    def _channel_frame(self, number: int, frame: Any, now: float) -> Any:
        ch = self.channels.get(number)
        kind = type(frame)
        if kind is amqp.Channel.Open:
            if ch is not None:
                raise ConnectionError_(504, f"CHANNEL_ERROR - channel {number} is open", frame)
            if number > CHANNEL_MAX:
                raise ConnectionError_(530, f"NOT_ALLOWED - channel_max is {CHANNEL_MAX}", frame)
            assert self.vhost is not None and self.access is not None
            session = self.vhost.open_session(self.id, self.access)
            self.channels[number] = Channel(number, session)
            self.sessions_opened.append(session)
            self._send(number, amqp.Channel.OpenOk())
            return None
        if ch is None:
            raise ConnectionError_(504, f"CHANNEL_ERROR - no channel {number}", frame)
        state = ch.state
        if state is CH_CLOSING:
            if kind is amqp.Channel.CloseOk:
                del self.channels[number]
            return None
        if kind is Content:
            return self._whole_content(ch, frame, now)
        if state is not CH_OPEN:
            return self._content(ch, frame, now)
        try:
            return self._method(ch, frame, now)
        except BrokerError as exc:
            code = _CHANNEL_CODES.get(exc.code)
            if code is None:
                raise ConnectionError_(
                    REPLY_CODES.get(exc.code, 541), f"{exc.code} - {exc.reason}", frame
                ) from None
            self._close_channel(ch, code, f"{_reply_name(code)} - {exc.reason}", frame)
            return None

    def _close_channel(self, ch: Channel, code: int, text: str, method: Any = None) -> None:
        """A channel exception: its session ends (unacked requeued), the client is told."""
        class_id, method_id = _ids(method)
        self._send(ch.number, amqp.Channel.Close(code, short_text(text), class_id, method_id))
        ch.state = CH_CLOSING
        self._end_session(ch)

    def _end_session(self, ch: Channel) -> None:
        assert self.vhost is not None
        self.vhost.close_session(ch.session)
        self.sessions_closed.append(ch.session)

    # --- content ----------------------------------------------------------------------------

    def _whole_content(self, ch: Channel, content: Content, now: float) -> Any:
        """A publish read with its header and body at once. The usual one is published
        here; anything else goes through the frame-by-frame path, so it is answered alike."""
        publish, header = content.publish, content.header
        if (
            ch.state is CH_OPEN
            and ch.tx is None
            and not publish.immediate
            and header.body_size <= self.max_message_size
        ):
            assert header.properties is not None
            message = Message(
                exchange=publish.exchange,
                routing_key=publish.routing_key,
                body=content.body,
                properties=header.properties,
            )
            self._publish(ch, publish, message, now)
            return None
        parts = [publish, header] + ([ContentBody(content.body)] if content.body else [])
        for part in parts:
            self._channel_frame(ch.number, part, now)
            if self.channels.get(ch.number) is not ch or ch.closing or ch.publish is not publish:
                break
        return None

    def _content(self, ch: Channel, frame: Any, now: float) -> Any:
        """A publish's header or body frame (the channel's state says which may come)."""
        if type(frame) is Header and ch.state is CH_HEADER:
            if frame.body_size > self.max_message_size:
                reason = (
                    f"message size {frame.body_size} is larger than the maximum of "
                    f"{self.max_message_size}"
                )
            elif frame.error is not None:
                reason = frame.error
            else:
                reason = None
            if reason is not None:
                publish = ch.publish
                ch.publish = None
                self._close_channel(ch, 406, f"PRECONDITION_FAILED - {reason}", publish)
                return None
            ch.properties, ch.body_size = frame.properties, frame.body_size
            ch.state = CH_BODY
        elif type(frame) is ContentBody and ch.state is CH_BODY:
            ch.parts.append(frame.value)
            ch.received += len(frame.value)
            if ch.received > ch.body_size:
                raise ConnectionError_(501, "FRAME_ERROR - more body than the header said")
        else:
            raise ConnectionError_(
                505, f"UNEXPECTED_FRAME - {type(frame).__name__} in the middle of a content"
            )
        if ch.received < ch.body_size:
            return None
        publish, properties = ch.publish, ch.properties
        body = ch.parts[0] if len(ch.parts) == 1 else b"".join(ch.parts)
        ch.publish, ch.properties, ch.parts, ch.received, ch.body_size = None, None, [], 0, 0
        ch.state = CH_OPEN
        assert publish is not None and properties is not None and self.vhost is not None
        message = Message(
            exchange=publish.exchange,
            routing_key=publish.routing_key,
            body=body,
            properties=properties,
        )
        if ch.tx is not None:
            ch.tx.append((publish, message))  # published at tx.commit
            self._held(ch, len(body))
            return None
        self._publish(ch, publish, message, now)
        return None

    def _publish(self, ch: Channel, publish: Any, message: Message, now: float) -> bool:
        """Whether it was taken; if not, the channel is closed with the reason."""
        assert self.vhost is not None
        try:
            self.vhost.publish(ch.session, message, mandatory=publish.mandatory, now=now)
        except BrokerError as exc:
            code = _CHANNEL_CODES.get(exc.code, 406)
            self._close_channel(ch, code, f"{_reply_name(code)} - {exc.reason}", publish)
            return False
        return True

    # --- methods ----------------------------------------------------------------------------

    def _method(self, ch: Channel, m: Any, now: float) -> None:
        """One method on an open channel, by the handler table at the end of this module."""
        kind = type(m)
        if ch.tx is not None and kind in _TX_HELD:
            ch.tx.append((m, None))  # settled at tx.commit
            self._held(ch, 0)
            return
        handler = _METHODS.get(kind)
        if handler is None:
            raise ConnectionError_(
                503, f"COMMAND_INVALID - {getattr(m, 'name', type(m).__name__)} from a client", m
            )
        handler(self, ch, m, now)

    # One handler per method a client sends on a channel: (channel, method, now).

    def _basic_publish(self, ch: Channel, m: Any, now: float) -> None:
        if m.immediate:
            raise ConnectionError_(540, "NOT_IMPLEMENTED - immediate=true", m)
        ch.publish = m
        ch.state = CH_HEADER

    def _basic_ack(self, ch: Channel, m: Any, now: float) -> None:
        self._vhost.ack(ch.session, m.delivery_tag, multiple=m.multiple, now=now)

    def _basic_nack(self, ch: Channel, m: Any, now: float) -> None:
        self._vhost.nack(
            ch.session, m.delivery_tag, multiple=m.multiple, requeue=m.requeue, now=now
        )

    def _basic_reject(self, ch: Channel, m: Any, now: float) -> None:
        self._vhost.reject(ch.session, m.delivery_tag, requeue=m.requeue, now=now)

    def _basic_consume(self, ch: Channel, m: Any, now: float) -> None:
        # consume-ok goes before the first delivery (py-amqp registers the callback when it
        # arrives): events this channel has waiting go first, those consume made after.
        self._take_events(ch, now)
        tag = self._vhost.consume(
            ch.session,
            m.queue,
            consumer_tag=m.consumer_tag,
            prefetch=ch.prefetch,
            auto_ack=m.no_ack,
            exclusive=m.exclusive,
            arguments=to_table(m.arguments or {}),
            now=now,
        )
        if not m.nowait:
            self._send(ch.number, amqp.Basic.ConsumeOk(tag))
        self._take_events(ch, now)

    def _basic_cancel(self, ch: Channel, m: Any, now: float) -> None:
        session = ch.session
        if m.consumer_tag in session.consumers or m.consumer_tag == session.reply_consumer:
            self._vhost.cancel(session, m.consumer_tag, now=now)
        if not m.nowait:  # an unknown tag is no error (RabbitMQ)
            self._send(ch.number, amqp.Basic.CancelOk(m.consumer_tag))

    def _basic_get(self, ch: Channel, m: Any, now: float) -> None:
        d = self._vhost.get(ch.session, m.queue, auto_ack=m.no_ack, now=now)
        if d is None:
            self._send(ch.number, amqp.Basic.GetEmpty())
            return
        get_ok = unchecked(
            amqp.Basic.GetOk,
            d.delivery_tag,
            d.redelivered,
            d.exchange,
            d.routing_key,
            d.message_count or 0,
        )
        props, body = d.message.properties, d.message.body
        self.out.append(content_bytes(ch.number, get_ok, props, body, self.frame_max))

    def _basic_qos(self, ch: Channel, m: Any, now: float) -> None:
        if m.prefetch_size:  # as RabbitMQ
            raise ConnectionError_(
                540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({m.prefetch_size})", m
            )
        if m.prefetch_count > 65535:
            raise ConnectionError_(530, "NOT_ALLOWED - prefetch_count over 65535", m)
        if m.global_:  # RabbitMQ's meaning: shared by the channel's consumers
            self._vhost.share_prefetch(ch.session, m.prefetch_count, now=now)
        else:
            ch.prefetch = m.prefetch_count
        self._send(ch.number, amqp.Basic.QosOk())

    def _basic_recover(self, ch: Channel, m: Any, now: float) -> None:
        if ch.session.unacked:
            self._vhost.nack(ch.session, 0, multiple=True, requeue=True, now=now)
        if type(m) is amqp.Basic.Recover:
            self._send(ch.number, amqp.Basic.RecoverOk())

    def _confirm_select(self, ch: Channel, m: Any, now: float) -> None:
        if ch.tx is not None:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        if not ch.confirming:
            ch.confirming = True
            # AMQP numbers confirms from select on; the session numbered every publish.
            ch.confirm_offset = ch.session.confirms.next_seq - 1
        if not m.nowait:
            self._send(ch.number, amqp.Confirm.SelectOk())

    def _exchange_declare(self, ch: Channel, m: Any, now: float) -> None:
        spec = ExchangeSpec(
            name=m.exchange,
            type=m.exchange_type,
            durable=m.durable,
            auto_delete=m.auto_delete,
            internal=m.internal,
            arguments=to_table(m.arguments or {}),
        )
        self._vhost.declare_exchange(spec, passive=m.passive, access=self._access)
        if not m.nowait:
            self._send(ch.number, amqp.Exchange.DeclareOk())

    def _exchange_delete(self, ch: Channel, m: Any, now: float) -> None:
        try:
            self._vhost.delete_exchange(m.exchange, if_unused=m.if_unused, access=self._access)
        except NotFound:
            pass  # RabbitMQ's delete is idempotent
        if not m.nowait:
            self._send(ch.number, amqp.Exchange.DeleteOk())

    def _exchange_bind(self, ch: Channel, m: Any, now: float) -> None:
        args = (m.destination, m.source, m.routing_key, to_table(m.arguments or {}))
        if type(m) is amqp.Exchange.Bind:
            self._vhost.bind_exchange(*args, access=self._access)
            ok: Any = amqp.Exchange.BindOk()
        else:
            self._vhost.unbind_exchange(*args, access=self._access)
            ok = amqp.Exchange.UnbindOk()
        if not m.nowait:
            self._send(ch.number, ok)

    def _queue_declare(self, ch: Channel, m: Any, now: float) -> None:
        spec = QueueSpec(
            name=m.queue,
            durable=m.durable,
            exclusive=m.exclusive,
            auto_delete=m.auto_delete,
            arguments=to_table(m.arguments or {}),
        )
        declared = self._vhost.declare_queue(
            self.id, spec, passive=m.passive, now=now, access=self._access
        )
        if not m.nowait:
            ok = unchecked(
                amqp.Queue.DeclareOk,
                declared.queue,
                declared.message_count,
                declared.consumer_count,
            )
            self._send(ch.number, ok)

    def _queue_bind(self, ch: Channel, m: Any, now: float) -> None:
        args = (self.id, m.queue, m.exchange, m.routing_key, to_table(m.arguments or {}))
        if type(m) is amqp.Queue.Bind:
            self._vhost.bind_queue(*args, access=self._access)
            if not m.nowait:
                self._send(ch.number, amqp.Queue.BindOk())
        else:
            self._vhost.unbind_queue(*args, access=self._access)
            self._send(ch.number, amqp.Queue.UnbindOk())

    def _queue_purge(self, ch: Channel, m: Any, now: float) -> None:
        count = self._vhost.purge_queue(self.id, m.queue, access=self._access)
        if not m.nowait:
            self._send(ch.number, amqp.Queue.PurgeOk(count))

    def _queue_delete(self, ch: Channel, m: Any, now: float) -> None:
        count = self._vhost.delete_queue(
            self.id,
            m.queue,
            if_unused=m.if_unused,
            if_empty=m.if_empty,
            now=now,
            access=self._access,
        )
        if not m.nowait:
            self._send(ch.number, amqp.Queue.DeleteOk(count))

    def _channel_flow(self, ch: Channel, m: Any, now: float) -> None:
        if not m.active:  # RabbitMQ's answer since 3.3 (docs/amqp.md)
            raise ConnectionError_(540, "NOT_IMPLEMENTED - active=false", m)
        self._send(ch.number, amqp.Channel.FlowOk(True))

    def _channel_close(self, ch: Channel, m: Any, now: float) -> None:
        self._end_session(ch)
        del self.channels[ch.number]
        self._send(ch.number, amqp.Channel.CloseOk())

    def _channel_close_ok(self, ch: Channel, m: Any, now: float) -> None:
        """A close-ok for a close we did not send: nothing to do."""

    def _tx_select(self, ch: Channel, m: Any, now: float) -> None:
        if ch.confirming:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        if ch.tx is None:
            ch.tx = []
        self._send(ch.number, amqp.Tx.SelectOk())

    def _tx_end(self, ch: Channel, m: Any, now: float) -> None:
        """tx.commit publishes and settles what the transaction held, in order; tx.rollback
        forgets it."""
        if ch.tx is None:
            raise PreconditionFailed("channel is not transactional")
        held, ch.tx, ch.tx_bytes = ch.tx, [], 0
        if type(m) is amqp.Tx.Rollback:
            self._send(ch.number, amqp.Tx.RollbackOk())
            return
        for method, message in held:
            if message is not None:
                if not self._publish(ch, method, message, now):
                    return
                continue
            ch.tx, saved = None, ch.tx  # settle now, not held again
            try:
                self._method(ch, method, now)
            finally:
                ch.tx = saved
        self._send(ch.number, amqp.Tx.CommitOk())

    @property
    def _vhost(self) -> Vhost:
        assert self.vhost is not None, "a channel method before connection.open"
        return self.vhost

    @property
    def _access(self) -> Access:
        assert self.access is not None
        return self.access

    def _held(self, ch: Channel, size: int) -> None:
        """A transaction held one more item: past its bound, the channel is closed and what
        it held dropped (as a rollback would), so uncommitted work cannot fill memory."""
        ch.tx_bytes += size + TX_ITEM_COST
        if ch.tx_bytes > self.max_uncommitted:
            ch.tx, ch.tx_bytes = [], 0
            self._close_channel(
                ch,
                406,
                "PRECONDITION_FAILED - a transaction may hold at most "
                f"{self.max_uncommitted} bytes of uncommitted publishes and acks; commit "
                "more often",
            )

    def _send(self, channel: int, method: Any) -> None:
        self.out.append(method_bytes(channel, method))

    # --- events out -------------------------------------------------------------------------

    def output(self, now: float | None = None) -> list[bytes]:
        """What the channels' sessions emitted, as frames; then what ``out`` held."""
        vhost = self.vhost
        chunks: list[bytes] = []
        if vhost is not None:
            for ch in list(self.channels.values()):
                if ch.closing:
                    continue
                for event in vhost.take_events(ch.session, now=now):
                    self._event(ch, event, chunks)
        return chunks

    def _take_events(self, ch: Channel, now: float) -> None:
        """Move what the channel's session emitted into ``out``, where replies keep their
        order with it."""
        assert self.vhost is not None
        for event in self.vhost.take_events(ch.session, now=now):
            self._event(ch, event, self.out)

    def _event(self, ch: Channel, e: Any, chunks: list[bytes]) -> None:
        n = ch.number
        kind = type(e)
        if kind is Delivery:
            chunks.append(
                content_bytes(
                    n,
                    deliver_bytes(
                        n, e.consumer_tag, e.delivery_tag, e.redelivered, e.exchange, e.routing_key
                    ),
                    e.message.properties,
                    e.message.body,
                    self.frame_max,
                )
            )
        elif kind is Confirmed:
            if not ch.confirming:
                return
            tag = e.seq - ch.confirm_offset
            if tag <= 0:
                return
            if e.ok:
                chunks.append(method_bytes(n, amqp.Basic.Ack(tag, e.multiple)))
            else:
                chunks.append(method_bytes(n, amqp.Basic.Nack(tag, e.multiple, False)))
        elif kind is Returned:
            m = e.message
            chunks.append(
                content_bytes(
                    n,
                    unchecked(amqp.Basic.Return, 312, "NO_ROUTE", m.exchange, m.routing_key),
                    m.properties,
                    m.body,
                    self.frame_max,
                )
            )
        elif kind is CancelledByBroker:
            if self.capability("consumer_cancel_notify"):
                chunks.append(method_bytes(n, amqp.Basic.Cancel(e.consumer_tag, nowait=True)))
        elif kind is DeliveryTimedOut:
            # RabbitMQ closes the channel: the delivery went back to its queue. The close goes
            # into ``out``, which the shell sends after these events.
            self._close_channel(
                ch,
                406,
                f"PRECONDITION_FAILED - delivery acknowledgement on channel {n} timed out "
                "(x-consumer-timeout)",
            )


#: What a client may send on channel 0 in each state (besides connection.close, taken in any).
_CONNECTION_METHODS: dict[ConnState, dict[type, Callable[[AmqpFrontEnd, Any], Any]]] = {
    C_START: {amqp.Connection.StartOk: AmqpFrontEnd._start_ok},
    C_TUNE: {amqp.Connection.TuneOk: AmqpFrontEnd._tune_ok},
    C_OPEN_WAIT: {amqp.Connection.Open: AmqpFrontEnd._open},
    C_OPEN: {amqp.Connection.UpdateSecret: AmqpFrontEnd._update_secret},
}

_Handler = Callable[[AmqpFrontEnd, Channel, Any, float], None]
#: The methods a client sends on an open channel, each with its handler. Unbound, so that no
#: front end refers to itself through its own table (native.py's _REQUEST_HANDLERS alike).
_METHODS: dict[type, _Handler] = {
    amqp.Basic.Publish: AmqpFrontEnd._basic_publish,
    amqp.Basic.Ack: AmqpFrontEnd._basic_ack,
    amqp.Basic.Nack: AmqpFrontEnd._basic_nack,
    amqp.Basic.Reject: AmqpFrontEnd._basic_reject,
    amqp.Basic.Consume: AmqpFrontEnd._basic_consume,
    amqp.Basic.Cancel: AmqpFrontEnd._basic_cancel,
    amqp.Basic.Get: AmqpFrontEnd._basic_get,
    amqp.Basic.Qos: AmqpFrontEnd._basic_qos,
    amqp.Basic.Recover: AmqpFrontEnd._basic_recover,
    amqp.Basic.RecoverAsync: AmqpFrontEnd._basic_recover,
    amqp.Confirm.Select: AmqpFrontEnd._confirm_select,
    amqp.Exchange.Declare: AmqpFrontEnd._exchange_declare,
    amqp.Exchange.Delete: AmqpFrontEnd._exchange_delete,
    amqp.Exchange.Bind: AmqpFrontEnd._exchange_bind,
    amqp.Exchange.Unbind: AmqpFrontEnd._exchange_bind,
    amqp.Queue.Declare: AmqpFrontEnd._queue_declare,
    amqp.Queue.Bind: AmqpFrontEnd._queue_bind,
    amqp.Queue.Unbind: AmqpFrontEnd._queue_bind,
    amqp.Queue.Purge: AmqpFrontEnd._queue_purge,
    amqp.Queue.Delete: AmqpFrontEnd._queue_delete,
    amqp.Channel.Flow: AmqpFrontEnd._channel_flow,
    amqp.Channel.Close: AmqpFrontEnd._channel_close,
    amqp.Channel.CloseOk: AmqpFrontEnd._channel_close_ok,
    amqp.Tx.Select: AmqpFrontEnd._tx_select,
    amqp.Tx.Commit: AmqpFrontEnd._tx_end,
    amqp.Tx.Rollback: AmqpFrontEnd._tx_end,
}


def _credentials(start_ok: amqp.Connection.StartOk) -> tuple[str, str]:
    """PLAIN's ``\\0user\\0password``, or AMQPLAIN's LOGIN and PASSWORD; ("", "") for a
    response that is neither (it is refused as a wrong password would be)."""
    response = start_ok.response or ""
    if start_ok.mechanism == "PLAIN":
        if isinstance(response, bytes):  # not UTF-8: no user has such a name
            return "", ""
        parts = response.split("\x00")
        if len(parts) == 3:
            return parts[1], parts[2]
    elif start_ok.mechanism == "AMQPLAIN":
        try:
            raw = response if isinstance(response, bytes) else response.encode()
            table = decode_table(struct.pack(">I", len(raw)) + raw)
        except RemoteProtocolError:
            return "", ""
        login, password = table.get("LOGIN", ""), table.get("PASSWORD", "")
        if isinstance(login, str) and isinstance(password, str):
            return login, password
    return "", ""


def _reply_name(code: int) -> str:
    return {403: "ACCESS_REFUSED", 404: "NOT_FOUND", 405: "RESOURCE_LOCKED"}.get(
        code, "PRECONDITION_FAILED"
    )


def _ids(method: Any) -> tuple[int, int]:
    """The class and method id of the method that failed (0, 0 if none)."""
    index = getattr(method, "index", None)
    if not index:
        return 0, 0
    return index >> 16, index & 0xFFFF
