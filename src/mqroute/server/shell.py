"""The trio server: listens, runs one reader and one writer task per connection, drives the core.

Each connection lives in its own nursery, so a failure in one connection's tasks ends that
connection and nothing else. The reader turns bytes into events (``protocol``) and events into
broker calls (``broker``); the writer sends the session's outbox and request answers, many
frames per socket write. A slow reader is bounded by the session's outbox limit, a fast writer
by the reader waiting while its output is unsent.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from .. import __version__
from ..core.broker import Broker, Limits, Redriven
from ..core.effects import NeedBodies, PageIn
from ..core.flow import DEFAULT_QUEUE_LIMIT, Pause
from ..core.queue import MessageQueue
from ..core.session import Session
from ..errors import BrokerError, PreconditionFailed, ProtocolError
from ..model import (
    Confirm as ConfirmEvent,
)
from ..model import (
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
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
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
    Deliver,
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
from . import resources
from .admin import Registry, inspect
from .datadir import DataDirLock
from .log_limit import LogLimit
from .store import MemoryStore, PageFile, SqliteStore, Store, StoreError

log = logging.getLogger("mqroute.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5680
RECEIVE_SIZE = 256 * 1024
# Frames one connection's reader handles before it yields to the others, or seconds it spends
# (looked at every 8 frames), whichever comes first. Short turns keep a consumer's
# ack-to-delivery round trip short while a paced publisher's socket is full: 128 frames / 5 ms
# gave 27.5k msg/s at a 256 KiB queue flow limit, 16 / 0.5 ms 31.7k (docs/performance.md).
FRAMES_PER_TURN = 16
TURN_SECONDS = 0.0005
RATE_INTERVAL = 5.0  # seconds between rate samples
TIMER_FAILURE_BACKOFF = 1.0  # seconds the timer waits after an unexpected failure
ACCEPT_BACKOFF = 0.1  # seconds before accepting again when out of file descriptors
DISK_CHECK_INTERVAL = 1.0  # seconds between two looks at the free disk space
WRITE_RETRY_SECONDS = 1.0  # seconds before a batch the store could not write is tried again
PENDING_OUTPUT_LIMIT = 1024  # the reader stops reading while more frames than this are unsent
BLOCKED_GRACE_BYTES = 256 * 1024  # publishes taken after a Blocked before reading stops
PAGE_BATCH_BYTES = 8 * 1024 * 1024  # bodies written to the page file in one transaction
PAGER_INTERVAL = 0.05  # seconds between looks for bodies to page out, while paging
PAGER_IDLE_INTERVAL = 1.0  # ... and otherwise (rows of gone messages to delete)
# Bodies paged out leave freed memory in the C heap (bodies over 512 B are malloc'd): hand it
# back to the system at most this often while paging (docs/performance.md).
TRIM_INTERVAL = 1.0


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    heartbeat_ms: int = 60_000  # the server's wish; the smaller non-zero of both sides wins
    handshake_timeout: float = 10.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE  # the server's wish; the client may lower it
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Publishers are blocked while queued messages take more memory than this: a fraction of
    # the machine's memory (float) or bytes (int). RabbitMQ's vm_memory_high_watermark.
    memory_high_watermark: float | int = 0.4
    # Publishers into a consumed queue wait while it holds more ready bytes than this.
    queue_flow_limit: int = DEFAULT_QUEUE_LIMIT
    # Publishers of persistent messages are blocked while the data directory's disk has less
    # free space than this. RabbitMQ's disk_free_limit (default 50 MB there).
    disk_free_limit: int = 200 * 1024 * 1024
    close_timeout: float = 2.0  # how long a closing connection may take to flush
    # None: the open-file limit less a reserve for the store and the listeners.
    max_connections: int | None = None
    max_connections_per_host: int = 1000
    # A frame begun must go on arriving at this rate (bytes/s) once its grace has passed.
    min_frame_rate: int = 1024
    frame_grace: float = 10.0
    limits: Limits = attrs.Factory(Limits)
    data_dir: Path | None = None  # None: nothing is kept on disk


@attrs.frozen
class ServerAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqroute://{host}:{self.port}"


async def serve(
    config: ServerConfig = ServerConfig(),
    *,
    broker: Broker | None = None,
    store: Store | None = None,
    task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until cancelled. ``task_status.started`` gets the bound address.

    Use port 0 for an ephemeral port (tests)::

        address = await nursery.start(serve, ServerConfig(port=0))

    With ``config.data_dir`` the broker locks that directory, recovers what its SQLite store
    holds and keeps durable state there; without it (or with a ``store`` given) nothing is
    written unless that store writes it.
    """
    with contextlib.ExitStack() as stack:
        if store is None and config.data_dir is not None:
            stack.enter_context(DataDirLock(config.data_dir))
            store = SqliteStore(config.data_dir)
        own_broker = broker is None
        if broker is None:
            broker = Broker(
                max_message_size=config.max_message_size,
                durable=store is not None,
                memory_limit=resources.memory_limit(config.memory_high_watermark),
                queue_flow_limit=config.queue_flow_limit,
                limits=config.limits,
            )
        store = store or MemoryStore()
        pages = _open_page_file(config.data_dir)
        if pages is not None:
            stack.callback(pages.close)
            broker.can_page = True
        broker.reads_back = True
        if own_broker:  # what the process holds already counts against the watermark
            broker.flow.memory_baseline = resources.process_memory()  # recovery charges its own
        await _recover(broker, store)
        try:
            await _serve(broker, store, pages, config, task_status)
        finally:
            store.close()  # marks a clean shutdown unless a write failed


def _open_page_file(data_dir: Path | None) -> PageFile | None:
    """The page file, or None (no data directory, or no room for it: paging is then off and
    the memory alarm is all there is)."""
    if data_dir is None:
        return None
    try:
        return PageFile(data_dir)
    except StoreError as exc:
        log.warning("%s; messages will not be paged to disk under memory pressure", exc)
        return None


def _read_bodies(
    store: Store, pages: PageFile | None, queue: str, uid: int, stored: list[int], paged: list[int]
) -> dict[int, Message]:
    """Bodies read back from disk (in a worker thread): the store has the persisted ones
    (``stored``, by seq), the page file the rest."""
    bodies = store.read_messages(queue, stored) if stored else {}
    if paged:
        assert pages is not None, "only a page file lets a queue drop such a body"
        bodies.update(pages.read(uid, paged))
    return bodies


async def _recover(broker: Broker, store: Store) -> None:
    started = time.monotonic()
    # Off the event loop: nothing else runs yet, and the rows stream from the store's cursor.
    snapshot = await trio.to_thread.run_sync(store.load)
    now = time.time()  # recovery compares remembered deadlines with it
    count = await trio.to_thread.run_sync(functools.partial(broker.restore, snapshot, now=now))
    if snapshot.queues or snapshot.exchanges:
        log.info(
            "recovered %d exchanges, %d queues, %d bindings, %d messages in %.2fs%s",
            len(snapshot.exchanges),
            len(snapshot.queues),
            len(snapshot.bindings),
            count,
            time.monotonic() - started,
            "" if snapshot.clean_shutdown else " (after an unclean shutdown: marked redelivered)",
        )


async def _serve(
    broker: Broker,
    store: Store,
    pages: PageFile | None,
    config: ServerConfig,
    task_status: trio.TaskStatus[ServerAddress],
) -> None:
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    sockname = listeners[0].socket.getsockname()
    address = ServerAddress(sockname[0], sockname[1])
    ids = itertools.count(1)
    registry = Registry()
    # The broker's clock: wall-clock seconds, advancing with trio's monotonic clock (so it
    # never jumps, and tests can drive it with trio's MockClock).
    epoch = time.time() - trio.current_time()

    def clock() -> float:
        return epoch + trio.current_time()

    shell = Shell(
        broker=broker,
        config=config,
        clock=clock,
        registry=registry,
        max_connections=config.max_connections or resources.connection_limit(),
    )

    async def handle(stream: trio.SocketStream) -> None:
        host = _peer_host(stream)
        refusal = shell.admit(host)
        try:
            if refusal is not None:
                await _refuse(stream, refusal)
            else:
                await ServerConnection(shell, stream, f"conn-{next(ids)}").run()
        finally:
            shell.leave(host)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_timer, shell, epoch)
        nursery.start_soon(_page_in, shell, store, pages)
        nursery.start_soon(_sample_rates, broker, registry)
        if broker.journal is not None:
            disk = DiskWatch(shell, config.data_dir, config.disk_free_limit)
            nursery.start_soon(_committer, shell, store, disk)
            if config.data_dir is not None:
                nursery.start_soon(disk.run)
        if pages is not None:
            nursery.start_soon(_pager, shell, pages)
        for listener in listeners:
            nursery.start_soon(_accept, shell, listener, nursery, handle)
        log.info("mqroute %s listening on %s", __version__, address.url)
        task_status.started(address)


@attrs.define(eq=False)
class Shell:
    """What every connection of one server shares, and the carrying out of what the core's
    calls left behind (``drain``)."""

    broker: Broker
    config: ServerConfig
    clock: Callable[[], float]
    registry: Registry
    max_connections: int = 10_000
    bad_log: LogLimit = attrs.Factory(LogLimit)
    by_session: dict[int, ServerConnection] = attrs.Factory(dict)
    open_connections: int = 0
    by_host: dict[str, int] = attrs.Factory(dict)
    # What drain wakes: the timer (and the deadline it sleeps until), the committer, the
    # page-in task (and the page-ins it has to do), and who waits for a queue's page-in.
    timer_wake: trio.Event = attrs.Factory(trio.Event)
    timer_at: float | None = None
    commit_wake: trio.Event = attrs.Factory(trio.Event)
    page_in_wake: trio.Event = attrs.Factory(trio.Event)
    page_ins: deque[PageIn] = attrs.Factory(deque)
    read_back: dict[int, trio.Event] = attrs.Factory(dict)  # by queue uid
    # Answers held until the batch then being filled is committed: (batch number, slot, conn).
    after_commit: deque[tuple[int, list[Any], ServerConnection]] = attrs.Factory(deque)

    def admit(self, host: str) -> str | None:
        """Count a new client in; the reason to refuse it, if over a connection limit."""
        self.open_connections += 1
        self.by_host[host] = self.by_host.get(host, 0) + 1
        if self.open_connections > self.max_connections:
            return f"too many connections: the broker takes at most {self.max_connections}"
        if self.by_host[host] > self.config.max_connections_per_host:
            return (
                f"too many connections from {host}: at most "
                f"{self.config.max_connections_per_host} per address"
            )
        return None

    def leave(self, host: str) -> None:
        self.open_connections -= 1
        left = self.by_host[host] - 1
        if left:
            self.by_host[host] = left
        else:
            del self.by_host[host]

    def log_limited(self, message: str, *args: object, exc_info: bool = False) -> None:
        """A line clients can cause: at most a few a minute, with a count of the rest. With
        ``exc_info`` it is an error with its traceback (a bug a client may trigger at will)."""
        allowed, suppressed = self.bad_log.allow(trio.current_time())
        if allowed:
            if suppressed:
                message += f" ({suppressed} similar lines suppressed)"
            log.log(
                logging.ERROR if exc_info else logging.WARNING, message, *args, exc_info=exc_info
            )

    def drain(self) -> None:
        """Carry out what the core's calls left in ``broker.effects`` (see core/effects.py).
        Cheap when nothing is there: every task runs it after its round of calls, before it
        waits."""
        effects = self.broker.effects
        if effects.output:
            by_session = self.by_session
            for session_id in effects.output:
                conn = by_session.get(session_id)
                if conn is not None:
                    conn._wake()
            effects.output.clear()
        if effects.deadline is not None:
            if self.timer_at is None or effects.deadline < self.timer_at:
                self.timer_wake.set()
            effects.deadline = None
        if effects.page_ins:
            self.page_ins.extend(effects.take_page_ins())
            self.page_in_wake.set()
        journal = effects.journal
        if journal is not None and len(journal):
            self.commit_wake.set()
        self.apply_flow()

    def hold_until_committed(self, conn: ServerConnection, slot: list[Any]) -> None:
        """Send this answer once what is journaled now is on disk."""
        journal = self.broker.journal
        assert journal is not None
        slot[1] = False
        self.after_commit.append((journal.number, slot, conn))

    def committed(self, number: int) -> None:
        """Batch ``number`` is on disk: the answers that waited for it go out."""
        waiting = self.after_commit
        while waiting and waiting[0][0] <= number:
            _, slot, conn = waiting.popleft()
            slot[1] = True
            conn._wake()

    async def wait_read_back(self, queue: MessageQueue) -> None:
        """Until a page-in of ``queue``'s messages is done (drain first: it may be the one
        just asked for)."""
        self.drain()
        if not queue.paging_in:
            return
        event = self.read_back.get(queue.uid)
        if event is None:
            event = self.read_back[queue.uid] = trio.Event()
        await event.wait()

    def apply_flow(self) -> None:
        """Tell each connection the core blocked or unblocked whether it may publish. Cheap
        when nothing changed."""
        flow = self.broker.flow
        flow.check()
        for session, reason in flow.take_changes().items():
            conn = self.by_session.get(session)
            if conn is not None:
                conn.set_blocked(reason)


async def _timer(shell: Shell, epoch: float) -> None:
    """Sleep until the broker's next deadline (or until an earlier one appears), then act."""
    broker, clock = shell.broker, shell.clock
    while True:
        wake = shell.timer_wake = trio.Event()
        deadline = shell.timer_at = broker.next_deadline()
        with trio.move_on_at(math.inf if deadline is None else deadline - epoch):
            await wake.wait()
        try:
            broker.expire(now=clock())
        except Exception:
            # The core fails single messages, not the timer; this is the last line of defence.
            log.exception("timer: internal error while expiring; the broker goes on")
            await trio.sleep(TIMER_FAILURE_BACKOFF)  # never a hot loop on a failing deadline
        shell.drain()


async def _page_in(shell: Shell, store: Store, pages: PageFile | None) -> None:
    """Read back the bodies the core asked for, off the event loop, one page at a time; a
    read that fails is tried again (the messages wait on disk, nothing is lost)."""
    broker, waiting = shell.broker, shell.page_ins
    failing = False
    while True:
        if not waiting:
            shell.page_in_wake = trio.Event()
            await shell.page_in_wake.wait()
            continue
        request = waiting[0]
        queue = request.queue
        stored = [e.seq for e in request.entries if e.persisted]
        paged = [e.seq for e in request.entries if not e.persisted]
        try:
            bodies = await trio.to_thread.run_sync(
                _read_bodies, store, pages, queue.name, queue.uid, stored, paged
            )
        except Exception as exc:
            if not failing:
                log.error(
                    "cannot read messages of queue %r back from disk (%s); retrying",
                    queue.name,
                    exc,
                )
            failing = True
            await trio.sleep(WRITE_RETRY_SECONDS)
            continue
        if failing:
            log.info("reading messages back from disk again")
            failing = False
        waiting.popleft()
        broker.paged_in(request, bodies, now=shell.clock())
        del bodies, request
        if not queue.paging_in:
            event = shell.read_back.pop(queue.uid, None)
            if event is not None:
                event.set()
        shell.drain()


async def _sample_rates(broker: Broker, registry: Registry) -> None:
    """Per-queue publish and deliver rates for ``mqroute list queues``, every few seconds."""
    while True:
        registry.sample(broker, trio.current_time())
        await trio.sleep(RATE_INTERVAL)


class DiskWatch:
    """The disk alarm: free space under the limit, or a write the store could not make."""

    def __init__(self, shell: Shell, data_dir: Path | None, limit: int) -> None:
        self.shell = shell
        self.data_dir = data_dir
        self.limit = limit
        self.low_space: str | None = None
        self.write_error: str | None = None

    async def run(self) -> None:
        assert self.data_dir is not None
        while True:
            try:
                free = resources.disk_free(self.data_dir)  # one statvfs: microseconds
            except OSError as exc:
                log.warning("cannot measure free disk space of %s: %s", self.data_dir, exc)
            else:
                low = None
                if free < self.limit:
                    low = (
                        f"disk alarm: {resources.human(free)} free for {self.data_dir}, under "
                        f"the limit of {resources.human(self.limit)}"
                    )
                if low != self.low_space:
                    self.low_space = low
                    self._update()
            await trio.sleep(DISK_CHECK_INTERVAL)

    def write_failed(self, reason: str) -> None:
        self.write_error = f"disk alarm: {reason}"
        self._update()

    def write_succeeded(self) -> None:
        if self.write_error is not None:
            self.write_error = None
            self._update()

    def _update(self) -> None:
        reason = self.write_error or self.low_space
        flow = self.shell.broker.flow
        if reason != flow.disk_alarm:
            if reason is None:
                log.info("disk alarm cleared: publishers of persistent messages may go on")
            else:
                log.warning("%s; publishers of persistent messages are blocked", reason)
        flow.set_disk_alarm(reason)
        self.shell.drain()


async def _committer(shell: Shell, store: Store, disk: DiskWatch) -> None:
    """Group commit: each batch is everything journaled while the previous one was written.

    A batch the store cannot write (a full disk) nacks its publishes and is written again
    with the next one; the broker goes on, and the disk alarm blocks persistent publishers.
    """
    broker = shell.broker
    journal = broker.journal
    assert journal is not None
    while True:
        pending = shell.commit_wake = trio.Event()
        if not len(journal):
            if disk.write_error is None:
                await pending.wait()
            else:  # nothing to write, but the alarm ends only with a write that works
                with trio.move_on_after(WRITE_RETRY_SECONDS):
                    await pending.wait()
                if not len(journal):
                    try:
                        await trio.to_thread.run_sync(store.probe)
                    except Exception:
                        continue
                    disk.write_succeeded()
                    continue
        batch = journal.take()
        try:
            await trio.to_thread.run_sync(store.write, batch.records)
        except Exception as exc:
            reason = f"the store could not write ({exc})"
            log.error("%s: nacked %d publishes; retrying the rest", reason, len(batch.confirms))
            if broker.batch_failed(batch, reason):
                shell.committed(batch.number)
            disk.write_failed(reason)
            shell.drain()
            await trio.sleep(WRITE_RETRY_SECONDS)
            continue
        disk.write_succeeded()
        broker.batch_committed(batch)
        shell.committed(batch.number)
        shell.drain()


async def _pager(shell: Shell, pages: PageFile) -> None:
    """Carry out the core's paging: write bodies to the page file (off the event loop), then
    let the queues drop them; delete the rows of messages that are gone."""
    broker = shell.broker
    pager = broker.pager
    failing = False
    next_trim = 0.0
    while True:
        work = pager.take(broker.queues.values(), PAGE_BATCH_BYTES)
        if work.empty:
            shell.drain()  # take may have found paging caught up: its publishers go on
            await trio.sleep(PAGER_INTERVAL if broker.flow.paging else PAGER_IDLE_INTERVAL)
            continue
        out = [(q.uid, e.seq, e.message) for q, e in work.out if e.message is not None]
        try:
            await trio.to_thread.run_sync(pages.apply, out, work.drop, work.drop_queues)
        except Exception as exc:
            pager.failed(work)
            if not failing:
                log.error(
                    "paging: cannot write to %s (%s); messages stay in memory, where the "
                    "memory alarm bounds them",
                    pages.path,
                    exc,
                )
            failing = True
            await trio.sleep(WRITE_RETRY_SECONDS)
            continue
        if failing:
            log.info("paging: writing to %s again", pages.path)
            failing = False
        pager.written(work)
        del out, work  # the bodies just paged out are free from here on
        shell.drain()
        if trio.current_time() >= next_trim:
            next_trim = trio.current_time() + TRIM_INTERVAL
            await trio.to_thread.run_sync(resources.release_free_memory)


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
    if isinstance(event, Delivery):
        m = event.message
        return Deliver(
            consumer_tag=event.consumer_tag,
            delivery_tag=event.delivery_tag,
            redelivered=event.redelivered,
            exchange=event.exchange,
            routing_key=event.routing_key,
            body=m.body,
            properties=m.properties,
        )
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
    return Cancelled(consumer_tag=event.consumer_tag, reason=event.reason)


_DESCRIPTOR_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def _accept(
    shell: Shell,
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept clients for ever. Out of file descriptors, it logs (a few times a minute, not
    per attempt) and waits a moment; the connection limit keeps that rare."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _DESCRIPTOR_ERRORS:
                raise
            shell.log_limited("cannot accept a client: %s; new clients wait", exc.strerror)
            await trio.sleep(ACCEPT_BACKOFF)
            continue
        nursery.start_soon(handle, stream)


async def _refuse(stream: trio.SocketStream, reason: str) -> None:
    """Tell a client over a limit why, then close: it never gets a session."""
    close = Connection(Role.SERVER).send(Close(code="RESOURCE_ERROR", text=reason))
    with trio.move_on_after(1):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(close)
    await trio.aclose_forcefully(stream)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client's socket went away (perhaps grouped by a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
