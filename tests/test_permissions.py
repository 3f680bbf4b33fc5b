"""The permission matrix, from RabbitMQ's access-control table: every operation, allowed and
denied, for a user with narrow regular expressions, on a real server through the SDK. A
denial is ACCESS_REFUSED naming the user, the vhost, the resource and the permission, and it
changes nothing.

The narrow user may configure names starting ``c-`` or ``cr-``, write ``w-``, read ``r-`` or
``cr-`` (so ``cr-`` names may be configured and read, as an alternate exchange or a
dead-letter exchange asks).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

import mqroute
from mqroute.core.access import Permissions
from mqroute.core.vhost import Vhost
from mqroute.errors import AccessRefused, PreconditionFailed
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.users import Definitions

NARROW = Permissions(configure=r"^(c|cr)-", write=r"^w-", read=r"^(r|cr)-")


def definitions() -> Definitions:
    d = Definitions.default(fast=True)
    d.add_user("narrow", "pw", fast=True)
    d.set_permissions("narrow", "/", NARROW)
    return d


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[tuple[ServerAddress, Vhost]]:
    broker = Vhost()
    config = ServerConfig(port=0, definitions=definitions(), login_failure_delay=0.0)
    address = await nursery.start(functools.partial(serve, config, broker=broker))
    async with mqroute.connect(address.url) as admin:  # guest: everything, from loopback
        for name in ("w-x", "r-x", "c-x-del"):
            await admin.declare_exchange(name, "direct")
        for name in ("w-q", "r-q", "c-q-del"):
            await admin.declare_queue(name)
            await admin.publish("", name, b"m")
        await admin.bind_queue("w-q", "r-x", "k")
        await admin.bind_exchange("w-x", "r-x", "k")
    yield address, broker


def state(broker: Vhost) -> Any:
    """Everything a denied operation must leave as it was."""
    return (
        sorted((n, e.spec) for n, e in broker.exchanges.items()),
        sorted((n, len(q), q.unacked, len(q.consumers)) for n, q in broker.queues.items()),
        sorted(repr(b) for b in broker.bindings()),
        broker.stats().published,
    )


Op = Callable[[mqroute.Connection], Awaitable[object]]


async def consume(conn: mqroute.Connection, queue: str) -> None:
    async with conn.consume(queue) as messages:
        msg = await messages.__anext__()
        await msg.release()


def refused(resource: str, name: str, permission: str) -> str:
    return (
        f"access to {resource} '{name}' in vhost '/' refused for user 'narrow': "
        f"{permission} permission needed"
    )


def tags_refused(what: str, tags: str) -> str:
    return f"{what} refused for user 'narrow': needs the {tags} tag"


# (operation, allowed, denied, the exact denial); None: no denied form (passive declares).
MATRIX: list[tuple[str, Op, Op | None, str | None]] = [
    (
        "exchange.declare",
        lambda c: c.declare_exchange("c-new", "fanout"),
        lambda c: c.declare_exchange("w-new", "fanout"),
        refused("exchange", "w-new", "configure"),
    ),
    (
        "exchange.declare passive",
        lambda c: c.declare_exchange("w-x", "direct", passive=True),
        None,
        None,
    ),
    (
        "exchange.declare with an AE",
        lambda c: c.declare_exchange("cr-ae", "fanout", arguments={"alternate-exchange": "w-x"}),
        lambda c: c.declare_exchange("cr-ae", "fanout", arguments={"alternate-exchange": "r-x"}),
        refused("exchange", "r-x", "write"),
    ),
    (
        "exchange.delete",
        lambda c: c.delete_exchange("c-x-del"),
        lambda c: c.delete_exchange("w-x"),
        refused("exchange", "w-x", "configure"),
    ),
    (
        "queue.declare",
        lambda c: c.declare_queue("c-newq"),
        lambda c: c.declare_queue("w-newq"),
        refused("queue", "w-newq", "configure"),
    ),
    ("queue.declare passive", lambda c: c.declare_queue("w-q", passive=True), None, None),
    (
        "queue.declare with a DLX",
        lambda c: c.declare_queue("cr-dq", arguments={"x-dead-letter-exchange": "w-x"}),
        lambda c: c.declare_queue("c-dq", arguments={"x-dead-letter-exchange": "w-x"}),
        refused("queue", "c-dq", "read"),
    ),
    (
        "queue.delete",
        lambda c: c.delete_queue("c-q-del"),
        lambda c: c.delete_queue("r-q"),
        refused("queue", "r-q", "configure"),
    ),
    (
        "queue.bind (write on the queue)",
        lambda c: c.bind_queue("w-q", "r-x", "new"),
        lambda c: c.bind_queue("r-q", "r-x", "new"),
        refused("queue", "r-q", "write"),
    ),
    (
        "queue.bind (read on the exchange)",
        lambda c: c.bind_queue("w-q", "r-x", "new"),
        lambda c: c.bind_queue("w-q", "w-x", "new"),
        refused("exchange", "w-x", "read"),
    ),
    (
        "queue.unbind",
        lambda c: c.unbind_queue("w-q", "r-x", "k"),
        lambda c: c.unbind_queue("w-q", "w-x", "k"),
        refused("exchange", "w-x", "read"),
    ),
    (
        "exchange.bind (write on the destination)",
        lambda c: c.bind_exchange("w-x", "r-x", "new"),
        lambda c: c.bind_exchange("r-x", "r-x", "new"),
        refused("exchange", "r-x", "write"),
    ),
    (
        "exchange.bind (read on the source)",
        lambda c: c.bind_exchange("w-x", "r-x", "new"),
        lambda c: c.bind_exchange("w-x", "w-x", "new"),
        refused("exchange", "w-x", "read"),
    ),
    (
        "exchange.unbind",
        lambda c: c.unbind_exchange("w-x", "r-x", "k"),
        lambda c: c.unbind_exchange("r-x", "r-x", "k"),
        refused("exchange", "r-x", "write"),
    ),
    (
        "basic.publish",
        lambda c: c.publish("w-x", "k", b"x"),
        lambda c: c.publish("r-x", "k", b"x"),
        refused("exchange", "r-x", "write"),
    ),
    (
        "basic.publish to the default exchange",
        lambda c: c.publish("w-x", "k", b"x"),
        lambda c: c.publish("", "w-q", b"x"),
        refused("exchange", "amq.default", "write"),
    ),
    (
        "basic.consume",
        lambda c: consume(c, "r-q"),
        lambda c: consume(c, "w-q"),
        refused("queue", "w-q", "read"),
    ),
    (
        "basic.get",
        lambda c: c.get("r-q"),
        lambda c: c.get("w-q"),
        refused("queue", "w-q", "read"),
    ),
    (
        "queue.purge",
        lambda c: c.purge_queue("r-q"),
        lambda c: c.purge_queue("w-q"),
        refused("queue", "w-q", "read"),
    ),
    (
        "list queues",
        None,  # type: ignore[list-item]
        lambda c: c.inspect("queues"),
        tags_refused("listing queues", "administrator or management or monitoring"),
    ),
    (
        "list connections",
        None,  # type: ignore[list-item]
        lambda c: c.inspect("connections"),
        tags_refused("listing connections", "administrator or monitoring"),
    ),
    (
        "status",
        None,  # type: ignore[list-item]
        lambda c: c.inspect("status"),
        tags_refused("listing status", "administrator or monitoring"),
    ),
    (
        "route explain",
        None,  # type: ignore[list-item]
        lambda c: c.explain_route("r-x", "k"),
        tags_refused("route explain", "administrator or management or monitoring"),
    ),
    (
        "redrive",
        None,  # type: ignore[list-item]
        lambda c: c.redrive("r-q"),
        tags_refused("redrive", "administrator or management"),
    ),
]

CASES = [
    pytest.param(op, kind, id=f"{name} {kind}")
    for name, allowed, denied, _ in MATRIX
    for op, kind in ((allowed, "allowed"), (denied, "denied"))
    if op is not None
]
DENIALS = {id(denied): text for _, _, denied, text in MATRIX if denied is not None}


@pytest.mark.parametrize(("op", "kind"), CASES)
async def test_the_permission_matrix(world: tuple[ServerAddress, Vhost], op: Op, kind: str) -> None:
    address, broker = world
    url = address.url.replace("mqroute://", "mqroute://narrow:pw@")
    async with mqroute.connect(url) as conn:
        if kind == "allowed":
            await op(conn)
            return
        before = state(broker)
        with pytest.raises(AccessRefused) as caught:
            await op(conn)
        assert caught.value.reason == DENIALS[id(op)]
        assert state(broker) == before
        await conn.declare_queue("w-q", passive=True)  # the connection goes on


async def test_user_id_must_be_the_users_own(world: tuple[ServerAddress, Vhost]) -> None:
    address, broker = world
    url = address.url.replace("mqroute://", "mqroute://narrow:pw@")
    async with mqroute.connect(url) as conn:
        await conn.publish("w-x", "k", b"mine", user_id="narrow")
        before = state(broker)
        with pytest.raises(
            PreconditionFailed,
            match=re.escape("user_id property set to 'guest' but authenticated user was 'narrow'"),
        ):
            await conn.publish("w-x", "k", b"spoofed", user_id="guest")
        assert state(broker) == before
