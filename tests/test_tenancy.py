"""One user cannot reach around permissions to another's queues, nor answer another's RPC:
the side doors, tried as a hostile user with narrow permissions would."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import mqroute
from mqroute.core.access import Permissions
from mqroute.core.vhost import Vhost
from mqroute.errors import AccessRefused
from mqroute.model import REPLY_TO
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.users import Definitions


def definitions() -> Definitions:
    d = Definitions.default(fast=True)
    d.add_user("mgr", "pw", ("management",), fast=True)
    d.set_permissions("mgr", "/", Permissions(configure="^mgr-", write="^mgr-", read="^mgr-"))
    d.add_user("writer", "pw", fast=True)  # may publish through the default exchange
    d.set_permissions("writer", "/", Permissions(configure="^$", write=".*", read="^$"))
    return d


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[tuple[ServerAddress, Vhost]]:
    broker = Vhost()
    config = ServerConfig(port=0, definitions=definitions(), login_failure_delay=0.0)
    yield await nursery.start(functools.partial(serve, config, broker=broker)), broker


def as_user(address: ServerAddress, user: str) -> str:
    return f"mqroute://{user}:pw@{address.host}:{address.port}"


async def test_redrive_cannot_write_where_its_caller_may_not(
    world: tuple[ServerAddress, Vhost],
) -> None:
    address, broker = world
    async with mqroute.connect(address.url) as admin:
        await admin.declare_queue("bob-q")
        await admin.publish("", "bob-q", b"bob's")
        await admin.declare_queue("mgr-dlq")
        await admin.declare_exchange("mgr-x", "fanout")
        await admin.bind_queue("mgr-dlq", "mgr-x")
    async with mqroute.connect(as_user(address, "mgr")) as mgr:
        with pytest.raises(AccessRefused):  # the front door is shut
            await mgr.publish("", "bob-q", b"direct")
        await mgr.publish("mgr-x", "", b"forged", headers={"x-last-death-queue": "bob-q"})
        with pytest.raises(AccessRefused, match="write"):  # and so is the side door
            await mgr.redrive("mgr-dlq")
    assert len(broker.queues["bob-q"]) == 1 and len(broker.queues["mgr-dlq"]) == 1


async def test_direct_reply_to_addresses_cannot_be_guessed(
    world: tuple[ServerAddress, Vhost],
) -> None:
    address, _ = world
    async with mqroute.connect(address.url) as requester:
        await requester.declare_queue("rpc")
        async with requester.consume(REPLY_TO, auto_ack=True) as replies:
            await requester.publish("", "rpc", b"question", reply_to=REPLY_TO)
            request = await requester.get("rpc", auto_ack=True)
            assert request is not None and request.reply_to is not None
            token = request.reply_to.removeprefix(REPLY_TO + ".")
            assert len(token) >= 22  # 128 random bits, base64
            async with mqroute.connect(as_user(address, "writer")) as forger:
                async with forger.publisher() as pub:
                    for n in range(1, 200):
                        await pub.publish("", f"{REPLY_TO}.{n}", f"FORGED REPLY {n}".encode())
                await forger.publish("", request.reply_to, b"the real answer")
            answer = await replies.__anext__()
            assert answer.body == b"the real answer"


# --- logins ------------------------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password check the node makes, by the password tried, in order."""
    import mqroute.server.node as node_module

    calls: list[str] = []
    real = node_module.verify_password

    def verify(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(node_module, "verify_password", verify)
    return calls


async def test_an_unknown_user_costs_the_same_hash_as_a_wrong_password(
    world: tuple[ServerAddress, Vhost], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = world
    calls = counting(monkeypatch)
    for user in ("nobody", "mgr"):
        with pytest.raises(mqroute.MQRouteError, match="unknown user or wrong password"):
            async with mqroute.connect(f"mqroute://{user}:wrong@127.0.0.1:{address.port}"):
                pass
    assert calls == ["wrong", "wrong"]  # one hash each: the refusals take the same time


async def test_guessers_hold_one_place_in_the_hashing_line(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mqroute.server.node import HASHES_IN_FLIGHT

    d = Definitions.default(fast=True)
    d.add_user("bob", "bobs secret")  # real scrypt: checked in a worker thread
    d.add_user("alice", "alices secret")
    d.set_permissions("alice", "/", Permissions(".*", ".*", ".*"))
    config = ServerConfig(port=0, definitions=d, login_failure_delay=0.0)
    address = await nursery.start(functools.partial(serve, config))
    calls = counting(monkeypatch)

    async def guess(n: int) -> None:
        with pytest.raises(mqroute.MQRouteError):
            async with mqroute.connect(f"mqroute://bob:guess{n}@127.0.0.1:{address.port}"):
                pass

    async with trio.open_nursery() as guessers:
        for n in range(20):
            guessers.start_soon(guess, n)
        await trio.testing.wait_all_tasks_blocked()  # all twenty wait for their hashes
        url = f"mqroute://alice:alices%20secret@127.0.0.1:{address.port}"
        async with mqroute.connect(url) as conn:
            await conn.declare_queue("alice-q")
    assert calls.index("alices secret") <= HASHES_IN_FLIGHT  # not behind twenty guesses
