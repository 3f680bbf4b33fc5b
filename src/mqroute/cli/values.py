"""Values typed on the command line: headers, properties and argument tables."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..model import PROPERTY_NAMES


def parse_header(text: str) -> tuple[str, object]:
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


def parse_property(text: str) -> tuple[str, object]:
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


def table_option(name: str, help_text: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(name, "table", multiple=True, metavar="NAME=VALUE", help=help_text)
