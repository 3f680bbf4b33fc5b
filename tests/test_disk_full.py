"""A full disk: the broker stays up, nacks what it cannot store, blocks persistent publishers
before the disk fills, resumes without a restart, and loses nothing it confirmed."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import mqroute
from mqroute.errors import ResourceError
from mqroute.records import Record
from mqroute.server import ServerAddress, ServerConfig, resources, serve, users
from mqroute.server.store import SqliteStore


class FillingStore(SqliteStore):
    """The real store, whose disk is full while ``full`` is set."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.full = False
        self.refused = 0
        self.refused_twice = threading.Event()  # the committer came back to the same batch

    def write(self, records: Sequence[Record]) -> None:
        if self.full and records:
            self.refused += 1
            if self.refused >= 2:
                self.refused_twice.set()
            raise sqlite3.OperationalError("database or disk is full")
        super().write(records)


@asynccontextmanager
async def running(
    data_dir: Path, store: SqliteStore | None = None, **config: object
) -> AsyncIterator[ServerAddress]:
    # A cheap guest hash: the autojump clock would jump past the connect timeout while a
    # real one is checked in a worker thread.
    if not (data_dir / "definitions.json").exists():
        users.save(data_dir, users.Definitions.default(fast=True))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve(
                ServerConfig(port=0, data_dir=data_dir, **config),  # type: ignore[arg-type]
                store=store,
                task_status=task_status,
            )
        )
        try:
            yield address
        finally:  # a failing test must not leave the server running (and the test hanging)
            nursery.cancel_scope.cancel()


async def test_a_failed_write_nacks_its_publishes_and_the_broker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mqroute.server import shell as server_module

    monkeypatch.setattr(server_module, "WRITE_RETRY_SECONDS", 0.01)
    store = FillingStore(tmp_path)
    async with running(tmp_path, store=store) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q", durable=True)
            await conn.publish("", "q", b"before", persistent=True)
            store.full = True
            with pytest.raises(ResourceError, match="could not write"):
                await conn.publish("", "q", b"refused", persistent=True)
            assert conn.blocked is not None and "disk alarm" in conn.blocked
            # A declaration waits until it is on disk, then is answered.
            declare = trio.Event()

            async def declare_durable() -> None:
                await conn.declare_queue("later", durable=True)
                declare.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(declare_durable)
                await trio.to_thread.run_sync(store.refused_twice.wait)
                assert not declare.is_set()  # still not on disk, so still not answered
                store.full = False  # space was freed: no restart needed
                await declare.wait()
            await conn.publish("", "q", b"after", persistent=True)
            assert conn.blocked is None
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("later", durable=True, passive=True)
        bodies = []
        while (msg := await conn.get("q", auto_ack=True)) is not None:
            bodies.append(msg.body)
    # The refused message may still be delivered once (it stayed queued in memory), but
    # every confirmed one survived the restart.
    assert b"before" in bodies and b"after" in bodies


async def test_low_free_space_blocks_persistent_publishers_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = [10**12]
    monkeypatch.setattr(resources, "disk_free", lambda path: free[0])
    # Store commits run in a thread, which the autojump clock does not wait for: it may jump
    # minutes meanwhile, so heartbeats are off on both sides.
    async with (
        running(tmp_path, disk_free_limit=50_000_000, heartbeat_ms=0) as address,
        mqroute.connect(address.url, heartbeat=0) as persistent,
        mqroute.connect(address.url, heartbeat=0) as transient,
    ):
        await persistent.declare_queue("q", durable=True)
        await persistent.publish("", "q", b"1", persistent=True)
        await transient.publish("", "q", b"1")
        free[0] = 10_000_000
        await trio.sleep(2)  # the disk is looked at every second
        # A round trip each: the server sends Blocked before these answers.
        await persistent.declare_queue("q", durable=True, passive=True)
        await transient.declare_queue("q", durable=True, passive=True)
        assert persistent.blocked is not None and "under the limit" in persistent.blocked
        assert transient.blocked is None
        await transient.publish("", "q", b"2")  # not blocked
        with trio.move_on_after(5):
            await persistent.publish("", "q", b"2", persistent=True)
            pytest.fail("a persistent publish went through during the disk alarm")
        free[0] = 10**12
        await trio.sleep(2)
        await persistent.declare_queue("q", durable=True, passive=True)
        await persistent.publish("", "q", b"3", persistent=True)
        assert persistent.blocked is None


async def test_stopping_when_the_disk_is_full_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path)
    store.load()

    def full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    real_db = store._db

    class FullConnection:
        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith(("INSERT", "PRAGMA wal_checkpoint")):
                full()
            return real_db.execute(sql, *args)

        def close(self) -> None:
            real_db.close()

    store._db = FullConnection()  # type: ignore[assignment]
    store.close()
    assert any("clean shutdown" in r.getMessage() for r in caplog.records)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB file system, so the disk really fills (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all the free space but ``leave`` bytes."""
    filler = disk / "filler"
    free = resources.disk_free(disk)
    with open(filler, "ab") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


async def test_a_really_full_disk_nacks_and_recovers_with_nothing_confirmed_lost(
    small_disk: Path,
) -> None:
    from .helpers import start_server_process

    data = small_disk / "data"
    # No free-space alarm: the writes themselves must fail, and the broker survive that.
    process, url, _ = await start_server_process(data, "--disk-free-limit", "0")
    confirmed: list[bytes] = []
    refused = 0
    async with mqroute.connect(url) as conn:
        await conn.declare_queue("q", durable=True)
        filler = fill(small_disk, leave=1024 * 1024)
        for n in range(200):  # 64 KiB each: far more than the 1 MiB left
            body = b"%05d" % n + b"x" * 65531
            with trio.move_on_after(3) as waiting:  # the disk alarm holds publishes back
                try:
                    await conn.publish("", "q", body, persistent=True)
                    confirmed.append(body[:5])
                except ResourceError:
                    refused += 1
            if refused or waiting.cancelled_caught:
                break
        assert refused and conn.blocked is not None and "disk alarm" in conn.blocked
        assert process.poll() is None  # full, and still up
        filler.unlink()  # space comes back: no restart needed
        with trio.fail_after(10):  # the broker finds out by itself, and unblocks
            await conn.publish("", "q", b"after" + b"x" * 100, persistent=True)
        confirmed.append(b"after")
        fill(small_disk, leave=0)  # stop with the disk full ...
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        await process.wait()
    assert process.returncode == 0
    process, url, _ = await start_server_process(data)  # ... and start with it full
    try:
        (small_disk / "filler").unlink()
        async with mqroute.connect(url) as conn:
            got = []
            while (msg := await conn.get("q", auto_ack=True)) is not None:
                got.append(msg.body[:5])
        assert set(confirmed) <= set(got)  # nothing confirmed is lost
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()


async def test_a_request_waiting_on_a_batch_of_refused_messages_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mqroute.server import shell as server_module

    monkeypatch.setattr(server_module, "WRITE_RETRY_SECONDS", 0.01)
    store = FillingStore(tmp_path)
    async with running(tmp_path, store=store) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
        store.full = True
        pub = conn.publisher()
        confirmation = await pub.publish("", "q", b"refused", persistent=True)
        # Sent right behind the publish, this answer waits for the batch holding it.
        with trio.fail_after(10):
            await conn.declare_queue("q", durable=True, passive=True)
            with pytest.raises(ResourceError):
                await confirmation
