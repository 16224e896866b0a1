"""One reading of JSON request bodies, proxied and admin (`request_body.parse_json`): UTF-8,
a leading byte order mark ignored, UTF-16/32 refused naming RFC 8259 §8.1."""

from __future__ import annotations

import pytest

from aiollmux.errors import InvalidJSON
from aiollmux.request_body import UTF8_RULE, find_model, parse_json

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
