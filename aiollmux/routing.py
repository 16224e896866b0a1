"""Finding the `model` a request names, without parsing a multi-megabyte prompt (DESIGN §4).

JSON bodies are scanned for the top-level `"model"` key with a C-speed tokenizer that
skips over strings; small bodies are also fully validated with `json.loads`. Multipart
bodies (audio endpoints) are searched for their `model` form field. The byte span of the
value is kept so `upstream_model` can be spliced in without re-encoding the body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from aiollmux.errors import InvalidJSON, ModelRequired

# Bodies up to this size are fully validated with json.loads (cheap at this size);
# larger ones are only scanned, and the backend validates the rest.
VALIDATE_LIMIT = 256 * 1024

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SPACE = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class ModelField:
    name: str
    start: int  # byte span of the value as written in the body (quotes included for JSON)
    end: int
    json_string: bool

    def rewrite(self, body: bytes, model: str) -> bytes:
        value = json.dumps(model).encode() if self.json_string else model.encode()
        return body[: self.start] + value + body[self.end :]


def find_model(body: bytes, content_type: str) -> ModelField:
    if not body.strip():
        raise ModelRequired('the request body is empty; a JSON body with "model" is required')
    mime, params = _parse_content_type(content_type)
    if mime == "multipart/form-data":
        return _find_multipart(body, params.get("boundary", ""))
    return _find_json(body)


def _find_json(body: bytes) -> ModelField:
    if len(body) <= VALIDATE_LIMIT:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ModelRequired('the request body must be a JSON object with a "model" field')
        if "model" not in document:
            raise ModelRequired('the request body has no "model" field')
    found = _scan(body)
    if found is None:
        raise ModelRequired('the request body has no "model" field')
    return found


def _scan(body: bytes) -> ModelField | None:
    """The top-level "model" key's value, found by jumping from quote to quote.

    Only strings can hide brackets, so between two strings the depth changes by the
    brackets in the gap; `bytes.find`/`bytes.count` do all per-byte work in C.
    """
    start = _skip_space(body, 0)
    if body[start : start + 1] != b"{":
        return _invalid(body, "a JSON object was expected")
    depth, position = 1, start + 1
    while True:
        quote = body.find(b'"', position)
        if quote == -1:
            return _invalid(body, "the JSON body ends early")
        depth += _bracket_balance(body, position, quote)
        if depth <= 0:
            return None  # the top-level object closed before this string
        end = _string_end(body, quote)
        if end == -1:
            return _invalid(body, "a JSON string is not closed")
        if depth == 1 and end - quote == 7 and body[quote:end] == b'"model"':
            colon = _skip_space(body, end)
            if body[colon : colon + 1] == b":":
                return _model_value(body, _skip_space(body, colon + 1))
        position = end


def _bracket_balance(body: bytes, start: int, end: int) -> int:
    opened = body.count(b"{", start, end) + body.count(b"[", start, end)
    return opened - body.count(b"}", start, end) - body.count(b"]", start, end)


def _string_end(body: bytes, quote: int) -> int:
    """Index just past the string that opens at `quote`, or -1."""
    position = quote + 1
    while True:
        close = body.find(b'"', position)
        if close == -1:
            return -1
        backslashes = 0
        while body[close - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return close + 1
        position = close + 1


def _model_value(body: bytes, start: int) -> ModelField:
    value = _STRING.match(body, start)
    if value is None:
        raise ModelRequired('"model" must be a string')
    try:
        name = json.loads(value.group())
    except ValueError as exc:
        raise InvalidJSON(f'the "model" value is not a valid JSON string: {exc}') from None
    if not isinstance(name, str) or not name:
        raise ModelRequired('"model" must be a non-empty string')
    return ModelField(name, value.start(), value.end(), json_string=True)


def _invalid(body: bytes, reason: str) -> ModelField | None:
    # Only reached for large bodies (small ones were validated first): let json explain.
    try:
        json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    raise ModelRequired(f'the request body must be a JSON object with a "model" field ({reason})')


def _skip_space(body: bytes, index: int) -> int:
    while index < len(body) and body[index] in _SPACE:
        index += 1
    return index


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        key, sep, val = item.strip().partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return mime.strip().lower(), params


def _find_multipart(body: bytes, boundary: str) -> ModelField:
    if not boundary:
        raise ModelRequired("multipart/form-data body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1", errors="replace")
    position = body.find(delimiter)
    while position != -1:
        header_start = position + len(delimiter)
        if body[header_start : header_start + 2] == b"--":
            break  # closing delimiter
        header_end = body.find(b"\r\n\r\n", header_start)
        if header_end == -1:
            break
        content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter == -1:
            break
        if _is_model_part(body[header_start:header_end]):
            raw = body[content_start:next_delimiter]
            name = raw.decode("utf-8", errors="replace").strip()
            if not name:
                raise ModelRequired('the multipart "model" field is empty')
            return ModelField(name, content_start, next_delimiter, json_string=False)
        position = next_delimiter + 2
    raise ModelRequired('the multipart/form-data body has no "model" field')


_MODEL_DISPOSITION = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="?model"?\s*(;|$)')


def _is_model_part(headers: bytes) -> bool:
    return _MODEL_DISPOSITION.search(headers) is not None
