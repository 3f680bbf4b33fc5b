"""AMQP 0-9-1 on the connection driver: the negotiation and login, and each frame handed to
amqp_front.py's ``AmqpFrontEnd`` (which makes the facade calls). This waits where a call must
wait: the login, bodies read back from disk, a paused publisher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pamqp import commands as amqp

from ..core.effects import NeedBodies
from ..core.session import Session
from ..errors import REPLY_CODES, AccessRefused, ProtocolError
from ..protocol.amqp import (
    HEADER_RECEIVED,
    HEARTBEAT_FRAME,
    NEED_DATA,
    PROTOCOL_HEADER,
    AmqpFrames,
    BadHeader,
    Content,
    method_bytes,
    short_text,
)
from .amqp_front import C_CLOSING, AmqpFrontEnd, Authenticate, Closed, OpenVhost
from .driver import END, Driver, Wire

_PUBLISHES = (amqp.Basic.Publish, Content)  # what a paused connection is not read past
# The driver's own closes by the broker's names of the condition, as AMQP reply codes.
_CLOSE_CODES = {"FRAME_ERROR": 501, "INTERNAL_ERROR": 541, "CONNECTION_FORCED": 320}


class AmqpWire(Wire):
    kind = "AMQP"
    holds_when_told = False  # AMQP has no word for credit: a consuming client is read on

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        config = driver.config
        self.frames = AmqpFrames()
        self.front = AmqpFrontEnd(
            driver.id,
            max_message_size=config.max_message_size,
            heartbeat=config.heartbeat_ms // 1000,
            max_uncommitted=config.max_uncommitted_bytes,
        )
        self.next_item = self.frames.next_frame
        self.need_data = NEED_DATA

    @property
    def closing(self) -> bool:
        return self.front.state is C_CLOSING

    # --- bytes in ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        self.frames.receive_data(data)

    def pending_bytes(self) -> int:
        return self.frames.pending_bytes()

    def protocol_error(self, exc: ProtocolError) -> None:
        if isinstance(exc, BadHeader):
            # AMQP's answer to a client that speaks something else: our header, then close.
            self.driver.send(PROTOCOL_HEADER)
            return
        driver = self.driver
        driver.node.log_limited(
            "%s from %s: AMQP frame error: %s", driver.id, driver.peer, str(exc)
        )
        self.front.close_connection(501, f"FRAME_ERROR - {exc}")
        self.after_items()

    # --- the negotiation and login -------------------------------------------------------

    async def handshake(self) -> bool:
        driver, front = self.driver, self.front
        node = driver.node
        while True:
            item = await driver.read_item()
            if item is END or item is None:  # a protocol error, or the client's end
                return False
            if item == HEADER_RECEIVED:
                front.start()  # the client spoke AMQP 0-9-1: start the negotiation
                self.after_items()
                continue
            channel, frame = item
            action = front.handle(channel, frame, driver.clock())
            self.frames.frame_max = front.frame_max  # tune-ok settles it
            if isinstance(action, Authenticate):
                driver.client_name = str(front.client_properties.get("product", "?"))
                try:
                    await node.authenticate(action.user, action.password, driver.host)
                except AccessRefused as exc:
                    front.refused(exc.reason)
                    self.after_items()
                    return False
                front.authenticated(action.user)
            elif isinstance(action, OpenVhost):
                try:
                    shell, access = await node.open_vhost(front.user, action.name, driver.host)
                except AccessRefused as exc:
                    front.close_connection(530, f"NOT_ALLOWED - {exc.reason}")
                    self.after_items()
                    return False
                front.opened(shell.broker, access)
                self.heartbeat = float(front.heartbeat)  # what tune-ok settled
                driver.attach(shell, front.user)
                self.after_items()
                await driver.flush()
                return True
            elif isinstance(action, Closed):
                self.after_items()
                return False
            self.after_items()

    # --- frames --------------------------------------------------------------------------

    def handle(self, item: Any) -> Any:
        if type(item) is not tuple:
            return False  # the end of the stream (None): nothing more to read
        driver = self.driver
        channel, frame = item
        if driver.publishing_paused and type(frame) in _PUBLISHES:
            return self._when_resumed(channel, frame)
        try:
            action = self.front.handle(channel, frame, driver.now)
        except NeedBodies as need:
            return self._after_read_back(channel, frame, need)
        return type(action) is not Closed

    async def _when_resumed(self, channel: int, frame: Any) -> bool:
        self.after_items()
        await self.driver.before_publish(len(frame.body) if type(frame) is Content else 0)
        return await self._handle_waiting(channel, frame)

    async def _after_read_back(self, channel: int, frame: Any, need: NeedBodies) -> bool:
        self.after_items()
        assert self.driver.shell is not None
        await self.driver.shell.wait_read_back(need.queue)
        return await self._handle_waiting(channel, frame)

    async def _handle_waiting(self, channel: int, frame: Any) -> bool:
        """``handle``, where bodies may have to be read back (perhaps more than once)."""
        while True:
            try:
                action = self.front.handle(channel, frame, self.driver.now)
            except NeedBodies as need:
                self.after_items()
                assert self.driver.shell is not None
                await self.driver.shell.wait_read_back(need.queue)
                continue
            return type(action) is not Closed

    def after_items(self) -> None:
        """Channels opened and closed are known to the driver; replies are queued, held
        until the commit if a declaration in them is durable (as the native front end)."""
        front, driver = self.front, self.driver
        if front.sessions_opened:
            for session in front.sessions_opened:
                driver.add_session(session)
            front.sessions_opened.clear()
        if front.sessions_closed:
            for session in front.sessions_closed:
                driver.forget_session(session)
            front.sessions_closed.clear()
        if front.out:
            data = b"".join(front.out)
            front.out.clear()
            driver.answer(data)

    # --- frames out ----------------------------------------------------------------------

    def sessions(self) -> Iterator[Session]:
        return (ch.session for ch in self.front.channels.values())

    def output(self) -> list[bytes]:
        chunks = self.front.output()
        self.after_items()  # a channel closed by an event (ack timeout) says so after it
        return chunks

    def encode(self, item: Any) -> bytes:
        return item  # type: ignore[no-any-return]

    def heartbeat_item(self) -> Any:
        return HEARTBEAT_FRAME

    def close_item(self, code: str | None, text: str) -> Any:
        number = _CLOSE_CODES.get(code or "", REPLY_CODES.get(code or "", 541))
        self.front.state = C_CLOSING
        return method_bytes(0, amqp.Connection.Close(number, short_text(f"{code} - {text}"), 0, 0))

    def blocked_item(self, reason: str | None) -> Any:
        if reason is None:
            return method_bytes(0, amqp.Connection.Unblocked())
        if self.front.capability("connection.blocked"):
            return method_bytes(0, amqp.Connection.Blocked(short_text(reason)))
        return None

    def release(self) -> None:
        driver, front = self.driver, self.front
        shell = driver.shell
        if shell is None:
            return
        broker = shell.broker
        for ch in list(front.channels.values()):
            if not ch.closing:
                broker.close_session(ch.session, now=driver.clock())
        front.channels.clear()
        broker.release_owner(driver.id)
