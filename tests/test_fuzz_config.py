"""Fuzzing `parse_config` (docs/design.md §2): bad input is a `ConfigError`, never another
exception.

Documents are generated as Python values over the real schema (every known key, with
values of the right type most of the time and of any TOML type otherwise, plus unknown
keys and nested tables) and written with tomli-w; arbitrary text and mutated TOML cover
the syntax side. The property: `parse_config` returns a `Config` consistent with the
input, or raises `ConfigError` whose message starts with the source and whose key path
names a place in the input (a missing key only for "is required" errors; no key at all
for TOML syntax errors). Any other exception fails the test.

Runs are reproducible (`derandomize=True`, no example database). Generated integers
stay within TOML's 64 bits; the tests at the end of the file cover what lies beyond
(and deep nesting), inputs that once escaped as other exceptions.
"""

from __future__ import annotations

import datetime
import re
import string
import tomllib
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiollmux.config import (
    GROUP_KEYS,
    MODEL_KEYS,
    POLICY_KEYS,
    ROOT_KEYS,
    Config,
    parse_config,
)
from aiollmux.errors import ConfigError

SOURCE = "/srv/fuzz/llmux.toml"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# TOML integers are 64-bit (TOML 1.0 §Integer); larger ones have tests of their own below.
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

# Keys whose absence is reported as "is required" (so the path may name a missing key).
REQUIRED = {"port", "wake", "sleep", "alive"}
_NESTED = {"policy", "groups", "models"}  # generated as tables of their own


# -- generators ----------------------------------------------------------------------------

keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["llama", "Qwen/Qwen2.5-7B", "a.b", "default", "gpu0", " ", "", "models"]),
)
scalars = st.one_of(
    st.booleans(),
    INT64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.datetimes(
        min_value=datetime.datetime(1, 1, 1), timezones=st.sampled_from([None, datetime.UTC])
    ),
    st.dates(),
    st.times(),
)
# Any TOML value, nested a few levels (tables and heterogeneous arrays).
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def valid(key: str) -> st.SearchStrategy[Any]:
    """A value the schema accepts for `key` (ports may still collide, aliases clash...)."""
    seconds = st.sampled_from([0, 0.5, 1, 30, 600]) | st.floats(0, 1e6)
    by_key: dict[str, st.SearchStrategy[Any]] = {
        "host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0"]),
        "port": st.integers(1, 65535) | st.sampled_from([3000, 8001, 8002]),
        "max_request_body_mb": st.sampled_from([0.5, 64, 2**20]),
        "admin_token": st.sampled_from(["secret", "t0k3n"]),
        "api_keys": st.lists(st.sampled_from(["sk-1", "sk-2"]), max_size=2),
        "aliases": st.lists(st.sampled_from(["a", "b", "llama", "org/m-7b"]), max_size=2),
        "name": st.sampled_from(["fifo", "pkg.mod:Cls"]),
        "max_queued_requests": st.integers(0, 1_000_000),
        "group": st.sampled_from(["default", "gpu0"]),
        "upstream_model": st.sampled_from(["qwen3:8b", "x"]),
        "request_timeout_secs": st.sampled_from([0.5, 300]),
    }
    if key in by_key:
        return by_key[key]
    if key in {"wake", "sleep", "alive"}:
        return st.sampled_from(["./wake.sh", "true", "curl -sf http://127.0.0.1:1/health"])
    if key.endswith("_timeout_secs") and key != "drain_timeout_secs":
        return st.sampled_from([0.5, 10, 600])  # hook timeouts must be positive
    if key.endswith("_secs"):
        return seconds
    return st.booleans()  # the remaining keys are flags


def edge(key: str) -> st.SearchStrategy[Any]:
    """Near-miss values of the right type: out of range, blank, unknown names."""
    by_key: dict[str, st.SearchStrategy[Any]] = {
        "host": st.sampled_from(["", "  "]) | st.text(max_size=10),
        "port": st.sampled_from([0, 65536, -1]) | INT64,
        "max_request_body_mb": st.sampled_from([0, -1, 2**20 + 1]) | st.floats(),
        "admin_token": st.sampled_from(["", " "]),
        "api_keys": st.lists(st.text(max_size=3), max_size=3),
        "aliases": st.lists(st.sampled_from(["", " ", "a", "a"]) | st.text(max_size=3)),
        "name": st.sampled_from(["cost", "a:b:c", "1x:Y", "pkg.:C", ""]) | st.text(max_size=6),
        "max_queued_requests": st.sampled_from([-3, 1_000_001, 0.5]),
        "group": st.sampled_from(["gpu1", "", "a.b"]) | st.text(max_size=4),
        "upstream_model": st.sampled_from(["", " "]) | st.text(max_size=4),
    }
    if key in by_key:
        return by_key[key]
    if key in {"wake", "sleep", "alive"}:
        return st.sampled_from(["", " ", "\n"]) | st.text(max_size=6)
    return st.sampled_from([0, -1, -0.0]) | st.floats()


@st.composite
def tables(
    draw: st.DrawFn, known: tuple[str, ...], *, clean: bool, forced: tuple[str, ...] = ()
) -> Any:
    """A table of a subset of `known` keys and, in a noisy table, unknown keys.

    A clean table holds only valid values, so a clean document reaches the rules that
    span tables (ports, aliases, groups); otherwise values are valid, near misses of the
    right type, or any TOML value.
    """
    noisy = not clean and draw(st.integers(0, 3)) == 0
    table: dict[str, Any] = {}
    for key in known:
        if key in forced or draw(st.integers(0, 2)) == 0:
            kind = 2 if clean else draw(st.integers(0, 5 if not noisy else 2))
            strategy = values if kind == 0 else edge(key) if kind == 1 else valid(key)
            table[key] = draw(strategy)
    if noisy:
        for _ in range(draw(st.integers(1, 2))):
            table[draw(keys)] = draw(values)
    return table


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    clean = draw(st.booleans())
    scalar_keys = tuple(k for k in ROOT_KEYS if k not in _NESTED)
    root: dict[str, Any] = draw(tables(scalar_keys, clean=clean))
    if draw(st.booleans()):
        policy = tables(POLICY_KEYS, clean=clean)
        root["policy"] = draw(policy if clean or draw(st.integers(0, 9)) else values)
    if draw(st.integers(0, 3)) == 0:
        names = st.sampled_from(["gpu0", "gpu1", "default"])
        names |= st.nothing() if clean else st.sampled_from(["", " "]) | keys
        group = tables(GROUP_KEYS, clean=clean)
        group |= st.nothing() if clean else values
        root["groups"] = draw(st.dictionaries(names, group, max_size=3))
    if draw(st.sampled_from([True, True, True, False])):  # a few documents have none
        ids = st.sampled_from(["llama", "qwen", "Qwen/Qwen2.5-7B", "a.b", "m1"])
        ids |= st.nothing() if clean else st.sampled_from(["", " "]) | keys
        hooks = ("port", "wake", "sleep", "alive")
        forced = hooks if clean or draw(st.integers(0, 4)) else ()
        model = tables(MODEL_KEYS, clean=clean, forced=forced)
        model |= st.nothing() if clean else values
        root["models"] = draw(st.dictionaries(ids, model, min_size=1, max_size=3))
    return root


@st.composite
def mutated_toml(draw: st.DrawFn) -> str:
    """A valid-ish TOML document with a few characters inserted, deleted or replaced."""
    text = tomli_w.dumps(draw(documents()))
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        noise = draw(st.sampled_from([*"[]{}\"'=.,\n#\\ \t\x00\x7f", "é", "\u2028"]))
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + noise + text[at + (edit == "replace") :]
    return text


# -- the oracle ----------------------------------------------------------------------------

_COMPONENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+)')


def split_key_path(path: str) -> tuple[list[str], int | None]:
    """`models."a.b".aliases[2]` -> (["models", "a.b", "aliases"], 2)."""
    index: int | None = None
    if match := re.search(r"\[(\d+)\]$", path):
        index = int(match.group(1))
        path = path[: match.start()]
    parts: list[str] = []
    position = 0
    while position < len(path):
        component = _COMPONENT.match(path, position)
        assert component is not None, f"malformed key path {path!r} at {position}"
        quoted, bare = component.groups()
        parts.append(bare if bare is not None else re.sub(r"\\(.)", r"\1", quoted))
        position = component.end()
        if position < len(path):
            assert path[position] == ".", f"malformed key path {path!r} at {position}"
            position += 1
            assert position < len(path), f"key path {path!r} ends with a dot"
    return parts, index


def assert_names_the_input(error: ConfigError, document: dict[str, Any]) -> None:
    parts, index = split_key_path(error.key)
    node: Any = document
    for depth, part in enumerate(parts):
        assert isinstance(node, dict), f"{error.key!r}: {parts[:depth]} is not a table"
        if part not in node:
            last = depth == len(parts) - 1
            required = part in REQUIRED and "is required" in error.detail
            no_models = parts == ["models"] and "at least one model" in error.detail
            assert last, f"{error.key!r} is not in the input"
            assert required or no_models, f"{error.key!r} is not in the input"
            return
        node = node[part]
    if index is not None:
        assert isinstance(node, list), f"{error.key!r} indexes a non-list"
        assert index < len(node), f"{error.key!r} is past the end of the list"


def assert_consistent(config: Config, document: dict[str, Any]) -> None:
    assert config.source == SOURCE
    assert config.port == document.get("port", 3000)
    assert set(config.models) == set(document["models"])
    ports = [model.port for model in config.models.values()]
    assert len(set(ports)) == len(ports)
    assert config.port not in ports
    names = [name for model in config.models.values() for name in model.aliases]
    assert len(set(names)) == len(names)
    assert not set(names) & set(config.models)
    for model in config.models.values():
        entry = document["models"][model.id]
        assert model.port == entry["port"]
        assert (model.wake, model.sleep, model.alive) == (
            entry["wake"],
            entry["sleep"],
            entry["alive"],
        )
        assert model.group in config.groups


def parsed(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, SOURCE)
    except ConfigError as error:
        return error


def check(text: str, outcomes: dict[str, int]) -> None:
    """The property, for one document text (any other exception fails the test)."""
    result = parsed(text)
    if isinstance(result, Config):
        assert_consistent(result, tomllib.loads(text))
        outcomes["config"] += 1
        return
    assert result.source == SOURCE
    assert str(result).startswith(f"{SOURCE}: {result.key}: " if result.key else f"{SOURCE}: ")
    assert result.detail
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert result.key == "", "a TOML syntax error names no key"
        assert "invalid TOML" in result.detail
        outcomes["syntax"] += 1
        return
    assert result.key, "a valid TOML document's error must name a key"
    assert_names_the_input(result, document)
    outcomes["error"] += 1


# -- the properties ------------------------------------------------------------------------

VALID = """
port = 3000
[models.llama]
port = 8001
wake = "./wake.sh"
sleep = "./sleep.sh"
alive = "true"
"""


def test_generated_documents_parse_or_fail_with_a_key_path() -> None:
    outcomes = {"config": 0, "error": 0, "syntax": 0}

    @FUZZ
    @given(document=documents())
    @example(document=tomllib.loads(VALID))
    @example(document={})
    @example(document={"models": {"a": {"port": 1, "wake": "x", "sleep": "x", "alive": "x"}}})
    @example(document={"models": {"a.b": {"1": {}}}})
    @example(document={"models": {"": {}}, "groups": {"": {}}})
    @example(document={"policy": [], "models": {"a": []}})
    def run(document: dict[str, Any]) -> None:
        check(tomli_w.dumps(document), outcomes)

    run()
    # The generators must reach both sides of the property, or it tests nothing.
    assert outcomes["config"] > 0, outcomes
    assert outcomes["error"] > 0, outcomes


def test_arbitrary_and_mutated_text_fails_cleanly() -> None:
    outcomes = {"config": 0, "error": 0, "syntax": 0}

    @FUZZ
    @given(text=st.text(max_size=200) | mutated_toml() | st.text(string.printable, max_size=80))
    @example(text="")
    @example(text="\x00")
    @example(text="[models.a]\n[models.a]\n")
    @example(text="a = [" * 40 + "]" * 40)  # nesting well inside the recursion limit
    @example(text="port = 1_0\n[[models]]\n")
    @example(text='models = "llama"')
    @example(text="[models]\nllama = 3")
    def run(text: str) -> None:
        check(text, outcomes)

    run()
    assert outcomes["syntax"] > 0, outcomes
    assert outcomes["error"] > 0, outcomes


def test_split_key_path() -> None:
    assert split_key_path('models."a.b".aliases[2]') == (["models", "a.b", "aliases"], 2)
    assert split_key_path(r'models."q\"x".port') == (["models", 'q"x', "port"], None)
    assert split_key_path("port") == (["port"], None)
    with pytest.raises(AssertionError):
        split_key_path("models..port")


# -- inputs that once escaped as other exceptions (found by the fuzzer) -------------------

MODEL = '[models.a]\nport = 8001\nwake = "x"\nsleep = "x"\nalive = "x"\n'


def _fails_cleanly(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert str(info.value).startswith(f"{SOURCE}: ")


def test_deeply_nested_toml_is_a_config_error() -> None:
    # tomllib recurses per nesting level and raises RecursionError, not TOMLDecodeError.
    _fails_cleanly("a = " + "[" * 5000 + "]" * 5000 + "\n" + MODEL)


def test_huge_integer_duration_is_a_config_error() -> None:
    # tomllib accepts integers beyond TOML's 64 bits; math.isfinite(int) overflows.
    _fails_cleanly("shutdown_timeout_secs = " + "9" * 400 + "\n" + MODEL)


def test_integer_past_the_digit_limit_is_a_config_error() -> None:
    # Python's 4300-digit int conversion limit raises a plain ValueError inside tomllib.
    _fails_cleanly("port = " + "9" * 5000 + "\n" + MODEL)


@pytest.mark.parametrize("key", ["host", "admin_token"])
def test_huge_hexadecimal_integer_is_a_config_error(key: str) -> None:
    # Python's digit limit applies to decimal only: tomllib reads this one, and printing
    # it in the message would raise.
    _fails_cleanly(f"{key} = 0x{'f' * 4000}\n" + MODEL)
