"""The trio shell: every task the server runs, and the carrying out of the core's effects.

It accepts clients (one nursery per connection, so a failure ends that connection and nothing
else), and runs the tasks the core cannot: the timer (sleeps until the next deadline), the
committer (group commit), the pager (bodies to the page file) and the page-in task (bodies
back from disk), all off the event loop where they touch the disk. ``Shell.drain`` turns what
each round of core calls left in ``broker.effects`` into wake-ups of these tasks and of the
connections' writers.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .. import __version__
from ..core.effects import PageIn
from ..core.queue import MessageQueue
from ..core.vhost import Vhost
from ..errors import ServerError
from ..model import (
    Message,
)
from . import resources
from .admin import Registry
from .amqp_wire import AmqpWire

if TYPE_CHECKING:
    from .node import Node
from .config import ServerAddress, ServerConfig
from .driver import Driver, serve_client
from .native_wire import NativeWire
from .store import PageFile, Store

log = logging.getLogger("mqroute.server")

RATE_INTERVAL = 5.0  # seconds between rate samples
TIMER_FAILURE_BACKOFF = 1.0  # seconds the timer waits after an unexpected failure
ACCEPT_BACKOFF = 0.1  # seconds before accepting again when out of file descriptors
DISK_CHECK_INTERVAL = 1.0  # seconds between two looks at the free disk space
WRITE_RETRY_SECONDS = 1.0  # seconds before a batch the store could not write is tried again
PAGE_BATCH_BYTES = 8 * 1024 * 1024  # bodies written to the page file in one transaction
PAGER_INTERVAL = 0.05  # seconds between looks for bodies to page out, while paging
PAGER_IDLE_INTERVAL = 1.0  # ... and otherwise (rows of gone messages to delete)
# Bodies paged out leave freed memory in the C heap (bodies over 512 B are malloc'd): hand it
# back to the system at most this often while paging (docs/performance.md).
TRIM_INTERVAL = 1.0


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


async def run_vhost(
    shell: Shell, store: Store, pages: PageFile | None, task_status: trio.TaskStatus[None]
) -> None:
    """The tasks of one vhost, until cancelled (its deletion, or the node's end)."""
    broker, config = shell.broker, shell.config
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_timer, shell)
        nursery.start_soon(_page_in, shell, store, pages)
        nursery.start_soon(_sample_rates, broker, shell.registry)
        if broker.journal is not None:
            disk = DiskWatch(shell, config.data_dir, config.disk_free_limit)
            nursery.start_soon(_committer, shell, store, disk)
            if config.data_dir is not None:
                nursery.start_soon(disk.run)
        if pages is not None:
            nursery.start_soon(_pager, shell, pages)
        task_status.started()


async def accept_clients(
    node: Node, task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen and hand each client a connection of its own (one task per connection, so a
    failure ends that connection and nothing else)."""
    config = node.config
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    sockname = listeners[0].socket.getsockname()
    amqp_listeners: list[trio.SocketListener] = []
    if config.amqp_port is not None:
        amqp_host = config.amqp_host or config.host
        try:
            amqp_listeners = await trio.open_tcp_listeners(config.amqp_port, host=amqp_host)
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise ServerError(
                f"cannot listen for AMQP on {amqp_host}:{config.amqp_port}: {exc.strerror} "
                "(choose another with --amqp-port, or turn it off with --no-amqp)"
            ) from None
    address = ServerAddress(
        sockname[0],
        sockname[1],
        amqp_listeners[0].socket.getsockname()[1] if amqp_listeners else None,
    )
    ids = itertools.count(1)

    async def handle(raw: trio.SocketStream) -> None:
        await serve_client(node, raw, f"conn-{next(ids)}", NativeWire)

    async def handle_amqp(raw: trio.SocketStream) -> None:
        await serve_client(node, raw, f"amqp-{next(ids)}", AmqpWire)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, node, listener, nursery, handle)
        for listener in amqp_listeners:
            nursery.start_soon(_accept, node, listener, nursery, handle_amqp)
        log.info("mqroute %s listening on %s", __version__, address.url)
        if amqp_listeners:
            log.info("AMQP 0-9-1 listening on port %d", address.amqp_port)
        task_status.started(address)


@attrs.define(eq=False)
class Shell:
    """What every connection of one server shares, and the carrying out of what the core's
    calls left behind (``drain``)."""

    broker: Vhost
    config: ServerConfig
    clock: Callable[[], float]
    node: Node | None = None  # None in tests of one shell alone
    vhost: str = "/"
    registry: Registry = attrs.Factory(Registry)
    by_session: dict[int, Driver] = attrs.Factory(dict)
    # What drain wakes: the timer (and the deadline it sleeps until), the committer, the
    # page-in task (and the page-ins it has to do), and who waits for a queue's page-in.
    timer_wake: trio.Event = attrs.Factory(trio.Event)
    timer_at: float | None = None
    commit_wake: trio.Event = attrs.Factory(trio.Event)
    page_in_wake: trio.Event = attrs.Factory(trio.Event)
    page_ins: deque[PageIn] = attrs.Factory(deque)
    read_back: dict[int, trio.Event] = attrs.Factory(dict)  # by queue uid
    # Answers held until the batch then being filled is committed: (batch number, slot, conn).
    after_commit: deque[tuple[int, list[Any], Driver]] = attrs.Factory(deque)

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
                    conn.wake()
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

    def hold_until_committed(self, conn: Driver, slot: list[Any]) -> None:
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
            conn.wake()

    async def wait_read_back(self, queue: MessageQueue) -> None:
        """Until a page-in of ``queue``'s messages is done (drain first: it may be the one
        just asked for)."""
        self.drain()
        if not queue.paging_in:
            await trio.lowlevel.checkpoint()  # it came back already; never a hot loop
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
                conn.set_blocked(session, reason)


async def _timer(shell: Shell) -> None:
    """Sleep until the broker's next deadline (or until an earlier one appears), then act."""
    broker, clock = shell.broker, shell.clock
    epoch = clock() - trio.current_time()
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


async def _sample_rates(broker: Vhost, registry: Registry) -> None:
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


_DESCRIPTOR_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def _accept(
    node: Node,
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
            node.log_limited("cannot accept a client: %s; new clients wait", exc.strerror)
            await trio.sleep(ACCEPT_BACKOFF)
            continue
        nursery.start_soon(handle, stream)
