"""JSON parsing for request bodies: orjson on the fast path, one error type for every malformed body."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from gateway.errors import MalformedRequest


def loads(body: bytes, *, allow_nan: bool = False) -> Any:
    """Parse a JSON body. TF Serving accepts NaN/Infinity tokens, which orjson refuses: `allow_nan`
    retries those bodies with the standard library's parser (slow path, only on orjson failure), held to
    everything else orjson refuses."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if allow_nan:
            try:
                return _with_nan(body)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack (orjson: 1024)
                pass
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None


def _with_nan(body: bytes) -> Any:
    # UTF-8 only, as JSON between systems must be (RFC 8259): json.loads would read UTF-16 and UTF-32 bytes too,
    # and a BOM is left in the text, where json refuses it.
    doc = json.loads(body.decode("utf-8"), parse_float=_double, parse_int=_integer)
    _check_strings(doc)
    return doc


def _double(text: str) -> float:
    """A JSON number as orjson reads it: one that overflows a double (1e400) is refused, not infinity; the
    NaN/Infinity tokens are something else (parse_constant)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]}... is infinity when parsed as double")
    return value


def _integer(text: str) -> int | float:
    """orjson's rule: an integer beyond 64 bits is read as a double. (Python refuses over 4,300 digits.)"""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _double(text)


def _check_strings(doc: Any) -> None:
    """UnicodeEncodeError (a ValueError) for a lone surrogate ("\\ud800") anywhere: json reads one into a str
    that nothing can encode again, an error message naming it included."""
    pending = [doc]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            value.encode("utf-8")
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def dumps(value: Any, *, nan: bool = False) -> bytes:
    """orjson, except when the document carries NaN or +/-Infinity (`nan`): orjson would write them as null, so
    that rare case takes the standard library, which writes the NaN/Infinity tokens TF Serving and Python read."""
    if nan:
        return json.dumps(value, allow_nan=True, separators=(",", ":"), ensure_ascii=False).encode()
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def dumps_error(doc: dict[str, Any]) -> bytes:
    """An error body: it encodes whatever the message holds (a character UTF-8 cannot carry goes out escaped)."""
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return json.dumps(doc, ensure_ascii=True).encode()


def expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return value
