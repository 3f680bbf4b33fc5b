"""Starting a broker: what ``mqroute server``, the benchmarks, tests and the crash tests share.

``serve`` locks the data directory, opens the store and the page file, recovers what the store
holds (off the event loop), then runs the shell's tasks. ``run`` readies the process around it
(the garbage collector's threshold, the open file limit) and runs it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import resource
import signal
import time
from pathlib import Path

import trio

from ..core.vhost import Vhost
from ..errors import StoreError
from . import resources
from .config import ServerAddress, ServerConfig
from .datadir import DataDirLock
from .shell import run_shell
from .store import MemoryStore, PageFile, SqliteStore, Store

log = logging.getLogger("mqroute")

# A broker holds many small long-lived objects (queued messages) and makes few cycles: with the
# default threshold of 700 the collector ran every few hundred publishes and cost more than
# 10 % of throughput with a large backlog (docs/performance.md).
GC_THRESHOLD = 50_000


def prepare_process() -> None:
    """Tune this process for a broker: fewer collections, as many descriptors as allowed."""
    gc.set_threshold(GC_THRESHOLD, 20, 10)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # each connection is a file descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.debug("open file limit %d", hard)


def run(config: ServerConfig, *, store: Store | None = None) -> None:
    """Run a broker in this process until SIGINT or SIGTERM (``prepare_process`` first)."""
    prepare_process()
    trio.run(_until_signal, config, store)


async def serve(
    config: ServerConfig = ServerConfig(),
    *,
    broker: Vhost | None = None,
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
            broker = Vhost(
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
        broker.serve_from_disk(reads_back=True, can_page=pages is not None)
        if own_broker:  # what the process holds already counts against the watermark
            broker.flow.memory_baseline = resources.process_memory()  # recovery charges its own
        await _recover(broker, store)
        try:
            await run_shell(broker, store, pages, config, task_status)
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


async def _recover(broker: Vhost, store: Store) -> None:
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


async def _until_signal(config: ServerConfig, store: Store | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(config, store=store, task_status=task_status)
            )
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
