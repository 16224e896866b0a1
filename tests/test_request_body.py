"""Finding the model in JSON and multipart bodies, small (validated) and large (scanned)."""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any, Literal

import pytest

from aiollmux.errors import BodyTooLarge, InvalidJSON, ModelRequired
from aiollmux.request_body import (
    _SPARSE_BUDGET,
    MAX_CODINGS,
    OFF_LOOP_BYTES,
    VALIDATE_LIMIT,
    ModelField,
    _Dense,
    _scan,
    decoded_body,
    find_model,
    find_model_quickly,
)

JSON = "application/json"
Size = Literal["small", "large"]
SIZES: tuple[Size, ...] = ("small", "large")
BIG = "x" * (VALIDATE_LIMIT + 1000)


def messages(size: Size) -> bytes:
    """A `"messages"` member; for "large" its content pushes the body past VALIDATE_LIMIT."""
    content = json.dumps(BIG if size == "large" else "hi").encode()
    return b'"messages": [{"role": "user", "content": ' + content + b"}]"


def members(*parts: bytes) -> bytes:
    return b"{" + b", ".join(parts) + b"}"


def span(body: bytes, field: ModelField) -> bytes:
    located = field.located(body)
    return body[located.start : located.end]


def check_size(body: bytes, size: Size) -> None:
    assert (len(body) > VALIDATE_LIMIT) == (size == "large")


# -- JSON: where the key is ------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("where", [0, 1, 2])
def test_model_first_middle_or_last(size: Size, where: int) -> None:
    parts = [messages(size), b'"stream": false']
    parts.insert(where, b'"model": "alpha"')
    body = members(*parts)
    check_size(body, size)
    field = find_model(body, JSON)
    assert field.name == "alpha"
    assert field.json_string
    assert span(body, field) == b'"alpha"'


@pytest.mark.parametrize("size", SIZES)
def test_nested_model_keys_are_not_the_model(size: Size) -> None:
    content = json.dumps('say {"model": "evil"} and ["model", "x"]').encode()
    nested = [
        b'"metadata": {"model": "meta", "deeper": {"model": "deep"}}',
        b'"tools": [{"type": "function", "function": {"name": "model", "model": "tool"}}]',
        b'"history": [{"role": "model", "content": ' + content + b"}]",
        b'"list": [["model"], {"model": ["model"]}]',
    ]
    body = members(*nested[:2], messages(size), b'"model": "alpha"', *nested[2:])
    check_size(body, size)
    assert find_model(body, JSON).name == "alpha"
    without = members(*nested, messages(size))
    with pytest.raises(ModelRequired):
        find_model(without, JSON)


TRICKY_MEMBERS = {
    # A string that ends in an escaped backslash: the quote after it closes the string.
    "escaped-backslash-end": rb'"a": "a\\\\"',
    "lone-escaped-backslash": rb'"a": "\\"',
    "two-escaped-backslashes": rb'"a": "\\\\\\\\"',
    "escaped-model-key-text": rb'"a": "\"model\": \"evil\""',
    "escaped-backslash-then-quote": rb'"a": "\\\"model\\\": \\\"evil\\\""',
    "escapes-in-a-key": rb'"a\\\\": "x\\\\\\\"y"',
    "brackets-in-strings": rb'"a": "{[", "b": "]}}}"',
    "many-escaped-quotes": rb'"a": "' + rb"x\\\"" * 40 + rb'\\", "b": [["' + rb"\"" * 40 + rb'"]]',
    # Past 16 escaped quotes the string is finished by a regex; brackets follow in it.
    "brackets-after-17-escaped-quotes": rb'"a": "' + rb"\"" * 17 + rb'}]]}", "b": 1',
    "long-strings-in-nested-values": (
        rb'"a": [{"b": ["' + b"y" * 9000 + rb'", {}, [], "\\"]}, "' + b"z" * 300 + rb'"]'
    ),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tricky", TRICKY_MEMBERS.values(), ids=TRICKY_MEMBERS.keys())
def test_escapes_and_brackets_inside_strings(size: Size, tricky: bytes) -> None:
    for body in (
        members(tricky, messages(size), b'"model": "alpha"'),
        members(b'"model": "alpha"', tricky, messages(size)),
    ):
        check_size(body, size)
        assert json.loads(body)["model"] == "alpha"
        field = find_model(body, JSON)
        assert field.name == "alpha"
        assert span(body, field) == b'"alpha"'


@pytest.mark.parametrize("size", SIZES)
def test_whitespace_around_the_key_and_colon(size: Size) -> None:
    body = b" \r\n\t{ " + messages(size) + b' ,\n  "model"  \t\r\n:\n  "alpha"  \n}\n '
    check_size(body, size)
    field = find_model(body, JSON)
    assert field.name == "alpha"
    assert span(body, field) == b'"alpha"'


@pytest.mark.parametrize("size", SIZES)
def test_the_string_value_model_is_not_a_key(size: Size) -> None:
    body = members(b'"role": "model"', b'"x": ["model"]', messages(size), b'"model": "alpha"')
    assert find_model(body, JSON).name == "alpha"
    for only_values in (
        members(b'"role": "model"', messages(size)),
        members(messages(size), b'"role" : "model" '),
        members(messages(size), b'"a": "model", "b": "model"'),
    ):
        with pytest.raises(ModelRequired):
            find_model(only_values, JSON)


@pytest.mark.parametrize("size", SIZES)
def test_unicode_escapes_in_the_name_and_key(size: Size) -> None:
    body = members(messages(size), rb'"model": "\u0061lpha"')
    field = find_model(body, JSON)
    assert field.name == "alpha"
    assert span(body, field) == rb'"\u0061lpha"'
    escaped_key = members(messages(size), rb'"mod\u0065l": "alpha"')
    assert find_model(escaped_key, JSON).name == "alpha"
    raw_utf8 = members(messages(size), '"model": "llama-ü-😀"'.encode())
    assert find_model(raw_utf8, JSON).name == "llama-ü-😀"
    surrogates = members(messages(size), rb'"model": "\ud83d\ude00"')
    assert find_model(surrogates, JSON).name == "😀"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("value", [b"1", b"1.5", b"null", b"true", b"{}", b'{"id": "alpha"}'])
def test_a_model_that_is_not_a_string_is_refused(size: Size, value: bytes) -> None:
    for body in (
        members(messages(size), b'"model": ' + value),
        members(b'"model": ' + value, messages(size)),
        members(b'"model": [' + value + b', "alpha"]', messages(size)),
    ):
        check_size(body, size)
        with pytest.raises(ModelRequired):
            find_model(body, JSON)


@pytest.mark.parametrize("size", SIZES)
def test_an_empty_model_is_refused(size: Size) -> None:
    with pytest.raises(ModelRequired, match="non-empty"):
        find_model(members(messages(size), b'"model": ""'), JSON)


@pytest.mark.parametrize(
    "body", [b'["alpha"]', b'"model"', b"42", b"null", b'[{"model": "alpha"}]', b"true"]
)
def test_a_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(ModelRequired, match="JSON object"):
        find_model(body, JSON)
    large = b'[{"model": "alpha"}, ' + json.dumps(BIG).encode() + b"]"
    with pytest.raises(ModelRequired, match="JSON object"):
        find_model(large, JSON)


@pytest.mark.parametrize("body", [b"", b" ", b"\r\n\t  \n"])
@pytest.mark.parametrize("content_type", [JSON, "multipart/form-data; boundary=x", ""])
def test_an_empty_body_needs_a_model(body: bytes, content_type: str) -> None:
    with pytest.raises(ModelRequired, match="empty"):
        find_model(body, content_type)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "alpha",}',
        b'{"model": "alpha"',
        b"{'model': 'alpha'}",
        b'{"model": "alpha"} {"x": 1}',
        b'{"model": "alpha"} trailing',
        b'{"model": "alpha", "messages": [}',
        b'{"model": "al\npha"}',  # a raw control character inside a string
        b'{"model": "alpha", "x": nul}',
        b"{" * 100_000 + b"}" * 100_000,  # too deep for json.loads
    ],
)
def test_invalid_small_bodies(body: bytes) -> None:
    with pytest.raises(InvalidJSON, match="not valid JSON"):
        find_model(body, JSON)


def test_a_large_body_is_scanned_not_validated() -> None:
    # Past VALIDATE_LIMIT only the structure is walked: the backend judges the tokens.
    body = members(
        b'"model": "alpha"', messages("large"), b'"x": nul', b'"y": [1 2]', rb'"bad\q key": 1'
    )
    assert find_model(body, JSON).name == "alpha"


@pytest.mark.parametrize(
    "cut",
    [
        lambda body: body[:-300],  # inside the big string
        lambda body: body[:-1],  # the closing brace
        lambda body: body[:-3],  # inside the last value
        lambda body: body + b' {"model": "beta"}',  # a second document
        lambda body: body + b"]",
        lambda body: body + b"}",
        lambda body: body[:-1] + b"]",
    ],
)
@pytest.mark.parametrize("model_first", [True, False])
def test_a_damaged_large_body(cut: Callable[[bytes], bytes], model_first: bool) -> None:
    # A large body is read only up to its first top-level "model" (docs/decisions.md):
    # damage before the key is refused; damage after it is the backend's to judge.
    parts = [messages("large"), b'"stream": true']
    parts.insert(0 if model_first else 2, b'"model": "alpha"')
    whole = members(*parts)
    body = cut(whole)
    assert len(body) > VALIDATE_LIMIT
    key_end = whole.index(b'"alpha"') + len(b'"alpha"')
    if cut(b"") == b' {"model": "beta"}':
        # A second document glued on brings a second "model": refused whatever the size
        # (docs/design.md §5: the routed and the forwarded model can never disagree).
        with pytest.raises(InvalidJSON):
            find_model(body, JSON)
    elif body[:key_end] == whole[:key_end]:
        assert find_model(body, JSON).name == "alpha"
    else:
        with pytest.raises(InvalidJSON):
            find_model(body, JSON)


def test_a_damaged_small_body_is_refused() -> None:
    body = members(b'"model": "alpha"', messages("small"))
    for damaged in (body[:-1], body + b"]", body + b' {"model": "beta"}'):
        with pytest.raises(InvalidJSON):
            find_model(damaged, JSON)
        with pytest.raises(InvalidJSON):
            _scan(damaged, exhaustive=True)


def test_a_large_body_with_a_broken_model_value() -> None:
    with pytest.raises(InvalidJSON, match='"model" value'):
        find_model(members(messages("large"), b'"model": "al\npha"'), JSON)
    with pytest.raises(InvalidJSON, match='"model" value'):
        find_model(members(messages("large"), b'"model": "al\xffpha"'), JSON)
    with pytest.raises(ModelRequired):
        find_model(members(messages("large"), b'"model": alpha'), JSON)


@pytest.mark.parametrize("size", SIZES)
def test_a_utf8_byte_order_mark_is_ignored(size: Size) -> None:
    body = b"\xef\xbb\xbf" + members(messages(size), b'"model": "alpha"')
    field = find_model(body, JSON)
    assert field.name == "alpha"
    assert span(body, field) == b'"alpha"'


def test_invalid_utf8() -> None:
    # Small bodies are decoded strictly: invalid UTF-8 anywhere is invalid JSON.
    with pytest.raises(InvalidJSON):
        find_model(members(b'"model": "alpha"', b'"x": "\xff\xfe"'), JSON)
    # JSON is UTF-8 on the wire: no guessing of UTF-16 as json.loads(bytes) would do.
    with pytest.raises(InvalidJSON):
        find_model('{"model": "alpha"}'.encode("utf-16"), JSON)
    with pytest.raises(InvalidJSON):
        find_model('{"model": "alpha"}'.encode("utf-16-le"), JSON)
    # Large bodies: only the model value is decoded; the backend judges the rest.
    large = members(messages("large"), b'"x": "\xff"', b'"model": "alpha"')
    assert find_model(large, JSON).name == "alpha"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("second", [b'"model": "beta"', rb'"mod\u0065l": "beta"'])
@pytest.mark.parametrize("first_at_end", [False, True])
def test_duplicate_model_keys(size: Size, second: bytes, first_at_end: bool) -> None:
    # Refused at every size (docs/design.md §5): json.loads would take the last, a scan that stops
    # early the first, and the backend whichever its parser takes.
    parts = [b'"model": "alpha"', messages(size), second]
    if first_at_end:
        parts = parts[1:] + parts[:1]
    body = members(*parts)
    with pytest.raises(InvalidJSON, match="more than one top-level"):
        find_model(body, JSON)
    # A "model" inside a nested value is no duplicate.
    nested = members(b'"model": "alpha"', messages(size), b'"x": {"model": "beta"}')
    assert find_model(nested, JSON).name == "alpha"


def chat_messages() -> bytes:
    """A large `"messages"` member of strings with escapes, a quote every ~200 bytes (a
    long chat)."""
    prose = "Step 3 of 12 ran for 4.2s, wrote 1,024 rows and exited with status 0.\n" * 12
    turn = {"role": "user", "content": 'He said "run it"\\n then:\n' + prose}
    count = VALIDATE_LIMIT // len(json.dumps(turn)) + 8
    return b'"messages": ' + json.dumps([turn] * count).encode()


def image_messages() -> bytes:
    """A large `"messages"` member whose bulk is one base64 string (an image)."""
    url = "data:image/png;base64," + "iVBORw0KGgo" * (VALIDATE_LIMIT // 10)
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return b'"messages": ' + json.dumps([{"role": "user", "content": parts}]).encode()


def test_large_bodies_take_the_walk_or_the_search() -> None:
    # An image body is walked whole within the budget (exact and cheap); a chat-shaped
    # one runs out of it and is searched for "model" keys instead (docs/decisions.md).
    image = members(b'"model": "alpha"', image_messages(), b'"stream": true')
    assert _scan(image, exhaustive=True, budget=_SPARSE_BUDGET) is not None
    chat = members(b'"model": "alpha"', chat_messages(), b'"stream": true')
    with pytest.raises(_Dense):
        _scan(chat, exhaustive=True, budget=_SPARSE_BUDGET)


def short_strings(text: str) -> Callable[[], bytes]:
    """A large `"input"` member: many short strings (an embeddings batch), a quote every
    few bytes; with `text` holding a newline, escapes as well."""

    def member() -> bytes:
        count = VALIDATE_LIMIT // len(json.dumps(text)) + 8
        return b'"input": ' + json.dumps([text] * count).encode()

    return member


# Each shape takes another way through the duplicate check: a walk (image), one regex
# pass (chat), a plain search (no escapes anywhere), two searches (dense, with escapes).
LARGE_SHAPES = {
    "chat": chat_messages,
    "image": image_messages,
    "short strings": short_strings("a short input"),
    "short lines": short_strings("a short\nline"),
}
# Each letter of the key escaped once, in either case of hex digit.
SECOND_KEYS = [
    b'"model": "beta"',
    rb'"\u006dodel": "beta"',
    rb'"m\u006Fdel": "beta"',
    rb'"mo\u0064el": "beta"',
    rb'"mod\u0065l": "beta"',
    rb'"mode\u006C": "beta"',
    rb'"\u006D\u006f\u0064\u0065\u006c": "beta"',
]


@pytest.mark.parametrize("shape", LARGE_SHAPES)
@pytest.mark.parametrize("second", SECOND_KEYS)
@pytest.mark.parametrize("first_at_end", [False, True])
def test_duplicate_model_keys_in_large_bodies_of_every_shape(
    shape: str, second: bytes, first_at_end: bool
) -> None:
    parts = [b'"model": "alpha"', LARGE_SHAPES[shape](), second]
    if first_at_end:
        parts = parts[1:] + parts[:1]
    with pytest.raises(InvalidJSON, match="more than one top-level"):
        find_model(members(*parts), JSON)


@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_model_look_alikes_in_large_bodies_are_no_duplicates(shape: str) -> None:
    # The tail of a string after an escaped quote looks like a key to the search; a
    # "model" key of a nested object is one, but not at the top level.
    look_alikes = [rb'"note": "say \"model"', b'"x": {"model": "beta"}', b'"y": ["model"]']
    for first in (True, False):
        parts = [LARGE_SHAPES[shape](), *look_alikes]
        parts.insert(0 if first else len(parts), b'"model": "alpha"')
        assert find_model(members(*parts), JSON).name == "alpha"


@pytest.mark.parametrize("content_type", ["", "text/plain", "application/json; charset=utf-8"])
def test_other_content_types_are_read_as_json(content_type: str) -> None:
    assert find_model(b'{"model": "alpha"}', content_type).name == "alpha"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("new", ["qwen3:8b", 'we"ird\\name', "ünïcode-😀", "a\nb\tc\x00"])
def test_rewrite_splices_the_new_name(size: Size, new: str) -> None:
    body = members(messages(size), b'"model" : "\\u0061lpha" ', b'"stream": true')
    field = find_model(body, JSON).located(body)
    rewritten = field.rewrite(body, new)
    assert rewritten[: field.start] == body[: field.start]
    assert rewritten.endswith(body[field.end :])
    document = json.loads(rewritten)
    assert document == {**json.loads(body), "model": new}
    again = find_model(rewritten, JSON)
    assert again.name == new
    assert again.located(rewritten).start == field.start


# -- differential: the scan agrees with json.loads ------------------------------------------

_PIECES = [
    "a", "model", "Model", '"', "\\", "\\\\", '\\"', "{", "}", "[", "]", ":", ",", " ", "\n",
    "\t", "ü", "€", "😀", "\x00", "\x1f", "\u2028", '"model": "x"', '{"model":', "\\u0061",
    '"' * 20, "\\" * 17 + '"', "w" * 300,
]  # fmt: skip
_KEYS = ["model", "models", "Model", "mode", "mod\\el", 'm"odel', "messages", "role", "x", ""]


class DocumentGenerator:
    """Seeded random JSON documents full of escapes and "model" look-alikes."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def text(self) -> str:
        return "".join(self.random.choice(_PIECES) for _ in range(self.random.randint(0, 8)))

    def value(self, depth: int) -> Any:
        kind = self.random.randint(0, 9 if depth < 4 else 5)
        if kind <= 2:
            return self.text()
        if kind == 3:
            return self.random.choice([None, True, False, 0, -1.5e10, 12345678901234567890])
        if kind == 4:
            return self.random.choice(["model", "alpha", ""])
        if kind == 5:
            return self.random.random()
        if kind <= 7:
            return [self.value(depth + 1) for _ in range(self.random.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(self.random.randint(0, 4))}

    def key(self) -> str:
        return self.random.choice(_KEYS) if self.random.random() < 0.6 else self.text()

    def document(self, *, padded: bool) -> dict[str, Any]:
        document = {self.key(): self.value(1) for _ in range(self.random.randint(0, 6))}
        document.pop("model", None)
        roll = self.random.random()
        if roll < 0.6:
            model: Any = self.text() or "alpha"
        elif roll < 0.8:
            model = self.value(1)
        else:
            return self._padded(document) if padded else document
        items = list(document.items())
        items.insert(self.random.randint(0, len(items)), ("model", model))
        document = dict(items)
        return self._padded(document) if padded else document

    def _padded(self, document: dict[str, Any]) -> dict[str, Any]:
        items = list(document.items())
        padding = ("padding", [self.text(), "p" * VALIDATE_LIMIT, {"model": "inner"}])
        items.insert(self.random.randint(0, len(items)), padding)
        return dict(items)

    def encode(self, document: dict[str, Any]) -> bytes:
        indent = self.random.choice([None, None, 0, 2, "\t"])
        separators = self.random.choice([None, (",", ":"), (" , ", " : "), (",\r\n", ":\t")])
        ascii_only = self.random.random() < 0.5
        text = json.dumps(document, indent=indent, separators=separators, ensure_ascii=ascii_only)
        return text.encode()


def _first_model(body: bytes) -> object:
    """The value of the first top-level "model" pair (json.loads keeps the last)."""
    pairs = json.loads(body, object_pairs_hook=lambda items: items)
    return next((value for key, value in pairs if key == "model"), None)


def _case_variants(document: object) -> list[str]:
    """Top-level keys that are "model" but for their case: a Go backend reads them as it."""
    keys = document if isinstance(document, dict) else {}
    return [key for key in keys if key != "model" and key.casefold() == "model"]


@pytest.mark.parametrize("padded", [False, True])
def test_scan_agrees_with_json_loads(padded: bool) -> None:
    generator = DocumentGenerator(seed=20240611 + padded)
    checked = {"found": 0, "refused": 0, "case variants": 0}
    for _ in range(60 if padded else 1500):
        body = generator.encode(generator.document(padded=padded))
        assert (len(body) > VALIDATE_LIMIT) == padded
        document = json.loads(body)
        expected = document.get("model")
        if _case_variants(document):
            # docs/decisions.md, "Issue 15 follow-up": beside "model" ambiguous, alone no model.
            checked["case variants"] += 1
            refusal = InvalidJSON if "model" in document else ModelRequired
            with pytest.raises(refusal, match=json.dumps(_case_variants(document)[0])):
                find_model(body, JSON)
            with pytest.raises(refusal):
                _scan(body, exhaustive=True)
            continue
        if isinstance(expected, str) and expected:
            checked["found"] += 1
            field = _scan(body, exhaustive=True)
            assert field is not None
            assert field.name == expected, body[:300]
            assert json.loads(span(body, field)) == expected
            assert json.loads(field.rewrite(body, "new"))["model"] == "new"
            first = _first_model(body)
            fast = find_model(body, JSON)
            assert fast.name == (first if padded else expected)
            assert json.loads(span(body, fast)) == fast.name
        else:
            checked["refused"] += 1
            with pytest.raises(ModelRequired):
                find_model(body, JSON)
    assert checked["found"] > checked["refused"] > 0  # both kinds were exercised
    assert padded or checked["case variants"] > 0


def test_scan_on_damaged_bodies_fails_only_with_request_errors() -> None:
    # Mutated bodies: never a crash, never a model json.loads would not give, and never
    # InvalidJSON for a body json.loads accepts.
    generator = DocumentGenerator(seed=99)
    mutate = random.Random(5)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(1500):
        body = bytearray(generator.encode(generator.document(padded=False)))
        for _ in range(mutate.randint(1, 3)):
            at = mutate.randint(0, len(body))
            roll = mutate.random()
            if roll < 0.4 and body:
                del body[min(at, len(body) - 1)]
            elif roll < 0.8:
                body.insert(at, mutate.choice(b'"\\{}[]:, m\xff'))
            else:
                del body[at:]
        try:
            document = json.loads(bytes(body))
        except (ValueError, RecursionError):
            outcomes["invalid"] += 1
            with contextlib.suppress(InvalidJSON, ModelRequired):
                _scan(bytes(body), exhaustive=True)
            with contextlib.suppress(InvalidJSON, ModelRequired):
                _scan(bytes(body), exhaustive=False)
            continue
        outcomes["valid"] += 1
        expected = document.get("model") if isinstance(document, dict) else None
        if _case_variants(document) and "model" in document:
            with pytest.raises(InvalidJSON, match="more than one top-level"):
                _scan(bytes(body), exhaustive=True)
            continue
        try:
            found = _scan(bytes(body), exhaustive=True)
        except ModelRequired:
            found = None
        if isinstance(expected, str) and expected:
            assert found is not None
            assert found.name == expected
        else:
            assert found is None
    assert min(outcomes.values()) > 100


# -- multipart/form-data ---------------------------------------------------------------------

BOUNDARY = "----llmuxBoundary7MA4YWxkTrZu0gW"
AUDIO = (
    b"RIFF\x00\x01\xffWAVE" + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nevil\r\n'
)


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY, preamble: bytes = b"") -> bytes:
    """A form body; each part is (Content-Disposition parameters, content)."""
    dash = b"--" + boundary.encode()
    body = preamble
    for disposition, content in parts:
        body += dash + b"\r\nContent-Disposition: form-data; " + disposition.encode() + b"\r\n"
        if "filename" in disposition:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + dash + b"--\r\n"


def form(boundary: str = BOUNDARY) -> str:
    return f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("name", ['name="model"', "name=model", 'NAME="model"', 'name = "model"'])
def test_multipart_model_field(name: str) -> None:
    body = multipart(
        ('name="file"; filename="name=model.wav"', AUDIO),
        (name, b"alpha"),
        ('name="response_format"', b"json"),
    )
    field = find_model(body, form())
    assert field.name == "alpha"
    assert not field.json_string
    assert span(body, field) == b"alpha"


def test_multipart_file_content_that_looks_like_a_model_part_is_not_taken() -> None:
    body = multipart(('name="file"; filename="model"', AUDIO * 1000), ('name="model"', b"alpha"))
    assert len(body) > VALIDATE_LIMIT / 10
    assert find_model(body, form()).name == "alpha"
    without = multipart(('name="file"; filename="model"', AUDIO), ('name="modelx"', b"alpha"))
    with pytest.raises(ModelRequired, match='no "model" field'):
        find_model(without, form())


def test_multipart_with_two_model_fields_is_refused() -> None:
    # Routed by one, read by the backend as the other: Starlette's form keeps the last.
    body = multipart(
        ('name="model"', b"small"),
        ('name="file"; filename="a.wav"', AUDIO * 40_000),
        ('name="model"', b"big"),
    )
    assert len(body) > OFF_LOOP_BYTES
    assert find_model_quickly(body, form()) is None  # every part is read off the loop
    with pytest.raises(ModelRequired, match='more than one "model" field'):
        find_model(body, form())


def test_multipart_field_names_are_matched_with_their_case() -> None:
    # A form parser reads `MODEL` as another field than `model`: routing by it would route
    # by a field the backend never reads.
    body = multipart(('name="MODEL"', b"small"), ('name="model"', b"big"))
    assert find_model(body, form()).name == "big"
    with pytest.raises(ModelRequired, match='no "model" field'):
        find_model(multipart(('name="Model"', b"small")), form())


def test_multipart_model_before_the_file_and_after_a_preamble() -> None:
    body = multipart(
        ('name="model"', b"alpha"), ('name="file"; filename="a.wav"', AUDIO), preamble=b"hi\r\n"
    )
    assert find_model(body, form()).name == "alpha"


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"Multipart/Form-Data; charset=utf-8; BOUNDARY={BOUNDARY}",
        f"multipart/form-data;boundary={BOUNDARY};x=y",
    ],
)
def test_multipart_content_type_forms(content_type: str) -> None:
    assert find_model(multipart(('name="model"', b"alpha")), content_type).name == "alpha"


def test_multipart_quoted_boundary_with_separators() -> None:
    boundary = "a;b=c d"
    body = multipart(('name="model"', b"alpha"), boundary=boundary)
    assert find_model(body, f'multipart/form-data; boundary="{boundary}"').name == "alpha"


def test_multipart_crlf_handling() -> None:
    # The CRLF before the next delimiter is not part of the value; padding is trimmed.
    body = multipart(('name="model"', b"  alpha \r\n"))
    field = find_model(body, form())
    assert field.name == "alpha"
    assert span(body, field) == b"  alpha \r\n"
    # An empty first part: no headers at all.
    no_headers = b"--b\r\n\r\n\r\n" + multipart(('name="model"', b"a"), boundary="b")
    assert find_model(no_headers, form("b")).name == "a"
    # Bare LF line endings are not multipart (RFC 2046 needs CRLF).
    lf = multipart(('name="model"', b"alpha")).replace(b"\r\n", b"\n")
    with pytest.raises(ModelRequired):
        find_model(lf, form())


def test_multipart_without_a_usable_model() -> None:
    body = multipart(('name="model"', b"alpha"))
    with pytest.raises(ModelRequired, match="boundary"):
        find_model(body, "multipart/form-data")
    with pytest.raises(ModelRequired, match='no "model" field'):
        find_model(body, form("other"))
    with pytest.raises(ModelRequired, match='no "model" field'):
        find_model(multipart(('name="file"; filename="a.wav"', AUDIO)), form())
    with pytest.raises(ModelRequired, match="empty"):
        find_model(multipart(('name="model"', b" \r\n ")), form())
    unterminated = multipart(('name="model"', b"alpha"))[: -len(BOUNDARY) - 10]
    with pytest.raises(ModelRequired):
        find_model(unterminated, form())
    headers_never_end = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=model".encode()
    with pytest.raises(ModelRequired):
        find_model(headers_never_end + b"\r\n--" + BOUNDARY.encode() + b"--", form())


def test_multipart_rewrite() -> None:
    body = multipart(('name="file"; filename="a.wav"', AUDIO), ('name="model"', b"alpha"))
    field = find_model(body, form())
    rewritten = field.rewrite(body, "whisper-large-v3")
    assert rewritten == body.replace(b"\r\n\r\nalpha\r\n", b"\r\n\r\nwhisper-large-v3\r\n")
    assert find_model(rewritten, form()).name == "whisper-large-v3"


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b'"model": "alpha", "stream": true', "alpha"),  # the OpenAI SDKs' layout
        (b'"model": "alpha", "metadata": {"model": "nested"}', "alpha"),
        (b'"model": "alpha", "x": {"role": "model", "a": ["model"]}', "alpha"),
        (b'"tools": [{"model": "nested"}], "model": "alpha"', "alpha"),
        (b'"x": "}", "model": "alpha", "y": "{\\"model\\": 1}"', "alpha"),
        # Keys and strings that end in the bytes "model" after an escaped quote:
        (b'"model": "alpha", "p\\"model": "beta"', "alpha"),
        (b'"model": "alpha", "p\\"model"   :  "beta", "q": 1', "alpha"),
        (b'"model": "alpha", "s": "a\\\\", "t\\"model": "beta"', "alpha"),
    ],
)
def test_large_body_with_model_near_the_end(tail: bytes, expected: str) -> None:
    body = members(messages("large"), tail)
    field = find_model(body, JSON)
    assert field.name == expected
    assert span(body, field) == b'"alpha"'
    assert json.loads(field.rewrite(body, "beta"))["model"] == "beta"


def test_large_body_whose_only_model_is_nested_has_none() -> None:
    body = members(messages("large"), b'"metadata": {"model": "nested"}', b'"n": 1')
    with pytest.raises(ModelRequired):
        find_model(body, JSON)


def test_large_body_with_model_far_from_both_ends() -> None:
    body = members(messages("large"), b'"model": "alpha"', messages("large"))
    assert find_model(body, JSON).name == "alpha"


# -- Content-Encoding: the decoded copy the model is found in ---------------------------


def test_decoded_body_undoes_each_layer_in_turn() -> None:
    plain = b'{"model": "alpha"}'
    assert decoded_body(plain, "identity", 100) is plain
    assert decoded_body(gzip.compress(plain), "gzip", 100) == plain
    twice = zlib.compress(gzip.compress(plain))
    assert decoded_body(twice, "gzip, deflate", 100) == plain
    assert decoded_body(twice, "identity, gzip , Deflate", 100) == plain


def test_decoded_body_reads_every_gzip_member() -> None:
    # RFC 1952 §2.2: a gzip file is a series of members; gzip.decompress reads them all.
    body = gzip.compress(b'{"model": ') + gzip.compress(b'"alpha"}')
    assert decoded_body(body, "gzip", 100) == b'{"model": "alpha"}'
    with pytest.raises(BodyTooLarge):  # the limit holds across members
        decoded_body(gzip.compress(b"x" * 60) + gzip.compress(b"y" * 60), "gzip", 100)
    with pytest.raises(InvalidJSON):  # after a member: another one, or nothing
        decoded_body(gzip.compress(b"{}") + b"junk", "gzip", 100)
    with pytest.raises(InvalidJSON):  # a zlib stream has one member only
        decoded_body(zlib.compress(b"{}") * 2, "deflate", 100)


def test_decoded_body_refuses_many_layers_before_any_work() -> None:
    # Each layer may expand to the limit: a few hundred of them are minutes of CPU.
    layers = ", ".join(["gzip"] * (MAX_CODINGS + 1))
    with pytest.raises(InvalidJSON, match="layers of Content-Encoding"):
        decoded_body(b"not even gzip", layers, 100)


def test_decoded_body_stops_at_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        decoded_body(gzip.compress(b" " * 1_000_000), "gzip", 1000)
    with pytest.raises(InvalidJSON, match="'br'"):
        decoded_body(b"...", "br", 1000)
    with pytest.raises(InvalidJSON, match="not valid gzip"):
        decoded_body(gzip.compress(b"{}")[:-3], "gzip", 1000)  # cut short


def test_a_large_json_body_is_looked_at_off_the_event_loop() -> None:
    # Its duplicate-key check reads every byte (~1 ms a MiB): not on the loop, and once.
    from aiollmux.request_body import OFF_LOOP_BYTES, find_model, find_model_quickly

    small = json.dumps({"messages": "x" * (OFF_LOOP_BYTES - 100), "model": "m"}).encode()
    large = json.dumps({"messages": "x" * OFF_LOOP_BYTES, "model": "m"}).encode()
    field = find_model_quickly(small, "application/json")
    assert field is not None
    assert field.name == "m"
    assert find_model_quickly(large, "application/json") is None
    assert find_model(large, "application/json").name == "m"


@pytest.mark.parametrize(
    "disposition",
    [
        "name*=UTF-8''model",  # RFC 2231: Go's mime/multipart reads it as name="model"
        "name*=''model",
        'name="model"\x0b',  # Go takes the vertical tab for white space
        'name="mod\\el"',  # a quoted-pair: "model" to a parser that unquotes
        'name= "model" \x0c',
    ],
)
def test_multipart_names_read_as_model_elsewhere_are_refused(disposition: str) -> None:
    body = multipart((disposition, b"big"), ('name="model"', b"small"))
    with pytest.raises(ModelRequired, match="in a way form parsers read differently"):
        find_model(body, form())
    with pytest.raises(ModelRequired, match="in a way form parsers read differently"):
        find_model(multipart(('name="model"', b"small"), (disposition, b"big")), form())


def test_multipart_names_like_model_that_are_not_model_still_pass() -> None:
    body = multipart(
        ('name="model_options"', b"x"), ('name="my model"', b"y"), ('name="model"', b"small")
    )
    assert find_model(body, form()).name == "small"
