"""One supervised connection: the trio driver under every way in (the native protocol, AMQP).

Erlang's rule, kept here: one connection is one process. Whatever is raised inside one
connection's tasks (a broken pipe, a reset, a bug in a front end) ends that connection alone:
its unsettled deliveries go back to their queues, one rate-limited line says why, and every
other client carries on. Only cancellation of the whole server passes the boundary
(``Driver.run``).

The driver owns the socket and everything about time and bytes: the handshake deadline, the
reader's turn budget (so one busy connection cannot hold the event loop), a frame that
trickles in too slowly, heartbeats, the writer and the bound on what waits to be written
(in bytes: past it the client is not read until it has taken its output), and carrying out
flow control's pauses as ``core.flow.pause_policy`` decides. A ``Wire`` (native.py's
``NativeWire``, amqp_connection.py's ``AmqpWire``) says only what the bytes mean: its
framing, its handshake and login, what each frame does, and how its frames are written.
"""

from __future__ import annotations

import abc
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from ..core.flow import Pause, pause_policy
from ..core.session import Session
from ..errors import ProtocolError

if TYPE_CHECKING:
    from .node import Node
    from .shell import Shell

RECEIVE_SIZE = 256 * 1024
# Frames one connection's reader handles before it yields to the others, or seconds it spends,
# whichever comes first. Short turns keep a consumer's
# ack-to-delivery round trip short while a paced publisher's socket is full: 128 frames / 5 ms
# gave 27.5k msg/s at a 256 KiB queue flow limit, 16 / 0.5 ms 31.7k (docs/performance.md).
FRAMES_PER_TURN = 16
TURN_SECONDS = 0.0005
# The reader stops reading while more than this waits to be written to its client (replies
# and its sessions' events; each counts its bytes plus ITEM_COST): a client that does not
# read cannot make the broker hold more for it.
PENDING_OUTPUT_BYTES = 1024 * 1024
ITEM_COST = 256
BLOCKED_GRACE_BYTES = 256 * 1024  # publishes taken after the client was told it is blocked
MANY_SESSIONS = 100  # a connection that held this many gives their memory back when it ends

#: What ``Driver.read_item`` returns once the handshake cannot go on (the wire said why).
END: Any = object()


class Wire(abc.ABC):
    """What one protocol gives the driver. It never touches the socket or the clock."""

    kind: str = "?"  # for log lines
    heartbeat: float = 0.0  # seconds, agreed in the handshake; 0: none

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @abc.abstractmethod
    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the client (b"" at its end)."""

    @abc.abstractmethod
    def pending_bytes(self) -> int:
        """Bytes of a frame begun and not yet whole."""

    #: The next whole frame from what was received, or ``need_data``; raises the protocol's
    #: ProtocolError for bytes that break it. The framing's own method, called per frame.
    next_item: Callable[[], Any]
    need_data: Any  # the framing's "no whole frame yet"

    @abc.abstractmethod
    def protocol_error(self, exc: ProtocolError) -> None:
        """The client broke the protocol: answer with the protocol's close (then the end)."""

    @abc.abstractmethod
    async def handshake(self) -> bool:
        """Read (``driver.read_item``) and answer until the client is logged in to a vhost
        (``driver.attach``): True; False if it never was (the wire said why)."""

    @abc.abstractmethod
    def handle(self, item: Any) -> Any:
        """Act on one frame (or the framing's end of stream): True to read on, False to stop
        (the connection is closing), or, where it must wait (a login, bodies read back, a
        paused publisher), a coroutine that the reader awaits for that answer. Most frames
        wait for nothing, and cost no coroutine."""

    def after_items(self) -> None:  # noqa: B027 - most wires have nothing to do here
        """The reader handled a batch of frames and is about to wait."""

    @property
    def closing(self) -> bool:
        """The wire sent its close and waits a moment for the client's answer."""
        return False

    @abc.abstractmethod
    def sessions(self) -> Iterable[Session]:
        """The core sessions this connection holds now."""

    @abc.abstractmethod
    def output(self) -> list[bytes]:
        """The sessions' events, encoded, in order."""

    @abc.abstractmethod
    def encode(self, item: Any) -> bytes:
        """A reply, heartbeat or close item as bytes."""

    @abc.abstractmethod
    def heartbeat_item(self) -> Any: ...

    @abc.abstractmethod
    def close_item(self, code: str | None, text: str) -> Any:
        """The close the driver sends on its own account: ``code`` is the broker's name of
        the condition (FRAME_ERROR, INTERNAL_ERROR, CONNECTION_FORCED, ...)."""

    @abc.abstractmethod
    def blocked_item(self, reason: str | None) -> Any:
        """What tells the client it is blocked (``reason``) or no longer (None); None if this
        client does not take it."""

    #: Whether this protocol's clients hold their publishes when told they are blocked (so
    #: a credit pause of a consuming connection can be told rather than ignored).
    holds_when_told: bool = False

    @classmethod  # noqa: B027
    async def refuse(cls, stream: trio.abc.Stream, reason: str) -> None:
        """Tell a client over a connection limit why, if the protocol has a way (it is
        closed after this). Most have none: nothing is said."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give back what the connection holds (its sessions' unacked messages, exclusive
        queues). Idempotent."""


class Driver:
    """One client connection's tasks and the boundary around them."""

    def __init__(
        self, node: Node, stream: trio.abc.Stream, conn_id: str, host: str, wire: type[Wire]
    ) -> None:
        self.node = node
        self.config = node.config
        self.clock = node.clock
        self.stream = stream
        self.id = conn_id
        self.host = host
        self.peer = _peer_name(stream)
        self.client_name = "?"
        self.user = ""
        self.opened_at = time.time()
        self.shell: Shell | None = None  # the vhost's, once the client logged in
        self.wire = wire(self)
        self.now = node.clock()  # the time of the calls the frames being read make
        self._replies: deque[list[Any]] = deque()  # [item, ready, cost], in order once ready
        self._reply_cost = 0
        self._wakeup = trio.Event()
        self._drained = trio.Event()
        self._close: Any = None  # the driver's own close item, once it ends the connection
        self._close_sent = False
        self._writing = False  # cancelling a write leaves the stream unusable
        self._last_received = trio.current_time()
        self._last_sent = trio.current_time()
        self._partial_since: float | None = None  # when the frame being received began
        self._partial_received = 0
        self._reading_paused = False
        self._pauses: dict[int, Pause] = {}  # by session: what flow control holds
        self._told: str | None = None  # why the client was told it is blocked
        self._unblocked = trio.Event()
        self._unblocked.set()
        #: Whether flow control pauses this connection's publishing now: read per publish, so a
        #: plain attribute, kept equal to ``not self._unblocked.is_set()``.
        self.publishing_paused = False
        self._taken_while_blocked = 0
        self._reader_scope: trio.CancelScope | None = None
        self._output_taken: trio.Event | None = None  # the reader waits for the writer
        self._write_started = 0.0

    # --- the boundary --------------------------------------------------------------------

    async def run(self) -> None:
        """The connection's whole life. Nothing but cancellation leaves it."""
        try:
            await self._run()
        except Exception as exc:
            self._failed(exc)
        except BaseExceptionGroup as group:  # errors of its tasks, perhaps with cancellation
            cancelled, failed = group.split(lambda e: not isinstance(e, Exception))
            if failed is not None:
                self._failed(failed)
            if cancelled is not None:
                raise cancelled from None
        finally:
            await self._finish()

    def _failed(self, exc: BaseException) -> None:
        if _connection_lost(exc):
            self.node.log_limited("%s: connection lost", self.id)
            return
        self.node.log_limited("%s: internal error; closing this connection", self.id, exc_info=exc)
        if self._close is None:
            self._close = self.wire.close_item("INTERNAL_ERROR", "internal error in the broker")

    async def _finish(self) -> None:
        try:
            sessions = self._release()
            unsent = self._replies or (self._close is not None and not self._close_sent)
            if unsent and not self._writing:
                # Closed from outside the writer (missed heartbeats, an internal error), or
                # refused in the handshake: the client still hears why, if it listens.
                with trio.move_on_after(self.config.close_timeout):
                    await self._write(self._ready_chunks(with_close=True))
            if sessions >= MANY_SESSIONS:
                await self.node.give_back_memory()
        except Exception:  # the socket is gone, or the release failed: logged once, over
            self.node.log_limited("%s: error while closing", self.id, exc_info=True)
        finally:
            await trio.aclose_forcefully(self.stream)
            # The wire and the driver refer to each other: break it, so a closed connection
            # is freed at once, without waiting for a full collection.
            self.wire.driver = None  # type: ignore[assignment]

    def _release(self) -> int:
        """Close the connection's sessions; how many it held."""
        shell = self.shell
        self._unblocked.set()
        self.publishing_paused = False
        if shell is None:
            return 0
        sessions = list(self.wire.sessions())
        try:
            for session in sessions:
                shell.by_session.pop(session.id, None)
            shell.registry.connections.pop(self.id, None)
            self.wire.release()
        finally:
            shell.drain()  # what it held went back: other consumers get it
            self.shell = None
            self.node.log_connection("%s closed (%s)", self.id, self.wire.kind)
        return len(sessions)

    # --- the connection's life -----------------------------------------------------------

    async def _run(self) -> None:
        with trio.move_on_after(self.config.handshake_timeout) as scope:
            opened = await self.wire.handshake()
        if scope.cancelled_caught:
            self.node.log_limited(
                "%s from %s: no handshake within %ss",
                self.id,
                self.peer,
                self.config.handshake_timeout,
            )
            self.end("FRAME_ERROR", "no handshake within the handshake timeout")
            return
        if not opened:
            return
        assert self.shell is not None
        self.node.log_connection(
            "%s opened from %s (%s, client %r, user %r, vhost %r)",
            self.id,
            self.peer,
            self.wire.kind,
            self.client_name,
            self.user,
            self.shell.vhost,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            with trio.CancelScope() as self._reader_scope:
                if self.wire.heartbeat:
                    nursery.start_soon(self._heartbeats, self._reader_scope, nursery.cancel_scope)
                await self._reader()
            self.wake()
            with trio.move_on_after(self.config.close_timeout):
                await self._drained.wait()
            nursery.cancel_scope.cancel()

    def attach(self, shell: Shell, user: str) -> None:
        """The client logged in to ``shell``'s vhost as ``user``."""
        self.shell, self.user = shell, user
        shell.registry.connections[self.id] = self
        for session in self.wire.sessions():
            self.add_session(session)

    def add_session(self, session: Session) -> None:
        """A session of this connection began (a channel opened): its output wakes us."""
        assert self.shell is not None
        self.shell.by_session[session.id] = self

    def forget_session(self, session: Session) -> None:
        """A session of this connection ended (its channel closed)."""
        if self.shell is not None:
            self.shell.by_session.pop(session.id, None)
        if self._pauses.pop(session.id, None) is not None:
            self._apply_policy()

    def close_from_broker(self, code: str, text: str) -> None:
        """Close this connection from outside its tasks (its vhost or user was deleted)."""
        self.end(code, text)

    def end(self, code: str | None, text: str) -> None:
        """End the connection with the wire's close saying ``code`` and ``text``; the
        client has ``close_timeout`` to take it before the reader stops waiting for it."""
        if self._close is None:
            self._close = self.wire.close_item(code, text)
        scope = self._reader_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + self.config.close_timeout)
        self.wake()

    @property
    def ending(self) -> bool:
        return self._close is not None

    # --- reading -------------------------------------------------------------------------

    async def read_item(self) -> Any:
        """The next frame in the handshake (writing what waits first), or END."""
        wire = self.wire
        while True:
            try:
                item = wire.next_item()
            except ProtocolError as exc:
                wire.protocol_error(exc)
                return END
            if item is not wire.need_data:
                return item
            await self.flush()
            data = await self._receive()
            if data is None:
                return END
            wire.receive_data(data)

    async def _reader(self) -> None:
        wire = self.wire
        shell = self.shell
        assert shell is not None
        next_item, need_data, handle = wire.next_item, wire.need_data, wire.handle
        handled = 0
        turn_started = trio.current_time()
        while self._close is None:
            handled += 1
            # The clock is read every frame: one frame may cost milliseconds (a field table
            # of 40,000 entries), and the turn must end right after it.
            if handled >= FRAMES_PER_TURN or trio.current_time() - turn_started > TURN_SECONDS:
                # A flood from one connection (or a few costly frames) must not hold up the
                # others: their acks give consumers credit, and the writers deliver.
                handled = 0
                wire.after_items()
                shell.drain()
                if self._pending_output() > PENDING_OUTPUT_BYTES:
                    await self._until_output_taken()
                await trio.lowlevel.checkpoint()
                turn_started = trio.current_time()
            try:
                item = next_item()
            except ProtocolError as exc:
                wire.protocol_error(exc)
                wire.after_items()
                return
            if item is need_data:
                wire.after_items()
                shell.drain()
                if self._pending_output() > PENDING_OUTPUT_BYTES:
                    await self._until_output_taken()
                data = await self._receive()
                if data is None:
                    return
                self.now = self.clock()
                wire.receive_data(data)
                continue
            self._partial_since = None  # a whole frame came: any slow one starts again
            go_on = handle(item)
            if go_on is not True:
                if go_on is not False:
                    go_on = await go_on
                if not go_on:
                    wire.after_items()
                    return

    async def _receive(self) -> bytes | bytearray | None:
        """The next bytes from the client; None if a frame it began stalls, or the wire's
        close went unanswered.

        A frame begun must keep arriving at ``min_frame_rate`` on average once
        ``frame_grace`` has passed, so a client cannot hold a connection (and its buffer)
        open by trickling a byte now and then (slowloris). An idle client, between frames,
        is the heartbeat's business.
        """
        config = self.config
        if self.wire.closing:  # we sent a close: its answer, or the end, soon
            with trio.move_on_after(config.close_timeout):
                return await self._receive_some()
            return None
        if not self.wire.pending_bytes():
            self._partial_since = None
            return await self._receive_some()
        now = trio.current_time()
        if self._partial_since is None:
            self._partial_since, self._partial_received = now, 0
        deadline = (
            self._partial_since
            + config.frame_grace
            + self._partial_received / config.min_frame_rate
        )
        with trio.move_on_at(deadline):
            data = await self._receive_some()
            self._partial_received += len(data)
            return data
        self.node.log_limited("%s: a frame arrived too slowly; closing", self.id)
        self.end(
            "FRAME_ERROR",
            f"a frame arrived too slowly: less than {config.min_frame_rate} bytes a second "
            f"after {config.frame_grace}s",
        )
        return None

    async def _receive_some(self) -> bytes | bytearray:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self._last_received = trio.current_time()
        return data

    async def _until_output_taken(self) -> None:
        """A client that does not take what we write is not read either, until it has taken
        half of it: it cannot make the broker hold more for it (a get loop, a return flood).
        One that takes nothing at all for two heartbeat intervals is closed (_heartbeats)."""
        self._output_taken = trio.Event()
        self.wake()
        await self._paused(self._output_taken)

    async def _paused(self, until: trio.Event) -> None:
        """Stop reading this client until ``until``. Its silence meanwhile is ours, not its:
        neither a missed heartbeat nor a slow frame (RabbitMQ pauses its heartbeat monitor
        for a blocked connection too)."""
        self._reading_paused = True
        if self.shell is not None:
            self.shell.drain()
        try:
            await until.wait()
        finally:
            self._reading_paused = False
            self._last_received = trio.current_time()
            self._partial_since = None

    # --- flow control --------------------------------------------------------------------

    def set_blocked(self, session: int, pause: Pause | None) -> None:
        """The core paused (or resumed) one session's publishing."""
        if pause is None:
            if self._pauses.pop(session, None) is None:
                return
        else:
            self._pauses[session] = pause
        self._apply_policy()

    def _apply_policy(self) -> None:
        consuming = any(s.consumers for s in self.wire.sessions())
        policy = pause_policy(
            self._pauses.values(), consuming=consuming, holds_when_told=self.wire.holds_when_told
        )
        if policy.tell is not None and self._told is None:
            item = self.wire.blocked_item(policy.tell)
            if item is not None:
                self.send(item)
                self._told = policy.tell
            self.node.log_connection("%s: publishing blocked: %s", self.id, policy.tell)
        elif policy.tell is None and self._told is not None:
            self.send(self.wire.blocked_item(None))
            self._told = None
        if policy.wait:
            if self._unblocked.is_set():
                self._unblocked = trio.Event()
                self.publishing_paused = True
        elif not self._unblocked.is_set():
            self.node.log_connection("%s: publishing resumed", self.id)
            self._unblocked.set()
            self.publishing_paused = False
            self._taken_while_blocked = 0

    async def before_publish(self, size: int) -> None:
        """A publish was read. While publishing is paused, those sent before the client heard
        of it are taken (a bounded amount); past that, or at once for a pause the client is
        not told of, the reader waits until the pause ends."""
        if self._unblocked.is_set():
            return
        self._taken_while_blocked += size + 1024
        if self._told is None or self._taken_while_blocked > BLOCKED_GRACE_BYTES:
            await self._paused(self._unblocked)

    # --- writing -------------------------------------------------------------------------

    def wake(self) -> None:
        if self._drained.is_set():  # something new to send: not drained until it is sent
            self._drained = trio.Event()
        self._wakeup.set()

    def send(self, item: Any) -> None:
        """Write ``item`` after what is queued, now."""
        self._queue(item, True)

    def answer(self, item: Any) -> None:
        """A reply: written once what the calls before it journaled is on disk."""
        slot = self._queue(item, True)
        shell = self.shell
        journal = shell.broker.journal if shell is not None else None
        if journal is not None and len(journal):
            assert shell is not None
            shell.hold_until_committed(self, slot)

    def _queue(self, item: Any, ready: bool) -> list[Any]:
        cost = (len(item) if isinstance(item, bytes) else 0) + ITEM_COST
        slot = [item, ready, cost]
        self._replies.append(slot)
        self._reply_cost += cost
        self.wake()
        return slot

    def pending_output(self) -> int:
        """What waits to be written to this client: bytes, plus ITEM_COST a frame."""
        return self._pending_output()

    def _pending_output(self) -> int:
        pending = self._reply_cost
        for session in self.wire.sessions():
            pending += session.outbox_bytes() + session.outbox_size() * ITEM_COST
        return pending

    def _ready_chunks(self, *, with_close: bool) -> list[bytes]:
        """Ready replies as bytes (and the driver's close, once), in order."""
        encode, replies = self.wire.encode, self._replies
        chunks: list[bytes] = []
        while replies and replies[0][1]:
            item, _, cost = replies.popleft()
            self._reply_cost -= cost
            chunks.append(encode(item))
        if with_close and self._close is not None and not self._close_sent:
            chunks.append(encode(self._close))
            self._close_sent = True
        return chunks

    async def flush(self) -> None:
        """Write what is ready now (the handshake's answers, before the writer runs)."""
        await self._write(self._ready_chunks(with_close=False))

    async def _write(self, chunks: list[bytes]) -> None:
        if chunks:
            self._writing = True
            self._write_started = trio.current_time()
            await self.stream.send_all(b"".join(chunks))
            self._writing = False
            self._last_sent = trio.current_time()
        taken = self._output_taken
        if taken is not None and self._pending_output() <= PENDING_OUTPUT_BYTES // 2:
            self._output_taken = None
            taken.set()

    async def _writer(self) -> None:
        wire, shell = self.wire, self.shell
        assert shell is not None
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            # Events first: what a session emitted before a reply was made reaches the client
            # before that reply (no delivery for a consumer after its cancel's answer).
            chunks = wire.output()
            shell.drain()  # dispatch may have drained a queue publishers wait for
            chunks += self._ready_chunks(with_close=True)
            await self._write(chunks)
            del chunks  # no local keeps the last message alive while waiting
            if self._close is not None and self._close_sent:
                self._drained.set()
                return
            if (
                not self._replies
                and not any(s.outbox_size() for s in wire.sessions())
                and not self._wakeup.is_set()
            ):
                self._drained.set()

    async def _heartbeats(self, reader: trio.CancelScope, everything: trio.CancelScope) -> None:
        """Send a heartbeat after half an interval of silence; give up after two intervals
        (the reader stops, the writer says why). A client whose socket takes none of our
        bytes for two intervals is gone too: the writer is stopped where it waits."""
        interval = self.wire.heartbeat
        while True:
            now = trio.current_time()
            if self._writing and now - self._write_started > 2 * interval:
                self.node.log_limited(
                    "%s: the client took none of our data for %.1fs; closing",
                    self.id,
                    now - self._write_started,
                )
                self._close_sent = True  # it could not be written either
                everything.cancel()
                return
            if self._reading_paused:
                self._last_received = now
            silent = now - self._last_received
            if silent > 2 * interval:
                self.node.log_limited(
                    "%s: no heartbeat from the client for %.1fs; closing", self.id, silent
                )
                self.end("FRAME_ERROR", f"missed heartbeats: silent for {silent:.1f}s")
                reader.cancel()  # it may be blocked on a dead socket
                return
            if now - self._last_sent >= interval / 2:
                self.send(self.wire.heartbeat_item())
                self._last_sent = now
            wait = min(self._last_sent + interval / 2, self._last_received + 2 * interval) - now
            await trio.sleep(max(wait, 0.001))


async def serve_client(node: Node, raw: trio.SocketStream, conn_id: str, wire: type[Wire]) -> None:
    """One accepted socket: admission, TLS, then the driver. Nothing but cancellation
    leaves it, whatever the client does."""
    host = _peer_host(raw)
    refusal = node.admit(host)
    try:
        stream: trio.abc.Stream = raw
        if node.ssl_context is not None:
            secured = await _tls_handshake(node, raw, host)
            if secured is None:
                return
            stream = secured
        if refusal is not None:
            with trio.move_on_after(1):
                await wire.refuse(stream, refusal)
            await trio.aclose_forcefully(stream)
            return
        await Driver(node, stream, conn_id, host, wire).run()
    except* Exception as group:  # before the driver ran: TLS, or a refusal's write
        if not _connection_lost(group):
            node.log_limited("%s: internal error before the handshake", conn_id, exc_info=group)
        await trio.aclose_forcefully(raw)
    finally:
        node.leave(host)


async def _tls_handshake(
    node: Node, raw: trio.SocketStream, host: str
) -> trio.SSLStream[trio.SocketStream] | None:
    """The TLS stream, handshaken within the handshake timeout; None (logged, closed) if the
    client's certificate is missing or not trusted, or it speaks no TLS."""
    assert node.ssl_context is not None
    stream = trio.SSLStream(raw, node.ssl_context, server_side=True)
    try:
        with trio.fail_after(node.config.handshake_timeout):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
        cause = exc.__cause__ or exc
        node.log_limited("TLS handshake with %s failed: %s", host, cause)
        await trio.aclose_forcefully(raw)
        return None
    return stream


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client's socket went away (perhaps grouped)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)


def _peer_name(stream: trio.abc.Stream) -> str:
    raw: Any = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream
    try:
        addr = raw.socket.getpeername()
    except (OSError, AttributeError):
        return "?"
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
