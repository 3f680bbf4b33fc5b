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
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from .client.loop_thread import LoopThread
from .core.vhost import Vhost
from .server import ServerAddress, ServerConfig, serve, users


class BrokerUrl(str):
    """A broker's native URL (a ``str``, as before), with ``amqp_url`` beside it."""

    amqp_url: str

    def __new__(cls, url: str, amqp_url: str) -> BrokerUrl:
        made = super().__new__(cls, url)
        made.amqp_url = amqp_url
        return made


class BrokerThread:
    """A broker running in a daemon thread until ``stop()``. ``url`` is where it listens.

    With ``user=("name", "password")`` the broker has that user too, an administrator with
    every permission on vhost ``/``, and ``url`` logs in as it (else as guest).
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        heartbeat_ms: int = 60_000,
        user: tuple[str, str] | None = None,
    ) -> None:
        definitions = None
        if user is not None:
            definitions = users.Definitions.default(fast=True)
            definitions.add_user(user[0], user[1], ["administrator"], fast=True)
            definitions.set_permissions(user[0], users.DEFAULT_VHOST, users.Permissions())
        self._user = user
        self._config = ServerConfig(
            port=0,
            amqp_port=0,
            data_dir=data_dir,
            heartbeat_ms=heartbeat_ms,
            definitions=definitions,
        )
        self._address: ServerAddress | None = None
        # The broker's state, for assertions (read only; in memory only: with a data dir,
        # serve() builds its own durable broker).
        self.broker: Vhost | None = Vhost() if data_dir is None else None
        self._loop = LoopThread("mqroute-test-broker")

    @property
    def url(self) -> BrokerUrl:
        """The native URL; its ``amqp_url`` is the AMQP listener's (pika, Celery, …)."""
        assert self._address is not None, "start() first"
        native, amqp = self._address.url, self._address.amqp_url
        if self._user is not None:
            name, password = (urllib.parse.quote(part, safe="") for part in self._user)
            native = native.replace("mqroute://", f"mqroute://{name}:{password}@", 1)
            amqp = amqp.replace("guest:guest@", f"{name}:{password}@", 1)
        return BrokerUrl(native, amqp)

    def start(self) -> BrokerThread:
        async def main(ready: Callable[[], None]) -> None:
            async with trio.open_nursery() as nursery:
                self._address = await nursery.start(
                    lambda task_status: serve(
                        self._config, broker=self.broker, task_status=task_status
                    )
                )
                ready()

        self._loop.start(main)
        return self

    def stop(self) -> None:
        self._loop.stop()


@contextlib.contextmanager
def running_broker(
    *, data_dir: Path | None = None, user: tuple[str, str] | None = None
) -> Iterator[BrokerUrl]:
    """A broker for the ``with`` block; yields its URL (logging in as ``user`` if given)."""
    thread = BrokerThread(data_dir=data_dir, user=user).start()
    try:
        yield thread.url
    finally:
        thread.stop()
