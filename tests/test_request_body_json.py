"""One reading of JSON request bodies, proxied and admin (`request_body.parse_json`): UTF-8,
a leading byte order mark ignored, UTF-16/32 refused naming RFC 8259 §8.1."""

from __future__ import annotations

import json

import pytest

from aiollmux.errors import InvalidJSON
from aiollmux.request_body import UTF8_RULE, find_model, find_model_quickly, parse_json

DOCUMENT = '{"model": "alpha", "messages": []}'
BOM = b"\xef\xbb\xbf"
WIDE = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def test_utf8_is_read_with_or_without_a_byte_order_mark() -> None:
    expected = {"model": "alpha", "messages": []}
    assert parse_json(DOCUMENT.encode()) == expected
    assert parse_json(BOM + DOCUMENT.encode()) == expected
    assert parse_json('{"model": "čaj ☕"}'.encode()) == {"model": "čaj ☕"}


@pytest.mark.parametrize("encoding", WIDE)
def test_utf16_and_utf32_are_refused_naming_the_rule(encoding: str) -> None:
    body = DOCUMENT.encode(encoding)
    with pytest.raises(InvalidJSON) as info:
        parse_json(body)
    assert str(info.value) == (
        f"the request body is not valid JSON: it looks like UTF-16 or UTF-32; {UTF8_RULE}"
    )
    assert "RFC 8259 §8.1" in UTF8_RULE
    # The proxied path reads a body the same way.
    with pytest.raises(InvalidJSON, match="UTF-16 or UTF-32"):
        find_model(body, "application/json")


def test_invalid_utf8_names_the_byte_and_the_rule() -> None:
    with pytest.raises(InvalidJSON) as info:
        parse_json(BOM + b'{"model": "\xff"}')
    message = str(info.value)
    assert message.startswith("the request body is not valid JSON: it is not UTF-8 (byte 14: ")
    assert message.endswith(UTF8_RULE)


def test_a_syntax_error_is_invalid_json() -> None:
    with pytest.raises(InvalidJSON, match=r"^the request body is not valid JSON: Expecting"):
        parse_json(b'{"model": }')
    with pytest.raises(InvalidJSON, match="not valid JSON"):
        parse_json(b"[" * 100_000)  # json's recursion limit


def _smuggling_utf16_body() -> bytes:
    """UTF-16LE whose code units spell `,"model":"a"` in raw bytes at the top level of a
    byte-level scan, while `json.loads(bytes)` (FastAPI's reading) sees only model "b";
    over 256 KiB, so it is scanned rather than parsed."""
    units = [0x2200, 0x222C, 0x6F6D, 0x6564, 0x226C, 0x223A, 0x2261, 0x222C, 0x2279, 0x223A]
    text = '{"model":"b","x":"' + "".join(map(chr, units + [0x4E00] * 150_000)) + '"}'
    return text.encode("utf-16-le")


@pytest.mark.parametrize("encoding", WIDE)
def test_large_wide_bodies_are_refused_before_any_scan(encoding: str) -> None:
    smuggling = _smuggling_utf16_body()
    assert len(smuggling) > 256 * 1024
    assert json.loads(smuggling)["model"] == "b"
    padded = '{"model": "alpha", "x": "' + "y" * 300_000 + '"}'
    for body in (smuggling, padded.encode(encoding)):
        for finder in (find_model, find_model_quickly):
            with pytest.raises(InvalidJSON, match="UTF-16 or UTF-32"):
                finder(body, "application/json")
