"""The layering holds: imports point down only, as the one table below declares.

Two checks: each module's own import statements (read from its source, so a lazy import
inside a function counts too), and what importing a package really loads (in a fresh
interpreter), so the SDK stays light and the core stays pure.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "mqroute"

#: Each layer and the layers it may import ("root" is ``mqroute/__init__.py``, the version).
ALLOWED = {
    "errors": {"errors"},
    "model": {"model", "errors"},
    "records": {"records", "model", "errors"},
    "core": {"core", "records", "model", "errors"},
    "protocol": {"protocol", "model", "errors"},
    "client": {"client", "protocol", "model", "errors", "root"},
    "server": {"server", "core", "protocol", "records", "model", "errors", "root"},
    "bench": {"bench", "client", "model", "errors"},
    "cli": {"cli", "bench", "client", "server", "protocol", "model", "errors", "root"},
    "testing": {"testing", "server", "core", "client", "model", "errors"},
    "pytest_plugin": {"pytest_plugin", "testing"},
}
#: Modules held tighter than their layer: the store knows records, not the core; the sans-I/O
#: front ends know the core's facade and their protocol, nothing of the trio side.
MODULE_ALLOWED = {
    "mqroute.server.store": {"records", "model", "errors"},
    "mqroute.server.native": {"core", "protocol", "model", "errors"},
    "mqroute.server.amqp_front": {"core", "protocol", "model", "errors", "root"},
}
#: Third-party and standard modules a layer must never import.
FORBIDDEN = {
    "core": {"trio", "anyio", "cbor2", "sqlite3", "socket", "time", "os", "asyncio", "threading"},
    "protocol": {"trio", "anyio", "sqlite3", "socket", "time", "asyncio", "threading"},
    "model": {"trio", "anyio", "cbor2", "sqlite3", "socket", "time", "os"},
    "errors": {"trio", "anyio", "cbor2", "sqlite3", "socket", "time", "os"},
}


def layer_of(module: str) -> str:
    """``mqroute.core.queue`` -> ``core``; ``mqroute`` -> ``root``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def modules() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__" and len(parts) > 1:
            found.append(".".join(parts))
    return found


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(mqroute modules it imports, other top-level modules it imports)."""
    path = SRC.parent / (module.replace(".", "/"))
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    package = module.split(".") if is_package else module.split(".")[:-1]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("mqroute") else external).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                internal.add(target)
            elif (node.module or "").startswith("mqroute"):
                internal.add(node.module or "")
            else:
                external.add((node.module or "").split(".")[0])
    return internal, {name.split(".")[0] for name in external}


@pytest.mark.parametrize("module", modules())
def test_imports_point_down(module: str) -> None:
    layer = layer_of(module)
    internal, external = imports_of(module)
    bad = {target for target in internal if layer_of(target) not in ALLOWED[layer]}
    assert not bad, f"{module} ({layer}) imports {bad}; allowed: {sorted(ALLOWED[layer])}"
    assert not external & FORBIDDEN.get(layer, set()), f"{module} does I/O it must not"
    tighter = MODULE_ALLOWED.get(module)
    if tighter is not None:
        bad = {t for t in internal if t != module and layer_of(t) not in tighter}
        assert not bad, f"{module} imports {bad}; allowed: {sorted(tighter)}"
        assert "trio" not in external, f"{module} is sans I/O"


@pytest.mark.parametrize("module", sorted(MODULE_ALLOWED))
def test_tighter_rules_name_real_modules(module: str) -> None:
    assert module in modules()


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_mqroute_loads_only_the_sdk() -> None:
    loaded = loaded_after("import mqroute")
    heavy = {"trio", "sqlite3", "mqroute.server", "mqroute.core", "mqroute.cli", "mqroute.bench"}
    assert not loaded & heavy


def test_the_server_loads_when_its_names_are_used() -> None:
    loaded = loaded_after("import mqroute; mqroute.serve")
    assert {"mqroute.server.shell", "trio"} <= loaded


def test_the_core_adds_no_io_to_the_sdk() -> None:
    """(``import mqroute.core`` runs the package's ``__init__`` first, which loads the SDK.)"""
    added = loaded_after("import mqroute.core.vhost") - loaded_after("import mqroute")
    assert not added & {"trio", "anyio", "sqlite3", "cbor2", "socket", "mqroute.server"}
