"""One native-protocol client connection: its reader, writer and heartbeat tasks, and the
translation between its frames and the vhost facade's calls (frame → call → reply; the
session's events → frames)."""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .. import __version__
from ..core.dead_letter import Redriven
from ..core.effects import NeedBodies
from ..core.flow import Pause
from ..core.session import Session
from ..errors import BrokerError, PreconditionFailed, ProtocolError
from ..model import (
    Confirm as ConfirmEvent,
)
from ..model import (
    ConsumerCancelled,
    Delivery,
    DeliveryTimedOut,
    Event,
    ExchangeSpec,
    Message,
    Properties,
    QueueSpec,
    Returned,
)
from ..protocol import (
    NEED_DATA,
    SUPPORTED_VERSIONS,
    Ack,
    Bind,
    Blocked,
    Cancel,
    Cancelled,
    Close,
    Confirm,
    Connection,
    Consume,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeleteQueue,
    Error,
    ExplainRoute,
    Extend,
    Frame,
    Get,
    GetOk,
    Heartbeat,
    Hello,
    Inspect,
    Nack,
    Ok,
    PeerClosed,
    Publish,
    PublishTooLarge,
    PurgeQueue,
    Redrive,
    Release,
    Return,
    Role,
    TimedOut,
    Unbind,
    Unblocked,
    Welcome,
    encode_deliver_tail,
    negotiate_frame_size,
)
from .admin import inspect

if TYPE_CHECKING:
    from .shell import Shell

log = logging.getLogger("mqroute.server")

RECEIVE_SIZE = 256 * 1024
# Frames one connection's reader handles before it yields to the others, or seconds it spends
# (looked at every 8 frames), whichever comes first. Short turns keep a consumer's
# ack-to-delivery round trip short while a paced publisher's socket is full: 128 frames / 5 ms
# gave 27.5k msg/s at a 256 KiB queue flow limit, 16 / 0.5 ms 31.7k (docs/performance.md).
FRAMES_PER_TURN = 16
TURN_SECONDS = 0.0005
PENDING_OUTPUT_LIMIT = 1024  # the reader stops reading while more frames than this are unsent
BLOCKED_GRACE_BYTES = 256 * 1024  # publishes taken after a Blocked before reading stops


class ServerConnection:
    """One client connection: handshake, then reader, writer and heartbeat tasks."""

    def __init__(self, shell: Shell, stream: trio.SocketStream, conn_id: str) -> None:
        self.shell = shell
        self.broker = shell.broker
        self.registry = shell.registry
        self.opened_at = time.time()
        self._clock = shell.clock
        self.stream = stream
        config = self.config = shell.config
        self.id = conn_id
        self.proto = Connection(
            Role.SERVER,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        self.session: Session | None = None
        self.client_name = "?"
        self.peer = _peer_name(stream)
        self._replies: deque[list[Any]] = deque()  # [frame, ready]: sent in order once ready
        self._wakeup = trio.Event()
        self._drained = trio.Event()
        self._close: Close | None = None  # set once the connection is closing
        self._close_sent = False
        self._writing = False  # a write is under way: cancelling it leaves the stream unusable
        self._last_received = trio.current_time()
        self._last_sent = trio.current_time()
        self._heartbeat = 0.0
        self._blocked: str | None = None  # why this connection may not publish now
        self._silent = False  # ... and it was not told: it is simply not read (credit)
        self._unblocked = trio.Event()
        self._unblocked.set()
        self._published_while_blocked = 0  # bytes: publishes already on their way are taken
        self._reading_paused = False  # we stopped reading it (flow control, unsent output)
        self._now = shell.clock()  # the time of the calls the frames being read make
        self._partial_since: float | None = None  # when the frame being received began
        self._partial_received = 0

    async def run(self) -> None:
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                hello = await self._handshake()
            if scope.cancelled_caught:
                self._log_bad(
                    "%s from %s: no handshake within %ss",
                    self.id,
                    self.peer,
                    self.config.handshake_timeout,
                )
                await self._send_close("FRAME_ERROR", "no Hello frame within the handshake timeout")
                return
            if hello is None:
                return
            self.session = self.broker.open_session(self.id)
            self.registry.connections[self.id] = self
            self.shell.by_session[self.session.id] = self
            log.info("%s opened from %s (client %r)", self.id, self.peer, self.client_name)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self._heartbeat:
                    nursery.start_soon(self._heartbeats, nursery.cancel_scope)
                await self._reader()
                self._wake()
                with trio.move_on_after(self.config.close_timeout):
                    await self._drained.wait()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            if _connection_lost(exc):
                self._log_bad("%s: connection lost", self.id)
                return
            self.shell.log_limited(
                "%s: internal error; closing this connection", self.id, exc_info=True
            )
            if self._close is None:
                self._close = Close(code="INTERNAL_ERROR", text="internal error in the broker")
        finally:
            if self.session is not None:
                self._release()
                log.info("%s closed%s", self.id, self._close_reason())
            try:
                if self._close is not None and not self._close_sent and not self._writing:
                    # Closed from outside the writer (missed heartbeats, an internal error):
                    # the client still hears why.
                    await self._send_close(self._close.code, self._close.text)
            finally:
                await trio.aclose_forcefully(self.stream)

    def _release(self) -> None:
        """Requeue what this connection holds and drop its exclusive queues. Idempotent."""
        assert self.session is not None
        self.registry.connections.pop(self.id, None)
        self.shell.by_session.pop(self.session.id, None)
        self._unblocked.set()
        self.broker.close_session(self.session, now=self._clock())
        self.broker.release_owner(self.id)
        self.shell.drain()  # what it held went back: other consumers get it

    def _close_reason(self) -> str:
        if self._close is None or self._close.code is None:
            return ""
        return f": {self._close.code} {self._close.text!r}"

    def _log_bad(self, message: str, *args: object) -> None:
        self.shell.log_limited(message, *args)

    # --- handshake -----------------------------------------------------------------------

    async def _handshake(self) -> Hello | None:
        while True:
            try:
                event = self.proto.next_event()
            except ProtocolError as exc:
                self._log_bad(
                    "%s from %s: protocol error in handshake: %s", self.id, self.peer, str(exc)
                )
                await self._send_close(exc.code, str(exc))
                return None
            if event is NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.proto.receive_data(data)
                continue
            if not isinstance(event, Hello):
                return None  # PeerClosed or Close before the handshake finished
            common = set(event.versions) & set(SUPPORTED_VERSIONS)
            if not common:
                await self._send_close(
                    "FRAME_ERROR",
                    f"no common protocol version: client offers {event.versions}, "
                    f"server speaks {list(SUPPORTED_VERSIONS)}",
                )
                return None
            self.client_name = event.client
            wanted = [ms for ms in (event.heartbeat_ms, self.config.heartbeat_ms) if ms]
            heartbeat_ms = min(wanted) if wanted else 0
            self._heartbeat = heartbeat_ms / 1000
            welcome = Welcome(
                version=max(common),
                server=f"mqroute {__version__}",
                heartbeat_ms=heartbeat_ms,
                max_frame_size=negotiate_frame_size(
                    event.max_frame_size, self.config.max_frame_size
                ),
                connection_id=self.id,
                max_message_size=self.config.max_message_size,
            )
            await self.stream.send_all(self.proto.send(welcome))
            return event

    async def _send_close(self, code: str | None, text: str) -> None:
        self._close = Close(code=code, text=text)
        self._close_sent = True
        with trio.move_on_after(self.config.close_timeout):
            try:
                await self.stream.send_all(self.proto.send(self._close))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                pass

    # --- reader --------------------------------------------------------------------------

    async def _reader(self) -> None:
        proto = self.proto
        handled = 0
        turn_started = trio.current_time()
        while self._close is None:
            handled += 1
            if handled >= FRAMES_PER_TURN or (
                not handled & 7 and trio.current_time() - turn_started > TURN_SECONDS
            ):
                # A flood of publishes from one connection (or a few costly ones) must not hold
                # up the others: their acks give consumers credit, and the writers deliver.
                handled = 0
                self.shell.drain()
                await trio.lowlevel.checkpoint()
                turn_started = trio.current_time()
            try:
                event = proto.next_event()
            except ProtocolError as exc:
                self._log_bad("%s: protocol error: %s", self.id, str(exc))
                self._closing(exc.code, str(exc))
                return
            if event is NEED_DATA:
                assert self.session is not None
                self.shell.drain()
                if len(self._replies) + self.session.outbox_size() > PENDING_OUTPUT_LIMIT:
                    self._drained = trio.Event()  # a client not reading: stop reading it
                    await self._paused(self._drained)
                data = await self._receive()
                if data is None:
                    self._log_bad("%s: a frame arrived too slowly; closing", self.id)
                    self._closing(
                        "FRAME_ERROR",
                        f"a frame arrived too slowly: less than {self.config.min_frame_rate} "
                        f"bytes a second after {self.config.frame_grace}s",
                    )
                    return
                self._last_received = trio.current_time()
                self._now = self._clock()  # the time of the calls these frames make
                proto.receive_data(data)
                continue
            self._partial_since = None  # a whole frame came: any slow one starts again
            kind = type(event)
            if kind is Publish:
                if self._blocked is not None:
                    await self._publish_while_blocked(len(event.body))
                self._publish(event)
                if self.broker.flow.changed:  # this publish may have paused its sender
                    self.shell.drain()
            elif kind is Ack:
                self._settle(self.broker.ack, event.delivery_tag, multiple=event.multiple)
            elif kind is Nack:
                self._settle(
                    self.broker.nack,
                    event.delivery_tag,
                    multiple=event.multiple,
                    requeue=event.requeue,
                )
            elif kind is Release:
                self._settle(self.broker.release, event.delivery_tag, multiple=event.multiple)
            elif kind is Extend:
                self._settle(self.broker.extend, event.delivery_tag, event.milliseconds)
            elif kind is Heartbeat:
                pass
            elif kind is PublishTooLarge:
                assert self.session is not None
                self.broker.refuse_publish(
                    self.session,
                    PreconditionFailed(
                        f"message of {event.size} bytes exceeds the maximum of "
                        f"{self.config.max_message_size} bytes"
                    ),
                )
            elif kind is Close:
                if event.code is not None:
                    log.info("%s: client closed with %r %r", self.id, event.code, event.text)
                self._release()  # before the reply, so the client sees its queues gone
                self._closing(None, "closed by client")
                return
            elif isinstance(event, PeerClosed):
                return
            else:
                await self._request(event)

    def set_blocked(self, pause: Pause | None) -> None:
        """The core decided whether this connection may publish. For an alarm, or a
        connection that also consumes, the client is told (Blocked) and its publishes already
        on their way are taken up to a grace; for credit alone it is simply not read (see
        flow.py)."""
        assert self.session is not None
        told = self._blocked is not None and not self._silent
        if pause is None:
            self._blocked = None
            self._silent = False
            self._unblocked.set()
            self._published_while_blocked = 0
            if told:
                self._replies.append([Unblocked(), True])
                self._wake()
            log.info("%s: publishing resumed", self.id)
            return
        if self._unblocked.is_set():
            self._unblocked = trio.Event()
        self._blocked = pause.reason
        self._silent = pause.credit and not self.session.consumers
        if self._silent:
            if told:  # an alarm ended, credit still holds: the client may send again
                self._replies.append([Unblocked(), True])
                self._wake()
            log.debug("%s: not read while %s", self.id, pause.reason)
        else:
            self._replies.append([Blocked(reason=pause.reason), True])
            self._wake()
            log.info("%s: publishing blocked: %s", self.id, pause.reason)

    async def _publish_while_blocked(self, size: int) -> None:
        """Publishes sent before the client heard of the block are taken (a bounded amount);
        past that, a client that goes on publishing is not read until the block ends. A
        silent pause takes none: the publish waits in the reader until the queue drained."""
        self._published_while_blocked += size + 1024
        if self._silent or self._published_while_blocked > BLOCKED_GRACE_BYTES:
            await self._paused(self._unblocked)

    async def _paused(self, until: trio.Event) -> None:
        """Stop reading this client until ``until``. Its silence meanwhile is ours, not its:
        neither a missed heartbeat nor a slow frame (RabbitMQ pauses its heartbeat monitor
        for a blocked connection too)."""
        self._reading_paused = True
        self.shell.drain()
        try:
            await until.wait()
        finally:
            self._reading_paused = False
            self._last_received = trio.current_time()
            self._partial_since = None

    async def _receive(self) -> bytes | None:
        """The next bytes from the client; None if a frame it began stalls.

        A frame begun must keep arriving at ``min_frame_rate`` on average once
        ``frame_grace`` has passed, so a client cannot hold a connection (and its buffer)
        open by trickling a byte now and then (slowloris). An idle client, between frames,
        is the heartbeat's business.
        """
        if not self.proto.pending_bytes():
            self._partial_since = None
            return await self.stream.receive_some(RECEIVE_SIZE)
        now = trio.current_time()
        if self._partial_since is None:
            self._partial_since, self._partial_received = now, 0
        config = self.config
        deadline = (
            self._partial_since
            + config.frame_grace
            + self._partial_received / config.min_frame_rate
        )
        with trio.move_on_at(deadline):
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self._partial_received += len(data)
            return data
        return None

    def _closing(self, code: str | None, text: str) -> None:
        self._close = Close(code=code, text=text)
        self._wake()

    def _publish(self, event: Publish) -> None:
        assert self.session is not None
        message = Message(
            exchange=event.exchange,
            routing_key=event.routing_key,
            body=event.body,
            properties=event.properties,
        )
        try:
            self.broker.publish(self.session, message, mandatory=event.mandatory, now=self._now)
        except BrokerError:
            pass  # the publish was nacked with the reason; the connection goes on

    def _settle(self, op: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            op(self.session, *args, now=self._now, **kwargs)
        except BrokerError as exc:
            # As RabbitMQ closes the channel: the client's view of its deliveries is wrong.
            log.warning("%s: %s", self.id, exc)
            self._closing(exc.code, exc.reason)

    async def _request(self, event: Any) -> None:
        handler = _REQUEST_HANDLERS[type(event)]
        moved = 0
        try:
            while True:
                try:
                    result = handler(self, event)
                except NeedBodies as need:  # nothing changed: read them back, then again
                    await self.shell.wait_read_back(need.queue)
                    continue
                if type(result) is Redriven:
                    # It moves what is in memory and asks for the rest: wait, then go on.
                    moved += result.moved
                    left = event.limit - moved if event.limit else 0
                    if result.more and (left > 0 or not event.limit):
                        queue = self.broker.queues.get(event.queue)
                        if queue is not None:
                            await self.shell.wait_read_back(queue)
                        event = attrs.evolve(event, limit=left)
                        continue
                    result = {"moved": moved}
                break
        except BrokerError as exc:
            reply: Frame = Error(rid=event.rid, code=exc.code, text=exc.reason)
        else:
            reply = result if isinstance(result, Frame) else Ok(rid=event.rid, result=result or {})
        slot = [reply, True]
        self._replies.append(slot)
        journal = self.broker.journal
        if journal is not None and len(journal):
            # Answer once what is pending (this declaration, or an equal one) is on disk.
            self.shell.hold_until_committed(self, slot)
        else:
            self._wake()

    # --- requests ------------------------------------------------------------------------

    def _declare_exchange(self, ev: DeclareExchange) -> None:
        spec = ExchangeSpec(
            name=ev.name,
            type=ev.type,
            durable=ev.durable,
            auto_delete=ev.auto_delete,
            internal=ev.internal,
            arguments=ev.arguments,
        )
        self.broker.declare_exchange(spec, passive=ev.passive)

    def _delete_exchange(self, ev: DeleteExchange) -> None:
        self.broker.delete_exchange(ev.name, if_unused=ev.if_unused)

    def _declare_queue(self, ev: DeclareQueue) -> dict[str, Any]:
        spec = QueueSpec(
            name=ev.name,
            durable=ev.durable,
            exclusive=ev.exclusive,
            auto_delete=ev.auto_delete,
            arguments=ev.arguments,
        )
        ok = self.broker.declare_queue(self.id, spec, passive=ev.passive, now=self._now)
        return {
            "queue": ok.queue,
            "message_count": ok.message_count,
            "consumer_count": ok.consumer_count,
            "arguments": ok.arguments,
            "delayed_count": ok.delayed_count,
        }

    def _delete_queue(self, ev: DeleteQueue) -> dict[str, Any]:
        count = self.broker.delete_queue(
            self.id, ev.name, if_unused=ev.if_unused, if_empty=ev.if_empty
        )
        return {"message_count": count}

    def _purge_queue(self, ev: PurgeQueue) -> dict[str, Any]:
        return {"message_count": self.broker.purge_queue(self.id, ev.name)}

    def _bind(self, ev: Bind) -> None:
        if ev.to_exchange:
            self.broker.bind_exchange(ev.destination, ev.source, ev.routing_key, ev.arguments)
        else:
            self.broker.bind_queue(self.id, ev.destination, ev.source, ev.routing_key, ev.arguments)

    def _unbind(self, ev: Unbind) -> None:
        if ev.to_exchange:
            self.broker.unbind_exchange(ev.destination, ev.source, ev.routing_key, ev.arguments)
        else:
            self.broker.unbind_queue(
                self.id, ev.destination, ev.source, ev.routing_key, ev.arguments
            )

    def _consume(self, ev: Consume) -> dict[str, Any]:
        assert self.session is not None
        tag = self.broker.consume(
            self.session,
            ev.queue,
            consumer_tag=ev.consumer_tag,
            prefetch=ev.prefetch,
            auto_ack=ev.auto_ack,
            exclusive=ev.exclusive,
            arguments=ev.arguments,
            now=self._now,
        )
        return {"consumer_tag": tag}

    def _explain_route(self, ev: ExplainRoute) -> dict[str, Any]:
        message = Message(
            exchange=ev.exchange,
            routing_key=ev.routing_key,
            body=b"",
            properties=Properties(headers=ev.headers or None),
        )
        result = self.broker.explain_route(message)
        steps = [
            {
                "exchange": step.exchange,
                "type": step.exchange_type,
                "destination": step.binding.destination,
                "destination_kind": step.binding.destination_kind,
                "routing_key": step.binding.routing_key,
                "arguments": step.binding.arguments,
            }
            for step in result.steps
        ]
        return {"queues": result.queues, "steps": steps}

    def _inspect(self, ev: Inspect) -> dict[str, Any]:
        rows, total = inspect(self.broker, self.registry, ev.what, ev.offset, ev.limit)
        return {"result": rows, "total": total}

    def _redrive(self, ev: Redrive) -> Redriven:
        return self.broker.redrive(
            self.id, ev.queue, to_exchange=ev.exchange, limit=ev.limit, now=self._now
        )

    def _cancel(self, ev: Cancel) -> None:
        assert self.session is not None
        self.broker.cancel(self.session, ev.consumer_tag, now=self._now)

    def _get(self, ev: Get) -> Frame | None:
        assert self.session is not None
        d = self.broker.get(self.session, ev.queue, auto_ack=ev.auto_ack, now=self._now)
        if d is None:
            return None
        return GetOk(
            rid=ev.rid,
            delivery_tag=d.delivery_tag,
            redelivered=d.redelivered,
            exchange=d.exchange,
            routing_key=d.routing_key,
            message_count=d.message_count or 0,
            body=d.message.body,
            properties=d.message.properties,
        )

    # --- writer --------------------------------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()

    async def _writer(self) -> None:
        assert self.session is not None
        send = self.proto.send
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            replies = self._replies
            chunks: list[bytes] = []
            # Events first: what the session emitted before a reply was made reaches the
            # client before that reply (no Deliver for a consumer after its Cancel's Ok).
            self._encode_events(chunks)
            while replies and replies[0][1]:
                chunks.append(send(replies.popleft()[0]))
            if self._close is not None:
                chunks.append(send(self._close))
                self._close_sent = True
            if chunks:
                self._writing = True
                await self.stream.send_all(b"".join(chunks))
                self._writing = False
                self._last_sent = trio.current_time()
            if self._close is not None:
                self._drained.set()
                return
            if not self._replies and not self.session.outbox_size():
                self._drained.set()

    def _encode_events(self, chunks: list[bytes]) -> None:
        """The session's output as frames. A function of its own so that no local keeps the
        last message alive after it is written."""
        assert self.session is not None
        events = self.broker.take_events(self.session, now=self._clock())
        self.shell.drain()  # dispatch may have drained a queue publishers wait for
        send, send_deliver = self.proto.send, self.proto.send_deliver
        for e in events:
            if type(e) is Delivery:
                chunks.append(
                    send_deliver(e.consumer_tag, e.delivery_tag, e.redelivered, _deliver_tail(e))
                )
            else:
                chunks.append(send(_to_frame(e)))

    async def _heartbeats(self, cancel_scope: trio.CancelScope) -> None:
        """Send a heartbeat after half an interval of silence; give up after two intervals."""
        interval = self._heartbeat
        while True:
            now = trio.current_time()
            if self._reading_paused:
                self._last_received = now
            if now - self._last_received > 2 * interval:
                self._log_bad(
                    "%s: no heartbeat from the client for %.1fs; closing",
                    self.id,
                    now - self._last_received,
                )
                silent = now - self._last_received
                self._close = Close(
                    code="FRAME_ERROR", text=f"missed heartbeats: silent for {silent:.1f}s"
                )
                cancel_scope.cancel()  # the reader may be blocked on a dead socket
                return
            if now - self._last_sent >= interval / 2:
                self._replies.append([Heartbeat(), True])
                self._wake()
                self._last_sent = now
            wait = min(self._last_sent + interval / 2, self._last_received + 2 * interval) - now
            await trio.sleep(max(wait, 0.001))


# Unbound, so that no connection refers to itself through its own table.
_REQUEST_HANDLERS: dict[type[Frame], Callable[[ServerConnection, Any], Any]] = {
    DeclareExchange: ServerConnection._declare_exchange,
    DeleteExchange: ServerConnection._delete_exchange,
    DeclareQueue: ServerConnection._declare_queue,
    DeleteQueue: ServerConnection._delete_queue,
    PurgeQueue: ServerConnection._purge_queue,
    Bind: ServerConnection._bind,
    Unbind: ServerConnection._unbind,
    Consume: ServerConnection._consume,
    Cancel: ServerConnection._cancel,
    Get: ServerConnection._get,
    Redrive: ServerConnection._redrive,
    ExplainRoute: ServerConnection._explain_route,
    Inspect: ServerConnection._inspect,
}


# Encoded Deliver tails by id(message): the copies of a fanned-out message share one encoding.
# An entry lives only as long as its message: a weak reference's callback drops it when the
# message is gone (settled everywhere), so settled messages hold no memory here.
class _TailRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference that knows its cache key, so one callback serves every entry."""

    __slots__ = ("key",)
    key: int


def _drop_tail(ref: _TailRef) -> None:
    _TAILS.pop(ref.key, None)


_TAILS: dict[int, tuple[_TailRef, str, str, bytes]] = {}
_TAILS_SIZE = 4096


def _deliver_tail(event: Delivery) -> bytes:
    m = event.message
    key = id(m)
    hit = _TAILS.get(key)
    if (
        hit is not None
        and hit[0]() is m
        and hit[1] == event.exchange
        and hit[2] == event.routing_key
    ):
        return hit[3]
    tail = encode_deliver_tail(event.exchange, event.routing_key, m.body, m.properties)
    if len(_TAILS) >= _TAILS_SIZE:
        _TAILS.clear()
    ref = _TailRef(m, _drop_tail)
    ref.key = key
    _TAILS[key] = (ref, event.exchange, event.routing_key, tail)
    return tail


def _to_frame(event: Event) -> Frame:
    """Every event but a Delivery (which ``send_deliver`` encodes faster) as its frame."""
    if isinstance(event, ConfirmEvent):
        return Confirm(
            seq=event.seq,
            multiple=event.multiple,
            ok=event.ok,
            error_code=event.error_code,
            error_text=event.error_text,
        )
    if isinstance(event, Returned):
        m = event.message
        return Return(
            seq=event.publish_seq,
            reply_code=event.reply_code,
            reply_text=event.reply_text,
            exchange=m.exchange,
            routing_key=m.routing_key,
            body=m.body,
            properties=m.properties,
        )
    if isinstance(event, DeliveryTimedOut):
        return TimedOut(consumer_tag=event.consumer_tag, delivery_tag=event.delivery_tag)
    assert isinstance(event, ConsumerCancelled), event
    return Cancelled(consumer_tag=event.consumer_tag, reason=event.reason)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client's socket went away (perhaps grouped by a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
