"""A real broker for your tests, in your test process, in milliseconds.

::

    from mqroute.testing import running_broker

    def test_my_worker():
        with running_broker() as url:          # a real broker on 127.0.0.1, a free port
            ...                                # your producer and worker, against url

With pytest, the plugin gives a fixture (installed with mqroute; no configuration)::

    def test_orders(mqroute_broker):           # the broker's URL
        ...

The broker runs on trio in a background thread, so the tests themselves can be synchronous,
asyncio or trio. Nothing is written to disk unless ``data_dir`` is given; each broker starts
empty.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import trio

from .broker import Broker
from .server import ServerAddress, ServerConfig, serve


class BrokerThread:
    """A broker running in a daemon thread until ``stop()``. ``url`` is where it listens."""

    def __init__(self, *, data_dir: Path | None = None, heartbeat_ms: int = 60_000) -> None:
        self._config = ServerConfig(port=0, data_dir=data_dir, heartbeat_ms=heartbeat_ms)
        self._started = threading.Event()
        self._address: ServerAddress | None = None
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self.broker: Broker | None = None  # the broker's state, for assertions (read only)
        self._thread = threading.Thread(target=self._run, name="mqroute-test-broker", daemon=True)

    @property
    def url(self) -> str:
        assert self._address is not None, "start() first"
        return self._address.url

    def start(self) -> BrokerThread:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to start(), or lost with the thread
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        if self._config.data_dir is None:
            self.broker = Broker()  # in memory; with a data dir, serve() builds a durable one
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                self._address = await nursery.start(
                    lambda task_status: serve(
                        self._config, broker=self.broker, task_status=task_status
                    )
                )
                self._started.set()


@contextlib.contextmanager
def running_broker(*, data_dir: Path | None = None) -> Iterator[str]:
    """A broker for the ``with`` block; yields its URL."""
    thread = BrokerThread(data_dir=data_dir).start()
    try:
        yield thread.url
    finally:
        thread.stop()
