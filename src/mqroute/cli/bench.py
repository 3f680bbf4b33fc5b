"""``mqroute bench``: the load generator, with a progress line and a summary."""

from __future__ import annotations

import json
import sys

import click

from ..errors import MQRouteError
from .main import URL_OPTION, main


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
