"""One user cannot reach around permissions to another's queues, nor answer another's RPC:
the side doors, tried as a hostile user with narrow permissions would."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
import trio

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
