"""Property-based fuzzing of the request path against the real daemon on a real socket.

Inputs: bodies (binary, empty, multi-megabyte, invalid UTF-8, BOM, deep nesting, nested and
duplicate "model" keys, non-string models), content types (JSON, text, none, multipart with
random boundaries and parts, multipart without a boundary), methods, raw request targets
(percent-escapes, `..`, empty segments), end-to-end and hop-by-hop headers, chunked
uploads. Property (docs/design.md §4, §5): every answer is either a 4xx OpenAI-shaped error whose
code is one the input allows and whose status is the table's, or a correct proxy — the
right backend received exactly the body bytes (with only the "model" value changed for an
`upstream_model`), the same method, raw target and end-to-end headers, and none of the
hop-by-hop ones. Never a 5xx, never a hang (each request is bounded), and afterwards no
request is in flight or queued and no backend saw a request while asleep.

The pattern (hypothesis cannot drive an `async def` test and keep one daemon across
examples): the async test starts the daemon and backends on pytest's event loop, then runs
a synchronous `@given` function in a worker thread with `asyncio.to_thread`; each example
is submitted back to the still-running loop with `asyncio.run_coroutine_threadsafe` and
its result awaited from the thread. The daemon keeps serving (timers, health checks)
between examples, assertions raised on the loop reach hypothesis through the future, and
nothing but that hand-off crosses threads. Runs are reproducible (`derandomize=True`, no
example database) and bounded (`max_examples`).

Two smaller properties ride along: bodies of the admin routes, and raw HTTP/1.1 framing
written to a socket (Content-Length variants, chunked bodies with extensions and trailers,
malformed header lines, no Host): every answer is below 500, and a well-formed request's
answer is exactly the oracle's.

Inputs the fuzzers once broke the property with have tests of their own at the end.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import string
import urllib.parse
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from aiollmux.request_body import VALIDATE_LIMIT
from tests.support import Daemon, FakeBackend, Lab, raw_exchange, running_daemon, wait_for

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


# -- generated requests --------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str | None
    allowed: frozenset[Outcome]
    # Exact bytes a model's backend must receive when they are not the body itself (an
    # upstream_model rewrite of a multipart body); None: the JSON rewrite check applies.
    forwarded: dict[str, bytes] | None = None
    # Large JSON bodies may be routed by the first of duplicate "model" keys (a walk stops
    # there); small ones are parsed whole and use the last, as json.loads does.
    rewrite_any_duplicate: bool = False

    def __repr__(self) -> str:  # falsifying examples can be megabytes
        shown = self.data if len(self.data) <= 300 else self.data[:300] + b"..."
        return (
            f"Body({shown!r} [{len(self.data)} bytes], {self.content_type!r}, "
            f"{sorted(self.allowed)})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints dataclasses field by field otherwise


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: Body
    chunked: bool


# Names a client might send: every id and alias, near misses, and anything.
known_names = st.sampled_from(sorted(NAMES))
names = st.one_of(
    known_names,
    known_names,
    st.sampled_from(["Alpha", " alpha", "alpha ", "alpha\x00", "beta/", "gamma-upstream:7b"]),
    st.text(max_size=12),
)
JSON_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
    "garbage;;;=",
    "application/json; boundary=xyz",
]
NO_BOUNDARY = [
    "multipart/form-data",
    "Multipart/Form-Data; charset=utf-8",
    "multipart/form-data; boundary=",
]
BOM = b"\xef\xbb\xbf"
SPACE = st.sampled_from(["", " ", "\n", "\r\n\t "])


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
        if key == "model" and escape_model:
            return '"mod\\u0065l"'  # the same key, written with an escape
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
    if [key for key, _ in pairs].count("model") > 1:
        return frozenset({error("invalid_json")})  # docs/design.md §5: whatever the body's size
    name = document.get("model")
    if not isinstance(name, str):
        return frozenset({error("model_required")})
    return frozenset({named(name)})


@st.composite
def json_bodies(draw: st.DrawFn) -> Body:
    """A JSON document with any number of top-level "model" keys (any values) among
    other members, nested "model" keys, a BOM and whitespace, in any content type."""
    other_keys = json_keys.filter(lambda key: key != "model")
    members = list(draw(st.lists(st.tuples(other_keys, json_values), max_size=4)))
    count = draw(st.sampled_from([1, 1, 1, 2, 0, 3]))
    for index in range(count):
        # The last "model" decides; make it a name (a known one, mostly) most of the time.
        odds = 6 if index == count - 1 else 2
        value = draw(json_values) if one_in(draw, odds) else draw(names)
        members.insert(draw(st.integers(0, len(members))), ("model", value))
    document: Any = draw(json_values) if one_in(draw, 8) else Obj(members)
    text = draw(SPACE) + draw(json_styles())(document) + draw(SPACE)
    data = (BOM if one_in(draw, 6) else b"") + text.encode()
    content_type = draw(st.sampled_from(JSON_TYPES * 3 + NO_BOUNDARY))
    return _typed(data, content_type, json_oracle(data))


def _typed(data: bytes, content_type: str | None, allowed: frozenset[Outcome]) -> Body:
    if content_type is not None and content_type.lower().startswith("multipart/form-data"):
        allowed = frozenset({error("model_required")})  # no boundary: no form field
    return Body(data, content_type, allowed)


# Invalid UTF-8 (a lone lead byte, an encoded surrogate), structure, a lone surrogate escape.
NOISE = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"\\", b"{", b"}", b",", b"NaN"]
NOISE += [b"\\ud800", b'"model": 1,', BOM]


@st.composite
def broken_bodies(draw: st.DrawFn) -> Body:
    """Random bytes, and valid documents with bytes cut, inserted or replaced."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=300))
    else:
        name = draw(names)
        data = json.dumps({"model": name, "messages": [{"content": "hi"}]}).encode()
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            noise = draw(st.sampled_from(NOISE))
            cut = draw(st.integers(0, 2))
            data = data[:at] + noise + data[at + cut :]
    return _typed(data, draw(st.sampled_from(JSON_TYPES)), json_oracle(data))


@st.composite
def deep_bodies(draw: st.DrawFn) -> Body:
    """Deeply nested arrays or objects beside "model": past the recursion limit they are
    invalid for a small body (json.loads refuses them), routed by a walk for a large one."""
    depth = draw(st.sampled_from([10, 900, 5000, 60_000, 900_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    name = draw(st.sampled_from(["alpha", "beta", "b"]))
    model = f'"model": {json.dumps(name)}'
    first = draw(st.booleans())
    text = "{" + (f'{model}, "x": {nested}' if first else f'"x": {nested}, {model}') + "}"
    data = text.encode()
    if len(data) > LIMIT:
        allowed = frozenset({error("body_too_large")})
    elif len(data) > VALIDATE_LIMIT:
        allowed = frozenset({named(name)})  # valid JSON: the walk must find the model
    else:
        allowed = json_oracle(data)
    return Body(data, "application/json", allowed)


FILLER_UNITS = [
    "a",
    "é",
    '\\"',
    "\\\\",
    "\\u00e9",
    " model ",
    '\\"model\\": \\"beta\\"',
    "{[",
    "]}",
]


@st.composite
def large_bodies(draw: st.DrawFn) -> Body:
    """Prompts from 256 KiB to past the 2 MiB limit in the layouts SDKs write, with the
    "model" first, last or in the middle, duplicated, or the body cut short."""
    unit = "".join(draw(st.lists(st.sampled_from(FILLER_UNITS), min_size=1, max_size=4)))
    size = draw(st.sampled_from([VALIDATE_LIMIT + 1, 700_000, 1_500_000, LIMIT - 300, LIMIT + 1]))
    content = unit * (size // len(unit.encode()) + 1)
    nested = draw(st.booleans())  # many small messages, each with a nested "model"
    if nested:
        message = json.dumps({"role": "user", "content": unit, "model": "beta"})
        prompt = "[" + ",".join([message] * (size // len(message) + 1)) + "]"
    else:
        prompt = json.dumps([{"role": "user", "content": "x"}]).replace('"x"', f'"{content}"')
    first, second = draw(names), draw(names)
    layout = draw(st.sampled_from(["first", "sdk", "middle", "duplicate"]))
    model = f'"model": {json.dumps(first)}'
    members = {
        "first": [model, f'"messages": {prompt}', '"stream": false'],
        "sdk": [f'"messages": {prompt}', model, '"stream": false'],
        "middle": [f'"messages": {prompt}', model, f'"tools": {prompt}'],
        "duplicate": [model, f'"messages": {prompt}', f'"model": {json.dumps(second)}'],
    }[layout]
    data = ("{" + ", ".join(members) + "}").encode()
    allowed = {named(first)} if layout != "duplicate" else {error("invalid_json")}
    if one_in(draw, 5):  # cut short: the walk may route it or refuse it
        data = data[: -draw(st.integers(1, 40))]
        allowed |= {error("invalid_json"), error("model_required")}
        if layout == "duplicate" and data.count(b'"model"') < 2:
            # The cut took the second key: nothing is duplicated any more, and the walk
            # stops at the first "model" (the rest is the backend's to validate).
            allowed |= {named(first)}
    if len(data) > LIMIT:
        allowed = {error("body_too_large")}
    content_type = draw(st.sampled_from(["application/json", None]))
    return Body(data, content_type, frozenset(allowed), rewrite_any_duplicate=True)


BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "
MODEL_PART_HEADERS = [
    b'Content-Disposition: form-data; name="model"',
    b"content-disposition: form-data; name=model",
    b'CONTENT-DISPOSITION: form-data;name="model"',
    b'Content-Disposition: form-data; name="model"; filename="m.txt"\r\nContent-Type: text/plain',
]
OTHER_PART_HEADERS = [
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav',
    b'Content-Disposition: form-data; name="model2"',
    b'Content-Disposition: form-data; name="response_format"',
    b'Content-Disposition: form-data; filename="model"; name="x"',
    b'X-Note: name="model"\r\nContent-Disposition: form-data; name="prompt"',
]


@st.composite
def multipart_bodies(draw: st.DrawFn) -> Body:
    """multipart/form-data with random boundaries and parts, the model field anywhere (or
    missing, empty, repeated, or in a part the body cuts short)."""
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=70).map(str.rstrip))
    boundary = boundary or "b"
    delimiter = b"\r\n--" + boundary.encode()
    parts: list[tuple[bool, bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 4))):
        is_model = draw(st.booleans())
        headers = draw(st.sampled_from(MODEL_PART_HEADERS if is_model else OTHER_PART_HEADERS))
        content = draw(names).encode() if is_model else draw(st.binary(max_size=200))
        if delimiter in b"\r\n" + content + b"\r\n":
            content = b"x"
        parts.append((is_model, headers, content))
    closed = not one_in(draw, 5)
    preamble = draw(st.sampled_from([b"", b"preamble text\r\n", b"\r\n"]))
    data = bytearray(preamble + delimiter[2:])
    spans: list[tuple[bool, int, int]] = []
    for index, (is_model, headers, content) in enumerate(parts):
        data += b"\r\n" + headers + b"\r\n\r\n"
        spans.append((is_model, len(data), len(data) + len(content)))
        data += content
        if closed or index < len(parts) - 1:
            data += delimiter
    if closed:
        data += b"--\r\n"
    counted = spans if closed else spans[:-1]  # an unterminated last part is no field
    model_spans = [(start, end) for is_model, start, end in counted if is_model]
    forwarded: dict[str, bytes] = {}
    if model_spans:
        start, end = model_spans[0]
        name = bytes(data[start:end]).decode("utf-8", "replace").strip()
        outcome = named(name)
        forwarded["gamma"] = bytes(data[:start]) + UPSTREAM.encode() + bytes(data[end:])
    else:
        outcome = error("model_required")
    quoted = draw(st.booleans()) or any(c in boundary for c in "'()+,/:=? ")
    parameter = '"' + boundary + '"' if quoted else boundary
    mime = draw(st.sampled_from(["multipart/form-data", "Multipart/Form-Data"]))
    extra = draw(st.sampled_from(["", "; charset=utf-8"]))
    content_type = f"{mime}{extra}; boundary={parameter}"
    return Body(bytes(data), content_type, frozenset({outcome}), forwarded=forwarded)


bodies = st.one_of(
    json_bodies(),
    json_bodies(),
    broken_bodies(),
    multipart_bodies(),
    deep_bodies(),
    large_bodies(),
)

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
methods = st.sampled_from(["POST"] * 6 + ["PUT", "PATCH", "GET", "DELETE", "OPTIONS", "HEAD"])
methods |= st.sampled_from(["PROPFIND", "TRACE", "PURGE"])

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VALUE_CHARS = "".join(c for c in string.printable if c not in "\r\n\t\x0b\x0c")
header_values = st.text(VALUE_CHARS, max_size=40).map(str.strip)
end_to_end = st.tuples(
    st.sampled_from(["X-Fuzz", "Accept", "Accept-Language", "Cookie", "Authorization"])
    | st.sampled_from(["OpenAI-Organization", "X-Stainless-Lang", "X-Drop"])
    | st.text(TOKEN, min_size=1, max_size=16).map(lambda name: "X-" + name),
    header_values,
)
HOP_BY_HOP = [
    ("Connection", "close"),
    ("Connection", "keep-alive"),
    ("Connection", "keep-alive, X-Drop"),
    ("Connection", "Upgrade"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Upgrade", "websocket"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("Proxy-Connection", "keep-alive"),
    ("Expect", "100-continue"),
]
DROPPED = {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"}
DROPPED |= {"proxy-connection", "expect", "transfer-encoding", "host", "content-length"}
# Not generated: Host, Content-Length and Transfer-Encoding (aiohttp's client writes them
# itself), Content-Type (`Body.content_type`) and Content-Encoding (tests of their own below).
headers_lists = st.lists(end_to_end | st.sampled_from(HOP_BY_HOP), max_size=6).map(tuple)

requests = st.builds(
    Request,
    method=methods,
    target=targets,
    headers=headers_lists,
    body=bodies,
    chunked=st.sampled_from([True, False, False, False]),
)


# -- checking one request ------------------------------------------------------------------


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    daemon: Daemon
    client: aiohttp.ClientSession
    backends: dict[str, RecordingBackend]
    seen: Counter[Outcome] = field(default_factory=Counter)

    def run(self, request: Request) -> None:
        """Called on hypothesis's thread: run the check on the daemon's loop."""
        future = asyncio.run_coroutine_threadsafe(self.check(request), self.loop)
        future.result(timeout=REQUEST_TIMEOUT * 2)  # check() bounds itself; a backstop

    async def check(self, request: Request) -> None:
        before = {model: len(b.raw) for model, b in self.backends.items()}
        async with asyncio.timeout(REQUEST_TIMEOUT):
            outcome = await self.send(request, before)
        self.seen[outcome] += 1
        for model, backend in self.backends.items():
            expected = before[model] + (outcome == ("proxy", model))
            assert len(backend.raw) == expected, f"{model} got {len(backend.raw) - before[model]}"
        switcher = self.daemon.mux.switchers["default"]
        await wait_for(lambda: all(switcher.in_flight(m) == 0 for m in PER_MODEL))
        assert all(switcher.queued(m) == 0 for m in PER_MODEL)

    async def send(self, request: Request, before: dict[str, int]) -> Outcome:
        headers: CIMultiDict[str] = CIMultiDict(request.headers)
        if request.body.content_type is not None:
            headers["Content-Type"] = request.body.content_type
        data: bytes | io.BytesIO = request.body.data
        if len(request.body.data) > 1024 * 1024:  # aiohttp refuses larger raw bytes
            data = io.BytesIO(request.body.data)
        url = URL(self.daemon.url + request.target, encoded=True)
        async with self.client.request(
            request.method, url, headers=headers, data=data, chunked=request.chunked or None
        ) as response:
            body = await response.read()
            return self.judge(request, response, body, before)

    def judge(
        self,
        request: Request,
        response: aiohttp.ClientResponse,
        body: bytes,
        before: dict[str, int],
    ) -> Outcome:
        allowed = request.body.allowed
        if has_dot_segment(request.target):  # refused before anything else (docs/design.md §5)
            allowed = frozenset({error("invalid_request")})
        elif request.target.startswith(OUTSIDE):
            allowed = frozenset({error("path_not_proxied")})
        status = response.status
        assert status < 500, f"{status}: {body[:500]!r}"
        if status == 200:
            model = response.headers.get("X-Backend", "")
            assert ("proxy", model) in allowed, f"proxied to {model!r}; allowed {allowed}"
            if request.method != "HEAD":
                assert json.loads(body) == {"backend": model}
            self.check_forwarded(request, model, self.backends[model].raw[before[model]])
            return ("proxy", model)
        assert 400 <= status < 500, f"unexpected status {status}: {body[:300]!r}"
        if request.method == "HEAD":  # no body to read the code from
            codes = {code for code, s in ERROR_STATUS.items() if s == status}
            matching = [o for o in allowed if o[0] == "error" and o[1] in codes]
            assert matching, f"{status} for {allowed}"
            return matching[0]
        assert response.content_type == "application/json", body[:300]
        document = json.loads(body)
        assert set(document) == {"error"}
        shape = document["error"]
        assert {"message", "type", "code"} <= set(shape)
        assert isinstance(shape["message"], str)
        assert shape["message"]
        assert shape["type"] == "invalid_request_error"
        assert ERROR_STATUS.get(shape["code"]) == status, (status, shape)
        assert error(shape["code"]) in allowed, f"{shape} for {allowed}"
        return error(shape["code"])

    def check_forwarded(self, request: Request, model: str, seen: RawRequest) -> None:
        assert seen.method == request.method
        # What the client wrote: yarl drops a bare trailing "?" (an empty query) on sending.
        assert seen.target == URL(request.target, encoded=True).raw_path_qs
        sent = request.body.data
        if model != "gamma":
            assert seen.body == sent
        elif request.body.forwarded is not None:
            assert seen.body == request.body.forwarded["gamma"]
        else:
            assert_model_rewritten(
                sent, seen.body, any_duplicate=request.body.rewrite_any_duplicate
            )
        received = CIMultiDict(seen.headers)
        dropped = set(DROPPED)
        for name, value in request.headers:
            if name.lower() == "connection":
                dropped |= {token.strip().lower() for token in value.split(",")}
        for name, value in request.headers:
            if name.lower() in dropped:
                assert name not in received, f"hop-by-hop {name} was forwarded"
            else:
                assert value in received.getall(name, []), f"{name}: {value!r} was lost"
        if request.body.content_type is not None:
            assert received.getall("Content-Type", []) == [request.body.content_type]
        else:
            assert "Content-Type" not in received


def _pairs(data: bytes) -> Any:
    return json.loads(
        data.removeprefix(BOM).decode("utf-8"),
        object_pairs_hook=lambda pairs: ("object", pairs),
        parse_float=str,
        parse_int=str,
        parse_constant=str,
    )


def assert_model_rewritten(sent: bytes, received: bytes, *, any_duplicate: bool) -> None:
    """`received` is `sent` with one top-level "model" value replaced by UPSTREAM (the last
    one unless `any_duplicate`), and every other byte unchanged."""
    before, after = _pairs(sent)[1], _pairs(received)[1]
    assert len(before) == len(after)
    changed = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    assert len(changed) == 1, f"{len(changed)} members changed"
    index = changed[0]
    assert after[index] == ("model", UPSTREAM)
    assert before[index][0] == "model"
    assert NAMES.get(before[index][1]) == "gamma"
    if not any_duplicate:
        assert index == max(i for i, (key, _) in enumerate(before) if key == "model")
    prefix = 0
    while prefix < min(len(sent), len(received)) and sent[prefix] == received[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < min(len(sent), len(received)) - prefix
        and sent[-1 - suffix] == received[-1 - suffix]
    ):
        suffix += 1
    new_token = json.dumps(UPSTREAM).encode()
    assert received[prefix : len(received) - suffix] in new_token
    assert len(sent) - prefix - suffix <= 6 * len("gamma") + 2  # only the old value changed


def plain(data: bytes, content_type: str | None = "application/json") -> Request:
    """A POST of `data` to the chat path (the explicit examples)."""
    body = _typed(data, content_type, json_oracle(data))
    return Request("POST", "/v1/chat/completions", (), body, False)


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


async def test_any_request_is_proxied_exactly_or_refused_cleanly(lab: Lab) -> None:
    backends = await start_lab(lab)
    config = lab.config(top=f"{PROXY_PATHS}max_request_body_mb = {LIMIT_MB}", per_model=PER_MODEL)
    async with (
        running_daemon(config) as daemon,
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as client,
    ):
        harness = Harness(asyncio.get_running_loop(), daemon, client, backends)

        @FUZZ
        @given(request=requests)
        @example(request=plain(b""))
        @example(request=plain(BOM + b'{"model": "alpha"}'))
        @example(request=plain(b'{"model": "alpha", "model": "g"}'))
        @example(request=plain(b'{"messages": [{"model": "beta"}], "model": "alpha"}'))
        @example(request=plain(b'{"x": {"model": "alpha"}}'))
        @example(request=plain(b'{"model": ["alpha"]}'))
        @example(request=plain(b'{"model": "alpha", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"))
        @example(request=plain(b'{"model": "\xff"}'))
        @example(request=plain(b'{"model": "alpha"}', "multipart/form-data"))
        def run(request: Request) -> None:
            harness.run(request)

        await asyncio.to_thread(run)
        async with client.get(f"{daemon.url}/health") as response:
            assert response.status == 200
    assert lab.violations() == []
    # The generators must reach every kind of answer, or the property is hollow.
    for outcome in [("proxy", m) for m in PER_MODEL] + [error(c) for c in ERROR_STATUS]:
        assert harness.seen[outcome] > 0, f"never saw {outcome}: {harness.seen}"


# -- the admin routes ----------------------------------------------------------------------


@dataclass(frozen=True)
class AdminRequest:
    path: str  # /admin/switch or /admin/sleep
    data: bytes
    content_type: str | None


def admin_oracle(request: AdminRequest) -> str:
    """ "ok" or the error code docs/design.md §5 gives (the body is JSON in UTF-8, -16 or -32,
    as RFC 8259 §8.1 allows and `json.loads` detects; a UTF-8 BOM is skipped)."""
    document: Any = {}
    if request.data:
        try:
            document = json.loads(request.data)
        except (ValueError, RecursionError):
            return "invalid_json"
        if not isinstance(document, dict):
            return "invalid_json"
    if request.path == "/admin/switch":
        name = document.get("model")
        if not isinstance(name, str) or not name:
            return "model_required"
        return "ok" if name in NAMES else "model_not_found"
    group, name = document.get("group"), document.get("model")
    if name is not None:  # docs/design.md §8: one model, or one group, not both
        if not isinstance(name, str) or not name or group is not None:
            return "model_required"
        return "ok" if name in NAMES else "model_not_found"
    return "ok" if group is None or group == "default" else "invalid_request"


@st.composite
def admin_requests(draw: st.DrawFn) -> AdminRequest:
    path = draw(st.sampled_from(["/admin/switch", "/admin/sleep"]))
    kind = draw(st.sampled_from(["object", "object", "object", "value", "bytes", "empty"]))
    data = b""
    if kind == "object":
        members = list(draw(st.lists(st.tuples(json_keys, json_values), max_size=3)))
        if not one_in(draw, 4):
            members.append(("model", draw(names | json_scalars)))
        if not one_in(draw, 3):
            group = st.sampled_from(["default", "gpu9", ""]) | json_values
            members.append(("group", draw(group)))
        data = draw(json_styles())(Obj(members)).encode()
        if one_in(draw, 8):
            data = BOM + data
    elif kind == "value":
        data = json.dumps(draw(json_scalars | st.lists(json_scalars, max_size=2))).encode()
    elif kind == "bytes":
        data = draw(st.binary(min_size=1, max_size=64))
    content_type = draw(st.sampled_from([None, "application/json", "text/plain"]))
    content_type = draw(st.sampled_from([content_type, "application/json; charset=utf-8"]))
    return AdminRequest(path, data, content_type)


async def test_admin_routes_refuse_bad_bodies_cleanly(lab: Lab) -> None:
    backends = await start_lab(lab)
    config = lab.config(per_model=PER_MODEL)
    seen: Counter[str] = Counter()
    async with (
        running_daemon(config) as daemon,
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as client,
    ):
        loop = asyncio.get_running_loop()
        switcher = daemon.mux.switchers["default"]

        async def check(request: AdminRequest) -> None:
            headers = {} if request.content_type is None else {"Content-Type": request.content_type}
            expected = admin_oracle(request)
            async with (
                asyncio.timeout(REQUEST_TIMEOUT),
                client.post(
                    daemon.url + request.path, data=request.data, headers=headers
                ) as answer,
            ):
                body = await answer.json()
            if answer.status == 200:
                assert expected == "ok", f"200 {body}; expected {expected}"
                assert body["status"] == "ok"
                if request.path == "/admin/switch":
                    assert switcher.active == body["active_model"]
                elif "model" in body:
                    assert body["model"] not in switcher.awake
                else:
                    assert switcher.active is None
            else:
                assert answer.status < 500, body
                assert set(body) == {"error"}
                assert body["error"]["type"] == "invalid_request_error"
                assert body["error"]["code"] == expected, body
                assert ERROR_STATUS[expected] == answer.status
            seen[expected] += 1
            assert all(switcher.in_flight(m) == 0 and switcher.queued(m) == 0 for m in PER_MODEL)

        @FUZZ
        @given(request=admin_requests())
        @example(request=AdminRequest("/admin/switch", b"", None))
        @example(request=AdminRequest("/admin/sleep", b"", None))
        @example(request=AdminRequest("/admin/switch", b'{"model": "g"}', None))
        @example(request=AdminRequest("/admin/sleep", b'{"group": 1}', None))
        def run(request: AdminRequest) -> None:
            asyncio.run_coroutine_threadsafe(check(request), loop).result(REQUEST_TIMEOUT * 2)

        await asyncio.to_thread(run)
    assert lab.violations() == []
    assert all(backend.raw == [] for backend in backends.values())  # nothing was proxied
    for outcome in ("ok", "invalid_json", "model_required", "model_not_found"):
        assert seen[outcome] > 0, f"never saw {outcome}: {seen}"


# -- raw HTTP/1.1 framing ------------------------------------------------------------------


@dataclass(frozen=True)
class RawCase:
    data: bytes
    body: bytes  # the body a correct parser delivers to the daemon
    clean: bool  # a well-formed request: its answer is the oracle's, exactly

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"RawCase({self.data[:400]!r}, clean={self.clean})")


RAW_BODIES = [b'{"model": "alpha"}', b'{"model": "b", "stream": false}', b'{"model": "zzz"}']
RAW_BODIES += [b'{"model": 1}', b'{"mod', b"[]"]
GOOD_LINES = [b"X-A: b", b"X-Empty:", b"X-Spaces:   a  ", b"Accept: */*", b"X-Latin: caf\xc3\xa9"]
BAD_LINES = [b"nocolon", b" X-Folded: x", b": empty", b"X\x00: y", b"X-Long: " + b"a" * 9000]
BAD_LINES += [b"X-A : spaced name", b"X-A: b\r\n continued"]


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    pieces, position = [], 0
    while position < len(body):
        size = draw(st.integers(1, max(1, len(body) - position)))
        extension = draw(st.sampled_from([b"", b";x=1", b';name="v"']))
        chunk = body[position : position + size]
        pieces.append(b"%x%s\r\n%s\r\n" % (len(chunk), extension, chunk))
        position += size
    trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
    return b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"


@st.composite
def raw_cases(draw: st.DrawFn) -> RawCase:
    method = draw(st.sampled_from([b"POST", b"PUT", b"GET"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    body = draw(st.sampled_from(RAW_BODIES))
    clean = True
    lines = []
    if version == b"HTTP/1.1" and one_in(draw, 8):
        clean = False  # HTTP/1.1 requires Host
    else:
        lines.append(b"Host: llmux.test")
    for _ in range(draw(st.integers(0, 3))):
        if one_in(draw, 3):
            lines.append(draw(st.sampled_from(BAD_LINES)))
            clean = False
        else:
            lines.append(draw(st.sampled_from(GOOD_LINES)))
    framing = draw(st.sampled_from(["length", "chunked", "none", "bad-length", "short", "bad-te"]))
    payload = body
    if framing == "length":
        n = len(body)
        lines.append(
            b"Content-Length: " + draw(st.sampled_from([b"%d" % n, b" %d " % n, b"0%d" % n]))
        )
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked_body(body))
        clean = clean and version == b"HTTP/1.1"
    elif framing == "none":
        body = payload = b""
    elif framing == "bad-length":
        value = draw(st.sampled_from([b"-1", b"1e3", b"0x11", b"+17", b"17, 17", b"", b"abc"]))
        lines.append(b"Content-Length: " + value)
        clean = False
    elif framing == "short":
        lines.append(b"Content-Length: %d" % draw(st.integers(0, len(body) - 1)))
        clean = False
    else:
        value = draw(st.sampled_from([b"gzip", b"identity", b"chunked, gzip", b"gzip, deflate"]))
        lines.append(b"Transfer-Encoding: " + value)
        clean = False
    target = draw(targets).encode()
    head = b"%s %s %s\r\n" % (method, target, version) + b"".join(line + b"\r\n" for line in lines)
    return RawCase(head + b"\r\n" + payload, body, clean)


async def test_raw_framing_is_answered_cleanly(lab: Lab) -> None:
    backends = await start_lab(lab)
    config = lab.config(top=PROXY_PATHS, per_model=PER_MODEL)
    seen: Counter[str] = Counter()
    async with running_daemon(config) as daemon:
        loop = asyncio.get_running_loop()
        switcher = daemon.mux.switchers["default"]

        async def check(case: RawCase) -> None:
            before = {model: len(b.raw) for model, b in backends.items()}
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await raw_exchange(daemon.url, case.data)
            assert answer is not None or not case.clean, "a well-formed request got no answer"
            if answer is not None:
                status, headers, body = answer.status, answer.headers, answer.body
                assert status < 500, body[:300]
                if status == 200:
                    model = headers["X-Backend"]
                    assert backends[model].raw[before[model]].body == case.body
                elif headers.get("Content-Type", "").startswith("application/json"):
                    code = json.loads(body)["error"]["code"]
                    assert ERROR_STATUS[code] == status
                if case.clean:
                    outcome = ("proxy", headers.get("X-Backend", "")) if status == 200 else None
                    if outcome is None:
                        outcome = error(json.loads(body)["error"]["code"])
                    target = case.data.split(b" ", 2)[1].decode("latin-1")
                    if has_dot_segment(target):
                        assert outcome == error("invalid_request"), (outcome, target)
                    elif target.startswith(OUTSIDE):
                        assert outcome == error("path_not_proxied"), (outcome, target)
                    else:
                        assert outcome in json_oracle(case.body), (outcome, case.body)
                seen["clean" if case.clean else f"unclean {status}"] += 1
            await wait_for(lambda: all(switcher.in_flight(m) == 0 for m in PER_MODEL))
            assert all(switcher.queued(m) == 0 for m in PER_MODEL)

        @settings(FUZZ, max_examples=120)
        @given(case=raw_cases())
        def run(case: RawCase) -> None:
            asyncio.run_coroutine_threadsafe(check(case), loop).result(REQUEST_TIMEOUT * 2)

        await asyncio.to_thread(run)
    assert lab.violations() == []
    assert seen["clean"] > 0
    assert seen["unclean 400"] > 0


# -- inputs that once broke the properties (found by the fuzzers) --------------------------


@pytest.fixture
async def daemon(lab: Lab) -> AsyncIterator[Daemon]:
    await start_lab(lab)
    async with running_daemon(lab.config(top=PROXY_PATHS, per_model=PER_MODEL)) as daemon:
        yield daemon
    assert lab.violations() == []


async def assert_openai_4xx(response: aiohttp.ClientResponse) -> None:
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/json", await response.text()
    assert ERROR_STATUS[(await response.json())["error"]["code"]] == response.status


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


PLAIN = b'{"model": "alpha"}'
ENCODED = [
    ("gzip", gzip.compress(PLAIN, mtime=0)),
    ("x-gzip", gzip.compress(PLAIN, mtime=0)),
    ("deflate", zlib.compress(PLAIN)),
    ("deflate", raw_deflate(PLAIN)),
    ("identity, gzip", gzip.compress(PLAIN, mtime=0)),
    ("gzip, deflate", zlib.compress(gzip.compress(PLAIN, mtime=0))),
]


@pytest.mark.parametrize(
    ("encoding", "data"),
    ENCODED,
    ids=["gzip", "x-gzip", "deflate", "raw-deflate", "identity-gzip", "gzip-deflate"],
)
async def test_encoded_request_body_is_routed_by_its_decoding_and_forwarded_as_sent(
    lab: Lab, daemon: Daemon, encoding: str, data: bytes
) -> None:
    # aiohttp's server would decompress it by default and forward the result under the
    # original Content-Encoding; the original bytes go through (docs/design.md §4).
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Backend"] == "alpha"
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].body == data
    assert dict(backend.raw[-1].headers)["Content-Encoding"] == encoding


async def test_encoded_body_of_an_upstream_model_is_rewritten_and_sent_decoded(
    lab: Lab, daemon: Daemon
) -> None:
    data = gzip.compress(b'{"model": "g", "stream": false}', mtime=0)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
    backend = lab.backends["gamma"]
    assert isinstance(backend, RecordingBackend)
    assert json.loads(backend.raw[-1].body) == {"model": UPSTREAM, "stream": False}
    assert "content-encoding" not in {k.lower() for k, _ in backend.raw[-1].headers}


BAD_ENCODINGS = [
    ("gzip", PLAIN, 400),  # not gzip data
    ("deflate", b"\x00not deflate", 400),
    ("gzip", gzip.compress(PLAIN, mtime=0) + b"trailing", 400),
    ("br", PLAIN, 400),  # not decodable here: cannot be routed
]


@pytest.mark.parametrize(
    ("encoding", "data", "status"),
    BAD_ENCODINGS,
    ids=["not-gzip", "not-deflate", "trailing-garbage", "brotli"],
)
async def test_undecodable_request_body_is_refused(
    lab: Lab, daemon: Daemon, encoding: str, data: bytes, status: int
) -> None:
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == status
        await assert_openai_4xx(response)
    assert all(not b.raw for b in lab.backends.values() if isinstance(b, RecordingBackend))


async def test_repeated_content_encoding_headers_are_one_list(lab: Lab, daemon: Daemon) -> None:
    # RFC 9110 §5.3: repeated fields are one comma-separated list, in order.
    data = gzip.compress(PLAIN, mtime=0)
    headers = CIMultiDict([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].body == data
    sent = [v for k, v in backend.raw[-1].headers if k.lower() == "content-encoding"]
    assert sent == ["identity", "gzip"]


async def test_empty_encoded_body_is_model_required(daemon: Daemon) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=b"", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "model_required"


async def test_request_body_that_decodes_past_the_limit_is_413(lab: Lab, daemon: Daemon) -> None:
    limit = daemon.mux.config.max_request_body_bytes
    bomb = gzip.compress(b" " * limit + PLAIN, mtime=0)  # a few kB on the wire
    assert len(bomb) < limit // 100
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=bomb, headers=headers) as response:
        assert response.status == 413
        await assert_openai_4xx(response)
    assert all(not b.raw for b in lab.backends.values() if isinstance(b, RecordingBackend))


async def test_large_body_with_a_key_ending_in_an_escaped_model_is_routed_by_model(
    daemon: Daemon,
) -> None:
    # request_body._model_near_the_end once took the bytes "model" after an escaped quote
    # (inside the key `p"model`) for the top-level key "model".
    prompt = "x" * (VALIDATE_LIMIT + 1)
    data = f'{{"messages": "{prompt}", "model": "alpha", "p\\"model": "beta"}}'.encode()
    assert json.loads(data)["model"] == "alpha"
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data) as response:
        assert response.status == 200
        assert response.headers["X-Backend"] == "alpha"


async def test_absolute_form_target_is_proxied(lab: Lab, daemon: Daemon) -> None:
    # RFC 9112 §3.2.2: servers must accept absolute-form. The proxy once appended
    # request.raw_path ("http://...") to "http://127.0.0.1:<port>": an invalid URL.
    body = b'{"model": "alpha"}'
    request = b"POST http://llmux.test/v1/x?a=1 HTTP/1.1\r\nHost: llmux.test\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = await raw_exchange(daemon.url, request)
    assert answer is not None
    assert answer.status == 200, answer
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].target == "/v1/x?a=1"


ADMIN_BAD_BODIES = [
    ("/admin/sleep", b'{"group": ["gpu0"]}', "application/json"),  # was a TypeError
    ("/admin/sleep", b'{"group": {}}', "application/json"),
    ("/admin/switch", b'{"model": "alpha", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
]


@pytest.mark.parametrize(
    ("path", "data", "content_type"),
    ADMIN_BAD_BODIES,
    ids=["list-group", "object-group", "deep-nesting"],
)
async def test_admin_body_errors_are_400(
    daemon: Daemon, path: str, data: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with daemon.client.post(daemon.url + path, data=data, headers=headers) as response:
        await assert_openai_4xx(response)


@pytest.mark.parametrize(
    ("path", "data"),
    [("/admin/switch", b'{"model": "alpha"}'), ("/admin/sleep", b"{}")],
    ids=["switch", "sleep"],
)
async def test_admin_body_charset_parameter_is_ignored(
    daemon: Daemon, path: str, data: bytes
) -> None:
    # RFC 8259 §11: application/json defines no charset parameter; an unknown one was
    # a LookupError (500). The body is JSON in any case.
    headers = {"Content-Type": "application/json; charset=nope"}
    async with daemon.client.post(daemon.url + path, data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
