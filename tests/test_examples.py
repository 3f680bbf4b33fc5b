"""Each example script runs as documented, as a real subprocess, against a real server."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from mqroute.server import ServerAddress

EXAMPLES = Path(__file__).parent.parent / "examples"


async def run(script: str, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.stdout.decode() + result.stderr.decode()


async def test_topic_routing_example(server: ServerAddress) -> None:
    out = await run("topic_routing.py", "--url", server.url)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["inventory"].endswith("got order.created, order.paid")
    assert lines["notifications"].endswith("got order.created, user.created")
    assert "order.shipped.us" in lines["audit"]
    assert lines["eu-shipping"].endswith("got order.shipped.eu")


async def test_pubsub_example(server: ServerAddress) -> None:
    out = await run("pubsub.py", "--url", server.url, "--subscribers", "3", "--messages", "2")
    got = [line for line in out.splitlines() if line.startswith("subscriber")]
    assert len(got) == 3 and all(line.endswith("got: event 1, event 2") for line in got)


async def test_worker_dies_and_its_task_is_redelivered_to_another(server: ServerAddress) -> None:
    out = await run("producer.py", "--url", server.url, "--tasks", "4", "--work", "0")
    assert "sent 4 tasks" in out
    doomed = await run("worker.py", "--url", server.url, "--name", "A", "--die-after", "1")
    assert "[A] got task 1" in doomed and "dying" in doomed
    survivor = await run("worker.py", "--url", server.url, "--name", "B", "--exit-after", "4")
    assert "[B] got task 1 (redelivered)" in survivor
    assert "[B] done 4 tasks" in survivor


async def test_two_workers_together_do_every_task(server: ServerAddress) -> None:
    out = await run("producer.py", "--url", server.url, "--tasks", "6", "--work", "1")
    assert "sent 6 tasks" in out
    results: dict[str, str] = {}

    async def worker(name: str) -> None:
        results[name] = await run(
            "worker.py", "--url", server.url, "--name", name, "--exit-after", "3"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "A")
        nursery.start_soon(worker, "B")
    assert "[A] done 3 tasks" in results["A"] and "[B] done 3 tasks" in results["B"]
    tasks = {
        line.split()[3]
        for out in results.values()
        for line in out.splitlines()
        if " got task " in line
    }
    assert tasks == {"1", "2", "3", "4", "5", "6"}
