"""Message bodies in the SDK: bytes and str as they are, other values only through a
serializer, and a bad value fails its own publish with a clear error, nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest

import mqroute
from mqroute.server import ServerAddress


@pytest.mark.parametrize("body", [5, True, None, {"id": 1}, [1, 2], 1.5, object()])
async def test_a_body_that_is_not_bytes_or_text_is_refused_without_a_serializer(
    conn: mqroute.Connection, body: Any
) -> None:
    await conn.declare_queue("q")
    with pytest.raises(
        TypeError,
        match=f"must be bytes, bytearray, memoryview or str, not {type(body).__name__}; "
        ".*content_type='application/json'",
    ):
        await conn.publish("", "q", body)
    await conn.publish("", "q", b"after")  # the connection goes on; nothing else was sent
    got = await conn.get("q", auto_ack=True)
    assert got is not None and got.body == b"after"
    assert await conn.get("q") is None


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        (b"raw", b"raw"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        ("h\u00e9", "h\u00e9".encode()),
    ],
)
async def test_bytes_like_and_text_bodies_are_sent_as_they_are(
    conn: mqroute.Connection, body: Any, sent: bytes
) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", body)
    got = await conn.get("q", auto_ack=True)
    assert got is not None and got.body == sent and got.content_type is None


async def test_a_json_content_type_encodes_the_value(conn: mqroute.Connection) -> None:
    await conn.declare_queue("orders")
    order = {"id": 1, "items": ["tea"], "total": 4.5, "note": "caf\u00e9"}
    await conn.publish("", "orders", order, content_type="application/json")
    got = await conn.get("orders", auto_ack=True)
    assert got is not None and got.json() == order and got.content_type == "application/json"


async def test_a_model_with_model_dump_json_is_sent_as_its_json(conn: mqroute.Connection) -> None:
    class Order:  # the part of a pydantic v2 model the serializer uses
        def model_dump_json(self) -> str:
            return '{"id":7}'

    await conn.declare_queue("orders")
    await conn.publish("", "orders", Order(), content_type="application/json")
    got = await conn.get("orders", auto_ack=True)
    assert got is not None and got.body == b'{"id":7}'


async def test_a_value_json_cannot_carry_is_a_clear_error(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    with pytest.raises(TypeError, match="a body of type set cannot be sent as JSON"):
        await conn.publish("", "q", {1, 2}, content_type="application/json")
    with pytest.raises(TypeError, match="a body of type float cannot be sent as JSON"):
        await conn.publish("", "q", float("nan"), content_type="application/json")
    assert await conn.get("q") is None


async def test_a_connection_serializer_encodes_values_and_sets_their_content_type(
    server: ServerAddress,
) -> None:
    def as_lines(value: Any) -> tuple[bytes, str]:
        return "\n".join(map(str, value)).encode(), "text/plain"

    async with mqroute.connect(server.url, serializer=as_lines) as conn:
        await conn.declare_queue("q")
        await conn.publish("", "q", [1, 2])
        await conn.publish("", "q", [3], content_type="text/x-lines")  # given: kept
        await conn.publish("", "q", b"bytes skip it")
        got = [await conn.get("q", auto_ack=True) for _ in range(3)]
    assert [(m.body, m.content_type) for m in got if m is not None] == [
        (b"1\n2", "text/plain"),
        (b"3", "text/x-lines"),
        (b"bytes skip it", None),
    ]


async def test_a_serializer_that_returns_no_bytes_is_named(server: ServerAddress) -> None:
    async with mqroute.connect(server.url, serializer=lambda v: (json.dumps(v), "x")) as conn:
        with pytest.raises(TypeError, match="the serializer returned str, not bytes"):
            await conn.publish("", "q", {"a": 1})


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"a": object()}, "header 'a' holds a value of type object"),
        ({"a": {1, 2}}, "header 'a' holds a value of type set"),
        ({"a": 2**70}, "header 'a' holds an integer outside 64 bits"),
        ({1: "x"}, "headers must be a table with string keys"),
    ],
)
async def test_header_values_tables_cannot_carry_fail_only_that_publish(
    conn: mqroute.Connection, headers: dict[Any, Any], problem: str
) -> None:
    await conn.declare_queue("q")
    with pytest.raises((TypeError, ValueError), match=problem):
        await conn.publish("", "q", b"x", headers=headers)
    await conn.publish("", "q", b"fine", headers={"a": 1})
    got = await conn.get("q", auto_ack=True)
    assert got is not None and got.body == b"fine" and await conn.get("q") is None
