"""Finding the `model` a request names, without parsing a multi-megabyte prompt (docs/design.md §4).

JSON bodies are scanned for the top-level `"model"` key with a tokenizer that jumps from
quote to quote (`bytes.find`/`bytes.count` do the per-byte work in C) and builds no
objects; small bodies are also fully validated with `json.loads`. Multipart bodies (audio
endpoints) are searched for their `model` form field. The byte span of the value is kept
so `upstream_model` can be spliced in without re-encoding the body.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import zlib
from dataclasses import dataclass
from typing import NoReturn

from aiollmux.errors import BodyTooLarge, InvalidJSON, ModelRequired

# Bodies up to this size are fully validated with json.loads (cheap at this size);
# larger ones are only scanned, and the backend validates the rest.
VALIDATE_LIMIT = 256 * 1024
OFF_LOOP_BYTES = 1024 * 1024  # larger JSON bodies are looked at in a thread

# RFC 8259 §8.1: a parser may ignore a leading byte order mark; Python's json does.
_BOM = b"\xef\xbb\xbf"
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)  # from inside a string
_SPACE = b" \t\r\n"
_QUOTE = ord('"')
_TOKEN = re.compile(rb'["{}[\]]')
# Inside nested values: runs of text, short strings (bounded, so a long one is left to
# `bytes.find`) and innermost containers, matched possessively (no backtracking).
_TEXT = rb'[^"{}[\]]++'
_SHORT_STRING = rb'"(?:[^"\\]{1,256}+|\\.){0,32}+"'
_FLAT = rb"(?:%s|%s)*+" % (_TEXT, _SHORT_STRING)
_NESTED_RUN = re.compile(
    rb"(?:%s|%s|\[%s\]|\{%s\})*+" % (_TEXT, _SHORT_STRING, _FLAT, _FLAT), re.DOTALL
)


@dataclass(frozen=True, slots=True)
class ModelField:
    name: str
    # The byte span of the value as written in the body (quotes included for JSON); -1
    # when not located yet: a small body's name comes from json.loads, and its span is
    # only needed for an `upstream_model` rewrite.
    start: int
    end: int
    json_string: bool

    def located(self, body: bytes) -> ModelField:
        if self.start >= 0:
            return self
        found = _scan(body, exhaustive=True)
        assert found is not None, "located() on a body it was not found in"
        return found

    def rewrite(self, body: bytes, model: str) -> bytes:
        field = self.located(body)
        value = json.dumps(model).encode() if self.json_string else model.encode()
        return body[: field.start] + value + body[field.end :]


# zlib's wbits: gzip header and trailer; zlib wrapper; raw deflate (some clients send it).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Layers of encoding undone at the most: each may expand to the body limit, and nobody
# compresses twice on purpose (urllib3 stops at 5 for responses).
MAX_CODINGS = 2


def decoded_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with its Content-Encoding undone, to find the model in; `body` itself
    when there is nothing to undo. Decoded, it may not grow past `limit` (a small
    compressed body can expand a thousandfold). CPU-bound: run it off the event loop."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if len(codings) > MAX_CODINGS:
        raise InvalidJSON(
            f"the request body has {len(codings)} layers of Content-Encoding;"
            f" at most {MAX_CODINGS} are undone"
        )
    for coding in reversed(codings):  # applied in the order listed: undo from the last
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise InvalidJSON(
                f"request bodies with Content-Encoding {coding!r} cannot be routed: "
                "send gzip, deflate or an unencoded body"
            )
        body = _inflate(body, wbits, coding, limit)
    return body


def _inflate(body: bytes, wbits: int, coding: str, limit: int) -> bytes:
    attempts = (wbits, -zlib.MAX_WBITS) if coding == "deflate" else (wbits,)
    for bits in attempts:
        try:
            return _inflate_members(body, bits, limit)
        except zlib.error:
            continue
    raise InvalidJSON(f"the request body is not valid {coding} data")


def _inflate_members(body: bytes, wbits: int, limit: int) -> bytes:
    """Every member of the stream (RFC 1952 allows several gzip members one after the
    other), the output of all of them bounded by `limit`; zlib.error if it is not."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        parts.append(inflater.decompress(rest, limit + 1 - size))
        size += len(parts[-1])
        if size > limit:
            raise BodyTooLarge(f"the decoded request body is larger than {limit} bytes")
        if not inflater.eof:
            raise zlib.error("the stream ends early")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if wbits != _WBITS["gzip"] or not rest.startswith(b"\x1f\x8b"):
            raise zlib.error("data after the end of the stream")


def find_model(body: bytes, content_type: str) -> ModelField:
    found = _find(body, content_type, walk=True)
    assert found is not None  # a walk always decides
    return found


def find_model_quickly(body: bytes, content_type: str) -> ModelField | None:
    """`find_model` without the walk of a large body: None when that walk is needed
    (worth running off the event loop)."""
    return _find(body, content_type, walk=False)


def _find(body: bytes, content_type: str, *, walk: bool) -> ModelField | None:
    if _skip_space(body, 0) == len(body):
        raise ModelRequired('the request body is empty; a JSON body with "model" is required')
    mime, params = _parse_content_type(content_type)
    if mime == "multipart/form-data":
        if not walk and len(body) > OFF_LOOP_BYTES:
            return None  # every part is looked at (a second "model" is refused): off the loop
        return _find_multipart(body, params.get("boundary", ""))
    return _find_json(body, walk=walk)


# -- JSON ---------------------------------------------------------------------------------


def _find_json(body: bytes, *, walk: bool = True) -> ModelField | None:
    _refuse_wide_encodings(body)
    if not walk and len(body) > OFF_LOOP_BYTES:
        # The duplicate-key check below reads the whole body (about 0.6 ms a MiB): a large
        # body's is done off the event loop, once, with the rest of the work.
        return None
    if len(body) <= VALIDATE_LIMIT:
        # Small bodies: json.loads validates and names the model; a second "model" key
        # (which json.loads would silently let win) is refused by a walk.
        document = parse_json(body)
        if _may_repeat_model(body):
            _scan(body, exhaustive=True)
        return _from_document(document)
    if walk:
        # Few, long strings (a base64 image): the whole top level is walked from quote to
        # quote by memchr in well under a millisecond, and the walk refuses a second key.
        # A damaged body is left to the steps below, which word its error as ever.
        try:
            found = _scan(body, exhaustive=True, budget=_SPARSE_BUDGET)
        except _DuplicateModel:
            raise
        except (_Dense, InvalidJSON):
            pass
        else:
            if found is None:
                raise ModelRequired('the request body has no "model" field')
            return found
    if _may_repeat_model(body):
        # Maybe two top-level "model" keys: only a walk of the whole top level can tell.
        if not walk:
            return None
        found = _scan(body, exhaustive=True)
        if found is None:
            raise ModelRequired('the request body has no "model" field')
        return found
    # Large ones: the two common layouts in O(1), else a walk that stops at the first
    # top-level "model", leaving the rest of the prompt for the backend to validate.
    found = _model_near_the_end(body)
    if found is None and walk:
        found = _scan(body, exhaustive=False)
        if found is None:
            raise ModelRequired('the request body has no "model" field')
    return found


# Any spelling of a "model" key: each letter in either ASCII case (Go's encoding/json, so
# Ollama, matches keys ignoring case), as itself or as a \u escape (the only escapes that
# stand for these letters). In valid JSON every match ends a string, so two keys are two
# matches; a match may also be the tail of a longer string (after an escaped quote), and
# the walk that follows tells those apart. One regex pass finds every spelling; it starts
# a match attempt only at a quote. (`m|M`, not `[mM]`: a class there costs 15-45 % more
# on bodies with many quotes; the escape first costs least where most attempts fail.)
_MODEL_KEY = re.compile(
    rb'"(?:\\u00[46][dD]|m|M)(?:o|O|\\u00[46][fF])(?:d|D|\\u00[46]4)'
    rb'(?:e|E|\\u00[46]5)(?:l|L|\\u00[46][cC])"'
)
# Top-level tokens and nested runs the sparse walk may take before handing over to the
# search: a base64 image body takes about 16; a chat-shaped one runs out within ~0.3 ms,
# a long array of numbers or short strings at its first window.
_SPARSE_BUDGET = 32
_SPARSE_WINDOW = 1024


class _Dense(Exception):
    """The walk ran out of its budget: the body has many strings."""


class _DuplicateModel(InvalidJSON):
    pass


# A "model" key written with escapes ("mod\u0065l", "\u004dODEL"): one of its letters,
# in either case, as \u00XX.
_ESCAPED_MODEL_LETTER = re.compile(rb"\\u00[46][45cCdDfF]")
# The capitals of "MODEL".
_CAPITALS = (b"M", b"O", b"D", b"E", b"L")
# `_MODEL_KEY` attempts a match at every quote: past about one quote in this many bytes
# (arrays of short strings, small objects) plain searches are cheaper than the regex.
_QUOTE_SPACING = 32
_SAMPLE = 64 * 1024


def _may_repeat_model(body: bytes) -> bool:
    """False when the body cannot hold two keys that a backend reads as "model" (in any
    ASCII case, escaped or not): a regex pass or a few C searches."""
    if len(body) <= _SAMPLE:  # a copy of a small body costs less than avoiding it
        return body.lower().count(b'"model"') > 1 or _has_escaped_letters(body)
    if body.count(b'"', 0, _SAMPLE) * _QUOTE_SPACING <= _SAMPLE:
        matches = _MODEL_KEY.finditer(body)  # few quotes (a chat, token ids): one pass
        return next(matches, None) is not None and next(matches, None) is not None
    if _has_escaped_letters(body):
        return True
    # Without a capital a key can only be spelled "model"; with capitals, a lower-case
    # copy (~1 ms a MiB) is cheaper than the regex among many quotes.
    if not _has_capitals(body):
        return body.count(b'"model"') > 1
    return _count_in_lower_case(body, b'"model"', stop_after=2) >= 2


def _has_escaped_letters(body: bytes) -> bool:
    return body.find(b"\\") != -1 and _ESCAPED_MODEL_LETTER.search(body) is not None


_CHUNK = 1024 * 1024


def _count_in_lower_case(body: bytes, needle: bytes, *, stop_after: int) -> int:
    """Matches of `needle` in the body lower-cased a chunk at a time (as fast as one copy,
    and the copy stays a MiB however large the body), counted up to `stop_after`."""
    found = 0
    for start in range(0, len(body), _CHUNK):
        # An overlap of len(needle) - 1: a match that starts in the chunk ends in it.
        found += body[start : start + _CHUNK + len(needle) - 1].lower().count(needle)
        if found >= stop_after:
            break
    return found


def _has_capitals(body: bytes) -> bool:
    # Five memchr passes (~0.1 ms a MiB each when absent); prose stops at its first capital.
    return any(body.find(capital) != -1 for capital in _CAPITALS)


def _from_document(document: object) -> ModelField:
    if not isinstance(document, dict):
        raise ModelRequired('the request body must be a JSON object with a "model" field')
    # A case variant ("MODEL") beside "model" was refused by the walk `_may_repeat_model`
    # asked for; alone, it is named in the error.
    if "model" not in document:
        variant = next((key for key in document if _reads_as_model(key)), None)
        if variant is not None:
            raise _no_model_but(variant)
        raise ModelRequired('the request body has no "model" field')
    name = document["model"]
    if not isinstance(name, str):
        raise ModelRequired('"model" must be a string')
    if not name:
        raise ModelRequired('"model" must be a non-empty string')
    return ModelField(name, -1, -1, json_string=True)


_WIDE_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
UTF8_RULE = "JSON exchanged between systems must be UTF-8 (RFC 8259 §8.1)"


def _refuse_wide_encodings(body: bytes) -> int:
    """InvalidJSON for a body in UTF-16/32, at any size (a large body is only scanned, and a
    scan of bytes would read UTF-16 text as other keys than the backend's `json.loads(bytes)`
    does); else how many bytes a UTF-8 byte order mark takes at its start."""
    skipped = len(_BOM) if body.startswith(_BOM) else 0
    head = body[skipped : skipped + 4]
    # UTF-8 JSON has no NUL byte outside a string, and none can open it: UTF-16/32 text does.
    if head.startswith(_WIDE_BOMS) or b"\0" in head:
        raise InvalidJSON(
            f"the request body is not valid JSON: it looks like UTF-16 or UTF-32; {UTF8_RULE}"
        )
    return skipped


def parse_json(body: bytes) -> object:
    """A JSON request body, proxied or admin, read one way: UTF-8, a leading byte order mark
    ignored (RFC 8259 §8.1). UTF-16/32, which `json.loads(bytes)` would guess, is
    `InvalidJSON` naming that rule."""
    skipped = _refuse_wide_encodings(body)
    body = body[skipped:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {skipped + exc.start}: {exc.reason}"
        raise InvalidJSON(
            f"the request body is not valid JSON: it is not UTF-8 ({where}); {UTF8_RULE}"
        ) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None


# How far from the end a "model" key is looked for before walking from the start.
_TAIL_WINDOW = 64 * 1024
_TAIL_CANDIDATES = 8


def _model_near_the_end(body: bytes) -> ModelField | None:
    """The common layouts besides "model" first: among the last few members, as the
    OpenAI SDKs write it (`{"messages": [...], "model": ..., "stream": true}`).

    A key begins after `{` or `,`: that rules out the bytes `"model"` ending another
    string (`"p\\"model"`, whose first quote is escaped) and a value "model". The last
    such key is a top-level one exactly when walking on from it, at depth 1, closes the
    object at the very end of the body.
    """
    start = _skip_space(body, len(_BOM) if body.startswith(_BOM) else 0)
    if body[start : start + 1] != b"{" or body.startswith(b'"model"', _skip_space(body, start + 1)):
        return None  # not an object, or "model" comes first: the forward scan is instant
    floor, end = max(start, len(body) - _TAIL_WINDOW), len(body)
    for _ in range(_TAIL_CANDIDATES):
        candidate = body.rfind(b'"model"', floor, end)
        if candidate == -1:
            break
        colon = _skip_space(body, candidate + len(b'"model"'))
        if (
            body[colon : colon + 1] == b":"
            and _byte_before(body, candidate) in (b"{", b",")
            and _closes_the_body(body, candidate)
        ):
            return _model_value(body, _skip_space(body, colon + 1))
        end = candidate  # a value "model", or a nested key: look further back
    return None


def _byte_before(body: bytes, index: int) -> bytes:
    """The last byte before `index` that is not JSON whitespace (b"" at the start)."""
    index -= 1
    while index >= 0 and body[index] in _SPACE:
        index -= 1
    return body[index : index + 1] if index >= 0 else b""


def _closes_the_body(body: bytes, position: int) -> bool:
    depth = 1
    while (token := _TOKEN.search(body, position)) is not None:
        at = token.start()
        if body[at] == _QUOTE:
            position = _string_end(body, at)
            if position == -1:
                return False
            continue
        depth += 1 if body[at] in b"{[" else -1
        if depth == 0:
            return _skip_space(body, at + 1) == len(body)
        position = at + 1
    return False


def _scan(body: bytes, *, exhaustive: bool, budget: int | None = None) -> ModelField | None:
    """The value of the top-level "model" key.

    `exhaustive`: walk the whole body, refusing a truncated body or a second top-level
    "model" key; otherwise return at the first one. Only the top level
    is walked token by token; inside nested values one regex call skips text, short
    strings and innermost containers. `budget`: raise _Dense after that many steps.
    """
    start = _skip_space(body, len(_BOM) if body.startswith(_BOM) else 0)
    if body[start : start + 1] != b"{":
        raise ModelRequired('the request body must be a JSON object with a "model" field')
    depth, position, value = 1, start + 1, -1
    variant: str | None = None  # a key that is "model" but for its case ("MODEL")
    while depth > 0:
        if budget is not None:
            budget -= 1
            if budget < 0:
                raise _Dense
        # With a budget, a regex call that reads more than half of _SPARSE_WINDOW bytes
        # means a dense body (numbers, short strings: no long string to jump over). A call
        # bounded by the window stops at a token as an unbounded one does, or earlier.
        before = position
        window = len(body) if budget is None else min(len(body), position + _SPARSE_WINDOW)
        if depth == 1:
            token = _TOKEN.search(body, position, window)
            position = window if token is None else token.start()
        else:
            run = _NESTED_RUN.match(body, position, window)
            assert run is not None  # the pattern matches the empty string
            position = run.end()
        if budget is not None and position - before > _SPARSE_WINDOW // 2:
            raise _Dense
        if position == len(body):
            _invalid("the body ends inside its top-level object")
        if body[position] != _QUOTE:
            depth += 1 if body[position] in b"{[" else -1
            position += 1
            continue
        end = _string_end(body, position)
        if end == -1:
            _invalid(f"the string opened at byte {position} is not closed")
        if depth == 1:
            colon = _skip_space(body, end)
            key = _model_key(body, position, end) if body[colon : colon + 1] == b":" else None
            if key is not None and key != "model":
                if value != -1:
                    raise _ambiguous(key)
                variant = variant or key
            elif key is not None:
                if value != -1:
                    # The routed model and the one a backend reads could disagree.
                    raise _DuplicateModel(
                        'the request body has more than one top-level "model" key'
                    )
                if variant is not None:
                    raise _ambiguous(variant)
                value = _skip_space(body, colon + 1)
                if not exhaustive:
                    return _model_value(body, value)
        position = end
    if body[position - 1] != ord("}") or _skip_space(body, position) != len(body):
        _invalid(f"the top-level object does not end the body (byte {position - 1})")
    if value == -1 and variant is not None:
        raise _no_model_but(variant)
    return None if value == -1 else _model_value(body, value)


def _string_end(body: bytes, quote: int) -> int:
    """Index just past the string that opens at `quote`, or -1."""
    position = quote + 1
    for _ in range(16):
        close = body.find(b'"', position)
        if close == -1:
            return -1
        backslashes = 0
        while body[close - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return close + 1
        position = close + 1  # an escaped quote: the string goes on
    # Many escaped quotes (code, JSON in a prompt): the regex steps over them faster.
    rest = _STRING_REST.match(body, position)
    return -1 if rest is None else rest.end()


# The longest spelling of a "model" key: five letters as \u00XX, and its quotes.
_LONGEST_MODEL_KEY = 5 * 6 + 2


def _model_key(body: bytes, quote: int, end: int) -> str | None:
    """The key of the string body[quote:end], unescaped, if it is "model" ignoring ASCII
    case (no other character folds to these letters); else None."""
    if end - quote == 7:
        key = body[quote + 1 : end - 1]
        return key.decode() if key.lower() == b"model" else None
    if end - quote > _LONGEST_MODEL_KEY or body.find(b"\\", quote, end) == -1:
        return None
    try:  # an escaped key such as "mod\u0065l" is "model" too
        text = json.loads(body[quote:end])
    except ValueError:
        return None  # an invalid key: not "model", and the backend will refuse the body
    return text if isinstance(text, str) and _reads_as_model(text) else None


def _reads_as_model(key: str) -> bool:
    """Whether a backend may read `key` as the "model" key: Go's encoding/json (Ollama)
    matches keys ignoring case, Unicode simple folding, which for these letters is ASCII."""
    return len(key) == 5 and key.isascii() and key.lower() == "model"


def _ambiguous(variant: str) -> _DuplicateModel:
    return _DuplicateModel(
        f'the request body has more than one top-level "model" key: "model" and'
        f" {json.dumps(variant)}, the same key to backends that ignore its case"
        " (Go's encoding/json, so Ollama)"
    )


def _no_model_but(variant: str) -> ModelRequired:
    return ModelRequired(
        f'the request body has no "model" field (keys are case-sensitive: it has'
        f" {json.dumps(variant)})"
    )


def _model_value(body: bytes, start: int) -> ModelField:
    value = _STRING.match(body, start)
    if value is None:
        if body[start : start + 1] == b'"':
            _invalid(f'the "model" string opened at byte {start} is not closed')
        raise ModelRequired('"model" must be a string')
    try:
        name = json.loads(value.group())
    except ValueError as exc:
        raise InvalidJSON(f'the "model" value is not a valid JSON string: {exc}') from None
    if not isinstance(name, str) or not name:
        raise ModelRequired('"model" must be a non-empty string')
    return ModelField(name, value.start(), value.end(), json_string=True)


def _invalid(reason: str) -> NoReturn:
    # Only reached for large bodies (small ones were validated first); parsing a huge
    # body just to word the message would cost what the scan exists to avoid.
    raise InvalidJSON(f"the request body is not valid JSON: {reason}")


def _skip_space(body: bytes, index: int) -> int:
    while index < len(body) and body[index] in _SPACE:
        index += 1
    return index


# -- multipart/form-data -----------------------------------------------------------------

_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@functools.lru_cache(maxsize=64)  # a client sends the same few values again and again
def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """The media type and its parameters (read only: the result is shared)."""
    mime, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAMETER.finditer(value, len(mime)):
        raw = match.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
    return mime.strip().lower(), params


def _find_multipart(body: bytes, boundary: str) -> ModelField:
    if not boundary:
        raise ModelRequired("multipart/form-data body without a boundary")
    dash = b"--" + boundary.encode("latin-1", errors="replace")
    delimiter = b"\r\n" + dash
    # The first delimiter opens the body or follows a preamble line (RFC 2046 §5.1.1).
    position = 0 if body.startswith(dash) else body.find(delimiter)
    found: ModelField | None = None
    if position != -1 and body[position] != ord("-"):
        position += 2
    while position != -1:
        header_start = position + len(dash)
        if body[header_start : header_start + 2] == b"--":
            break  # the closing delimiter
        next_delimiter = body.find(delimiter, header_start)
        if next_delimiter == -1:
            break
        header_end = body.find(b"\r\n\r\n", header_start, next_delimiter + 2)
        if header_end != -1 and _names_model_otherwise(body[header_start:header_end]):
            raise ModelRequired(
                'a multipart part names its field "model" in a way form parsers read'
                ' differently (name*=, escapes or control characters); use name="model"'
            )
        if header_end != -1 and _is_model_part(body[header_start:header_end]):
            if found is not None:
                # Routed by one, read by the backend as the other (Starlette keeps the last).
                raise ModelRequired('the multipart/form-data body has more than one "model" field')
            content_start = header_end + 4
            name = body[content_start:next_delimiter].decode("utf-8", errors="replace").strip()
            if not name:
                raise ModelRequired('the multipart "model" field is empty')
            found = ModelField(name, content_start, next_delimiter, json_string=False)
        position = next_delimiter + 2
    if found is None:
        raise ModelRequired('the multipart/form-data body has no "model" field')
    return found


_MODEL_DISPOSITION = re.compile(
    # The field's name is matched as the backend's form parser matches it: case and all.
    rb"(?im)^content-disposition:[^\r\n]*;[ \t]*name[ \t]*=[ \t]*"
    rb'(?-i:"model"|model)[ \t]*(?:;|\r|$)'
)


def _is_model_part(headers: bytes) -> bool:
    return _MODEL_DISPOSITION.search(headers) is not None


_DISPOSITION = re.compile(rb"(?im)^content-disposition[ \t]*:([^\r\n]*)")
# What is left of a `name` parameter once quotes, backslashes, blanks and controls are gone;
# an RFC 2231 `name*=charset'lang'value` too (Go's mime/multipart reads it as `name`).
_SQUEEZED = re.compile(rb'[\\"\x00-\x20\x7f]')
_LOOSE_MODEL_NAME = re.compile(rb"(?:^|;)name\*?=(?:[^;']*'[^;']*')?model(?:;|$)")


def _names_model_otherwise(headers: bytes) -> bool:
    """A part whose field a form parser may read as `model` although `_MODEL_DISPOSITION`
    does not (Go reads `name*=UTF-8''model`, and `name="model"` followed by a vertical tab,
    as `model`): routed by another part, it would be read by the backend as the model."""
    for line in _DISPOSITION.finditer(headers):
        squeezed = _SQUEEZED.sub(b"", line[1])
        if _LOOSE_MODEL_NAME.search(squeezed) and not _is_model_part(line[0]):
            return True
    return False
