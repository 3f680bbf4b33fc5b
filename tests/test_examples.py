"""Each example script runs as documented, as a real subprocess, against a real server."""

from __future__ import annotations

import itertools
import os
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


async def test_rpc_examples(server: ServerAddress) -> None:
    async with trio.open_nursery() as nursery:
        results: dict[str, str] = {}

        async def rpc_server() -> None:
            results["server"] = await run("rpc_server.py", "--url", server.url, "--requests", "3")

        nursery.start_soon(rpc_server)
        out = await run("rpc_client.py", "--url", server.url, "10", "20", "30")
    assert out.splitlines() == ["fib(10) = 55", "fib(20) = 6765", "fib(30) = 832040"]
    assert "fib(30) requested" in results["server"]


async def test_retry_with_backoff_example(server: ServerAddress) -> None:
    out = await run("retry_with_backoff.py", "--url", server.url)
    fails = [line for line in out.splitlines() if "-> fails" in line]
    assert len(fails) == 4  # x-delivery-limit 3: delivered at most 4 times
    waits = [float(line.split("s")[0]) for line in fails]
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps))
    assert "parked in payments.dlq after 4 attempts: 1 message" in out
    assert "redrove 1 message back" in out and out.rstrip().endswith("-> ok")


async def test_idempotent_consumer_example(server: ServerAddress, tmp_path: Path) -> None:
    out = await run("idempotent_consumer.py", "--url", server.url, "--db", str(tmp_path / "ids.db"))
    assert out.count("skipped duplicate payment-1") == 2
    assert "charges made: 1" in out


async def test_idempotent_consumer_example_does_not_race_the_requeue(
    server: ServerAddress, tmp_path: Path
) -> None:
    """It depends on a requeue that follows an impolite close: run it often, in a thread of
    its own (as a separate process would, it races the server's event loop)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("idempotent", EXAMPLES / "idempotent_consumer.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for i in range(100):  # a get raced the requeue in 1 of 4 runs
        db = tmp_path / f"ids-{i}.db"
        with trio.fail_after(5):
            await trio.to_thread.run_sync(trio.run, example.main, server.url, db)


async def test_peak_shaving_example(server: ServerAddress) -> None:
    out = await run("peak_shaving.py", "--url", server.url, "--messages", "3000", "--workers", "4")
    assert "burst: 3,000 messages queued" in out
    assert "drained 3,000/3,000" in out and "nothing was lost" in out


async def test_headers_routing_example(server: ServerAddress) -> None:
    out = await run("headers_routing.py", "--url", server.url)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["reports-pdf"].endswith("got: Q3 report, EU summary")
    assert lines["eu-anything"].endswith("got: invoice for Berlin, EU summary")


async def test_order_flow_survives_a_stopped_inventory_service(server: ServerAddress) -> None:
    # The inventory service is down while three orders are placed.
    out = await run("order_flow/order_service.py", "--url", server.url, "--orders", "3")
    assert out.count("paid and confirmed to the customer") == 3
    notified = await run(
        "order_flow/notification_service.py", "--url", server.url, "--exit-after", "3"
    )
    assert notified.count("emailed the customer") == 3
    # It comes back and catches up on every order it missed.
    inventory = await run(
        "order_flow/inventory_service.py", "--url", server.url, "--exit-after", "3"
    )
    assert [line.split()[-1] for line in inventory.splitlines()] == ["1", "2", "3"]


async def test_examples_use_mqroute_url_as_the_cli_does(server: ServerAddress) -> None:
    result = await trio.run_process(
        [sys.executable, str(EXAMPLES / "topic_routing.py")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "MQROUTE_URL": server.url},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"inventory" in result.stdout
