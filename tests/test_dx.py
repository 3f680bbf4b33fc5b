"""Developer experience: message.process(), the blocking client, the embedded test broker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import mqroute
from mqroute.core.vhost import Vhost
from mqroute.errors import UsageError
from mqroute.testing import running_broker


async def test_process_acks_on_success_and_nacks_on_error(
    conn: mqroute.Connection, broker: Vhost
) -> None:
    await conn.declare_queue("q", arguments={"x-dead-letter-exchange": ""})
    await conn.publish("", "q", b"fine")
    await conn.publish("", "q", b"boom")
    fine = await conn.get("q")
    assert fine is not None
    async with fine.process():
        pass
    boom = await conn.get("q")
    assert boom is not None
    with pytest.raises(ValueError):
        async with boom.process(requeue=True):
            raise ValueError("handler failed")
    assert fine.settled and boom.settled
    again = await conn.get("q", auto_ack=True)  # the failed one came back
    assert again is not None and again.body == b"boom" and again.redelivered
    with pytest.raises(UsageError, match="already settled"):
        await fine.ack()


def test_blocking_client_in_plain_threads(mqroute_broker: str) -> None:
    with mqroute.connect_blocking(mqroute_broker) as conn:
        conn.declare_queue("tasks")

        def producer(n: int) -> None:
            for i in range(20):
                conn.publish("", "tasks", f"{n}-{i}", message_id=f"{n}-{i}")

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert conn.declare_queue("tasks", passive=True).message_count == 80
        seen = set()
        for msg in conn.consume("tasks", prefetch=10):
            seen.add(msg.body.decode())
            msg.ack()
            if len(seen) == 80:
                break
        assert seen == {f"{n}-{i}" for n in range(4) for i in range(20)}
        assert conn.get("tasks") is None


def test_the_embedded_broker_can_keep_data_between_runs(tmp_path: Path) -> None:
    with running_broker(data_dir=tmp_path) as url, mqroute.connect_blocking(url) as conn:
        conn.declare_queue("kept", durable=True)
        conn.publish("", "kept", b"still here", persistent=True)
    with running_broker(data_dir=tmp_path) as url, mqroute.connect_blocking(url) as conn:
        msg = conn.get("kept", auto_ack=True)
        assert msg is not None and msg.body == b"still here"


def test_each_embedded_broker_starts_empty(mqroute_broker: str) -> None:
    with mqroute.connect_blocking(mqroute_broker) as conn:
        with pytest.raises(mqroute.NotFound):
            conn.declare_queue("tasks", passive=True)


def test_mqroute_testing_needs_no_import_of_its_own() -> None:
    import subprocess
    import sys

    code = "import mqroute\nwith mqroute.testing.running_broker() as url: print(url)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mqroute://127.0.0.1:")
