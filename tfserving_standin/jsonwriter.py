"""A small JSON writer that lays text out the way TF Serving's RapidJSON PrettyWriter does.

TF Serving writes float outputs as raw tokens (shortest round-trip text, ``NaN``/``Infinity`` for
non-finite values), strings as raw UTF-8 bytes, 4-space indentation, and arrays on one line while
the "single line array" option is on. Reproducing the layout keeps byte-level comparisons honest.
"""

from __future__ import annotations

import math

import numpy as np

_ESCAPES = {
    0x22: b'\\"',
    0x5C: b"\\\\",
    0x08: b"\\b",
    0x0C: b"\\f",
    0x0A: b"\\n",
    0x0D: b"\\r",
    0x09: b"\\t",
}


def escape_string(raw: bytes) -> bytes:
    out = bytearray(b'"')
    for byte in raw:
        if byte in _ESCAPES:
            out += _ESCAPES[byte]
        elif byte < 0x20:
            out += b"\\u%04X" % byte
        else:
            out.append(byte)
    out += b'"'
    return bytes(out)


def format_float(value: float, single_precision: bool) -> bytes:
    """json_tensor.cc WriteDecimal: six significant digits unless that does not round-trip."""
    if math.isnan(value):
        return b"NaN"
    if math.isinf(value):
        return b"-Infinity" if value < 0 else b"Infinity"
    text = f"{value:.6g}"
    if single_precision:
        if np.float32(float(text)) != np.float32(value):
            text = f"{value:.9g}"
    elif float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


def float_tokens(values: np.ndarray, single_precision: bool) -> list[bytes]:
    """format_float for a whole array at once (same text, vectorised round-trip check)."""
    flat = values.reshape(-1)
    numbers = flat.tolist()
    texts = [f"{v:.6g}" for v in numbers]
    if not texts:
        return []
    finite = np.isfinite(flat)
    with np.errstate(invalid="ignore", over="ignore"):
        back = np.array(texts, dtype=np.float64)
        if single_precision:
            back = back.astype(np.float32)
    precise = "{:.9g}".format if single_precision else "{:.17g}".format
    for index in np.flatnonzero(finite & (back != flat)).tolist():
        texts[index] = precise(numbers[index])
    if not finite.all():
        for index in np.flatnonzero(~finite).tolist():
            value = numbers[index]
            texts[index] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    return [t.encode() if ("." in t or "e" in t or "n" in t or "N" in t) else t.encode() + b".0" for t in texts]


class PrettyWriter:
    """Streaming writer with RapidJSON PrettyWriter's layout rules (indent of 4 spaces)."""

    INDENT = 4

    def __init__(self, limit: int | None = None) -> None:
        self.out = bytearray()
        self._levels: list[list] = []  # [in_array, value_count]
        self.single_line_arrays = False
        self._limit = limit

    # -- limit support (JsonValueToDebugString stops writing at 256 bytes) --
    def _in_limit(self) -> bool:
        return self._limit is None or len(self.out) < self._limit

    def _indent(self) -> None:
        self.out += b" " * (self.INDENT * len(self._levels))

    def _prefix(self) -> None:
        if not self._levels:
            return
        level = self._levels[-1]
        if level[0]:
            if level[1] > 0:
                self.out += b","
                if self.single_line_arrays:
                    self.out += b" "
            if not self.single_line_arrays:
                self.out += b"\n"
                self._indent()
        else:
            if level[1] > 0:
                if level[1] % 2 == 0:
                    self.out += b",\n"
                else:
                    self.out += b": "
            else:
                self.out += b"\n"
            if level[1] % 2 == 0:
                self._indent()
        level[1] += 1

    def raw(self, token: bytes) -> bool:
        if not self._in_limit():
            return False
        self._prefix()
        self.out += token
        return True

    def raw_array(self, tokens: list[bytes]) -> bool:
        """An array of ready-made value tokens, laid out exactly as element-by-element writes would be."""
        if not self._in_limit():
            return False
        self._prefix()
        if not tokens:
            self.out += b"[]"
            return True
        if self.single_line_arrays:
            self.out += b"[" + b", ".join(tokens) + b"]"
        else:
            depth = len(self._levels) + 1
            inner = b"\n" + b" " * (self.INDENT * depth)
            self.out += b"[" + b",".join(inner + token for token in tokens)
            self.out += b"\n" + b" " * (self.INDENT * (depth - 1)) + b"]"
        return True

    def string(self, raw: bytes) -> bool:
        return self.raw(escape_string(raw))

    def key(self, name: str) -> bool:
        return self.string(name.encode("utf-8", "surrogatepass"))

    def start_object(self) -> bool:
        if not self._in_limit():
            return False
        self._prefix()
        self._levels.append([False, 0])
        self.out += b"{"
        return True

    def end_object(self) -> bool:
        if not self._in_limit():
            return False
        level = self._levels.pop()
        if level[1]:
            self.out += b"\n"
            self._indent()
        self.out += b"}"
        return True

    def start_array(self) -> bool:
        if not self._in_limit():
            return False
        self._prefix()
        self._levels.append([True, 0])
        self.out += b"["
        return True

    def end_array(self) -> bool:
        if not self._in_limit():
            return False
        level = self._levels.pop()
        if level[1] and not self.single_line_arrays:
            self.out += b"\n"
            self._indent()
        self.out += b"]"
        return True

    def getvalue(self) -> bytes:
        return bytes(self.out)


def _write_plain(writer: PrettyWriter, value: object) -> bool:
    """Writes a parsed JSON value (as the json module returns it)."""
    if value is None:
        return writer.raw(b"null")
    if value is True:
        return writer.raw(b"true")
    if value is False:
        return writer.raw(b"false")
    if isinstance(value, int):
        return writer.raw(str(value).encode())
    if isinstance(value, float):
        if math.isnan(value):
            return writer.raw(b"NaN")
        if math.isinf(value):
            return writer.raw(b"-Infinity" if value < 0 else b"Infinity")
        return writer.raw(repr(value).encode())
    if isinstance(value, str):
        return writer.string(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        if not writer.start_array():
            return False
        for item in value:
            if not _write_plain(writer, item):
                return False
        return writer.end_array()
    if isinstance(value, dict):
        if not writer.start_object():
            return False
        for name, item in value.items():
            if not writer.key(name) or not _write_plain(writer, item):
                return False
        return writer.end_object()
    return writer.raw(str(value).encode())


def debug_string(value: object, limit: int = 256) -> str:
    """json_tensor.cc JsonValueToDebugString: single-line arrays, cut once 256 bytes are written."""
    writer = PrettyWriter(limit=limit)
    writer.single_line_arrays = True
    _write_plain(writer, value)
    return writer.getvalue().decode("utf-8", "replace")


def error_body(message: str) -> bytes:
    """json_tensor.cc MakeJsonFromStatus."""
    writer = PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.string(message.encode("utf-8", "surrogatepass"))
    writer.end_object()
    return writer.getvalue()
