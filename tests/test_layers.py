"""The layering holds: the core imports no I/O, and the protocol imports no core state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "mqroute"
CORE = [
    "broker",
    "session",
    "queue",
    "queue_args",
    "dedup",
    "journal",
    "flow",
    "paging",
    "routing",
    "topic_trie",
    "model",
    "errors",
]
IO = {"trio", "anyio", "cbor2", "sqlite3", "socket", "time", "os", "asyncio", "threading"}


def imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or "").split(".")[0])
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_modules_do_no_io(module: str) -> None:
    assert not imports(module) & IO


def test_protocol_does_not_know_the_core() -> None:
    assert not imports("protocol") & {".broker", ".session", ".queue", ".journal", ".store"}
