"""What the fuzz tests share: the daemon under test (three models, one with aliases and
one with an `upstream_model`, on backends that record each request as it arrived), the
settings every fuzzer runs with, and the generators of model names, JSON values and
request targets with their oracles (docs/design.md §4, §5).

The pattern (hypothesis cannot drive an `async def` test and keep one daemon across
examples): the async test starts the daemon and backends on pytest's event loop, then runs
a synchronous `@given` function in a worker thread with `asyncio.to_thread`; each example
is submitted back to the still-running loop with `asyncio.run_coroutine_threadsafe` and
its result awaited from the thread. The daemon keeps serving (timers, health checks)
between examples, assertions raised on the loop reach hypothesis through the future, and
nothing but that hand-off crosses threads. Runs are reproducible (`derandomize=True`, no
example database) and bounded (`max_examples`).
"""

from __future__ import annotations

import json
import string
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support import FakeBackend, Lab

# -- the daemon under test -----------------------------------------------------------------

UPSTREAM = "gamma-upstream:7b"
PER_MODEL: dict[str, dict[str, Any]] = {
    "alpha": {},
    "beta": {"aliases": ["b", "org/Beta-7B"]},
    "gamma": {"aliases": ["g"], "upstream_model": UPSTREAM},
}
NAMES = {"alpha": "alpha", "beta": "beta", "b": "beta", "org/Beta-7B": "beta"}
NAMES |= {"gamma": "gamma", "g": "gamma"}
LIMIT_MB = 2
LIMIT = LIMIT_MB * 1024 * 1024
ERROR_STATUS = {"model_required": 400, "invalid_json": 400, "model_not_found": 404}
ERROR_STATUS |= {"body_too_large": 413, "invalid_request": 400, "path_not_proxied": 404}
# The generated targets live under /p1/ (PREFIX): proxied, as inference paths would be.
PROXY_PATHS = 'proxy_paths = ["/p1/", "/v1/"]\n'
REQUEST_TIMEOUT = 30.0  # far above any answer here: reaching it means a hang

Outcome = tuple[Literal["proxy", "error"], str]


def named(name: str) -> Outcome:
    if not name:
        return ("error", "model_required")
    model = NAMES.get(name)
    return ("proxy", model) if model is not None else ("error", "model_not_found")


def error(code: str) -> Outcome:
    return ("error", code)


@dataclass
class RecordingBackend(FakeBackend):
    """Records each request exactly as it arrived (no decompression) and answers 200."""

    raw: list[RawRequest] = field(default_factory=list)
    decompress_requests: bool = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._check_awake(f"{request.method} {request.raw_path} arrived")
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.raw.append(RawRequest(request.method, request.raw_path, headers, body))
        return web.json_response({"backend": self.model}, headers={"X-Backend": self.model})


@dataclass(frozen=True)
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


# -- generated names, JSON and targets, and their oracles ------------------------------


# Names a client might send: every id and alias, near misses, and anything.
known_names = st.sampled_from(sorted(NAMES))
names = st.one_of(
    known_names,
    known_names,
    st.sampled_from(["Alpha", " alpha", "alpha ", "alpha\x00", "beta/", "gamma-upstream:7b"]),
    st.text(max_size=12),
)
BOM = b"\xef\xbb\xbf"


class Obj(tuple[tuple[str, Any], ...]):
    """A JSON object as written: ordered pairs, duplicates allowed."""


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_keys = st.sampled_from(["model", "messages", "stream", "Model", "model ", 'p"model', ""])
json_keys |= st.sampled_from(["MODEL", "mOdEl", "modeL"])  # the key to a Go backend
json_keys |= st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.lists(st.tuples(json_keys, inner), max_size=3).map(Obj)
    ),
    max_leaves=8,
)


@st.composite
def json_styles(draw: st.DrawFn) -> Callable[[Any], str]:
    ascii_only = draw(st.booleans())
    item, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", " : ")]))
    escape_model = draw(st.booleans())

    def dump(value: Any) -> str:
        if isinstance(value, Obj):
            members = [f"{key_text(k)}{colon}{dump(v)}" for k, v in value]
            return "{" + item.join(members) + "}"
        if isinstance(value, list):
            return "[" + item.join(dump(v) for v in value) + "]"
        return json.dumps(value, ensure_ascii=ascii_only)

    def key_text(key: str) -> str:
        if key.casefold() == "model" and escape_model:
            # The same key written with an escape: "mod\u0065l", "MOD\u0045L".
            return f'"{key[:3]}\\u{ord(key[3]):04x}{key[4:]}"'
        return json.dumps(key, ensure_ascii=ascii_only)

    return dump


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True with probability 1/n; False for the simplest choice, which hypothesis draws
    more often than 1/n (and shrinks towards)."""
    return bool(draw(st.sampled_from(range(n))) == n - 1)


def has_dot_segment(target: str) -> bool:
    path = target.partition("?")[0]
    decoded = urllib.parse.unquote(path, errors="surrogateescape")
    return any(segment in (".", "..") for form in (path, decoded) for segment in form.split("/"))


def json_oracle(data: bytes) -> frozenset[Outcome]:
    """What docs/design.md §4/§5 say about a body small enough to be parsed whole."""
    if not data.strip(b" \t\r\n"):
        return frozenset({error("model_required")})
    text = data.removeprefix(BOM)
    try:
        document = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return frozenset({error("invalid_json")})
    if not isinstance(document, dict):
        return frozenset({error("model_required")})
    pairs = json.loads(text.decode("utf-8"), object_pairs_hook=lambda pairs: pairs)
    keys = [key for key, _ in pairs]
    if keys.count("model") > 1:
        return frozenset({error("invalid_json")})  # docs/design.md §5: whatever the body's size
    if any(key != "model" and key.casefold() == "model" for key in keys):
        # "MODEL" is "model" to Go's encoding/json (Ollama): beside "model" the body is
        # ambiguous, alone it names no model (docs/decisions.md, "Issue 15 follow-up").
        return frozenset({error("invalid_json" if "model" in keys else "model_required")})
    name = document.get("model")
    if not isinstance(name, str):
        return frozenset({error("model_required")})
    return frozenset({named(name)})


# The first eight segments cannot be climbed out of by the (at most six) generated ones,
# so no target reaches a route of the daemon's own (/v1/models, /admin/..., /health).
PREFIX = "/p1/p2/p3/p4/p5/p6/p7/p8"
SEGMENTS = ["..", ".", "", "%2e%2e", "%2E%2E%2F", "v1", "chat", "a%20b", "%2F", "%00", "%ff"]
SEGMENTS += ["%C3%A9", "~user", ";v=1", "@", ":", "%zz", "%", "a+b", "!$&'()*,="]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"
# Now and then a target outside the proxied paths (PROXY_PATHS): 404 path_not_proxied.
OUTSIDE = "/q1/q2/q3/q4/q5/p6/p7/p8"
targets = st.builds(
    lambda prefix, segments, query: prefix + "/" + "/".join(segments) + query,
    st.sampled_from([PREFIX] * 9 + [OUTSIDE]),
    st.lists(st.sampled_from(SEGMENTS) | st.text(PATH_CHARS, max_size=8), max_size=6),
    st.sampled_from(["", "?", "?q=1", "?a=%26&b=%3D&c", "?x=/../y", "?%zz"])
    | st.text(PATH_CHARS + "/?", max_size=12).map(lambda q: "?" + q),
)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


async def start_lab(lab: Lab) -> dict[str, RecordingBackend]:
    backends = {}
    for model in PER_MODEL:
        backend = RecordingBackend(model, lab.state_dir)
        await backend.start()
        lab.backends[model] = backends[model] = backend
    return backends
