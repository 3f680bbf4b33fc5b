"""Durable declarations and persistent messages through restarts of a real server."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.core.queue import RESIDENT
from mqroute.core.vhost import Vhost
from mqroute.errors import DataDirError, NotFound, StoreError
from mqroute.records import Record
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.store import SqliteStore


@asynccontextmanager
async def running(data_dir: Path, **kw: object) -> AsyncIterator[ServerAddress]:
    """A server on ``data_dir`` for the duration of the block, then a clean shutdown."""
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve(
                ServerConfig(port=0, data_dir=data_dir), task_status=task_status, **kw
            )
        )
        try:
            yield address
        finally:  # a failing test must not leave the server running (and the test hanging)
            nursery.cancel_scope.cancel()


async def test_durable_declarations_survive_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_exchange("orders", "topic", durable=True)
        await conn.declare_exchange("scratch", "fanout")
        await conn.declare_queue("inventory", durable=True, arguments={"x-note": "kept"})
        await conn.declare_queue("temp")
        await conn.bind_queue("inventory", "orders", "order.*")
        await conn.bind_queue("temp", "orders", "#")
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_exchange("orders", "topic", durable=True, passive=True)
        await conn.declare_queue("inventory", durable=True, arguments={"x-note": "kept"})
        for missing in ("scratch",):
            with pytest.raises(NotFound):
                await conn.declare_exchange(missing, "fanout", passive=True)
        with pytest.raises(NotFound):
            await conn.declare_queue("temp", passive=True)
        await conn.publish("orders", "order.created", b"routed by a recovered binding")
        msg = await conn.get("inventory", auto_ack=True)
        assert msg is not None and msg.body == b"routed by a recovered binding"


async def test_persistent_messages_survive_in_order_and_transient_ones_do_not(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("jobs", durable=True)
        await conn.declare_queue("scratch")
        async with conn.publisher() as pub:
            for i in range(5):
                await pub.publish("", "jobs", f"p{i}", persistent=True, message_id=f"m{i}")
                await pub.publish("", "jobs", f"t{i}")  # transient: lost on restart
                await pub.publish("", "scratch", f"s{i}", persistent=True)  # queue not durable
        first = await conn.get("jobs")
        assert first is not None and first.body == b"p0"
        await first.ack()
        second = await conn.get("jobs")  # delivered, never acked
        assert second is not None and second.body == b"t0"
        third = await conn.get("jobs")
        assert third is not None and third.body == b"p1"  # delivered, never acked
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        info = await conn.declare_queue("jobs", durable=True, passive=True)
        assert info.message_count == 4
        got = [await conn.get("jobs", auto_ack=True) for _ in range(4)]
        assert [m.body for m in got if m] == [b"p1", b"p2", b"p3", b"p4"]
        assert [m.redelivered for m in got if m] == [True, False, False, False]
        assert got[0] is not None and got[0].message_id == "m1"
        assert got[0].properties.persistent


async def test_purge_and_delete_are_durable(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("purged", durable=True)
        await conn.declare_queue("deleted", durable=True)
        for q in ("purged", "deleted"):
            await conn.publish("", q, b"x", persistent=True)
        assert await conn.purge_queue("purged") == 1
        assert await conn.delete_queue("deleted") == 1
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        assert (await conn.declare_queue("purged", durable=True, passive=True)).message_count == 0
        with pytest.raises(NotFound):
            await conn.declare_queue("deleted", passive=True)


class GatedStore(SqliteStore):
    """Says when a write starts, then holds it until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.started = trio.Event()
        self.gate = trio.Event()
        self.token = trio.lowlevel.current_trio_token()

    def write(self, records: Sequence[Record]) -> None:
        trio.from_thread.run_sync(self.started.set, trio_token=self.token)
        trio.from_thread.run(self.gate.wait, trio_token=self.token)
        super().write(records)


async def test_confirm_waits_for_the_commit(tmp_path: Path) -> None:
    store = GatedStore(tmp_path)
    async with running(tmp_path, store=store) as address, mqroute.connect(address.url) as conn:
        store.gate.set()
        await conn.declare_queue("q", durable=True)
        store.started, store.gate = trio.Event(), trio.Event()
        confirmed = trio.Event()

        async def publish() -> None:
            await conn.publish("", "q", b"x", persistent=True)
            confirmed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await store.started.wait()  # the message is in a batch being written
            # A round trip: anything the broker sent before its answer has arrived by now.
            await conn.declare_queue("q", durable=True, passive=True)
            assert not confirmed.is_set(), "confirmed before the commit"
            store.gate.set()
            await confirmed.wait()


async def test_a_second_server_cannot_share_the_data_dir(tmp_path: Path) -> None:
    async with running(tmp_path):
        with pytest.raises(DataDirError, match="in use by another mqroute server"):
            await serve(ServerConfig(port=0, data_dir=tmp_path))


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "mqroute.db")
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not mqroute's"):
        SqliteStore(tmp_path)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mqroute.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable mqroute database"):
        SqliteStore(tmp_path)


async def test_a_long_backlog_is_paged_out_and_read_back_in_order(tmp_path: Path) -> None:
    broker = Vhost(durable=True)
    store = SqliteStore(tmp_path)
    async with running(tmp_path, broker=broker, store=store) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("backlog", durable=True)
            async with conn.publisher(max_in_flight=500) as pub:
                for i in range(3000):
                    await pub.publish("", "backlog", f"m{i}".encode() * 10, persistent=True)
            entries = broker.queues["backlog"].ready_entries()
            assert sum(e.message is None for e in entries) >= 3000 - RESIDENT - 500
            bodies = []
            async with conn.consume("backlog", prefetch=100) as messages:
                async for msg in messages:
                    bodies.append(msg.body)
                    await msg.ack()
                    if len(bodies) == 3000:
                        break
            assert bodies == [f"m{i}".encode() * 10 for i in range(3000)]


async def test_recovery_reads_no_bodies_until_dispatch(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
        await conn.publish("", "q", b"body", persistent=True, headers={"k": [1, "v"]})
    broker = Vhost(durable=True)
    async with running(tmp_path, broker=broker, store=SqliteStore(tmp_path)) as address:
        assert [e.message for e in broker.queues["q"].ready_entries()] == [None]
        async with mqroute.connect(address.url) as conn:
            msg = await conn.get("q", auto_ack=True)
            assert msg is not None and msg.body == b"body" and msg.headers == {"k": [1, "v"]}


async def test_an_online_backup_restores_as_an_unclean_shutdown(tmp_path: Path) -> None:
    """As docs/durability.md says: every message redelivered, nothing lost; a copy made
    after a clean stop restores cleanly."""
    import shutil
    import sqlite3

    live, online, stopped = tmp_path / "live", tmp_path / "online", tmp_path / "stopped"
    async with running(live) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
        await conn.publish("", "q", b"never delivered", persistent=True)
        online.mkdir()
        source = sqlite3.connect(live / "mqroute.db")
        with sqlite3.connect(online / "mqroute.db") as target:
            source.backup(target)  # what `sqlite3 mqroute.db ".backup ..."` does
        source.close()
    stopped.mkdir()
    shutil.copy(live / "mqroute.db", stopped / "mqroute.db")
    for data_dir, redelivered in ((online, True), (stopped, False)):
        async with running(data_dir) as address, mqroute.connect(address.url) as conn:
            msg = await conn.get("q", auto_ack=True)
            assert msg is not None and msg.body == b"never delivered"
            assert msg.redelivered is redelivered, data_dir.name
