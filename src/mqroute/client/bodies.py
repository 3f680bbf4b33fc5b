"""Message bodies on the client side: bytes by default, other values through a serializer.

A body is sent as bytes. ``str`` is sent as UTF-8. Any other value needs a serializer: the
connection's (``connect(url, serializer=...)``), or JSON when the publish says
``content_type="application/json"``. A serializer turns a value into ``(bytes,
content_type)``; the content type is set on the message unless the publish gave one::

    await conn.publish("", "orders", {"id": 1}, content_type="application/json")
    msg = await conn.get("orders")
    order = msg.json()                      # {"id": 1}

Pydantic models (anything with ``model_dump_json``) are encoded by the JSON serializer too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs

from ..model import Properties

#: Turns a body value into (bytes, content type).
Serializer = Callable[[Any], tuple[bytes, str]]

JSON = "application/json"
BYTES_LIKE = (bytes, bytearray, memoryview)


def json_serializer(value: Any) -> tuple[bytes, str]:
    """JSON, compact, with no NaN or infinity (which JSON does not have)."""
    dump = getattr(value, "model_dump_json", None)  # a pydantic v2 model
    if callable(dump):
        return str(dump()).encode(), JSON
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        name = type(value).__name__
        raise TypeError(f"a body of type {name} cannot be sent as JSON: {exc}") from None
    return text.encode(), JSON


def encode_body(
    body: Any, properties: Properties, serializer: Serializer | None
) -> tuple[bytes, Properties]:
    """The bytes to send for ``body``, and the properties with the content type it implies."""
    kind = type(body)
    if kind is bytes:
        return body, properties
    if kind is str:
        return body.encode(), properties
    if isinstance(body, BYTES_LIKE):
        return bytes(body), properties
    if isinstance(body, str):
        return body.encode(), properties
    if serializer is None and properties.content_type == JSON:
        serializer = json_serializer
    if serializer is None:
        raise TypeError(
            f"a message body must be bytes, bytearray, memoryview or str, not "
            f"{kind.__name__}; to send other values pass content_type='application/json' "
            "or connect(..., serializer=...)"
        )
    data, content_type = serializer(body)
    if not isinstance(data, bytes):
        raise TypeError(f"the serializer returned {type(data).__name__}, not bytes")
    if properties.content_type is None:
        properties = attrs.evolve(properties, content_type=content_type)
    return data, properties
