"""The native protocol on the connection driver: its handshake and login, and what each
frame does (native.py's ``NativeFrontEnd`` makes the facade calls; this waits where a call
must wait: a login, bodies read back from disk, a redrive in steps, a paused publisher)."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio

from .. import __version__
from ..core.dead_letter import Redriven
from ..core.effects import NeedBodies
from ..core.session import Session
from ..errors import BrokerError, ProtocolError
from ..protocol import (
    NEED_DATA,
    Ack,
    Blocked,
    Close,
    Connection,
    Extend,
    Heartbeat,
    Hello,
    Nack,
    PeerClosed,
    Publish,
    PublishTooLarge,
    RedriveOk,
    Release,
    Role,
    Unblocked,
    ok_frame,
    welcome_for,
)
from .admin import inspect
from .driver import Driver, Wire
from .native import NativeFrontEnd

_SETTLES = (Ack, Nack, Release, Extend)


class NativeWire(Wire):
    kind = "native"
    holds_when_told = True  # the SDK holds its publishes while told Blocked

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        config = driver.config
        self.proto = Connection(
            Role.SERVER,
            max_frame_size=config.max_frame_size,
            max_message_size=config.max_message_size,
        )
        self.session: Session | None = None
        self.front: NativeFrontEnd | None = None
        self.next_item = self.proto.next_event
        self.need_data = NEED_DATA

    # --- bytes in ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        self.proto.receive_data(data)

    def pending_bytes(self) -> int:
        return self.proto.pending_bytes()

    def protocol_error(self, exc: ProtocolError) -> None:
        driver = self.driver
        driver.node.log_limited("%s from %s: protocol error: %s", driver.id, driver.peer, str(exc))
        driver.end(exc.code, str(exc))

    # --- the handshake -------------------------------------------------------------------

    async def handshake(self) -> bool:
        driver = self.driver
        hello = await driver.read_item()
        if not isinstance(hello, Hello):
            return False  # the end, or a Close before the handshake finished
        config = driver.config
        try:
            welcome = welcome_for(
                hello,
                server=f"mqroute {__version__}",
                connection_id=driver.id,
                heartbeat_ms=config.heartbeat_ms,
                max_frame_size=config.max_frame_size,
                max_message_size=config.max_message_size,
            )
        except ProtocolError as exc:
            driver.end(exc.code, str(exc))
            return False
        driver.client_name = hello.client
        try:
            shell, access = await driver.node.login(
                hello.user, hello.password, hello.vhost, driver.host
            )
        except BrokerError as exc:
            driver.end(exc.code, exc.reason)
            return False
        self.session = shell.broker.open_session(driver.id, access)
        listings = functools.partial(inspect, shell.broker, shell.registry)
        self.front = NativeFrontEnd(
            shell.broker, self.session, driver.id, listings, config.max_message_size
        )
        self.heartbeat = welcome.heartbeat_ms / 1000
        driver.attach(shell, access.user)
        driver.send(welcome)
        await driver.flush()
        return True

    # --- frames --------------------------------------------------------------------------

    def handle(self, event: Any) -> Any:
        driver, front = self.driver, self.front
        assert front is not None
        kind = type(event)
        if kind is Publish:
            if driver.publishing_paused:
                return self._publish_when_resumed(event)
            self._publish(event)
        elif kind in _SETTLES:
            close = front.settle(event, driver.now)
            if close is not None:
                driver.end(close.code, close.text)
        elif kind is Heartbeat:
            pass
        elif kind is PublishTooLarge:
            front.too_large(event)
        elif kind is Close:
            if event.code is not None:
                driver.node.log_connection(
                    "%s: client closed with %r %r", driver.id, event.code, event.text
                )
            self.release()  # before the reply, so the client sees its queues gone
            driver.end(None, "closed by client")
            return False
        elif kind is PeerClosed:
            return False
        else:
            return self._request(event)
        return True

    def _publish(self, event: Publish) -> None:
        assert self.front is not None
        self.front.publish(event, self.driver.now)
        broker = self.front.vhost
        if broker.flow.changed:  # this publish may have paused its sender
            assert self.driver.shell is not None
            self.driver.shell.drain()

    async def _publish_when_resumed(self, event: Publish) -> bool:
        await self.driver.before_publish(len(event.body))
        self._publish(event)
        return True

    async def _request(self, event: Any) -> bool:
        driver, front = self.driver, self.front
        assert front is not None and driver.shell is not None
        shell = driver.shell
        moved = 0
        while True:
            try:
                reply = front.request(event, driver.now)
            except NeedBodies as need:  # nothing changed: read them back, then again
                await shell.wait_read_back(need.queue)
                continue
            if type(reply) is not Redriven:
                break
            # It moves what is in memory and asks for the rest: wait, then go on.
            moved += reply.moved
            left = event.limit - moved if event.limit else 0
            if not (reply.more and (left > 0 or not event.limit)):
                reply = ok_frame(event.rid, RedriveOk(moved=moved))
                break
            queue = shell.broker.queues.get(event.queue)
            if queue is not None:
                await shell.wait_read_back(queue)
            event = attrs.evolve(event, limit=left)
        driver.answer(reply)
        return True

    # --- frames out ----------------------------------------------------------------------

    def sessions(self) -> tuple[Session, ...]:
        return () if self.session is None else (self.session,)

    def output(self) -> list[bytes]:
        assert self.front is not None
        return self.front.output(self.proto)

    def encode(self, item: Any) -> bytes:
        return self.proto.send(item)

    def heartbeat_item(self) -> Any:
        return Heartbeat()

    def close_item(self, code: str | None, text: str) -> Any:
        return Close(code=code, text=text)

    def blocked_item(self, reason: str | None) -> Any:
        return Unblocked() if reason is None else Blocked(reason=reason)

    @classmethod
    async def refuse(cls, stream: trio.abc.Stream, reason: str) -> None:
        close = Connection(Role.SERVER).send(Close(code="RESOURCE_ERROR", text=reason))
        await stream.send_all(close)

    def release(self) -> None:
        """Requeue what this connection holds and drop its exclusive queues. Idempotent."""
        driver, session = self.driver, self.session
        if session is None or driver.shell is None:
            return
        broker = driver.shell.broker
        broker.close_session(session, now=driver.clock())
        broker.release_owner(driver.id)
