"""Admin requests through the SDK and the CLI: route explain, listings, status."""

from __future__ import annotations

import json
import sys

import pytest
import trio

import mqroute
from mqroute.errors import InvalidArgument, NotFound
from mqroute.server import ServerAddress


async def cli(server: ServerAddress, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", *args, "--url", server.url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.stdout.decode() + result.stderr.decode()


async def shop(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("shop", "topic", durable=True)
    await conn.declare_exchange("audit", "fanout")
    await conn.bind_exchange("audit", "shop", "#")
    for queue, key in [("inventory", "order.*"), ("mail", "*.created")]:
        await conn.declare_queue(queue)
        await conn.bind_queue(queue, "shop", key)
    await conn.declare_queue("audit-log")
    await conn.bind_queue("audit-log", "audit")


async def test_explain_route_shows_bindings_and_queues(conn: mqroute.Connection) -> None:
    await shop(conn)
    result = await conn.explain_route("shop", "order.created")
    assert sorted(result["queues"]) == ["audit-log", "inventory", "mail"]
    hops = {(s["exchange"], s["routing_key"], s["destination"]) for s in result["steps"]}
    assert hops == {
        ("shop", "order.*", "inventory"),
        ("shop", "*.created", "mail"),
        ("shop", "#", "audit"),
        ("audit", "", "audit-log"),
    }
    nowhere = await conn.explain_route("amq.direct", "nobody")
    assert nowhere == {"queues": [], "steps": []}
    with pytest.raises(NotFound):
        await conn.explain_route("ghost", "k")
    assert await conn.get("inventory") is None  # nothing was published


async def test_explain_route_with_headers(conn: mqroute.Connection) -> None:
    await conn.declare_queue("eu")
    await conn.bind_queue("eu", "amq.headers", "", {"region": "eu", "x-match": "all"})
    hit = await conn.explain_route("amq.headers", "", {"region": "eu"})
    miss = await conn.explain_route("amq.headers", "", {"region": "us"})
    assert hit["queues"] == ["eu"] and miss["queues"] == []


async def test_cli_route_explain(conn: mqroute.Connection, server: ServerAddress) -> None:
    await shop(conn)
    out = await cli(server, "route", "explain", "shop", "user.created")
    assert "shop (topic) --[*.created]--> queue mail" in out
    assert "audit (fanout) --[]--> queue audit-log" in out
    assert "=> 2 queues: " in out
    out = await cli(server, "route", "explain", "shop", "nothing.matches.this")
    assert "=> 1 queue: audit-log" in out
    out = await cli(server, "route", "explain", "amq.headers", "", "--header", "n=1")
    assert "=> no queue" in out


async def test_cli_listings_and_status(conn: mqroute.Connection, server: ServerAddress) -> None:
    await shop(conn)
    await conn.publish("shop", "order.created", b"x")
    async with conn.consume("mail", prefetch=5):
        queues = await cli(server, "list", "queues")
        lines = queues.splitlines()
        assert lines[0].split()[:5] == ["name", "ready", "unacked", "delayed", "consumers"]
        inventory = next(line for line in lines if line.startswith("inventory"))
        assert inventory.split()[1:5] == ["1", "0", "0", "0"]
        rows = [
            json.loads(line)
            for line in (await cli(server, "list", "bindings", "--json")).splitlines()
        ]
        assert {
            "source": "shop",
            "destination": "mail",
            "kind": "queue",
            "routing_key": "*.created",
            "arguments": {},
        } in rows
        consumers = await cli(server, "list", "consumers")
        assert "mail" in consumers and conn.connection_id in consumers
        connections = await cli(server, "list", "connections")
        assert "client" in connections.splitlines()[0] and "test" in connections
        info = json.loads(await cli(server, "status", "--json"))
        assert info["queues"] == 3 and info["connections"] >= 1
        assert info["messages_unacked"] == 1 and info["version"] == mqroute.__version__


async def test_inspect_rejects_unknown_listings(conn: mqroute.Connection) -> None:
    with pytest.raises(InvalidArgument, match="cannot list 'users'"):
        await conn.inspect("users")


async def cli_in(server: ServerAddress, stdin: bytes, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", *args, "--url", server.url],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.stdout.decode() + result.stderr.decode()


async def test_cli_declares_binds_publishes_and_consumes(
    server: ServerAddress, conn: mqroute.Connection, tmp_path: object
) -> None:
    assert "declared" in await cli(
        server, "declare", "exchange", "shop", "--type", "topic", "--durable"
    )
    out = await cli(
        server,
        "declare",
        "queue",
        "orders",
        "--durable",
        "--argument",
        "x-max-length=100",
        "--argument",
        "x-dead-letter-exchange=dlx",
    )
    assert "queue 'orders' declared: 0 messages" in out
    assert "bind: 'shop' --[order.*]--> queue 'orders'" in await cli(
        server, "bind", "shop", "orders", "order.*"
    )
    out = await cli(
        server,
        "publish",
        "shop",
        "order.created",
        '{"id": 1}',
        "--persistent",
        "--property",
        "content_type=application/json",
        "--header",
        "attempt=1",
    )
    assert "published 1 message, all confirmed" in out
    out = await cli_in(server, b"a\nb\nc\n", "publish", "shop", "order.paid", "--lines")
    assert "published 3 messages, all confirmed" in out
    out = await cli(server, "consume", "orders", "--count", "1", "--json", "--requeue")
    first = json.loads(out.splitlines()[0])
    assert first["body"] == '{"id": 1}' and first["properties"]["headers"] == {"attempt": 1}
    assert first["properties"]["content_type"] == "application/json"
    out = await cli(server, "consume", "orders", "--count", "4", "--json")
    got = [json.loads(line) for line in out.splitlines()]
    assert [m["body"] for m in got] == ['{"id": 1}', "a", "b", "c"]
    assert not got[0]["redelivered"]  # a look is no delivery attempt

    assert "purged 0 messages" in await cli(server, "purge", "orders")
    assert "unbind:" in await cli(server, "unbind", "shop", "orders", "order.*")
    assert "deleted with 0 messages" in await cli(server, "delete", "queue", "orders")
    assert "exchange 'shop' deleted" in await cli(server, "delete", "exchange", "shop")
    out = await cli(server, "delete", "queue", "orders")
    assert "Error: NOT_FOUND: no queue 'orders'" in out


async def test_cli_consume_looks_without_using_up_attempts(
    server: ServerAddress, conn: mqroute.Connection
) -> None:
    await conn.declare_queue("tasks", arguments={"x-delivery-limit": 0})
    for i in range(3):
        await conn.publish("", "tasks", f"task {i}", message_id=f"t-{i}", headers={"n": i})
    for _ in range(2):  # each run gets all three ahead (prefetch) and prints one
        out = await cli(server, "consume", "tasks", "--count", "1", "--requeue")
        assert out == '[(default) tasks] task 0  headers={"n": 0}  message_id=t-0\n'
    out = await cli(server, "consume", "tasks", "--count", "1", "--prefetch", "1")
    assert out.startswith("[(default) tasks] task 0")
    out = await cli(server, "consume", "tasks", "--count", "5", "--timeout", "0.5")
    assert [line.split("] ")[1].split("  ")[0] for line in out.splitlines()[:2]] == [
        "task 1",
        "task 2",
    ]
    assert out.splitlines()[2] == "no message for 0.5s; stopping"


async def test_cli_properties_are_typed_by_name_and_checked_before_sending(
    server: ServerAddress, conn: mqroute.Connection
) -> None:
    await conn.declare_queue("q")
    out = await cli(
        server,
        "publish",
        "",
        "q",
        "x",
        "--property",
        "message_id=123",
        "--property",
        "correlation_id=42",
        "--property",
        "priority=5",
    )
    assert "published 1 message" in out
    got = await conn.get("q", auto_ack=True)
    assert got is not None and (got.message_id, got.correlation_id) == ("123", "42")
    assert got.properties.priority == 5
    for bad, problem in [
        ("expiration=abc", "expiration must be a string of milliseconds"),
        ("priority=high", "priority must be an integer, not 'high'"),
        ("colour=red", "no property 'colour'; choose from content_type"),
        ("headers=x", "use --header for headers"),
        ("message_id", "'message_id' is not NAME=VALUE"),
    ]:
        out = await cli(server, "publish", "", "q", "x", "--property", bad)
        assert problem in out and "Traceback" not in out, out
    assert await conn.get("q") is None  # nothing was published


async def test_a_swapped_bind_gets_a_hint(server: ServerAddress, conn: mqroute.Connection) -> None:
    await conn.declare_exchange("shop", "topic")
    await conn.declare_queue("orders")
    out = await cli(server, "bind", "orders", "shop", "order.*")
    assert "no queue 'shop', but there is an exchange of that name and a queue 'orders'" in out
    assert "try mqroute bind shop orders order.*" in out
    with pytest.raises(NotFound, match="the queue and the exchange look swapped"):
        await conn.bind_queue("shop", "orders")  # the SDK's order: queue first
    out = await cli(server, "bind", "nowhere", "orders")
    assert "Error: NOT_FOUND: no exchange 'nowhere'" in out  # nothing swapped: no hint


async def test_cli_rates_say_their_unit(server: ServerAddress, conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    header = (await cli(server, "list", "queues")).splitlines()[0]
    assert "publish/s" in header and "deliver/s" in header


def test_rates_come_from_counts_between_samples() -> None:
    from mqroute.core.vhost import Vhost
    from mqroute.model import Message, QueueSpec
    from mqroute.server.admin import Registry, inspect

    broker, registry = Vhost(), Registry()
    broker.declare_queue("o", QueueSpec(name="q"))
    session = broker.open_session("o")
    registry.sample(broker, 100.0)
    for _ in range(50):
        broker.publish(session, Message(exchange="", routing_key="q", body=b""))
    for _ in range(10):
        broker.get(session, "q", auto_ack=True)
    registry.sample(broker, 105.0)
    [row], total = inspect(broker, registry, "queues")
    assert total == 1
    assert (row["publish_rate"], row["deliver_rate"]) == (10.0, 2.0)


async def test_listings_of_any_length_come_in_pages_of_bounded_size(nursery: trio.Nursery) -> None:
    from mqroute.server import ServerConfig, serve

    # A small maximum message size makes a listing of 3,000 queues larger than one frame.
    address = await nursery.start(
        lambda task_status: serve(
            ServerConfig(port=0, max_message_size=16 * 1024), task_status=task_status
        )
    )
    async with mqroute.connect(address.url) as conn:
        for i in range(3000):
            await conn.declare_queue(f"queue-with-a-long-name-{i:05}", arguments={"x-n": i})
        rows = await conn.inspect("queues")
        assert [r["name"] for r in rows] == sorted(
            f"queue-with-a-long-name-{i:05}" for i in range(3000)
        )
        assert (await conn.inspect("status"))["queues"] == 3000
