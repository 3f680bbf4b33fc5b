"""One side of a native-protocol connection as a state machine, sans I/O: bytes in, events
out; events in, bytes out. It never touches a socket and never blocks::

    conn.receive_data(data)          # b"" means the peer closed its end
    event = conn.next_event()        # an event, NEED_DATA, PublishTooLarge or PeerClosed
    data = conn.send(event)          # bytes for someone else to write

What the peer sends that breaks the protocol raises ``RemoteProtocolError`` and moves the
connection to ERROR (answer with Close, then drop it). Sending what the protocol forbids
raises ``LocalProtocolError``: a bug on this side, and the connection's state is unchanged.
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from ..model import Properties
from .codec import (
    CONTINUED,
    HEADER,
    PayloadDecoder,
    encode,
    encode_deliver,
    encode_publish,
    fragment,
    is_publish,
)
from .frames import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ENVELOPE_SIZE,
    FRAME_TYPES,
    HANDSHAKE_FRAME_SIZE,
    Close,
    Deliver,
    Frame,
    Hello,
    PeerClosed,
    Publish,
    PublishTooLarge,
    Role,
    Welcome,
)

C, S = Role.CLIENT, Role.SERVER
_HOT_FRAME: dict[Role, type[Frame]] = {C: Publish, S: Deliver}


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when a whole frame has not arrived yet.
NEED_DATA: Any = _NeedData()


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # server: before the client's Hello; client: before sending it
    AWAIT_WELCOME = "await-welcome"
    OPEN = "open"
    CLIENT_CLOSED = "client-closed"  # the client sent Close; the server may still send
    SERVER_CLOSED = "server-closed"  # the server sent Close; the client may still send
    CLOSED = "closed"  # both sent Close
    ERROR = "error"


def _sends(role: Role) -> frozenset[type[Frame]]:
    return frozenset(t for t in FRAME_TYPES.values() if role in t.sender) - {Hello, Welcome, Close}


_CLOSED_BY = {C: State.CLIENT_CLOSED, S: State.SERVER_CLOSED}

#: The one transition table: per state and sender, the frames it may send and the state each
#: leads to. Close may be sent in every state (in ERROR it says why, and nothing else may follow).
#: Once one side has closed, the other may still send what was in flight (even its handshake
#: frame) until its own Close.
TRANSITIONS: dict[tuple[State, Role], dict[type[Frame], State]] = {
    (State.AWAIT_HELLO, C): {Hello: State.AWAIT_WELCOME, Close: State.CLIENT_CLOSED},
    (State.AWAIT_HELLO, S): {Close: State.SERVER_CLOSED},
    (State.AWAIT_WELCOME, C): {Close: State.CLIENT_CLOSED},
    (State.AWAIT_WELCOME, S): {Welcome: State.OPEN, Close: State.SERVER_CLOSED},
    **{
        (State.OPEN, role): {**dict.fromkeys(_sends(role), State.OPEN), Close: _CLOSED_BY[role]}
        for role in (C, S)
    },
    **{
        (closed, role): (
            {Close: closed}
            if closed is _CLOSED_BY[role]
            else {
                **dict.fromkeys(_sends(role) | {Hello if role is C else Welcome}, closed),
                Close: State.CLOSED,
            }
        )
        for closed in (State.CLIENT_CLOSED, State.SERVER_CLOSED)
        for role in (C, S)
    },
    (State.CLOSED, C): {Close: State.CLOSED},
    (State.CLOSED, S): {Close: State.CLOSED},
    (State.ERROR, C): {Close: State.ERROR},
    (State.ERROR, S): {Close: State.ERROR},
}


class Connection:
    """One side of a native-protocol connection.

    Until the handshake ends, a frame may be at most HANDSHAKE_FRAME_SIZE bytes; after it,
    ``max_frame_size`` as Welcome set it, in both directions. A longer fragment is a
    RemoteProtocolError as soon as its length prefix arrives, before its bytes are buffered.
    ``max_message_size`` (plus ENVELOPE_SIZE) bounds a whole frame once its fragments are
    joined. The server passes its own limits; a client learns them from Welcome.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.role = role
        self.peer = S if role is C else C
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self._mine: dict[type[Frame], State] = {}
        self._theirs: dict[type[Frame], State] = {}
        self._hot_path = False  # may we send Deliver (server) or Publish (client) now?
        self._receive_limit = HANDSHAKE_FRAME_SIZE
        self._send_limit = HANDSHAKE_FRAME_SIZE
        self.state = State.AWAIT_HELLO
        self._buffer = bytearray()
        self._pos = 0
        self._eof = False
        self._fragments: list[bytes] = []  # a frame's fragments so far
        self._fragments_size = 0
        self._dropping: int | None = None  # bytes dropped of a too-large Publish
        self._decoder = PayloadDecoder()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        # What each side may send now, looked up once per change rather than once per frame.
        self._state = state
        self._mine = TRANSITIONS.get((state, self.role), {})
        self._theirs = TRANSITIONS.get((state, self.peer), {})
        self._hot_path = _HOT_FRAME[self.role] in self._mine

    @property
    def we_closed(self) -> bool:
        return self._state in (_CLOSED_BY[self.role], State.CLOSED)

    @property
    def they_closed(self) -> bool:
        return self._state in (_CLOSED_BY[self.peer], State.CLOSED)

    # receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Any:
        """The next event from the peer (a Frame), ``NEED_DATA``, ``PublishTooLarge``, or
        ``PeerClosed`` at the end.

        Typed ``Any`` so callers can dispatch on ``type(event)`` without casts.
        """
        if self.state is State.ERROR:
            raise RemoteProtocolError("connection is in the error state")
        while True:
            buf = self._buffer
            pos = self._pos
            available = len(buf) - pos
            if available < 4:
                return self._need_data(available)
            (length,) = HEADER.unpack_from(buf, pos)
            continued = False
            if length > self._receive_limit:
                continued = self._fragment_header(length)
                length &= ~CONTINUED
            if available < 4 + length:
                return self._need_data(available)
            payload = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if pos >= 65536 and pos * 2 >= len(buf):
                del buf[:pos]
                pos = 0
            self._pos = pos
            if continued or self._fragments_size or self._dropping is not None:
                joined = self._join(payload, continued)
                if joined is None:
                    continue  # more fragments to come
                if type(joined) is PublishTooLarge:
                    return joined
                payload = joined
            try:
                event = self._decoder.decode(payload)
                self._check(self.peer, event)
            except RemoteProtocolError:
                self._error()
                raise
            return event

    def _fragment_header(self, length: int) -> bool:
        """A length over the limit: a fragment of a longer frame, or an error."""
        size = length & ~CONTINUED
        if not length & CONTINUED or size > self._receive_limit:
            self._error()
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds the maximum frame size of {self._receive_limit}"
            )
        if self.state is not State.OPEN:
            self._error()
            raise RemoteProtocolError("a fragmented frame before the handshake ended")
        return True

    def _join(self, fragment: bytes, continued: bool) -> Any:
        """Add a fragment: None while more are to come, then the whole payload, or
        PublishTooLarge if a Publish passed the limit (the others are a RemoteProtocolError)."""
        if self._dropping is not None:
            self._dropping += len(fragment)
        else:
            self._fragments.append(fragment)
            self._fragments_size += len(fragment)
            if self._fragments_size > self.max_message_size + ENVELOPE_SIZE:
                if self.role is S and is_publish(self._fragments[0]):
                    self._dropping = self._fragments_size
                    self._fragments, self._fragments_size = [], 0
                else:
                    self._error()
                    raise RemoteProtocolError(
                        f"frame of more than {self._fragments_size} bytes exceeds the maximum of "
                        f"{self.max_message_size + ENVELOPE_SIZE} (message size plus envelope)"
                    )
        if continued:
            return None
        if self._dropping is not None:
            dropped, self._dropping = self._dropping, None
            return PublishTooLarge(size=dropped)
        payload = b"".join(self._fragments)
        self._fragments, self._fragments_size = [], 0
        return payload

    def pending_bytes(self) -> int:
        """Bytes of a frame begun but not yet whole (the server times slow ones out)."""
        return len(self._buffer) - self._pos + self._fragments_size + (self._dropping or 0)

    def _need_data(self, available: int) -> Any:
        if not self._eof:
            return NEED_DATA
        if available or self._fragments_size or self._dropping is not None:
            self._error()
            raise RemoteProtocolError("connection ended in the middle of a frame")
        return PeerClosed()

    def _error(self) -> None:
        self.state = State.ERROR

    # sending

    def send(self, event: Frame) -> bytes:
        """Bytes for ``event``. Sending what the protocol forbids raises LocalProtocolError."""
        self._check(self.role, event)
        data = encode(event)
        return data if len(data) <= self._send_limit + 4 else fragment(data, self._send_limit)

    def send_deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, tail: bytes
    ) -> bytes:
        """``send(Deliver(...))`` for the hot path; ``tail`` is from encode_deliver_tail."""
        if self.role is not S or not self._hot_path:
            raise LocalProtocolError(f"{self.role.value} may not send a Deliver frame now")
        data = encode_deliver(consumer_tag, delivery_tag, redelivered, tail)
        return data if len(data) <= self._send_limit + 4 else fragment(data, self._send_limit)

    def send_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties, mandatory: bool
    ) -> bytes:
        """``send(Publish(...))`` for the hot path."""
        if self.role is not C or not self._hot_path:
            raise LocalProtocolError(f"{self.role.value} may not send a Publish frame now")
        data = encode_publish(exchange, routing_key, body, properties, mandatory)
        return data if len(data) <= self._send_limit + 4 else fragment(data, self._send_limit)

    def _check(self, sender: Role, event: Frame) -> None:
        kind = type(event)
        mine = sender is self.role
        next_state = (self._mine if mine else self._theirs).get(kind)
        if next_state is None:
            error = LocalProtocolError if mine else RemoteProtocolError
            if self.we_closed if mine else self.they_closed:
                raise error(f"{kind.__name__} frame after Close")
            raise error(
                f"{sender.value} may not send a {kind.__name__} frame in state {self.state.value}"
            )
        if next_state is not self._state:
            self.state = next_state
        if kind is Welcome:  # both sides now use the negotiated sizes
            welcome: Any = event
            self.max_frame_size = welcome.max_frame_size
            self._receive_limit = self._send_limit = welcome.max_frame_size
            if self.role is C:
                self.max_message_size = welcome.max_message_size
