"""How a server is set up (``ServerConfig``) and where it listens (``ServerAddress``)."""

from __future__ import annotations

from pathlib import Path

import attrs

from ..core.flow import DEFAULT_QUEUE_LIMIT
from ..core.topology import Limits
from ..protocol import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from .users import Definitions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5680


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    heartbeat_ms: int = 60_000  # the server's wish; the smaller non-zero of both sides wins
    handshake_timeout: float = 10.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE  # the server's wish; the client may lower it
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Publishers are blocked while queued messages take more memory than this: a fraction of
    # the machine's memory (float) or bytes (int). RabbitMQ's vm_memory_high_watermark.
    memory_high_watermark: float | int = 0.4
    # Publishers into a consumed queue wait while it holds more ready bytes than this.
    queue_flow_limit: int = DEFAULT_QUEUE_LIMIT
    # Publishers of persistent messages are blocked while the data directory's disk has less
    # free space than this. RabbitMQ's disk_free_limit (default 50 MB there).
    disk_free_limit: int = 200 * 1024 * 1024
    close_timeout: float = 2.0  # how long a closing connection may take to flush
    # None: the open-file limit less a reserve for the store and the listeners.
    max_connections: int | None = None
    max_connections_per_host: int = 1000
    # A frame begun must go on arriving at this rate (bytes/s) once its grace has passed.
    min_frame_rate: int = 1024
    frame_grace: float = 10.0
    limits: Limits = attrs.Factory(Limits)
    data_dir: Path | None = None  # None: nothing is kept on disk
    # Users, vhosts and permissions when there is no data directory (None: a new broker's,
    # guest/guest on vhost "/"); with one, they are its definitions.json.
    definitions: Definitions | None = None
    loopback_users: tuple[str, ...] = ("guest",)  # may log in from loopback addresses only
    require_no_guest: bool = False  # refuse to start while the guest user exists
    login_failure_delay: float = 1.0  # seconds a failed login waits before its Close
    tls: TlsConfig | None = None
    # The AMQP 0-9-1 listener (pika, aio-pika, Celery…): None turns it off, 0 picks a port.
    # The CLI listens on 5672 unless told otherwise; embedded brokers only when asked.
    amqp_host: str | None = None  # None: the same as ``host``
    amqp_port: int | None = None
    # What one AMQP channel's transaction may hold uncommitted (bodies and 256 B an item).
    max_uncommitted_bytes: int = 64 * 1024 * 1024


@attrs.frozen(kw_only=True)
class TlsConfig:
    """The certificate the server presents, and whether (and by which CA) it checks clients'."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify_peer: bool = False


@attrs.frozen
class ServerAddress:
    host: str
    port: int
    amqp_port: int | None = None  # where the AMQP 0-9-1 listener is, if it runs

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqroute://{host}:{self.port}"

    @property
    def amqp_url(self) -> str:
        """``amqp://guest:guest@host:port/`` for pika, aio-pika, kombu and Celery."""
        if self.amqp_port is None:
            raise ValueError("this server has no AMQP listener (ServerConfig.amqp_port)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"amqp://guest:guest@{host}:{self.amqp_port}/"
