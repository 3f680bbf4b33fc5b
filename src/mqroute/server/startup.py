"""Starting a broker process: what ``mqroute server``, the benchmarks and the crash tests share.

``serve`` (shell.py) locks the data directory, opens the store and recovers it; this module
readies the process around it (the garbage collector's threshold, the open file limit) and
runs it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal

import trio

from .shell import ServerConfig, serve
from .store import Store

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
