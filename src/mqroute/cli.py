"""The ``mqroute`` command. The only module that imports click; thin over server and client."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import trio

from . import __version__
from .client import Connection, connect
from .datadir import DataDirError, default_data_dir
from .errors import MQRouteError
from .server import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, serve
from .store import StoreError

T = TypeVar("T")

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


URL_OPTION = click.option(
    "--url",
    default="mqroute://127.0.0.1:5680",
    show_default=True,
    envvar="MQROUTE_URL",
    help="The broker to talk to (or set MQROUTE_URL).",
)


def _ask(url: str, client_name: str, request: Callable[[Connection], Awaitable[T]]) -> T:
    """Run one admin request over a fresh connection; broker errors become CLI errors."""

    async def run() -> T:
        async with connect(url, client_name=client_name) as conn:
            return await request(conn)

    try:
        return trio.run(run)
    except MQRouteError as exc:
        raise click.ClickException(str(exc)) from None


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
@URL_OPTION
def redrive(queue: str, to_exchange: str | None, limit: int, url: str) -> None:
    """Move messages out of dead-letter queue QUEUE.

    Each goes back to the queue it last died in (its x-last-death-queue header), or to
    --to-exchange. Messages with nowhere to go stay in QUEUE.
    """
    moved = _ask(
        url,
        "mqroute redrive",
        lambda conn: conn.redrive(queue, to_exchange=to_exchange, limit=limit or None),
    )
    click.echo(f"moved {moved} message{'s' if moved != 1 else ''} out of {queue!r}")


@main.group()
def route() -> None:
    """Understand routing."""


@route.command("explain")
@click.argument("exchange")
@click.argument("routing_key")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    help="A message header (for headers exchanges); repeat for more. Integers and "
    "true/false are typed.",
)
@URL_OPTION
def route_explain(exchange: str, routing_key: str, headers: tuple[str, ...], url: str) -> None:
    """Show where a message published to EXCHANGE with ROUTING_KEY would go.

    A dry run: every binding that matches, exchange by exchange, and the queues that would
    receive it. Nothing is published. Use "" for the default exchange.
    """
    table = dict(_parse_header(h) for h in headers)
    result = _ask(
        url, "mqroute route explain", lambda conn: conn.explain_route(exchange, routing_key, table)
    )
    click.echo(
        f"exchange {exchange!r}, routing key {routing_key!r}"
        + (f", headers {table}" if table else "")
    )
    for step in result["steps"]:
        key = step["routing_key"]
        args = f" {step['arguments']}" if step["arguments"] else ""
        click.echo(
            f"  {step['exchange'] or '(default)'} ({step['type']}) "
            f"--[{key}{args}]--> {step['destination_kind']} {step['destination']}"
        )
    queues = result["queues"]
    if queues:
        click.echo(f"=> {len(queues)} queue{'s' if len(queues) != 1 else ''}: {', '.join(queues)}")
    else:
        click.echo("=> no queue: the message would be dropped (or returned, if mandatory)")


def _parse_header(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--header")
    if value in ("true", "false"):
        return name, value == "true"
    try:
        return name, int(value)
    except ValueError:
        return name, value


COLUMNS = {
    "queues": ["name", "ready", "unacked", "delayed", "consumers", "durable", "arguments"],
    "exchanges": ["name", "type", "durable", "bindings", "arguments"],
    "bindings": ["source", "kind", "destination", "routing_key", "arguments"],
    "consumers": ["queue", "consumer_tag", "connection", "prefetch", "unacked", "active"],
    "connections": ["id", "peer", "client", "opened", "consumers", "unacked"],
}


@main.command("list")
@click.argument("what", type=click.Choice(list(COLUMNS)))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@URL_OPTION
def list_(what: str, as_json: bool, url: str) -> None:
    """List queues, exchanges, bindings, consumers or connections."""
    rows = _ask(url, f"mqroute list {what}", lambda conn: conn.inspect(what))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=repr))
        return
    click.echo(_table(rows, COLUMNS[what]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@URL_OPTION
def status(as_json: bool, url: str) -> None:
    """Version, uptime, memory, connections, queues and message counts."""
    info = _ask(url, "mqroute status", lambda conn: conn.inspect("status"))
    if as_json:
        click.echo(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key.replace('_', ' '):<{width}}  {value}")


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """Aligned columns; numbers right-aligned; empty tables say so."""
    if not rows:
        return "(none)"

    def cell(value: object) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(c), int) and not isinstance(row.get(c), bool) for row in rows)
        for c in columns
    ]
    lines = [
        "  ".join(
            c.ljust(w) if not n else c.rjust(w)
            for c, w, n in zip(columns, widths, numeric, strict=True)
        )
    ]
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)
