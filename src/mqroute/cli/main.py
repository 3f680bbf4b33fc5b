"""The ``mqroute`` command. The only module that imports click; thin over server and client."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import trio

from .. import __version__
from ..client.connection import Connection, connect
from ..errors import MQRouteError, NotFound, ServerError
from ..model import PROPERTY_NAMES, Properties
from ..protocol import DEFAULT_MAX_FRAME_SIZE, HANDSHAKE_FRAME_SIZE
from ..server import resources, startup
from ..server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig
from ..server.datadir import default_data_dir

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
    log_level: str,
) -> None:
    """Run the broker in the foreground until Ctrl-C or SIGTERM."""
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


#: Properties given as --property NAME=VALUE: all text but these integers.
INTEGER_PROPERTIES = ("priority", "timestamp")
TEXT_PROPERTIES = tuple(
    n for n in PROPERTY_NAMES if n not in ("headers", "persistent", *INTEGER_PROPERTIES)
)


def _parse_property(text: str) -> tuple[str, object]:
    """A message property: as text (a numeric message_id stays "123"), but for the integers."""
    name, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--property")
    if name in ("headers", "persistent"):
        raise click.BadParameter(f"use --{name.rstrip('s')} for {name}", param_hint="--property")
    if name in INTEGER_PROPERTIES:
        try:
            return name, int(value)
        except ValueError:
            raise click.BadParameter(
                f"{name} must be an integer, not {value!r}", param_hint="--property"
            ) from None
    if name not in TEXT_PROPERTIES:
        raise click.BadParameter(
            f"no property {name!r}; choose from {', '.join(TEXT_PROPERTIES + INTEGER_PROPERTIES)}",
            param_hint="--property",
        )
    return name, value


COLUMNS = {
    "queues": [
        "name",
        "ready",
        "unacked",
        "delayed",
        "consumers",
        "publish_rate",
        "deliver_rate",
        "durable",
        "arguments",
    ],
    "exchanges": ["name", "type", "durable", "bindings", "arguments"],
    "bindings": ["source", "kind", "destination", "routing_key", "arguments"],
    "consumers": ["queue", "consumer_tag", "connection", "prefetch", "unacked", "active"],
    "connections": ["id", "peer", "client", "opened", "consumers", "unacked"],
}


LABELS = {"publish_rate": "publish/s", "deliver_rate": "deliver/s"}  # column headings


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
    labels = [LABELS.get(c, c) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(labels)]
    numeric = [all(type(row.get(c)) in (int, float) for row in rows) for c in columns]
    lines = [
        "  ".join(
            c.ljust(w) if not n else c.rjust(w)
            for c, w, n in zip(labels, widths, numeric, strict=True)
        )
    ]
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def _table_option(
    name: str, help_text: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(name, "table", multiple=True, metavar="NAME=VALUE", help=help_text)


@main.group()
def declare() -> None:
    """Declare exchanges and queues (idempotent; a mismatch is an error)."""


@declare.command("exchange")
@click.argument("name")
@click.option(
    "--type",
    "kind",
    default="direct",
    show_default=True,
    type=click.Choice(["direct", "fanout", "topic", "headers"]),
)
@click.option("--durable", is_flag=True, help="Keep it across broker restarts.")
@click.option("--auto-delete", is_flag=True, help="Delete it when its last binding goes.")
@click.option("--internal", is_flag=True, help="Only other exchanges may publish to it.")
@_table_option("--argument", "An exchange argument, e.g. alternate-exchange=unrouted.")
@URL_OPTION
def declare_exchange(
    name: str,
    kind: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    table: tuple[str, ...],
    url: str,
) -> None:
    """Declare exchange NAME."""
    arguments = dict(_parse_header(a) for a in table)
    _ask(
        url,
        "mqroute declare",
        lambda conn: conn.declare_exchange(
            name,
            kind,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        ),
    )
    click.echo(f"exchange {name!r} ({kind}) declared")


@declare.command("queue")
@click.argument("name", default="")
@click.option(
    "--durable", is_flag=True, help="Keep it (and its persistent messages) across restarts."
)
@click.option("--auto-delete", is_flag=True, help="Delete it when its last consumer goes.")
@_table_option(
    "--argument",
    "A queue argument, e.g. x-max-length=1000 or "
    "x-dead-letter-exchange=dlx (integers and true/false are typed).",
)
@URL_OPTION
def declare_queue(
    name: str, durable: bool, auto_delete: bool, table: tuple[str, ...], url: str
) -> None:
    """Declare queue NAME (empty: the broker names it)."""
    arguments = dict(_parse_header(a) for a in table)
    info = _ask(
        url,
        "mqroute declare",
        lambda conn: conn.declare_queue(
            name, durable=durable, auto_delete=auto_delete, arguments=arguments
        ),
    )
    click.echo(
        f"queue {info.name!r} declared: {info.message_count} messages, "
        f"{info.consumer_count} consumers"
    )


async def _swapped(conn: Connection, source: str, destination: str) -> bool:
    """A queue named like the exchange argument and an exchange named like the queue one."""
    try:
        await conn.declare_exchange(destination, passive=True)
        await conn.declare_queue(source, passive=True)
    except NotFound:
        return False
    return True


def _binding_command(bind: bool) -> Callable[..., None]:
    verb = "bind" if bind else "unbind"

    @click.argument("source")
    @click.argument("destination")
    @click.argument("routing_key", default="")
    @click.option(
        "--to-exchange",
        is_flag=True,
        help="DESTINATION is an exchange (exchange-to-exchange binding).",
    )
    @_table_option("--argument", "A binding argument (headers exchanges: x-match=any, …).")
    @URL_OPTION
    def command(
        source: str,
        destination: str,
        routing_key: str,
        to_exchange: bool,
        table: tuple[str, ...],
        url: str,
    ) -> None:
        arguments = dict(_parse_header(a) for a in table)

        async def request(conn: Connection) -> None:
            try:
                await send(conn)
            except NotFound:
                if not to_exchange and await _swapped(conn, source, destination):
                    raise click.ClickException(
                        f"no queue {destination!r}, but there is an exchange of that name and "
                        f"a queue {source!r}: mqroute {verb} takes the exchange first; try "
                        f"mqroute {verb} {destination} {source} {routing_key}".rstrip()
                    ) from None
                raise

        async def send(conn: Connection) -> None:
            if to_exchange and bind:
                await conn.bind_exchange(destination, source, routing_key, arguments)
            elif to_exchange:
                await conn.unbind_exchange(destination, source, routing_key, arguments)
            elif bind:
                await conn.bind_queue(destination, source, routing_key, arguments)
            else:
                await conn.unbind_queue(destination, source, routing_key, arguments)

        _ask(url, f"mqroute {verb}", request)
        kind = "exchange" if to_exchange else "queue"
        click.echo(f"{verb}: {source!r} --[{routing_key}]--> {kind} {destination!r}")

    command.__doc__ = (
        f"{verb.capitalize()} DESTINATION (a queue, or an exchange with "
        f"--to-exchange) {'to' if bind else 'from'} exchange SOURCE."
    )
    return command


main.command("bind")(_binding_command(bind=True))
main.command("unbind")(_binding_command(bind=False))


@main.command()
@click.argument("kind", type=click.Choice(["exchange", "queue"]))
@click.argument("name")
@click.option("--if-unused", is_flag=True, help="Only if it has no consumers (queue) or bindings.")
@click.option("--if-empty", is_flag=True, help="Queues: only if it holds no messages.")
@URL_OPTION
def delete(kind: str, name: str, if_unused: bool, if_empty: bool, url: str) -> None:
    """Delete an exchange or a queue."""
    if kind == "exchange":
        _ask(url, "mqroute delete", lambda conn: conn.delete_exchange(name, if_unused=if_unused))
        click.echo(f"exchange {name!r} deleted")
        return
    count = _ask(
        url,
        "mqroute delete",
        lambda conn: conn.delete_queue(name, if_unused=if_unused, if_empty=if_empty),
    )
    click.echo(f"queue {name!r} deleted with {count} messages")


@main.command()
@click.argument("queue")
@URL_OPTION
def purge(queue: str, url: str) -> None:
    """Drop the ready messages of QUEUE."""
    count = _ask(url, "mqroute purge", lambda conn: conn.purge_queue(queue))
    click.echo(f"purged {count} messages from {queue!r}")


@main.command()
@click.argument("exchange")
@click.argument("routing_key")
@click.argument("body", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Send this file's contents as the body.",
)
@click.option(
    "--lines",
    is_flag=True,
    help="Send each line of standard input as one message (with a progress count).",
)
@_table_option("--header", "A header; repeat for more.")
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="A message property: content_type, message_id, correlation_id, reply_to, "
    "expiration, priority, type, app_id, …",
)
@click.option("--persistent", is_flag=True, help="Delivery mode 2: kept by durable queues.")
@click.option("--mandatory", is_flag=True, help="Fail if no queue receives it.")
@URL_OPTION
def publish(
    exchange: str,
    routing_key: str,
    body: str | None,
    path: Path | None,
    lines: bool,
    table: tuple[str, ...],
    properties: tuple[str, ...],
    persistent: bool,
    mandatory: bool,
    url: str,
) -> None:
    """Publish to EXCHANGE with ROUTING_KEY ("" is the default exchange).

    The body is BODY, or --file, or each line of standard input with --lines. Every message
    is confirmed by the broker before the command ends.
    """
    props: dict[str, Any] = dict(_parse_property(p) for p in properties)
    if table:
        props["headers"] = dict(_parse_header(h) for h in table)
    if persistent:
        props["persistent"] = True
    try:
        Properties(**props)  # every value checked before anything is sent
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--property") from None
    bodies: Iterable[bytes]
    if lines:
        bodies = _stdin_lines()
    elif path is not None:
        bodies = [path.read_bytes()]
    elif body is not None:
        bodies = [body.encode()]
    else:
        raise click.UsageError("give a BODY, --file or --lines")

    async def send(conn: Connection) -> int:
        count = 0
        async with conn.publisher(max_in_flight=500) as pub:
            for data in bodies:
                await pub.publish(exchange, routing_key, data, mandatory=mandatory, **props)
                count += 1
                if lines and count % 1000 == 0:
                    click.echo(f"\rpublished {count:,}", nl=False, err=True)
        if lines:
            click.echo(f"\rpublished {count:,}", err=True)
        return count

    count = _ask(url, "mqroute publish", send)
    click.echo(f"published {count} message{'s' if count != 1 else ''}, all confirmed")


@main.command()
@click.argument("queue")
@click.option(
    "--count", default=0, type=click.IntRange(0), help="Stop after this many (0: no limit)."
)
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(0, min_open=True),
    help="Stop when no message has come for this many seconds (default: wait for ever).",
)
@click.option("--ack", "mode", flag_value="ack", default=True, help="Ack each message (default).")
@click.option(
    "--requeue",
    "mode",
    flag_value="requeue",
    help="Look without taking: hold the messages, then give them all back unchanged, in "
    "place and not counted as delivery attempts. Shows at most --prefetch of them.",
)
@click.option("--no-ack", "mode", flag_value="no-ack", help="Auto-ack (at-most-once).")
@click.option("--prefetch", default=100, show_default=True, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@URL_OPTION
def consume(
    queue: str,
    count: int,
    timeout: float | None,
    mode: str,
    prefetch: int,
    as_json: bool,
    url: str,
) -> None:
    """Print the messages of QUEUE as they arrive.

    Runs until Ctrl-C, --count messages or --timeout seconds of silence. Messages that
    arrived but were not printed go back unchanged.
    """
    if mode == "requeue" and prefetch == 0:
        raise click.UsageError("--requeue holds what it shows: give it a --prefetch above 0")

    async def run(conn: Connection) -> int:
        seen = 0
        held: list[Any] = []
        async with conn.consume(queue, prefetch=prefetch, auto_ack=mode == "no-ack") as messages:
            while not count or seen < count:
                with trio.move_on_after(timeout if timeout is not None else math.inf) as idle:
                    msg = await anext(messages, None)
                if idle.cancelled_caught:
                    click.echo(f"no message for {timeout:g}s; stopping", err=True)
                    break
                if msg is None:
                    break
                click.echo(_describe(msg, as_json))
                seen += 1
                if mode == "ack":
                    await msg.ack()
                elif mode == "requeue":
                    held.append(msg)
                    if len(held) >= prefetch and (not count or seen < count):
                        click.echo(f"showed --prefetch {prefetch} messages; stopping", err=True)
                        break
            if held:
                await held[-1].release(multiple=True)
        return seen

    try:
        _ask(url, "mqroute consume", run)
    except KeyboardInterrupt:
        pass


def _stdin_lines() -> Iterator[bytes]:
    for line in sys.stdin:
        yield line.rstrip("\n").encode()


def _describe(msg: Any, as_json: bool) -> str:
    props = {k: v for k, v in attrs.asdict(msg.properties).items() if v not in (None, False)}
    try:
        text: Any = msg.body.decode()
    except UnicodeDecodeError:
        text = None
    if as_json:
        return json.dumps(
            {
                "exchange": msg.exchange,
                "routing_key": msg.routing_key,
                "redelivered": msg.redelivered,
                "properties": props,
                "body": text if text is not None else msg.body.hex(),
                "body_encoding": "utf-8" if text is not None else "hex",
            },
            default=repr,
        )
    flag = " (redelivered)" if msg.redelivered else ""
    shown = text if text is not None else f"<{len(msg.body)} bytes>"
    extra = "".join(f"  {key}={_shown_value(value)}" for key, value in props.items())
    return f"[{msg.exchange or '(default)'} {msg.routing_key}]{flag} {shown}{extra}"


def _shown_value(value: Any) -> str:
    """A property as a person reads it: text as is, anything else (headers) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=repr)


@main.command()
@click.option(
    "--producers",
    "-x",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Producer processes (one connection each).",
)
@click.option(
    "--consumers",
    "-y",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Consumer processes; each consumes its share of the queues.",
)
@click.option(
    "--size",
    "-s",
    default=256,
    show_default=True,
    type=click.IntRange(0),
    help="Body bytes; the first 8 carry the send time for latency.",
)
@click.option(
    "--confirm",
    "-c",
    type=click.IntRange(1),
    default=None,
    help="Most publishes unconfirmed at once, per producer. "
    "Without it the window is 10,000 and confirms are not waited for one by one.",
)
@click.option("--persistent", is_flag=True, help="Persistent messages into durable queues.")
@click.option(
    "--prefetch",
    "-q",
    default=100,
    show_default=True,
    type=click.IntRange(0),
    help="Unacked messages per consumer (0: no limit).",
)
@click.option(
    "--multi-ack-every",
    "-A",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Ack with multiple=True every N messages (0: ack each one).",
)
@click.option("--auto-ack", "-a", is_flag=True, help="Consumers do not ack (at-most-once).")
@click.option(
    "--rate",
    "-r",
    type=float,
    default=None,
    help="Messages per second per producer (default: as fast as possible).",
)
@click.option("--count", "-C", type=click.IntRange(1), default=None, help="Messages per producer.")
@click.option(
    "--time",
    "-z",
    "seconds",
    type=float,
    default=None,
    help="Run for this many seconds instead of a count.",
)
@click.option(
    "--exchange",
    "-e",
    default=None,
    help="Exchange to publish to (default: the default exchange for one queue, "
    "an exchange named 'bench' for several).",
)
@click.option(
    "--exchange-type",
    "-t",
    default="direct",
    show_default=True,
    type=click.Choice(["direct", "fanout", "topic", "headers"]),
)
@click.option(
    "--queues",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Queues bound to the exchange; each message goes to all of them.",
)
@click.option(
    "--spread",
    is_flag=True,
    help="With several queues, send each message to one of them, round robin.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@URL_OPTION
def bench(
    producers: int,
    consumers: int,
    size: int,
    confirm: int | None,
    persistent: bool,
    prefetch: int,
    multi_ack_every: int,
    auto_ack: bool,
    rate: float | None,
    count: int | None,
    seconds: float | None,
    exchange: str | None,
    exchange_type: str,
    queues: int,
    spread: bool,
    as_json: bool,
    quiet: bool,
    url: str,
) -> None:
    """Measure a running broker, like RabbitMQ's PerfTest.

    Producers and consumers run in separate processes. A progress line shows the rates each
    second; at the end you get publish and consume rates and confirm and end-to-end latency
    percentiles. Queues named bench (or bench-1 … bench-N) are purged before and deleted after.

    \b
    mqroute bench -C 100000 -A 50                  # 1 → 1, transient, multi-ack
    mqroute bench -C 100000 -c 1000 --persistent   # durable, confirms, 1,000 in flight
    mqroute bench -z 20 -r 1000 -c 1               # latency at a fixed rate
    mqroute bench -C 50000 --queues 10 -t fanout   # fan-out to 10 queues
    """
    from ..bench.runner import BenchOptions, format_result, run

    opts = BenchOptions(
        url=url,
        producers=producers,
        consumers=consumers,
        size=size,
        confirm=confirm,
        persistent=persistent,
        prefetch=prefetch,
        multi_ack_every=multi_ack_every,
        auto_ack=auto_ack,
        rate=rate,
        count=count,
        time=seconds,
        exchange=exchange,
        exchange_type=exchange_type,
        queues=queues,
        spread=spread,
    )
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        click.echo(("\r" + line) if tty else line, err=True, nl=not tty)

    if not quiet:
        click.echo(f"mqroute bench: {opts.describe()}", err=True)
    try:
        result = run(opts, progress=None if quiet else progress)
    except MQRouteError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if tty and not quiet:
            click.echo(err=True)
    click.echo(json.dumps(result) if as_json else format_result(result))
