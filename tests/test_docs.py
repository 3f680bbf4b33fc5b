"""The documentation keeps up with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

import mqroute
from mqroute.errors import REPLY_CODES
from mqroute.protocol import _EVENT_TYPES

DOCS = Path(__file__).parent.parent / "docs"


def test_protocol_doc_lists_every_frame_with_its_fields() -> None:
    text = (DOCS / "protocol.md").read_text()
    for code, cls in _EVENT_TYPES.items():
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
