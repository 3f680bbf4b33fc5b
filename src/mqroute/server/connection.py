"""One native-protocol client connection, the trio shell around its front end (native.py):
the handshake, the reader, writer and heartbeat tasks, and flow control of its reading."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .. import __version__
from ..core.access import Access
from ..core.dead_letter import Redriven
from ..core.effects import NeedBodies
from ..core.flow import Pause
from ..core.session import Session
from ..core.vhost import Vhost
from ..errors import BrokerError, ProtocolError
from ..protocol import (
    NEED_DATA,
    Ack,
    Blocked,
    Close,
    Connection,
    Extend,
    Heartbeat,
    Hello,
    Nack,
    PeerClosed,
    Publish,
    PublishTooLarge,
    RedriveOk,
    Release,
    Role,
    Unblocked,
    ok_frame,
    welcome_for,
)
from .native import NativeFrontEnd

if TYPE_CHECKING:
    from .admin import Registry
    from .node import Node
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

    def __init__(self, node: Node, stream: trio.abc.Stream, conn_id: str, host: str) -> None:
        self.node = node
        # The vhost's, once the client logged in to it (``_attach``).
        self.shell: Shell = None  # type: ignore[assignment]
        self.broker: Vhost = None  # type: ignore[assignment]
        self.registry: Registry = None  # type: ignore[assignment]
        self.user = ""
        self.opened_at = time.time()
        self._clock = node.clock
        self.stream = stream
        self.host = host
        config = self.config = node.config
        self.id = conn_id
        self.proto = Connection(
            Role.SERVER,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        self.session: Session | None = None
        self.front: NativeFrontEnd | None = None
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
        self._now = node.clock()  # the time of the calls the frames being read make
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
            assert self.session is not None
            self.registry.connections[self.id] = self
            self.shell.by_session[self.session.id] = self
            log.info(
                "%s opened from %s (client %r, user %r, vhost %r)",
                self.id,
                self.peer,
                self.client_name,
                self.user,
                self.shell.vhost,
            )
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
            self.node.log_limited(
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
        self.node.log_limited(message, *args)

    def close_from_broker(self, code: str, text: str) -> None:
        """Close this connection from outside its tasks (its vhost or user was deleted)."""
        self._closing(code, text)

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
            try:
                welcome = welcome_for(
                    event,
                    server=f"mqroute {__version__}",
                    connection_id=self.id,
                    heartbeat_ms=self.config.heartbeat_ms,
                    max_frame_size=self.config.max_frame_size,
                    max_message_size=self.config.max_message_size,
                )
            except ProtocolError as exc:
                await self._send_close(exc.code, str(exc))
                return None
            self.client_name = event.client
            try:
                shell, access = await self.node.login(
                    event.user, event.password, event.vhost, self.host
                )
            except BrokerError as exc:
                await self._send_close(exc.code, exc.reason)
                return None
            self._attach(shell, access)
            self._heartbeat = welcome.heartbeat_ms / 1000
            await self.stream.send_all(self.proto.send(welcome))
            return event

    def _attach(self, shell: Shell, access: Access) -> None:
        """The client logged in to ``shell``'s vhost as ``access.user``."""
        self.shell, self.broker, self.registry = shell, shell.broker, shell.registry
        self.user = access.user
        self.session = self.broker.open_session(self.id, access)
        self.front = NativeFrontEnd(
            self.broker, self.session, self.id, self.registry, self.config.max_message_size
        )

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
            front = self.front
            assert front is not None
            if kind is Publish:
                if self._blocked is not None:
                    await self._publish_while_blocked(len(event.body))
                front.publish(event, self._now)
                if self.broker.flow.changed:  # this publish may have paused its sender
                    self.shell.drain()
            elif kind is Ack or kind is Nack or kind is Release or kind is Extend:
                close = front.settle(event, self._now)
                if close is not None:
                    self._closing(close.code, close.text)
            elif kind is Heartbeat:
                pass
            elif kind is PublishTooLarge:
                front.too_large(event)
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

    async def _receive(self) -> bytes | bytearray | None:
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

    async def _request(self, event: Any) -> None:
        assert self.front is not None
        moved = 0
        while True:
            try:
                reply = self.front.request(event, self._now)
            except NeedBodies as need:  # nothing changed: read them back, then again
                await self.shell.wait_read_back(need.queue)
                continue
            if type(reply) is not Redriven:
                break
            # It moves what is in memory and asks for the rest: wait, then go on.
            moved += reply.moved
            left = event.limit - moved if event.limit else 0
            if not (reply.more and (left > 0 or not event.limit)):
                reply = ok_frame(event.rid, RedriveOk(moved=moved))
                break
            queue = self.broker.queues.get(event.queue)
            if queue is not None:
                await self.shell.wait_read_back(queue)
            event = attrs.evolve(event, limit=left)
        slot = [reply, True]
        self._replies.append(slot)
        journal = self.broker.journal
        if journal is not None and len(journal):
            # Answer once what is pending (this declaration, or an equal one) is on disk.
            self.shell.hold_until_committed(self, slot)
        else:
            self._wake()

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
        assert self.front is not None
        chunks += self.front.output(self.proto)
        self.shell.drain()  # dispatch may have drained a queue publishers wait for

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


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client's socket went away (perhaps grouped by a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))


def _peer_name(stream: trio.abc.Stream) -> str:
    raw: Any = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream
    try:
        addr = raw.socket.getpeername()
    except (OSError, AttributeError):
        return "?"
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
