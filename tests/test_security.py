"""Logins, vhosts, TLS and the safe defaults, on real servers through the SDK."""

from __future__ import annotations

import functools
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

import mqroute
from mqroute.core.access import Permissions
from mqroute.errors import AccessRefused, ConnectionClosed
from mqroute.server import ServerAddress, ServerConfig, serve, users
from mqroute.server.config import TlsConfig
from mqroute.server.startup import _warn_if_exposed
from mqroute.server.users import Definitions, DefinitionsError


def with_user(url: str, user: str, password: str, vhost: str = "") -> str:
    user, password = (urllib.parse.quote(part, safe="") for part in (user, password))
    return url.replace("mqroute://", f"mqroute://{user}:{password}@") + (
        f"/{vhost}" if vhost else ""
    )


@asynccontextmanager
async def running(**config: object) -> AsyncIterator[ServerAddress]:
    async with trio.open_nursery() as nursery:
        settings = {"port": 0, "login_failure_delay": 0.0, **config}
        address = await nursery.start(
            functools.partial(serve, ServerConfig(**settings))  # type: ignore[arg-type]
        )
        try:
            yield address
        finally:
            nursery.cancel_scope.cancel()


def two_users() -> Definitions:
    d = Definitions.default(fast=True)
    d.add_user("alice", "wonderland", fast=True)
    d.set_permissions("alice", "/", Permissions())
    d.add_user("nobody", "pw", fast=True)  # no permission on any vhost
    d.add_user("empty", "pw", fast=True)
    d.set_permissions("empty", "/", Permissions("^$", "^$", "^$"))
    return d


# --- logins ------------------------------------------------------------------------------------


async def test_a_user_logs_in_with_its_password() -> None:
    async with running(definitions=two_users()) as address:
        async with mqroute.connect(with_user(address.url, "alice", "wonderland")) as conn:
            await conn.declare_queue("q")


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "wonderland")])
async def test_a_wrong_password_or_unknown_user_is_refused_alike(user: str, password: str) -> None:
    async with running(definitions=two_users()) as address:
        with pytest.raises(ConnectionClosed) as caught:
            async with mqroute.connect(with_user(address.url, user, password)):
                pass
    assert isinstance(caught.value.reason, AccessRefused)
    assert caught.value.reason.reason == (
        f"login refused for user {user!r}: unknown user or wrong password"
    )


async def test_a_user_without_permissions_on_the_vhost_is_refused() -> None:
    async with running(definitions=two_users()) as address:
        with pytest.raises(ConnectionClosed, match="access to vhost '/' refused for user 'nobody'"):
            async with mqroute.connect(with_user(address.url, "nobody", "pw")):
                pass


async def test_a_failed_login_waits_before_it_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(definitions=two_users(), login_failure_delay=1.0) as address:
        started = trio.current_time()
        with pytest.raises(ConnectionClosed):
            async with mqroute.connect(with_user(address.url, "alice", "nope"), heartbeat=0):
                pass
        assert trio.current_time() - started >= 1.0


async def test_failed_logins_are_logged_once_per_address_with_the_name_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = "eve\n2026-01-01 INFO mqroute: all is well"
    with caplog.at_level(logging.WARNING, logger="mqroute"):
        async with running(definitions=two_users()) as address:
            for _ in range(3):
                with pytest.raises(ConnectionClosed):
                    async with mqroute.connect(with_user(address.url, forged, "x")):
                        pass
    lines = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "'eve\\n2026" in lines[0]


async def test_credentials_appear_in_no_log_repr_or_error(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    with caplog.at_level(logging.DEBUG):
        async with running(definitions=two_users()) as address:
            url = with_user(address.url, "alice", secret)
            conn = mqroute.connect(url)
            with pytest.raises(ConnectionClosed) as caught:
                async with conn:
                    pass
            texts = [str(caught.value), repr(caught.value), repr(conn), conn.url]
            with pytest.raises(ConnectionClosed) as unreachable:
                async with mqroute.connect(url.replace(str(address.port), "1")):
                    pass
            texts.append(str(unreachable.value))
    texts += [r.getMessage() for r in caplog.records]
    assert texts and not [t for t in texts if secret in t]


# --- the anonymous client's probe, rerun --------------------------------------------------------


async def test_the_anonymous_probe_is_refused_at_every_step() -> None:
    """What a client could do before users existed, tried by a user with no permissions."""
    async with running(definitions=two_users()) as address:
        async with mqroute.connect(with_user(address.url, "alice", "wonderland")) as alice:
            await alice.declare_exchange("orders", "topic")
            await alice.declare_queue("billing")
            await alice.bind_queue("billing", "orders", "order.*")
            await alice.publish("orders", "order.paid", b"secret order")
            async with mqroute.connect(with_user(address.url, "empty", "pw")) as probe:
                probes = [
                    probe.inspect("connections"),
                    probe.get("billing"),
                    probe.bind_queue("billing", "orders", "#"),
                    probe.purge_queue("billing"),
                    probe.delete_queue("billing"),
                    probe.delete_exchange("orders"),
                    probe.publish("orders", "order.paid", b"forged"),
                ]
                for attempt in probes:
                    with pytest.raises(AccessRefused):
                        await attempt
                with pytest.raises(AccessRefused):
                    async with probe.consume("billing"):
                        pass
                with pytest.raises(AccessRefused):  # spoofed, and no write permission either
                    await probe.publish("", "billing", b"x", user_id="alice")
            assert (await alice.get("billing")) is not None  # nothing was taken


# --- vhosts -------------------------------------------------------------------------------------


def two_vhosts(data_dir: Path) -> None:
    d = Definitions.default(fast=True)
    d.add_vhost("staging")
    d.set_permissions("guest", "staging", Permissions())
    users.save(data_dir, d)


async def test_two_vhosts_with_the_same_names_never_see_each_other(tmp_path: Path) -> None:
    two_vhosts(tmp_path)
    async with running(data_dir=tmp_path) as address:
        async with (
            mqroute.connect(address.url) as main,
            mqroute.connect(address.url + "/staging") as staging,
        ):
            for conn, body in ((main, b"main"), (staging, b"staging")):
                await conn.declare_queue("jobs", durable=True)
                await conn.publish("", "jobs", body, persistent=True)
            await main.declare_queue("only-main", durable=True)
            with pytest.raises(mqroute.NotFound):
                await staging.declare_queue("only-main", passive=True)
    assert (tmp_path / "vhosts" / "staging").is_dir()
    async with running(data_dir=tmp_path) as address:  # and after a restart
        async with (
            mqroute.connect(address.url) as main,
            mqroute.connect(address.url + "/staging") as staging,
        ):
            for conn, body in ((main, b"main"), (staging, b"staging")):
                msg = await conn.get("jobs")
                assert msg is not None and msg.body == body
                assert await conn.get("jobs") is None


async def test_a_vhost_added_while_running_serves_and_a_deleted_one_closes(
    tmp_path: Path,
) -> None:
    users.save(tmp_path, Definitions.default(fast=True))
    async with running(data_dir=tmp_path) as address:
        with pytest.raises(ConnectionClosed, match="access to vhost 'late'"):
            async with mqroute.connect(address.url + "/late"):
                pass
        d = users.load(tmp_path)
        d.add_vhost("late")
        d.set_permissions("guest", "late", Permissions())
        users.save(tmp_path, d)
        await until_open(address.url + "/late")  # it starts at the next login after the change
        async with mqroute.connect(address.url + "/late") as conn:
            await conn.declare_queue("q")
            d.delete_vhost("late")
            users.save(tmp_path, d)
            with pytest.raises(ConnectionClosed):
                async with mqroute.connect(address.url + "/late"):
                    pass
            with trio.fail_after(5):
                await conn.wait_closed()
            assert not conn.is_open


async def until_open(url: str, **options: object) -> None:
    """Retry connecting (for a change the server sees at its next login) for up to 5 s."""
    with trio.fail_after(5):
        while True:
            try:
                async with mqroute.connect(url, **options) as conn:  # type: ignore[arg-type]
                    await conn.declare_queue("probe", passive=False)
                return
            except ConnectionClosed:
                await trio.sleep(0.01)


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_config(tmp_path: Path, ca: trustme.CA, *, verify_peer: bool = False) -> TlsConfig:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return TlsConfig(
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.pem",
        ca=tmp_path / "ca.pem",
        verify_peer=verify_peer,
    )


def tls_url(address: ServerAddress) -> str:
    return f"mqroutes://127.0.0.1:{address.port}"


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_with_a_good_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    async with running(tls=tls_config(tmp_path, ca)) as address:
        async with mqroute.connect(tls_url(address), ssl_context=client_context(ca)) as conn:
            await conn.declare_queue("q")
            await conn.publish("", "q", b"over tls")
            msg = await conn.get("q")
            assert msg is not None and msg.body == b"over tls"


async def test_tls_refuses_a_server_signed_by_another_ca(tmp_path: Path, ca: trustme.CA) -> None:
    async with running(tls=tls_config(tmp_path, ca)) as address:
        with pytest.raises(ConnectionClosed, match="CERTIFICATE_VERIFY_FAILED"):
            async with mqroute.connect(tls_url(address), ssl_context=client_context(trustme.CA())):
                pass


async def test_tls_with_verify_peer_needs_a_client_certificate(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with running(tls=tls_config(tmp_path, ca, verify_peer=True)) as address:
        with pytest.raises(ConnectionClosed):  # the server ends the handshake
            async with mqroute.connect(tls_url(address), ssl_context=client_context(ca)) as c:
                await c.declare_queue("q")
        context = client_context(ca)
        ca.issue_cert("client@example.com").configure_cert(context)
        async with mqroute.connect(tls_url(address), ssl_context=context) as conn:
            await conn.declare_queue("q")


async def test_a_reloaded_certificate_keeps_open_connections(
    tmp_path: Path, ca: trustme.CA
) -> None:
    from mqroute.server.node import server_ssl_context

    config = tls_config(tmp_path, ca)
    async with running(tls=config) as address:
        async with mqroute.connect(tls_url(address), ssl_context=client_context(ca)) as old:
            renewed = trustme.CA()
            renewed.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                str(tmp_path / "server.pem")
            )
            import os
            import signal

            os.kill(os.getpid(), signal.SIGHUP)  # as `kill -HUP` would
            await until_open(tls_url(address), ssl_context=client_context(renewed))
            await old.declare_queue("probe", passive=True)  # still open, on the old certificate
    assert server_ssl_context(config) is not None


# --- safe defaults ------------------------------------------------------------------------------


def test_listening_beyond_loopback_without_tls_or_with_guest_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="mqroute"):
        _warn_if_exposed(ServerConfig(host="0.0.0.0"), Definitions.default(fast=True))
    text = caplog.text
    assert "without TLS" in text and "--tls-cert" in text
    assert "guest user" in text and "mqroute user delete guest" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mqroute"):
        _warn_if_exposed(ServerConfig(host="127.0.0.1"), Definitions.default(fast=True))
    assert not caplog.text


async def test_require_no_guest_refuses_to_start_while_guest_exists() -> None:
    with pytest.raises(DefinitionsError, match="mqroute user delete guest"):
        await serve(ServerConfig(port=0, require_no_guest=True))


async def test_the_data_directory_is_the_owners_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data_dir=data) as address, mqroute.connect(address.url) as conn:
        await conn.declare_queue("q", durable=True)
        await conn.publish("", "q", b"x", persistent=True)
    assert data.stat().st_mode & 0o777 == 0o700
    files = [p for p in data.iterdir() if p.is_file()]
    assert "definitions.json" in [p.name for p in files]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}


async def test_the_blocking_and_robust_clients_carry_credentials() -> None:
    async with running(definitions=two_users()) as address:
        url = with_user(address.url, "alice", "wonderland")
        async with mqroute.connect_robust(url) as robust:
            await robust.declare_queue("robust-q")

        def blocking() -> None:
            with mqroute.connect_blocking(url) as conn:
                conn.declare_queue("blocking-q")
            with pytest.raises(ConnectionClosed, match="login refused for user 'alice'"):
                mqroute.connect_blocking(with_user(address.url, "alice", "nope"))

        await trio.to_thread.run_sync(blocking)


async def test_without_guest_a_client_that_names_no_user_is_refused() -> None:
    definitions = two_users()
    definitions.delete_user("guest")
    async with running(definitions=definitions) as address:
        with pytest.raises(ConnectionClosed, match="login refused for user 'guest'"):
            async with mqroute.connect(address.url):
                pass
