"""``python -m mqroute`` is the ``mqroute`` command."""

from .cli import main

main()
