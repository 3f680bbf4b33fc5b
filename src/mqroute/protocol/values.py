"""Field values of the native protocol: the checks a decoded field must pass, and the
encoding of properties and tables (both cached, since publishers repeat the same few)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import RemoteProtocolError
from ..model import EMPTY_PROPERTIES, PROPERTY_NAMES, Properties, Table

MAX_NESTING = 16
MAX_INT = 2**63 - 1

# Field checkers: return the value as the event holds it, or raise RemoteProtocolError (they
# check what the peer sent).


def _fail(name: str, want: str, value: Any) -> RemoteProtocolError:
    return RemoteProtocolError(f"field {name!r} must be {want}, not {type(value).__name__}")


def _check_int(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise _fail(name, "a non-negative 63-bit integer", value)
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _fail(name, "a boolean", value)
    return value


def _check_str(name: str, value: Any) -> str:
    if type(value) is not str:
        raise _fail(name, "a text string", value)
    return value


def _check_opt_str(name: str, value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise _fail(name, "a text string or null", value)
    return value


def _check_bytes(name: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise _fail(name, "a byte string", value)
    return value


def _check_versions(name: str, value: Any) -> list[int]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise _fail(name, "an array of integers", value)
    return value


def _check_table(name: str, value: Any) -> Table:
    if type(value) is not dict:
        raise _fail(name, "a map", value)
    _check_table_values(name, value, 0)
    return value


_PLAIN = (type(None), bool, int, float, str, bytes)
_MIN_TABLE_INT, _MAX_TABLE_INT = -(2**64), 2**64 - 1  # CBOR's integers without a bignum tag
_CARRIED = "str, bytes, int (64-bit), float, bool, None, list, or dict with str keys"


def check_table_values(kind: str, table: Table) -> None:
    """Raise TypeError or ValueError naming the entry (``header 'h'``) that the protocol cannot
    carry. The sending side calls this, so a bad value fails the call that holds it, not the
    connection that the broker would otherwise have to close."""
    for key, value in table.items():
        problem = _table_problem(value, 0)
        if problem is not None:
            error, text = problem
            raise error(f"{kind} {key!r} {text}; use {_CARRIED} (for example str(value))")


def _check_table_values(name: str, value: Any, depth: int) -> None:
    problem = _table_problem(value, depth)
    if problem is not None:
        raise RemoteProtocolError(f"field {name!r} {problem[1]}")


def _table_problem(value: Any, depth: int) -> tuple[type[Exception], str] | None:
    """What makes ``value`` unfit for a table, if anything: the error to raise and why."""
    if depth > MAX_NESTING:
        return ValueError, f"is nested deeper than {MAX_NESTING} levels"
    kind = type(value)
    if kind is int:
        if not _MIN_TABLE_INT <= value <= _MAX_TABLE_INT:
            return ValueError, "holds an integer outside 64 bits"
        return None
    if kind in _PLAIN:
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return TypeError, "has a map key that is not a text string"
            problem = _table_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if kind is list or kind is tuple:
        for item in value:
            problem = _table_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return TypeError, f"holds a value of type {kind.__name__}, which tables cannot carry"


def check_properties(name: str, value: Any) -> Properties:
    if type(value) is not dict:
        raise _fail(name, "a map", value)
    if not value:
        return EMPTY_PROPERTIES
    for key in value:
        if key not in _PROPERTY_SET:
            raise RemoteProtocolError(f"unknown message property {key!r}")
    headers = value.get("headers")
    if headers is not None:
        _check_table("headers", headers)
        key = None  # a dict is not hashable: no caching
    else:
        # Publishers repeat the same few property sets (persistent, a content type): building
        # and validating Properties once per set, not once per message, is the saving.
        key = tuple(value.items())
        try:
            cached = _PROPERTIES_CACHE.get(key)
        except TypeError:  # an unhashable value; Properties below names it
            key = None
        else:
            if cached is not None:
                return cached
    try:
        props = Properties(**value)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad message property: {exc}") from None
    if key is not None:
        if len(_PROPERTIES_CACHE) >= _PROPERTIES_CACHE_SIZE:
            _PROPERTIES_CACHE.clear()
        _PROPERTIES_CACHE[key] = props
    return props


_PROPERTY_SET = frozenset(PROPERTY_NAMES)
_PROPERTIES_CACHE: dict[tuple[tuple[str, Any], ...], Properties] = {}
_PROPERTIES_CACHE_SIZE = 1024


def encode_properties(props: Properties) -> dict[str, Any]:
    """Only properties that are set go on the wire (``persistent`` only when true)."""
    if props is EMPTY_PROPERTIES:
        return {}
    # A publisher usually sends one Properties object many times: encode it once. Entries
    # hold their object, so an id is not reused while it is here.
    hit = _ENCODED_PROPERTIES.get(id(props))
    if hit is not None and hit[0] is props:
        return hit[1]
    if props.headers:
        check_table_values("header", props.headers)
    wire = {
        name: value
        for name in PROPERTY_NAMES
        if (value := getattr(props, name)) is not None and value is not False
    }
    if len(_ENCODED_PROPERTIES) >= _PROPERTIES_CACHE_SIZE:
        _ENCODED_PROPERTIES.clear()
    _ENCODED_PROPERTIES[id(props)] = (props, wire)
    return wire


_ENCODED_PROPERTIES: dict[int, tuple[Properties, dict[str, Any]]] = {}


#: Per field type (as attrs records it): the check a decoded field passes.
CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "int": _check_int,
    "bool": _check_bool,
    "str": _check_str,
    "str | None": _check_opt_str,
    "bytes": _check_bytes,
    "Table": _check_table,
    "list[int]": _check_versions,
    "Properties": check_properties,
}


def _encode_table(table: Table) -> Table:
    check_table_values("argument", table)
    return table


#: Per field type: how a field goes on the wire, where it is not as the event holds it.
ENCODERS: dict[str, Callable[[Any], Any]] = {
    "Properties": encode_properties,
    "Table": _encode_table,
}
