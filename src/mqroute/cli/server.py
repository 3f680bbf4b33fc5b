"""``mqroute server``: the broker on its embedded default, or as the options say."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..errors import ServerError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, HANDSHAKE_FRAME_SIZE
from ..server import resources, startup
from ..server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, TlsConfig
from ..server.datadir import default_data_dir
from .main import main

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@main.command()
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Use ::1 for IPv6 loopback.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on; 0 picks a free one (printed at start).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the broker's data. Default: $MQROUTE_DATA_DIR, else "
    "$XDG_DATA_HOME/mqroute, else ~/.local/share/mqroute.",
)
@click.option(
    "--heartbeat",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Heartbeat interval in seconds offered to clients (0 = off). A client "
    "silent for two intervals is disconnected and its messages requeued.",
)
@click.option(
    "--max-message-size",
    default=16 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(1),
    help="Largest message body accepted, in bytes; larger publishes are refused "
    "(PRECONDITION_FAILED).",
)
@click.option(
    "--max-frame-size",
    default=DEFAULT_MAX_FRAME_SIZE,
    show_default=True,
    type=click.IntRange(HANDSHAKE_FRAME_SIZE),
    help="Largest frame either side sends once connected (a client may ask for less); "
    "larger messages travel as several frames.",
)
@click.option(
    "--memory-high-watermark",
    default="0.4",
    show_default=True,
    metavar="FRACTION|SIZE",
    help="Block publishers while queued messages use more memory than this: a fraction of "
    "the machine's memory (0.4, 40%) or a size (2GiB). Consumers go on, and publishing "
    "resumes under 90% of it.",
)
@click.option(
    "--disk-free-limit",
    default="200MiB",
    show_default=True,
    metavar="SIZE",
    help="Block publishers of persistent messages while the data directory's disk has less "
    "free space than this.",
)
@click.option(
    "--queue-flow-limit",
    default="1MiB",
    show_default=True,
    metavar="SIZE",
    help="A publisher into a queue with consumers waits while that queue holds more ready "
    "messages than this, so it runs no further ahead of them and end-to-end latency stays "
    "bounded. Raise it (16MiB) where busy workers' queues must absorb bigger bursts; a queue "
    "nobody consumes is never limited by it.",
)
@click.option(
    "--amqp-host",
    default=None,
    help="Address the AMQP 0-9-1 listener binds (default: --host).",
)
@click.option(
    "--amqp-port",
    default=5672,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the AMQP 0-9-1 listener, for pika, aio-pika, kombu/Celery and FastStream "
    "(docs/amqp.md).",
)
@click.option("--no-amqp", is_flag=True, help="Do not listen for AMQP 0-9-1 at all.")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Serve TLS with this certificate (PEM; the chain after it). Clients then use "
    "mqroutes:// URLs. `kill -HUP` reads it again without dropping connections.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The certificate's private key (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="CA certificates (PEM) that client certificates must be signed by.",
)
@click.option(
    "--tls-verify-peer",
    is_flag=True,
    help="Require a client certificate signed by --tls-ca (RabbitMQ's verify_peer with "
    "fail_if_no_peer_cert).",
)
@click.option(
    "--require-no-guest",
    is_flag=True,
    help="Refuse to start while the guest user exists (mqroute user delete guest).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="How much to log.",
)
def server(
    host: str,
    port: int,
    data_dir: Path | None,
    heartbeat: float,
    max_message_size: int,
    max_frame_size: int,
    memory_high_watermark: str,
    disk_free_limit: str,
    queue_flow_limit: str,
    amqp_host: str | None,
    amqp_port: int,
    no_amqp: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    tls_verify_peer: bool,
    require_no_guest: bool,
    log_level: str,
) -> None:
    """Run the broker in the foreground until Ctrl-C or SIGTERM.

    On first start the data directory gets RabbitMQ's defaults: vhost "/" and the user guest
    (password guest), who may log in from this machine only. See `mqroute user --help` and
    docs/security.md before listening on another address.
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_verify_peer and tls_ca is None:
        raise click.UsageError("--tls-verify-peer needs --tls-ca to check certificates against")
    tls = (
        TlsConfig(cert=tls_cert, key=tls_key, ca=tls_ca, verify_peer=tls_verify_peer)
        if tls_cert is not None and tls_key is not None
        else None
    )
    try:
        watermark = resources.parse_watermark(memory_high_watermark)
        disk_limit = resources.parse_size(disk_free_limit)
        flow_limit = resources.parse_size(queue_flow_limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    log = logging.getLogger("mqroute")
    data_dir = data_dir or default_data_dir()
    config = ServerConfig(
        host=host,
        port=port,
        heartbeat_ms=int(heartbeat * 1000),
        max_message_size=max_message_size,
        max_frame_size=max_frame_size,
        memory_high_watermark=watermark,
        disk_free_limit=disk_limit,
        queue_flow_limit=flow_limit,
        data_dir=data_dir,
        tls=tls,
        require_no_guest=require_no_guest,
        amqp_host=amqp_host,
        amqp_port=None if no_amqp else amqp_port,
    )
    log.info("data directory %s", data_dir)
    log.info(
        "memory high watermark %s (%s), disk free limit %s, queue flow limit %s",
        resources.human(resources.memory_limit(watermark)),
        f"{watermark:.0%} of {resources.human(resources.total_memory())}"
        if isinstance(watermark, float)
        else "set in bytes",
        resources.human(disk_limit),
        resources.human(flow_limit),
    )
    try:
        startup.run(config)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    log.info("stopped")
