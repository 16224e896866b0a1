"""A top-level key that is "model" but for its case ("MODEL", "Model", "\\u004dODEL") is
refused on every body path: Go's encoding/json (Ollama) matches keys ignoring case and keeps
the last, so such a key would make a backend load a model aiollmux did not route
(docs/decisions.md, "Issue 15 follow-up: case-variant model keys")."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable

import pytest

from aiollmux.errors import InvalidJSON, ModelRequired
from aiollmux.request_body import (
    _CHUNK,
    _QUOTE_SPACING,
    _SAMPLE,
    _SPARSE_BUDGET,
    OFF_LOOP_BYTES,
    VALIDATE_LIMIT,
    _count_in_lower_case,
    _Dense,
    _DuplicateModel,
    _may_repeat_model,
    _scan,
    decoded_body,
    find_model,
    find_model_quickly,
)
from tests.e2e.test_proxy import assert_error
from tests.support import Lab, running_daemon
from tests.test_request_body import (
    JSON,
    LARGE_SHAPES,
    SIZES,
    Size,
    chat_messages,
    members,
    messages,
    short_strings,
)

# Spellings as written in a body, and the key each one is once its escapes are undone.
VARIANTS = {
    b'"MODEL"': "MODEL",
    b'"Model"': "Model",
    b'"mOdEl"': "mOdEl",
    b'"modeL"': "modeL",
    rb'"\u004dODEL"': "MODEL",
    rb'"mode\u004C"': "modeL",
    rb'"\u004D\u006f\u0044\u0065\u004c"': "MoDeL",
}
AMBIGUOUS = 'more than one top-level "model" key: "model" and '
BACKENDS = "the same key to backends that ignore its case (Go's encoding/json, so Ollama)"


def ambiguous(variant: str) -> str:
    return AMBIGUOUS + json.dumps(variant)


def variant_member(spelling: bytes, name: bytes = b'"beta"') -> bytes:
    return spelling + b": " + name


# -- small bodies: parsed whole with json ------------------------------------------------


@pytest.mark.parametrize("spelling", VARIANTS)
@pytest.mark.parametrize("variant_first", [False, True])
def test_a_case_variant_beside_model_is_refused_in_a_small_body(
    spelling: bytes, variant_first: bool
) -> None:
    parts = [b'"model": "alpha"', messages("small"), variant_member(spelling)]
    if variant_first:
        parts.reverse()
    body = members(*parts)
    assert len(body) <= VALIDATE_LIMIT
    with pytest.raises(InvalidJSON, match=ambiguous(VARIANTS[spelling])):
        find_model(body, JSON)
    with pytest.raises(InvalidJSON, match=ambiguous(VARIANTS[spelling])):
        find_model_quickly(body, JSON)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("spelling", VARIANTS)
def test_a_case_variant_alone_is_no_model(size: Size, spelling: bytes) -> None:
    # Nothing is routed, so no backend loads anything; the message says what was found.
    body = members(messages(size), variant_member(spelling), b'"stream": true')
    with pytest.raises(ModelRequired, match=f'no "model" field .*{json.dumps(VARIANTS[spelling])}'):
        find_model(body, JSON)


@pytest.mark.parametrize("size", SIZES)
def test_case_variants_in_nested_values_are_no_concern(size: Size) -> None:
    nested = [
        b'"metadata": {"MODEL": "meta", "Model": {"mOdEl": 1}}',
        b'"tools": [{"function": {"name": "MODEL", "Model": "tool"}}]',
        rb'"note": "say \"MODEL\": \"beta\""',
        b'"list": ["MODEL", {"Model": ["model"]}]',
    ]
    for first in (True, False):
        parts = [messages(size), *nested]
        parts.insert(0 if first else len(parts), b'"model": "alpha"')
        assert find_model(members(*parts), JSON).name == "alpha"
    # Other keys that only look alike stay other keys.
    alike = [
        b'"MODELS": 1',
        b'"Mode": 2',
        b'"model ": 3',
        b'"M\\u006fdel1": 4',
        b'"m\xc3\xb6del": 5',
    ]
    assert find_model(members(messages(size), b'"model": "alpha"', *alike), JSON).name == "alpha"


# -- large bodies: every path of the scan ------------------------------------------------


def large_body(variant: bytes) -> bytes:
    content = '"quoted" and\n' * 100_000  # a chat prompt: escapes, few quotes
    prompt = json.dumps([{"role": "user", "content": content}]).encode()
    return members(b'"model": "alpha"', b'"messages": ' + prompt, variant)


def capitalised_strings() -> bytes:
    """Dense short strings with capitals and no escape: the lower-case copy's path."""
    return short_strings("Open Models Input")()


def token_ids() -> bytes:
    """No quote, no escape, no letter: the key regex's path without escapes."""
    return b'"input": ' + json.dumps(list(range(VALIDATE_LIMIT // 5))).encode()


SHAPES: dict[str, Callable[[], bytes]] = {
    **LARGE_SHAPES,
    "capitalised strings": capitalised_strings,
    "token ids": token_ids,
}
# How each shape is looked at (docs/decisions.md, "Issue 12: proxy performance" and "Issue
# 15 follow-up"): by the budgeted walk, or else by which searches for every spelling of the
# key. Checked below, so a shape that drifts to another path is noticed.
PATHS = {
    "image": "walk",
    "chat": "key regex",  # few quotes, escapes
    "token ids": "key regex",  # few quotes, no escape
    "short strings": "lower-case copy",  # many quotes, no escape (capitals from the key)
    "capitalised strings": "lower-case copy",
    "short lines": "escape regex, lower-case copy",  # many quotes and escapes
}


def path_of(body: bytes) -> str:
    try:
        _scan(body, exhaustive=True, budget=_SPARSE_BUDGET)
    except _Dense:
        pass
    except _DuplicateModel:
        return "walk"  # which refused it
    else:
        return "walk"
    sample = body[:_SAMPLE]
    if sample.count(b'"') * _QUOTE_SPACING <= len(sample):
        return "key regex"
    return "escape regex, lower-case copy" if b"\\" in body else "lower-case copy"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spelling", VARIANTS)
@pytest.mark.parametrize("variant_first", [False, True])
def test_a_case_variant_beside_model_is_refused_in_a_large_body_of_every_shape(
    shape: str, spelling: bytes, variant_first: bool
) -> None:
    parts = [b'"model": "alpha"', SHAPES[shape](), variant_member(spelling)]
    if variant_first:
        parts.reverse()
    body = members(*parts)
    assert VALIDATE_LIMIT < len(body) <= OFF_LOOP_BYTES  # scanned on the event loop
    path = PATHS[shape]
    if b"\\" in spelling and path == "lower-case copy":
        path = "escape regex, lower-case copy"  # the key brings the body's only escape
    assert path_of(body) == path
    assert _may_repeat_model(body)
    with pytest.raises(InvalidJSON, match=ambiguous(VARIANTS[spelling])):
        find_model(body, JSON)
    # Two candidate keys: the quick look leaves the body to find_model's walk.
    assert find_model_quickly(body, JSON) is None


@pytest.mark.parametrize("shape", SHAPES)
def test_capitals_elsewhere_are_no_second_key(shape: str) -> None:
    # Capitals elsewhere (values, other keys) are not a second key: the cheap searches
    # still decide, and the fast layouts still apply.
    body = members(b'"model": "alpha"', SHAPES[shape](), b'"Note": "MODEL Model"', b'"MODE": 1')
    assert not _may_repeat_model(body)
    assert find_model(body, JSON).name == "alpha"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spelling", [b'"MODEL"', rb'"mode\u004C"'])
def test_a_case_variant_alone_in_a_large_body_of_every_shape_is_no_model(
    shape: str, spelling: bytes
) -> None:
    body = members(SHAPES[shape](), variant_member(spelling), b'"stream": true')
    with pytest.raises(ModelRequired, match=f"it has {json.dumps(VARIANTS[spelling])}"):
        find_model(body, JSON)
    without = members(SHAPES[shape](), b'"stream": true')
    with pytest.raises(ModelRequired, match=r'no "model" field$'):
        find_model(without, JSON)


@pytest.mark.parametrize("before_the_boundary", range(8))
def test_a_case_variant_across_a_chunk_of_the_lower_case_count(before_the_boundary: int) -> None:
    # The lower-case copy is made a chunk at a time: a key across two chunks counts once.
    head = members(
        b'"model": "alpha"', b'"input": ' + json.dumps(["Open Models"] * 65_000).encode()
    )
    head = head[:-1] + b", "
    padding = _CHUNK - before_the_boundary - len(head)
    assert padding > 0
    body = head + b" " * padding + b'"MODEL": "beta"}'
    assert body.index(b'"MODEL"') == _CHUNK - before_the_boundary
    assert path_of(body) == "lower-case copy"
    with pytest.raises(InvalidJSON, match=ambiguous("MODEL")):
        find_model(body, JSON)
    assert _count_in_lower_case(body, b'"model"', stop_after=3) == 2


def test_a_large_body_is_refused_off_the_event_loop_too() -> None:
    # Past OFF_LOOP_BYTES the quick look defers to find_model, run in a thread.
    body = large_body(variant_member(b'"Model"'))
    assert len(body) > OFF_LOOP_BYTES
    assert find_model_quickly(body, JSON) is None
    with pytest.raises(InvalidJSON, match=ambiguous("Model")):
        find_model(body, JSON)


def test_a_compressed_body_is_refused_once_decoded() -> None:
    plain = members(b'"model": "alpha"', chat_messages(), variant_member(b'"MODEL"'))
    body = gzip.compress(plain)
    with pytest.raises(InvalidJSON, match=ambiguous("MODEL")):
        find_model(decoded_body(body, "gzip", 10 * len(plain)), JSON)


# -- through the daemon: nothing reaches a backend, nothing wakes ------------------------


@pytest.mark.parametrize(
    ("case", "body", "encoding"),
    [
        ("small", members(b'"model": "alpha"', variant_member(b'"MODEL"')), None),
        ("large, off the loop", large_body(variant_member(b'"MODEL"')), None),
        ("gzip", gzip.compress(members(b'"model": "alpha"', variant_member(b'"MODEL"'))), "gzip"),
        ("large gzip", gzip.compress(large_body(variant_member(rb'"\u004dODEL"'))), "gzip"),
    ],
)
async def test_the_daemon_refuses_a_case_variant_before_any_backend_sees_it(
    lab: Lab, case: str, body: bytes, encoding: str | None
) -> None:
    await lab.add_backends("alpha", "beta")
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    async with running_daemon(lab.config()) as daemon:
        url = f"{daemon.url}/v1/chat/completions"
        async with daemon.client.post(url, data=io.BytesIO(body), headers=headers) as response:
            error = await assert_error(response, "invalid_json")
        assert error["message"].endswith(ambiguous("MODEL") + ", " + BACKENDS), case
        async with daemon.client.post(url, json={"MODEL": "beta"}) as response:
            error = await assert_error(response, "model_required")
        assert '"MODEL"' in error["message"]
        # The same body with the key nested is routed as before.
        nested = members(b'"model": "alpha"', b'"metadata": {"MODEL": "beta"}')
        async with daemon.client.post(url, data=nested) as response:
            assert response.status == 200
    assert [request["body"] for request in lab.backends["alpha"].requests] == [nested]
    assert lab.backends["beta"].requests == []
    assert lab.journal.lines() == ["start wake alpha", "end wake alpha"]
