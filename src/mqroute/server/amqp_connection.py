"""One AMQP 0-9-1 client connection: the trio shell around ``AmqpFrontEnd`` (amqp_front.py).

It reads frames and hands them to the front end, carries out what needs waiting (the login,
bodies read back from disk), writes what the front end and the channels' sessions produce,
keeps the heartbeat, and pauses reading while flow control blocks the connection (telling
the client with connection.blocked if it asked for that).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio
from pamqp import commands as amqp

from ..core.effects import NeedBodies
from ..core.flow import Pause
from ..core.vhost import Vhost
from ..errors import AccessRefused
from ..protocol.amqp import (
    HEADER_RECEIVED,
    HEARTBEAT,
    NEED_DATA,
    PROTOCOL_HEADER,
    AmqpFrames,
    BadHeader,
    Content,
    FrameError,
    method_bytes,
)
from .amqp_front import AmqpFrontEnd, Authenticate, Closed, OpenVhost

if TYPE_CHECKING:
    from .admin import Registry
    from .node import Node
    from .shell import Shell

log = logging.getLogger("mqroute.amqp")

RECEIVE_SIZE = 256 * 1024
_PUBLISHES = (amqp.Basic.Publish, Content)  # what a paused connection is not read past
FRAMES_PER_TURN = 16


class AmqpConnection:
    """One AMQP client: handshake and login, then reader, writer and heartbeat tasks."""

    def __init__(self, node: Node, stream: trio.abc.Stream, conn_id: str, host: str) -> None:
        self.node = node
        self.config = node.config
        self.stream = stream
        self.id = conn_id
        self.host = host
        self.peer = host
        self.client_name = "?"
        self.user = ""
        self.opened_at = time.time()
        self.shell: Shell | None = None
        self.broker: Vhost | None = None
        self.registry: Registry | None = None
        self.frames = AmqpFrames()
        self.front = AmqpFrontEnd(
            conn_id,
            max_message_size=self.config.max_message_size,
            heartbeat=self.config.heartbeat_ms // 1000,
        )
        self._replies: deque[list[Any]] = deque()  # [bytes, ready]: in order once ready
        self._wakeup = trio.Event()
        self._drained = trio.Event()  # set when the writer has nothing left to send
        self._last_received = trio.current_time()
        self._last_sent = trio.current_time()
        self._paused: dict[int, Pause] = {}  # sessions flow control paused, and why
        self._told_blocked = False  # connection.blocked sent, unblocked not yet
        self._unblocked = trio.Event()
        self._unblocked.set()

    async def run(self) -> None:
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                opened = await self._handshake()
            if scope.cancelled_caught or not opened:
                await self._flush_now()
                return
            log.info(
                "%s opened from %s (AMQP, client %r, user %r, vhost %r)",
                self.id,
                self.peer,
                self.client_name,
                self.user,
                self.shell.vhost if self.shell else "?",
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self.front.heartbeat:
                    nursery.start_soon(self._heartbeats, nursery.cancel_scope)
                await self._reader()
                self._wake()
                with trio.move_on_after(self.config.close_timeout):
                    await self._drained.wait()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            self.node.log_limited("%s: internal error; closing", self.id, exc_info=True)
            self.front.close_connection(541, "INTERNAL_ERROR - internal error in the broker")
            await self._flush_now()
        finally:
            self._release()
            await trio.aclose_forcefully(self.stream)

    # --- handshake and login ----------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Until connection.open-ok (True), or the end (False)."""
        front = self.front
        while True:
            item = await self._next_frame()
            if item is None:
                return False
            if item == HEADER_RECEIVED:
                front.start()  # the client spoke AMQP 0-9-1: start the negotiation
                await self._flush_now()
                continue
            channel, frame = item
            action = front.handle(channel, frame, self.node.clock())
            self.frames.frame_max = front.frame_max  # tune-ok settles it
            if isinstance(action, Authenticate):
                self.client_name = str(front.client_properties.get("product", "?"))
                try:
                    await self.node.authenticate(action.user, action.password, self.host)
                except AccessRefused as exc:
                    front.refused(exc.reason)
                    await self._flush_now()
                    return False
                self.user = action.user
                front.authenticated(action.user)
            elif isinstance(action, OpenVhost):
                try:
                    shell, access = await self.node.open_vhost(self.user, action.name, self.host)
                except AccessRefused as exc:
                    front.close_connection(530, f"NOT_ALLOWED - {exc.reason}")
                    await self._flush_now()
                    return False
                self.shell, self.broker, self.registry = shell, shell.broker, shell.registry
                front.opened(shell.broker, access)
                shell.registry.connections[self.id] = self
                await self._flush_now()
                return True
            elif isinstance(action, Closed):
                await self._flush_now()
                return False
            await self._flush_now()

    async def _next_frame(self) -> Any:
        """``(channel, frame)``, HEADER_RECEIVED, or None at the end."""
        frames = self.frames
        while True:
            try:
                item = frames.next_frame()
            except BadHeader:
                # AMQP's answer to a client that speaks something else: our header, then close.
                await self.stream.send_all(PROTOCOL_HEADER)
                return None
            except FrameError as exc:
                self.node.log_limited("%s: AMQP frame error: %s", self.id, exc)
                self.front.close_connection(501, f"FRAME_ERROR - {exc}")
                await self._flush_now()
                return None
            if item is not NEED_DATA:
                return item
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self._last_received = trio.current_time()
            frames.receive_data(data)

    # --- the open connection ----------------------------------------------------------------

    async def _reader(self) -> None:
        """Frames until the connection ends. What a batch of frames produced goes out when
        the socket has nothing more to read (or every FRAMES_PER_TURN frames), as the native
        reader does: a burst of publishes or acks costs one drain, not one per frame."""
        front, shell, frames = self.front, self.shell, self.frames
        assert shell is not None
        handled = 0
        now = self.node.clock()
        while True:
            try:
                item = frames.next_frame()
            except (BadHeader, FrameError) as exc:
                self.node.log_limited("%s: AMQP frame error: %s", self.id, exc)
                self.front.close_connection(501, f"FRAME_ERROR - {exc}")
                self._after_frames()
                return
            if item is NEED_DATA:
                self._after_frames()
                if front.state == "closing":  # we sent Close: close-ok, or the end, soon
                    with trio.move_on_after(self.config.close_timeout) as waited:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    if waited.cancelled_caught:
                        return
                else:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                self._last_received = trio.current_time()
                now = self.node.clock()
                frames.receive_data(data)
                continue
            if item is None or item == HEADER_RECEIVED:
                self._after_frames()
                return
            handled += 1
            if handled >= FRAMES_PER_TURN:
                handled = 0
                self._after_frames()
                await trio.lowlevel.checkpoint()
            channel, frame = item
            if self._paused and type(frame) in _PUBLISHES and self._must_wait():
                self._after_frames()
                await self._until_unblocked()
            while True:
                try:
                    action = front.handle(channel, frame, now)
                except NeedBodies as need:
                    self._after_frames()
                    await shell.wait_read_back(need.queue)
                    continue
                break
            if action is not None and isinstance(action, Closed):
                self._after_frames()
                return

    def _after_frames(self) -> None:
        """What the frames handled so far produced: sessions to watch, replies, wake-ups."""
        front = self.front
        if front.sessions_opened or front.sessions_closed:
            self._track_sessions()
        if front.out:
            self._queue_out()
        assert self.shell is not None
        self.shell.drain()

    def _track_sessions(self) -> None:
        """Channels opened and closed: their sessions' output wakes this writer."""
        shell, front = self.shell, self.front
        assert shell is not None
        for session in front.sessions_opened:
            shell.by_session[session.id] = self  # type: ignore[assignment]
        front.sessions_opened.clear()
        for session in front.sessions_closed:
            shell.by_session.pop(session.id, None)
            if self._paused.pop(session.id, None) is not None:
                self._pause_changed()
        front.sessions_closed.clear()

    def _queue_out(self) -> None:
        """Move the front end's replies into the reply queue, held until the commit if a
        declaration in them is durable (as the native front end answers)."""
        front = self.front
        if not front.out:
            return
        slot = [b"".join(front.out), True]
        front.out.clear()
        self._replies.append(slot)
        broker, shell = self.broker, self.shell
        journal = broker.journal if broker is not None else None
        if shell is not None and journal is not None and len(journal):
            shell.hold_until_committed(self, slot)  # type: ignore[arg-type]
        else:
            self._wake()

    def _pending_output(self) -> bool:
        return any(ch.session.outbox_size() for ch in self.front.channels.values())

    def _wake(self) -> None:
        if self._drained.is_set():  # something new to send: not drained until it is sent
            self._drained = trio.Event()
        self._wakeup.set()

    async def _writer(self) -> None:
        front, shell = self.front, self.shell
        assert shell is not None
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            chunks = front.output()
            self._track_sessions()
            self._queue_out()  # a channel closed by an event (ack timeout) says so after it
            replies = self._replies
            while replies and replies[0][1]:
                chunks.append(replies.popleft()[0])
            shell.drain()
            if chunks:
                await self.stream.send_all(b"".join(chunks))
                self._last_sent = trio.current_time()
            if not self._replies and not self._pending_output() and not self._wakeup.is_set():
                self._drained.set()

    async def _flush_now(self) -> None:
        self._queue_out()
        chunks = []
        while self._replies and self._replies[0][1]:
            chunks.append(self._replies.popleft()[0])
        if chunks:
            with trio.move_on_after(self.config.close_timeout):
                await self.stream.send_all(b"".join(chunks))
            self._last_sent = trio.current_time()

    async def _heartbeats(self, cancel_scope: trio.CancelScope) -> None:
        interval = self.front.heartbeat
        while True:
            now = trio.current_time()
            if not self._unblocked.is_set():  # not read: the client's silence is ours
                self._last_received = now
            if now - self._last_received > 2 * interval:
                self.node.log_limited("%s: missed AMQP heartbeats; closing", self.id)
                cancel_scope.cancel()
                return
            if now - self._last_sent >= interval / 2:
                self._replies.append([method_bytes(0, HEARTBEAT), True])
                self._wake()
                self._last_sent = now
            await trio.sleep(interval / 4)

    # --- flow control -----------------------------------------------------------------------

    def set_blocked(self, pause: Pause | None) -> None:
        """Flow control paused (or resumed) this connection's publishing. An alarm is told
        (connection.blocked, to clients that take it) and publishes are not read until it
        ends. A queue over its credit limit is RabbitMQ's silent ``flow`` state: publishes
        wait unread, and the client is not told; but a connection that also consumes goes on
        being read, since the acks behind its publishes are what drain the queue."""
        for ch in self.front.channels.values():
            if pause is None:
                self._paused.pop(ch.session.id, None)
            else:
                self._paused[ch.session.id] = pause
        self._pause_changed()

    def _pause_changed(self) -> None:
        alarm = next((p for p in self._paused.values() if not p.credit), None)
        capabilities = self.front.client_properties.get("capabilities") or {}
        if alarm is not None and not self._told_blocked:
            if capabilities.get("connection.blocked"):
                self.front.out.append(method_bytes(0, amqp.Connection.Blocked(alarm.reason)))
                self._queue_out()
                self._told_blocked = True
        elif alarm is None and self._told_blocked:
            self.front.out.append(method_bytes(0, amqp.Connection.Unblocked()))
            self._queue_out()
            self._told_blocked = False
        if self._must_wait():
            if self._unblocked.is_set():
                self._unblocked = trio.Event()
        else:
            self._unblocked.set()

    def _must_wait(self) -> bool:
        """Whether a publish read now must wait (see ``set_blocked``)."""
        if not self._paused:
            return False
        if any(not p.credit for p in self._paused.values()):
            return True
        return not any(ch.session.consumers for ch in self.front.channels.values())

    async def _until_unblocked(self) -> None:
        assert self.shell is not None
        self.shell.drain()
        await self._unblocked.wait()
        self._last_received = trio.current_time()

    def close_from_broker(self, code: str, text: str) -> None:
        self.front.close_connection(320, f"{code} - {text}")
        self._queue_out()

    def _release(self) -> None:
        broker, shell = self.broker, self.shell
        if broker is None or shell is None:
            return
        for ch in list(self.front.channels.values()):
            if not ch.closing:
                broker.close_session(ch.session, now=self.node.clock())
            shell.by_session.pop(ch.session.id, None)
        self.front.channels.clear()
        broker.release_owner(self.id)
        if self.registry is not None:
            self.registry.connections.pop(self.id, None)
        shell.drain()
        self.broker = None
        log.info("%s closed (AMQP)", self.id)
