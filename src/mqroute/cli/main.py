"""The `mqroute` click group and what its subcommands share: the --url option and `ask`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import trio

from .. import __version__
from ..client.connection import Connection, connect
from ..errors import MQRouteError

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mqroute")
def main() -> None:
    """mqroute: a RabbitMQ-style message broker written in Python on trio.

    Start a broker with `mqroute server`, then connect from Python with
    `mqroute.connect("mqroute://127.0.0.1:5680")`.
    """


URL_OPTION = click.option(
    "--url",
    default="mqroute://127.0.0.1:5680",
    show_default=True,
    envvar="MQROUTE_URL",
    help="The broker to talk to (or set MQROUTE_URL).",
)


def ask(url: str, client_name: str, request: Callable[[Connection], Awaitable[T]]) -> T:
    """Run one admin request over a fresh connection; broker errors become CLI errors."""

    async def run() -> T:
        async with connect(url, client_name=client_name) as conn:
            return await request(conn)

    try:
        return trio.run(run)
    except MQRouteError as exc:
        raise click.ClickException(str(exc)) from None
