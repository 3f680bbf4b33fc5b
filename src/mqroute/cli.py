"""The ``mqroute`` command. The only module that imports click; thin over server and client."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click
import trio

from . import __version__
from .datadir import DataDirError, default_data_dir
from .server import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, serve
from .store import StoreError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mqroute")
def main() -> None:
    """mqroute: a RabbitMQ-style message broker written in Python on trio.

    Start a broker with `mqroute server`, then connect from Python with
    `mqroute.connect("mqroute://127.0.0.1:5680")`.
    """


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
    log_level: str,
) -> None:
    """Run the broker in the foreground until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    log = logging.getLogger("mqroute")
    data_dir = data_dir or default_data_dir()
    fault, fault_at = _fault_injection()
    config = ServerConfig(
        host=host,
        port=port,
        heartbeat_ms=int(heartbeat * 1000),
        max_message_size=max_message_size,
        max_frame_size=max_message_size + 64 * 1024,
        data_dir=data_dir,
        fault=fault,
        fault_at=fault_at,
    )
    log.info("data directory %s", data_dir)
    try:
        trio.run(_run_until_signal, config)
    except (DataDirError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    log.info("stopped")


def _fault_injection() -> tuple[str | None, int]:
    """Crash tests set MQROUTE_FAULT=before-commit:N or after-commit:N (kill at batch N)."""
    point, _, at = os.environ.get("MQROUTE_FAULT", "").partition(":")
    return (point or None), int(at or 1)


async def _run_until_signal(config: ServerConfig) -> None:
    log = logging.getLogger("mqroute")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, config)
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


@main.command()
@click.argument("queue")
@click.option(
    "--to-exchange",
    default=None,
    help="Publish the messages to this exchange (with their routing keys) instead of "
    "sending each back to the queue it last died in.",
)
@click.option(
    "--limit",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Move at most this many (0 = all).",
)
@click.option(
    "--url",
    default="mqroute://127.0.0.1:5680",
    show_default=True,
    envvar="MQROUTE_URL",
    help="The broker to talk to.",
)
def redrive(queue: str, to_exchange: str | None, limit: int, url: str) -> None:
    """Move messages out of dead-letter queue QUEUE.

    Each goes back to the queue it last died in (its x-last-death-queue header), or to
    --to-exchange. Messages with nowhere to go stay in QUEUE.
    """
    from .client import connect
    from .errors import MQRouteError

    async def run() -> int:
        async with connect(url, client_name="mqroute redrive") as conn:
            return await conn.redrive(queue, to_exchange=to_exchange, limit=limit or None)

    try:
        moved = trio.run(run)
    except MQRouteError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"moved {moved} message{'s' if moved != 1 else ''} out of {queue!r}")
