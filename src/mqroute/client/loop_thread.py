"""A trio loop on a daemon thread, for code that is not async (the blocking client, the test
broker). ``start(main)`` runs ``await main(ready)`` there and returns once ``main`` calls
``ready()``; ``stop()`` cancels it and joins the thread; ``run(fn, ...)`` runs an async call on
the loop from any other thread and returns its result.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..errors import UsageError


class LoopThread:
    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._main: Callable[[Callable[[], None]], Awaitable[None]] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, main: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        """Run ``main`` on the loop thread; return when it called ``ready()`` (or failed)."""
        self._main = main
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Cancel ``main`` (its cleanup still runs) and wait for the thread to end."""
        if self._token is not None and self._scope is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        if self._thread.is_alive():
            self._thread.join()

    def join(self) -> None:
        """Wait for ``main`` to return by itself."""
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``await fn(*args, **kwargs)`` on the loop, from another thread; returns its result."""
        if self._token is None or not self._thread.is_alive():
            raise UsageError("the loop thread is not running")
        if threading.current_thread() is self._thread:
            raise UsageError("blocking calls cannot be made from the loop's own thread")

        async def call() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    def _run(self) -> None:
        try:
            trio.run(self._loop)
        except BaseException as exc:  # reported to start(), or ends with the thread
            self._error = exc
            self._ready.set()

    async def _loop(self) -> None:
        assert self._main is not None
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            await self._main(self._ready.set)
