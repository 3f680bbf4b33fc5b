"""The node: one server process, its listeners, its logins and its vhosts (RabbitMQ's word).

Each vhost is a core ``Vhost`` with a ``Shell`` of its own (its store, page file, timer,
committer, pager): an isolated namespace whose data lives apart on disk, ``/`` in the data
directory itself and any other in ``vhosts/<name>/`` beneath it. The node admits clients
(connection limits), logs them in against the definitions (users.py), and hands each to the
shell of the vhost it asked for.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import math
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from ..core.access import Access
from ..core.vhost import Vhost
from ..errors import AccessRefused, StoreError
from . import resources
from .config import ServerConfig, TlsConfig
from .log_limit import LogLimit
from .shell import Shell, run_vhost
from .store import MemoryStore, PageFile, SqliteStore, Store
from .users import (
    DEFAULT_VHOST,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    Definitions,
    PasswordCache,
    definitions_path,
    is_cheap,
    load,
    verify_password,
)

log = logging.getLogger("mqroute.server")

FAILED_LOGIN_LOG_INTERVAL = 60.0  # seconds: a failing address is logged once per interval
TRIM_INTERVAL = 1.0  # seconds between two returns of the C heap's free memory to the system
# Password hashes (scrypt, about 50 ms and 16 MiB each) computed at once; more logins wait
# their turn, each address and user holding one place in the line, so a guesser's hundred
# connections are one place and a login by anyone else is answered after a few hashes.
HASHES_IN_FLIGHT = 2


class LoginRefused(AccessRefused):
    """A login that failed; the text names the user but not why (no user, wrong password)."""


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        context.load_verify_locations(tls.ca)
    if tls.verify_peer:
        context.verify_mode = ssl.CERT_REQUIRED  # RabbitMQ's fail_if_no_peer_cert = true
    return context


def vhost_dir(data_dir: Path, name: str) -> Path:
    """Where vhost ``name`` keeps its data: ``/`` in the data directory, others beneath it."""
    if name == DEFAULT_VHOST:
        return data_dir
    return data_dir / "vhosts" / urllib.parse.quote(name, safe="")


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@attrs.define(eq=False)
class Node:
    config: ServerConfig
    clock: Callable[[], float]
    definitions: Definitions
    shells: dict[str, Shell] = attrs.Factory(dict)
    bad_log: LogLimit = attrs.Factory(LogLimit)
    # Connections opening, closing, blocked: a churning client must not fill the disk either.
    connection_log: LogLimit = attrs.Factory(lambda: LogLimit(burst=100, interval=60.0))
    passwords: PasswordCache = attrs.Factory(PasswordCache)
    max_connections: int = 10_000
    open_connections: int = 0
    by_host: dict[str, int] = attrs.Factory(dict)
    failed_logins: dict[str, tuple[float, int]] = attrs.Factory(dict)  # host -> (logged, count)
    ssl_context: ssl.SSLContext | None = None  # what new TLS clients get (reload: SIGHUP)
    hashing: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(HASHES_IN_FLIGHT))
    _hash_lines: dict[tuple[str, str], trio.Lock] = attrs.Factory(dict)  # (host, user)
    _last_trim: float = -math.inf
    _definitions_mtime: float = 0.0
    _nursery: trio.Nursery | None = None
    _scopes: dict[str, trio.CancelScope] = attrs.Factory(dict)
    _stores: dict[str, Store] = attrs.Factory(dict)

    # --- admission -------------------------------------------------------------------------

    def admit(self, host: str) -> str | None:
        """Count a new client in; the reason to refuse it, if over a connection limit."""
        self.open_connections += 1
        self.by_host[host] = self.by_host.get(host, 0) + 1
        if self.open_connections > self.max_connections:
            return f"too many connections: the broker takes at most {self.max_connections}"
        if self.by_host[host] > self.config.max_connections_per_host:
            return (
                f"too many connections from {host}: at most "
                f"{self.config.max_connections_per_host} per address"
            )
        return None

    def leave(self, host: str) -> None:
        self.open_connections -= 1
        left = self.by_host[host] - 1
        if left:
            self.by_host[host] = left
        else:
            del self.by_host[host]

    def log_limited(
        self, message: str, *args: object, exc_info: bool | BaseException = False
    ) -> None:
        """A line clients can cause: at most a few a minute, with a count of the rest."""
        allowed, suppressed = self.bad_log.allow(trio.current_time())
        if allowed:
            if suppressed:
                message += f" ({suppressed} similar lines suppressed)"
            log.log(
                logging.ERROR if exc_info is not False else logging.WARNING,
                message,
                *args,
                exc_info=exc_info,
            )

    def log_connection(self, message: str, *args: object) -> None:
        """A connection's life at INFO (opened, closed, blocked): a hundred lines a minute at
        most, with a count of the rest, however fast clients come and go."""
        allowed, suppressed = self.connection_log.allow(trio.current_time())
        if allowed:
            if suppressed:
                message += f" ({suppressed} connection lines suppressed)"
            log.info(message, *args)

    async def give_back_memory(self) -> None:
        """A connection that held many sessions closed: what they freed stays in the C heap
        (glibc keeps its pages), so RSS would stay at its high-water mark. Return it, in a
        worker thread, at most once every TRIM_INTERVAL."""
        now = trio.current_time()
        if now - self._last_trim >= TRIM_INTERVAL:
            self._last_trim = now
            await trio.to_thread.run_sync(resources.release_free_memory)

    def load_tls(self) -> None:
        """(Re)read the certificate and key. Connections already open keep theirs; new ones
        get the new. A certificate that cannot be read keeps the old one (and says why)."""
        tls = self.config.tls
        if tls is None:
            return
        try:
            self.ssl_context = server_ssl_context(tls)
        except (OSError, ssl.SSLError) as exc:
            if self.ssl_context is None:
                raise
            log.error("cannot reload the TLS certificate (%s); the old one stays", exc)
            return
        log.info("TLS certificate loaded from %s", tls.cert)

    # --- logins ------------------------------------------------------------------------------

    async def login(self, user: str, password: str, vhost: str, host: str) -> tuple[Shell, Access]:
        """The shell of ``vhost`` and what ``user`` may do there, or LoginRefused /
        AccessRefused, after a delay (``config.login_failure_delay``) that slows guessing."""
        await self.authenticate(user, password, host)
        return await self.open_vhost(user, vhost, host)

    async def authenticate(self, user: str, password: str, host: str) -> None:
        """LoginRefused (after the delay) unless ``user`` may log in from ``host`` with
        ``password``. AMQP asks this at start-ok, before it names the vhost."""
        try:
            await self._authenticate(user, password, host)
        except AccessRefused as exc:
            await self._refused(host, user, exc)
            raise

    async def open_vhost(self, user: str, vhost: str, host: str) -> tuple[Shell, Access]:
        """The shell of ``vhost`` and what the authenticated ``user`` may do there."""
        access = self.definitions.access(user, vhost)
        shell = self.shells.get(vhost)
        if access is None or shell is None:
            exc = AccessRefused(f"access to vhost {vhost!r} refused for user {user!r}")
            await self._refused(host, user, exc)
            raise exc
        return shell, access

    async def _refused(self, host: str, user: str, exc: AccessRefused) -> None:
        self._log_failed_login(host, user, exc)
        await trio.sleep(self.config.login_failure_delay)

    async def _authenticate(self, user: str, password: str, host: str) -> None:
        self.reload_definitions()
        found = self.definitions.users.get(user)
        if found is not None and user in self.config.loopback_users and not is_loopback(host):
            raise LoginRefused(
                f"user {user!r} may only log in from localhost (a loopback user, as RabbitMQ's "
                "guest); create a user of your own for remote clients"
            )
        # An unknown user costs the same hash as a wrong password: the time of a refusal
        # does not tell which user names exist.
        stored = found.password_hash if found is not None else self._unknown_user_hash()
        if found is None or not self.passwords.known(user, stored, password):
            ok = await self._check_password(password, stored, host, user)
            if not ok or found is None:
                raise LoginRefused(
                    f"login refused for user {user!r}: unknown user or wrong password"
                )
            self.passwords.remember(user, stored, password)

    async def _check_password(self, password: str, stored: str, host: str, user: str) -> bool:
        """scrypt off the event loop, at most HASHES_IN_FLIGHT at once, one place in the
        line for each address and user (see HASHES_IN_FLIGHT)."""
        if is_cheap(stored):  # definitions made for tests: microseconds
            return verify_password(password, stored)
        key = (host, user)
        line = self._hash_lines.setdefault(key, trio.Lock())
        try:
            async with line:
                return await trio.to_thread.run_sync(
                    verify_password, password, stored, limiter=self.hashing
                )
        finally:
            if not line.locked() and not line.statistics().tasks_waiting:
                self._hash_lines.pop(key, None)

    def _unknown_user_hash(self) -> str:
        """A hash nobody's password matches, as costly as the users' own."""
        known = next(iter(self.definitions.users.values()), None)
        params = known.password_hash.split("$")[1:4] if known is not None else []
        if len(params) != 3:
            params = [str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P)]
        salt, digest = base64.b64encode(os.urandom(16)), base64.b64encode(os.urandom(32))
        return "$".join(["scrypt", *params, salt.decode(), digest.decode()])

    def _log_failed_login(self, host: str, user: str, exc: Exception) -> None:
        now = trio.current_time()
        logged, count = self.failed_logins.get(host, (-math.inf, 0))
        if now - logged >= FAILED_LOGIN_LOG_INTERVAL:
            more = f" ({count} more failed since the last line)" if count else ""
            # %r escapes the name: a client cannot forge log lines with it.
            log.warning("failed login from %s as %r: %s%s", host, user, exc, more)
            if len(self.failed_logins) > 10_000:
                self.failed_logins.clear()
            self.failed_logins[host] = (now, 0)
        else:
            self.failed_logins[host] = (logged, count + 1)

    def reload_definitions(self) -> None:
        """Read the definitions again if the CLI changed them (one stat when it did not)."""
        data_dir = self.config.data_dir
        if data_dir is None:
            return
        try:
            mtime = os.stat(definitions_path(data_dir)).st_mtime
        except OSError:
            return
        if mtime == self._definitions_mtime:
            return
        self._definitions_mtime = mtime
        try:
            self.definitions = load(data_dir)
        except Exception as exc:
            log.error("cannot read the definitions again (%s); the old ones stay", exc)
            return
        for name in self.definitions.vhosts:
            if name not in self.shells and self._nursery is not None:
                self._nursery.start_soon(self._start_later, name)
        for name in list(self.shells):
            if name not in self.definitions.vhosts:
                self.stop_vhost(name)

    async def _start_later(self, name: str) -> None:
        try:
            await self.start_vhost(name)
        except (StoreError, OSError) as exc:
            log.error("cannot start vhost %r: %s", name, exc)

    # --- vhosts ------------------------------------------------------------------------------

    async def start_vhost(
        self, name: str, *, broker: Vhost | None = None, store: Store | None = None
    ) -> Shell:
        """Open (and recover) vhost ``name`` and run its shell's tasks in the node's nursery.
        ``broker`` and ``store`` stand in for its own (tests, the crash tests' store)."""
        assert self._nursery is not None
        config = self.config
        pages: PageFile | None = None
        if config.data_dir is not None:
            where = vhost_dir(config.data_dir, name)
            if where != config.data_dir:  # vhosts/ itself is private too, not only each vhost
                where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                where.parent.chmod(0o700)  # one an older version made 0755
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            if store is None:
                store = await trio.to_thread.run_sync(SqliteStore, where)
            pages = _open_page_file(where)
        elif store is None:
            store = MemoryStore()
        own_broker = broker is None
        if broker is None:
            broker = Vhost(
                max_message_size=config.max_message_size,
                durable=not isinstance(store, MemoryStore),
                memory_limit=resources.memory_limit(config.memory_high_watermark),
                queue_flow_limit=config.queue_flow_limit,
                limits=config.limits,
            )
        broker.serve_from_disk(reads_back=True, can_page=pages is not None)
        if own_broker:  # what the process holds already counts against the watermark
            broker.flow.memory_baseline = resources.process_memory()
        await recover(broker, store, name)
        shell = Shell(broker=broker, config=config, clock=self.clock, node=self, vhost=name)
        scope = trio.CancelScope()
        self._scopes[name] = scope
        self._stores[name] = store
        self.shells[name] = shell
        await self._nursery.start(self._run_vhost, shell, store, pages, scope)
        return shell

    async def _run_vhost(
        self,
        shell: Shell,
        store: Store,
        pages: PageFile | None,
        scope: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            try:
                await run_vhost(shell, store, pages, task_status)
            finally:
                if pages is not None:
                    pages.close()
                store.close()  # marks a clean shutdown unless a write failed

    def stop_vhost(self, name: str) -> None:
        """The vhost was deleted: close its connections, stop its tasks."""
        shell = self.shells.pop(name, None)
        if shell is None:
            return
        log.info("vhost %r deleted: closing its %d connections", name, len(shell.by_session))
        for conn in list(shell.by_session.values()):
            conn.close_from_broker("CONNECTION_FORCED", f"vhost {name!r} was deleted")
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        self._stores.pop(name, None)


def _open_page_file(where: Path) -> PageFile | None:
    """The page file, or None (no room for it: paging is then off and the memory alarm is all
    there is)."""
    try:
        return PageFile(where)
    except StoreError as exc:
        log.warning("%s; messages will not be paged to disk under memory pressure", exc)
        return None


async def recover(broker: Vhost, store: Store, vhost: str = DEFAULT_VHOST) -> None:
    """Rebuild ``broker`` from what ``store`` holds (off the event loop)."""
    started = time.monotonic()
    # Off the event loop: nothing else runs yet, and the rows stream from the store's cursor.
    snapshot = await trio.to_thread.run_sync(store.load)
    now = time.time()  # recovery compares remembered deadlines with it
    count = await trio.to_thread.run_sync(functools.partial(broker.restore, snapshot, now=now))
    if snapshot.queues or snapshot.exchanges:
        log.info(
            "vhost %r: recovered %d exchanges, %d queues, %d bindings, %d messages in %.2fs%s",
            vhost,
            len(snapshot.exchanges),
            len(snapshot.queues),
            len(snapshot.bindings),
            count,
            time.monotonic() - started,
            "" if snapshot.clean_shutdown else " (after an unclean shutdown: marked redelivered)",
        )
