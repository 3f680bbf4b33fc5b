"""Crash safety: the server as a subprocess, killed with SIGKILL, restarted on the same data.

The short form runs in the default suite. The long form is run by hand, for example::

    MQROUTE_CRASH_KILLS=20 MQROUTE_CRASH_SECONDS=2 MQROUTE_CRASH_MESSAGES=1000000 \\
        .venv/bin/python -m pytest -s tests/test_crash.py -k random
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.errors import ConnectionClosed, MQRouteError

from .helpers import start_server_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_killed_after_commit_before_confirm_keeps_the_message(tmp_path: Path) -> None:
    server, url, _ = await start_server_process(tmp_path, kill_at=("after-commit", 1))
    async with mqroute.connect(url) as conn:
        await conn.declare_queue("q", durable=True)
        with pytest.raises(ConnectionClosed):
            await conn.publish("", "q", b"unconfirmed but committed", persistent=True)
    assert await server.wait() == -9
    server, url, _ = await start_server_process(tmp_path)
    try:
        async with mqroute.connect(url) as conn:
            msg = await conn.get("q", auto_ack=True)
            assert msg is not None and msg.body == b"unconfirmed but committed"
    finally:
        server.kill()
        await server.wait()


async def test_killed_before_commit_loses_only_the_unconfirmed(tmp_path: Path) -> None:
    server, url, _ = await start_server_process(tmp_path, kill_at=("before-commit", 2))
    async with mqroute.connect(url) as conn:
        await conn.declare_queue("q", durable=True)
        await conn.publish("", "q", b"confirmed", persistent=True)
        with pytest.raises(ConnectionClosed):
            await conn.publish("", "q", b"never committed", persistent=True)
    assert await server.wait() == -9
    server, url, log = await start_server_process(tmp_path)
    try:
        assert any("unclean shutdown" in line for line in log)
        async with mqroute.connect(url) as conn:
            msg = await conn.get("q", auto_ack=True)
            assert msg is not None and msg.body == b"confirmed" and msg.redelivered
            assert await conn.get("q") is None
    finally:
        server.kill()
        await server.wait()


class History:
    """What clients saw, checked like Jepsen's total-queue checker."""

    def __init__(self, queues: list[str]) -> None:
        self.sent: set[str] = set()
        self.confirmed: set[str] = set()
        self.delivered: dict[str, list[str]] = {q: [] for q in queues}
        self.acked: dict[str, set[str]] = {q: set() for q in queues}
        self.redelivered_after_ack = 0

    def report(self) -> dict[str, int]:
        lost = sum(len(self.confirmed - set(d)) for d in self.delivered.values())
        unexpected = sum(len(set(d) - self.sent) for d in self.delivered.values())
        duplicates = sum(len(d) - len(set(d)) for d in self.delivered.values())
        return {
            "sent": len(self.sent),
            "confirmed": len(self.confirmed),
            "lost": lost,
            "unexpected": unexpected,
            "duplicates": duplicates,
            "redelivered_after_ack": self.redelivered_after_ack,
        }


async def test_random_kills_lose_no_confirmed_message(tmp_path: Path) -> None:
    kills = int(os.environ.get("MQROUTE_CRASH_KILLS", "2"))
    seconds = float(os.environ.get("MQROUTE_CRASH_SECONDS", "0.7"))
    per_publisher = int(os.environ.get("MQROUTE_CRASH_MESSAGES", "1500"))
    port = free_port()
    queues = ["inventory", "audit-log"]
    history = History(queues)
    server, url, _ = await start_server_process(tmp_path, port=port)
    async with mqroute.connect(url) as conn:
        await conn.declare_exchange("shop", "topic", durable=True)
        await conn.declare_exchange("audit", "fanout", durable=True)
        await conn.bind_exchange("audit", "shop", "#")
        for q in queues:
            await conn.declare_queue(q, durable=True)
        await conn.bind_queue("inventory", "shop", "order.*")
        await conn.bind_queue("audit-log", "audit")

    stop = trio.Event()

    async def publisher(name: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                async with mqroute.connect(url) as c, c.publisher(max_in_flight=50) as pub:
                    in_flight = []
                    while not stop.is_set() and n < per_publisher:
                        mid = f"{name}-{n}"
                        n += 1
                        history.sent.add(mid)
                        in_flight.append(
                            (
                                mid,
                                await pub.publish(
                                    "shop", "order.created", mid, persistent=True, message_id=mid
                                ),
                            )
                        )
                        for mid, confirmation in [x for x in in_flight if x[1].done]:
                            if confirmation.error is None:
                                history.confirmed.add(mid)
                        in_flight = [x for x in in_flight if not x[1].done]
                    await pub.flush()
                    history.confirmed.update(mid for mid, _ in in_flight)
                    await stop.wait()
            except MQRouteError:
                await trio.sleep(0.05)  # the broker is down: try again

    async def consumer(queue: str) -> None:
        while not stop.is_set():
            try:
                async with mqroute.connect(url) as c, c.consume(queue, prefetch=20) as messages:
                    async for msg in messages:
                        mid = msg.body.decode()
                        if mid in history.acked[queue]:
                            history.redelivered_after_ack += 1
                        history.delivered[queue].append(mid)
                        if random.random() < 0.8:
                            await msg.ack()
                            history.acked[queue].add(mid)
            except MQRouteError:
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(publisher, f"p{i}")
        for q in queues:
            nursery.start_soon(consumer, q)
        for _ in range(kills):
            await trio.sleep(seconds * random.uniform(0.5, 1.5))
            server.kill()
            await server.wait()
            server, _, _ = await start_server_process(tmp_path, port=port)
        await trio.sleep(seconds)
        stop.set()
        nursery.cancel_scope.cancel()
    # Restart once more so nothing is held by a consumer connection the server has not yet
    # seen go; then every message left is ready, and we drain exactly that many.
    server.terminate()
    await server.wait()
    server, _, _ = await start_server_process(tmp_path, port=port)
    try:
        async with mqroute.connect(url) as conn:
            for q in queues:
                left = (await conn.declare_queue(q, durable=True, passive=True)).message_count
                if not left:
                    continue
                async with conn.consume(q, prefetch=1000, auto_ack=True) as messages:
                    async for msg in messages:
                        history.delivered[q].append(msg.body.decode())
                        left -= 1
                        if not left:
                            break
                assert (await conn.declare_queue(q, durable=True, passive=True)).message_count == 0
    finally:
        server.kill()
        await server.wait()
    report = history.report()
    print(f"\ncrash test: kills={kills} {report}")
    assert report["confirmed"] > 0
    assert report["lost"] == 0 and report["unexpected"] == 0, report
