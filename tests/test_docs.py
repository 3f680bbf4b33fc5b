"""The documentation keeps up with the code it describes."""

from __future__ import annotations

import ast
import faulthandler
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import mqroute
from mqroute.client.connection import DEFAULT_URL
from mqroute.errors import REPLY_CODES
from mqroute.protocol import FRAME_TYPES
from mqroute.testing import running_broker

DOCS = Path(__file__).parent.parent / "docs"


def test_protocol_doc_lists_every_frame_with_its_fields() -> None:
    text = (DOCS / "protocol.md").read_text()
    for code, cls in FRAME_TYPES.items():
        row = re.search(rf"^\| {code} \| {cls.__name__} \| [^|]+ \| (.*) \|$", text, re.M)
        assert row, f"frame {code} {cls.__name__} missing from docs/protocol.md"
        documented = [f.split(":")[0].strip() for f in row.group(1).split(", ") if ":" in f]
        assert documented == [f.name for f in attrs.fields(cls)], cls.__name__


def test_protocol_doc_lists_every_error_code() -> None:
    text = (DOCS / "protocol.md").read_text()
    for code, number in REPLY_CODES.items():
        assert f"| `{code}` | {number} |" in text


def test_public_names_are_exported() -> None:
    for name in mqroute.__all__:
        assert hasattr(mqroute, name), name
    assert {"connect", "serve", "Properties", "NotFound", "ConnectionClosed"} <= set(
        mqroute.__all__
    )


# --- every Python snippet in README.md and docs/ runs ------------------------------------------

ROOT = DOCS.parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"  # a snippet's AMQP URL: the embedded broker's
NOT_RUN = "# not run:"  # a snippet's first line, visible in the rendered page, says why


@attrs.frozen
class Snippet:
    path: str
    line: int
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 2
            found.append(Snippet(str(path.relative_to(ROOT)), line, match.group(1)))
    return found


SNIPPETS = snippets()


def test_the_docs_have_snippets_to_run() -> None:
    assert len(SNIPPETS) >= 15  # the pattern above still finds them


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_doc_snippet_runs_as_written(
    snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each on a fresh embedded broker, in an empty directory; the default URL in a snippet
    is the embedded broker's. Async fragments get ``conn``, an open connection."""
    if snippet.code.startswith(NOT_RUN):
        pytest.skip(snippet.code.splitlines()[0])
    monkeypatch.chdir(tmp_path)
    faulthandler.dump_traceback_later(60, exit=True)  # a snippet that blocks ends the run
    try:
        with running_broker() as url:
            code = snippet.code.replace(DEFAULT_URL, url).replace(AMQP_URL, url.amqp_url)
            namespace: dict[str, Any] = {"__name__": "snippet"}
            try:
                compiled = compile(code, snippet.id, "exec")
            except SyntaxError:  # top-level await: a fragment of an async function
                compiled = compile(code, snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                trio.run(_run_fragment, compiled, namespace, url)
            else:
                exec(compiled, namespace)
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value):
                    value(mqroute_broker=url)  # a pytest test shown in the docs
    finally:
        faulthandler.cancel_dump_traceback_later()


async def _run_fragment(compiled: Any, namespace: dict[str, Any], url: str) -> None:
    async with mqroute.connect(url, client_name="doc snippet") as conn:
        namespace.update(conn=conn, mqroute=mqroute, trio=trio)
        with trio.fail_after(30):
            result = eval(compiled, namespace)
            if result is not None:
                await result


def test_every_sdk_call_the_docs_name_exists() -> None:
    """``mqroute.connect_robust(...)`` in a table is a promise; a renamed function breaks it."""
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for name in re.findall(r"\bmqroute\.([A-Za-z_]\w*)\(", path.read_text()):
            assert hasattr(mqroute, name), f"{path.name} names mqroute.{name}, which is gone"


def test_the_migration_table_maps_robust_connections_to_robust_connections() -> None:
    text = (DOCS / "from-rabbitmq.md").read_text()
    [row] = [line for line in text.splitlines() if "aio_pika.connect_robust" in line]
    assert "mqroute.connect_robust(url)" in row
