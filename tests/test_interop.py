"""Clients nobody here wrote, unchanged, against the AMQP listener: aio-pika, kombu, a Celery
worker with retries, countdowns and the rpc:// result backend, and a FastStream app. Each
skips when its package is not installed (``pip install -e '.[interop]'``); ``.ci/run`` runs
them when they are.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from mqroute.server import ServerAddress, ServerConfig, serve

pytestmark = pytest.mark.interop
T = TypeVar("T")


@pytest.fixture
async def address(nursery: trio.Nursery) -> AsyncIterator[ServerAddress]:
    config = ServerConfig(port=0, amqp_port=0)
    yield await nursery.start(functools.partial(serve, config))


async def off_loop(fn: Callable[[], T], seconds: float = 60) -> T:
    with trio.fail_after(seconds):
        return await trio.to_thread.run_sync(fn)


async def test_aio_pika_publishes_with_confirms_and_consumes(address: ServerAddress) -> None:
    aio_pika = pytest.importorskip("aio_pika")

    async def main() -> list[bytes]:
        connection = await aio_pika.connect_robust(address.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=100)
            queue = await channel.declare_queue("aio", durable=True)
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(f"m{i}".encode(), delivery_mode=2), routing_key="aio"
                    )
                    for i in range(1000)  # 1,000 confirms in flight
                )
            )
            got = []
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 1000:
                        break
            return got

    got = await off_loop(lambda: asyncio.run(main()))
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(1000))


async def test_kombu_produces_and_consumes(address: ServerAddress) -> None:
    kombu = pytest.importorskip("kombu")

    def work() -> Any:
        with kombu.Connection(address.amqp_url) as connection:
            queue = connection.SimpleQueue("kombu-q")
            queue.put({"order": 7}, serializer="json")
            message = queue.get(block=True, timeout=10)
            message.ack()
            payload = message.payload
            queue.close()
            return payload

    assert await off_loop(work) == {"order": 7}


TASKS = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from celery import Celery

    app = Celery("tasks", broker=os.environ["BROKER"], backend="rpc://")
    app.conf.broker_connection_retry_on_startup = True

    @app.task
    def add(x, y):
        return x + y

    @app.task(bind=True, max_retries=3)
    def flaky(self, marker):
        path = Path(marker)
        if not path.exists():
            path.write_text("failed once")
            raise self.retry(countdown=0.5)
        return "done after a retry"
    """
)


async def test_a_celery_worker_runs_tasks_with_retries_and_countdowns(
    address: ServerAddress, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    (tmp_path / "tasks.py").write_text(TASKS)
    env = {**os.environ, "BROKER": address.amqp_url.rstrip("/") + "//"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-l", "warning"],
        cwd=tmp_path,
        env=env,
    )
    try:

        def work() -> tuple[int, str]:
            sys.path.insert(0, str(tmp_path))
            os.environ["BROKER"] = env["BROKER"]
            try:
                import tasks  # type: ignore[import-not-found]

                later = tasks.add.apply_async((2, 3), countdown=1)
                retried = tasks.flaky.delay(str(tmp_path / "marker"))
                return later.get(timeout=40), retried.get(timeout=40)
            finally:
                sys.path.remove(str(tmp_path))
                sys.modules.pop("tasks", None)

        assert await off_loop(work, 90) == (5, "done after a retry")
    finally:
        worker.terminate()  # a warm shutdown: it closes its connection with the broker here
        await off_loop(functools.partial(worker.wait, 30), 40)


async def test_a_faststream_app_publishes_subscribes_and_answers_requests(
    address: ServerAddress,
) -> None:
    rabbit = pytest.importorskip("faststream.rabbit")

    async def main() -> tuple[list[str], Any]:
        broker = rabbit.RabbitBroker(address.amqp_url)
        seen: list[str] = []
        done = asyncio.Event()

        @broker.subscriber("fs-events")
        async def on_event(body: str) -> None:
            seen.append(body)
            done.set()

        @broker.subscriber("fs-rpc")
        async def on_request(body: str) -> str:
            return body.upper()

        async with broker:
            await broker.start()
            await broker.publish("hello", "fs-events")
            await asyncio.wait_for(done.wait(), 10)
            reply = await broker.request("ping", "fs-rpc", timeout=10)
            return seen, await reply.decode()

    seen, answer = await off_loop(lambda: asyncio.run(main()))
    assert seen == ["hello"] and answer == "PING"
