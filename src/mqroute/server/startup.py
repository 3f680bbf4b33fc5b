"""Starting a broker: what ``mqroute server``, the benchmarks, tests and the crash tests share.

``serve`` locks the data directory, reads the definitions, opens each vhost's store and page
file, recovers what they hold (off the event loop), then runs the vhosts' tasks and accepts
clients. ``run`` readies the process around it
(the garbage collector's threshold, the open file limit) and runs it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import resource
import signal
import threading
import time
from collections.abc import Iterator

import trio

from ..core.vhost import Vhost
from ..errors import ServerError
from . import resources, users
from .config import ServerAddress, ServerConfig
from .datadir import DataDirLock
from .node import Node, is_loopback
from .shell import accept_clients
from .store import Store
from .users import DefinitionsError

log = logging.getLogger("mqroute")

# A broker holds many small long-lived objects (queued messages) and makes few cycles: with the
# default threshold of 700 the collector ran every few hundred publishes and cost more than
# 10 % of throughput with a large backlog (docs/performance.md).
GC_THRESHOLD = 50_000
DEFINITIONS_CHECK_INTERVAL = 2.0  # seconds between looks at definitions.json


def prepare_process() -> None:
    """Tune this process for a broker: fewer collections, none of them over the code it
    loaded, and as many descriptors as allowed."""
    gc.set_threshold(GC_THRESHOLD, 20, 10)
    # What is loaded now lives as long as the process: a full collection that walked it
    # took 20-30 ms on a 2-core machine, a latency spike for every message in flight.
    gc.freeze()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # each connection is a file descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.debug("open file limit %d", hard)


def run(config: ServerConfig, *, store: Store | None = None) -> None:
    """Run a broker in this process until SIGINT or SIGTERM (``prepare_process`` first)."""
    prepare_process()
    with _start_up_errors():  # the signal handler's nursery groups them too
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

    With ``config.data_dir`` the broker locks that directory, reads its definitions (users,
    vhosts, permissions), recovers what each vhost's SQLite store holds and keeps durable
    state there; without it nothing is written, and the definitions are a new broker's (or
    ``config.definitions``). ``broker`` and ``store`` stand in for vhost ``/``'s own.
    """
    with contextlib.ExitStack() as stack:
        if config.data_dir is not None:
            if store is None:  # a store given is opened by who gave it, lock and all
                stack.enter_context(DataDirLock(config.data_dir))
            definitions = users.load(config.data_dir)
        else:
            definitions = config.definitions or users.Definitions.default(fast=True)
        if config.require_no_guest and users.GUEST in definitions.users:
            raise DefinitionsError(
                "the guest user exists and --require-no-guest is set: delete it first "
                "(mqroute user delete guest)"
            )
        _warn_if_exposed(config, definitions)
        # The broker's clock: wall-clock seconds, advancing with trio's monotonic clock (so it
        # never jumps, and tests can drive it with trio's MockClock).
        epoch = time.time() - trio.current_time()
        node = Node(
            config=config,
            clock=lambda: epoch + trio.current_time(),
            definitions=definitions,
            max_connections=config.max_connections or resources.connection_limit(),
        )
        node.load_tls()
        with _start_up_errors():
            await _serve_node(node, config, broker, store, definitions, task_status)


@contextlib.contextmanager
def _start_up_errors() -> Iterator[None]:
    """A port in use or a store that will not open, raised inside the node's nursery, comes
    out as itself (for the CLI to print), not wrapped in an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], ServerError | OSError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


async def _serve_node(
    node: Node,
    config: ServerConfig,
    broker: Vhost | None,
    store: Store | None,
    definitions: users.Definitions,
    task_status: trio.TaskStatus[ServerAddress],
) -> None:
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        if config.tls is not None and threading.current_thread() is threading.main_thread():
            nursery.start_soon(_reload_tls_on_sighup, node)
        for name in definitions.vhosts:
            given = name == users.DEFAULT_VHOST
            await node.start_vhost(
                name, broker=broker if given else None, store=store if given else None
            )
        if config.data_dir is not None:
            nursery.start_soon(_watch_definitions, node)
        address = await nursery.start(accept_clients, node)
        task_status.started(address)


async def _watch_definitions(node: Node) -> None:
    """Apply what the CLI changed (users, vhosts) within a few seconds, logins or not."""
    while True:
        await trio.sleep(DEFINITIONS_CHECK_INTERVAL)
        node.reload_definitions()


async def _reload_tls_on_sighup(node: Node) -> None:
    """``kill -HUP``: read the certificate again; open connections are not dropped."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            node.load_tls()


def _warn_if_exposed(config: ServerConfig, definitions: users.Definitions) -> None:
    """Say it loudly when the broker listens beyond this machine without TLS or with guest."""
    if is_loopback(config.host) or config.host == "localhost":
        return
    if config.tls is None:
        log.warning(
            "SECURITY: listening on %s without TLS: passwords and messages cross the network "
            "in clear text. Give --tls-cert and --tls-key, or listen on 127.0.0.1.",
            config.host,
        )
    if users.GUEST in definitions.users:
        log.warning(
            "SECURITY: listening on %s while the guest user (password guest) exists. It may "
            "log in from localhost only, but delete it once you have your own users: "
            "mqroute user delete guest",
            config.host,
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
