"""The blocking client offers the async SDK's names: a test compares the two, and each
method added for parity is used once against a real broker."""

from __future__ import annotations

import inspect
import threading

import pytest

import mqroute
from mqroute.client.blocking import BlockingPublisher
from mqroute.client.publisher import Publisher


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize(
    ("async_cls", "blocking_cls"),
    [
        (mqroute.Connection, mqroute.BlockingConnection),
        (Publisher, BlockingPublisher),
    ],
)
def test_the_blocking_classes_have_every_public_name_of_the_async_ones(
    async_cls: type, blocking_cls: type
) -> None:
    assert public_names(async_cls) - public_names(blocking_cls) == set()


def test_every_async_method_of_a_message_has_a_blocking_twin() -> None:
    """Data (body, headers, json() ...) is forwarded; what awaits must be defined."""
    awaiting = {
        name
        for name, value in vars(mqroute.Message).items()
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(value) or hasattr(value, "__wrapped__"))
    }
    assert awaiting >= {"ack", "nack", "reject", "release", "extend", "process"}
    assert awaiting - set(vars(mqroute.BlockingMessage)) == set()


def test_pipelined_publishing_and_admin_calls(mqroute_broker: str) -> None:
    with mqroute.connect_blocking(mqroute_broker) as conn:
        conn.declare_exchange("events", "fanout")
        conn.declare_exchange("audit", "fanout")
        conn.bind_exchange("audit", "events")
        conn.declare_queue("log")
        conn.bind_queue("log", "audit")
        assert conn.explain_route("events", "")["queues"] == ["log"]
        with conn.publisher(max_in_flight=8) as pub:
            confirmations = [pub.publish("events", "", f"e{i}") for i in range(20)]
        assert all(c.done and c.error is None for c in confirmations)
        [row] = [q for q in conn.inspect("queues") if q["name"] == "log"]
        assert row["ready"] == 20
        conn.unbind_exchange("audit", "events")
        assert conn.explain_route("events", "")["queues"] == []


def test_process_and_release(mqroute_broker: str) -> None:
    with mqroute.connect_blocking(mqroute_broker) as conn:
        conn.declare_queue("jobs", arguments={"x-delivery-limit": 0})
        conn.publish("", "jobs", b"one")
        msg = conn.get("jobs")
        assert msg is not None
        msg.release()  # not counted: the delivery limit of 0 keeps it
        msg = conn.get("jobs")
        assert msg is not None and not msg.redelivered
        with msg.process():
            assert msg.body == b"one"
        assert msg.settled and conn.get("jobs") is None


def test_rpc_call(mqroute_broker: str) -> None:
    with (
        mqroute.connect_blocking(mqroute_broker) as server,
        mqroute.connect_blocking(mqroute_broker) as client,
    ):
        server.declare_queue("rpc")

        def answer_one() -> None:
            for request in server.consume("rpc", prefetch=1):
                server.publish(
                    "",
                    request.reply_to,
                    request.body.upper(),
                    correlation_id=request.correlation_id,
                )
                request.ack()
                return

        thread = threading.Thread(target=answer_one)
        thread.start()
        reply = client.call("", "rpc", b"ping", timeout=10)
        thread.join()
        assert reply.body == b"PING"


def test_wait_closed_blocks_until_the_connection_ends(mqroute_broker: str) -> None:
    conn = mqroute.connect_blocking(mqroute_broker)
    ended = threading.Event()

    def watch() -> None:
        conn.wait_closed()
        ended.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert not ended.wait(0.05)  # still open
    conn.close()
    watcher.join(timeout=10)
    assert ended.is_set()
