"""The ``mqroute`` command: one module per group of subcommands, on the click group in
main.py. The only package that imports click; thin over server and client."""

from . import admin, bench, messages, server, topology, users  # noqa: F401  (they register commands)
from .main import main

__all__ = ["main"]
