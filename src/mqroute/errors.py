"""Every exception mqroute raises, in one tree.

::

    MQRouteError
    ├── BrokerError                 the broker refused an operation; ``code`` names why
    │   ├── NotFound                NOT_FOUND: no such exchange / queue / consumer
    │   ├── PreconditionFailed      PRECONDITION_FAILED: redeclare mismatch, unknown tag, not empty…
    │   ├── ResourceLocked          RESOURCE_LOCKED: exclusive queue of another connection
    │   ├── ConnectionForced        CONNECTION_FORCED: the broker closed it (its vhost was deleted)
    │   ├── AccessRefused           ACCESS_REFUSED: a permission or login refused, a reserved name
    │   ├── InvalidArgument         INVALID_ARGUMENT: a value the broker cannot accept
    │   ├── ResourceError           RESOURCE_ERROR: a broker limit was reached
    │   └── InternalError           INTERNAL_ERROR: a bug in the broker; the broker keeps running
    ├── ProtocolError               bytes that break the wire protocol (docs/protocol.md)
    │   ├── RemoteProtocolError     the peer sent them: answer with Close and drop it
    │   └── LocalProtocolError      this side tried to send them: a bug here
    ├── ConnectionClosed            the connection is gone; ``reason`` says why if known
    ├── ConsumerCancelled           the broker cancelled a consumer (its queue was deleted)
    ├── RequestTimeout              an RPC call got no reply in time (also a TimeoutError)
    ├── PublishError                a publish was not accepted as asked
    │   ├── MessageReturned         mandatory publish matched no queue (carries the message)
    │   └── MessageNacked           the broker refused to take responsibility for it
    ├── UsageError                  the SDK was misused (acked twice, closed connection…)
    └── ServerError                 the server cannot start or go on (the CLI reports it)
        ├── DataDirError            the data directory: locked by another server, not writable…
        ├── StoreError              the store: corrupt, foreign, a newer schema…
        └── BenchError              a benchmark cannot run: bad options, no broker, a crash

Error codes are strings on the wire. They follow AMQP 0-9-1's reply codes (same names, numbers
in ``REPLY_CODES``) so that a second front end can map them one to one.
"""

from __future__ import annotations

from typing import ClassVar

REPLY_CODES: dict[str, int] = {
    "NO_ROUTE": 312,
    "CONNECTION_FORCED": 320,
    "ACCESS_REFUSED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_LOCKED": 405,
    "PRECONDITION_FAILED": 406,
    "FRAME_ERROR": 501,
    "INVALID_ARGUMENT": 502,
    "RESOURCE_ERROR": 506,
    "INTERNAL_ERROR": 541,
}


class MQRouteError(Exception):
    """Base class of every mqroute exception."""


class BrokerError(MQRouteError):
    """The broker refused an operation. ``code`` is the wire error code, ``reason`` its text."""

    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.code}: {reason}")
        self.reason = reason

    @property
    def reply_code(self) -> int:
        return REPLY_CODES[self.code]

    @staticmethod
    def from_code(code: str, reason: str) -> BrokerError:
        """Build the right subclass for a wire error code (unknown codes become InternalError)."""
        return _BY_CODE.get(code, InternalError)(reason)


class NotFound(BrokerError):
    code = "NOT_FOUND"


class PreconditionFailed(BrokerError):
    code = "PRECONDITION_FAILED"


class ResourceLocked(BrokerError):
    code = "RESOURCE_LOCKED"


class ConnectionForced(BrokerError):
    code = "CONNECTION_FORCED"


class AccessRefused(BrokerError):
    code = "ACCESS_REFUSED"


class InvalidArgument(BrokerError):
    code = "INVALID_ARGUMENT"


class ResourceError(BrokerError):
    code = "RESOURCE_ERROR"


class InternalError(BrokerError):
    code = "INTERNAL_ERROR"


_BY_CODE: dict[str, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        PreconditionFailed,
        ResourceLocked,
        ConnectionForced,
        AccessRefused,
        InvalidArgument,
        ResourceError,
        InternalError,
    )
}


class ProtocolError(MQRouteError):
    """Input that violates the wire protocol: bad framing, bad CBOR, bad fields, bad order.

    The side that detects it sends an error frame (code FRAME_ERROR) and closes the connection.
    """

    code = "FRAME_ERROR"


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection is in its ERROR state."""


class LocalProtocolError(ProtocolError):
    """This side asked to send something the protocol forbids now; nothing was sent."""


class ConnectionClosed(MQRouteError):
    """The connection is closed. ``reason`` is the error that closed it, if there was one."""

    def __init__(self, message: str, reason: BaseException | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ConsumerCancelled(MQRouteError):
    """The broker cancelled a consumer, for example because its queue was deleted."""


class RequestTimeout(MQRouteError, TimeoutError):
    """``Connection.call`` got no reply within its timeout; a late reply will be dropped."""


class PublishError(MQRouteError):
    """A publish was not accepted as asked."""


class MessageReturned(PublishError):
    """A mandatory publish could not be routed to any queue and came back."""

    def __init__(self, code: str, reply_text: str, exchange: str, routing_key: str) -> None:
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} "
            f"was returned: {code} {reply_text}"
        )
        self.code = code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key

    @property
    def reply_code(self) -> int:
        """The AMQP reply code, as on BrokerError (312 for NO_ROUTE)."""
        return REPLY_CODES[self.code]


class MessageNacked(PublishError):
    """The broker nacked the publish: it did not take responsibility for the message."""


class UsageError(MQRouteError):
    """The SDK was used in a way it does not allow (for example acking a message twice)."""


class ServerError(MQRouteError):
    """The server cannot start or go on; the CLI prints it and exits non-zero."""


class DataDirError(ServerError):
    """The data directory cannot be used (locked by another server, not writable, …)."""


class StoreError(ServerError):
    """The store cannot be opened or used (corrupt, foreign, newer schema, …)."""


class BenchError(ServerError):
    """A benchmark could not run (bad options, no broker, a worker crashed)."""
