"""Property-based fuzzing of raw HTTP/1.1 framing written to a socket (Content-Length
variants, chunked bodies with extensions and trailers, malformed header lines, no Host):
every answer is below 500, and a well-formed request's answer is exactly the oracle's.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.support import (
    ERROR_STATUS,
    FUZZ,
    OUTSIDE,
    PER_MODEL,
    PROXY_PATHS,
    REQUEST_TIMEOUT,
    error,
    has_dot_segment,
    json_oracle,
    one_in,
    start_lab,
    targets,
)
from tests.support import Lab, raw_exchange, running_daemon, wait_for

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
