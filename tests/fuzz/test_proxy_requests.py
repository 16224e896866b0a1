"""Property-based fuzzing of the proxied request path against the real daemon on a real
socket.

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

How one daemon serves every example: tests/fuzz/support.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from aiollmux.request_body import VALIDATE_LIMIT
from tests.fuzz.support import (
    BOM,
    ERROR_STATUS,
    FUZZ,
    LIMIT,
    LIMIT_MB,
    NAMES,
    OUTSIDE,
    PER_MODEL,
    PROXY_PATHS,
    REQUEST_TIMEOUT,
    UPSTREAM,
    Obj,
    Outcome,
    RawRequest,
    RecordingBackend,
    error,
    has_dot_segment,
    json_keys,
    json_oracle,
    json_styles,
    json_values,
    named,
    names,
    one_in,
    start_lab,
    targets,
)
from tests.support import Daemon, Lab, running_daemon, wait_for


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


# -- generated requests --------------------------------------------------------------------

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
SPACE = st.sampled_from(["", " ", "\n", "\r\n\t "])


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
    layout = draw(st.sampled_from(["first", "sdk", "middle", "duplicate", "case variant"]))
    model = f'"model": {json.dumps(first)}'
    variant = draw(st.sampled_from(['"MODEL"', '"Model"', '"mOdEl"', '"\\u004dodel"']))
    members = {
        "first": [model, f'"messages": {prompt}', '"stream": false'],
        "sdk": [f'"messages": {prompt}', model, '"stream": false'],
        "middle": [f'"messages": {prompt}', model, f'"tools": {prompt}'],
        "duplicate": [model, f'"messages": {prompt}', f'"model": {json.dumps(second)}'],
        # "MODEL" is "model" to Go's encoding/json (Ollama), which keeps the last.
        "case variant": [model, f'"messages": {prompt}', f"{variant}: {json.dumps(second)}"],
    }[layout]
    data = ("{" + ", ".join(members) + "}").encode()
    refused = layout in ("duplicate", "case variant")
    allowed = {error("invalid_json")} if refused else {named(first)}
    if one_in(draw, 5):  # cut short: the walk may route it or refuse it
        data = data[: -draw(st.integers(1, 40))]
        allowed |= {error("invalid_json"), error("model_required")}
        second_key = {"duplicate": '"model":', "case variant": f"{variant}:"}.get(layout)
        if second_key is not None and data.count(second_key.encode()) < 1 + (layout == "duplicate"):
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
    b'Content-Disposition: form-data; name="MODEL"',  # another field to a form parser
]


@st.composite
def multipart_bodies(draw: st.DrawFn) -> Body:
    """multipart/form-data with random boundaries and parts, the model field anywhere (or
    missing, empty, repeated — refused —, or in a part the body cuts short)."""
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
    if len(model_spans) > 1:  # routed by one, read as the other by a form parser: refused
        outcome = error("model_required")
    elif model_spans:
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
# itself), Content-Type (`Body.content_type`) and Content-Encoding (test_found_inputs.py).
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
