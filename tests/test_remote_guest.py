"""guest may log in from loopback only, tested from a real other address: a network namespace
joined to this one by a veth pair, on addresses this test creates (10.231.<n>.1 here, .2
there) and removes. Needs root and iproute2; without them the test says why it cannot run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import trio

from mqroute.core.access import Permissions
from mqroute.server import ServerConfig, serve
from mqroute.server.users import Definitions

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make a network namespace with a veth pair",
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def other_host() -> Iterator[tuple[str, str]]:
    """A namespace at 10.231.n.2 that reaches this one at 10.231.n.1; (namespace, our address)."""
    n = os.getpid() % 250 + 1
    ns, here, there = f"mqr-test-{os.getpid()}", f"mqv{n}a", f"mqv{n}b"
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"10.231.{n}.1/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"10.231.{n}.2/30", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, f"10.231.{n}.1"
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


CLIENT = textwrap.dedent(
    """
    import sys, trio, mqroute
    async def main(url):
        try:
            async with mqroute.connect(url, connect_timeout=5) as conn:
                await conn.declare_queue("from-afar")
        except mqroute.ConnectionClosed as exc:
            print("refused:", exc)
            return
        print("ok")
    trio.run(main, sys.argv[1])
    """
)


async def from_namespace(ns: str, url: str) -> str:
    result = await trio.run_process(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.stdout.decode().strip() or result.stderr.decode()


async def test_guest_is_refused_from_another_address_and_a_real_user_is_not(
    other_host: tuple[str, str],
) -> None:
    ns, address = other_host
    definitions = Definitions.default(fast=True)
    definitions.add_user("remote", "far-away", fast=True)
    definitions.set_permissions("remote", "/", Permissions())
    config = ServerConfig(host=address, port=0, definitions=definitions, login_failure_delay=0.0)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(functools.partial(serve, config))
        with trio.fail_after(30):
            guest = await from_namespace(ns, f"mqroute://guest:guest@{address}:{bound.port}")
            remote = await from_namespace(ns, f"mqroute://remote:far-away@{address}:{bound.port}")
        nursery.cancel_scope.cancel()
    assert guest.startswith("refused:") and "may only log in from localhost" in guest, guest
    assert remote == "ok", remote
