"""mqroute: a RabbitMQ-style message broker in Python on trio, and its client SDK.

The public names live here; the modules behind them are private by convention.
"""

__version__ = "0.1.0"

from .blocking import BlockingConnection, BlockingMessage, connect_blocking
from .bodies import Serializer, json_serializer
from .client import (
    Confirmation,
    Connection,
    Consumer,
    Message,
    Publisher,
    QueueInfo,
    connect,
    serve_rpc,
)
from .errors import (
    AccessRefused,
    BrokerError,
    ConnectionClosed,
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
from .helpers import ProcessedIds, ProcessedStore, process_once, run_worker
from .model import Properties
from .robust import RobustConnection, connect_robust
from .server import ServerAddress, ServerConfig, serve


def __getattr__(name: str) -> object:
    """``mqroute.testing`` without ``import mqroute.testing`` (loaded on first use)."""
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'mqroute' has no attribute {name!r}")


__all__ = [
    "AccessRefused",
    "BlockingConnection",
    "BlockingMessage",
    "BrokerError",
    "Confirmation",
    "Connection",
    "ConnectionClosed",
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
