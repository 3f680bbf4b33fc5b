"""SDK behaviour that needs more than a well-behaved broker: asyncio, dead brokers, big bodies."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import trio
import trio.testing

import mqroute
from mqroute.errors import ConnectionClosed, PreconditionFailed
from mqroute.protocol import NEED_DATA, Connection, Hello, Role, Welcome
from mqroute.server import ServerAddress, ServerConfig, serve


async def test_the_sdk_runs_under_asyncio(server: ServerAddress) -> None:
    async def asyncio_app() -> list[bytes]:
        async with mqroute.connect(server.url, client_name="asyncio") as conn:
            await conn.declare_queue("from-asyncio")
            await conn.publish("", "from-asyncio", b"hello from asyncio")
            async with conn.consume("from-asyncio", prefetch=1) as messages:
                async for msg in messages:
                    await msg.ack()
                    return [msg.body]
        return []

    # The broker runs on trio in this thread; the application runs on asyncio in another.
    got = await trio.to_thread.run_sync(asyncio.run, asyncio_app())
    assert got == [b"hello from asyncio"]


async def test_a_silent_broker_is_detected_by_heartbeats(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def mute_broker(stream: trio.SocketStream) -> None:
        proto = Connection(Role.SERVER)
        while (event := proto.next_event()) is NEED_DATA:
            proto.receive_data(await stream.receive_some(4096))
        assert isinstance(event, Hello)
        welcome = Welcome(
            version=2, server="mute", heartbeat_ms=1000, max_frame_size=1 << 20, connection_id="m"
        )
        await stream.send_all(proto.send(welcome))
        await trio.sleep_forever()  # and never says another word

    [listener] = await nursery.start(
        lambda task_status: trio.serve_tcp(
            mute_broker, 0, host="127.0.0.1", task_status=task_status
        )
    )
    port = listener.socket.getsockname()[1]
    async with mqroute.connect(f"mqroute://127.0.0.1:{port}", heartbeat=1) as conn:
        with pytest.raises(ConnectionClosed, match="missed heartbeats"):
            await conn.declare_queue("q")
        assert 2.0 <= trio.current_time() < 3.0


async def test_bodies_up_to_the_configured_maximum(nursery: trio.Nursery) -> None:
    limit = 20 * 1024 * 1024
    address = await nursery.start(
        lambda task_status: serve(
            ServerConfig(port=0, max_message_size=limit),  # sent as 128 KiB fragments
            task_status=task_status,
        )
    )
    async with mqroute.connect(address.url) as conn:
        await conn.declare_queue("big")
        await conn.publish("", "big", b"\x01" * limit)
        with pytest.raises(PreconditionFailed, match="exceeds the maximum"):
            await conn.publish("", "big", b"\x01" * (limit + 1))
        msg = await conn.get("big", auto_ack=True)
        assert msg is not None and len(msg.body) == limit


async def test_rpc_over_direct_reply_to(
    conn: mqroute.Connection, server: ServerAddress, broker: object
) -> None:
    await conn.declare_queue("rpc.double")

    async def double(request: mqroute.Message) -> bytes:
        return str(2 * int(request.body)).encode()

    async with mqroute.connect(server.url) as worker, trio.open_nursery() as nursery:
        nursery.start_soon(mqroute.serve_rpc, worker, "rpc.double", double)
        replies = [await conn.call("", "rpc.double", str(n), timeout=5) for n in range(3)]
        assert [r.body for r in replies] == [b"0", b"2", b"4"]
        # no queue was declared for the replies
        assert sorted(broker.queues) == ["rpc.double"]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_rpc_timeout_is_a_clear_error(
    autojump_clock: trio.testing.MockClock, conn: mqroute.Connection
) -> None:
    await conn.declare_queue("rpc.nobody")
    with pytest.raises(mqroute.RequestTimeout, match="within 2s"):
        await conn.call("", "rpc.nobody", b"?", timeout=2)
    with pytest.raises(TimeoutError):  # it is a TimeoutError too
        await conn.call("", "rpc.nobody", b"?", timeout=1)


async def test_reply_to_without_a_reply_consumer_is_refused(conn: mqroute.Connection) -> None:
    await conn.declare_queue("q")
    with pytest.raises(PreconditionFailed, match="needs a consumer"):
        await conn.publish("", "q", b"x", reply_to="amq.rabbitmq.reply-to")


async def test_pipelining_consuming_and_rpc_under_asyncio(server: ServerAddress) -> None:
    async def asyncio_app() -> tuple[int, bytes]:
        async with mqroute.connect(server.url) as conn:
            await conn.declare_queue("aio")
            async with conn.publisher(max_in_flight=50) as pub:
                for i in range(200):
                    await pub.publish("", "aio", str(i))
            seen = 0
            async with conn.consume("aio", prefetch=20) as messages:
                async for msg in messages:
                    async with msg.process():
                        seen += 1
                    if seen == 200:
                        break
            await conn.declare_queue("aio.rpc")
            async with mqroute.connect(server.url) as worker:

                async def echo(request: mqroute.Message) -> bytes:
                    return request.body.upper()

                task = asyncio.ensure_future(mqroute.serve_rpc(worker, "aio.rpc", echo))
                reply = await conn.call("", "aio.rpc", b"ping", timeout=5)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return seen, reply.body

    assert await trio.to_thread.run_sync(asyncio.run, asyncio_app()) == (200, b"PING")


async def test_a_consume_loop_over_buffered_messages_stays_cancellable(
    conn: mqroute.Connection,
) -> None:
    from mqroute.client.consumer import CHECKPOINT_EVERY

    await conn.declare_queue("buffered")
    async with conn.publisher() as pub:
        for i in range(3 * CHECKPOINT_EVERY):
            await pub.publish("", "buffered", str(i))
    after_cancel = 0
    async with conn.consume("buffered", prefetch=0, auto_ack=True) as messages:
        with trio.fail_after(10):  # every message buffered before the loop starts
            while messages.buffered < 3 * CHECKPOINT_EVERY:
                await trio.sleep(0.01)
        with trio.CancelScope() as scope:
            async for _ in messages:  # a loop that never awaits anything else
                if scope.cancel_called:
                    after_cancel += 1
                scope.cancel()
    assert 0 <= after_cancel < CHECKPOINT_EVERY


async def _requeued_within(server: ServerAddress, queue: str, seconds: float) -> bytes:
    """Wait for the message another connection left unacked to come back to ``queue``."""
    async with mqroute.connect(server.url, client_name="watcher") as watcher:
        with trio.fail_after(seconds):
            async with watcher.consume(queue, prefetch=1) as messages:
                async for msg in messages:
                    assert msg.redelivered
                    await msg.ack()
                    return msg.body
    raise AssertionError("unreachable")


async def test_leaving_a_connection_by_cancellation_closes_its_socket_at_once(
    server: ServerAddress, conn: mqroute.Connection
) -> None:
    await conn.declare_queue("held")
    await conn.publish("", "held", b"in hand")
    with trio.CancelScope() as scope:
        async with mqroute.connect(server.url, client_name="cancelled") as other:
            assert await other.get("held") is not None  # unacked: held by `other`
            scope.cancel()
            await trio.sleep_forever()
    # The broker requeues when the socket closes; a leaked socket waits 2 heartbeats (120 s).
    assert await _requeued_within(server, "held", 5) == b"in hand"


async def test_leaving_a_robust_connection_closes_its_socket_at_once(
    server: ServerAddress, conn: mqroute.Connection
) -> None:
    await conn.declare_queue("held-robust")
    await conn.publish("", "held-robust", b"in hand")
    async with mqroute.connect_robust(server.url, client_name="robust") as robust:
        assert await robust.get("held-robust") is not None
    assert await _requeued_within(server, "held-robust", 5) == b"in hand"


async def test_a_connection_the_application_closed_says_so(server: ServerAddress) -> None:
    async with mqroute.connect(server.url) as conn:
        pass
    with pytest.raises(ConnectionClosed, match="was closed by this client"):
        await conn.publish("", "q", b"late")


def test_a_confirmation_shows_its_outcome() -> None:
    from mqroute.client.message import Confirmation
    from mqroute.errors import MessageNacked

    confirmation = Confirmation(7)
    assert repr(confirmation) == "<Confirmation of publish 7: pending>"
    confirmation._settle(MessageNacked("queue 'q' is full"))
    assert repr(confirmation) == "<Confirmation of publish 7: MessageNacked: queue 'q' is full>"


async def test_wait_closed_returns_once_the_connection_ended(server: ServerAddress) -> None:
    ended = trio.Event()

    async def watch(conn: mqroute.Connection) -> None:
        await conn.wait_closed()
        ended.set()

    async with trio.open_nursery() as nursery, mqroute.connect(server.url) as conn:
        nursery.start_soon(watch, conn)
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()
        await conn.close()
        await ended.wait()
    assert not conn.is_open
