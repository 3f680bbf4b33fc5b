"""Values a client sends that the broker reads later: none of them may take the broker down.

Each test drives the real server. A failure in a timer, settle or dead-letter path must fail
that one message, with a log line, and leave the process and every connection running.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import mqroute
from mqroute.core import dead_letter
from mqroute.core.vhost import Vhost
from mqroute.errors import InvalidArgument
from mqroute.protocol import Close, Publish
from mqroute.server import ServerAddress

from .helpers import RawClient
from .test_durability import running

POISON_X_DEATH: list[Any] = [1, "text", {"not": "a list"}, [1, "x", None], [{"count": "many"}]]


async def declare_dead_letter_pair(conn: mqroute.Connection, **arguments: Any) -> None:
    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dead")
    await conn.bind_queue("dead", "dlx")
    await conn.declare_queue("work", arguments={"x-dead-letter-exchange": "dlx", **arguments})


@pytest.mark.parametrize("x_death", POISON_X_DEATH, ids=repr)
async def test_poison_x_death_expiring_through_ttl_is_dead_lettered_with_a_fresh_history(
    autojump_clock: object, conn: mqroute.Connection, x_death: Any
) -> None:
    await declare_dead_letter_pair(conn, **{"x-message-ttl": 1000})
    await conn.publish("", "work", b"poison", headers={"x-death": x_death})
    async with conn.consume("dead") as messages:
        dead = await messages.__anext__()
        await dead.ack()
    entry = dead.headers["x-death"][0]  # tables already there stay behind it, as RabbitMQ's
    assert (entry["queue"], entry["reason"], entry["count"]) == ("work", "expired", 1)
    await conn.declare_queue("work", passive=True)  # the broker still answers


@pytest.mark.parametrize("x_death", POISON_X_DEATH, ids=repr)
async def test_poison_x_death_nacked_keeps_the_connection_and_settles_the_message(
    conn: mqroute.Connection, broker: Vhost, x_death: Any
) -> None:
    await declare_dead_letter_pair(conn)
    await conn.publish("", "work", b"poison", headers={"x-death": x_death})
    msg = await conn.get("work")
    assert msg is not None
    await msg.nack(requeue=False)
    dead = await conn.get("dead", auto_ack=True)
    assert dead is not None and dead.headers["x-death"][0]["reason"] == "rejected"
    assert broker.queues["work"].unacked == 0


async def test_a_persistent_poison_message_does_not_stop_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        await conn.declare_exchange("dlx", "fanout", durable=True)
        await conn.declare_queue("dead", durable=True)
        await conn.bind_queue("dead", "dlx")
        await conn.declare_queue(
            "work", durable=True, arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 50}
        )
        await conn.publish("", "work", b"poison", persistent=True, headers={"x-death": 1})
    # It expires in this run or the next; either way the restarted broker serves it.
    async with running(tmp_path) as address, mqroute.connect(address.url) as conn:
        async with conn.consume("dead") as messages:
            with trio.fail_after(10):
                dead = await messages.__anext__()
            await dead.ack()
    assert dead.body == b"poison" and dead.headers["x-death"][0]["reason"] == "expired"


async def test_a_failure_while_dead_lettering_drops_that_message_with_a_log_line(
    conn: mqroute.Connection,
    broker: Vhost,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    await declare_dead_letter_pair(conn)
    await conn.publish("", "work", b"one")
    await conn.publish("", "work", b"two")
    monkeypatch.setattr(dead_letter, "death_headers", broken)
    with caplog.at_level(logging.ERROR, logger="mqroute"):
        first = await conn.get("work")
        assert first is not None
        await first.nack(requeue=False)
        second = await conn.get("work")  # the connection goes on
    assert second is not None and second.body == b"two"
    assert broker.queues["work"].unacked == 1 and len(broker.queues["dead"]) == 0
    assert any("dead-letter" in r.getMessage() and "work" in r.getMessage() for r in caplog.records)


async def test_a_failure_in_the_timer_does_not_stop_the_broker(
    autojump_clock: object,
    conn: mqroute.Connection,
    broker: Vhost,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    real_expire = broker.expire

    def expire_failing_once(*, now: float | None = None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated bug in the timer")
        return real_expire(now=now)

    monkeypatch.setattr(broker, "expire", expire_failing_once)
    await declare_dead_letter_pair(conn, **{"x-message-ttl": 1000})
    with caplog.at_level(logging.ERROR, logger="mqroute"):
        await conn.publish("", "work", b"expires twice over")
        async with conn.consume("dead") as messages:
            dead = await messages.__anext__()
            await dead.ack()
    assert dead.body == b"expires twice over"
    assert any("timer" in r.getMessage() for r in caplog.records)


# --- expiration, x-delay, reply-to ----------------------------------------------------------


@pytest.mark.parametrize("expiration", ["1" + "0" * 400, "9" * 5000, "4294967296", "-1", "1e3"])
async def test_an_out_of_range_expiration_is_refused_with_a_close_frame(
    server: ServerAddress, expiration: str
) -> None:
    raw = await RawClient.connect(server)
    # Sent as raw CBOR: the SDK refuses these values before they leave the process.
    frame = [Publish.frame_type, "", "q", b"x", {"expiration": expiration}, False]
    await raw.stream.send_all(_raw_frame(frame))
    events = await raw.until_closed()
    assert isinstance(events[-1], Close) and "expiration" in events[-1].text
    async with mqroute.connect(server.url) as other:
        await other.declare_queue("still-alive")


def test_the_sdk_refuses_an_out_of_range_expiration_before_sending() -> None:
    with pytest.raises(ValueError, match="expiration"):
        mqroute.Properties(expiration="4294967296")


async def test_the_largest_expiration_is_accepted(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"x", expiration="4294967295")
    assert (await conn.get("q", auto_ack=True)) is not None


@pytest.mark.parametrize("delay", ["soon", -5, 0, 2**63 - 1, 1.5, [1]], ids=repr)
async def test_an_unusable_x_delay_delivers_at_once(conn: mqroute.Connection, delay: Any) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"x", headers={"x-delay": delay})
    msg = await conn.get("q", auto_ack=True)
    assert msg is not None and msg.headers["x-delay"] == delay


async def test_a_reply_to_address_with_a_non_ascii_digit_is_returned(
    conn: mqroute.Connection,
) -> None:
    with pytest.raises(mqroute.MessageReturned):
        await conn.publish("", "amq.rabbitmq.reply-to.²", b"x", mandatory=True)
    await conn.publish("", "amq.rabbitmq.reply-to.²", b"x")  # no route: dropped, confirmed
    await conn.declare_queue("still-alive")


# --- short strings: keys, tags, property strings ---------------------------------------------

LONG = "k" * 256


async def test_a_routing_key_over_255_bytes_is_nacked(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("t", "topic")
    with pytest.raises(InvalidArgument, match=r"routing key .* 255 bytes"):
        await conn.publish("t", LONG, b"x")
    with pytest.raises(InvalidArgument, match="routing key"):
        await conn.publish("t", "é" * 128, b"x")  # 256 bytes in UTF-8
    await conn.publish("t", "k" * 255, b"x")


@pytest.mark.parametrize("kind", ["queue", "exchange"])
async def test_a_binding_key_over_255_bytes_is_refused(conn: mqroute.Connection, kind: str) -> None:
    await conn.declare_exchange("t", "topic")
    await conn.declare_exchange("d", "topic")
    await conn.declare_queue("q")
    bind = conn.bind_queue if kind == "queue" else conn.bind_exchange
    with pytest.raises(InvalidArgument, match=r"routing key .* 255 bytes"):
        await bind("q" if kind == "queue" else "d", "t", "#." * 200 + "#")
    assert (await conn.inspect("bindings")) == []


async def test_a_consumer_tag_over_255_bytes_is_refused(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    with pytest.raises(InvalidArgument, match=r"consumer tag .* 255 bytes"):
        async with conn.consume("q", consumer_tag=LONG):
            pass


def test_property_strings_over_255_bytes_are_refused_by_the_sdk() -> None:
    for name in ("content_type", "message_id", "correlation_id", "reply_to", "type", "app_id"):
        with pytest.raises(ValueError, match=rf"{name} .* 255 bytes"):
            mqroute.Properties(**{name: LONG})


async def test_routing_a_worst_case_topic_key_stays_fast(conn: mqroute.Connection) -> None:
    """The longest binding of '#' words against the longest key: a bounded amount of work."""
    await conn.declare_exchange("t", "topic")
    await conn.declare_queue("q")
    await conn.bind_queue("q", "t", ".".join(["#"] * 128))
    await conn.bind_queue("q", "t", ".".join(["#", "*"] * 64)[:255].rstrip("."))
    key = ".".join(["w"] * 128)
    started = trio.current_time()
    async with conn.publisher() as pub:
        for _ in range(20):
            await pub.publish("t", key, b"x")
    # Generous: the broken matcher took seconds per message; a bounded one takes milliseconds.
    assert trio.current_time() - started < 5
    assert (await conn.declare_queue("q", passive=True)).message_count == 20


def _raw_frame(items: list[Any]) -> bytes:
    import struct

    import cbor2

    payload = cbor2.dumps(items)
    return struct.pack(">I", len(payload)) + payload


async def test_a_bad_property_closes_only_that_connection_with_a_close_frame(
    server: ServerAddress,
) -> None:
    async with mqroute.connect(server.url) as conn:
        raw = await RawClient.connect(server)
        await raw.stream.send_all(
            _raw_frame([Publish.frame_type, "", "q", b"x", {"priority": 999}, False])
        )
        events = await raw.until_closed()
        assert isinstance(events[-1], Close) and "priority" in events[-1].text
        await conn.declare_queue("q")
