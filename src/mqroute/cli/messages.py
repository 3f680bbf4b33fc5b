"""Messages from the shell: ``publish`` (one, or one per line of stdin) and ``consume``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from ..client.connection import Connection
from ..model import Properties
from .main import URL_OPTION, ask, main
from .values import parse_header, parse_property, table_option


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
@table_option("--header", "A header; repeat for more.")
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
    props: dict[str, Any] = dict(parse_property(p) for p in properties)
    if table:
        props["headers"] = dict(parse_header(h) for h in table)
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

    count = ask(url, "mqroute publish", send)
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
        ask(url, "mqroute consume", run)
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
