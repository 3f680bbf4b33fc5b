"""mqroute: a RabbitMQ-style message broker in Python on trio, and its client SDK.

The public names live here; the modules behind them are private by convention. Importing
``mqroute`` loads the async SDK only: the server, the store (sqlite3), trio and the blocking
client are loaded when one of their names is first used.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .client.bodies import Serializer, json_serializer
from .client.connection import Connection, QueueInfo, connect
from .client.consumer import Consumer
from .client.message import Confirmation, Message
from .client.publisher import Publisher
from .client.robust import RobustConnection, connect_robust
from .client.rpc import serve_rpc
from .errors import (
    AccessRefused,
    BrokerError,
    ConnectionClosed,
    ConnectionForced,
    ConsumerCancelled,
    InternalError,
    InvalidArgument,
    MessageNacked,
    MessageReturned,
    MQRouteError,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    PublishError,
    RequestTimeout,
    ResourceError,
    ResourceLocked,
    UsageError,
)
from .model import Properties

#: Public names whose modules load on first use: name -> module (relative to this package).
_LAZY = {
    "BlockingConnection": ".client.blocking",
    "BlockingMessage": ".client.blocking",
    "connect_blocking": ".client.blocking",
    "ProcessedIds": ".client.helpers",
    "ProcessedStore": ".client.helpers",
    "process_once": ".client.helpers",
    "run_worker": ".client.helpers",
    "ServerAddress": ".server",
    "ServerConfig": ".server",
    "serve": ".server",
}


def __getattr__(name: str) -> object:
    import importlib

    if name == "testing":
        return importlib.import_module(".testing", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mqroute' has no attribute {name!r}")


if TYPE_CHECKING:
    from . import testing  # noqa: F401
    from .client.blocking import BlockingConnection, BlockingMessage, connect_blocking
    from .client.helpers import ProcessedIds, ProcessedStore, process_once, run_worker
    from .server import ServerAddress, ServerConfig, serve


__all__ = [
    "AccessRefused",
    "BlockingConnection",
    "BlockingMessage",
    "BrokerError",
    "Confirmation",
    "Connection",
    "ConnectionClosed",
    "ConnectionForced",
    "Consumer",
    "ConsumerCancelled",
    "InternalError",
    "InvalidArgument",
    "MQRouteError",
    "Message",
    "MessageNacked",
    "MessageReturned",
    "NotFound",
    "PreconditionFailed",
    "ProcessedIds",
    "ProcessedStore",
    "Properties",
    "ProtocolError",
    "PublishError",
    "Publisher",
    "QueueInfo",
    "RequestTimeout",
    "ResourceError",
    "ResourceLocked",
    "RobustConnection",
    "Serializer",
    "ServerAddress",
    "ServerConfig",
    "UsageError",
    "__version__",
    "connect",
    "connect_blocking",
    "connect_robust",
    "json_serializer",
    "process_once",
    "run_worker",
    "serve",
    "serve_rpc",
]
